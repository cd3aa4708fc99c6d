"""Taking VolumeSnapshots, handing them to the Checkpoints that point into them, and deleting the ones
none does (logic/volume_snapshots.py has the design; storage/volume.py's SnapshotVolumeStore asks
for them).

`take` is called on every pass of the step that needs the snapshot: it creates it once, under a
name with a random part, records it (name and UID) in the status of the object it is taken for,
and reads that one until the snapshot controller says ``readyToUse``. Its changes are not
watched: a snapshot being cut is read again after `logic.volume_snapshots.poll_after` seconds.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable, Optional, Union

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointPhase, CheckpointStatus, Location
from checkpoint_operator.api.common import VolumeSnapshotRecord
from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobStatus
from checkpoint_operator.kube import PVCS, VOLUME_SNAPSHOTS, ApiError, Conflict
from checkpoint_operator.logic import volume_snapshots
from checkpoint_operator.logic.results import Fail, Wait
from checkpoint_operator.logic.volume_snapshots import SnapshotRequest, Taken, TakenParts, TakenSnapshot
from checkpoint_operator.logic.workload import LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_TRAINING_JOB_UID, MANAGER
from checkpoint_operator.logic.status import StatusChange, fail_change
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.status_writer import write_status

SnapshotOwner = Union[TrainingJob, Checkpoint]  # whose status records the snapshots it created
API_MISSING_RECHECK = 60.0  # seconds: the snapshot API appears only when an administrator installs it
ATTEMPTS = 3                # owner patches: each conflict is a fresh read and a new decision


def take(ctx: Context, owner: SnapshotOwner, request: SnapshotRequest) -> Union[TakenSnapshot, Wait]:
    """The ready snapshot of `request`, or the wait until it is. Only a snapshot this operator
    created and recorded in `owner`'s status (status.volumeSnapshots, by UID) is taken: nothing
    made by anyone else is ever a checkpoint's (hostile4 D8)."""
    namespace, key = request.namespace, request.name
    claim = request.body["spec"]["source"]["persistentVolumeClaimName"]
    record = volume_snapshots.recorded(owner.status.volumeSnapshots, key)
    if record is None:
        return _create(ctx, owner, request, claim)
    body = ctx.kube.get(VOLUME_SNAPSHOTS, namespace, record.name)
    if body is None:  # deleted before any Checkpoint pointed into it: the data is still on the volume
        _set_records(ctx, owner, lambda records: volume_snapshots.without_record(records, key))
        return Wait("TakingVolumeSnapshot", f"VolumeSnapshot {record.name} of volume {claim} is gone; taking another",
                    warning=False, requeue_after=volume_snapshots.POLL_MIN)
    replaced = volume_snapshots.not_the_recorded(record, body, claim)
    if replaced is not None:
        return Wait("NameConflict", replaced, stalled=True, requeue_after=API_MISSING_RECHECK)
    name = record.name
    state = volume_snapshots.read_state(body)
    if state.deleting:
        return Wait("VolumeSnapshotDeleting", f"VolumeSnapshot {name} is being deleted; it is taken again once it "
                                              "is gone", requeue_after=volume_snapshots.POLL_MAX)
    if not state.ready or not state.restore_size:
        return Wait("TakingVolumeSnapshot", volume_snapshots.waiting_message(name, state),
                    warning=state.error is not None, requeue_after=volume_snapshots.poll_after(_age(body)))
    return TakenSnapshot(name, state.restore_size, request.storage_class, record.uid)


def take_parts(ctx: Context, owner: TrainingJob, requests: dict[int, SnapshotRequest]) -> Union[TakenParts, Wait]:
    """The ready snapshot of each worker's volume in `requests` (by worker), or the wait until all
    are: every one is created in the same pass (they are cut side by side), each recorded as
    `take` records one (status.volumeSnapshots has room for one per worker volume)."""
    taken: dict[int, TakenSnapshot] = {}
    waits: list[Wait] = []
    for worker, request in sorted(requests.items()):
        one = take(ctx, owner, request)
        if isinstance(one, Wait):
            waits.append(one)
        else:
            taken[worker] = one
    if waits:  # a stalled one says most (the API refused it), else the soonest to look again
        stalled = next((w for w in waits if w.stalled), None)
        if stalled is not None:
            return stalled
        first = min(waits, key=lambda w: w.requeue_after if w.requeue_after is not None else float("inf"))
        if len(waits) > 1 and first.message:
            first = replace(first, message=f"{first.message} ({len(waits)} of {len(requests)} worker volumes' "
                                           "VolumeSnapshots not ready yet)")
        return first
    return TakenParts(taken)


