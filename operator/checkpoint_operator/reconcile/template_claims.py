"""The claims a TrainingJob's template reaches, held against the operator's (logic/claim_guard.py):
read when the job starts, and again wherever the operator is about to create a claim."""

from __future__ import annotations

from typing import Optional

from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.kube import PVCS
from checkpoint_operator.logic import claim_guard
from checkpoint_operator.reconcile.context import Context

WHAT_CLAIM = {"TrainingJob": "the output volume", "Checkpoint": "the data volume"}
SQUAT_RECHECK = 30.0  # seconds: the job that names a claim ends with no event of the claim's owner


def refused(ctx: Context, tj: TrainingJob) -> Optional[str]:
    """Why the template may not run (a claim the operator manages, by name or live), or None."""
    references = claim_guard.claim_references(tj.spec.template.spec or {})
    problem = claim_guard.too_many(references)
    if problem:
        return problem
    namespace = tj.metadata.namespace
    for reference in references:  # by name first: the claims made (or still to be made) for our objects
        owner = ctx.indexes.managed_claim(namespace, reference.claim)
        if owner is not None:
            kind, name = owner
            return claim_guard.refusal(reference, f"{WHAT_CLAIM[kind]} of {kind} {name}")
    seen: set[str] = set()
    for reference in references:  # then live: labelled or owned by our kinds, whatever its name
        if reference.claim in seen:
            continue
        seen.add(reference.claim)
        why = claim_guard.managed_claim_reason(ctx.kube.get(PVCS, namespace, reference.claim))
        if why:
            return claim_guard.refusal(reference, why)
    return None


def squatted(ctx: Context, namespace: str, claim: str) -> Optional[str]:
    """Before the operator creates `claim`: unfinished jobs whose template names it, or None."""
    jobs = ctx.indexes.jobs_naming_claim(namespace, claim)
    return claim_guard.squatting_message(claim, jobs) if jobs else None
