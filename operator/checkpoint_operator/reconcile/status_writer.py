"""The one door every status change of every kind goes through, and the one owner of each status.

A reconcile pass (`status_pass`) belongs to one object: its reconcile is the only writer of its
status (CloudNativePG's rule). Inside a pass, `write_status` stages a change and returns the
object with the change applied in memory; the pass writes once, when it ends (`flush`): the
changes applied in order to the object as last read, the write skipped when nothing changes,
the result validated against the status model (nothing the CRD schema would prune), written as
a conditional merge patch (resourceVersion) and, on a 409, applied again to a fresh read. An
event is posted for each change whose Ready reason or message differs from the status before it.

A change that must be durable before a side effect (pinned inputs before the workload exists,
an outcome before its pods are deleted) ends the pass: the step returns `Advance` and the next
pass, on the object as written, does the effect. Writing another object's status from a pass
raises `NotTheOwner`: a reconcile asks the owner instead (an annotation, a spec it creates, a
wake-up). Outside a pass (tests, one-off tools) `write_status` writes at once.
"""

from __future__ import annotations

import contextvars
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, TypeVar, cast

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointHead, CheckpointPhase
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint, ClusterCheckpointHead
from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobHead, TrainingJobPhase
from checkpoint_operator.reconcile.context import Context, ObjectKey
from checkpoint_operator.kube import CHECKPOINTS, CLUSTER_CHECKPOINTS, TRAINING_JOBS, Conflict
from checkpoint_operator.logic.conditions import now_rfc3339
from checkpoint_operator.logic.results import Fail, Result, Wait
from checkpoint_operator.logic.status import StatusChange, apply_change, should_post_event, status_patch, wait_change

logger = logging.getLogger("checkpoint_operator.status")
MAX_ATTEMPTS = 10
# The heads too: an object whose spec no longer parses can still be failed (reconcile/objects.py).
Obj = TypeVar("Obj", TrainingJob, Checkpoint, ClusterCheckpoint, TrainingJobHead, CheckpointHead,
              ClusterCheckpointHead)
AnyObj = TrainingJob | Checkpoint | ClusterCheckpoint | TrainingJobHead | CheckpointHead | ClusterCheckpointHead
# A change, or a function making it from the object as last read (with the pass's earlier changes).
AnyChange = StatusChange | Callable[[Any], StatusChange]


class StatusConflict(RuntimeError):
    pass


class NotTheOwner(RuntimeError):
    """A pass tried to write the status of an object that is not its own."""


@dataclass
class StatusPass:
    """One reconcile pass of `owner`: the changes it staged, and the object as last read or written."""

    owner: ObjectKey
    pass_id: int
    stored: Optional[AnyObj] = None          # the object as the API last returned it (no staged change)
    changes: list[AnyChange] = field(default_factory=list)
    written: Optional[dict[str, Any]] = None  # the body the pass's one write returned


# Tests observe every status write: (the pass or None, the object written, the patch).
StatusObserver = Callable[[Optional[StatusPass], ObjectKey, dict[str, Any]], None]
observers: list[StatusObserver] = []
_current: contextvars.ContextVar[Optional[StatusPass]] = contextvars.ContextVar("status_pass", default=None)
_pass_ids = iter(range(1, 1 << 62))


def key_of(obj: AnyObj) -> ObjectKey:
    return (obj.kind, obj.metadata.namespace if obj.kind != "ClusterCheckpoint" else "", obj.metadata.name)


@contextmanager
def status_pass(ctx: Context, kind: str, namespace: str, name: str) -> Iterator[StatusPass]:
    """A pass of the object (kind, namespace, name): its staged status changes are written once,
    when the block ends (also when it raises: what was decided before is kept, as if written)."""
    current = StatusPass((kind, namespace if kind != "ClusterCheckpoint" else "", name), next(_pass_ids))
    token = _current.set(current)
    try:
        yield current
    finally:
        _current.reset(token)
        flush(ctx, current)


def write_status(ctx: Context, obj: Obj, change: StatusChange | Callable[[Obj], StatusChange]) -> Obj:
    """In a pass of `obj`: stage `change` and return `obj` with it applied (written when the pass
    ends). Outside a pass: write it now and return the object as written (or as read, if a no-op).
    A callable change is made from the object as last read, with the pass's earlier changes
    applied (a list grown from its current value keeps what a concurrent write added)."""
    current = _current.get()
    if current is None:
        return cast(Obj, _write(ctx, None, obj, [cast(AnyChange, change)]))
    if key_of(obj) != current.owner:
        raise NotTheOwner(f"a pass of {'/'.join(current.owner)} tried to write the status of "
                          f"{'/'.join(key_of(obj))}: only its own reconcile writes it")
    # The first change of the pass comes with the object as read; a later one with that object as
    # staged (same version), or as another write returned it (a newer one: what the write starts from).
    if current.stored is None or current.stored.metadata.resourceVersion != obj.metadata.resourceVersion:
        current.stored = obj
    current.changes.append(cast(AnyChange, change))
    return _applied(obj, change(obj) if callable(change) else change)


def with_staged(obj: Obj) -> Obj:
    """`obj` as a write other than the status returned it (a label, a finalizer), with what the
    current pass staged applied again: the pass goes on with one view of the object."""
    current = _current.get()
    if current is None or key_of(obj) != current.owner:
        return obj
    current.stored = obj
    for change in current.changes:
        obj = _applied(obj, change(obj) if callable(change) else change)
    return obj


