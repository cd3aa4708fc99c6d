"""Requests a Ready Checkpoint serves: verify (re-read the data, record condition Verified) and
pull (volume store: a pod that holds the data for `kubectl ckpt pull`). logic/transfers.py has
the protocol; this module runs the pods and records the results through the status writer.

A result is recorded first, then the pod deleted, then the request dropped (only if it is still
the one served): a crash in between repeats the last step, never loses a request.
"""

from __future__ import annotations

from typing import Any, Optional

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointPhase
from checkpoint_operator.api.upload import PULL_REQUEST_ANNOTATION, VERIFY_REQUEST_ANNOTATION
from checkpoint_operator.reconcile import agent_runs
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile import status_writer
from checkpoint_operator.reconcile.status_writer import write_status
from checkpoint_operator.kube import CHECKPOINTS, PODS, ApiError
from checkpoint_operator.logic import transfers
from checkpoint_operator.logic.status import ConditionChange, StatusChange
from checkpoint_operator.storage import store_for
from checkpoint_operator.protocol.results import TransferReport

NOT_OURS_RETRY = 5.0
# Their UIDs recorded before anything of theirs is used (a pull pod's result is its end).
VERIFY = agent_runs.AgentTask("verify", "verifyPodUid", (TransferReport,))
PULL: agent_runs.AgentTask[TransferReport] = agent_runs.AgentTask("pull", "pullPodUid", ())


def serve(ctx: Context, checkpoint: Checkpoint) -> Optional[float]:
    """Serve the verify and pull requests of a Ready Checkpoint; seconds until a look again, or None."""
    if checkpoint.phase != CheckpointPhase.READY or checkpoint.metadata.deleting:
        return None
    requeue = [serve_verify(ctx, checkpoint), serve_pull(ctx, checkpoint)]
    return min((r for r in requeue if r is not None), default=None)


def serve_verify(ctx: Context, checkpoint: Checkpoint) -> Optional[float]:
    value = checkpoint.metadata.annotation(VERIFY_REQUEST_ANNOTATION)
    if not value:
        return None
    location = checkpoint.status.location
    where = transfers.describe_location(location)
    env = store_for(ctx.config).agent_env() if location is not None and location.s3 is not None else []
    pod = transfers.build_verify_pod(checkpoint, ctx.config, value, env)
    if clear_stale_pod(ctx, pod, value):
        return None
    run = agent_runs.follow(ctx, checkpoint, pod, VERIFY,
                            StatusChange(conditions=(transfers.verifying_condition(where, value),)))
    if isinstance(run, agent_runs.Waiting):
        if run.conflict:
            return NOT_OURS_RETRY
        if run.problem:
            record_condition(ctx, checkpoint, transfers.verify_error_condition(run.problem.message))
        return run.retry_after
    if isinstance(run, agent_runs.PodFailed):
        condition = transfers.verify_error_condition(f"could not verify: {run.message}")
    else:
        assert run.result is not None
        condition = transfers.verified_condition(run.result, where)
    # Recorded (written now: the pass's one write) before the pod and the request go.
    updated = status_writer.commit(ctx, record_condition(ctx, checkpoint, condition))
    if condition.status == "True":
        ctx.info(updated, "Verified", condition.message)
    else:
        ctx.warn(updated, "VerificationFailed" if condition.status == "False" else "VerifyError", condition.message)
    agent_runs.finish(ctx, pod)
    drop_request(ctx, updated, VERIFY_REQUEST_ANNOTATION, value)
    return None


def serve_pull(ctx: Context, checkpoint: Checkpoint) -> Optional[float]:
    value = checkpoint.metadata.annotation(PULL_REQUEST_ANNOTATION)
    location = checkpoint.status.location
    if not value:
        return None
    # the s3 store: the plugin downloads from the store itself
    if location is None or not location.on_volumes:
        ctx.warn(checkpoint, "PullRefused", f"{PULL_REQUEST_ANNOTATION}: {checkpoint.metadata.name} is in object "
                                            "storage; kubectl ckpt pull downloads it from there (no pod needed)")
        drop_request(ctx, checkpoint, PULL_REQUEST_ANNOTATION, value)
        return None
    pod = transfers.build_pull_pod(checkpoint, ctx.config, value)
    if clear_stale_pod(ctx, pod, value):
        return None
    run = agent_runs.follow(ctx, checkpoint, pod, PULL)
    if isinstance(run, agent_runs.Waiting):  # refused: the plugin's wait names the pod that never came
        return NOT_OURS_RETRY if run.conflict else run.retry_after
    if isinstance(run, (agent_runs.Finished, agent_runs.PodFailed)):  # the pulls are over (or it gave up)
        agent_runs.finish(ctx, pod)
        drop_request(ctx, checkpoint, PULL_REQUEST_ANNOTATION, value)
    return None


def clear_stale_pod(ctx: Context, pod: dict[str, Any], value: str) -> bool:
    """A pod of this name that serves another (older) request is deleted first; its deletion
    wakes the Checkpoint again. True when one was found."""
    meta = pod["metadata"]
    existing = ctx.kube.get(PODS, meta["namespace"], meta["name"])
    if existing is None or transfers.served_request(existing) in (None, value):
        return False
    if not (existing.get("metadata") or {}).get("deletionTimestamp"):
        ctx.kube.delete(PODS, meta["namespace"], meta["name"])
    return True


def record_condition(ctx: Context, checkpoint: Checkpoint, condition: ConditionChange) -> Checkpoint:
    return write_status(ctx, checkpoint, StatusChange(conditions=(condition,)))


def drop_request(ctx: Context, checkpoint: Checkpoint, key: str, value: str) -> bool:
    """Remove the annotation if it still holds `value` (a newer request stays); False if not."""
    meta = checkpoint.metadata
    path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
    try:
        ctx.kube.patch_json(CHECKPOINTS, meta.namespace, meta.name, [{"op": "test", "path": path, "value": value},
                                                                     {"op": "remove", "path": path}])
    except ApiError as exc:
        if exc.status in (404, 409, 422):
            return False
        raise
    return True
