"""Prometheus metrics (prometheus-client). Names follow Prometheus conventions; labels are
bounded sets (phase, kind, direction, store), never object names."""

from __future__ import annotations

import threading
from typing import Any, Mapping

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, REGISTRY
from prometheus_client.registry import Collector

PREFIX = "checkpoint_operator"

SNAPSHOT_DURATION = Histogram(
    f"{PREFIX}_snapshot_duration_seconds", "Time from a job's end to its Checkpoints being Ready.",
    ["store"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200))
TRANSFERRED_BYTES = Counter(
    f"{PREFIX}_transferred_bytes_total", "Bytes snapshotted, uploaded or imported into Checkpoints.",
    ["direction"])
CHECKPOINTS_CREATED = Counter(f"{PREFIX}_checkpoints_created_total", "Checkpoints created from job outputs.")
BLOCKED_DELETIONS = Counter(
    f"{PREFIX}_blocked_deletions_total", "Checkpoint deletions refused because a live TrainingJob uses them.")
NODE_CACHE_FILLS = Counter(
    f"{PREFIX}_node_cache_fills_total", "Inputs made ready in a node-local cache by training pods, by outcome: hit "
    "(read from the node), miss (downloaded), refetched (a corrupted entry downloaded again).", ["outcome"])
NODE_CACHE_SAVED_BYTES = Counter(
    f"{PREFIX}_node_cache_saved_bytes_total", "Input bytes pods read from a node cache instead of the store.")
NODE_CACHE_FETCHED_BYTES = Counter(
    f"{PREFIX}_node_cache_fetched_bytes_total", "Input bytes node caches downloaded from the store.")
NODE_CACHE_EVICTIONS = Counter(
    f"{PREFIX}_node_cache_evictions_total", "Entries evicted from node caches (least recently used, unused).")
NODE_CACHE_EVICTED_BYTES = Counter(
    f"{PREFIX}_node_cache_evicted_bytes_total", "Bytes evicted from node caches.")
INFORMER_UNSYNCED = Gauge(f"{PREFIX}_informer_unsynced_targets",
                          "Child-kind informer targets (resource, namespace) not listed yet; 1 each.",
                          ["resource", "namespace", "status"])


_INFORMER_LOCK = threading.Lock()  # reflector threads report at once: clear-and-set is one step


def observe_informer(unsynced: list[tuple[Any, str]]) -> None:
    """Each target not listed (its LIST failing: the status is the HTTP one, "pending" before any)."""
    with _INFORMER_LOCK:
        INFORMER_UNSYNCED.clear()
        for target, why in unsynced:
            status = why.split("HTTP ", 1)[1].split(" ", 1)[0] if "HTTP " in why else \
                ("pending" if why.endswith("not listed yet") else "error")
            INFORMER_UNSYNCED.labels(target.resource.plural, target.namespace or "", status).set(1)


RECONCILES = Counter(f"{PREFIX}_reconciles_total", "Reconcile passes run (each a wake-up from the work queue).",
                     ["kind"])
RECONCILE_ERRORS = Counter(f"{PREFIX}_reconcile_errors_total", "Reconciliations that raised an error.", ["kind"])
WATCH_EVENTS = Counter(f"{PREFIX}_watch_events_total", "Watch events the operator handled (its informer's, by kind).",
                       ["kind"])
AGENT_RESULT_BYTES = Histogram(
    f"{PREFIX}_agent_result_bytes", "Size of the result line an agent pod wrote (read bounded; a few hundred bytes "
    "per checkpoint, whatever the number of files).", ["task"],
    buckets=(1_000, 10_000, 100_000, 1_000_000, 2_000_000, 4_000_000, 6_500_000))


class PhaseTracker(Collector):
    """Objects by phase, as last seen by the operator: a gauge per (kind, phase)."""

    PHASES = {"Checkpoint": ("Pending", "Importing", "Ready", "Failed"),
              "TrainingJob": ("Pending", "Queued", "Running", "Snapshotting", "Succeeded", "Failed")}

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def observe(self, kind: str, uid: str, phase: str | None) -> None:
        with self._lock:
            self._phases[(kind, uid)] = phase or "Pending"

    def forget(self, kind: str, uid: str) -> None:
        with self._lock:
            self._phases.pop((kind, uid), None)

    def collect(self):
        with self._lock:
            phases = dict(self._phases)
        for kind, metric in (("Checkpoint", "checkpoints"), ("TrainingJob", "trainingjobs")):
            family = GaugeMetricFamily(f"{PREFIX}_{metric}", f"{kind}s by phase.", labels=["phase"])
            for phase in self.PHASES[kind]:
                family.add_metric([phase], sum(1 for (k, _), p in phases.items() if k == kind and p == phase))
            yield family


PHASES = PhaseTracker()
REGISTRY.register(PHASES)


class ApiRequests(Collector):
    """The operator's own API requests by HTTP method, read from a client's `requests` counter
    (the watch streams, the informer's and kopf's peering, are not among them)."""

    def __init__(self, counts, by_target=None) -> None:
        self._counts = counts
        self._by_target = by_target

    def collect(self):
        family = CounterMetricFamily(f"{PREFIX}_api_requests", "API requests the reconciles sent.", labels=["method"])
        for method, count in sorted(dict(self._counts).items()):
            family.add_metric([method], count)
        yield family
        if self._by_target is not None:
            targets = CounterMetricFamily(f"{PREFIX}_api_requests_by_target",
                                          "API requests the reconciles sent, by method and what they touch.",
                                          labels=["method", "target"])
            for (method, target), count in sorted(dict(self._by_target).items()):
                targets.add_metric([method, target], count)
            yield targets


def observe_phase(event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    """Objects by phase, from every change the informer hands on (also right after a restart)."""
    kind, uid = body.get("kind") or "", body.get("metadata", {}).get("uid", "")
    if event.get("type") == "DELETED":
        PHASES.forget(kind, uid)
    else:
        PHASES.observe(kind, uid, (body.get("status") or {}).get("phase"))
