"""Checkpoint: adopt or import the data, keep usedBy honest, refuse deletion while in use.

Checkpoints made by a snapshot arrive Ready (the TrainingJob handler writes their status);
the ones users create point at a volume path (scanned in place) or at s3/http (imported).
"""

from __future__ import annotations

from typing import Optional

import kopf

from checkpoint_operator.handlers.context import Context
from checkpoint_operator.handlers.status import write_status
from checkpoint_operator.handlers.usage import unregister_users
from checkpoint_operator.kube import CHECKPOINTS, PODS, PVCS, TRAINING_JOBS, ApiError, Conflict
from checkpoint_operator.logic import workload
from checkpoint_operator.logic.conditions import now_rfc3339
from checkpoint_operator.logic.inputs import is_deleting, is_live_user
from checkpoint_operator.logic.snapshot import ScanOutputError, ScanResult, parse_scan_output, ready_status
from checkpoint_operator import metrics
from checkpoint_operator.storage import store_for


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    checkpoint = ctx.kube.get(CHECKPOINTS, namespace, name)
    if checkpoint is None or is_deleting(checkpoint):
        return
    status = checkpoint.get("status", {})
    if status.get("usedBy"):
        prune_finished_users(ctx, checkpoint)
    if status.get("phase") in ("Ready", "Failed"):
        return
    source = checkpoint["spec"].get("source", {})
    if "trainingJob" in source:
        wait_for_snapshot(ctx, checkpoint, source["trainingJob"])
    elif "volume" in source:
        adopt_volume(ctx, checkpoint)
    elif "s3" in source or "http" in source:
        from checkpoint_operator.handlers.imports import import_checkpoint
        import_checkpoint(ctx, checkpoint)


def _set_status(ctx: Context, obj: dict, phase: str, reason: str, message: str, *, ready: bool = False,
                stalled: bool = False, event: Optional[str] = None, **fields) -> dict:
    return write_status(ctx, obj, phase, reason, message, ready=ready, stalled=stalled, event=event,
                        reconciling=phase in ("Pending", "Importing"), **fields)


def set_ready(ctx: Context, checkpoint: dict, manifest, location: dict, owned: bool) -> dict:
    status = ready_status(manifest, location, owned=owned, now=now_rfc3339(),
                          conditions=checkpoint.get("status", {}).get("conditions"),
                          generation=checkpoint["metadata"].get("generation") or 1)
    meta = checkpoint["metadata"]
    updated = ctx.kube.patch_status(CHECKPOINTS, meta["namespace"], meta["name"], status)
    ctx.info(updated, "Ready", status["message"] + f", digest {manifest.digest}")
    return updated


def prune_finished_users(ctx: Context, checkpoint: dict) -> None:
    """Drop usedBy entries of jobs that are gone or finished (normally they remove themselves).

    Only entries proven dead are removed: a job missing from the list may have registered
    after it was taken, so it is looked up by name before it goes."""
    namespace = checkpoint["metadata"]["namespace"]
    jobs = {j["metadata"]["uid"]: j for j in ctx.kube.list(TRAINING_JOBS, namespace)}

    def is_dead(user: dict) -> bool:
        uid = user.get("uid")
        job = jobs.get(uid) if uid in jobs else ctx.kube.get(TRAINING_JOBS, namespace, user.get("name", ""))
        return not is_live_user(job, uid)
    unregister_users(ctx.kube, namespace, checkpoint["metadata"]["name"], is_dead)


def wait_for_snapshot(ctx: Context, checkpoint: dict, source: dict) -> None:
    """Snapshot Checkpoints are made Ready by their TrainingJob (only it writes their status
    meanwhile, so nothing here can overwrite its Ready); the ones whose job is gone (or that a
    user wrote by hand) fail, as nothing will ever write them."""
    job = ctx.kube.get(TRAINING_JOBS, checkpoint["metadata"]["namespace"], source.get("name", ""))
    if job is None or job["metadata"].get("uid") != source.get("uid"):
        _set_status(ctx, checkpoint, "Failed", "ProducerGone",
                    f"spec.source.trainingJob: TrainingJob {source.get('name')} (uid {source.get('uid')}) does not "
                    "exist, so nothing will write this checkpoint; snapshot Checkpoints are created by the operator",
                    stalled=True, event="Warning")


# --- source.volume: scan the data in place -----------------------------------------------------

