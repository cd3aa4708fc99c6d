"""CSI VolumeSnapshots of the volumes the operator writes (storage.volume.snapshotClassName), as pure functions.

ReadWriteOnce block storage (the default StorageClass of EKS, GKE and AKS) attaches a volume to one
node at a time, so a checkpoint left on the volume its job wrote can be read on that node only.
With a VolumeSnapshotClass configured, the volume store (storage/volume.py, SnapshotVolumeStore)
keeps each checkpoint in a VolumeSnapshot (``snapshot.storage.k8s.io/v1``, as external-snapshotter
defines it) of the volume it was written to, and every pod that reads it gets a volume of its own
restored from that snapshot, on any node:

- when its bytes are known to be on the disk: the end-of-job snapshot pod scans the output volume
  after every writer has stopped and calls syncfs(2) on it (its result says ``"synced": "syncfs"``);
  with live sealing, the sidecar calls syncfs once it has sealed a directory (its ``sealed`` line
  says so). Only then is a VolumeSnapshot taken (``build_volume_snapshot``): a CSI snapshot is
  crash-consistent, it holds what is on the disk, not what is still in a node's page cache. It is
  created under a name with a random part (``created_name``) and recorded, name and UID, in the
  status of the object it is for (``with_record``); only a recorded one is ever taken;
- the Checkpoints are created once it is ``readyToUse`` (``read_state``), with the location
  ``{snapshot: {volumeSnapshotName, volumeSnapshotUID, path, items, restoreSize, storageClassName}}``
  (``snapshot_location``); then they become its owners (non-controller, blockOwnerDeletion) and the
  job's reference goes, so Kubernetes' garbage collector deletes it with the last of them: a
  snapshot is deleted when no Checkpoint points into it (``keep: N`` frees space), and its
  VolumeSnapshotContent and the storage's snapshot go with it under ``deletionPolicy: Delete``;
- a consumer's pod mounts a generic ephemeral volume (``restored_volume``): a claim per pod,
  ``<pod>-<volume>``, restored from the snapshot (``dataSource``), of ``restoreSize``, ReadOnlyMany
  where the driver supports it, else ReadWriteOnce, mounted read-only; the claim is labelled as
  the operator's (``ckpt.dev/component: restored-input``) and goes with its pod;
- a checkpoint assembled across workers' volumes (output.volumePerWorker, perWorker: logic/parts.py)
  is in one snapshot per worker volume that provides a part of it (``TakenParts``), all taken at the
  end of the job, after the union scan; its location lists each (``snapshot_parts_location``:
  ``snapshotParts``, each part's worker, snapshot, directory and items), every one of those
  snapshots is owned by every Checkpoint that needs it (``pointing_into``), and a consumer's pod
  restores each and mounts the parts side by side into one directory, as the plain volume store
  mounts the workers' claims (storage/volume.py);
- a Ready Checkpoint follows its snapshot (``trouble_of``, ``needs_check``): deleted, replaced or
  no longer readyToUse, it is Failed with the reason, and Ready again when readyToUse again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Optional, Union

from checkpoint_operator.api.checkpoint import Location, SnapshotLocation, VolumeLocation
from checkpoint_operator.api.common import MAX_VOLUME_SNAPSHOT_RECORDS, VolumeSnapshotRecord
from checkpoint_operator.logic.naming import MAX_NAME, bounded_name, child_name, short_hash

GROUP = "snapshot.storage.k8s.io"
API_VERSION = f"{GROUP}/v1"
KIND = "VolumeSnapshot"
COMPONENT_OUTPUT = "output-snapshot"     # ckpt.dev/component of a snapshot of a job's output
COMPONENT_IMPORT = "import-snapshot"     # ... of an import's (or a push's) volume
COMPONENT_RESTORED = "restored-input"    # ... of a claim restored for a consumer pod
SYNCED = "syncfs"                        # what the agent reports once the filesystem is synced
POLL_MIN, POLL_MAX = 1.0, 10.0           # seconds between two reads of a snapshot being cut


class SnapshotNotReady(ValueError):
    """A location in a snapshot was asked for before the snapshot was ready."""


def volume_snapshot_name(claim: str, key: str) -> str:
    """Deterministic: the same claim and key always give the same name, the key of the snapshot's
    record (`VolumeSnapshotRecord.key`). `key`: what the snapshot is for ("final", or a sealed
    directory's path and digest). The snapshot itself is named with a random part after it
    (`created_name`)."""
    return child_name(claim, f"snap-{short_hash(f'{claim}/{key}', 10)}")


NONCE_BYTES = 5  # 40 random bits in a created snapshot's name


def created_name(key_name: str, nonce: str) -> str:
    """The name a snapshot is created under: its key and a random part no one can name in advance
    (hostile4 D8: a snapshot made beforehand under a deterministic name was adopted). A crash
    between the creation and its record leaves a snapshot no record names: the next pass takes
    another, and the job's cleanup (delete_unused) deletes the stray one."""
    return bounded_name(f"{key_name}-{nonce}", MAX_NAME)


@dataclass(frozen=True)
class SnapshotRequest:
    """A VolumeSnapshot to take of a claim (its body's name is the key: `named` gives the one to create)."""

    body: dict[str, Any]
    storage_class: Optional[str]   # of the claim it is taken of: restores use the same

    @property
    def name(self) -> str:
        """The key of its record (volume_snapshot_name)."""
        return str(self.body["metadata"]["name"])

    def named(self, nonce: str) -> dict[str, Any]:
        """The body to create, under `created_name`."""
        return {**self.body, "metadata": {**self.body["metadata"], "name": created_name(self.name, nonce)}}

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])


