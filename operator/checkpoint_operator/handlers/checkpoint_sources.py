"""The steps of a user's Checkpoint until it is Ready: adopt a volume path (scan in place),
import from s3/http (copy into storage the operator owns), wait for a push (handlers/uploads.py),
or wait for a snapshot."""

from __future__ import annotations

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointPhase
from checkpoint_operator.api.common import parse_quantity
from checkpoint_operator.handlers import agent_runs, uploads
from checkpoint_operator.handlers.context import Context
from checkpoint_operator.handlers.status import write_status
from checkpoint_operator.kube import PVCS
from checkpoint_operator.logic import workload
from checkpoint_operator.logic.results import Done, Fail, Result, Wait
from checkpoint_operator.logic.snapshot import ScanResult, ready_change
from checkpoint_operator.logic.status import StatusChange
from checkpoint_operator.storage import MissingUpload, store_for
from checkpoint_operator import metrics


def wait_for_snapshot(ctx: Context, checkpoint: Checkpoint) -> Result:
    """Snapshot Checkpoints are made Ready by their TrainingJob; the ones whose job is gone (or
    that a user wrote by hand) fail, as nothing will ever write them."""
    source = checkpoint.spec.source.trainingJob
    job = ctx.indexes.training_job(checkpoint.metadata.namespace, source.name)
    if job is None or job.uid != source.uid:
        return Fail("ProducerGone", f"spec.source.trainingJob: TrainingJob {source.name} (uid {source.uid}) does not "
                                    "exist, so nothing will write this checkpoint; snapshot Checkpoints are created "
                                    "by the operator")
    return Wait()


def adopt_volume(ctx: Context, checkpoint: Checkpoint) -> Result:
    source = checkpoint.spec.source.volume
    where = f"{source.claimName}:{source.path}"
    claim = ctx.kube.get(PVCS, checkpoint.metadata.namespace, source.claimName)
    if claim is None or claim.get("status", {}).get("phase") != "Bound":
        state = "does not exist" if claim is None else f"is not Bound (phase {claim.get('status', {}).get('phase')})"
        return Wait("WaitingForVolume", f"spec.source.volume.claimName: PersistentVolumeClaim {source.claimName} {state}")
    pod = workload.build_volume_scan_pod(checkpoint, ctx.config)
    result = _run(ctx, checkpoint, pod, "scan", CheckpointPhase.PENDING, "Scanning", f"scanning {where}", "ScanFailed")
    if not isinstance(result, ScanResult):
        return result
    path = source.path.strip("/") or "."
    write_status(ctx, checkpoint, ready_change(result.checkpoints[0], {"volume": {"claimName": source.claimName,
                                                                                   "path": path}}, owned=False))
    agent_runs.finish(ctx, pod)
    return Done()


def import_limit(ctx: Context, checkpoint: Checkpoint) -> int:
    """The operator's limit, lowered by spec.maxSize (it may never raise it)."""
    limit = ctx.config.max_checkpoint_bytes
    if checkpoint.spec.maxSize:
        limit = min(limit, parse_quantity(checkpoint.spec.maxSize))
    return limit


def import_checkpoint(ctx: Context, checkpoint: Checkpoint) -> Result:
    origin = workload.import_origin(checkpoint)
    store = store_for(ctx.config)
    if store.import_needs_claim:
        ctx.kube.ensure(PVCS, checkpoint.metadata.namespace, workload.build_import_claim(checkpoint, ctx.config))
    pod = workload.build_import_pod(checkpoint, ctx.config, store.import_containers(checkpoint,
                                                                                    import_limit(ctx, checkpoint)))
    result = _run(ctx, checkpoint, pod, "import", CheckpointPhase.IMPORTING, "Importing", f"importing {origin}",
                  "ImportFailed")
    if not isinstance(result, ScanResult):
        return result
    manifest = result.checkpoints[0]
    try:
        location = store.import_location(checkpoint, workload.import_claim_name(checkpoint), result.uploads)
        if not store.is_committed(location):
            raise MissingUpload("the upload into the store did not complete (no manifest)")
    except MissingUpload as exc:
        agent_runs.finish(ctx, pod)
        return Fail("ImportFailed", f"import of {origin}: {exc}")
    metrics.TRANSFERRED_BYTES.labels("import").inc(manifest.sizeBytes)
    write_status(ctx, checkpoint, ready_change(manifest, location, owned=True))
    agent_runs.finish(ctx, pod)
    return Done()


def _run(ctx: Context, checkpoint: Checkpoint, pod: dict, what: str, phase: CheckpointPhase, reason: str,
         describe: str, failure_reason: str) -> Result | ScanResult:
    """The agent pod of an adoption or import: its scan once it succeeded, else the wait or failure."""
    run = agent_runs.run_agent_pod(ctx, checkpoint.metadata.uid, pod, what)
    if isinstance(run, agent_runs.Started):
        write_status(ctx, checkpoint, StatusChange(phase=phase, reason=reason, message=describe, event="Normal"))
        return Wait()
    if isinstance(run, agent_runs.Running):
        if run.problem:
            return Wait(run.problem.reason, f"{describe}: {run.problem.message}")
        return Wait() if checkpoint.ready_reason() == reason else Wait(reason, describe, warning=False)
    if isinstance(run, agent_runs.NotOurs):
        return Wait("NameConflict", run.message, requeue_after=5.0)
    if isinstance(run, agent_runs.PodFailed):
        agent_runs.finish(ctx, pod)
        return Fail(failure_reason, f"{describe}: {run.message}")
    if len(run.scan.checkpoints) != 1:
        agent_runs.finish(ctx, pod)
        return Fail(failure_reason, f"{describe}: no files found")
    return run.scan


STEPS = {"trainingJob": wait_for_snapshot, "volume": adopt_volume, "s3": import_checkpoint, "http": import_checkpoint,
         "upload": uploads.await_upload}
