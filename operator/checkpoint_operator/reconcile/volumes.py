"""Why a volume a pod waits for is not bound: the claim's status and its own Events.

Read only while a pod that needs the claim is Pending: one GET, and a LIST of that claim's
Events alone (a field selector, never the namespace's). The provisioner's Events change no
object of ours, so a claim that stays unbound is looked at again after CLAIM_RECHECK; its
binding is a change of the PVC, whose event wakes the owner at once."""

from __future__ import annotations

from typing import Optional

from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.kube import EVENTS, PVCS
from checkpoint_operator.logic.agent_pods import PodProblem, claim_events_selector, claim_problem

CLAIM_RECHECK = 30.0  # seconds


def unbound_claim(ctx: Context, namespace: str, name: str) -> Optional[PodProblem]:
    claim = ctx.kube.get(PVCS, namespace, name)
    if claim is None or (claim.get("status") or {}).get("phase") == "Bound":
        return None
    return claim_problem(claim, ctx.kube.list(EVENTS, namespace, field_selector=claim_events_selector(name)))
