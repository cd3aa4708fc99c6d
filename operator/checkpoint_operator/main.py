"""The operator's table of contents: kopf declarations, each a line or two.

kopf peers (one active replica), serves the probes, runs start-up and clean-up and logs in; it
watches nothing of the operator's. Every kind the operator reads comes through an informer of its
own (reconcile/informer.py: LIST in pages, WATCH, relist; no kopf machinery per event): the custom
resources (TrainingJobs, Checkpoints, ClusterCheckpoints), whose indexes it keeps
(reconcile/indexes.py `ObjectIndex`), and the child kinds (its pods, Jobs and JobSets, and claims),
with the worker pod index. Each event updates the indexes and the cache, then only puts keys on the
work queue (reconcile/work_queue.py explains why a queue and not kopf daemons), mapping an event of
one object to every object it may unblock (reconcile/wakeups.py). Reconciles run in the queue
(reconcile/trainingjob.py, reconcile/checkpoint.py). Settings and the process entry point
(`checkpoint-operator run`) are below.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import time
from typing import Any, Optional

import kopf

from checkpoint_operator import GROUP, kopf_startup, kube, malloc, metrics
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.reconcile import checkpoint, clustercheckpoint, informer, trainingjob, wakeups
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.informer import Holding, Informer, targets
from checkpoint_operator.reconcile.indexes import (IndexKey, IndexValue, Indexes, ObjectIndex, checkpoint_keys,
                                                   cluster_checkpoint_keys, training_job_keys, worker_pod_keys)
from checkpoint_operator.reconcile.work_queue import WorkQueue
from checkpoint_operator.logic.memory_trim import TrimPolicy
from checkpoint_operator.logic.workload import LABEL_MANAGED_BY, MANAGER

# kopf's own finalizer: never added (no kopf change/delete handlers here), and distinct from the
# in-use protection finalizer, which the Checkpoint reconcile manages itself.
KOPF_FINALIZER = f"{GROUP}/kopf"
PEERING_NAME = "checkpoint-operator"
# kopf names a resource by (group, version, plural); kube.py defines each resource once.
CHECKPOINTS = (kube.CHECKPOINTS.group, kube.CHECKPOINTS.version, kube.CHECKPOINTS.plural)
TRAINING_JOBS = (kube.TRAINING_JOBS.group, kube.TRAINING_JOBS.version, kube.TRAINING_JOBS.plural)
CLUSTER_CHECKPOINTS = (kube.CLUSTER_CHECKPOINTS.group, kube.CLUSTER_CHECKPOINTS.version,
                       kube.CLUSTER_CHECKPOINTS.plural)
MANAGED = {LABEL_MANAGED_BY: MANAGER}
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGER}"
# The child kinds, watched by the informer (reconcile/informer.py), not kopf: (resource, label selector,
# may be absent). The API server streams only the operator's own pods, Jobs and JobSets (every wake-up
# of theirs is for those alone): a namespace's other workloads cost no watch event. Claims stream
# whole (a Checkpoint may adopt a user's claim), as do the custom resources (CUSTOM).
# The custom resources, every object (may be absent: a CRD not installed counts as listed, and is
# LISTed again every informer.ABSENT_RETRY seconds, as kopf rescanned).
CUSTOM = ((kube.TRAINING_JOBS, None, True), (kube.CHECKPOINTS, None, True), (kube.CLUSTER_CHECKPOINTS, None, True))
CHILDREN = ((kube.PODS, MANAGED_SELECTOR, False), (kube.JOBS, MANAGED_SELECTOR, False),
            (kube.JOBSETS, MANAGED_SELECTOR, True), (kube.PVCS, None, False))
LIST_CHUNK = informer.LIST_CHUNK
STARTUP_WAIT = informer.STARTUP_WAIT  # seconds start-up waits for a target that cannot be listed
UNLISTED_RETRY = 5.0  # seconds: a reconcile in a namespace not listed yet looks again after this
logger = logging.getLogger("checkpoint_operator")
# Read at import by callers that configure local runs (local/run.py).
INTERVAL = OperatorConfig.from_env().reconcile_interval


# Moves with every index update, event and reconcile: the memory trimmer's sign of work (malloc.py).
ACTIVITY = malloc.Activity()
TRIM_POLICY = TrimPolicy()  # when freed memory goes back to the system (logic/memory_trim.py)


def _ctx(memo: kopf.Memo) -> Context:
    ctx: Context = memo["ctx"]
    return ctx


# --- every watched kind: our own informer (reconcile/informer.py), not kopf ---------------------------

# The custom resources: kind -> the key function of its index (reconcile/indexes.py; the index: custom_index).
CUSTOM_KEYS = {"TrainingJob": training_job_keys, "Checkpoint": checkpoint_keys,
               "ClusterCheckpoint": cluster_checkpoint_keys}


def custom_index(ctx: Context, kind: str) -> Optional[ObjectIndex]:
    return {"TrainingJob": ctx.training_job_index, "Checkpoint": ctx.checkpoint_index,
            "ClusterCheckpoint": ctx.cluster_checkpoint_index}.get(kind)


def changed(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """Each event of any watched kind, in the informer's thread, one at a time, in each object's
    order: the indexes and the cache hold the body before any wake-up reads them
    (reconcile/wakeups.py, fact 1); then its wake-ups (held while the replica may not act: Holding)."""
    ACTIVITY.tick()
    deleted = event_type == "DELETED"
    kind = str(body.get("kind") or "")
    meta = body.get("metadata") or {}
    index = custom_index(ctx, kind)
    if index is not None:
        keys: dict[IndexKey, IndexValue] = {}
        if not deleted:
            try:
                keys = CUSTOM_KEYS[kind](body)
            except Exception:  # noqa: BLE001 - a body the key function cannot read is in no index
                logger.exception("indexing %s %s/%s failed", kind, meta.get("namespace"), meta.get("name"))
        index.update((meta.get("namespace") or "", meta.get("name") or ""), keys)
        metrics.observe_phase({"type": event_type}, body)
    elif kind == "Pod":
        ctx.pod_index.update((meta.get("namespace") or "", meta.get("name") or ""),
                             {} if deleted else worker_pod_keys(body))
    metrics.WATCH_EVENTS.labels(kind).inc()
    ctx.kube.cache.observe(body, deleted=deleted, from_watch=True)
    if ctx.child_wakeups is not None:
        ctx.child_wakeups.offer(event_type, body)


def wake(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """What an event may unblock (reconcile/wakeups.py): only keys on the work queue."""
    kind = body.get("kind")
    if kind == "TrainingJob":
        wakeups.training_job_event(ctx, event_type, body)
    elif kind == "Checkpoint":
        wakeups.checkpoint_event(ctx, event_type, body)
    elif kind == "ClusterCheckpoint":
        wakeups.cluster_checkpoint_event(ctx, event_type, body)
    else:
        wakeups.child_event(ctx, body, event_type)


def held_wakeup(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """A wake-up held while the replica could not act (informer.Holding keeps only `informer.held`):
    the whole body from the cache where it holds the same object, and a pod's remembered summary is
    forgotten (a slim body cannot say it is unchanged: it wakes its job). A custom resource's held
    event is its DELETED, kept whole."""
    meta = body.get("metadata") or {}
    kind, namespace, name = str(body.get("kind") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or "")
    if kind in CUSTOM_KEYS:
        wake(ctx, event_type, body)
        return
    full = None if event_type == "DELETED" else ctx.kube.cache.get(kind, namespace, name)
    if full is not None and (full.get("metadata") or {}).get("uid") != meta.get("uid"):
        full = None
    if kind == "Pod":
        ctx.pod_seen.pop((namespace, name), None)
    wakeups.child_event(ctx, full or body, event_type)
    if kind == "Pod" and full is None:
        ctx.pod_seen.pop((namespace, name), None)


def wake_all_unfinished(ctx: Context) -> None:
    """Too many wake-ups were held to keep them (informer.MAX_HELD): every object whose work may not
    be over is woken instead, as the resync does, and every pod's summary forgotten (its next
    event wakes its job)."""
    ctx.pod_seen.clear()
    ctx.queue.add_all(ctx.indexes.resync_keys())


def start_informer(ctx: Context) -> Informer:
    """The custom resources (every object), our pods, Jobs and JobSets (the selector kopf used), every
    claim; in the namespaces the operator serves (every one when none are listed), ClusterCheckpoints
    cluster-wide."""
    watching = Informer(ctx.kube, targets(CUSTOM + CHILDREN, ctx.namespaces), lambda t, body: changed(ctx, t, body))
    loop = asyncio.get_running_loop()  # kopf's: whether it is paused (peering) is known per loop
    ctx.paused = lambda: not kopf_startup.may_act(loop)
    # Held only until start-up is over (the indexes filled): a wake-up reads them. Not while paused:
    # the indexes stay current and the queue runs nothing then (WorkQueue may_run), so the keys a
    # paused replica's events queue wait there, deduplicated, and run once it may act.
    ctx.child_wakeups = Holding(lambda t, body: wake(ctx, t, body), watching.lock,
                                deliver_held=lambda t, body: held_wakeup(ctx, t, body),
                                on_overflow=lambda: wake_all_unfinished(ctx),
                                replayed=CUSTOM_KEYS, on_replay=lambda: watching.relist(CUSTOM_KEYS),
                                ready=False)
    watching.on_change = lambda: metrics.observe_informer(watching.unsynced())
    watching.start()
    return watching


async def release_wakeups(ctx: Context) -> None:
    """Once start-up is over: the held wake-ups go on (Holding.release; its lock is the informer's,
    so it is taken off the loop)."""
    if ctx.child_wakeups is not None:
        await asyncio.to_thread(ctx.child_wakeups.release)


@kopf.on.probe(id="informer")
def informer_probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """In /healthz: the targets of any kind that could not be listed (or watched), and why."""
    watching = _ctx(memo).informer
    unsynced = watching.unsynced() if watching is not None else []
    return {"synced": not unsynced, "unsynced": [why for _, why in unsynced]}


# --- the queue's life -----------------------------------------------------------------------------

@kopf.on.startup()
async def start_queue(memo: kopf.Memo, **_: Any) -> None:
    ctx = _ctx(memo)
    ctx.indexes = Indexes(ctx.checkpoint_index, ctx.training_job_index, ctx.pod_index, ctx.cluster_checkpoint_index)
    ctx.queue = WorkQueue(lambda key: reconcile(ctx, key), workers=ctx.config.workers,
                          base_backoff=ctx.config.reconcile_interval,
                          on_error=lambda key, _: metrics.RECONCILE_ERRORS.labels(key[0]).inc(),
                          may_run=lambda: not ctx.paused())  # a standby replica reconciles nothing (H12-1, H12-2)
    ctx.trimmer = malloc.start_trimmer(ACTIVITY, TRIM_POLICY)
    # The first LISTs of every kind are applied (indexes, cache) page by page before the queue runs
    # a reconcile: no reconcile reads a half-filled index (kopf called no handler before its indexes
    # were filled). The wake-ups of the listed custom resources only queue keys meanwhile.
    # A target whose LIST keeps failing (a 403: one namespace's Role missing) holds no other: it is
    # waited for at most informer.STARTUP_WAIT seconds, and the reconciles of its namespace wait
    # until it lists (`reconcile` below; every reconcile, for ClusterCheckpoints); it is named in a
    # warning, a gauge and /healthz.
    ctx.informer = start_informer(ctx)
    try:
        deadline = time.monotonic() + STARTUP_WAIT
        # (A LIST that hangs holds no more than one that fails: past the deadline kopf starts and
        # serves /healthz, whatever the slow target; its namespace's reconciles wait for it.)
        while not ctx.informer.wait_synced(0) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    except BaseException:  # cancelled (the operator stops during start-up): no reflector outlives it
        watching, ctx.informer = ctx.informer, None
        await asyncio.shield(asyncio.to_thread(watching.stop))
        raise
    ctx.queue.start()
    ctx.resync = wakeups.start_resync(ctx)
    if ctx.child_wakeups is not None:
        ctx.child_wakeups.ready = True
    ctx.releaser = asyncio.create_task(release_wakeups(ctx), name="held wake-ups")


@kopf.on.cleanup()
async def stop_queue(memo: kopf.Memo, **_: Any) -> None:
    ctx = _ctx(memo)
    if ctx.informer is not None:
        await asyncio.to_thread(ctx.informer.stop)
        ctx.informer = None
    if ctx.releaser is not None:
        ctx.releaser.cancel()
        ctx.releaser = None
    if ctx.resync is not None:
        ctx.resync.cancel()
        ctx.resync = None
    if ctx.trimmer is not None:
        ctx.trimmer.cancel()
        ctx.trimmer = None
    if ctx.has_queue:
        await ctx.queue.stop()


def reconcile(ctx: Context, key: tuple[str, str, str]) -> Optional[float]:
    kind, namespace, name = key
    ACTIVITY.tick()
    metrics.RECONCILES.labels(kind).inc()
    if ctx.informer is not None and not ctx.informer.namespace_listed(namespace):
        # Its pods, Jobs or claims could not be listed (yet): an empty cache or index here means
        # "unknown", not "none". Acting on it could make a second Job or fail a running one; wait.
        return UNLISTED_RETRY
    if kind == "ClusterCheckpoint":
        return clustercheckpoint.reconcile(ctx, name)
    handler = trainingjob.reconcile if kind == "TrainingJob" else checkpoint.reconcile
    return handler(ctx, namespace, name)


# --- settings and process ------------------------------------------------------------------------

EMPTY_ESSENCE: dict[str, Any] = {}


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf builds an object's "essence" (a deep copy of the body without its status) on every
    event, to diff it for change handlers, and clears its progress from it: this operator has none
    (only event handlers and indexes; reconciles decide from the object itself), so nothing is
    built, stored or read (a tenth of the operator's CPU under load, bench/scale.py)."""

    # An empty essence, not None: with None, kopf takes every object for one never handled and
    # keeps more of each (the operator's RSS with 10,000 Checkpoints went from 120 to 259 MB).
    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return EMPTY_ESSENCE

    def fetch(self, *, body: kopf.Body) -> Any:
        return EMPTY_ESSENCE

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def configure_settings(settings: kopf.OperatorSettings, *, peering_priority: Optional[int] = None) -> None:
    kopf_startup.apply()  # whether peering paused the replica (see kopf_startup.py)
    settings.persistence.finalizer = KOPF_FINALIZER
    # Keep kopf's bookkeeping in annotations: the CRD schema would prune it from status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase(prefix=GROUP)
    settings.posting.level = logging.WARNING  # our own events are explicit; kopf adds only its errors
    settings.peering.name = PEERING_NAME
    if peering_priority is not None:
        settings.peering.priority = peering_priority
    settings.execution.max_workers = 4  # kopf's own sync work only; reconciles run in the queue's pool
    settings.background.instant_exit_timeout = 2.0
    settings.watching.server_timeout = 300
    # The initial LIST (and a relist) in pages: 10,000 Checkpoints are not one response in memory.
    settings.watching.chunk_size = LIST_CHUNK
    settings.networking.request_timeout = 60