def _create(ctx: Context, owner: SnapshotOwner, request: SnapshotRequest, claim: str) -> Wait:
    """Create the snapshot under a name no one could use before (a random part), then record it.
    A crash between the two leaves a snapshot no record names: another is taken, and the stray
    one goes with the job's cleanup (delete_unused) or its owner."""
    body = request.named(secrets.token_hex(volume_snapshots.NONCE_BYTES))
    name = body["metadata"]["name"]
    try:
        created = ctx.kube.create(VOLUME_SNAPSHOTS, request.namespace, body)
    except Conflict:
        return Wait(requeue_after=0.2)  # someone took that name meanwhile: another random part, at once
    except ApiError as exc:
        if exc.status == 404:
            return Wait("VolumeSnapshotsUnavailable", (
                f"storage.volume.snapshotClassName is {ctx.config.volume_snapshot_class!r}, but the API serves no "
                f"{VOLUME_SNAPSHOTS.api_version} VolumeSnapshots: install external-snapshotter's CRDs and "
                "snapshot controller, or unset storage.volume.snapshotClassName"),
                stalled=True, requeue_after=API_MISSING_RECHECK)
        if exc.status in (400, 422):
            return Wait("VolumeSnapshotRefused", f"the API server refused VolumeSnapshot {name}: {exc.message}",
                        stalled=True, requeue_after=API_MISSING_RECHECK)
        raise
    record = VolumeSnapshotRecord(key=request.name, name=name, uid=created["metadata"]["uid"])
    _set_records(ctx, owner, lambda records: volume_snapshots.with_record(records, record))
    return Wait("TakingVolumeSnapshot", f"taking VolumeSnapshot {name} of volume {claim}", warning=False,
                requeue_after=volume_snapshots.POLL_MIN)


def _set_records(ctx: Context, owner: SnapshotOwner,
                 change: Callable[[Optional[list[VolumeSnapshotRecord]]], list[VolumeSnapshotRecord]]) -> None:
    """status.volumeSnapshots as `change` makes it of the owner's current records (re-read on a conflict)."""
    if isinstance(owner, TrainingJob):
        write_status(ctx, owner, lambda current: StatusChange(
            fields=TrainingJobStatus(volumeSnapshots=change(current.status.volumeSnapshots) or None)))
    else:
        write_status(ctx, owner, lambda current: StatusChange(
            fields=CheckpointStatus(volumeSnapshots=change(current.status.volumeSnapshots) or None)))


