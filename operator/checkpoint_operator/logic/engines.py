"""What runs a TrainingJob's pods: a batch/v1 Job or a JobSet, behind one interface (pure).

`engine_of(tj)` gives an `Engine`: `build` makes the workload object from the injected pod
template, `read` turns the object the API returns into a `WorkloadState`, so that the reconcile
(reconcile/trainingjob.py) decides once for both. What differs:

- **Job** (`spec.engine: Job`, the default). One pod: a plain Job whose own `backoffLimit` retries
  the pod. Several (`replicas > 1`): an Indexed Job with `backoffLimit: 0`, so that the first
  worker that fails fails the attempt and the Job controller stops the others (a worker left
  alone would hang in a collective until a timeout); the operator then restarts the group itself,
  as JobSet does: it deletes that Job (every worker has stopped by then) and creates it again under
  the same name with the next `ckpt.dev/restart-attempt`, up to `spec.backoffLimit` restarts (6 when
  unset, the Job's default). The pods carry the attempt too, so a pod of an earlier attempt is
  never taken for one of this attempt.
- **JobSet** (`spec.engine: JobSet`, jobset.x-k8s.io/v1alpha2). One replicated job `node` of one
  Indexed Job with `backoffLimit: 0`; JobSet restarts the group (`failurePolicy.maxRestarts` =
  backoffLimit, `restartStrategy: BlockingRecreate`: every child Job of an attempt is gone before
  the next starts; a child Job that exceeds its deadline fails the whole set instead),
  `successPolicy: All`, DNS hostnames on (JobSet makes the headless Service, named like the JobSet)
  and the coordinator (worker 0) named in the pods' labels. Its `status.restarts` is the attempt.
  With a volume per worker the operator restarts the group instead (`maxRestarts: 0`, the attempt
  label, the failed JobSet deleted and the next attempt's created, as for Job), so that each
  attempt starts from the latest checkpoint complete over every worker's volume (logic/group_resume.py).

Either is created suspended when the TrainingJob is queued in Kueue (logic/kueue.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobPhase
from checkpoint_operator.logic import kueue, rendezvous
from checkpoint_operator.logic.workers import ATTEMPT_LABEL

DEFAULT_BACKOFF_LIMIT = 6  # the Job API's default, also the group's restarts when spec.backoffLimit is unset
JOBSET_API_VERSION = "jobset.x-k8s.io/v1alpha2"
DEADLINE_EXCEEDED = "DeadlineExceeded"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"  # JobSet puts it on its child Jobs (and their pods)


@dataclass(frozen=True)
class WorkloadState:
    """What a Job or JobSet says about the workers it runs."""

    kind: str                     # Job | JobSet
    name: str
    attempt: int                  # the group's restart attempt it runs (0: the first run)
    suspended: bool               # spec.suspend (Kueue has not admitted it, or preempted it), or its
                                  # controller has not resumed it yet (its Suspended condition still True)
    outcome: Optional[bool]       # True: every worker succeeded; False: failed for good; None: not yet
    stopped: bool                 # by its own counts no pod of it runs or terminates (JobSet: not counted)
    failure: str = ""             # its Failed condition: "<reason>: <message>"
    deadline_exceeded: bool = False
    deleting: bool = False
    # The lastTransitionTime of its Suspended condition (the Job and JobSet controllers set it True on
    # a suspension, False on the resume after it): a preemption undone before the operator looked
    # leaves this behind (logic/trainingjob_flow.py suspension_change counts it once).
    suspend_transition: Optional[str] = None


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []
            if c.get("status") == "True"}


def _suspension(obj: dict[str, Any]) -> tuple[bool, Optional[str]]:
    """Whether the workload is suspended (spec.suspend, or the Suspended condition its controller has
    not turned False yet), and the Suspended condition's lastTransitionTime (None: never suspended)."""
    condition = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Suspended"),
                     None)
    suspended = bool((obj.get("spec") or {}).get("suspend")) or bool(condition and condition.get("status") == "True")
    when = condition.get("lastTransitionTime") if condition else None
    return suspended, str(when)[:64] if when else None  # a timestamp: a longer one is not one


def _failure(condition: Optional[dict[str, Any]]) -> str:
    if not condition:
        return ""
    return f"{condition.get('reason', '')}: {condition.get('message', '')}".strip(": ")


