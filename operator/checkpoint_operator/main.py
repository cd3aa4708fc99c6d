"""The operator's table of contents: kopf declarations, each a line or two.

kopf watches the custom resources, keeps their indexes and peers; its event handlers only put keys
on the work queue (reconcile/work_queue.py explains why a queue and not kopf daemons), mapping an
event of one object to every object it may unblock. The child kinds the operator only watches to
wake work (its pods, Jobs and JobSets, and claims) come through an informer of its own
(reconcile/informer.py: LIST, WATCH, relist; no kopf machinery per event), which keeps the worker
pod index and feeds the same cache and wake-ups. Reconciles run in the queue
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
from checkpoint_operator.reconcile.indexes import (IndexKey, IndexValue, Indexes, checkpoint_keys,
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
# whole (a Checkpoint may adopt a user's claim), as do the custom resources (kopf's).
CHILDREN = ((kube.PODS, MANAGED_SELECTOR, False), (kube.JOBS, MANAGED_SELECTOR, False),
            (kube.JOBSETS, MANAGED_SELECTOR, True), (kube.PVCS, None, False))
LIST_CHUNK = informer.LIST_CHUNK
STARTUP_WAIT = informer.STARTUP_WAIT  # seconds start-up waits for a target that cannot be listed
UNLISTED_RETRY = 5.0  # seconds: a reconcile in a namespace not listed yet looks again after this
# Read at import by callers that configure local runs (local/run.py).
INTERVAL = OperatorConfig.from_env().reconcile_interval


# Moves with every index update, event and reconcile: the memory trimmer's sign of work (malloc.py).
ACTIVITY = malloc.Activity()
TRIM_POLICY = TrimPolicy()  # when freed memory goes back to the system (logic/memory_trim.py)


def _ctx(memo: kopf.Memo) -> Context:
    ctx: Context = memo["ctx"]
    return ctx


# --- indexes (kopf keeps them from the watch streams) ----------------------------------------------

@kopf.index(*CHECKPOINTS)
async def checkpoint_index(body: kopf.Body, **_: Any) -> dict[IndexKey, IndexValue]:
    ACTIVITY.tick()
    return checkpoint_keys(body)


@kopf.index(*TRAINING_JOBS)
async def training_job_index(body: kopf.Body, **_: Any) -> dict[IndexKey, IndexValue]:
    ACTIVITY.tick()
    return training_job_keys(body)


@kopf.index(*CLUSTER_CHECKPOINTS)
async def cluster_checkpoint_index(body: kopf.Body, **_: Any) -> dict[IndexKey, IndexValue]:
    ACTIVITY.tick()
    return cluster_checkpoint_keys(body)


# --- events -> work queue -----------------------------------------------------------------------

def _cache(memo: kopf.Memo, event: kopf.RawEvent) -> Context:
    """The object cache (kube.ObjectCache) learns of the change before anything it wakes reads it."""
    ctx = _ctx(memo)
    _kopf_indexed(ctx)
    ACTIVITY.tick()
    body = dict(event.get("object") or {})
    metrics.WATCH_EVENTS.labels(body.get("kind") or "").inc()
    ctx.kube.cache.observe(body, deleted=event.get("type") == "DELETED", from_watch=True)
    return ctx


@kopf.on.event(*TRAINING_JOBS)
async def training_job_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    metrics.observe_phase(event, body)
    wakeups.training_job_event(_cache(memo, event), event.get("type"), body)


@kopf.on.event(*CHECKPOINTS)
async def checkpoint_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    metrics.observe_phase(event, body)
    wakeups.checkpoint_event(_cache(memo, event), event.get("type"), body)


@kopf.on.event(*CLUSTER_CHECKPOINTS)
async def cluster_checkpoint_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
    _kopf_indexed(_ctx(memo))
    ACTIVITY.tick()
    metrics.observe_phase(dict(event), body)
    wakeups.cluster_checkpoint_event(_ctx(memo), event.get("type"), body)


def _kopf_indexed(ctx: Context) -> None:
    """kopf calls an event handler only once all its indexes are filled: the children's wake-ups
    held until then go on (reconcile/informer.py Holding)."""
    if ctx.child_wakeups is not None and not ctx.child_wakeups.open:
        ctx.child_wakeups.release()


# --- the child kinds: our own informer (reconcile/informer.py), not kopf ----------------------------

def child_changed(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """Each event of a pod, Job, JobSet or claim, in the informer's thread, one at a time: the pod
    index and the cache hold the body before any wake-up reads them (reconcile/wakeups.py, fact 1)."""
    ACTIVITY.tick()
    deleted = event_type == "DELETED"
    if body.get("kind") == "Pod":
        meta = body.get("metadata") or {}
        ctx.pod_index.update((meta.get("namespace") or "", meta.get("name") or ""),
                             {} if deleted else worker_pod_keys(body))
    metrics.WATCH_EVENTS.labels(body.get("kind") or "").inc()
    ctx.kube.cache.observe(body, deleted=deleted, from_watch=True)
    if ctx.child_wakeups is not None:
        ctx.child_wakeups.offer(event_type, body)


def child_wakeups(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    wakeups.child_event(ctx, body, event_type)


def held_wakeup(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """A wake-up held while kopf could not take it (informer.Holding keeps only `informer.held`):
    the whole body from the cache where it holds the same object, and a pod's remembered summary is
    forgotten (a slim body cannot say it is unchanged: it wakes its job)."""
    meta = body.get("metadata") or {}
    kind, namespace, name = str(body.get("kind") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or "")
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
    """Pods, Jobs and JobSets of ours (the selector kopf used), every claim; in the namespaces kopf
    watches (every one when none are listed)."""
    watching = Informer(ctx.kube, targets(CHILDREN, ctx.namespaces), lambda t, body: child_changed(ctx, t, body))
    loop = asyncio.get_running_loop()  # kopf's: whether it is paused (peering) is known per loop
    ctx.child_wakeups = Holding(lambda t, body: child_wakeups(ctx, t, body), watching.lock,
                                paused=lambda: kopf_startup.paused(loop),
                                deliver_held=lambda t, body: held_wakeup(ctx, t, body),
                                on_overflow=lambda: wake_all_unfinished(ctx))
    watching.on_change = lambda: metrics.observe_informer(watching.unsynced())
    watching.start()
    return watching


@kopf.on.probe(id="informer")
def informer_probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """In /healthz: the child kinds' targets that could not be listed, and why."""
    watching = _ctx(memo).informer
    unsynced = watching.unsynced() if watching is not None else []
    return {"synced": not unsynced, "unsynced": [why for _, why in unsynced]}


