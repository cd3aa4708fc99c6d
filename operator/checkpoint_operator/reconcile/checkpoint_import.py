"""The steps of a user's Checkpoint until it is Ready: adopt a volume path (scan in place),
import (s3, http/ftp, huggingFace, gcs, azureBlob, git: copy into storage the operator owns,
provenance in status.source), wait for a push (reconcile/checkpoint_upload.py), or wait for a
snapshot."""

from __future__ import annotations

from typing import Any, Optional

from checkpoint_operator.api.common import PodPhase
from checkpoint_operator.api.checkpoint import (Checkpoint, CheckpointPhase, CheckpointStatus, Location,
                                               TrainingJobSource, VolumeLocation, VolumeSource)
from checkpoint_operator.api.sources import SourceStatus
from checkpoint_operator.reconcile import (agent_runs, checkpoint_upload, claim_holds, live_sealing,
                                          sealed_checkpoints, template_claims, volumes)
from checkpoint_operator.reconcile import volume_snapshots as volume_snapshot_steps
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.status_writer import write_status
from checkpoint_operator.kube import NAMESPACES, PVCS, ApiError
from checkpoint_operator.logic import import_sources, limits, volume_snapshots, workload
from checkpoint_operator.logic.limits import NAMESPACE_LIMIT_ANNOTATION
from checkpoint_operator.logic.results import Done, Fail, Result, Wait
from checkpoint_operator.logic.snapshot import ready_change
from checkpoint_operator.logic.status import StatusChange
from checkpoint_operator.protocol import channel
from checkpoint_operator.protocol.results import ImportReport, Provenance, ScanReport
from checkpoint_operator.storage import MissingUpload, store_for
from checkpoint_operator import metrics


def step(ctx: Context, checkpoint: Checkpoint) -> Result:
    """The step of a Checkpoint that is not settled yet, by its spec.source."""
    source = checkpoint.spec.source
    if source.trainingJob is not None:
        return wait_for_snapshot(ctx, checkpoint, source.trainingJob)
    if source.volume is not None:
        return adopt_volume(ctx, checkpoint, source.volume)
    if source.upload is not None:
        return checkpoint_upload.await_upload(ctx, checkpoint)
    return import_checkpoint(ctx, checkpoint)


def wait_for_snapshot(ctx: Context, checkpoint: Checkpoint, source: TrainingJobSource) -> Result:
    """A snapshot Checkpoint is Ready from the sealed data its job put in its spec, once its bytes are
    held for it (reconcile/sealed_checkpoints.py). One without sealed data (a user wrote it by hand,
    or an operator before 0.3 created it and died before making it Ready) never will be: it fails."""
    if source.sealed is not None:
        return sealed_checkpoints.publish(ctx, checkpoint, source, source.sealed)
    return Fail("NotSealed", f"spec.source.trainingJob has no sealed data (TrainingJob {source.name}, uid "
                             f"{source.uid}): snapshot Checkpoints are created by the operator with what their job "
                             "sealed; delete this one (a job's next snapshot makes it again)")


def adopt_volume(ctx: Context, checkpoint: Checkpoint, source: VolumeSource) -> Result:
    where = f"{source.claimName}:{source.path}"
    claim = ctx.kube.get(PVCS, checkpoint.metadata.namespace, source.claimName)
    if claim is None or claim.get("status", {}).get("phase") != "Bound":
        state = "does not exist" if claim is None else f"is not Bound (phase {claim.get('status', {}).get('phase')})"
        return Wait("WaitingForVolume", f"spec.source.volume.claimName: PersistentVolumeClaim {source.claimName} {state}")
    retired = live_sealing.retired_refusal(ctx, claim, source.path)  # a directory the sidecar is removing
    if retired:
        return Fail("RetiredDirectory", retired)
    held = claim_holds.hold_for_adopter(ctx, checkpoint, claim)  # never Ready on a claim that may go first
    if held is not None:
        return held
    pod = workload.build_volume_scan_pod(checkpoint, ctx.config)
    result = _run(ctx, checkpoint, pod, SCAN, CheckpointPhase.PENDING, "Scanning", f"scanning {where}", "ScanFailed")
    if not isinstance(result, ScanReport):
        return result
    path = source.path.strip("/") or "."
    location = Location(volume=VolumeLocation(claimName=source.claimName, path=path))
    write_status(ctx, checkpoint, ready_change(result.checkpoints[0], location, owned=False))
    agent_runs.finish(ctx, pod)
    return Done()


NAMESPACE_RECHECK = 60.0  # seconds: a Namespace is not watched (nor is the operator's RBAC)


def import_limit(ctx: Context, checkpoint: Checkpoint) -> int | Result:
    """The operator's limit, lowered by the Namespace's annotation and by spec.maxSize
    (logic/limits.py); one GET of the Namespace, since a namespaced install cannot watch them."""
    name = checkpoint.metadata.namespace
    try:
        namespace = ctx.kube.get(NAMESPACES, "", name)
    except ApiError as exc:
        return Wait("NamespaceUnreadable", f"cannot read Namespace {name} for its {NAMESPACE_LIMIT_ANNOTATION} "
                                           f"annotation ({exc.status} {exc.reason}): the operator needs get on "
                                           "namespaces (the chart grants it)", requeue_after=NAMESPACE_RECHECK)
    try:
        return limits.import_limit(ctx.config.max_checkpoint_bytes, namespace, checkpoint.spec.maxSize)
    except limits.InvalidLimit as exc:
        return Wait("InvalidLimit", str(exc), stalled=True, requeue_after=NAMESPACE_RECHECK)