def _int(value: object, default: int = 0) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def jobset_child_job_name(jobset: str, replicated_job: str, index: int) -> str:
    """The name the JobSet controller gives the `index`-th Job of a replicated job (its GenJobName:
    `<jobset>-<replicatedJob>-<jobIndex>`)."""
    return f"{jobset}-{replicated_job}-{index}"


class Engine(Protocol):
    kind: str
    api_version: str

    def build(self, tj: TrainingJob, template: dict[str, Any], meta: dict[str, Any], attempt: int,
              deadline: Optional[int], per_worker: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]: ...

    def read(self, obj: dict[str, Any]) -> WorkloadState: ...

    def max_restarts(self, tj: TrainingJob) -> int: ...

    def pod_job_names(self, obj: dict[str, Any]) -> list[str]:
        """The Jobs that create the workload `obj`'s pods (whose FailedCreate events say why they
        are refused), worker 0's first."""
        ...


def max_restarts(tj: TrainingJob) -> int:
    return DEFAULT_BACKOFF_LIMIT if tj.spec.backoffLimit is None else tj.spec.backoffLimit


def operator_restarts(tj: TrainingJob) -> bool:
    """The operator restarts the group (engine Job, several pods; or a JobSet with a volume per worker,
    whose restart first copies the latest checkpoint into every worker's volume: logic/group_resume.py);
    else the Job retries its one pod, or JobSet restarts the group."""
    if tj.spec.engine == "JobSet":
        return resumes_parts(tj)
    return tj.spec.replicas > 1


def resumes_parts(tj: TrainingJob) -> bool:
    """A group with a volume per worker (output.volumePerWorker, engine JobSet): between two attempts the
    operator runs `agent resume-parts` over every worker's volume, so it restarts the group itself."""
    return tj.spec.engine == "JobSet" and tj.output_enabled and bool(tj.spec.output.volumePerWorker)


def _suspend(tj: TrainingJob) -> bool:
    """Created suspended: queued in Kueue (it admits it), or the next attempt of a job whose workload
    its user suspended (spec.suspend, no Kueue: a group with a volume per worker is made again after the
    resume step, and stays suspended until its user resumes it, as the one it replaces was)."""
    return kueue.queue_name(tj.metadata.labels) is not None or tj.phase == TrainingJobPhase.QUEUED