def build_volume_snapshot(namespace: str, claim: str, key: str, snapshot_class: str, labels: Mapping[str, str],
                          owner: Mapping[str, Any], storage_class: Optional[str]) -> SnapshotRequest:
    """The VolumeSnapshot of `claim`, owned by `owner` (the job or the Checkpoint that wrote it)
    until the Checkpoints that point into it take it over."""
    body = {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": volume_snapshot_name(claim, key), "namespace": namespace, "labels": dict(labels),
                         "ownerReferences": [dict(owner)]},
            "spec": {"volumeSnapshotClassName": snapshot_class, "source": {"persistentVolumeClaimName": claim}}}
    return SnapshotRequest(body, storage_class)


@dataclass(frozen=True)
class TakenSnapshot:
    """A ready snapshot, as a location in it says."""

    name: str
    restore_size: Optional[str]
    storage_class: Optional[str]
    uid: Optional[str] = None


@dataclass(frozen=True)
class TakenParts:
    """The ready snapshots of a job's worker volumes (output.volumePerWorker or perWorker), by
    worker: one per worker volume that holds a part of a checkpoint to publish."""

    by_worker: Mapping[int, TakenSnapshot]

    @property
    def snapshots(self) -> list[TakenSnapshot]:
        return [self.by_worker[w] for w in sorted(self.by_worker)]


Taken = Union[TakenSnapshot, TakenParts]  # the output's one snapshot, or its workers' volumes'


@dataclass(frozen=True)
class SnapshotState:
    exists: bool
    ready: bool = False
    error: Optional[str] = None
    restore_size: Optional[str] = None
    deleting: bool = False
    source_claim: Optional[str] = None


