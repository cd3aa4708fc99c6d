"""The one door every status change of both kinds goes through.

`write_status` applies a `StatusChange` (logic/status.py) to the object as last read, skips
the write when nothing changes, validates the result against the status model (nothing the
CRD schema would prune), writes it as a conditional merge patch (resourceVersion) and, on a
409, re-reads the object and applies the change again. An event is posted when the Ready
reason or message changed.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointHead, CheckpointPhase
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint, ClusterCheckpointHead
from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobHead, TrainingJobPhase
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.kube import CHECKPOINTS, CLUSTER_CHECKPOINTS, TRAINING_JOBS, Conflict
from checkpoint_operator.logic.conditions import now_rfc3339
from checkpoint_operator.logic.results import Fail, Result, Wait
from checkpoint_operator.logic.status import StatusChange, apply_change, should_post_event, status_patch, wait_change

MAX_ATTEMPTS = 10
# The heads too: an object whose spec no longer parses can still be failed (reconcile/objects.py).
Obj = TypeVar("Obj", TrainingJob, Checkpoint, ClusterCheckpoint, TrainingJobHead, CheckpointHead,
              ClusterCheckpointHead)


class StatusConflict(RuntimeError):
    pass


def _settled(kind: str) -> Callable[[Optional[str]], bool]:
    phases: type[TrainingJobPhase | CheckpointPhase] = TrainingJobPhase if kind == "TrainingJob" else CheckpointPhase

    def is_settled(phase: Optional[str]) -> bool:
        try:
            return phase is not None and phases(phase).is_settled
        except ValueError:
            return False
    return is_settled


def write_status(ctx: Context, obj: Obj, change: StatusChange | Callable[[Obj], StatusChange]) -> Obj:
    """Apply `change` to `obj`'s status; return the object as written (or as read, if no-op).
    A callable change is made from the object as last read (a list grown from its current value
    keeps what a concurrent write added)."""
    model = type(obj)
    meta = obj.metadata
    for _ in range(MAX_ATTEMPTS):
        current = change(obj) if callable(change) else change
        before = obj.status.to_wire()
        after = apply_change(before, current, generation=obj.metadata.generation, now=now_rfc3339(),
                             is_settled=_settled(obj.kind))
        patch = status_patch(before, after)
        if not patch:
            return obj
        status_model = type(obj.status)
        status_model.model_validate(after)  # nothing the CRD schema would prune
        try:
            written = _patch_status(ctx, obj, patch)
        except Conflict:
            fresh = _get(ctx, obj)
            if fresh is None:
                return obj
            obj = model.model_validate(fresh)
            continue
        ctx.wrote(written)
        updated = model.model_validate(written)
        if should_post_event(before, current):
            ctx.event(updated, current.event or "Normal", current.reason or "", current.message)
        return updated
    raise StatusConflict(f"{obj.kind} {meta.namespace}/{meta.name}: status kept changing; will retry")


def record(ctx: Context, obj: Obj, result: Result,
           fail_change: Callable[[Fail], StatusChange]) -> tuple[Obj, Optional[float]]:
    """A step's result into the object's status, for both kinds: a wait's reason and message,
    a failure (`fail_change`: the kind's Failed status). Returns the object as written and when
    to look again without an event (None: an event will tell)."""
    if isinstance(result, Wait):
        change = wait_change(obj.phase, result)
        return (write_status(ctx, obj, change) if change is not None else obj), result.requeue_after
    if isinstance(result, Fail):
        return write_status(ctx, obj, fail_change(result)), None
    return obj, None


def _patch_status(ctx: Context, obj: Obj, patch: dict[str, Any]) -> dict[str, Any]:
    meta = obj.metadata
    if obj.kind == "TrainingJob":
        return ctx.kube.patch_status(TRAINING_JOBS, meta.namespace, meta.name, patch, meta.resourceVersion)
    if obj.kind == "ClusterCheckpoint":
        return ctx.kube.patch_status(CLUSTER_CHECKPOINTS, "", meta.name, patch, meta.resourceVersion)
    return ctx.kube.patch_status(CHECKPOINTS, meta.namespace, meta.name, patch, meta.resourceVersion)


def _get(ctx: Context, obj: Obj) -> dict[str, Any] | None:
    meta = obj.metadata
    if obj.kind == "TrainingJob":
        return ctx.kube.get(TRAINING_JOBS, meta.namespace, meta.name)
    if obj.kind == "ClusterCheckpoint":
        return ctx.kube.get(CLUSTER_CHECKPOINTS, "", meta.name)
    return ctx.kube.get(CHECKPOINTS, meta.namespace, meta.name)
