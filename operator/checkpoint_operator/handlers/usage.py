"""status.usedBy of Checkpoints: who mounts them. Every change is a conditional write
(resourceVersion precondition, retried on 409), so a job registering itself and a deletion
starting at the same moment can never both succeed."""

from __future__ import annotations

from typing import Optional

from checkpoint_operator import PROTECTION_FINALIZER
from checkpoint_operator.kube import CHECKPOINTS, Conflict, Kube
from checkpoint_operator.logic.inputs import InputWait, is_deleting

MAX_ATTEMPTS = 20


def _users(checkpoint: dict) -> list[dict]:
    return list(checkpoint.get("status", {}).get("usedBy") or [])


def _write_users(kube: Kube, checkpoint: dict, users: list[dict]) -> dict:
    meta = checkpoint["metadata"]
    return kube.patch_status(CHECKPOINTS, meta["namespace"], meta["name"],
                             {"usedBy": users, "usedByCount": len(users)},
                             resource_version=meta["resourceVersion"])


def register_user(kube: Kube, namespace: str, name: str, uid: str, job: dict) -> Optional[InputWait]:
    """Add `job` to the Checkpoint's usedBy unless it is gone, replaced or being deleted."""
    job_ref = {"name": job["metadata"]["name"], "uid": job["metadata"]["uid"]}
    for _ in range(MAX_ATTEMPTS):
        checkpoint = kube.get(CHECKPOINTS, namespace, name)
        if checkpoint is None or checkpoint["metadata"].get("uid") != uid:
            return InputWait("InputNotFound", f"input Checkpoint {name} no longer exists")
        users = _users(checkpoint)
        if any(u.get("uid") == job_ref["uid"] for u in users):
            return None  # registered earlier: the finalizer keeps it for us even while deleting
        if is_deleting(checkpoint):
            return InputWait("InputDeleting", f"input Checkpoint {name} is being deleted")
        if PROTECTION_FINALIZER not in (checkpoint["metadata"].get("finalizers") or []):
            # Without the finalizer a deletion would not wait for us: never register then.
            return InputWait("InputNotProtected", f"input Checkpoint {name} does not carry the "
                                                  f"{PROTECTION_FINALIZER} finalizer yet")
        try:
            _write_users(kube, checkpoint, users + [job_ref])
            return None
        except Conflict:
            continue
    raise RuntimeError(f"could not register in Checkpoint {name}: it kept changing")


def unregister_users(kube: Kube, namespace: str, name: str, should_remove) -> None:
    """Remove the usedBy entries for which `should_remove(entry)` is true."""
    for _ in range(MAX_ATTEMPTS):
        checkpoint = kube.get(CHECKPOINTS, namespace, name)
        if checkpoint is None:
            return
        users = _users(checkpoint)
        remaining = [u for u in users if not should_remove(u)]
        if len(remaining) == len(users):
            return
        try:
            _write_users(kube, checkpoint, remaining)
            return
        except Conflict:
            continue
    raise RuntimeError(f"could not update usedBy of Checkpoint {name}: it kept changing")


def release_inputs(kube: Kube, job: dict) -> None:
    meta = job["metadata"]
    for pinned in job.get("status", {}).get("inputs") or []:
        unregister_users(kube, meta["namespace"], pinned["name"], lambda u: u.get("uid") == meta["uid"])