def read_state(body: Optional[Mapping[str, Any]]) -> SnapshotState:
    """What the snapshot controller says of a VolumeSnapshot (status.readyToUse, restoreSize, error)."""
    if body is None:
        return SnapshotState(exists=False)
    status = body.get("status") or {}
    error = (status.get("error") or {}).get("message")
    source = ((body.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName")
    return SnapshotState(exists=True, ready=status.get("readyToUse") is True, error=str(error) if error else None,
                         restore_size=str(status["restoreSize"]) if status.get("restoreSize") is not None else None,
                         deleting=bool((body.get("metadata") or {}).get("deletionTimestamp")),
                         source_claim=str(source) if source else None)


def recorded(records: Optional[list[VolumeSnapshotRecord]], key: str) -> Optional[VolumeSnapshotRecord]:
    """The snapshot the operator created for `key`, as recorded."""
    return next((r for r in records or [] if r.key == key), None)


def with_record(records: Optional[list[VolumeSnapshotRecord]], record: VolumeSnapshotRecord) -> list[VolumeSnapshotRecord]:
    """The records once `record` is added (it replaces one of the same key), the newest kept."""
    kept = [r for r in records or [] if r.key != record.key] + [record]
    return kept[-MAX_VOLUME_SNAPSHOT_RECORDS:]


def without_record(records: Optional[list[VolumeSnapshotRecord]], key: str) -> list[VolumeSnapshotRecord]:
    return [r for r in records or [] if r.key != key]


def not_the_recorded(record: VolumeSnapshotRecord, body: Mapping[str, Any], claim: str) -> Optional[str]:
    """Why the VolumeSnapshot read under a recorded name is not the one the operator created
    (another made after it was deleted), or None."""
    meta = body.get("metadata") or {}
    source = ((body.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName")
    if meta.get("uid") != record.uid or source != claim:
        return (f"VolumeSnapshot {record.name} is not the one the operator took (uid {meta.get('uid')}, not "
                f"{record.uid}): it was replaced; delete it")
    return None


SNAPSHOT_LOST = "VolumeSnapshotLost"          # a Ready Checkpoint's snapshot was deleted or replaced
SNAPSHOT_NOT_READY = "VolumeSnapshotNotReady"  # ... is no longer readyToUse (it may come back)


@dataclass(frozen=True)
class SnapshotTrouble:
    """Why a Checkpoint's data is not (or no longer) in its VolumeSnapshot."""

    reason: str
    message: str

    @property
    def lost(self) -> bool:
        return self.reason == SNAPSHOT_LOST


def trouble_of(name: str, uid: Optional[str], body: Optional[Mapping[str, Any]]) -> Optional[SnapshotTrouble]:
    """What is wrong with the VolumeSnapshot `name` (of UID `uid`, when the location records it) a
    Ready Checkpoint points into, read as `body` (None: not found); None when nothing is."""
    lost = "the data of this Checkpoint is lost"
    if body is None:
        return SnapshotTrouble(SNAPSHOT_LOST, f"VolumeSnapshot {name} is gone (deleted outside the operator): {lost}")
    meta = body.get("metadata") or {}
    if uid and meta.get("uid") != uid:
        return SnapshotTrouble(SNAPSHOT_LOST, f"VolumeSnapshot {name} was replaced by another (uid {meta.get('uid')}, "
                                              f"not {uid}): {lost}")
    if meta.get("deletionTimestamp"):
        return SnapshotTrouble(SNAPSHOT_LOST, f"VolumeSnapshot {name} is being deleted outside the operator: {lost}")
    state = read_state(body)
    if not state.ready:
        return SnapshotTrouble(SNAPSHOT_NOT_READY, f"VolumeSnapshot {name} is not readyToUse: "
                                                   f"{state.error or 'the snapshot controller gives no error'}")
    return None


class SnapshotUse(NamedTuple):
    """A Checkpoint whose location is in a VolumeSnapshot, as the index keeps it."""

    checkpoint: str
    snapshot: str
    uid: Optional[str]
    ready: bool          # phase Ready
    waiting: bool        # failed because its snapshot was not readyToUse (it is Ready again once it is)


def needs_check(use: SnapshotUse, body: Optional[Mapping[str, Any]]) -> bool:
    """Whether the Checkpoint's own reconcile should read its snapshot again (the resync's LIST
    says its state no longer matches the Checkpoint's phase)."""
    trouble = trouble_of(use.snapshot, use.uid, body)
    if use.ready:
        return trouble is not None
    return use.waiting and (trouble is None or trouble.lost)


def poll_after(age_seconds: float) -> float:
    """Seconds until a snapshot being cut is read again: soon at first, then every POLL_MAX
    seconds (a cloud snapshot may take minutes; the snapshot's changes are not watched)."""
    return min(POLL_MAX, max(POLL_MIN, math.ceil(age_seconds / 10)))


def waiting_message(name: str, state: SnapshotState) -> str:
    if state.error:
        return f"VolumeSnapshot {name} is not ready: {state.error}"
    return f"VolumeSnapshot {name} is being taken (waiting for readyToUse)"


def snapshot_location(taken: TakenSnapshot, path: str, items: Optional[list[str]] = None) -> Location:
    """status.location of a checkpoint in a snapshot."""
    return Location(snapshot=SnapshotLocation(
        volumeSnapshotName=taken.name, volumeSnapshotUID=taken.uid, path=path, items=items,
        restoreSize=taken.restore_size, storageClassName=taken.storage_class))


def snapshot_parts_location(parts: list[tuple[int, VolumeLocation]], taken: TakenParts) -> Location:
    """status.location of a checkpoint assembled across workers' volumes (logic/parts.py gives each
    part: its worker, the checkpoint's directory and items there), once each of those volumes is
    in a ready snapshot: the same parts, each in its worker's snapshot. SnapshotNotReady when one
    is not taken (the caller takes every volume that provides a part first)."""
    located = []
    for worker, part in parts:
        snapshot = taken.by_worker.get(worker)
        if snapshot is None:
            raise SnapshotNotReady(f"no VolumeSnapshot of worker {worker}'s volume {part.claimName} is taken")
        located.append(SnapshotLocation(
            volumeSnapshotName=snapshot.name, volumeSnapshotUID=snapshot.uid, path=part.path, items=part.items,
            restoreSize=snapshot.restore_size, storageClassName=snapshot.storage_class, worker=worker))
    return Location(snapshotParts=located)


def pointing_into(snapshot: str, locations: list[Location]) -> list[int]:
    """The indexes of the locations that need the VolumeSnapshot `snapshot` (its owners to be)."""
    return [i for i, location in enumerate(locations)
            if any(s.volumeSnapshotName == snapshot for s in location.snapshots)]


def restored_volume(volume_name: str, location: SnapshotLocation, access_mode: str,
                    labels: Mapping[str, str]) -> dict[str, Any]:
    """A pod volume whose claim (one per pod) is restored from the snapshot of `location`."""
    if not location.restoreSize:
        raise SnapshotNotReady(f"VolumeSnapshot {location.volumeSnapshotName} has no restoreSize in the location")
    spec: dict[str, Any] = {"accessModes": [access_mode], "resources": {"requests": {"storage": location.restoreSize}},
                            "dataSource": {"apiGroup": GROUP, "kind": KIND, "name": location.volumeSnapshotName}}
    if location.storageClassName:
        spec["storageClassName"] = location.storageClassName
    return {"name": volume_name, "ephemeral": {"volumeClaimTemplate": {
        "metadata": {"labels": {**labels, "ckpt.dev/component": COMPONENT_RESTORED}}, "spec": spec}}}


def owners_of(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(o) for o in (body.get("metadata") or {}).get("ownerReferences") or []]


def hand_over_owners(current: list[dict[str, Any]], checkpoints: list[dict[str, Any]],
                     job_uid: Optional[str]) -> list[dict[str, Any]]:
    """The owner references once `checkpoints` (owner references to Checkpoints) point into the
    snapshot: every Checkpoint already an owner stays, the new ones are added, and the job's own
    reference (`job_uid`) goes once any Checkpoint owns it."""
    owners = [o for o in current if not (job_uid and o.get("uid") == job_uid)]
    for owner in checkpoints:
        if all(o.get("uid") != owner.get("uid") for o in owners):
            owners.append(dict(owner))
    return owners if any(o.get("kind") == "Checkpoint" for o in owners) else current


def is_synced(report: Optional[str]) -> bool:
    """Whether an agent's result says its filesystem was synced (what a snapshot needs)."""
    return report == SYNCED