class JobEngine:
    kind = "Job"
    api_version = "batch/v1"

    def build(self, tj: TrainingJob, template: dict[str, Any], meta: dict[str, Any], attempt: int,
              deadline: Optional[int], per_worker: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
        if per_worker is not None:
            raise ValueError("a volume per worker needs engine JobSet (the CRD refuses it with engine Job)")
        spec = tj.spec
        job_spec: dict[str, Any] = {"completions": spec.replicas, "parallelism": spec.replicas, "template": template}
        if spec.replicas > 1:
            job_spec["completionMode"] = "Indexed"
            job_spec["backoffLimit"] = 0  # the first failure ends the attempt; the operator restarts the group
        elif spec.backoffLimit is not None:
            job_spec["backoffLimit"] = spec.backoffLimit
        if deadline is not None:
            job_spec["activeDeadlineSeconds"] = deadline
        if _suspend(tj):
            job_spec["suspend"] = True
        meta = copy.deepcopy(meta)
        if spec.replicas > 1:
            meta["labels"][ATTEMPT_LABEL] = str(attempt)
            template.setdefault("metadata", {}).setdefault("labels", {})[ATTEMPT_LABEL] = str(attempt)
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": meta, "spec": job_spec}

    def read(self, obj: dict[str, Any]) -> WorkloadState:
        """Only the final conditions count, once no pod runs or terminates: FailureTarget and
        SuccessCriteriaMet are set while pods may still be writing (a deadline's SIGTERM grace
        period, say), and a snapshot taken then would freeze half-written files."""
        meta, status = obj.get("metadata", {}), obj.get("status") or {}
        conditions = _conditions(obj)
        stopped = not status.get("active") and not status.get("terminating")
        outcome = None
        if stopped and "Complete" in conditions:
            outcome = True
        elif stopped and "Failed" in conditions:
            outcome = False
        failed = conditions.get("Failed")
        suspended, transition = _suspension(obj)
        return WorkloadState(kind=self.kind, name=meta.get("name", ""),
                             attempt=_int((meta.get("labels") or {}).get(ATTEMPT_LABEL)),
                             suspended=suspended, suspend_transition=transition, outcome=outcome, stopped=stopped,
                             failure=_failure(failed),
                             deadline_exceeded=bool(failed and failed.get("reason") == DEADLINE_EXCEEDED),
                             deleting=bool(meta.get("deletionTimestamp")))

    def max_restarts(self, tj: TrainingJob) -> int:
        return max_restarts(tj) if operator_restarts(tj) else 0

    def pod_job_names(self, obj: dict[str, Any]) -> list[str]:
        return [str((obj.get("metadata") or {}).get("name", ""))]


class JobSetEngine:
    kind = "JobSet"
    api_version = JOBSET_API_VERSION

    def build(self, tj: TrainingJob, template: dict[str, Any], meta: dict[str, Any], attempt: int,
              deadline: Optional[int], per_worker: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
        """`per_worker`: each worker's own pod template (its own volume): one replicated job each,
        `node-<i>`, as JobSet's per-job volume claims do (a template is shared by a job's pods)."""
        spec = tj.spec

        def job_spec(pods: int, pod_template: dict[str, Any]) -> dict[str, Any]:
            built: dict[str, Any] = {"completions": pods, "parallelism": pods, "completionMode": "Indexed",
                                     "backoffLimit": 0, "template": pod_template}
            if deadline is not None:
                built["activeDeadlineSeconds"] = deadline
            return built

        labels = dict(meta["labels"])
        meta = copy.deepcopy(meta)
        if operator_restarts(tj):  # the attempt on the JobSet and every pod, as JobEngine puts it
            meta["labels"][ATTEMPT_LABEL] = str(attempt)
            for each in [template, *(per_worker or [])]:
                each.setdefault("metadata", {}).setdefault("labels", {})[ATTEMPT_LABEL] = str(attempt)
        if per_worker is None:
            replicated = [{"name": rendezvous.REPLICATED_JOB, "replicas": 1,
                           "template": {"metadata": {"labels": labels}, "spec": job_spec(spec.replicas, template)}}]
        else:
            replicated = [{"name": rendezvous.worker_replicated_job(i), "replicas": 1,
                           "template": {"metadata": {"labels": dict(labels)}, "spec": job_spec(1, t)}}
                          for i, t in enumerate(per_worker)]
        js_spec: dict[str, Any] = {
            "replicatedJobs": replicated,
            "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
            "coordinator": {"replicatedJob": replicated[0]["name"], "jobIndex": 0, "podIndex": 0},
            # 0 when the operator restarts the group: a failed worker fails the set, and the operator
            # makes the next attempt's JobSet once the resume step has run.
            "failurePolicy": {"maxRestarts": 0 if operator_restarts(tj) else max_restarts(tj), "restartStrategy": "BlockingRecreate", "rules": [
                {"name": "deadline-fails-the-set", "action": "FailJobSet", "onJobFailureReasons": [DEADLINE_EXCEEDED]}]},
            "successPolicy": {"operator": "All"},
        }
        if _suspend(tj):
            js_spec["suspend"] = True
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": meta, "spec": js_spec}

    def read(self, obj: dict[str, Any]) -> WorkloadState:
        meta, status = obj.get("metadata", {}), obj.get("status") or {}
        conditions = _conditions(obj)
        outcome = True if "Completed" in conditions else False if "Failed" in conditions else None
        # The operator's attempt (its label; a volume per worker) plus JobSet's own restarts of it (none then).
        attempt = _int((meta.get("labels") or {}).get(ATTEMPT_LABEL)) + _int(status.get("restarts"))
        suspended, transition = _suspension(obj)
        return WorkloadState(kind=self.kind, name=meta.get("name", ""), attempt=attempt, suspended=suspended,
                             suspend_transition=transition, outcome=outcome, stopped=True,
                             failure=_failure(conditions.get("Failed")), deleting=bool(meta.get("deletionTimestamp")))

    def max_restarts(self, tj: TrainingJob) -> int:
        return max_restarts(tj)

    def pod_job_names(self, obj: dict[str, Any]) -> list[str]:
        """Every child Job the JobSet controller makes of `obj`: `<jobset>-node-0` for the one replicated
        job, `<jobset>-node-<i>-0` for worker i's with a volume per worker (each replicated job in
        order, its Jobs by index)."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        return [jobset_child_job_name(name, str(rjob.get("name", "")), index)
                for rjob in (obj.get("spec") or {}).get("replicatedJobs") or []
                for index in range(_int(rjob.get("replicas"), 1))]


JOB, JOBSET = JobEngine(), JobSetEngine()


def engine_of(tj: TrainingJob) -> Engine:
    return JOBSET if tj.spec.engine == "JobSet" else JOB