# --- the queue's life -----------------------------------------------------------------------------

@kopf.on.startup()
async def start_queue(memo: kopf.Memo, **indexes: Any) -> None:
    """kopf passes each index as a keyword argument named after its function (above)."""
    ctx = _ctx(memo)
    ctx.indexes = Indexes(indexes["checkpoint_index"], indexes["training_job_index"], ctx.pod_index,
                          indexes["cluster_checkpoint_index"])
    ctx.queue = WorkQueue(lambda key: reconcile(ctx, key), workers=ctx.config.workers,
                          base_backoff=ctx.config.reconcile_interval,
                          on_error=lambda key, _: metrics.RECONCILE_ERRORS.labels(key[0]).inc())
    ctx.queue.start()
    ctx.resync = wakeups.start_resync(ctx)
    ctx.trimmer = malloc.start_trimmer(ACTIVITY, TRIM_POLICY)
    # kopf starts watching once the startup handlers are done: the children's first LISTs are in the
    # pod index and the cache before any reconcile can run (kopf's indexes gave the same).
    # A target whose LIST keeps failing (a 403: one namespace's Role missing) holds no other: it is
    # waited for at most informer.STARTUP_WAIT seconds, and the reconciles of its namespace wait
    # until it lists (`reconcile` below); it is named in a warning, a gauge and /healthz.
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


@kopf.on.cleanup()
async def stop_queue(memo: kopf.Memo, **_: Any) -> None:
    ctx = _ctx(memo)
    if ctx.informer is not None:
        await asyncio.to_thread(ctx.informer.stop)
        ctx.informer = None
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
    kopf_startup.apply()  # index pre-population linear in the objects (see kopf_startup.py)
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
