"""The local cluster's batch/v1 Job controller: what the real one does for the fields Jobs of this
operator (and the JobSet controller's child Jobs) use.

- pods from ``spec.template``: ``completions``, ``parallelism``, ``completionMode: Indexed`` (the
  completion index as the annotation and label ``batch.kubernetes.io/job-completion-index``, the
  ``JOB_COMPLETION_INDEX`` variable of every container, and the pod's ``spec.hostname``
  ``<job>-<index>``, so that a headless Service named by ``spec.subdomain`` gives each pod the
  name ``<job>-<index>.<subdomain>``);
- ``backoffLimit`` (default 6; no backoff delay here) and ``activeDeadlineSeconds``;
- terminal conditions as Kubernetes 1.31+ sets them: when the Job fails (backoff limit, deadline)
  it first gets ``FailureTarget``, its remaining pods are deleted, and ``Failed`` is added only once
  no pod is left terminating; success likewise (``SuccessCriteriaMet``, then ``Complete``). So
  ``Failed``/``Complete`` mean that every pod has stopped, and ``status.terminating`` counts the
  pods still stopping until then (before, a Failed Job kept ``terminating: 1`` for a pod that no
  longer existed: issue 18.7);
- ``suspend`` (what Kueue sets): the active pods are deleted (they do not count as failures),
  condition ``Suspended`` True, no new pods; resuming sets ``Suspended`` False, restarts the
  deadline (``status.startTime`` is reset) and creates the pods again;
- status: ``active``, ``ready``, ``terminating``, ``succeeded``, ``failed``, ``completedIndexes``.

Not emulated: ``podFailurePolicy``, ``backoffLimitPerIndex``, ``successPolicy``, ``podReplacementPolicy``,
pod backoff delays, ``ttlSecondsAfterFinished``, ``managedBy``.
"""

from __future__ import annotations

import copy
import datetime
import secrets
from collections.abc import Mapping
from typing import Any, Protocol

from checkpoint_operator.local.kubelet import TERMINAL_PHASES, meta, now_rfc3339, pod_phase
from checkpoint_operator.local.server import ApiClient, ApiError

PODS, JOBS = "v1/pods", "batch/v1/jobs"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# Set on a pod the controller deletes because its Job was suspended: it does not count as a failure.
SUSPENDED_ANNOTATION = "local.ckpt.dev/deleted-for-suspension"


class ObjectCache(Protocol):
    def observe(self, obj: dict | None) -> None: ...


def random_suffix(length: int = 5) -> str:
    return "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(length))


def parse_rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def job_condition(job: Mapping[str, Any], condition_type: str) -> bool:
    return any(c.get("type") == condition_type and c.get("status") == "True"
               for c in job.get("status", {}).get("conditions") or [])


def job_is_finished(job: Mapping[str, Any]) -> bool:
    return job_condition(job, "Complete") or job_condition(job, "Failed")


def pod_completion_index(pod: Mapping[str, Any]) -> int | None:
    value = (meta(pod).get("annotations") or {}).get(COMPLETION_INDEX)
    return int(value) if value is not None else None


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def counts_as_failed(pod: Mapping[str, Any]) -> bool:
    """A failed pod, unless the controller deleted it to suspend its Job."""
    return pod_phase(pod) == "Failed" and SUSPENDED_ANNOTATION not in (meta(pod).get("annotations") or {})


def _condition(condition_type: str, status: str, reason: str = "", message: str = "") -> dict:
    now = now_rfc3339()
    condition = {"type": condition_type, "status": status, "lastProbeTime": now, "lastTransitionTime": now}
    if reason:
        condition.update(reason=reason, message=message)
    return condition


def _set_condition(conditions: list[dict], new: dict) -> list[dict]:
    """Replace the condition of the same type when its status changes; append a new type."""
    for index, old in enumerate(conditions):
        if old.get("type") == new["type"]:
            if old.get("status") == new["status"]:
                return conditions
            return [*conditions[:index], new, *conditions[index + 1:]]
    return [*conditions, new]


CONFLICT_RETRY = 0.2  # seconds: a status write refused as stale looks again (the newer version's event does too)


