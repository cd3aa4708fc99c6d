"""A TrainingJob's worker pods as the operator's index keeps them, and what a group of them says
(pure functions on pod bodies: which attempt a pod belongs to, whether every worker has stopped,
which worker failed first)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from checkpoint_operator.api.common import PodPhase
from checkpoint_operator.logic.agent_pods import PodProblem, pod_failure, pod_problem
from checkpoint_operator.logic.node_cache import FillReport, read_fill_reports

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
WORKER_INDEX_LABEL = "ckpt.dev/worker-index"  # logic/workload.py sets it on a volume-per-worker pod
ATTEMPT_LABEL = "ckpt.dev/restart-attempt"             # the operator's group restarts (engine Job)
JOBSET_ATTEMPT_LABEL = "jobset.sigs.k8s.io/restart-attempt"  # JobSet's restarts (engine JobSet)


def attempt_name(attempt: int) -> str:
    """How every message names the attempt of index `attempt` (the attempt labels', status.workerFailure.attempt's
    and status.resume.attempt's: 0 for the first run, then one per group restart, and with a volume per worker
    one per preemption too): counted from 1, as people count runs. `attempt 2` is the run after one restart."""
    return f"attempt {attempt + 1}"


@dataclass(frozen=True, slots=True)
class WorkerPod:
    name: str
    phase: PodPhase
    problem: Optional[PodProblem] = None
    index: Optional[int] = None         # the completion index (Indexed Jobs)
    attempt: Optional[int] = None       # the group's restart attempt the pod belongs to
    failure: Optional[str] = None       # why a Failed pod failed (exit code, OOMKilled, evicted, ...)
    finished_at: str = ""               # when its last container ended (RFC 3339), for a failed pod
    deleting: bool = False              # deleted (stopped by its controller, or by someone)
    controller_uid: Optional[str] = None  # the object that controls it (its Job): whether it is trusted
    uid: str = ""
    cache_fills: tuple[FillReport, ...] = ()  # what its node-cache fills reported (logic/node_cache.py)
    scheduled_at: str = ""              # when it was bound to a node (RFC 3339), else created; "" unknown

    @property
    def is_live(self) -> bool:
        """Running, or still to run: Pending, or a deleted pod whose containers have not stopped yet."""
        return self.phase.is_live


def _int(value: object) -> Optional[int]:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def finished_at(body: Mapping[str, Any]) -> str:
    """When the pod's last container ended (RFC 3339), or "" when none has."""
    return _finished_at(body.get("status") or {})


def _finished_at(status: Mapping[str, Any]) -> str:
    times = [((c.get("state") or {}).get("terminated") or {}).get("finishedAt") or ""
             for kind in ("initContainerStatuses", "containerStatuses") for c in status.get(kind) or []]
    return max(times, default="")


def worker_pod(body: Mapping[str, Any]) -> WorkerPod:
    meta, status = body.get("metadata", {}), body.get("status") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    phase = PodPhase.of(dict(body))
    attempt = labels.get(ATTEMPT_LABEL, labels.get(JOBSET_ATTEMPT_LABEL))
    # A worker with its own volume is its own one-pod Job (completion index 0): its label says which.
    index = _int(labels.get(WORKER_INDEX_LABEL, annotations.get(COMPLETION_INDEX, labels.get(COMPLETION_INDEX))))
    failed = phase == PodPhase.FAILED
    what = f"worker {index}" if index is not None else "worker"
    return WorkerPod(name=meta.get("name", ""), phase=phase, problem=pod_problem(dict(body)), index=index,
                     attempt=_int(attempt) if attempt is not None else None,
                     failure=pod_failure(dict(body), what).message if failed else None,
                     finished_at=_finished_at(status) if failed else "",
                     deleting=bool(meta.get("deletionTimestamp")), controller_uid=controller_uid(body),
                     uid=meta.get("uid", ""), cache_fills=tuple(read_fill_reports(body)),
                     scheduled_at=_scheduled_at(status) or str(meta.get("creationTimestamp") or ""))


def wake_summary(body: Mapping[str, Any]) -> tuple[WorkerPod, str]:
    """What a TrainingJob's reconcile reads of one of its pods (a worker, or its snapshot, resume
    or cache-fill pod): its phase, problem, failure, deletion, controller, UID, fills reported
    and when it was scheduled (WorkerPod), and its node. An event of the pod that changes none
    of it (a kubelet's status update inside one phase) wakes no reconcile of its job."""
    return worker_pod(body), str((body.get("spec") or {}).get("nodeName") or "")


def _scheduled_at(status: Mapping[str, Any]) -> str:
    """When the pod's PodScheduled condition became True (RFC 3339), or ""."""
    for condition in status.get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == "PodScheduled" and condition.get("status") == "True":
            return str(condition.get("lastTransitionTime") or "")
    return ""


def controller_uid(body: Mapping[str, Any]) -> Optional[str]:
    """The UID of the object that controls this one (its controller ownerReference), or None."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            uid = ref.get("uid")
            return uid if isinstance(uid, str) else None
    return None


def of_attempt(pods: Iterable[WorkerPod], attempt: int) -> list[WorkerPod]:
    """The pods of one attempt (a pod without the label belongs to the first)."""
    return [p for p in pods if (p.attempt or 0) == attempt]


def live(pods: Iterable[WorkerPod]) -> list[WorkerPod]:
    return [p for p in pods if p.is_live]


def first_failure(pods: Iterable[WorkerPod], attempt: int) -> Optional[WorkerPod]:
    """The worker of `attempt` that failed first. Those that failed on their own come before those
    that were deleted (the group stops the others when one fails: their exit is a consequence),
    then the earliest end, then the lowest index."""
    failed = [p for p in of_attempt(pods, attempt) if p.phase == PodPhase.FAILED]
    if not failed:
        return None
    return min(failed, key=lambda p: (p.deleting, p.finished_at or "~", p.index if p.index is not None else 1 << 30,
                                      p.name))


def describe(pod: WorkerPod) -> str:
    """`worker 1 pod x-1-abcde: container trainer failed (Error, exit code 1)`."""
    return pod.failure or f"worker pod {pod.name} failed"
