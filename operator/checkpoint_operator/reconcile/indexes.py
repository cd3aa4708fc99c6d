"""The operator's look-ups, kept from the watch streams (no API request).

The operator's informer (reconcile/informer.py, main.py `changed`) keeps four `ObjectIndex`es
current on every event, with the key functions below: Checkpoints, TrainingJobs,
ClusterCheckpoints (what three `kopf.index`es kept before, with the same semantics: per object,
key -> value, its entries replaced on each event, removed with it) and the worker pods. `Indexes` answers logic/inputs.py's `Lookup` and the wake-up questions (which
jobs wait on this Checkpoint, which Checkpoints does this job use) from them. Values are
small frozen summaries, so 10,000 Checkpoints cost a few MB.
"""

from __future__ import annotations

from typing import Any, Collection, Iterable, Iterator, Mapping, NamedTuple, Optional, TypeVar, Union

from checkpoint_operator.api.checkpoint import IMPORT_KINDS, CheckpointPhase
from checkpoint_operator.api.wire import (CheckpointSourceWire, CheckpointSpecWire, CheckpointStatusWire, MetadataWire,
                                          TrainingJobSpecWire, VolumeSourceWire, checkpoint_wire, object_wire,
                                          training_job_wire)
from checkpoint_operator.logic import data_holds
from checkpoint_operator.logic.claim_guard import MAX_TEMPLATE_CLAIMS, claim_references, distinct_claims
from checkpoint_operator.logic.inputs import CheckpointInfo, TrainingJobInfo
from checkpoint_operator.logic.protection import used_uids
from checkpoint_operator.logic.volume_snapshots import SNAPSHOT_NOT_READY, SnapshotUse
from checkpoint_operator.logic.workers import WorkerPod, worker_pod
from checkpoint_operator.logic.workload import (LABEL_COMPONENT, LABEL_TRAINING_JOB_UID, import_claim_name_for,
                                                output_claim_name_for)

CLAIM_OWNING_SOURCES = (*IMPORT_KINDS, "upload")  # Checkpoints whose data lands on a claim of their own

PodState = WorkerPod  # the pod index's values (logic/workers.py)


class JobUse(NamedTuple):
    """A TrainingJob labelled as using a Checkpoint."""

    name: str
    uid: str


class CatalogUse(NamedTuple):
    """A TrainingJob of some namespace labelled as using a ClusterCheckpoint."""

    namespace: str
    name: str
    uid: str


class NamespacedJob(NamedTuple):
    """A TrainingJob of some namespace whose spec names a ClusterCheckpoint."""

    namespace: str
    name: str


class ClaimOwner(NamedTuple):
    """The object the operator makes a claim for (a TrainingJob's output, a Checkpoint's import)."""

    kind: str
    name: str


# A key is (what, namespace, ...): ("name", ns, name), ("wants", ns, kind, value), ...; each
# kind of key holds one kind of value, and the accessors of `Indexes` read each as its type.
IndexKey = tuple[str, ...]
IndexValue = Union[CheckpointInfo, TrainingJobInfo, PodState, JobUse, CatalogUse, NamespacedJob, ClaimOwner,
                   data_holds.Pointer, SnapshotUse, str]
# An index: a mapping of keys to the collection of values of every object (ObjectIndex; kopf.Index was the same).
Index = Mapping[IndexKey, Collection[IndexValue]]
V = TypeVar("V", CheckpointInfo, TrainingJobInfo, PodState, JobUse, CatalogUse, NamespacedJob, ClaimOwner,
            data_holds.Pointer, SnapshotUse, str)


