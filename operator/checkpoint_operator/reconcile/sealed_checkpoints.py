"""A snapshot Checkpoint, from its own reconcile: Ready from the sealed data its job put in its
spec, once the bytes are held for it; Failed when its job asks (the directory changed after it
was sealed). The job creates the Checkpoint and hands it its bytes (reconcile/publish.py) but
never writes its status (reconcile/status_writer.py: one owner per status).

The sealed data is trusted only when its signature verifies (logic/signatures.py: the job signs
what it creates with the operator's key; a hand-written spec.source.trainingJob fails, named).
"Held" is checked on what the spec names, since a spec is what anyone may write: a claim or a
VolumeSnapshot must be one the producing job made (labelled with its uid) and list this
Checkpoint among its owners (so nothing deletes it with the job); an upload must lie under the
job's own prefix and be committed (its manifest written last).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from checkpoint_operator.api.checkpoint import Checkpoint, SealedData, TrainingJobSource
from checkpoint_operator.api.common import ObjectRef
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.kube import PVCS, TRAINING_JOBS, VOLUME_SNAPSHOTS
from checkpoint_operator.logic import replays
from checkpoint_operator.logic.results import Done, Fail, Result, Wait
from checkpoint_operator.logic.sealing_changes import CHANGED_AFTER_SEALING_ANNOTATION, changed_failure
from checkpoint_operator.logic.snapshot import sealed_ready_change
from checkpoint_operator.logic.workload import LABEL_TRAINING_JOB_UID, owned_by
from checkpoint_operator.reconcile import signing
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.objects import InvalidObject, parse
from checkpoint_operator.reconcile.status_writer import write_status
from checkpoint_operator.storage import store_for

HAND_OVER_RECHECK = 1.0  # seconds: a VolumeSnapshot's owners change with no event of ours
JOB_RECHECK = 10.0  # seconds: a Checkpoint not handed its bytes yet looks at its job again (has it ended?)


def publish(ctx: Context, checkpoint: Checkpoint, source: TrainingJobSource, sealed: SealedData) -> Result:
    """Ready once the sealed bytes are held for this Checkpoint (a Wait until its job hands them over)."""
    meta = checkpoint.metadata
    if not signing.sealed_verifies(ctx, checkpoint, source):  # anyone may write a spec: only the operator signs
        return Fail(signing.NOT_SIGNED, signing.NOT_SIGNED_MESSAGE)
    refused = store_for(ctx.config).sealed_upload_refusal(sealed.location, meta.namespace, source.name, source.uid)
    if refused:
        return Fail("DataNotHeld", f"spec.source.trainingJob.sealed: {refused}")
    held = _held(ctx, checkpoint, source, sealed)
    if isinstance(held, Fail):
        return held
    why = replays.refusal(source.name, source.directory, sealed.digest, _job_view(ctx, meta.namespace, source),
                          held=held is None)
    if why and held is not None:  # a failure stands on these reads: the claim and the job, read live
        held = _held(ctx, checkpoint, source, sealed, live=True)
        if isinstance(held, Fail):
            return held
        why = replays.refusal(source.name, source.directory, sealed.digest,
                              _job_view(ctx, meta.namespace, source, live=True), held=held is None)
    if why:  # a deleted one's saved YAML applied again: its signature verifies, but its job never made it
        return Fail(replays.REASON, why)
    if held is not None:  # its job hands its bytes over right after creating it; looked at again until the job ends
        return dataclasses.replace(held, requeue_after=held.requeue_after or JOB_RECHECK) \
            if isinstance(held, Wait) else held
    write_status(ctx, checkpoint, sealed_ready_change(sealed, owned=True, produced_by=ObjectRef(
        name=source.name, uid=source.uid), event=None))  # its job posts the event that says how it was made
    return Done()


def changed_after_sealing(ctx: Context, checkpoint: Checkpoint) -> bool:
    """Its job's request to fail it (the bytes in place changed after sealing): staged; whether there was one.
    Only a request the operator signed for this Checkpoint counts; the message is the operator's own text."""
    source = checkpoint.spec.source.trainingJob
    sealed = source.sealed if source else None
    if CHANGED_AFTER_SEALING_ANNOTATION not in (checkpoint.metadata.annotations or {}):
        return False
    change = changed_failure(signing.changed_request(ctx, checkpoint),
                             checkpoint.status.digest or (sealed.digest if sealed else None), checkpoint.phase,
                             produced_by_job=source is not None)
    if change is None:
        return False
    write_status(ctx, checkpoint, change)
    return True


