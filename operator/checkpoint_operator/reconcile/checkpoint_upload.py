"""The step of an upload Checkpoint (spec.source.upload) until it is Ready: wait for a push,
take the data where the store keeps it, verify it, make it Ready like any import.

- Pending, WaitingForUpload: status.upload says where the data goes (s3: a prefix of the store,
  assigned at once and owned by the Checkpoint from then on; volume: the Checkpoint's PVC).
- A push request (annotations, logic/transfers.py): on the volume store a receiver pod on the
  PVC takes the pushed stream and checks it; on the s3 store the data is already under the
  prefix and a pod checks every object against the manifest. Importing meanwhile.
- The check passed: Ready (digest, format, step, complete from the data; the owned data goes
  with the Checkpoint). It failed: Failed, naming the files. No data arrived (the receiver
  waited IDLE_SECONDS, or the s3 prefix has no manifest yet): WaitingForUpload again, and a
  later push retries.
"""

from __future__ import annotations

from typing import Any

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointPhase, CheckpointStatus
from checkpoint_operator.api.upload import UPLOAD_REQUEST_ANNOTATION, UploadStatus
from checkpoint_operator.reconcile import agent_runs, template_claims, volumes
from checkpoint_operator.reconcile import volume_snapshots as volume_snapshot_steps
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.annotation_requests import clear_stale_pod, drop_request
from checkpoint_operator.reconcile.status_writer import write_status
from checkpoint_operator.logic import transfers, volume_snapshots, workload
from checkpoint_operator.logic.results import Done, Fail, Result, Wait
from checkpoint_operator.logic.snapshot import ready_change
from checkpoint_operator.logic.status import StatusChange
from checkpoint_operator.storage import store_for
from checkpoint_operator.protocol.results import TransferReport
from checkpoint_operator import metrics


# The receiver (volume store) or the checker (s3 store) of a push: its UID recorded before its result is read.
UPLOAD = agent_runs.AgentTask("upload", "agentPodUid", (TransferReport,))


def await_upload(ctx: Context, checkpoint: Checkpoint) -> Result:
    from checkpoint_operator.reconcile.checkpoint_import import import_limit
    store = store_for(ctx.config)
    target = store.upload_target(checkpoint)
    request = transfers.upload_request(checkpoint)
    if not isinstance(request, transfers.UploadRequest):
        if request is None and checkpoint.ready_reason() == "WaitingForUpload" and checkpoint.status.upload == target:
            return Wait()  # already waiting: keep the message (why the last push attempt ended)
        message = request or transfers.waiting_message(checkpoint, target)
        return _waiting(ctx, checkpoint, target, message)
    limit = import_limit(ctx, checkpoint)
    if not isinstance(limit, int):
        return limit  # the limit cannot be read: wait (never a pod without one)
    if store.import_needs_claim:  # the volume store: the data lands on the Checkpoint's own claim
        squatted = template_claims.squatted(ctx, checkpoint.metadata.namespace, workload.import_claim_name(checkpoint))
        if squatted:
            return Wait("ClaimNamedByTrainingJob", squatted, requeue_after=template_claims.SQUAT_RECHECK)
        foreign = volumes.ensure_owned_claim(ctx, checkpoint, workload.build_import_claim(checkpoint, ctx.config))
        if foreign is not None:
            return foreign
    serving = store.upload_pod(checkpoint, request, limit)
    pod = serving.pod
    if clear_stale_pod(ctx, pod, request.value):
        return Wait()
    started = StatusChange(phase=CheckpointPhase.IMPORTING, reason="Receiving", message=serving.describe,
                           event="Normal", fields=CheckpointStatus(upload=serving.target, owned=True))
    run = agent_runs.follow(ctx, checkpoint, pod, UPLOAD, started)
    if isinstance(run, agent_runs.Waiting):
        return agent_runs.wait_for(run, reason=None, message=serving.describe,
                                   current_reason=checkpoint.ready_reason(), problem_prefix=serving.describe)
    if isinstance(run, agent_runs.PodFailed):
        return _retry(ctx, checkpoint, pod, request, target, f"the last push attempt failed: {run.message}")
    result = run.result
    assert result is not None
    if not result.received:
        why = result.reason or result.problems_text() or "no data arrived"
        return _retry(ctx, checkpoint, pod, request, target, f"the last push request ended without data ({why})")
    if not result.verified or result.checkpoint is None:
        agent_runs.finish(ctx, pod)
        return Fail("UploadMismatch", f"the pushed data does not match its manifest and digest {request.digest}: "
                                      f"{result.problems_text()}")
    manifest = result.checkpoint
    if checkpoint.spec.format:  # the pusher's hint wins over detection (spec.format)
        manifest = manifest.model_copy(update={"format": checkpoint.spec.format})
    claim = workload.import_claim_name(checkpoint)
    snapshot_request = store.import_snapshot(checkpoint, claim)
    location, taken = serving.location, None
    if snapshot_request is not None:  # kept in a volume snapshot of the push's volume (logic/volume_snapshots.py)
        if not volume_snapshots.is_synced(result.synced):
            agent_runs.finish(ctx, pod)
            return Fail("UploadFailed", "the receiver pod did not report its volume's filesystem synced (syncfs): no "
                                        "volume snapshot is taken of bytes that may not be on the disk")
        got = volume_snapshot_steps.take(ctx, checkpoint, snapshot_request)
        if isinstance(got, Wait):
            return got
        taken = got
        location = store.import_location(checkpoint, claim, manifest, taken)
    ready = ready_change(manifest, location, owned=True)
    write_status(ctx, checkpoint, ready.with_fields(CheckpointStatus(upload=None)))
    metrics.TRANSFERRED_BYTES.labels("import").inc(manifest.sizeBytes)
    agent_runs.finish(ctx, pod)
    drop_request(ctx, checkpoint, UPLOAD_REQUEST_ANNOTATION, request.value)
    if taken is not None:  # the data is in the snapshot: the push's volume is released
        volume_snapshot_steps.release_claim(ctx, checkpoint, claim, taken.name)
    return Done()


def _waiting(ctx: Context, checkpoint: Checkpoint, target: UploadStatus, message: str) -> Result:
    """Pending, and where the data goes. On s3 the prefix is owned from now on: data pushed
    there is deleted with the Checkpoint even if it never becomes Ready."""
    write_status(ctx, checkpoint, StatusChange(phase=CheckpointPhase.PENDING, reason="WaitingForUpload",
                                               message=message, event="Normal",
                                               fields=CheckpointStatus(upload=target, owned=True)))
    return Wait()


def _retry(ctx: Context, checkpoint: Checkpoint, pod: dict[str, Any], request: transfers.UploadRequest,
           target: UploadStatus, why: str) -> Result:
    """Waiting for a push again (`target`: status.upload without a receiver pod)."""
    message = f"{why}; {transfers.waiting_message(checkpoint, target)}"
    write_status(ctx, checkpoint, StatusChange(phase=CheckpointPhase.PENDING, reason="WaitingForUpload",
                                               message=message, event="Warning",
                                               fields=CheckpointStatus(upload=target)))
    agent_runs.finish(ctx, pod)
    drop_request(ctx, checkpoint, UPLOAD_REQUEST_ANNOTATION, request.value)
    return Wait()
