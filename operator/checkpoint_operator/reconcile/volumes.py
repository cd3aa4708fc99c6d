"""The claims the operator makes, and why a pod does not run for reasons no pod says.

`ensure_owned_claim`: a claim is created for an object, or taken only when that object owns it.
A claim of that name that is not the object's (a user's own PVC whose name a Checkpoint's name
happens to make, an earlier object's claim being garbage-collected) is never mounted.

`unbound_claim`, `attach_wait`, `refused_pods`: a volume a pod waits for is not bound (the claim's
status and its own Events), or cannot be attached to the pod's node (the pod's Events: a
Multi-Attach error, an attach limit), or its Job cannot create it (the Job's Events).

Read only while a pod that needs the claim is Pending: one GET, and a LIST of that claim's
Events alone (a field selector, never the namespace's). The provisioner's Events change no
object of ours, so a claim that stays unbound is looked at again after CLAIM_RECHECK; its
binding is a change of the PVC, whose event wakes the owner at once."""

from __future__ import annotations

from typing import Any, Optional

from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.kube import EVENTS, PODS, PVCS
from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.logic.agent_pods import (PodProblem, attach_problem, claim_events_selector, claim_problem,
                                                  failed_attach, job_creation_problem, job_events_selector, pod_claims,
                                                  pod_events_selector)
from checkpoint_operator.logic.conditions import seconds_since
from checkpoint_operator.logic.results import Wait
from checkpoint_operator.logic.workload import foreign_claim_message, owned_by

CLAIM_RECHECK = 30.0  # seconds
PODS_RECHECK = 10.0   # seconds: a running Job without pods (refused ones bring no event of ours)
PODS_GRACE = 5.0      # seconds: a Job this young without pods is not refused yet, its pods are coming
MAX_NAMED_CLAIMS = 16  # claims of a pod read to name the one an attach error is about


class Young(Exception):
    """Created a moment ago: its Events would say nothing yet (looked at after PODS_GRACE)."""


def unbound_claim(ctx: Context, namespace: str, name: str, young: bool = False) -> Optional[PodProblem]:
    """An unbound claim's own reason (a LIST of its Events); with `young`, Young while it is too new
    to have one (a job's output claim: its pods' events wake the job, and it looks again after)."""
    claim = ctx.kube.cached_get(PVCS, namespace, name)  # its binding is an event that wakes the job
    if claim is None or (claim.get("status") or {}).get("phase") == "Bound":
        return None
    if young and is_young(claim):
        raise Young(name)
    return claim_problem(claim, ctx.kube.list(EVENTS, namespace, field_selector=claim_events_selector(name)))


def is_young(obj: Optional[dict[str, Any]]) -> bool:
    """Created less than PODS_GRACE ago: what its controller does with it is still on its way."""
    created = ((obj or {}).get("metadata") or {}).get("creationTimestamp")
    return isinstance(created, str) and bool(created) and seconds_since(created) < PODS_GRACE


def ensure_owned_claim(ctx: Context, owner: Checkpoint, body: dict[str, Any]) -> Optional[Wait]:
    """Create the claim `body` for `owner`, or find it; a Wait naming it when the claim of that
    name belongs to someone else (then no pod may mount it)."""
    meta = owner.metadata
    claim = ctx.kube.ensure(PVCS, meta.namespace, body)
    if owned_by(claim, meta.uid):
        return None
    name = body["metadata"]["name"]
    return Wait("ClaimNotOwned", foreign_claim_message(name, owner.kind or "Checkpoint", meta.name, meta.uid),
                requeue_after=CLAIM_RECHECK)


# A workload's Jobs whose Events are read on one pass while it has no pod (a JobSet with a volume per
# worker has one Job per worker): admission refuses every worker's pods alike, worker 0's first.
REFUSAL_JOBS_READ = 4


def refused_pods(ctx: Context, namespace: str, job_names: list[str]) -> Optional[PodProblem]:
    """Jobs without pods: what the first one's `FailedCreate` Events say that has any (a LIST of
    each Job's Events alone, in order, until one names a refusal; at most REFUSAL_JOBS_READ)."""
    for job_name in job_names[:REFUSAL_JOBS_READ]:
        events = ctx.kube.list(EVENTS, namespace, field_selector=job_events_selector(job_name))
        problem = job_creation_problem(job_name, events)
        if problem is not None:
            return problem
    return None


def attach_wait(ctx: Context, namespace: str, pod_name: str) -> Optional[PodProblem]:
    """A Pending pod that waits to attach a volume (FailedAttachVolume: a Multi-Attach error while
    another node holds a ReadWriteOnce volume, a node's attach limit): one LIST of that pod's
    Events; only when there is such an event, the pod and its claims, to name the claim."""
    event = failed_attach(ctx.kube.list(EVENTS, namespace, field_selector=pod_events_selector(pod_name)))
    if event is None:
        return None
    pod = ctx.kube.get(PODS, namespace, pod_name) or {}
    claims_by_volume = {}
    for name in pod_claims(pod)[:MAX_NAMED_CLAIMS]:
        volume = ((ctx.kube.get(PVCS, namespace, name) or {}).get("spec") or {}).get("volumeName")
        if volume:
            claims_by_volume[str(volume)] = name
    return attach_problem(pod_name, event, claims_by_volume)
