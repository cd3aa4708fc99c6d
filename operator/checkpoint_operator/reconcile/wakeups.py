"""Which objects an event may unblock: main.py `wake` calls these for each event the informer
hands on (reconcile/informer.py), and they only put keys on the work queue (each key once, however many events arrive meanwhile).

- a TrainingJob changed: itself (unless there is nothing left to do); when it finished or went,
  the jobs waiting for its outputs; the Checkpoints it uses, used or used as of its previous
  event (their usedBy, a blocked deletion), debounced;
- a Checkpoint changed: itself (unless settled and up to date, with no verify or pull request);
  the Pending jobs that refer to it by name, uid or producer;
- a Job, pod or PVC of ours changed: its owner (by ownerReference, or by the trainingjob-uid
  label for a Job's pods; a settled Checkpoint only for the pods that serve its requests); a
  PVC a Checkpoint adopts: that Checkpoint.

Why no wake-up is lost. A reconcile decides to wait from what it read: live GETs (never older
than any event) and the indexes. Three facts close the gap between them:

1. The informer (reconcile/informer.py) hands on the events of every kind one at a time, under
   one lock, in each object's order; for each event main.py `changed` first updates the index of
   its kind (`ObjectIndex`: the custom resources' and the worker pods') and the cache from that
   event's body, and only then offers its wake-up (as kopf 1.45 updated every `kopf.index` before
   calling the `on.event` handlers, when it still watched the custom resources). So when a
   function below runs, the indexes already hold the body it was given, and every key it adds
   is reconciled after the index changed. At start, the queue runs no reconcile until the first
   LISTs of every kind are applied (main.py start_queue): the custom resources' wake-ups during
   those LISTs only queue keys (fact 3 covers the order they come in), a child's wait until then
   (informer.Holding): no reconcile runs on half-filled indexes, as when kopf kept them all.
2. The queue runs a key added while it waits once, and a key added while its reconcile runs
   once more afterwards (reconcile/work_queue.py). A reconcile that began before the index changed
   is therefore always followed by one that begins after it: every reconcile that follows an
   event reads state at least as fresh as that event.
3. Every index entry a reconcile reads has an event here that adds the keys reading it (the
   list above): a Checkpoint's entry is read by the jobs that want it (by name, uid or
   producer), a TrainingJob's by the jobs that want its outputs and by the Checkpoints it
   uses, a worker pod's by its job. A job not yet in the index when its input's event comes
   is added by its own event afterwards, and then reads the index that already holds the
   input.

So a stale read can only make a reconcile wait once more, never wait forever: if it waits,
what it waited on changes later, and that change is an event that wakes it. The informer hands
on every event, and the queue runs a key once however many events added it meanwhile: the latest
state is all a level-triggered reconcile needs. While kopf's peering pauses the replica nothing
is woken, and as it resumes the custom resources are listed again and every one handed on
(informer.Holding), as kopf's resumed streams did. A broken watch is resumed or relisted,
re-delivering the current state as events (the informer hands on what vanished meanwhile as
DELETED). What an event body no longer shows (a uses label just dropped) is remembered from the
previous event (`Context.last_uses`). The resync (resync_interval) is a net for a bug in this
mapping, not a part of the design; waits on inputs do not poll.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Callable, Mapping, Optional

from checkpoint_operator import PROTECTION_FINALIZER
from checkpoint_operator.api.checkpoint import CheckpointPhase
from checkpoint_operator.api.wire import (CheckpointStatusWire, CheckpointWire, MetadataWire, TrainingJobStatusWire,
                                          checkpoint_wire, object_wire, training_job_wire)
from checkpoint_operator.api.trainingjob import TrainingJobPhase
from checkpoint_operator.reconcile import volume_snapshots as volume_snapshot_steps
from checkpoint_operator.reconcile.context import Context, ObjectKey
from checkpoint_operator.logic.catalog import used_by_status as catalog_used_by
from checkpoint_operator.logic.node_cache import CACHED_ON_ANNOTATION, requested_cached_on
from checkpoint_operator.logic.signatures import CACHED_ON_REQUEST, CHANGED_REQUEST
from checkpoint_operator.logic.inputs import CheckpointInfo, TrainingJobInfo
from checkpoint_operator.logic.protection import used_by_status, used_uids
from checkpoint_operator.logic.status import set_fields
from checkpoint_operator.logic.trainingjob_flow import RELEASE_OUTPUT_ANNOTATION
from checkpoint_operator.logic.transfers import has_ready_request
from checkpoint_operator.logic import workers
from checkpoint_operator.logic.workload import LABEL_COMPONENT, LABEL_TRAINING_JOB_UID

logger = logging.getLogger("checkpoint_operator.wakeups")
DEBOUNCE = 0.5  # seconds: a burst of job events on one Checkpoint is one usedBy write


EventHandler = Callable[[Context, Optional[str], Mapping[str, Any]], None]


def _never_lost(kind: str) -> Callable[[EventHandler], EventHandler]:
    """An event handler that fails still queues its own object (the resync covers the rest): an
    error here must never be the reason an object waits."""
    def wrap(handler: EventHandler) -> EventHandler:
        @functools.wraps(handler)
        def guarded(ctx: Context, event_type: Optional[str], body: Mapping[str, Any]) -> None:
            try:
                handler(ctx, event_type, body)
            except Exception:  # noqa: BLE001 - logged; the object is queued anyway
                meta = object_wire(body).get("metadata") or MetadataWire()
                logger.exception("mapping the %s event of %s %s/%s", event_type, kind, meta.get("namespace"),
                                 meta.get("name"))
                if event_type != "DELETED":
                    ctx.queue.add((kind, meta.get("namespace", ""), meta.get("name", "")))
        return guarded
    return wrap


def _tj(namespace: str, name: str) -> ObjectKey:
    return ("TrainingJob", namespace, name)


def _ckpt(namespace: str, name: str) -> ObjectKey:
    return ("Checkpoint", namespace, name)


def _cckpt(name: str) -> ObjectKey:
    return ("ClusterCheckpoint", "", name)


@_never_lost("TrainingJob")
def training_job_event(ctx: Context, event_type: Optional[str], raw: Mapping[str, Any]) -> None:
    body = training_job_wire(raw)
    meta = body.get("metadata") or MetadataWire()
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    info = TrainingJobInfo.from_body(raw)
    gone = event_type == "DELETED"
    if not gone and not _own_write(ctx, "TrainingJob", meta) and _training_job_has_work(meta, info):
        ctx.queue.add(_tj(namespace, name))
    # Its consumers look again when it is gone or done, and when it appears: a consumer that
    # waited for it to exist now waits on it, or finds the two of them in a cycle (logic/wait_cycles.py).
    if gone or info.phase.is_finished or event_type == "ADDED":
        ctx.queue.add_all(_tj(namespace, n) for n in _pending(ctx, namespace,
                                                              ctx.indexes.jobs_waiting_on(namespace, "producer", name)))
    if gone:  # its Pending snapshot Checkpoints will never be made Ready now: they fail
        ctx.queue.add_all(_ckpt(namespace, c.name) for c in ctx.indexes.checkpoints_of(namespace, info.uid)
                          if c.phase == CheckpointPhase.PENDING)
    pinned = [p.get("uid") for p in (body.get("status") or TrainingJobStatusWire()).get("inputs") or []]
    uses = set(used_uids(meta.get("labels"))) | {u for u in pinned if u}
    previous = ctx.last_uses.pop((namespace, name), set())
    if uses and not gone and not info.phase.is_finished:  # a finished job keeps its pins in status
        ctx.last_uses[(namespace, name)] = uses
    for uid in uses | previous:
        checkpoint = ctx.indexes.checkpoint_by_uid(namespace, uid)
        if checkpoint is not None:
            ctx.queue.add(_ckpt(namespace, checkpoint.name), after=DEBOUNCE)
        entry = ctx.indexes.cluster_checkpoint_by_uid(uid)
        if entry is not None:  # a catalog entry: its usedBy, a deletion it blocks
            ctx.queue.add(_cckpt(entry.name), after=DEBOUNCE)
    if gone:
        ctx.forget("TrainingJob", namespace, name, info.uid)


def _training_job_has_work(meta: MetadataWire, info: TrainingJobInfo) -> bool:
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


@_never_lost("Checkpoint")
def checkpoint_event(ctx: Context, event_type: Optional[str], raw: Mapping[str, Any]) -> None:
    body = checkpoint_wire(raw)
    meta = body.get("metadata") or MetadataWire()
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    info = CheckpointInfo.from_body(raw)
    if event_type == "DELETED":
        ctx.forget("Checkpoint", namespace, name, info.uid)
    if event_type != "DELETED" and not _own_write(ctx, "Checkpoint", meta) and _checkpoint_has_work(ctx, body, info):
        ctx.queue.add(_ckpt(namespace, name))
    waiting = set(ctx.indexes.jobs_waiting_on(namespace, "name", name))
    waiting |= set(ctx.indexes.jobs_waiting_on(namespace, "uid", info.uid))
    if info.producer_name:
        waiting |= set(ctx.indexes.jobs_waiting_on(namespace, "producer", info.producer_name))
    pending = _pending(ctx, namespace, sorted(waiting))
    # Its producer is Succeeded once its Checkpoints are Ready: woken unless finished (the index may
    # not show its Snapshotting phase yet: its own status write's event can come after this one).
    producer = ctx.indexes.training_job_by_uid(namespace, info.producer_uid) \
        if info.producer_uid and info.phase.is_settled else None
    if producer is not None and not producer.phase.is_finished:
        pending.append(producer.name)
    logger.debug("checkpoint %s %s (%s): waking %s", name, info.phase, event_type, pending)
    ctx.queue.add_all(_tj(namespace, n) for n in pending)


@_never_lost("ClusterCheckpoint")
def cluster_checkpoint_event(ctx: Context, event_type: Optional[str], raw: Mapping[str, Any]) -> None:
    """A catalog entry changed: itself (unless settled and up to date), and the Pending jobs of every
    namespace that name it."""
    body = object_wire(raw)
    meta = body.get("metadata") or MetadataWire()
    status = raw.get("status") or {}
    info = CheckpointInfo.from_body(raw)
    if event_type == "DELETED":
        ctx.forget("ClusterCheckpoint", "", info.name, info.uid)
    elif not _own_write(ctx, "ClusterCheckpoint", meta):
        finalized = PROTECTION_FINALIZER in (meta.get("finalizers") or [])
        wanted = set_fields(catalog_used_by(ctx.indexes.users_of_cluster_checkpoint(info.uid, info.name)))
        current = {"usedBy": status.get("usedBy") or None, "usedByCount": status.get("usedByCount") or 0}
        if info.deleting or not finalized or not info.phase.is_settled or wanted != current:
            ctx.queue.add(_cckpt(info.name))
    for namespace, name in ctx.indexes.jobs_waiting_on_cluster_checkpoint(info.name):
        if name in _pending(ctx, namespace, [name]):
            ctx.queue.add(_tj(namespace, name))


def _own_write(ctx: Context, kind: str, meta: MetadataWire) -> bool:
    """The event of our own last write of this object: the writer already acted on that state
    (the dependents' wake-ups still happen)."""
    key = (kind, meta.get("namespace", ""), meta.get("name", ""))
    written = ctx.own_writes.pop(key, None)
    return written is not None and written == meta.get("resourceVersion", "")


def _made_by_a_live_job(ctx: Context, namespace: str, info: CheckpointInfo) -> bool:
    """A Pending snapshot Checkpoint without its sealed data (an older operator's) whose TrainingJob
    exists has nothing to do until that job is gone (its deletion wakes the Checkpoint:
    training_job_event). One with its sealed data is made Ready by its own reconcile."""
    if info.phase != CheckpointPhase.PENDING or not info.directory or not info.producer_uid or info.sealed:
        return False
    producer = ctx.indexes.training_job_by_uid(namespace, info.producer_uid)
    return producer is not None and not producer.phase.is_finished


def _checkpoint_has_work(ctx: Context, body: CheckpointWire, info: CheckpointInfo) -> bool:
    meta, status = body.get("metadata") or MetadataWire(), body.get("status") or CheckpointStatusWire()
    if info.deleting or PROTECTION_FINALIZER not in (meta.get("finalizers") or []):
        return True
    if has_ready_request(meta.get("annotations")):  # verify, pull (logic/transfers.py)
        return True
    if info.directory is not None and info.phase != CheckpointPhase.FAILED and \
            CHANGED_REQUEST.signature_key in (meta.get("annotations") or {}):  # its job asks it to fail (signed)
        return True
    if not info.phase.is_settled:
        return not _made_by_a_live_job(ctx, meta.get("namespace", ""), info)
    annotations = meta.get("annotations") or {}
    asked = requested_cached_on(annotations.get(CACHED_ON_ANNOTATION)) \
        if CACHED_ON_REQUEST.signature_key in annotations else None  # signed: checked by its reconcile
    if asked is not None and asked != (status.get("cachedOn") or []):  # a job's fills ask for status.cachedOn
        return True
    wanted = set_fields(used_by_status(ctx.indexes.users_of(meta.get("namespace", ""), info.uid)))
    return wanted != {"usedBy": status.get("usedBy") or [], "usedByCount": status.get("usedByCount") or 0}


def child_event(ctx: Context, raw: Mapping[str, Any], event_type: Optional[str] = None) -> None:
    body = object_wire(raw)
    meta = body.get("metadata") or MetadataWire()
    namespace = meta.get("namespace", "")
    unchanged = _pod_unchanged(ctx, raw, event_type)
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == "TrainingJob":
            if not unchanged and not _finished_job_unaffected(ctx, namespace, owner.get("uid", ""), body, event_type):
                ctx.queue.add(_tj(namespace, owner.get("name", "")))
        elif owner.get("kind") == "ClusterCheckpoint":  # its import pod, or a namespace's copy and its pod
            ctx.queue.add(_cckpt(owner.get("name", "")))
            ctx.queue.add_all(_tj(namespace, n) for n in _pending(
                ctx, namespace, ctx.indexes.jobs_waiting_on(namespace, "cluster", owner.get("name", ""))))
        elif owner.get("kind") == "Checkpoint":
            info = ctx.indexes.checkpoint(namespace, owner.get("name", ""))
            serves_request = (meta.get("labels") or {}).get(LABEL_COMPONENT) in ("verify", "pull")
            if info is None or info.deleting or serves_request or (not info.phase.is_settled
                                                                   and not _made_by_a_live_job(ctx, namespace, info)):
                ctx.queue.add(_ckpt(namespace, owner.get("name", "")))
    job_uid = (meta.get("labels") or {}).get(LABEL_TRAINING_JOB_UID)
    if job_uid and not unchanged:
        job = ctx.indexes.training_job_by_uid(namespace, job_uid)
        if job is not None and not _finished_job_unaffected(ctx, namespace, job_uid, body, event_type):
            ctx.queue.add(_tj(namespace, job.name))
    if body.get("kind") == "Pod" and event_type == "DELETED":
        ctx.agent_results.pop((namespace, meta.get("name", "")), None)
    if body.get("kind") == "PersistentVolumeClaim":
        for name in ctx.indexes.checkpoints_on_claim(namespace, meta.get("name", "")):
            adopter = ctx.indexes.checkpoint(namespace, name)
            if adopter is not None and adopter.phase == CheckpointPhase.PENDING:
                ctx.queue.add(_ckpt(namespace, name))


def _pod_unchanged(ctx: Context, raw: Mapping[str, Any], event_type: Optional[str]) -> bool:
    """A pod's MODIFIED event that changes nothing its TrainingJob reads (logic/workers.py
    wake_summary): a kubelet's status updates within one phase, about half of a pod's events. Its
    job's reconcile after the previous event read the same (the index and the cache hold the
    event's body before this runs, fact 1 above). Only for the wake-ups of TrainingJobs: a
    Checkpoint's pods wake it as before."""
    if raw.get("kind") != "Pod":
        return False
    meta = raw.get("metadata") or {}
    key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
    if event_type == "DELETED":
        ctx.pod_seen.pop(key, None)
        return False
    summary = workers.wake_summary(raw)
    unchanged = event_type == "MODIFIED" and ctx.pod_seen.get(key) == summary
    ctx.pod_seen[key] = summary
    return unchanged


def _finished_job_unaffected(ctx: Context, namespace: str, uid: str, child: Mapping[str, Any],
                             event_type: Optional[str]) -> bool:
    """A finished job has nothing left to do about a child that went, or about its claims (its
    clean-up of a pod left behind is woken by that pod's own event): no wake-up, no read."""
    job = ctx.indexes.training_job_by_uid(namespace, uid)
    if job is None or not job.phase.is_finished:
        return False
    return event_type == "DELETED" or child.get("kind") == "PersistentVolumeClaim"


def start_resync(ctx: Context) -> asyncio.Task[None]:
    """The safety net: every resync_interval, every object whose work may not be over."""
    async def resync() -> None:
        while True:
            await asyncio.sleep(ctx.config.resync_interval)
            if ctx.paused():  # a standby replica: its indexes are current, but a peer acts on them
                continue
            try:
                ctx.forget_gone()
                ctx.queue.add_all(ctx.indexes.resync_keys())
                if ctx.config.volume_snapshot_class:
                    ctx.queue.add_all(await asyncio.to_thread(volume_snapshot_steps.checkpoints_to_check, ctx))
            except Exception:  # noqa: BLE001 - the next pass tries again
                logger.exception("resync failed")
    return asyncio.create_task(resync(), name="resync")
