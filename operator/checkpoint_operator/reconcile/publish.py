"""Making a job's Checkpoints from what its output holds: shared by the end-of-job snapshot
(reconcile/trainingjob.py) and live sealing (reconcile/live_sealing.py). Names are deterministic
(logic/snapshot.py), so whichever of the two gets to a directory first creates its Checkpoint
and the other finds it. The job creates each Checkpoint with its sealed data in the spec and
hands it its bytes (owners of the claim or snapshot); the Checkpoint's own reconcile makes it
Ready (reconcile/sealed_checkpoints.py): the job never writes a Checkpoint's status."""

from __future__ import annotations

from typing import Any, Optional

from checkpoint_operator import metrics
from checkpoint_operator.api.checkpoint import CheckpointHead, CheckpointPhase
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.reconcile import signing
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.objects import parse_head
from checkpoint_operator.kube import CHECKPOINTS, PVCS, Conflict
from checkpoint_operator.logic import workload
from checkpoint_operator.logic.claim_ownership import owners_after
from checkpoint_operator.logic.inputs import CheckpointInfo
from checkpoint_operator.logic.sealing_changes import CHANGED_AFTER_SEALING, changed_request
from checkpoint_operator.logic.signatures import CHANGED_REQUEST
from checkpoint_operator.logic.snapshot import PlannedCheckpoint

MAX_OWNER_ATTEMPTS = 5


def create_checkpoint(ctx: Context, tj: TrainingJob, planned: PlannedCheckpoint) -> Optional[dict[str, Any]]:
    """Create one Checkpoint (its spec.source.trainingJob signed with the operator's key), or find
    the one an earlier pass created (None: the name is taken by an object that is not this job's).
    One found by name is this job's only when the operator signed it for this job, directory and
    sealed digest: anyone may create a Checkpoint of the name a job will derive, and a job hands its
    bytes (the output claim) to what it adopts."""
    namespace = tj.metadata.namespace
    known = signing.trusted_info(ctx, ctx.indexes.checkpoint(namespace, planned.name))
    if known is not None and known.sealed_by(tj.metadata.uid, planned.directory):
        # Created at an earlier pass (the index has it): what its owner references need, no request.
        return {"apiVersion": planned.body["apiVersion"], "kind": "Checkpoint",
                "metadata": {"name": known.name, "namespace": namespace, "uid": known.uid}}
    try:
        created = ctx.kube.create(CHECKPOINTS, namespace, signing.signed_snapshot(ctx, planned.body))
        metrics.CHECKPOINTS_CREATED.inc()
        return created
    except Conflict:
        found = ctx.kube.get(CHECKPOINTS, namespace, planned.name)
        planned_digest = planned.body["spec"]["source"]["trainingJob"]["sealed"]["digest"]
        if found is None or not signing.body_is_signed_for(ctx, found, tj.metadata.uid, planned.directory,
                                                           planned_digest):
            return None
        return found


def own_output_claim(ctx: Context, tj: TrainingJob, claim: str, owners: list[dict[str, Any]], *,
                     keep_job: bool) -> None:
    """Volume store: the output volume is owned by the job's Checkpoints (and, while it runs, by
    the job too), so deleting the job never takes the bytes of a Ready Checkpoint with it. The
    one way owners are set: `owners` added to what the claim has, conditionally (a 409 reads it
    again); `keep_job=False` hands it over (only the job's own reference goes: a Checkpoint
    sealed at an earlier pass, or one that adopted a path of the volume, keeps holding it)."""
    for attempt in range(MAX_OWNER_ATTEMPTS):  # as last known first (the patch is conditional), then live
        pvc = ctx.kube.cached_get(PVCS, tj.metadata.namespace, claim) if attempt == 0 else \
            ctx.kube.get(PVCS, tj.metadata.namespace, claim)
        if pvc is None:
            return
        current = pvc.get("metadata", {}).get("ownerReferences") or []
        wanted = owners_after(current, owners, drop_uid=None if keep_job else tj.metadata.uid)
        if {o["uid"] for o in wanted} == {o.get("uid") for o in current}:
            return
        try:
            ctx.kube.patch(PVCS, tj.metadata.namespace, claim, {"metadata": {
                "ownerReferences": wanted, "resourceVersion": pvc["metadata"].get("resourceVersion")}})
            return
        except Conflict:
            continue  # changed meanwhile (a binder, a GC): add to the new version
    raise Conflict(409, "Conflict", f"PersistentVolumeClaim {claim}: its owners kept changing; will retry")


def checkpoint_owner(body: dict[str, Any]) -> dict[str, Any]:
    return workload.owner_reference(parse_head(CheckpointHead, body), controller=False)


def mark_changed(ctx: Context, tj: TrainingJob, info: CheckpointInfo, message: str, *, bytes_in_place: bool) -> None:
    """A sealed directory whose bytes are no longer its digest. Volume store (`bytes_in_place`):
    the Checkpoint is those bytes, so it must fail (never Ready with other bytes than its digest):
    the job asks it to, through an annotation its own reconcile turns into Failed (the job never
    writes a Checkpoint's status). s3 store: the Checkpoint keeps the sealed copy; the change is reported."""
    body = ctx.kube.get(CHECKPOINTS, tj.metadata.namespace, info.name)
    if body is None or not signing.body_is_signed_for(ctx, body, tj.metadata.uid, info.directory or ""):
        return
    checkpoint = parse_head(CheckpointHead, body)
    if checkpoint.phase == CheckpointPhase.FAILED:
        return
    if bytes_in_place:
        line = changed_request(message)
        if signing.changed_request(ctx, checkpoint) != line:  # signed: only the operator's request counts
            ctx.kube.patch(CHECKPOINTS, tj.metadata.namespace, info.name, {"metadata": {
                "annotations": signing.signed_annotations(ctx, checkpoint, CHANGED_REQUEST, line)}})
        ctx.warn(tj, CHANGED_AFTER_SEALING, f"Checkpoint {info.name}: {message}; it is now Failed")
    else:
        ctx.warn(checkpoint, CHANGED_AFTER_SEALING, f"{message}; the Checkpoint keeps the bytes sealed in the store")
        ctx.warn(tj, CHANGED_AFTER_SEALING, f"Checkpoint {info.name}: {message}; the changed files are not stored")
