"""Why a pod does not run for reasons no pod says: a volume it waits for is not bound (the
claim's status and its own Events), or its Job cannot create it (the Job's Events).

Read only while a pod that needs the claim is Pending: one GET, and a LIST of that claim's
Events alone (a field selector, never the namespace's). The provisioner's Events change no
object of ours, so a claim that stays unbound is looked at again after CLAIM_RECHECK; its
binding is a change of the PVC, whose event wakes the owner at once."""

from __future__ import annotations

from typing import Optional

from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.kube import EVENTS, PVCS
from checkpoint_operator.logic.agent_pods import (PodProblem, claim_events_selector, claim_problem,
                                                  job_creation_problem, job_events_selector)

CLAIM_RECHECK = 30.0  # seconds
PODS_RECHECK = 10.0   # seconds: a running Job without pods (refused ones bring no event of ours)


def unbound_claim(ctx: Context, namespace: str, name: str) -> Optional[PodProblem]:
    claim = ctx.kube.get(PVCS, namespace, name)
    if claim is None or (claim.get("status") or {}).get("phase") == "Bound":
        return None
    return claim_problem(claim, ctx.kube.list(EVENTS, namespace, field_selector=claim_events_selector(name)))


def refused_pods(ctx: Context, namespace: str, job_name: str) -> Optional[PodProblem]:
    """A Job without pods: what its `FailedCreate` Events say (a LIST of that Job's Events alone)."""
    return job_creation_problem(job_name, ctx.kube.list(EVENTS, namespace, field_selector=job_events_selector(job_name)))