def adopt_volume(ctx: Context, checkpoint: dict) -> None:
    meta, source = checkpoint["metadata"], checkpoint["spec"]["source"]["volume"]
    where = f"{source['claimName']}:{source.get('path', '/')}"
    claim = ctx.kube.get(PVCS, meta["namespace"], source["claimName"])
    if claim is None or claim.get("status", {}).get("phase") != "Bound":
        state = "does not exist" if claim is None else f"is not Bound (phase {claim.get('status', {}).get('phase')})"
        _set_status(ctx, checkpoint, "Pending", "WaitingForVolume",
                    f"spec.source.volume.claimName: PersistentVolumeClaim {source['claimName']} {state}",
                    event="Warning")
        return
    scan = run_single_scan(ctx, checkpoint, workload.build_volume_scan_pod(checkpoint, ctx.config),
                           phase="Pending", reason="Scanning", failure_reason="ScanFailed", describe=where)
    if scan is not None:
        path = source.get("path", "/").strip("/") or "."
        set_ready(ctx, checkpoint, scan.checkpoints[0],
                  {"volume": {"claimName": source["claimName"], "path": path}}, owned=False)


def run_single_scan(ctx: Context, checkpoint: dict, pod_body: dict, *, phase: str, reason: str,
                    failure_reason: str, describe: str) -> Optional[ScanResult]:
    """Run an agent pod whose log ends with the scan of one checkpoint (adoption, import).

    Returns the scan once the pod has succeeded; None while it runs (phase/reason say so) or
    when it failed (the Checkpoint is then Failed, with the pod's last log lines)."""
    namespace, name = checkpoint["metadata"]["namespace"], pod_body["metadata"]["name"]
    pod = ctx.kube.get(PODS, namespace, name)
    if pod is None:
        ctx.kube.ensure(PODS, namespace, pod_body)
        if checkpoint.get("status", {}).get("phase") != phase:
            _set_status(ctx, checkpoint, phase, reason, f"{reason.lower()} {describe}", event="Normal")
        return None
    pod_phase = pod.get("status", {}).get("phase")
    if pod_phase not in ("Succeeded", "Failed"):
        return None
    try:
        log = ctx.kube.read_log(namespace, name)
        if pod_phase == "Failed":
            raise ScanOutputError(f"pod {name} failed: {log[-800:].strip()}")
        scan = parse_scan_output(log)
        if len(scan.checkpoints) != 1:
            raise ScanOutputError("no files found")
        return scan
    except (ScanOutputError, ApiError) as exc:
        _set_status(ctx, checkpoint, "Failed", failure_reason, f"{describe}: {exc}", stalled=True, event="Warning")
        return None
    finally:
        ctx.kube.delete(PODS, namespace, name)


# --- deletion: the in-use protection finalizer ---------------------------------------------------

def guard_deletion(ctx: Context, body: dict, retry_delay: float) -> None:
    """Runs while the Checkpoint has a deletionTimestamp; kopf removes the finalizer when it returns."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    checkpoint = ctx.kube.get(CHECKPOINTS, namespace, name)
    if checkpoint is None:
        return
    jobs = {j["metadata"]["uid"]: j for j in ctx.kube.list(TRAINING_JOBS, namespace)}
    users = [u for u in checkpoint.get("status", {}).get("usedBy") or []
             if is_live_user(jobs.get(u.get("uid")), u.get("uid"))]
    if users:
        names = ", ".join(u["name"] for u in users)
        message = f"deletion waits: in use by TrainingJob(s) {names}; it completes by itself when they finish"
        already_blocked = any(c.get("reason") == "DeletionBlocked"
                              for c in checkpoint.get("status", {}).get("conditions") or [])
        _set_status(ctx, checkpoint, checkpoint.get("status", {}).get("phase") or "Pending", "DeletionBlocked",
                    message, ready=checkpoint.get("status", {}).get("phase") == "Ready", event="Warning")
        if not already_blocked:  # one deletion, however many times it is checked
            metrics.BLOCKED_DELETIONS.inc()
        raise kopf.TemporaryError(message, delay=retry_delay)
    # A conditional write proves that no job registered since we read: a job that reads after
    # this sees the deletionTimestamp and refuses to start on this checkpoint.
    try:
        ctx.kube.patch_status(CHECKPOINTS, namespace, name, {"usedBy": [], "usedByCount": 0},
                          resource_version=checkpoint["metadata"]["resourceVersion"])
    except Conflict:
        raise kopf.TemporaryError("the Checkpoint changed while checking its users; checking again", delay=0.1)
    delete_owned_data(ctx, checkpoint)


def delete_owned_data(ctx: Context, checkpoint: dict) -> None:
    """Only data the operator owns (snapshots, imports) is deleted, never data it points to."""
    deleted = store_for(ctx.config).delete_owned_data(checkpoint.get("status", {}))
    if deleted:
        ctx.info(checkpoint, "DataDeleted", f"deleted {deleted}")
