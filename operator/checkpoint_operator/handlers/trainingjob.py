"""TrainingJob: Pending -> Running -> Snapshotting -> Succeeded | Failed.

`reconcile` is level-triggered and idempotent: it reads the object, works out which step it
is at from status.phase, and does that step. Every object it creates has a deterministic
name, so running a step twice (say, after an operator restart) creates nothing twice.
"""

from __future__ import annotations

from typing import Optional

import pydantic

from checkpoint_operator.api.trainingjob import TrainingJobSpec
from checkpoint_operator.handlers.context import Context
from checkpoint_operator.handlers.status import write_status
from checkpoint_operator.handlers.usage import register_user, release_inputs
from checkpoint_operator.kube import CHECKPOINTS, JOBS, PODS, PVCS, TRAINING_JOBS, ApiError, Conflict
from checkpoint_operator.logic import workload
from checkpoint_operator.logic.conditions import get_condition, kstatus_conditions, now_rfc3339, seconds_since
from checkpoint_operator.logic.inputs import (FINISHED_JOB_PHASES, InputWait, ResolvedInput, is_deleting,
                                              resolve_inputs, resolve_one)
from checkpoint_operator.logic.snapshot import ScanOutputError, is_produced_by, parse_scan_output, plan_snapshot
from checkpoint_operator.storage import store_for
from checkpoint_operator.storage.base import MissingUpload
from checkpoint_operator import metrics

MAX_SNAPSHOT_ATTEMPTS = 3


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    steps = {"Pending": start, "Running": follow_job, "Snapshotting": snapshot}
    for _ in range(len(steps) + 1):  # one pass may take a job through several phases
        tj = ctx.kube.get(TRAINING_JOBS, namespace, name)
        if tj is None or is_deleting(tj):
            return
        tj = with_defaults(tj)
        phase = tj.get("status", {}).get("phase") or "Pending"
        step = steps.get(phase)
        if step is None:  # finished: make sure the inputs are free (idempotent)
            release_inputs(ctx.kube, tj)
            return
        if not step(ctx, tj):
            return


def with_defaults(tj: dict) -> dict:
    """The spec with the CRD's defaults filled in, as the API server would have done (an API
    without schema defaulting, such as local mode's, gives it as written). An invalid spec is
    left as it is for `start` to refuse."""
    try:
        return {**tj, "spec": TrainingJobSpec.model_validate(tj["spec"]).to_wire()}
    except pydantic.ValidationError:
        return tj


# --- status helpers -------------------------------------------------------------------------------

def _set_status(ctx: Context, obj: dict, phase: str, reason: str, message: str, *, ready: bool = False,
                stalled: bool = False, event: Optional[str] = None, **fields) -> dict:
    return write_status(ctx, obj, phase, reason, message, ready=ready, stalled=stalled, event=event,
                        reconciling=not (ready or stalled or phase in FINISHED_JOB_PHASES), **fields)


def _fail(ctx: Context, tj: dict, reason: str, message: str) -> bool:
    _set_status(ctx, tj, "Failed", reason, message, stalled=True, event="Warning", completionTime=now_rfc3339())
    release_inputs(ctx.kube, tj)
    return False


# --- Pending: resolve, register, create ------------------------------------------------------------

def _resolve(ctx: Context, tj: dict) -> tuple[list[ResolvedInput], list[InputWait]]:
    """Inputs pinned at an earlier pass are kept (by uid), so a restart cannot switch `latest`."""
    namespace = tj["metadata"]["namespace"]
    checkpoints = ctx.kube.list(CHECKPOINTS, namespace)
    pinned = tj.get("status", {}).get("inputs")
    refs = tj["spec"].get("checkpoints") or []
    if pinned is not None and len(pinned) == len(refs):
        results = [resolve_one({"uid": p["uid"], "mountName": ref.get("mountName") or p["name"]}, checkpoints, [],
                               job_uid=tj["metadata"]["uid"]) for p, ref in zip(pinned, refs)]
        return ([r for r in results if isinstance(r, ResolvedInput)], [r for r in results if isinstance(r, InputWait)])
    resolution = resolve_inputs(refs, checkpoints, ctx.kube.list(TRAINING_JOBS, namespace))
    return resolution.inputs, resolution.waits


