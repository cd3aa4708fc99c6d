"""A namespace's copy of a catalog entry (volume store; logic/catalog.py says why a copy).

Made once per namespace, on the first job there that uses the entry: a claim owned by the entry and an
import pod (also owned by the entry) that fetches the source at the recorded commit and scans it; the
copy is used only once its digest equals the entry's (the claim then carries it in an annotation), and
later jobs of the namespace mount it directly. The copy pod is kept once it succeeded: a second job
that reads the result again finds the same pod (one name, created once), never starts a second copy
into the same claim. Both go with the entry (owner references).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.kube import PVCS, ApiError
from checkpoint_operator.logic import catalog
from checkpoint_operator.logic.inputs import InputWait, ResolvedInput
from checkpoint_operator.logic.results import Fail, Wait
from checkpoint_operator.logic.snapshot import parse_scan_output
from checkpoint_operator.logic.workload import foreign_claim_message, owned_by
from checkpoint_operator.reconcile import agent_runs, template_claims
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.volumes import CLAIM_RECHECK
from checkpoint_operator.reconcile.objects import InvalidObject, parse
from checkpoint_operator.storage import store_for


def namespace_copy(ctx: Context, tj: TrainingJob, entry_body: dict[str, Any],
                   resolved: ResolvedInput) -> ResolvedInput | InputWait | Wait | Fail:
    """The input as the job mounts it: its namespace's verified copy, or why it waits (an InputWait: an event
    of the copy ends it; a Wait: a look again later) or fails."""
    store = store_for(ctx.config)
    if not store.copies_per_namespace:
        return resolved  # the s3 store reads the catalog prefix itself
    try:
        entry = parse(ClusterCheckpoint, entry_body)
    except InvalidObject as invalid:
        return Fail("InputFailed", f"input ClusterCheckpoint {resolved.name}: {invalid.message()}")
    namespace, name = tj.metadata.namespace, catalog.copy_claim_name(entry)
    claim = ctx.kube.get(PVCS, namespace, name)
    if catalog.copy_is_verified(claim, entry):
        return replace(resolved, location=catalog.copy_location(name))
    refusal = catalog.copy_refusal(entry)
    if refusal:
        return Fail("InputNotCopyable", refusal)
    if claim is None:
        squatted = template_claims.squatted(ctx, namespace, name)  # a template that would mount it read-write
        if squatted:
            return Wait("ClaimNamedByTrainingJob", squatted, requeue_after=template_claims.SQUAT_RECHECK)
        claim = ctx.kube.ensure(PVCS, namespace, catalog.build_copy_claim(entry, ctx.config, namespace))
    if not owned_by(claim, entry.metadata.uid):  # a namesake (a tenant's own claim) is never mounted nor written
        return Wait("ClaimNotOwned", foreign_claim_message(name, entry.kind, entry.metadata.name, entry.metadata.uid),
                    requeue_after=CLAIM_RECHECK)
    parts = store.copy_containers(entry, name, ctx.config.max_checkpoint_bytes)
    pod = catalog.build_copy_pod(entry, ctx.config, namespace, parts)
    describe = f"copying ClusterCheckpoint {entry.metadata.name} into namespace {namespace} (once for the namespace)"
    run = agent_runs.run_agent_pod(ctx, entry.metadata.uid, pod, "copy", parse=parse_scan_output)
    if isinstance(run, (agent_runs.Started, agent_runs.Running)):
        problem = run.problem if isinstance(run, agent_runs.Running) else None
        if problem is not None:
            return InputWait(problem.reason, f"{describe}: {problem.message}")
        return InputWait("CopyingInput", describe)
    if isinstance(run, agent_runs.NotOurs):
        return InputWait("NameConflict", run.message)
    if isinstance(run, agent_runs.PodFailed):
        agent_runs.finish(ctx, pod)  # the next job of the namespace tries again
        return Fail("InputCopyFailed", f"{describe}: {run.message}")
    manifests = run.scan.checkpoints
    digest = manifests[0].digest if len(manifests) == 1 else "(no files)"
    if digest != entry.status.digest:
        agent_runs.finish(ctx, pod)
        return Fail("InputCopyMismatch", catalog.copy_mismatch(entry, digest))
    marked = _mark_verified(ctx, namespace, claim, digest)
    if marked is not None:
        return marked
    return replace(resolved, location=catalog.copy_location(name))


def _mark_verified(ctx: Context, namespace: str, claim: dict[str, Any], digest: str) -> Optional[InputWait]:
    """Idempotent (the same digest each time), so unconditional: a claim's status changes underneath."""
    name = claim["metadata"]["name"]
    try:
        ctx.kube.patch(PVCS, namespace, name, {"metadata": {"annotations": {catalog.COPIED_DIGEST_ANNOTATION: digest}}})
    except ApiError as exc:
        return InputWait("CopyNotRecorded", f"recording the verified copy on PersistentVolumeClaim {name}: {exc}")
    return None