def commit(ctx: Context, obj: Obj) -> Obj:
    """Write what the pass staged now, before an effect that needs it durable (a result recorded
    before its pod and its request go): the pass's one write, so nothing is staged after it.
    Returns the object as written."""
    current = _current.get()
    if current is None or key_of(obj) != current.owner:
        return obj
    written = commit_pass(ctx)
    return written if isinstance(written, type(obj)) else obj


def commit_pass(ctx: Context) -> Optional[AnyObj]:
    """`commit` for whatever the current pass staged (agent_runs.finish: a pod goes only once its
    result is recorded). Returns the object as written (None: nothing was staged)."""
    current = _current.get()
    if current is None or not current.changes or current.stored is None:
        return None
    written = _write(ctx, current, current.stored, current.changes)
    current.changes, current.stored = [], written
    return written


def flush(ctx: Context, current: StatusPass) -> None:
    """The pass's one write (none when nothing changes); `current.written` is what it returned."""
    if current.changes and current.stored is not None:
        _write(ctx, current, current.stored, current.changes)
    current.changes = []


def _applied(obj: Obj, change: StatusChange) -> Obj:
    after = apply_change(obj.status.to_wire(), change, generation=obj.metadata.generation, now=now_rfc3339(),
                         is_settled=_settled(obj.kind))
    return _with_status(obj, after)


def _with_status(obj: Obj, status: dict[str, Any]) -> Obj:
    return obj.model_copy(update={"status": type(obj.status).model_validate(status)})


def _settled(kind: str) -> Callable[[Optional[str]], bool]:
    phases: type[TrainingJobPhase | CheckpointPhase] = TrainingJobPhase if kind == "TrainingJob" else CheckpointPhase

    def is_settled(phase: Optional[str]) -> bool:
        try:
            return phase is not None and phases(phase).is_settled
        except ValueError:
            return False
    return is_settled


def _write(ctx: Context, current: Optional[StatusPass], obj: AnyObj, changes: list[AnyChange]) -> AnyObj:
    """Apply `changes` in order to `obj`'s status and write the result once (a callable change is
    made again from the object as read after a conflict, with the changes before it applied)."""
    model = type(obj)
    meta = obj.metadata
    for _ in range(MAX_ATTEMPTS):
        before = obj.status.to_wire()
        after, events = before, []
        for staged in changes:
            change = staged(obj.model_copy(update={"status": type(obj.status).model_validate(after)})) \
                if callable(staged) else staged
            if should_post_event(after, change):
                events.append(change)
            after = apply_change(after, change, generation=obj.metadata.generation, now=now_rfc3339(),
                                 is_settled=_settled(obj.kind))
        patch = status_patch(before, after)
        if not patch:
            return obj
        type(obj.status).model_validate(after)  # nothing the CRD schema would prune
        for observe in observers:
            observe(current, key_of(obj), patch)
        try:
            written = _patch_status(ctx, obj, patch)
        except Conflict:
            fresh = _get(ctx, obj)
            if fresh is None:
                return obj
            obj = model.model_validate(fresh)
            continue
        ctx.wrote(written)
        if current is not None:
            current.written = written
        updated = model.model_validate(written)
        for change in events:
            ctx.event(updated, change.event or "Normal", change.reason or "", change.message)
        return updated
    raise StatusConflict(f"{obj.kind} {meta.namespace}/{meta.name}: status kept changing; will retry")


def record(ctx: Context, obj: Obj, result: Result,
           fail_change: Callable[[Fail], StatusChange]) -> tuple[Obj, Optional[float]]:
    """A step's result into the object's status, for every kind: a wait's reason and message,
    a failure (`fail_change`: the kind's Failed status). Returns the object (as staged) and when
    to look again without an event (None: an event will tell)."""
    if isinstance(result, Wait):
        change = wait_change(obj.phase, result)
        return (write_status(ctx, obj, change) if change is not None else obj), result.requeue_after
    if isinstance(result, Fail):
        return write_status(ctx, obj, fail_change(result)), None
    return obj, None


def _patch_status(ctx: Context, obj: AnyObj, patch: dict[str, Any]) -> dict[str, Any]:
    meta = obj.metadata
    if obj.kind == "TrainingJob":
        return ctx.kube.patch_status(TRAINING_JOBS, meta.namespace, meta.name, patch, meta.resourceVersion)
    if obj.kind == "ClusterCheckpoint":
        return ctx.kube.patch_status(CLUSTER_CHECKPOINTS, "", meta.name, patch, meta.resourceVersion)
    return ctx.kube.patch_status(CHECKPOINTS, meta.namespace, meta.name, patch, meta.resourceVersion)


def _get(ctx: Context, obj: AnyObj) -> dict[str, Any] | None:
    meta = obj.metadata
    if obj.kind == "TrainingJob":
        return ctx.kube.get(TRAINING_JOBS, meta.namespace, meta.name)
    if obj.kind == "ClusterCheckpoint":
        return ctx.kube.get(CLUSTER_CHECKPOINTS, "", meta.name)
    return ctx.kube.get(CHECKPOINTS, meta.namespace, meta.name)
