"""Writing phase, message and kstatus conditions of both kinds, with an event per change."""

from __future__ import annotations

from typing import Optional

from checkpoint_operator.api.checkpoint import CheckpointStatus
from checkpoint_operator.api.trainingjob import TrainingJobStatus
from checkpoint_operator.handlers.context import Context
from checkpoint_operator.kube import CHECKPOINTS, TRAINING_JOBS
from checkpoint_operator.logic.conditions import get_condition, kstatus_conditions, now_rfc3339


def write_status(ctx: Context, obj: dict, phase: str, reason: str, message: str, *, ready: bool = False,
                 stalled: bool = False, reconciling: bool = False, event: Optional[str] = None, **fields) -> dict:
    """Patch the status; post an event (of type `event`) only when the reason or message changed,
    so a wait that lasts an hour is one event, not one per pass."""
    status = obj.get("status", {})
    previous = get_condition(status.get("conditions"), "Ready") or {}
    generation = obj["metadata"].get("generation")
    conditions = kstatus_conditions(status.get("conditions"), ready=ready, reason=reason, message=message,
                                    generation=generation, now=now_rfc3339(), reconciling=reconciling,
                                    stalled=stalled)
    patch = {"phase": phase, "message": message, "conditions": conditions, "observedGeneration": generation, **fields}
    meta = obj["metadata"]
    written = {k: v for k, v in patch.items() if v is not None}
    if obj["kind"] == "Checkpoint":
        CheckpointStatus.model_validate(written)  # nothing the CRD schema would prune
        updated = ctx.kube.patch_status(CHECKPOINTS, meta["namespace"], meta["name"], patch)
    else:
        TrainingJobStatus.model_validate(written)
        updated = ctx.kube.patch_status(TRAINING_JOBS, meta["namespace"], meta["name"], patch)
    if event and (previous.get("reason"), previous.get("message")) != (reason, message):
        ctx.event(updated, event, reason, message)
    return updated
