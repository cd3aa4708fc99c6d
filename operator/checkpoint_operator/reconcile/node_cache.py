"""The node-local input cache (logic/node_cache.py), the steps that talk to the API: the namespace's
cache volume and claim before its first cached pod, and what the fills report (metrics, and the
inputs' `status.cachedOn`: asked for by the job's reconcile, written by the Checkpoint's)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Optional

from pydantic import ValidationError

from checkpoint_operator import metrics
from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointStatus
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.kube import CHECKPOINTS, PERSISTENT_VOLUMES, PVCS, ApiError, Conflict
from checkpoint_operator.logic import node_cache
from checkpoint_operator.logic.signatures import CACHED_ON_REQUEST
from checkpoint_operator.logic.status import StatusChange
from checkpoint_operator.logic.workers import WorkerPod
from checkpoint_operator.reconcile import signing
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.status_writer import write_status

logger = logging.getLogger("checkpoint_operator.node_cache")
SEEN_LIMIT = 100_000  # fills counted (pod uid and key): bounded memory, whatever the number of pods


class _Seen:
    """Fill reports counted already, by pod uid and input key (bounded, oldest forgotten first)."""

    def __init__(self) -> None:
        self._uids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, uid: str) -> bool:
        with self._lock:
            if uid in self._uids:
                return False
            self._uids[uid] = None
            if len(self._uids) > SEEN_LIMIT:
                self._uids.popitem(last=False)
            return True


_SEEN = _Seen()


def new_reports(pods: list[WorkerPod], seen: Optional[_Seen] = None) -> list[node_cache.FillReport]:
    """The fills not counted yet: each once, by pod and input (a pod's fills end one after the other)."""
    seen = seen or _SEEN
    return [r for pod in pods if pod.uid for r in pod.cache_fills if seen.first_time(f"{pod.uid}/{r.key}")]


def uses_cache(volumes: list[dict[str, Any]]) -> bool:
    return any((v.get("persistentVolumeClaim") or {}).get("claimName") == node_cache.CACHE_CLAIM for v in volumes)


ENSURED_FOR_SECONDS = 300.0  # a namespace's volume and claim are looked for again after this (one deleted by hand)


def ensure_cache_claim(ctx: Context, namespace: str, now: Optional[float] = None) -> bool:
    """The namespace's local PersistentVolume and its claim (idempotent creates; both stay: the cache
    outlives jobs, and holds only copies of what the store has). Made or found once per namespace every
    ENSURED_FOR_SECONDS, not at every job's start (requests per lifecycle). True when it asked the API."""
    now = time.monotonic() if now is None else now
    last = ctx.cache_claims_ensured.get(namespace)
    if last is not None and now - last < ENSURED_FOR_SECONDS:
        return False
    ctx.kube.ensure(PERSISTENT_VOLUMES, "", node_cache.build_cache_volume(namespace, ctx.config))
    ctx.kube.ensure(PVCS, namespace, node_cache.build_cache_claim(namespace, ctx.config))
    ctx.cache_claims_ensured[namespace] = now  # a plain dict write: atomic under the GIL
    return True


def record_fills(ctx: Context, tj: TrainingJob, pods: list[WorkerPod]) -> None:
    """Count each pod's fills once, and bring the Checkpoints they concern up to date: the node of a fill
    holds its input; the node of an eviction no longer holds what it evicted."""
    reports = new_reports(pods)
    if not reports:
        return
    for report in reports:
        metrics.NODE_CACHE_FILLS.labels(report.outcome).inc()
        metrics.NODE_CACHE_SAVED_BYTES.inc(report.saved_bytes)
        metrics.NODE_CACHE_FETCHED_BYTES.inc(report.fetched_bytes)
        metrics.NODE_CACHE_EVICTIONS.inc(report.evicted_count)
        metrics.NODE_CACHE_EVICTED_BYTES.inc(report.evicted_bytes)
    namespace = tj.metadata.namespace
    filled = {r.digest for r in reports}
    evicted = {"sha256:" + e.key.rpartition("/")[2] for r in reports for e in r.evicted
               if e.key.startswith(namespace + "/")}
    bodies: list[dict[str, Any]] = []
    if evicted:  # rare: one LIST finds every Checkpoint of those digests
        bodies = ctx.kube.list(CHECKPOINTS, namespace)
    else:
        for pinned in tj.status.inputs or []:
            if pinned.digest in filled and pinned.kind is None:
                body = ctx.kube.get(CHECKPOINTS, namespace, pinned.name)
                if body is not None:
                    bodies.append(body)
    for body in bodies:
        digest = (body.get("status") or {}).get("digest")
        if digest not in filled | evicted:
            continue
        try:
            _ask_cached_on(ctx, Checkpoint.model_validate(body), digest, reports)
        except (ValidationError, ApiError) as exc:  # informational: never what stops a job
            logger.warning("Checkpoint %s/%s: status.cachedOn not asked for: %s", namespace,
                           (body.get("metadata") or {}).get("name"), exc)


ASK_ATTEMPTS = 3  # conditional patches of the annotation: another job's fills of the same input conflict


def _ask_cached_on(ctx: Context, checkpoint: Checkpoint, digest: str, reports: list[node_cache.FillReport]) -> None:
    """Ask the Checkpoint's reconcile (the one writer of its status) for cachedOn after `reports`: the
    annotation, made from what it asks already (or the status), written conditionally (two jobs'
    fills of one input keep both nodes)."""
    meta = checkpoint.metadata
    for _ in range(ASK_ATTEMPTS):
        asked = node_cache.requested_cached_on(signing.cached_on_request(ctx, checkpoint))
        current = asked if asked is not None else checkpoint.status.cachedOn or []
        wanted = node_cache.cached_on(current, digest, reports)
        if wanted == current:
            return
        try:
            ctx.kube.patch(CHECKPOINTS, meta.namespace, meta.name, {"metadata": {
                "annotations": signing.signed_annotations(ctx, checkpoint, CACHED_ON_REQUEST,
                                                          node_cache.cached_on_request(wanted)),
                "resourceVersion": checkpoint.metadata.resourceVersion}})
            return
        except Conflict:
            body = ctx.kube.get(CHECKPOINTS, meta.namespace, meta.name)
            if body is None:
                return
            checkpoint = Checkpoint.model_validate(body)


def sync_cached_on(ctx: Context, checkpoint: Checkpoint) -> None:
    """status.cachedOn as the jobs that read the input asked (the annotation), written only when it
    changes; from the Checkpoint's own reconcile. Only a request the operator signed for this Checkpoint:
    anyone may write an annotation."""
    asked = node_cache.requested_cached_on(signing.cached_on_request(ctx, checkpoint))
    if asked is not None and asked != (checkpoint.status.cachedOn or []):
        write_status(ctx, checkpoint, StatusChange(fields=CheckpointStatus(cachedOn=asked or None)))