def import_checkpoint(ctx: Context, checkpoint: Checkpoint) -> Result:
    origin = workload.import_origin(checkpoint)
    store = store_for(ctx.config)
    limit = import_limit(ctx, checkpoint)
    if not isinstance(limit, int):
        return limit
    if store.import_needs_claim:
        squatted = template_claims.squatted(ctx, checkpoint.metadata.namespace, workload.import_claim_name(checkpoint))
        if squatted:
            return Wait("ClaimNamedByTrainingJob", squatted, requeue_after=template_claims.SQUAT_RECHECK)
        foreign = volumes.ensure_owned_claim(ctx, checkpoint, workload.build_import_claim(checkpoint, ctx.config))
        if foreign is not None:
            return foreign
    pod = workload.build_import_pod(checkpoint, ctx.config, store.import_containers(checkpoint, limit))
    result = _run(ctx, checkpoint, pod, IMPORT, CheckpointPhase.IMPORTING, "Importing", f"importing {origin}",
                  "ImportFailed")
    if not isinstance(result, ScanReport):
        return result
    manifest = result.checkpoints[0]
    claim = workload.import_claim_name(checkpoint)
    taken = None
    request = store.import_snapshot(checkpoint, claim)
    if request is not None:  # kept in a volume snapshot of the import's volume (logic/volume_snapshots.py)
        if not volume_snapshots.is_synced(result.synced):
            agent_runs.finish(ctx, pod)
            return Fail("ImportFailed", f"import of {origin}: the import pod did not report its volume's filesystem "
                                        "synced (syncfs): no volume snapshot is taken of bytes that may not be on "
                                        "the disk")
        got = volume_snapshot_steps.take(ctx, checkpoint, request)
        if isinstance(got, Wait):
            return got
        taken = got
    try:
        location = store.import_location(checkpoint, claim, manifest, taken)
        if not store.is_committed(location):
            raise MissingUpload("the upload into the store did not complete (no manifest)")
    except MissingUpload as exc:
        agent_runs.finish(ctx, pod)
        return Fail("ImportFailed", f"import of {origin}: {exc}")
    provenance = _provenance(ctx, checkpoint, pod)
    if isinstance(provenance, str):
        agent_runs.finish(ctx, pod)
        return Fail("ImportFailed", f"import of {origin}: {provenance}")
    metrics.TRANSFERRED_BYTES.labels("import").inc(manifest.sizeBytes)
    change = ready_change(manifest, location, owned=True)
    write_status(ctx, checkpoint, change.with_fields(CheckpointStatus(source=provenance)))
    agent_runs.finish(ctx, pod)
    if taken is not None:  # the data is in the snapshot: the import's volume is released
        volume_snapshot_steps.release_claim(ctx, checkpoint, claim, taken.name)
    return Done()


def _provenance(ctx: Context, checkpoint: Checkpoint, pod: dict[str, Any]) -> SourceStatus | str:
    """status.source from what the pod's `import` container reported (the commit, for the Hub and
    Git), or why it cannot be recorded."""
    provenance: Optional[Provenance]
    try:
        provenance = agent_runs.read_result(ctx, pod, (ImportReport,), "import").provenance
    except (channel.ResultError, ApiError):
        provenance = None
    return import_sources.source_status(import_sources.import_spec(checkpoint), provenance)


# The pod of an adoption (a scan in place) or an import: one at a time, so one recorded UID.
SCAN = agent_runs.AgentTask("scan", "agentPodUid", (ScanReport,))
IMPORT = agent_runs.AgentTask("import", "agentPodUid", (ScanReport,))


def _run(ctx: Context, checkpoint: Checkpoint, pod: dict[str, Any], task: agent_runs.AgentTask[ScanReport],
         phase: CheckpointPhase, reason: str, describe: str, failure_reason: str) -> Result | ScanReport:
    """The agent pod of an adoption or import: its scan once it succeeded, else the wait or failure."""
    started = StatusChange(phase=phase, reason=reason, message=describe, event="Normal")
    run = agent_runs.follow(ctx, checkpoint, pod, task, started)
    if isinstance(run, agent_runs.Waiting):
        claim = _claim_of(pod)
        problem = volumes.unbound_claim(ctx, checkpoint.metadata.namespace, claim) \
            if claim and not run.problem and not run.conflict and run.phase == PodPhase.PENDING else None
        if problem:
            return Wait(problem.reason, f"{describe}: {problem.message}", requeue_after=volumes.CLAIM_RECHECK)
        return agent_runs.wait_for(run, reason=reason, message=describe, current_reason=checkpoint.ready_reason(),
                                   problem_prefix=describe)
    if isinstance(run, agent_runs.PodFailed):
        agent_runs.finish(ctx, pod)
        return Fail(failure_reason, f"{describe}: {run.message}")
    assert run.result is not None
    if len(run.result.checkpoints) != 1:
        agent_runs.finish(ctx, pod)
        return Fail(failure_reason, f"{describe}: no files found")
    return run.result


def _claim_of(pod: dict[str, Any]) -> str | None:
    """The claim an import or scan pod mounts (the volume store's import claim, an adopted volume)."""
    for volume in pod["spec"].get("volumes") or []:
        if volume.get("persistentVolumeClaim"):
            return str(volume["persistentVolumeClaim"]["claimName"])
    return None

