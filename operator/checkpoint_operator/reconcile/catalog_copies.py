"""A namespace's copy of a catalog entry (volume store; logic/catalog.py says why a copy).

Made once per namespace, on the first job there that uses the entry: a claim owned by the entry and an
import pod (also owned by the entry) that fetches the source at the recorded commit and scans it; the
copy is used only once its digest equals the entry's (the claim then carries it in an annotation), and
later jobs of the namespace mount it directly. A copy that failed or did not verify is deleted (its
claim is the operator's, never mounted by a job), so that the next job copies into an empty claim. The copy pod is kept once it succeeded: a second job
that reads the result again finds the same pod (one name, created once), never starts a second copy
into the same claim. Both go with the entry (owner references).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.kube import PODS, PVCS, ApiError
from checkpoint_operator.logic import catalog
from checkpoint_operator.logic.inputs import InputWait, ResolvedInput
from checkpoint_operator.logic.results import Fail, Wait
from checkpoint_operator.protocol.results import ScanReport
from checkpoint_operator.logic.workload import foreign_claim_message, owned_by
from checkpoint_operator.reconcile import agent_runs, template_claims
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.volumes import CLAIM_RECHECK
from checkpoint_operator.reconcile.objects import InvalidObject, parse
from checkpoint_operator.storage import store_for


# A namespace's copy of a catalog entry: its owner, the ClusterCheckpoint, has one status for every
# namespace, so the copy pod's UID is recorded on the copy's claim (which the entry owns).
COPY = agent_runs.AgentTask("copy", None, (ScanReport,))


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
    describe = f"copying ClusterCheckpoint {entry.metadata.name} into namespace {namespace} (once for the namespace)"
    if claim is not None and owned_by(claim, entry.metadata.uid) and (claim.get("metadata") or {}).get(
            "deletionTimestamp"):
        _finish_copy_pod(ctx, namespace, entry)  # a crash between the claim's deletion and its pod's
        return Wait("CopyDiscarded", f"{describe}: the earlier copy, which did not verify, is being deleted; a new "
                    f"one follows", requeue_after=CLAIM_RECHECK)
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
    pin = agent_runs.PodPin(recorded=(claim["metadata"].get("annotations") or {}).get(catalog.COPY_POD_ANNOTATION),
                            record=lambda uid: _record_copy_pod(ctx, namespace, name, uid))
    run = agent_runs.follow(ctx, entry, pod, COPY, pin=pin)
    if isinstance(run, agent_runs.Waiting):
        if run.conflict:
            return InputWait("NameConflict", run.conflict)
        if run.problem is not None:
            return InputWait(run.problem.reason, f"{describe}: {run.problem.message}")
        return InputWait("CopyingInput", describe)
    # A copy that did not verify: its claim first (a crash in between leaves a claim being deleted,
    # whose wait finishes the pod), then its pod; the next job of the namespace copies into a new claim.
    if isinstance(run, agent_runs.PodFailed):
        discarded = _discard(ctx, namespace, name, entry)
        agent_runs.finish(ctx, pod)
        return Fail("InputCopyFailed", f"{describe}: {run.message}{discarded}")
    assert run.result is not None
    manifests = run.result.checkpoints
    digest = manifests[0].digest if len(manifests) == 1 else "(no files)"
    if digest != entry.status.digest:
        discarded = _discard(ctx, namespace, name, entry)
        agent_runs.finish(ctx, pod)
        return Fail("InputCopyMismatch", f"{catalog.copy_mismatch(entry, digest)}{discarded}")
    marked = _mark_verified(ctx, namespace, claim, digest)
    if marked is not None:
        return marked
    return replace(resolved, location=catalog.copy_location(name))


def _record_copy_pod(ctx: Context, namespace: str, claim: str, uid: str) -> None:
    ctx.kube.patch(PVCS, namespace, claim, {"metadata": {"annotations": {catalog.COPY_POD_ANNOTATION: uid}}})


def _finish_copy_pod(ctx: Context, namespace: str, entry: ClusterCheckpoint) -> None:
    """Delete the entry's copy pod in `namespace`, if there is one and it is the entry's."""
    pod = ctx.kube.get(PODS, namespace, catalog.copy_pod_name(entry))
    if pod is not None and owned_by(pod, entry.metadata.uid):
        agent_runs.finish(ctx, pod)


def _discard(ctx: Context, namespace: str, name: str, entry: ClusterCheckpoint) -> str:
    """Delete a copy that did not verify (the operator's own claim, never mounted by a job: only a
    verified copy is), so that the namespace's next job copies into an empty one; what happened, for
    the message. Conditional on the claim as just read: an adopter added meanwhile keeps it."""
    claim = ctx.kube.get(PVCS, namespace, name)
    if not catalog.copy_discardable(claim, entry):
        return ""
    assert claim is not None
    meta = claim["metadata"]
    try:
        ctx.kube.delete(PVCS, namespace, name, uid=meta.get("uid"), resource_version=meta.get("resourceVersion"))
    except ApiError as exc:
        return f" (the copy that did not verify, PersistentVolumeClaim {name}, could not be deleted: {exc})"
    return "; the copy that did not verify is deleted: the namespace's next job copies again"


def _mark_verified(ctx: Context, namespace: str, claim: dict[str, Any], digest: str) -> Optional[InputWait]:
    """Idempotent (the same digest each time), so unconditional: a claim's status changes underneath."""
    name = claim["metadata"]["name"]
    try:
        ctx.kube.patch(PVCS, namespace, name, {"metadata": {"annotations": {catalog.COPIED_DIGEST_ANNOTATION: digest}}})
    except ApiError as exc:
        return InputWait("CopyNotRecorded", f"recording the verified copy on PersistentVolumeClaim {name}: {exc}")
    return None
