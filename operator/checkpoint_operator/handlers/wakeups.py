"""Which objects an event may unblock: the event handlers of main.py call these, and they only
put keys on the work queue (each key once, however many events arrive meanwhile).

- a TrainingJob changed: itself (unless there is nothing left to do); when it finished or went,
  the jobs waiting for its outputs; always, the Checkpoints it uses or used (their usedBy, a
  blocked deletion), debounced;
- a Checkpoint changed: itself (unless settled and up to date, with no verify or pull request);
  the Pending jobs that refer to it by name, uid or producer;
- a Job, pod or PVC of ours changed: its owner (by ownerReference, or by the trainingjob-uid
  label for a Job's pods; a settled Checkpoint only for the pods that serve its requests); a
  PVC a Checkpoint adopts: that Checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Mapping, Optional

from checkpoint_operator import PROTECTION_FINALIZER
from checkpoint_operator.api.checkpoint import CheckpointPhase
from checkpoint_operator.api.trainingjob import TrainingJobPhase
from checkpoint_operator.handlers.context import Context
from checkpoint_operator.logic.inputs import CheckpointInfo, TrainingJobInfo
from checkpoint_operator.logic.protection import used_by_status, used_uids
from checkpoint_operator.logic.trainingjob_flow import RELEASE_OUTPUT_ANNOTATION
from checkpoint_operator.logic.transfers import has_ready_request
from checkpoint_operator.logic.workload import LABEL_COMPONENT, LABEL_TRAINING_JOB_UID

logger = logging.getLogger("checkpoint_operator.wakeups")
DEBOUNCE = 0.5  # seconds: a burst of job events on one Checkpoint is one usedBy write


def _tj(namespace: str, name: str) -> tuple:
    return ("TrainingJob", namespace, name)


def _ckpt(namespace: str, name: str) -> tuple:
    return ("Checkpoint", namespace, name)


def training_job_event(ctx: Context, event_type: Optional[str], body: Mapping) -> None:
    meta = body.get("metadata", {})
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    info = TrainingJobInfo.from_body(body)
    gone = event_type == "DELETED"
    if not gone and _training_job_has_work(body, info):
        ctx.queue.add(_tj(namespace, name))
    if gone or info.phase.is_finished:
        ctx.queue.add_all(_tj(namespace, n) for n in _pending(ctx, namespace,
                                                              ctx.indexes.jobs_waiting_on(namespace, "producer", name)))
    pinned = [p.get("uid") for p in (body.get("status") or {}).get("inputs") or []]
    for uid in set(used_uids(meta.get("labels"))) | {u for u in pinned if u}:
        checkpoint = ctx.indexes.checkpoint_by_uid(namespace, uid)
        if checkpoint is not None:
            ctx.queue.add(_ckpt(namespace, checkpoint.name), after=DEBOUNCE)


def _training_job_has_work(body: Mapping, info: TrainingJobInfo) -> bool:
    meta = body.get("metadata", {})
    if not info.phase.is_finished or meta.get("deletionTimestamp") or used_uids(meta.get("labels")):
        return True
    return (meta.get("annotations") or {}).get(RELEASE_OUTPUT_ANNOTATION, "").lower() == "true"


def _pending(ctx: Context, namespace: str, names: list[str]) -> list[str]:
    out = []
    for name in names:
        info = ctx.indexes.training_job(namespace, name)
        if info is None or info.phase == TrainingJobPhase.PENDING:
            out.append(name)
    return out


def checkpoint_event(ctx: Context, event_type: Optional[str], body: Mapping) -> None:
    meta = body.get("metadata", {})
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    info = CheckpointInfo.from_body(body)
    if event_type != "DELETED" and _checkpoint_has_work(ctx, body, info):
        ctx.queue.add(_ckpt(namespace, name))
    waiting = set(ctx.indexes.jobs_waiting_on(namespace, "name", name))
    waiting |= set(ctx.indexes.jobs_waiting_on(namespace, "uid", info.uid))
    if info.producer_name:
        waiting |= set(ctx.indexes.jobs_waiting_on(namespace, "producer", info.producer_name))
    pending = _pending(ctx, namespace, sorted(waiting))
    logger.debug("checkpoint %s %s (%s): waking %s", name, info.phase, event_type, pending)
    ctx.queue.add_all(_tj(namespace, n) for n in pending)


def _checkpoint_has_work(ctx: Context, body: Mapping, info: CheckpointInfo) -> bool:
    meta, status = body.get("metadata", {}), body.get("status") or {}
    if not info.phase.is_settled or info.deleting or PROTECTION_FINALIZER not in (meta.get("finalizers") or []):
        return True
    if has_ready_request(meta.get("annotations")):  # verify, pull (logic/transfers.py)
        return True
    wanted = used_by_status(ctx.indexes.users_of(meta.get("namespace", ""), info.uid))
    return wanted != {"usedBy": status.get("usedBy") or [], "usedByCount": status.get("usedByCount") or 0}


def child_event(ctx: Context, body: Mapping) -> None:
    meta = body.get("metadata", {})
    namespace = meta.get("namespace", "")
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == "TrainingJob":
            ctx.queue.add(_tj(namespace, owner.get("name", "")))
        elif owner.get("kind") == "Checkpoint":
            info = ctx.indexes.checkpoint(namespace, owner.get("name", ""))
            serves_request = (meta.get("labels") or {}).get(LABEL_COMPONENT) in ("verify", "pull")
            if info is None or not info.phase.is_settled or info.deleting or serves_request:
                ctx.queue.add(_ckpt(namespace, owner.get("name", "")))
    job_uid = (meta.get("labels") or {}).get(LABEL_TRAINING_JOB_UID)
    if job_uid:
        info = ctx.indexes.training_job_by_uid(namespace, job_uid)
        if info is not None:
            ctx.queue.add(_tj(namespace, info.name))
    if body.get("kind") == "PersistentVolumeClaim":
        for name in ctx.indexes.checkpoints_on_claim(namespace, meta.get("name", "")):
            info = ctx.indexes.checkpoint(namespace, name)
            if info is not None and info.phase == CheckpointPhase.PENDING:
                ctx.queue.add(_ckpt(namespace, name))


def start_resync(ctx: Context) -> asyncio.Task:
    """The safety net: every resync_interval, every object whose work may not be over."""
    async def resync() -> None:
        while True:
            await asyncio.sleep(ctx.config.resync_interval)
            try:
                ctx.queue.add_all(ctx.indexes.resync_keys())
            except Exception:  # noqa: BLE001 - the next pass tries again
                logger.exception("resync failed")
    return asyncio.create_task(resync(), name="resync")