def _ns_name(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = object_wire(body).get("metadata") or MetadataWire()
    return meta.get("namespace", ""), meta.get("name", "")


def checkpoint_keys(raw: Mapping[str, Any]) -> dict[IndexKey, IndexValue]:
    body = checkpoint_wire(raw)
    namespace, _ = _ns_name(raw)
    info = CheckpointInfo.from_body(raw)
    keys: dict[IndexKey, IndexValue] = {("name", namespace, info.name): info, ("uid", namespace, info.uid): info}
    if info.producer_uid:
        keys[("producer", namespace, info.producer_uid)] = info
    source = (body.get("spec") or CheckpointSpecWire()).get("source") or CheckpointSourceWire()
    claim = (source.get("volume") or VolumeSourceWire()).get("claimName")
    if claim:
        keys[("claim", namespace, claim)] = info.name
    status = body.get("status") or CheckpointStatusWire()
    on_claim = data_holds.volume_pointer(info.name, source, status)
    if on_claim is not None:
        keys[("on-claim", namespace, on_claim[0])] = on_claim[1]
    s3_uri = ((status.get("location") or {}).get("s3") or {}).get("uri")
    if isinstance(s3_uri, str) and s3_uri:
        keys[("on-s3", namespace)] = data_holds.Pointer(info.name, (s3_uri,))
    if any(source.get(kind) is not None for kind in CLAIM_OWNING_SOURCES):
        keys[("managed-claim", namespace, import_claim_name_for(info.name, info.uid))] = ClaimOwner("Checkpoint",
                                                                                                   info.name)
    for in_snapshot in snapshot_uses(info, raw):  # one key per snapshot (a volume per worker: several)
        keys[("in-snapshot", namespace, in_snapshot.snapshot)] = in_snapshot
    return keys


def snapshot_uses(info: CheckpointInfo, raw: Mapping[str, Any]) -> list[SnapshotUse]:
    """A Ready Checkpoint in VolumeSnapshots (or one failed while one was not readyToUse), once per
    snapshot (its output's, or each worker volume's): what the resync compares with one LIST of the
    namespace's snapshots."""
    status = raw.get("status") or {}
    location = (status.get("location") or {}) if isinstance(status, Mapping) else {}
    if not isinstance(location, Mapping) or info.deleting:
        return []
    parts = location.get("snapshotParts")
    snapshots = [location.get("snapshot")] + (list(parts) if isinstance(parts, list) else [])
    waiting = any(isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("reason") == SNAPSHOT_NOT_READY
                  for c in status.get("conditions") or [])
    ready = info.phase == CheckpointPhase.READY
    if not ready and not waiting:
        return []
    uses: dict[str, SnapshotUse] = {}
    for snapshot in snapshots:
        if not isinstance(snapshot, Mapping):
            continue
        name, uid = snapshot.get("volumeSnapshotName"), snapshot.get("volumeSnapshotUID")
        if not isinstance(name, str) or not name or name in uses:
            continue
        uses[name] = SnapshotUse(info.name, name, uid if isinstance(uid, str) else None, ready, waiting)
    return list(uses.values())


def training_job_keys(raw: Mapping[str, Any]) -> dict[IndexKey, IndexValue]:
    body = training_job_wire(raw)
    namespace, name = _ns_name(raw)
    info = TrainingJobInfo.from_body(raw)
    keys: dict[IndexKey, IndexValue] = {
        ("name", namespace, name): info, ("uid", namespace, info.uid): info,
        ("managed-claim", namespace, output_claim_name_for(name, info.uid)): ClaimOwner("TrainingJob", name)}
    if info.phase.is_finished:
        return keys
    spec = body.get("spec") or TrainingJobSpecWire()
    template = (spec.get("template") or {}).get("spec") or {}
    for claim in distinct_claims(claim_references(template))[:MAX_TEMPLATE_CLAIMS]:
        keys[("template-claim", namespace, claim)] = name
    for ref in spec.get("checkpoints") or []:
        wanted = (("name", ref.get("name")), ("uid", ref.get("uid")), ("producer", ref.get("fromTrainingJob")),
                  ("cluster", ref.get("clusterCheckpoint")))
        for kind, value in wanted:
            if value:
                keys[("wants", namespace, kind, value)] = name
                if kind == "cluster":  # a catalog entry's events wake its waiting jobs in every namespace
                    keys[("wants-cluster", value)] = NamespacedJob(namespace, name)
    for uid in used_uids((body.get("metadata") or MetadataWire()).get("labels")):
        keys[("uses", namespace, uid)] = JobUse(name, info.uid)
        keys[("uses-any", uid)] = CatalogUse(namespace, name, info.uid)  # a ClusterCheckpoint's users, any namespace
    return keys


def cluster_checkpoint_keys(body: Mapping[str, Any]) -> dict[IndexKey, IndexValue]:
    info = CheckpointInfo.from_body(body)
    return {("name", info.name): info, ("uid", info.uid): info}


def worker_pod_keys(body: Mapping[str, Any]) -> dict[IndexKey, IndexValue]:
    labels = (object_wire(body).get("metadata") or MetadataWire()).get("labels") or {}
    if labels.get(LABEL_COMPONENT) != "worker" or not labels.get(LABEL_TRAINING_JOB_UID):
        return {}
    namespace, _ = _ns_name(body)
    return {("pods", namespace, labels[LABEL_TRAINING_JOB_UID]): worker_pod(body)}


class Indexes:
    """Read access to the indexes (`ObjectIndex`es, or plain dicts of lists in tests).

    Reads happen in worker threads while the informer updates the indexes in its threads: each read
    copies one store with a single `list()` (a C-level copy of a dict's values, atomic under
    the GIL), so it never iterates a dict that changes."""

    def __init__(self, checkpoints: Index, training_jobs: Index, pods: Index,
                 cluster_checkpoints: Optional[Index] = None):
        self._checkpoints, self._training_jobs, self._pods = checkpoints, training_jobs, pods
        self._cluster_checkpoints: Index = cluster_checkpoints if cluster_checkpoints is not None else {}

    @staticmethod
    def _all(index: Index, key: IndexKey, kind: type[V]) -> list[V]:
        store = index.get(key)
        return [v for v in list(store) if isinstance(v, kind)] if store is not None else []

    def _one(self, index: Index, key: IndexKey, kind: type[V]) -> Optional[V]:
        values = self._all(index, key, kind)
        return values[0] if values else None

    # --- logic.inputs.Lookup ---------------------------------------------------------------
    def checkpoint(self, namespace: str, name: str) -> Optional[CheckpointInfo]:
        return self._one(self._checkpoints, ("name", namespace, name), CheckpointInfo)

    def checkpoint_by_uid(self, namespace: str, uid: str) -> Optional[CheckpointInfo]:
        return self._one(self._checkpoints, ("uid", namespace, uid), CheckpointInfo)

    def checkpoints_of(self, namespace: str, producer_uid: str) -> list[CheckpointInfo]:
        return self._all(self._checkpoints, ("producer", namespace, producer_uid), CheckpointInfo)

    def training_job(self, namespace: str, name: str) -> Optional[TrainingJobInfo]:
        return self._one(self._training_jobs, ("name", namespace, name), TrainingJobInfo)

    def cluster_checkpoint(self, name: str) -> Optional[CheckpointInfo]:
        return self._one(self._cluster_checkpoints, ("name", name), CheckpointInfo)

    def cluster_checkpoint_by_uid(self, uid: str) -> Optional[CheckpointInfo]:
        return self._one(self._cluster_checkpoints, ("uid", uid), CheckpointInfo)

    def users_of_cluster_checkpoint(self, uid: str, name: str) -> list[CatalogUse]:
        """The unfinished TrainingJobs of any namespace labelled as using the catalog entry `uid` whose
        spec names it (`name`): a label alone, which a tenant may set on any job, is no use."""
        naming = {(j.namespace, j.name) for j in self._all(self._training_jobs, ("wants-cluster", name), NamespacedJob)}
        return [u for u in self._all(self._training_jobs, ("uses-any", uid), CatalogUse)
                if (u.namespace, u.name) in naming]

    def jobs_waiting_on_cluster_checkpoint(self, name: str) -> list[NamespacedJob]:
        """The unfinished TrainingJobs whose spec names the catalog entry."""
        return self._all(self._training_jobs, ("wants-cluster", name), NamespacedJob)

    # --- wake-ups ------------------------------------------------------------------------
    def training_job_by_uid(self, namespace: str, uid: str) -> Optional[TrainingJobInfo]:
        return self._one(self._training_jobs, ("uid", namespace, uid), TrainingJobInfo)

    def jobs_waiting_on(self, namespace: str, kind: str, value: str) -> list[str]:
        """Unfinished TrainingJobs whose spec refers to a Checkpoint `name`/`uid` or to a
        `producer` TrainingJob by name."""
        return self._all(self._training_jobs, ("wants", namespace, kind, value), str)

    def users_of(self, namespace: str, checkpoint_uid: str) -> list[JobUse]:
        """The unfinished TrainingJobs labelled as using the Checkpoint."""
        return self._all(self._training_jobs, ("uses", namespace, checkpoint_uid), JobUse)

    def checkpoints_on_claim(self, namespace: str, claim: str) -> list[str]:
        return self._all(self._checkpoints, ("claim", namespace, claim), str)

    def pointers_on_claim(self, namespace: str, claim: str) -> list[data_holds.Pointer]:
        """Where each Checkpoint on the claim points (adopted paths and locations)."""
        return self._all(self._checkpoints, ("on-claim", namespace, claim), data_holds.Pointer)

    def pointers_in_store(self, namespace: str) -> list[data_holds.Pointer]:
        """The s3 prefix of each Checkpoint of the namespace whose data is in the store."""
        return self._all(self._checkpoints, ("on-s3", namespace), data_holds.Pointer)

    def managed_claim(self, namespace: str, claim: str) -> Optional[ClaimOwner]:
        """The TrainingJob or Checkpoint the operator makes (or made) this claim for."""
        return self._one(self._checkpoints, ("managed-claim", namespace, claim), ClaimOwner) or \
            self._one(self._training_jobs, ("managed-claim", namespace, claim), ClaimOwner)

    def jobs_naming_claim(self, namespace: str, claim: str) -> list[str]:
        """Unfinished TrainingJobs whose pod template names the claim."""
        return self._all(self._training_jobs, ("template-claim", namespace, claim), str)

    def worker_pods(self, namespace: str, training_job_uid: str, controllers: Collection[str]) -> list[WorkerPod]:
        """The pods of the job's workers: those the label names AND an object the operator created
        controls (`controllers`: the UIDs reconcile/workloads.worker_controllers gives). A pod that
        merely carries the label is not one (issue 23 item 9): its log is never read, its state never
        decides anything."""
        if not controllers:
            return []
        return [p for p in self._all(self._pods, ("pods", namespace, training_job_uid), WorkerPod)
                if p.controller_uid in controllers]

    def snapshot_uses(self) -> dict[str, list[SnapshotUse]]:
        """Checkpoints in VolumeSnapshots (Ready, or waiting for theirs), by namespace."""
        uses: dict[str, list[SnapshotUse]] = {}
        for key in list(self._checkpoints):
            if key[0] == "in-snapshot":
                uses.setdefault(str(key[1]), []).extend(self._all(self._checkpoints, key, SnapshotUse))
        return uses

    def resync_keys(self) -> Iterable[tuple[str, str, str]]:
        """Every object whose work may not be over: the safety net's pass."""
        for key in list(self._training_jobs):
            if key[0] == "name":
                info = self._one(self._training_jobs, key, TrainingJobInfo)
                if info is not None and not info.phase.is_finished:
                    yield ("TrainingJob", key[1], key[2])
        for key in list(self._checkpoints):
            if key[0] == "name":
                checkpoint = self._one(self._checkpoints, key, CheckpointInfo)
                if checkpoint is not None and (not checkpoint.phase.is_settled or checkpoint.deleting):
                    yield ("Checkpoint", key[1], key[2])
        for key in list(self._cluster_checkpoints):
            if key[0] == "name":
                entry = self._one(self._cluster_checkpoints, key, CheckpointInfo)
                if entry is not None and (not entry.phase.is_settled or entry.deleting):
                    yield ("ClusterCheckpoint", "", key[1])


class ObjectIndex(Mapping[IndexKey, Collection[IndexValue]]):
    """An index kept from a watch stream of our own (reconcile/informer.py), read as kopf's were: a
    mapping of each key to the values of every object that has it.

    `update` replaces an object's keys with what the index function gives for its new body ({}
    for one deleted). One writer at a time (the informer's lock); readers in other threads get a
    key's values as a tuple that is replaced, never changed, so a read never sees one half-made."""

    def __init__(self) -> None:
        self._values: dict[IndexKey, tuple[IndexValue, ...]] = {}
        self._members: dict[IndexKey, dict[tuple[str, str], IndexValue]] = {}
        self._keys_of: dict[tuple[str, str], tuple[IndexKey, ...]] = {}

    def update(self, obj: tuple[str, str], keys: Mapping[IndexKey, IndexValue]) -> None:
        for key in self._keys_of.pop(obj, ()):
            if key in keys:
                continue
            members = self._members.get(key)
            if members is not None:
                members.pop(obj, None)
                self._publish(key, members)
        for key, value in keys.items():
            members = self._members.setdefault(key, {})
            if members.get(obj) != value:
                members[obj] = value
                self._publish(key, members)
        if keys:
            self._keys_of[obj] = tuple(keys)

    def _publish(self, key: IndexKey, members: dict[tuple[str, str], IndexValue]) -> None:
        if members:
            self._values[key] = tuple(members.values())
        else:
            self._values.pop(key, None)
            self._members.pop(key, None)

    def __getitem__(self, key: IndexKey) -> Collection[IndexValue]:
        return self._values[key]

    def get(self, key: IndexKey, default: Any = None) -> Any:  # one dict read: no lock needed
        return self._values.get(key, default)

    def __iter__(self) -> Iterator[IndexKey]:
        return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)