class JobController:
    """batch/v1 Jobs: pods from the template, retries, deadlines, suspension, status and conditions."""

    def __init__(self, api: ApiClient, jobs: ObjectCache, pods: ObjectCache) -> None:
        self.api = api
        self.jobs = jobs
        self.pods = pods
        self._reported: dict[str, str] = {}  # Job uid -> the last FailedCreate message posted

    async def reconcile(self, job: dict, pods: list[dict]) -> float | None:
        """Bring one Job closer to its spec; returns seconds after which to look again (a deadline)."""
        if is_deleting(job) or job_is_finished(job):
            return None
        spec, status = job.get("spec", {}), dict(job.get("status", {}))
        conditions = list(status.get("conditions") or [])
        completions = spec.get("completions") or 1
        parallelism = spec.get("parallelism") if spec.get("parallelism") is not None else 1
        indexed = spec.get("completionMode") == "Indexed"
        suspended = bool(spec.get("suspend"))
        terminating = [p for p in pods if is_deleting(p) and pod_phase(p) not in TERMINAL_PHASES]
        active = [p for p in pods if pod_phase(p) not in TERMINAL_PHASES and not is_deleting(p)]
        failed = [p for p in pods if counts_as_failed(p)]
        succeeded = [p for p in pods if pod_phase(p) == "Succeeded"]
        completed = sorted({i for i in (pod_completion_index(p) for p in succeeded) if i is not None})
        succeeded_count = len(completed) if indexed else len(succeeded)

        remaining = None if suspended else self._deadline_remaining(spec, status)
        target = self._target(conditions)
        if target is None:
            if len(failed) > spec.get("backoffLimit", 6):
                target = ("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            elif remaining is not None and remaining <= 0:
                target = ("FailureTarget", "DeadlineExceeded", "Job was active longer than specified deadline")
            elif succeeded_count >= completions:
                target = ("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods")
            if target is not None:
                conditions = _set_condition(conditions, _condition(*target[:1], "True", *target[1:]))

        if target is not None or suspended:
            for pod in active:
                await self._delete_pod(pod, for_suspension=target is None)
            terminating, active = terminating + active, []
        else:
            active += await self._create_missing_pods(job, active, succeeded, completions, parallelism, indexed)
        if suspended and target is None:
            conditions = _set_condition(conditions, _condition("Suspended", "True", "JobSuspended", "Job suspended"))
            status.pop("startTime", None)  # resuming starts the deadline again
        else:
            if job_condition({"status": {"conditions": conditions}}, "Suspended"):
                conditions = _set_condition(conditions, _condition("Suspended", "False", "JobResumed", "Job resumed"))
            status.setdefault("startTime", now_rfc3339())

        status.update(active=len(active), terminating=len(terminating), succeeded=succeeded_count, failed=len(failed),
                      ready=sum(1 for p in active if pod_phase(p) == "Running"))
        if indexed:
            status["completedIndexes"] = ",".join(str(i) for i in completed)
        if target is not None and not terminating:  # the terminal condition once every pod has stopped
            reason, message = target[1], target[2]
            if target[0] == "FailureTarget":
                conditions = _set_condition(conditions, _condition("Failed", "True", reason, message))
            else:
                conditions = _set_condition(conditions, _condition("Complete", "True", reason, message))
                status["completionTime"] = now_rfc3339()
        status["conditions"] = conditions
        if not status["conditions"]:
            del status["conditions"]
        if status != job.get("status", {}):
            removed = {key: None for key in job.get("status", {}) if key not in status}  # a merge patch's null
            # Only over the version it was computed from, as the real controller's update: a Job resumed
            # meanwhile (Kueue) would else be written Suspended again, a suspension that never was.
            # The newer version's event brings the Job back here.
            try:
                self.jobs.observe(await self.api.patch(JOBS, meta(job)["namespace"], meta(job)["name"],
                                                       {"metadata": {"resourceVersion": meta(job).get("resourceVersion")},
                                                        "status": {**status, **removed}}, subresource="status"))
            except ApiError as exc:
                if exc.status != 409:
                    raise
                return CONFLICT_RETRY
        return remaining if target is None else None

    @staticmethod
    def _target(conditions: list[dict]) -> tuple[str, str, str] | None:
        for condition in conditions:
            if condition.get("type") in ("FailureTarget", "SuccessCriteriaMet") and condition.get("status") == "True":
                return condition["type"], condition.get("reason", ""), condition.get("message", "")
        return None

    @staticmethod
    def _deadline_remaining(spec: Mapping[str, Any], status: Mapping[str, Any]) -> float | None:
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is None or not status.get("startTime"):
            return None if deadline is None else float(deadline)
        started = parse_rfc3339(status["startTime"])
        return deadline - (datetime.datetime.now(datetime.UTC) - started).total_seconds()

    async def _delete_pod(self, pod: dict, for_suspension: bool) -> None:
        namespace, name = meta(pod)["namespace"], meta(pod)["name"]
        if for_suspension:
            self.pods.observe(await self.api.patch(PODS, namespace, name, {"metadata": {"annotations": {
                SUSPENDED_ANNOTATION: "true"}}}))
        await self.api.delete(PODS, namespace, name)

    async def _create_missing_pods(self, job: dict, active: list[dict], succeeded: list[dict],
                                   completions: int, parallelism: int, indexed: bool) -> list[dict]:
        if indexed:
            busy = {pod_completion_index(p) for p in active + succeeded}
            wanted: list[int | None] = [i for i in range(completions) if i not in busy]
        else:
            wanted = [None] * (completions - len(succeeded) - len(active))
        wanted = wanted[:max(0, parallelism - len(active))]
        created = []
        for index in wanted:
            try:
                pod = await self.api.create(PODS, meta(job)["namespace"], build_job_pod(job, index))
            except ApiError as exc:
                if exc.status == 403:  # admission refused it (Pod Security): said on the Job, tried again later
                    await self._failed_create(job, exc)
                raise
            self.pods.observe(pod)  # seen at once: the next pass never creates it twice
            created.append(pod)
        return created

    async def _failed_create(self, job: dict, exc: ApiError) -> None:
        """The Job controller's `FailedCreate` Warning event on the Job (once per message here)."""
        message = exc.body.get("message", str(exc)) if isinstance(exc.body, dict) else str(exc.body)
        text = f"Error creating: {message}"
        if self._reported.get(meta(job)["uid"]) == text:
            return
        self._reported[meta(job)["uid"]] = text
        now = now_rfc3339()
        involved = {"apiVersion": "batch/v1", "kind": "Job", "name": meta(job)["name"],
                    "namespace": meta(job)["namespace"], "uid": meta(job)["uid"]}
        await self.api.create("v1/events", meta(job)["namespace"], {
            "metadata": {"generateName": f"{meta(job)['name']}."}, "involvedObject": involved, "type": "Warning",
            "reason": "FailedCreate", "message": text, "source": {"component": "job-controller"},
            "count": 1, "firstTimestamp": now, "lastTimestamp": now})


def build_job_pod(job: Mapping[str, Any], index: int | None) -> dict[str, Any]:
    """The pod the Job controller creates from ``spec.template`` (with the completion index if Indexed)."""
    template = copy.deepcopy(job.get("spec", {}).get("template", {}))
    job_name, job_uid = meta(job)["name"], meta(job)["uid"]
    pod_meta = template.get("metadata") or {}
    labels = {**(pod_meta.get("labels") or {}), "job-name": job_name, "batch.kubernetes.io/job-name": job_name,
              "controller-uid": job_uid, "batch.kubernetes.io/controller-uid": job_uid}
    annotations = dict(pod_meta.get("annotations") or {})
    spec = template.get("spec") or {}
    name = f"{job_name}-{random_suffix()}"
    if index is not None:
        name = f"{job_name}-{index}-{random_suffix()}"
        labels[COMPLETION_INDEX] = str(index)
        annotations[COMPLETION_INDEX] = str(index)
        spec["hostname"] = f"{job_name}-{index}"  # as the Job controller sets it: <job>-<index>.<subdomain>
        for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            env = container.get("env") or []
            if not any(e.get("name") == "JOB_COMPLETION_INDEX" for e in env):  # a container's own wins, as there
                container["env"] = [*env, {"name": "JOB_COMPLETION_INDEX", "value": str(index)}]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": meta(job)["namespace"], "labels": labels, "annotations": annotations,
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job_uid,
                                          "controller": True, "blockOwnerDeletion": True}]},
        "spec": spec,
    }