def _age(body: dict[str, Any]) -> float:
    created = (body.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return 0.0
    return (datetime.now(timezone.utc) - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()


def hand_over(ctx: Context, namespace: str, taken: TakenSnapshot, checkpoints: list[dict[str, Any]],
              job_uid: Optional[str]) -> None:
    """The Checkpoints that point into the snapshot (owner references to them) become its owners,
    and the job's own reference goes: Kubernetes deletes it with the last of them. Conditional on
    the version read (a concurrent change is read again); a namesake made since is left alone."""
    name = taken.name
    for _ in range(ATTEMPTS):
        body = ctx.kube.get(VOLUME_SNAPSHOTS, namespace, name)
        if body is None or (taken.uid and (body.get("metadata") or {}).get("uid") != taken.uid):
            return
        current = volume_snapshots.owners_of(body)
        owners = volume_snapshots.hand_over_owners(current, checkpoints, job_uid)
        if [o.get("uid") for o in owners] == [o.get("uid") for o in current]:
            return
        try:
            ctx.kube.patch(VOLUME_SNAPSHOTS, namespace, name, {"metadata": {
                "ownerReferences": owners, "resourceVersion": body["metadata"].get("resourceVersion")}})
            return
        except Conflict:
            continue
    raise Conflict(409, "Conflict", f"VolumeSnapshot {name} kept changing while its owners were set")


def hand_over_all(ctx: Context, namespace: str, taken: Taken, checkpoints: list[tuple[dict[str, Any], Location]],
                  job_uid: Optional[str]) -> None:
    """`hand_over` of each snapshot taken (the output's, or each worker volume's) to the Checkpoints
    (owner references, with their locations) that point into it; one no Checkpoint needs stays the
    job's (delete_unused deletes it)."""
    snapshots = taken.snapshots if isinstance(taken, TakenParts) else [taken]
    locations = [location for _, location in checkpoints]
    for snapshot in snapshots:
        users = [checkpoints[i][0] for i in volume_snapshots.pointing_into(snapshot.name, locations)]
        if users:
            hand_over(ctx, namespace, snapshot, users, job_uid)


def delete_unused(ctx: Context, namespace: str, job_uid: str) -> list[str]:
    """A job's output snapshots that no Checkpoint owns (taken for a sealed directory that the
    end-of-job snapshot published instead, for directories retention dropped, or a creation a
    crash kept from being recorded): deleted, so nothing is left that no object points into. One
    LIST, when the job's snapshot is done. Only those the job owns: labels alone are anyone's."""
    selector = f"{LABEL_TRAINING_JOB_UID}={job_uid},{LABEL_COMPONENT}={volume_snapshots.COMPONENT_OUTPUT}"
    deleted = []
    for body in ctx.kube.list(VOLUME_SNAPSHOTS, namespace, label_selector=selector):
        owners = volume_snapshots.owners_of(body)
        if any(o.get("kind") == "Checkpoint" for o in owners) or (body.get("metadata") or {}).get("deletionTimestamp") \
                or all(o.get("uid") != job_uid for o in owners):
            continue
        try:  # conditional: a hand-over since the LIST keeps it
            if ctx.kube.delete(VOLUME_SNAPSHOTS, namespace, body["metadata"]["name"],
                               resource_version=body["metadata"].get("resourceVersion")):
                deleted.append(body["metadata"]["name"])
        except Conflict:
            continue
    return deleted


def release_claim(ctx: Context, checkpoint: Checkpoint, claim: str, snapshot: str) -> None:
    """An import's (or a push's) volume, once its data is in the ready snapshot: deleted unless
    another object holds it too (a Checkpoint that adopted a path of it), conditional on the
    version read (an adopter that adds itself meanwhile keeps it: logic/claim_ownership.py)."""
    body = ctx.kube.get(PVCS, checkpoint.metadata.namespace, claim)
    if body is None:
        return
    owners = (body.get("metadata") or {}).get("ownerReferences") or []
    if not all(o.get("uid") == checkpoint.metadata.uid for o in owners):
        return
    try:
        ctx.kube.delete(PVCS, checkpoint.metadata.namespace, claim,
                        resource_version=body["metadata"].get("resourceVersion"))
    except Conflict:
        return
    ctx.info(checkpoint, "VolumeReleased", f"volume {claim} deleted: the checkpoint is kept in VolumeSnapshot {snapshot}")


# --- Ready Checkpoints whose snapshot was deleted, replaced or is no longer readyToUse (hostile4 D4) ---

def checkpoints_to_check(ctx: Context) -> list[tuple[str, str, str]]:
    """The resync's look at the snapshots Ready Checkpoints point into: one LIST of the operator's
    VolumeSnapshots per namespace that has such Checkpoints; the keys of those whose snapshot no
    longer matches their phase (their own reconcile reads it again and writes the status)."""
    keys = []
    for namespace, uses in ctx.indexes.snapshot_uses().items():
        found = {(b.get("metadata") or {}).get("name"): b for b in ctx.kube.list(
            VOLUME_SNAPSHOTS, namespace, label_selector=f"{LABEL_MANAGED_BY}={MANAGER}")}
        keys += [("Checkpoint", namespace, use.checkpoint) for use in uses
                 if volume_snapshots.needs_check(use, found.get(use.snapshot))]
    return list(dict.fromkeys(keys))  # a Checkpoint in several snapshots (one per worker volume) once


def check_checkpoint(ctx: Context, checkpoint: Checkpoint) -> bool:
    """A settled Checkpoint whose data is in a VolumeSnapshot: Failed with a one-line reason naming
    it once it is gone, replaced or not readyToUse (nothing selects it then), Ready again when a
    snapshot that was not readyToUse is again. The Checkpoint's own reconcile is the only writer
    of its status; one GET per snapshot it is in (one per worker volume, for a checkpoint assembled
    across workers), only for a Ready or waiting Checkpoint in snapshots. Whether it wrote."""
    locations = checkpoint.status.location.snapshots if checkpoint.status.location else []
    if not locations:
        return False
    ready_condition = next((c for c in checkpoint.status.conditions or [] if c.type == "Ready"), None)
    waiting = ready_condition is not None and ready_condition.reason == volume_snapshots.SNAPSHOT_NOT_READY
    if checkpoint.phase != CheckpointPhase.READY and not waiting:
        return False
    troubles = [t for t in (volume_snapshots.trouble_of(
        location.volumeSnapshotName, location.volumeSnapshotUID,
        ctx.kube.get(VOLUME_SNAPSHOTS, checkpoint.metadata.namespace, location.volumeSnapshotName))
        for location in {s.volumeSnapshotName: s for s in locations}.values()) if t is not None]
    # A lost one says most (the data is gone for good); else the first not readyToUse.
    trouble = next((t for t in troubles if t.lost), troubles[0] if troubles else None)
    names = ", ".join(dict.fromkeys(s.volumeSnapshotName for s in locations))
    if trouble is not None and (checkpoint.phase == CheckpointPhase.READY or trouble.lost):
        if ready_condition is not None and ready_condition.reason == trouble.reason \
                and ready_condition.message == trouble.message:
            return False
        write_status(ctx, checkpoint, fail_change(CheckpointPhase.FAILED.value, Fail(trouble.reason, trouble.message)))
        return True
    if trouble is None and waiting:
        status = checkpoint.status
        write_status(ctx, checkpoint, StatusChange(
            phase=CheckpointPhase.READY.value, reason="Ready", ready=True, event="Normal",
            message=f"{status.fileCount} files, {status.size}, digest {status.digest}; VolumeSnapshot "
                    f"{names} {'are' if len(locations) > 1 else 'is'} readyToUse again"))
        return True
    return False
