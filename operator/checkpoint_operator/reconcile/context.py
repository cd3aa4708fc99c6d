"""What every handler needs: the API client, the settings, the indexes, the work queue, and a
way to record events.

Events are posted through the API client, not kopf's poster: reconciles run in the operator's
own work queue (reconcile/work_queue.py), outside kopf's per-object handler context that
`kopf.event()` needs. One POST per change of reason or message (never one per pass).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from checkpoint_operator.api.checkpoint import CheckpointHead
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpointHead
from checkpoint_operator.api.trainingjob import TrainingJobHead, TrainingJobPhase
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.kube import EVENTS, ApiError, Kube
from checkpoint_operator.logic.conditions import now_rfc3339, one_line_message
from checkpoint_operator.logic.inputs import TrainingJobInfo
from checkpoint_operator.logic.live_sealing import LiveMemory
from checkpoint_operator.logic.workers import WorkerPod
from checkpoint_operator.reconcile.indexes import Indexes, ObjectIndex
from checkpoint_operator.reconcile.informer import Holding, Informer
from checkpoint_operator.reconcile.signing_keys import SigningKeys
from checkpoint_operator.reconcile.work_queue import WorkQueue

logger = logging.getLogger("checkpoint_operator")
COMPONENT = "checkpoint-operator"
MAX_EVENT_MESSAGE = 1024
ObjectKey = tuple[str, str, str]  # (kind, namespace, name): what the work queue holds


@dataclass
class Context:
    kube: Kube
    config: OperatorConfig
    _indexes: Optional[Indexes] = field(default=None, repr=False)
    _queue: Optional[WorkQueue[ObjectKey]] = field(default=None, repr=False)
    # Per object, in memory only; each entry goes with its object (`forget`: its DELETED event,
    # the end of its work) and the resync drops any whose object left the index meanwhile.
    # (namespace, name) of a TrainingJob -> the Checkpoint uids its previous event showed it
    # using: a job that drops its uses label still wakes those Checkpoints (reconcile/wakeups.py)
    last_uses: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    # (kind, namespace, name) -> resourceVersion of our own last write of that object: its
    # watch event needs no reconcile of the object itself (the writer acted on it already)
    own_writes: dict[ObjectKey, str] = field(default_factory=dict)
    # (namespace, uid) of a running live-sealing TrainingJob -> what was reported and annotated
    # (reconcile/live_sealing.py)
    live: dict[tuple[str, str], LiveMemory] = field(default_factory=dict)
    # (namespace, name) of a finished agent pod -> (its uid, its parsed result): its owner may wait
    # on something else before it deletes the pod (reconcile/agent_runs.py); goes with the pod.
    agent_results: dict[tuple[str, str], tuple[str, Any]] = field(default_factory=dict)
    # (namespace, name) of a pod of a TrainingJob -> what its job read of it at its last event that
    # woke the job (logic/workers.py wake_summary): an event that changes none of it wakes nothing.
    pod_seen: dict[tuple[str, str], tuple[WorkerPod, str]] = field(default_factory=dict)
    resync: Optional[asyncio.Task[None]] = None
    # The informer of every watched kind (reconcile/informer.py; main.py starts it with the queue),
    # the indexes it keeps (read through `indexes`), and the wake-ups it holds while the replica may
    # not act (start-up: informer.Holding; `releaser` lets them go on once the indexes are filled).
    informer: Optional[Informer] = field(default=None, repr=False)
    pod_index: ObjectIndex = field(default_factory=ObjectIndex, repr=False)
    checkpoint_index: ObjectIndex = field(default_factory=ObjectIndex, repr=False)
    training_job_index: ObjectIndex = field(default_factory=ObjectIndex, repr=False)
    cluster_checkpoint_index: ObjectIndex = field(default_factory=ObjectIndex, repr=False)
    child_wakeups: Optional[Holding] = field(default=None, repr=False)  # every kind's, not only children's
    releaser: Optional[asyncio.Task[None]] = None
    # Whether this replica may not act: kopf's peering paused it (a peer of higher priority runs) or has
    # not decided yet (kopf_startup.may_act). The queue runs nothing, the resync wakes nothing.
    paused: Callable[[], bool] = field(default=lambda: False, repr=False)
    # Gives freed memory back to the system after a burst of work (malloc.py); None without glibc.
    trimmer: Optional[asyncio.Task[None]] = None
    # namespace -> when its node-cache volume and claim were last made or found (reconcile/node_cache.py)
    cache_claims_ensured: dict[str, float] = field(default_factory=dict)
    # The namespaces the operator serves (empty: every namespace): a ClusterCheckpoint's users are listed there.
    namespaces: list[str] = field(default_factory=list)
    # The operator's signing keys (reconcile/signing_keys.py): read once per process, never logged.
    signing_keys: SigningKeys = field(default_factory=SigningKeys, repr=False)

    @property
    def indexes(self) -> Indexes:
        if self._indexes is None:
            raise RuntimeError("the indexes exist once the operator has started (main.py start_queue)")
        return self._indexes

    @indexes.setter
    def indexes(self, indexes: Optional[Indexes]) -> None:
        self._indexes = indexes

    @property
    def queue(self) -> WorkQueue[ObjectKey]:
        if self._queue is None:
            raise RuntimeError("the work queue exists once the operator has started (main.py start_queue)")
        return self._queue

    @queue.setter
    def queue(self, queue: Optional[WorkQueue[ObjectKey]]) -> None:
        self._queue = queue

    @property
    def has_queue(self) -> bool:
        return self._queue is not None

    def event(self, obj: CheckpointHead | TrainingJobHead | ClusterCheckpointHead | Mapping[str, Any], type_: str, reason: str,
              message: str) -> None:
        """A Kubernetes Event on `obj` (an api model or a body) and a log line."""
        ref = _reference(obj)
        message = one_line_message(message)  # an Event is one line, whatever it quotes
        log = logger.warning if type_ == "Warning" else logger.info
        log("%s %s/%s: %s: %s", ref["kind"], ref["namespace"], ref["name"], reason, message)
        now = now_rfc3339()
        # A cluster-scoped object's Events go to the catalog namespace (the operator's): `kubectl describe`
        # finds them in any namespace, and the operator writes nothing in a namespace it does not serve.
        namespace = ref["namespace"] or self.config.catalog_namespace
        body = {"metadata": {"generateName": f"{ref['name'][:200]}.", "namespace": namespace},
                "involvedObject": {k: v for k, v in ref.items() if v or k != "namespace"},  # none: cluster-scoped
                "type": type_, "reason": reason, "message": message[:MAX_EVENT_MESSAGE],
                "source": {"component": COMPONENT}, "reportingComponent": COMPONENT, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now}
        try:
            self.kube.create(EVENTS, namespace, body)
        except (ApiError, OSError) as exc:  # an event is a courtesy: never fail a reconcile for it
            logger.warning("could not post event %s on %s/%s: %s", reason, ref["namespace"], ref["name"], exc)

    def wrote(self, body: Optional[Mapping[str, Any]]) -> None:
        """Remember that `body` (as an API write returned it) is our own doing."""
        meta = (body or {}).get("metadata") or {}
        if body and meta.get("resourceVersion"):
            self.own_writes[(body.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))] = \
                meta["resourceVersion"]

    def forget(self, kind: str, namespace: str, name: str, uid: str = "") -> None:
        """What is kept in memory of an object that is gone (its DELETED event)."""
        self.own_writes.pop((kind, namespace, name), None)
        if kind == "TrainingJob":
            self.last_uses.pop((namespace, name), None)
            self.live.pop((namespace, uid), None)

    def forget_gone(self) -> int:
        """Drop what is kept of objects the indexes no longer hold (a DELETED event that never
        came: a watch relisted over a deletion); the resync calls it. Returns how many went."""
        indexes = self.indexes
        gone_writes = [key for key in list(self.own_writes) if not _indexed(indexes, *key)]
        gone_uses = [key for key in list(self.last_uses) if indexes.training_job(*key) is None]
        gone_live = [key for key in list(self.live) if not _running(indexes.training_job_by_uid(*key))]
        for key in gone_writes:
            self.own_writes.pop(key, None)
        for job in gone_uses:
            self.last_uses.pop(job, None)
        for live in gone_live:
            self.live.pop(live, None)
        # A pod the cache no longer holds (gone, or being deleted by us): its next event wakes its job.
        gone_pods = [key for key in list(self.pod_seen) if not self.kube.cache.knows("Pod", *key)] \
            if self.pod_seen else []
        for pod in gone_pods:
            self.pod_seen.pop(pod, None)
        return len(gone_writes) + len(gone_uses) + len(gone_live) + len(gone_pods)

    def warn(self, obj: CheckpointHead | TrainingJobHead | ClusterCheckpointHead | Mapping[str, Any], reason: str, message: str) -> None:
        self.event(obj, "Warning", reason, message)

    def info(self, obj: CheckpointHead | TrainingJobHead | ClusterCheckpointHead | Mapping[str, Any], reason: str, message: str) -> None:
        self.event(obj, "Normal", reason, message)


def _indexed(indexes: Indexes, kind: str, namespace: str, name: str) -> bool:
    if kind == "TrainingJob":
        return indexes.training_job(namespace, name) is not None
    if kind == "ClusterCheckpoint":
        return indexes.cluster_checkpoint(name) is not None
    return indexes.checkpoint(namespace, name) is not None


def _running(job: Optional[TrainingJobInfo]) -> bool:
    return job is not None and job.phase == TrainingJobPhase.RUNNING


def _reference(obj: CheckpointHead | TrainingJobHead | ClusterCheckpointHead | Mapping[str, Any]) -> dict[str, str]:
    if isinstance(obj, (CheckpointHead, TrainingJobHead, ClusterCheckpointHead)):
        meta = obj.metadata
        return {"apiVersion": obj.apiVersion, "kind": obj.kind, "name": meta.name, "namespace": meta.namespace,
                "uid": meta.uid}
    raw = obj.get("metadata", {})
    return {"apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""), "name": raw.get("name", ""),
            "namespace": raw.get("namespace", ""), "uid": raw.get("uid", "")}
