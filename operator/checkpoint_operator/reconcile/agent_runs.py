"""One runner for every agent pod (snapshot, volume scan, import, upload, verify, pull): ensure
the pod, trust only the one this operator created, read its result, delete it.

`follow` is called on every reconcile of the owner; the pod's events wake the owner, so nothing
polls. Trust (issue 23 item 9): when it creates the pod it records the pod's UID in the owner's
status, in the same write as the status that says the pod started; a pod of the expected name
and owner but another UID (made by someone else, or by this operator just before a crash, before
it could record it) is deleted, never read. Its result is read bounded (protocol/channel.py:
the log's last lines, at most one result's size): a result too large, of a newer version or
refused by its model is a failure of that pod, recorded once by the caller. It never deletes a
pod before the caller has used the result: the caller calls `finish` once the result is
recorded (a crash in between reruns an idempotent pod).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar, Union

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointStatus
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint, ClusterCheckpointStatus
from checkpoint_operator.api.common import PodPhase
from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobStatus
from checkpoint_operator import metrics
from checkpoint_operator.logic import workers
from checkpoint_operator.kube import PODS, ApiError, Conflict
from checkpoint_operator.logic.agent_pods import PodFailure, PodProblem, last_error_line, pod_failure, pod_problem
from checkpoint_operator.logic.results import Wait
from checkpoint_operator.logic.status import StatusChange
from checkpoint_operator.protocol import channel
from checkpoint_operator.protocol.results import Report
from checkpoint_operator.reconcile import status_writer
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.status_writer import write_status

R = TypeVar("R", bound=Report)
Owner = Union[TrainingJob, Checkpoint, ClusterCheckpoint]
RETRY_SOON = 5.0  # seconds: a name held by a pod that is not ours (its end brings no event of ours)
FAILURE_LOG_BYTES = 64 * 1024  # what is read of a failed container's log for its last error line
# Results read and parsed at once, whatever the number of workers: each may be a 6 MiB line that
# parses into tens of MB, so this, not the tenants' outputs, bounds what results cost in memory.
RESULTS_READ_AT_ONCE = threading.BoundedSemaphore(2)
FAILURE_LOG_LINES = 20  # the agent ends a failure with one `error:` line; a tail, so that line is in it


@dataclass(frozen=True)
class AgentTask(Generic[R]):
    """One kind of agent pod of an owner."""

    what: str                    # its job in messages: "snapshot", "import", "scan", "upload", "verify", "pull"
    # The owner's status field that records the UID of the pod the operator created. None: the
    # caller records it elsewhere (follow's `pin`: a catalog entry's copy in a namespace).
    uid_field: Optional[str]
    result: tuple[type[R], ...]  # the result kinds it writes (empty: none is read)
    container: Optional[str] = None  # whose log holds the result (None: the pod's only container)


@dataclass(frozen=True)
class PodPin:
    """Where a pod's UID is recorded when not in its owner's status: the recorded UID (None: none
    yet), and how to record the UID of the pod just created."""

    recorded: Optional[str]
    record: Callable[[str], None]


@dataclass(frozen=True)
class Waiting:
    """The pod is not done: just created, still running (with what holds it, if anything), or
    its name is held by a pod that is not ours."""

    started: bool = False
    problem: Optional[PodProblem] = None
    phase: Optional[PodPhase] = None
    conflict: Optional[str] = None
    retry_after: Optional[float] = None  # a problem no event of ours ends (the pod was refused)


REFUSED_RETRY = 30.0  # seconds: a refused pod (Pod Security, a quota, an admission policy) is tried again


@dataclass(frozen=True)
class Finished(Generic[R]):
    result: Optional[R]  # None for a task that reads no result
    ended: str = ""  # when the pod's containers ended (RFC 3339; its creation when none says)


@dataclass(frozen=True)
class PodFailed:
    message: str
    refused: bool = False  # the agent refused the data: a new pod would refuse it again


Outcome = Union[Waiting, Finished[R], PodFailed]


def follow(ctx: Context, owner: Owner, body: dict[str, Any], task: AgentTask[R], started: Optional[StatusChange] = None,
           pin: Optional[PodPin] = None) -> Outcome[R]:
    """Where the owner's agent pod `body` is: created now (its UID recorded with `started` in the
    owner's `task.uid_field`, or by `pin`), waiting, failed, or finished with its result. A pod
    whose UID is not the recorded one (none recorded: any) is never read."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    owner_uid = owner.metadata.uid
    # As the cache knows it (its changes are events that wake the owner); unknown: created at once,
    # and read live only when that finds one (another's, or one the watch has not shown yet).
    pod = ctx.kube.cache.get("Pod", namespace, name)
    if pod is None:
        try:
            created = ctx.kube.create(PODS, namespace, body)
        except Conflict:
            pod = ctx.kube.get(PODS, namespace, name)
            if pod is None:  # gone again meanwhile: looked at next time
                return Waiting(conflict=f"pod {name} appeared while this operator was creating it; looking again")
        except ApiError as exc:
            if exc.status != 403:
                raise
            # Admission said no (Pod Security, a ResourceQuota, a policy): its words, and a retry later.
            return Waiting(problem=PodProblem("PodRefused", f"creating {task.what} pod {name} was refused: "
                                                            f"{exc.message}"), retry_after=REFUSED_RETRY)
        else:
            uid = created["metadata"]["uid"]
            change = started
            if pin is not None:
                pin.record(uid)
            elif task.uid_field is not None:
                model = TrainingJobStatus if isinstance(owner, TrainingJob) else \
                    ClusterCheckpointStatus if isinstance(owner, ClusterCheckpoint) else CheckpointStatus
                change = (started or StatusChange()).with_fields(model.model_validate({task.uid_field: uid}))
            if change is not None:
                _write(ctx, owner, change)
            return Waiting(started=True)
    meta = pod.get("metadata") or {}
    if not any(o.get("uid") == owner_uid for o in meta.get("ownerReferences") or []):
        return Waiting(conflict=f"pod {name} exists and does not belong to this object (uid {owner_uid}); waiting "
                                f"for it to go (an earlier object's pods are garbage-collected), or delete it")
    recorded = pin.recorded if pin is not None else getattr(owner.status, task.uid_field or "", None)
    if meta.get("uid") != recorded:
        # Not the pod this operator recorded creating: never read. Deleting it (only that UID)
        # brings an event; the next pass creates one of ours.
        if not meta.get("deletionTimestamp"):
            try:
                ctx.kube.delete(PODS, namespace, name, uid=meta.get("uid"))
            except Conflict:
                pass  # replaced meanwhile: looked at next time
        return Waiting(conflict=f"pod {name} (uid {meta.get('uid')}) is not the {task.what} pod this operator "
                                f"created (recorded uid {recorded}): deleted, its result unread; a new one follows")
    phase = PodPhase.of(pod)
    if phase == PodPhase.FAILED:
        failure = pod_failure(pod, task.what)
        return PodFailed(_failure_message(ctx, pod, failure), failure.agent_refused)
    if phase != PodPhase.SUCCEEDED:
        return Waiting(problem=pod_problem(pod), phase=phase)
    ended = workers.finished_at(pod) or str(meta.get("creationTimestamp") or "")
    if not task.result:
        return Finished(None, ended)
    known = ctx.agent_results.get((namespace, name))
    if known is not None and known[0] == meta.get("uid"):  # read at an earlier pass (its owner waits on something)
        return Finished(known[1], ended)
    try:
        result = read_result(ctx, pod, task.result, task.container)
    except (channel.ResultError, ApiError) as exc:
        return PodFailed(f"{task.what} pod {name}: {exc}")
    ctx.agent_results[(namespace, name)] = (meta.get("uid", ""), result)
    return Finished(result, ended)