def _job_view(ctx: Context, namespace: str, source: TrainingJobSource, *,
              live: bool = False) -> Optional[replays.JobView]:
    """Its producing job as logic/replays.py reads it; None when the job of its spec's uid is gone."""
    body = (ctx.kube.get if live else ctx.kube.cached_get)(TRAINING_JOBS, namespace, source.name)
    if body is None or (body.get("metadata") or {}).get("uid") != source.uid:
        return None
    try:
        tj = parse(TrainingJob, body)
    except InvalidObject:
        return replays.JobView(finished=False, retired=frozenset())  # unreadable: nothing concluded
    status = tj.status.live
    return replays.JobView(finished=tj.is_finished,
                           retired=frozenset((r.path, r.digest) for r in (status.retired if status else None) or []))


def _held(ctx: Context, checkpoint: Checkpoint, source: TrainingJobSource, sealed: SealedData, *,
          live: bool = False) -> Optional[Result]:
    """None when every claim or snapshot the location names is the job's and owned by this Checkpoint
    (`live`: the claims read live, not from the cache)."""
    location, namespace = sealed.location, checkpoint.metadata.namespace
    claims = [location.volume.claimName] if location.volume else [p.claimName for p in location.volumeParts or []]
    named: list[tuple[str, Optional[dict[str, Any]], Optional[float]]] = [
        (f"PersistentVolumeClaim {c}", (ctx.kube.get if live else ctx.kube.cached_get)(PVCS, namespace, c), None) for c in dict.fromkeys(claims)]
    # Its snapshot, or each worker's (a volume per worker): their owners change with no event of ours:
    # looked at again.
    for snapshot in {s.volumeSnapshotName: s for s in location.snapshots}.values():
        name = snapshot.volumeSnapshotName
        body = ctx.kube.get(VOLUME_SNAPSHOTS, namespace, name)
        uid = snapshot.volumeSnapshotUID
        if body is not None and uid and (body.get("metadata") or {}).get("uid") != uid:  # a namesake made since
            return Fail("DataNotHeld", f"spec.source.trainingJob.sealed.location: VolumeSnapshot {name} is not the "
                                       f"one its job took (uid {uid})")
        named.append((f"VolumeSnapshot {name}", body, HAND_OVER_RECHECK))
    for what, body, recheck in named:
        problem = _not_held(body, source.uid, checkpoint.metadata.uid)
        if problem == "gone":
            return Fail("DataNotHeld", f"spec.source.trainingJob.sealed.location: {what} does not exist (deleted "
                                       "before its job handed it over)")
        if problem == "foreign":
            return Fail("DataNotHeld", f"spec.source.trainingJob.sealed.location: {what} was not made by "
                                       f"TrainingJob {source.name} (uid {source.uid})")
        if problem == "not yet":  # its job hands it over right after creating this Checkpoint (an event)
            return Wait(requeue_after=recheck)
    return None


def _not_held(body: Optional[dict[str, Any]], job_uid: str, checkpoint_uid: str) -> Optional[str]:
    if body is None:
        return "gone"
    if ((body.get("metadata") or {}).get("labels") or {}).get(LABEL_TRAINING_JOB_UID) != job_uid:
        return "foreign"
    return None if owned_by(body, checkpoint_uid) else "not yet"