def start(ctx: Context, tj: dict) -> bool:
    try:
        TrainingJobSpec.model_validate(tj["spec"])
    except pydantic.ValidationError as exc:
        return _fail(ctx, tj, "InvalidSpec", _validation_message(exc))

    inputs, waits = _resolve(ctx, tj)
    if waits:
        _set_status(ctx, tj, "Pending", waits[0].reason, "; ".join(w.message for w in waits), event="Warning",
                    stalled=any(w.terminal for w in waits))
        return False

    # Pin first, then register: a restart between the two finds the same inputs.
    tj = with_defaults(ctx.kube.patch_status(TRAINING_JOBS, tj["metadata"]["namespace"], tj["metadata"]["name"], {
        "inputs": [i.pinned() for i in inputs], "inputCount": len(inputs)}))
    for item in inputs:
        wait = register_user(ctx.kube, tj["metadata"]["namespace"], item.name, item.uid, tj)
        if wait is not None:
            # Hold nothing while waiting: release what was taken and resolve afresh next pass,
            # so a waiting job never keeps another input from being deleted.
            release_inputs(ctx.kube, tj)
            tj = _set_status(ctx, tj, "Pending", wait.reason, wait.message, event="Warning", inputs=None,
                             inputCount=None)
            return False

    try:
        built = workload.build_job(tj, inputs, ctx.config)
    except workload.InvalidSpec as exc:
        return _fail(ctx, tj, "InvalidSpec", str(exc))
    for warning in built.warnings:
        ctx.warn(tj, "EnvOverridden", warning)

    namespace = tj["metadata"]["namespace"]
    try:
        if tj["spec"].get("output", {}).get("enabled", True):
            _ensure_owned(tj, ctx.kube.ensure(PVCS, namespace, workload.build_output_claim(tj, ctx.config)))
        _ensure_owned(tj, ctx.kube.ensure(JOBS, namespace, built.job))
    except NameConflict as exc:  # usually an earlier run's Job that garbage collection is removing
        _set_status(ctx, tj, "Pending", "NameConflict", str(exc), event="Warning")
        return False
    except ApiError as exc:
        if exc.status in (400, 422):
            return _fail(ctx, tj, "InvalidSpec", f"the API server refused the Job or its volume: {exc.message}")
        _set_status(ctx, tj, "Pending", "CreateRefused", f"creating the Job or its volume failed: {exc}",
                    event="Warning")
        return False
    names = ", ".join(i.name for i in inputs) or "no inputs"
    _set_status(ctx, tj, "Running", "Running", f"Job {built.job['metadata']['name']} started on {names}",
                event="Normal", jobName=built.job["metadata"]["name"],
                outputClaim=workload.output_claim_name(tj) if tj["spec"].get("output", {}).get("enabled", True) else None,
                startTime=now_rfc3339())
    return True


class NameConflict(Exception):
    pass


def _ensure_owned(tj: dict, obj: dict) -> dict:
    """An object found under the name we would use must be this job's, not a namesake's (an
    earlier TrainingJob of the same name, or the user's own)."""
    uid = tj["metadata"]["uid"]
    if not any(o.get("uid") == uid for o in obj.get("metadata", {}).get("ownerReferences") or []):
        raise NameConflict(f"{obj.get('kind')} {obj['metadata']['name']} exists and does not belong to this "
                           f"TrainingJob (uid {uid}); waiting for it to go (an earlier run's objects are "
                           f"garbage-collected), or delete it or rename the TrainingJob")
    return obj


def _validation_message(exc: pydantic.ValidationError) -> str:
    def one(error: dict) -> str:
        message = error["msg"].removeprefix("Value error, ")
        if message.startswith("spec."):  # our CEL-twin messages already name the field
            return message
        return f"spec.{'.'.join(str(p) for p in error['loc'])}: {message}" if error["loc"] else message
    return "; ".join(one(e) for e in exc.errors())


# --- Running: wait for the Job --------------------------------------------------------------------

def job_outcome(job: Optional[dict]) -> Optional[bool]:
    """True/False once the Job has succeeded/failed (after its retries) and none of its pods is
    still running; None until then. Only the final conditions count: FailureTarget and
    SuccessCriteriaMet are set while pods may still be writing (a deadline's SIGTERM grace
    period, say), and a snapshot taken then would freeze half-written files."""
    if job is None:
        return False
    status = job.get("status", {})
    if status.get("active") or status.get("terminating"):
        return None
    for condition in status.get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") == "Complete":
            return True
        if condition.get("status") == "True" and condition.get("type") == "Failed":
            return False
    return None