def _write(ctx: Context, owner: Owner, change: StatusChange) -> None:
    if isinstance(owner, TrainingJob):
        write_status(ctx, owner, change)
    elif isinstance(owner, ClusterCheckpoint):
        write_status(ctx, owner, change)
    else:
        write_status(ctx, owner, change)


def read_result(ctx: Context, pod: dict[str, Any], kinds: tuple[type[R], ...], container: Optional[str] = None) -> R:
    """The agent's result in the last lines of the pod's log, read bounded; ResultError otherwise.
    When the limit cuts those lines short of a whole result, the last line alone is read again."""
    meta = pod["metadata"]
    where = f"the log of pod {meta['name']}" + (f" (container {container})" if container else "")

    def read(lines: int) -> str:
        return ctx.kube.read_log(meta["namespace"], meta["name"], container, tail_lines=lines,
                                 limit_bytes=channel.RESULT_READ_BYTES)
    with RESULTS_READ_AT_ONCE:
        text = read(channel.RESULT_TAIL_LINES)
        try:
            result = channel.find_result(text, kinds, limit_bytes=channel.RESULT_READ_BYTES, what=where)
        except channel.ResultError:
            if len(text.encode("utf-8", "replace")) < channel.RESULT_READ_BYTES:
                raise
            text = read(1)
            result = channel.find_result(text, kinds, limit_bytes=channel.RESULT_READ_BYTES, what=where)
        metrics.AGENT_RESULT_BYTES.labels(result.kind).observe(len(channel.encode(result).encode()))
    return result


def wait_for(waiting: Waiting, *, reason: Optional[str], message: str, current_reason: Optional[str],
             problem_prefix: str = "") -> Wait:
    """The Wait of an owner whose pod is not done: quiet once started or while `reason` is
    already its Ready reason; a problem that holds the pod, or a name held by another pod, named."""
    if waiting.conflict:
        return Wait("NameConflict", waiting.conflict, requeue_after=RETRY_SOON)
    if waiting.started:
        return Wait()
    if waiting.problem:
        text = f"{problem_prefix}: {waiting.problem.message}" if problem_prefix else waiting.problem.message
        return Wait(waiting.problem.reason, text, requeue_after=waiting.retry_after)
    if reason is None or current_reason == reason:
        return Wait()
    return Wait(reason, message, warning=False)


def _failure_message(ctx: Context, pod: dict[str, Any], failure: PodFailure) -> str:
    """The failure and the failed container's own last error line (an init container's, when
    that is the one that failed: the main container then never ran), from a bounded tail."""
    meta = pod["metadata"]
    try:
        log = ctx.kube.read_log(meta["namespace"], meta["name"], failure.container, tail_lines=FAILURE_LOG_LINES,
                                limit_bytes=FAILURE_LOG_BYTES)
    except ApiError:
        log = ""
    line = last_error_line(log)
    return f"{failure.message}: {line}" if line else failure.message


def finish(ctx: Context, body: dict[str, Any]) -> None:
    """Delete the pod once its result is recorded: what the pass staged is written first."""
    status_writer.commit_pass(ctx)
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    ctx.agent_results.pop(key, None)
    ctx.kube.delete(PODS, *key)
