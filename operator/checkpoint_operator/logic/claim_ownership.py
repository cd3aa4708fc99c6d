"""A claim some Checkpoint still points into is never garbage-collected or deleted (issue 23 item 6).

The operator's claims go with their owners: Kubernetes' garbage collector deletes one when the
last of its owner references points to an object that is gone. Checkpoints that point into a
claim must therefore all be among its owners, and none may be dropped by the operator:

- a Checkpoint that adopts a path of one of the operator's claims (`source.volume` on a job's
  output or an import's volume) adds itself as an owner before its scan (`adopter_owners`);
- when a job hands its output over to its Checkpoints, or live sealing adds the new ones, only
  the job's own reference may leave (`owners_after`): every Checkpoint's stays;
- the operator deletes a claim itself (the s3 store's uploaded output, a release on request)
  only when no Checkpoint owns it (`holders`).

Why owner references, and not a finalizer on the claim: a deletion a finalizer holds back still
marks the claim Terminating, and no new pod may mount a Terminating claim, so a Ready Checkpoint
on it could no longer be used. With owner references the deletion never starts. Under races the
resourceVersion decides: the owner patch carries the claim's, the garbage collector deletes
with the one it judged (Kubernetes 1.20+), the operator's own deletes carry theirs; whichever
lands second is refused with a conflict and judged again. A patch that finds the claim already
deleting tells the adopter to wait, so it never becomes Ready on a claim that is going.

A user's own claim (not the operator's) is left as it is: its lifetime is the user's.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from checkpoint_operator import GROUP
from checkpoint_operator.logic.claim_guard import managed_claim_reason


def _ours(ref: dict[str, Any], kind: str) -> bool:
    return ref.get("kind") == kind and str(ref.get("apiVersion", "")).startswith(GROUP + "/")


def owners_after(current: Iterable[dict[str, Any]], add: Iterable[dict[str, Any]],
                 drop_uid: Optional[str] = None) -> list[dict[str, Any]]:
    """The owner references after adding `add` and dropping only `drop_uid` (a job handing its
    output over): every other owner, a Checkpoint's above all, stays."""
    owners = [o for o in current if o.get("uid") != drop_uid]
    for owner in add:
        if all(o.get("uid") != owner.get("uid") for o in owners):
            owners.append(owner)
    return owners


def holders(claim: Optional[dict[str, Any]]) -> list[str]:
    """The Checkpoints among a claim's owners: while any exists the claim is not deleted."""
    meta = (claim or {}).get("metadata") or {}
    return [o.get("name", "?") for o in meta.get("ownerReferences") or [] if _ours(o, "Checkpoint")]


def adopter_owners(claim: dict[str, Any], owner: dict[str, Any]) -> Optional[list[dict[str, Any]]]:
    """The owner references that make `owner` (an adopting Checkpoint's reference) hold the claim,
    or None when nothing is to change: the claim is the user's own (its lifetime is theirs), or
    it has no owner (nothing would collect it), or the Checkpoint already is one."""
    current = (claim.get("metadata") or {}).get("ownerReferences") or []
    if managed_claim_reason(claim) is None or not current or any(o.get("uid") == owner["uid"] for o in current):
        return None
    return owners_after(current, [owner])


def is_deleting(claim: Optional[dict[str, Any]]) -> bool:
    return bool(((claim or {}).get("metadata") or {}).get("deletionTimestamp"))