def peering_priority_for(pod_name: str) -> int:
    """Distinct per replica, so two replicas never freeze each other at an equal priority."""
    return 100 + int(hashlib.sha256(pod_name.encode()).hexdigest()[:6], 16) % 10000


def make_memo(ctx: Context) -> kopf.Memo:
    return kopf.Memo(ctx=ctx)


def run_operator(args: argparse.Namespace) -> int:
    """`checkpoint-operator run`: the real process, in a cluster or against a kubeconfig."""
    from checkpoint_operator.kube import Kube
    from checkpoint_operator.logs import configure_logging
    from prometheus_client import start_http_server

    from checkpoint_operator import memtrace
    memtrace.install()  # CKPT_TRACEMALLOC=DIR only (memtrace.py)
    config = OperatorConfig.from_env()
    configure_logging(args.log_format or os.environ.get("CKPT_LOG_FORMAT", "text"))
    metrics_port = args.metrics_port if args.metrics_port is not None else 8080
    if metrics_port:
        start_http_server(metrics_port)
    liveness_port = args.liveness_port if args.liveness_port is not None else 8081

    settings = kopf.OperatorSettings()
    configure_settings(settings, peering_priority=peering_priority_for(os.environ.get("POD_NAME", os.uname().nodename)))
    namespaces = args.namespace or []
    ctx = Context(kube=Kube.from_environment(), config=config, namespaces=list(namespaces))
    metrics.REGISTRY.register(metrics.ApiRequests(ctx.kube.requests, ctx.kube.requests_by_target))
    asyncio.run(kopf.operator(
        settings=settings, clusterwide=not namespaces, namespaces=namespaces, standalone=args.standalone,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
        memo=make_memo(ctx)))
    return 0