def follow_job(ctx: Context, tj: dict) -> bool:
    meta, status = tj["metadata"], tj.get("status", {})
    job = ctx.kube.get(JOBS, meta["namespace"], status.get("jobName") or workload.job_name(tj))
    succeeded = job_outcome(job)
    if succeeded is None:
        return False
    outcome = "succeeded" if succeeded else _job_failure_message(job)
    if not tj["spec"].get("output", {}).get("enabled", True):
        if succeeded:
            _set_status(ctx, tj, "Succeeded", "Succeeded", f"Job {outcome}", ready=True, event="Normal",
                        completionTime=now_rfc3339(), jobSucceeded=True)
            release_inputs(ctx.kube, tj)
            return False
        return _fail(ctx, tj, "JobFailed", f"Job {outcome}")
    _set_status(ctx, tj, "Snapshotting", "Snapshotting", f"Job {outcome}; snapshotting the output",
                event="Normal", jobSucceeded=succeeded, snapshotStartTime=now_rfc3339())
    return True


def _job_failure_message(job: Optional[dict]) -> str:
    if job is None:
        return "was deleted before it finished"
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return f"failed: {condition.get('reason', '')} {condition.get('message', '')}".strip()
    return "failed"


# --- Snapshotting: scan the output, create Checkpoints ---------------------------------------------

def snapshot(ctx: Context, tj: dict) -> bool:
    meta, status = tj["metadata"], tj.get("status", {})
    namespace = meta["namespace"]
    pod_name = workload.snapshot_pod_name(tj)
    pod = ctx.kube.get(PODS, namespace, pod_name)
    if pod is None:
        ctx.kube.ensure(PODS, namespace, workload.build_snapshot_pod(tj, ctx.config))
        ctx.kube.patch_status(TRAINING_JOBS, namespace, meta["name"], {"snapshotPod": pod_name})
        return False
    try:
        _ensure_owned(tj, pod)
    except NameConflict as exc:  # an earlier run's pod that garbage collection is removing
        _set_status(ctx, tj, "Snapshotting", "NameConflict", str(exc), event="Warning")
        return False
    phase = pod.get("status", {}).get("phase")
    if phase == "Failed":
        return _snapshot_pod_failed(ctx, tj, pod)
    if phase != "Succeeded":
        return False
    try:
        scan = parse_scan_output(ctx.kube.read_log(namespace, pod_name))
    except ScanOutputError as exc:
        return _fail(ctx, tj, "SnapshotFailed", f"pod {pod_name}: {exc}")

    claim = workload.output_claim_name(tj)
    layout = tj["spec"].get("output", {}).get("layout", "auto")
    store = store_for(ctx.config)
    try:
        for manifest in scan.checkpoints:  # every checkpoint must have reached the store, committed
            location = store.snapshot_location(claim, manifest, layout, scan.uploads)
            if not store.is_committed(location):
                raise MissingUpload(f"{manifest.path!r} has no manifest in the store: the upload did not complete")
    except MissingUpload as exc:
        return _fail(ctx, tj, "SnapshotFailed", f"pod {pod_name}: {exc}")

    def location_of(manifest):
        return store.snapshot_location(claim, manifest, layout, scan.uploads)

    plan = plan_snapshot(tj, scan, ctx.kube.list(CHECKPOINTS, namespace), location_of, now_rfc3339())
    created = [_create_checkpoint(ctx, tj, planned) for planned in plan.checkpoints]
    if any(c is None for c in created):
        return False  # a name was taken meanwhile: plan again on the next pass
    # The Checkpoints own the data before any of them is Ready: deleting the job from here on
    # can no longer take the volume away from under them.
    _hand_over_output_claim(ctx, tj, claim, created)
    created = [_mark_ready(ctx, checkpoint, planned) for checkpoint, planned in zip(created, plan.checkpoints)]
    _report_snapshot(ctx, tj, plan, created)
    ctx.kube.delete(PODS, namespace, pod_name)

    names = [c["metadata"]["name"] for c in created]
    if status.get("snapshotStartTime"):
        metrics.SNAPSHOT_DURATION.labels(ctx.config.storage_type).observe(seconds_since(status["snapshotStartTime"]))
    metrics.TRANSFERRED_BYTES.labels("snapshot").inc(sum(c["status"].get("sizeBytes", 0) for c in created))
    summary = f"{len(names)} checkpoint(s): {', '.join(names)}" if names else "no checkpoints in the output"
    fields = {"outputCheckpoints": names, "outputCount": len(names), "completionTime": now_rfc3339()}
    if status.get("jobSucceeded"):
        _set_status(ctx, tj, "Succeeded", "Succeeded", f"Job succeeded; {summary}", ready=True, event="Normal", **fields)
    else:
        _set_status(ctx, tj, "Failed", "JobFailed", f"Job failed; kept {summary}", stalled=True, event="Warning",
                    **fields)
    release_inputs(ctx.kube, tj)
    return False


