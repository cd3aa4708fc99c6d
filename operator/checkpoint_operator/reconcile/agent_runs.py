"""One runner for every agent pod (snapshot, volume scan, import): ensure the pod, read how it
is doing, read its result, delete it.

`run_agent_pod` is called on every reconcile of the owner; the pod's events wake the owner,
so nothing polls. It never deletes a pod before the caller has used the result: the caller
calls `finish` once the result is recorded (a crash in between reruns an idempotent pod).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar, Union

from checkpoint_operator.api.common import PodPhase
from checkpoint_operator.reconcile import status_writer
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.kube import PODS, ApiError, Conflict
from checkpoint_operator.logic.agent_pods import PodProblem, last_error_line, pod_failure, pod_problem
from checkpoint_operator.logic.snapshot import ScanOutputError


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class Running:
    problem: Optional[PodProblem] = None
    phase: Optional[PodPhase] = None
    retry_after: Optional[float] = None  # a problem no event of ours ends (the pod was refused)


REFUSED_RETRY = 30.0  # seconds: a refused pod (Pod Security, a quota, an admission policy) is tried again


@dataclass(frozen=True)
class NotOurs:
    message: str


R = TypeVar("R")  # what a pod's `parse` makes of its log


@dataclass(frozen=True)
class Finished(Generic[R]):
    scan: R


@dataclass(frozen=True)
class PodFailed:
    message: str


PodRun = Union[Started, Running, NotOurs, Finished[R], PodFailed]


def run_agent_pod(ctx: Context, owner_uid: str, body: dict[str, Any], what: str,
                  parse: Callable[[str], R]) -> PodRun[R]:
    """`what` names the pod's job in messages ("snapshot", "import", "scan"); `parse` reads the
    result from the log of a pod that succeeded (logic/snapshot.py parse_scan_output for a scan;
    a ValueError: the pod failed)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    # As the cache knows it (its changes are events that wake the owner); unknown: created, or, if it
    # exists already (a 409), read live.
    pod = ctx.kube.cache.get("Pod", namespace, name)
    if pod is None:
        try:
            ctx.kube.create(PODS, namespace, body)
            return Started()
        except Conflict:
            pod = ctx.kube.get(PODS, namespace, name)
        except ApiError as exc:
            if exc.status != 403:
                raise
            # Admission said no (Pod Security, a ResourceQuota, a policy): its words, and a retry later.
            return Running(PodProblem("PodRefused", f"creating {what} pod {name} was refused: {exc.message}"),
                           retry_after=REFUSED_RETRY)
        if pod is None:
            return Running()  # gone between the two: created at the next pass
    if not any(o.get("uid") == owner_uid for o in pod.get("metadata", {}).get("ownerReferences") or []):
        return NotOurs(f"pod {name} exists and does not belong to this object (uid {owner_uid}); waiting for it "
                       f"to go (an earlier object's pods are garbage-collected), or delete it")
    phase = PodPhase.of(pod)
    if phase == PodPhase.FAILED:
        return PodFailed(_failure_message(ctx, pod, what))
    if phase != PodPhase.SUCCEEDED:
        return Running(pod_problem(pod), phase)
    uid = pod["metadata"].get("uid", "")
    known = ctx.agent_results.get((namespace, name))
    if known is not None and known[0] == uid:  # read at an earlier pass of the owner (it waits on something)
        return Finished(known[1])
    try:
        result = parse(ctx.kube.read_log(namespace, name))
    except (ScanOutputError, ApiError, ValueError) as exc:
        return PodFailed(f"{what} pod {name}: {exc}")
    ctx.agent_results[(namespace, name)] = (uid, result)
    return Finished(result)


def _failure_message(ctx: Context, pod: dict[str, Any], what: str) -> str:
    """The failure and the failed container's own last error line (an init container's, when
    that is the one that failed: the main container then never ran)."""
    failure = pod_failure(pod, what)
    meta = pod["metadata"]
    try:
        log = ctx.kube.read_log(meta["namespace"], meta["name"], failure.container)
    except ApiError:
        log = ""
    line = last_error_line(log)
    return f"{failure.message}: {line}" if line else failure.message


def finish(ctx: Context, body: dict[str, Any]) -> None:
    """Delete the pod once its result is recorded: what the pass staged is written first."""
    status_writer.commit_pass(ctx)
    ctx.agent_results.pop((body["metadata"]["namespace"], body["metadata"]["name"]), None)
    ctx.kube.delete(PODS, body["metadata"]["namespace"], body["metadata"]["name"])
