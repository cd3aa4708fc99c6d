"""Claims stay while a Checkpoint points into them (logic/claim_ownership.py says why and how):
an adopting Checkpoint becomes an owner of the operator's claim it adopts, and the operator's
own deletes of a claim wait for every Checkpoint that owns it. Each write is conditional on the
resourceVersion it was decided on."""

from __future__ import annotations

from typing import Any, Optional

from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.kube import PVCS, Conflict
from checkpoint_operator.logic import workload
from checkpoint_operator.logic.claim_ownership import adopter_owners, holders, is_deleting
from checkpoint_operator.logic.results import Wait
from checkpoint_operator.reconcile.context import Context

DELETING_RECHECK = 10.0  # seconds: a claim that is being deleted (its end is no event of ours)
ATTEMPTS = 3             # conditional deletes: each conflict is a fresh read and a new decision


def hold_for_adopter(ctx: Context, checkpoint: Checkpoint, claim: dict[str, Any]) -> Optional[Wait]:
    """Before an adoption scans `claim` (read live): the Checkpoint becomes one of its owners,
    so that the claim outlives whatever else owns it. A Wait while that cannot be done."""
    name = claim["metadata"]["name"]
    deleting = Wait("VolumeDeleting", f"spec.source.volume.claimName: PersistentVolumeClaim {name} is being deleted",
                    requeue_after=DELETING_RECHECK)
    if is_deleting(claim):
        return deleting
    owners = adopter_owners(claim, workload.owner_reference(checkpoint, controller=False))
    if owners is None:
        return None
    try:
        patched = ctx.kube.patch(PVCS, checkpoint.metadata.namespace, name, {"metadata": {
            "ownerReferences": owners, "resourceVersion": claim["metadata"].get("resourceVersion")}})
    except Conflict:  # it changed since it was read (maybe it is going): decide again on a fresh read
        return Wait(requeue_after=0.2)
    return deleting if is_deleting(patched) else None


def delete_unless_held(ctx: Context, namespace: str, name: str) -> tuple[bool, list[str]]:
    """Delete one of the operator's claims unless a Checkpoint owns it: (deleted, the Checkpoints
    that keep it). A change between the read and the delete (an adopter adding itself) makes
    the delete fail and the decision is taken again."""
    for _ in range(ATTEMPTS):
        claim = ctx.kube.get(PVCS, namespace, name)
        if claim is None:
            return False, []
        keeping = holders(claim)
        if keeping:
            return False, keeping
        try:
            return ctx.kube.delete(PVCS, namespace, name, resource_version=claim["metadata"].get("resourceVersion")), []
        except Conflict:
            continue
    raise Conflict(409, "Conflict", f"PersistentVolumeClaim {name} kept changing while it was to be deleted")