def _snapshot_pod_failed(ctx: Context, tj: dict, pod: dict) -> bool:
    meta = tj["metadata"]
    attempts = (tj.get("status", {}).get("snapshotAttempts") or 0) + 1
    try:
        log_tail = ctx.kube.read_log(meta["namespace"], pod["metadata"]["name"])[-500:]
    except Exception:  # noqa: BLE001 - the log is a courtesy for the message
        log_tail = ""
    if attempts >= MAX_SNAPSHOT_ATTEMPTS:
        return _fail(ctx, tj, "SnapshotFailed", f"snapshot pod failed {attempts} times; last log: {log_tail}")
    ctx.warn(tj, "SnapshotRetry", f"snapshot pod failed (attempt {attempts}); retrying: {log_tail}")
    ctx.kube.delete(PODS, meta["namespace"], pod["metadata"]["name"])
    ctx.kube.patch_status(TRAINING_JOBS, meta["namespace"], meta["name"], {"snapshotAttempts": attempts})
    return False


def _create_checkpoint(ctx: Context, tj: dict, planned) -> Optional[dict]:
    """Create one Checkpoint, or find the one an earlier pass created (None: the name is taken
    by an object that is not this job's)."""
    namespace = tj["metadata"]["namespace"]
    try:
        checkpoint = ctx.kube.create(CHECKPOINTS, namespace, planned.body)
        metrics.CHECKPOINTS_CREATED.inc()
        return checkpoint
    except Conflict:
        checkpoint = ctx.kube.get(CHECKPOINTS, namespace, planned.name)
        if checkpoint is None or not is_produced_by(checkpoint, tj["metadata"]["uid"], planned.directory):
            return None
        return checkpoint


def _mark_ready(ctx: Context, checkpoint: dict, planned) -> dict:
    if checkpoint.get("status", {}).get("phase") == "Ready":
        return checkpoint
    meta = checkpoint["metadata"]
    status = {**planned.status, "conditions": kstatus_conditions(  # keeps the planned Complete condition
        planned.status["conditions"], ready=True, reason="Ready",
        message=get_condition(planned.status["conditions"], "Ready")["message"],
        generation=meta.get("generation"), now=now_rfc3339()), "observedGeneration": meta.get("generation")}
    checkpoint = ctx.kube.patch_status(CHECKPOINTS, meta["namespace"], meta["name"], status)
    return checkpoint


def _report_snapshot(ctx: Context, tj: dict, plan, created: list[dict]) -> None:
    for skipped in plan.skipped:
        ctx.warn(tj, "Skipped", f"output entry {skipped.get('path')!r} skipped: {skipped.get('reason')}")
    if plan.dropped:
        ctx.info(tj, "NotKept", f"output.keep={tj['spec']['output'].get('keep')}: not kept as Checkpoints: "
                                f"{', '.join(plan.dropped)}")
    for checkpoint in created:
        ctx.info(checkpoint, "Created", f"snapshot of {tj['metadata']['name']} "
                                        f"{checkpoint['spec']['source']['trainingJob']['directory']!r}")


def _hand_over_output_claim(ctx: Context, tj: dict, claim: str, created: list[dict]) -> None:
    """Volume store: the Checkpoints own the output volume from now on, so Kubernetes deletes it
    with the last of them (and not with the job). s3 store: the data was uploaded; release it."""
    namespace = tj["metadata"]["namespace"]
    if not store_for(ctx.config).keeps_output_claim:
        ctx.kube.delete(PVCS, namespace, claim)
    elif created:
        owners = [workload.owner_reference(c, controller=False) for c in created]
        ctx.kube.patch(PVCS, namespace, claim, {"metadata": {"ownerReferences": owners}})


# --- deletion -------------------------------------------------------------------------------------

def on_delete(ctx: Context, body: dict) -> None:
    """The Job goes with the TrainingJob (owner references); the inputs are released now."""
    meta = body["metadata"]
    status = body.get("status", {})
    if status.get("jobName"):
        ctx.kube.delete(JOBS, meta["namespace"], status["jobName"])
    release_inputs(ctx.kube, body)
