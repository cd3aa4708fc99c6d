"""The local cluster's JobSet controller (jobset.x-k8s.io/v1alpha2): what kubernetes-sigs/jobset's
controller does (pkg/controllers/jobset_controller.go, failure_policy.go, success_policy.go) for
the fields this operator's JobSets use, so that the same flow runs in local mode.

- child Jobs: for each replicated job `r` and index `i < replicas`, a Job `<jobset>-<r>-<i>` from
  `r.template`, owned by the JobSet (controller), with JobSet's labels and annotations on the Job
  and its pod template (`jobset.sigs.k8s.io/jobset-name`, `-uid`, `replicatedjob-name`,
  `restart-attempt` = `status.restarts`, `job-index`, `job-key`, `job-global-index`, ...),
  `suspend` as the JobSet's; the local Job controller (local/jobs.py) runs them;
- `network.enableDNSHostnames`: the pods' `subdomain` (default: the JobSet's name) and the headless
  Service of that name (selector `jobset.sigs.k8s.io/jobset-name`, `publishNotReadyAddresses`,
  default true), owned by the JobSet; `coordinator` as the pods' `jobset.sigs.k8s.io/coordinator`;
- `failurePolicy`: a failed child Job (its Failed condition: once all its pods have stopped)
  either fails the JobSet (a rule with `FailJobSet` whose `onJobFailureReasons` /
  `targetReplicatedJobs` match; or no failurePolicy at all) or restarts it (`RestartJobSet`, the
  default action): `status.restarts` + 1, `RestartingJobSet` condition, every child Job of the
  earlier attempt deleted (Foreground) and created again; past `maxRestarts`, Failed with
  `ReachedMaxRestarts`. `restartStrategy: BlockingRecreate` creates the new Jobs only once every
  old one is gone (`Recreate` creates each as soon as its namesake is gone: the same here);
- `successPolicy` (`All` or `Any`, `targetReplicatedJobs`): Completed, `terminalState`;
- `suspend`: the active child Jobs are suspended (their pods stopped) and the `Suspended`
  condition set; resuming unsuspends them (`Suspended` False, reason `ResumeJobs`);
- a finished JobSet deletes its still-active child Jobs; `status.replicatedJobsStatus`.

Not emulated: startupPolicy InOrder, dependsOn, RestartJob (per-job restarts), in-place restart,
volumeClaimPolicies, ttlSecondsAfterFinished, managedBy, exclusive placement, elastic JobSets,
the webhook's validation (its defaults, where used, are applied as the webhook would).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Protocol

from checkpoint_operator.local.jobs import JOBS, job_condition
from checkpoint_operator.local.kubelet import meta, now_rfc3339
from checkpoint_operator.local.server import ApiClient, ApiError

JOBSETS, SERVICES = "jobset.x-k8s.io/v1alpha2/jobsets", "v1/services"
API_VERSION = "jobset.x-k8s.io/v1alpha2"
PREFIX = "jobset.sigs.k8s.io/"
NAME_KEY, UID_KEY, RJOB_KEY = f"{PREFIX}jobset-name", f"{PREFIX}jobset-uid", f"{PREFIX}replicatedjob-name"
RESTARTS_KEY, INDEX_KEY = f"{PREFIX}restart-attempt", f"{PREFIX}job-index"
COORDINATOR_KEY = f"{PREFIX}coordinator"
# What the real controller writes (pkg/constants/constants.go).
FAILED_JOBS = ("FailedJobs", "jobset failed due to one or more job failures")
REACHED_MAX_RESTARTS = ("ReachedMaxRestarts", "jobset failed due to reaching max number of restarts")
FAIL_JOBSET_ACTION = ("FailJobSetFailurePolicyAction", "applying FailJobSet failure policy action")
RESTART_ACTION = ("RestartJobSetFailurePolicyAction", "applying RestartJobSet failure policy action")
ALL_JOBS_COMPLETED = ("AllJobsCompleted", "jobset completed successfully")
SUSPENDED = ("SuspendedJobs", "jobset is suspended")
RESUMED = ("ResumeJobs", "jobset is resumed")


class ObjectCache(Protocol):
    def observe(self, obj: dict | None) -> None: ...

    def get(self, key: tuple[str, str]) -> dict | None: ...


def minimal_crd() -> dict:
    """The JobSet CRD that `local run` installs: served and stored as v1alpha2 with a status
    subresource, but no schema (any JobSet is accepted). The tests install JobSet's published CRD
    instead (tests/schemas/), so that every JobSet the operator makes is validated there."""
    columns = [{"name": "TerminalState", "type": "string", "jsonPath": ".status.terminalState"},
               {"name": "Restarts", "type": "string", "jsonPath": ".status.restarts"},
               {"name": "Suspended", "type": "string", "jsonPath": ".spec.suspend"},
               {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "jobsets.jobset.x-k8s.io"},
            "spec": {"group": "jobset.x-k8s.io", "scope": "Namespaced",
                     "names": {"kind": "JobSet", "listKind": "JobSetList", "plural": "jobsets", "singular": "jobset"},
                     "versions": [{"name": "v1alpha2", "served": True, "storage": True, "subresources": {"status": {}},
                                   "additionalPrinterColumns": columns,
                                   "schema": {"openAPIV3Schema": {"type": "object",
                                                                  "x-kubernetes-preserve-unknown-fields": True}}}]}}


def job_name(jobset: str, replicated_job: str, index: int) -> str:
    return f"{jobset}-{replicated_job}-{index}"


def subdomain(js: Mapping[str, Any]) -> str:
    return ((js.get("spec") or {}).get("network") or {}).get("subdomain") or meta(js)["name"]


def dns_hostnames(js: Mapping[str, Any]) -> bool:
    return bool(((js.get("spec") or {}).get("network") or {}).get("enableDNSHostnames"))


def _restarts(js: Mapping[str, Any]) -> int:
    return int((js.get("status") or {}).get("restarts") or 0)


def _finished_type(job: Mapping[str, Any]) -> str:
    return "Complete" if job_condition(job, "Complete") else "Failed" if job_condition(job, "Failed") else ""


def _failed_condition(job: Mapping[str, Any]) -> dict:
    return next((c for c in (job.get("status") or {}).get("conditions") or []
                 if c.get("type") == "Failed" and c.get("status") == "True"), {})


def _first_failed(jobs: list[dict]) -> dict:
    return min(jobs, key=lambda j: (_failed_condition(j).get("lastTransitionTime") or "", meta(j)["name"]))


def _set_condition(conditions: list[dict], kind: str, status: str, reason: str, message: str) -> tuple[list[dict], bool]:
    """As the real updateCondition: a status change replaces the condition (new transition time),
    a new reason or message updates it, a condition that does not exist is added only when True."""
    for index, old in enumerate(conditions):
        if old.get("type") != kind:
            continue
        if old.get("status") == status and (old.get("reason"), old.get("message")) == (reason, message):
            return conditions, False
        when = now_rfc3339() if old.get("status") != status else old.get("lastTransitionTime", now_rfc3339())
        new = {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": when}
        return [*conditions[:index], new, *conditions[index + 1:]], True
    if status != "True":
        return conditions, False
    return [*conditions, {"type": kind, "status": status, "reason": reason, "message": message,
                          "lastTransitionTime": now_rfc3339()}], True


def _finished(js: Mapping[str, Any]) -> bool:
    return any(c.get("type") in ("Completed", "Failed") and c.get("status") == "True"
               for c in (js.get("status") or {}).get("conditions") or [])


class JobSetController:
    """JobSets: child Jobs, the headless Service, restarts, success, suspension, status."""

    def __init__(self, api: ApiClient, jobsets: ObjectCache, jobs: ObjectCache, services: ObjectCache) -> None:
        self.api = api
        self.jobsets, self.jobs, self.services = jobsets, jobs, services

    async def reconcile(self, js: dict, children: list[dict]) -> None:
        if meta(js).get("deletionTimestamp"):
            return
        spec = js.get("spec") or {}
        status = copy.deepcopy(js.get("status") or {})
        conditions = list(status.get("conditions") or [])
        restarts = _restarts(js)
        previous = [j for j in children if int((meta(j).get("labels") or {}).get(RESTARTS_KEY) or 0) < restarts]
        current = [j for j in children if j not in previous]
        active = [j for j in current if not _finished_type(j)]
        failed = [j for j in current if _finished_type(j) == "Failed"]
        succeeded = [j for j in current if _finished_type(j) == "Complete"]
        status["replicatedJobsStatus"] = self._replicated_statuses(spec, active, failed, succeeded)

        if _finished(js):
            await self._delete(active)
            await self._write(js, status)
            return
        await self._delete(previous)

        if failed:
            conditions = self._failure_policy(spec, status, conditions, failed)
        elif succeeded and len([j for j in succeeded if self._counts_for_success(spec, j)]) >= self._expected(spec):
            conditions, _ = _set_condition(conditions, "Completed", "True", *ALL_JOBS_COMPLETED)
            conditions, _ = _set_condition(conditions, "RestartingJobSet", "False", "JobSetCompleted",
                                           ALL_JOBS_COMPLETED[1])
            status["terminalState"] = "Completed"
        else:
            if dns_hostnames(js):
                await self._ensure_service(js)
            blocking = (spec.get("failurePolicy") or {}).get("restartStrategy") == "BlockingRecreate"
            if not (previous and blocking):
                existing = {meta(j)["name"] for j in children}
                active += await self._create_jobs(js, existing)
            if spec.get("suspend"):
                for job in active:
                    if not (job.get("spec") or {}).get("suspend"):
                        await self._patch_job(job, True)
                conditions, _ = _set_condition(conditions, "Suspended", "True", *SUSPENDED)
            else:
                for job in active:
                    if (job.get("spec") or {}).get("suspend"):
                        await self._patch_job(job, False)
                conditions, _ = _set_condition(conditions, "Suspended", "False", *RESUMED)
                if self._all_ready(spec, active, succeeded):
                    conditions, _ = _set_condition(conditions, "RestartingJobSet", "False", "JobsReady",
                                                   "all jobs are ready")
        status["conditions"] = conditions
        await self._write(js, status)

    # -- policies ------------------------------------------------------------------------------------

    def _failure_policy(self, spec: dict, status: dict, conditions: list[dict], failed: list[dict]) -> list[dict]:
        policy = spec.get("failurePolicy")
        first = _first_failed(failed)
        if policy is None:
            return self._fail(status, conditions, FAILED_JOBS, first)
        action, rule_name = "RestartJobSet", None
        for rule in policy.get("rules") or []:
            matching = [j for j in failed if self._rule_applies(rule, j)]
            if matching:
                action, rule_name, first = rule.get("action", "RestartJobSet"), rule.get("name"), _first_failed(matching)
                break
        if action == "FailJobSet":
            return self._fail(status, conditions, FAIL_JOBSET_ACTION, first)
        counts = action == "RestartJobSet"
        if counts and int(status.get("restartsCountTowardsMax") or 0) >= int(policy.get("maxRestarts") or 0):
            return self._fail(status, conditions, REACHED_MAX_RESTARTS, first)
        status["restarts"] = int(status.get("restarts") or 0) + 1
        if counts:
            status["restartsCountTowardsMax"] = int(status.get("restartsCountTowardsMax") or 0) + 1
        reason = f"FailurePolicy_{rule_name}" if rule_name else "DefaultFailurePolicy"
        conditions, _ = _set_condition(conditions, "RestartingJobSet", "True", reason,
                                       f"{RESTART_ACTION[1]} (first failed job: {meta(first)['name']})")
        return conditions

    @staticmethod
    def _rule_applies(rule: dict, job: dict) -> bool:
        condition = _failed_condition(job)
        reasons, patterns = rule.get("onJobFailureReasons") or [], rule.get("onJobFailureMessagePatterns") or []
        targets = rule.get("targetReplicatedJobs") or []
        return (not reasons or condition.get("reason") in reasons) and \
            (not patterns or any(re.search(p, condition.get("message") or "") for p in patterns)) and \
            (not targets or (meta(job).get("labels") or {}).get(RJOB_KEY) in targets)

    @staticmethod
    def _fail(status: dict, conditions: list[dict], why: tuple[str, str], first: dict) -> list[dict]:
        conditions, _ = _set_condition(conditions, "Failed", "True", why[0],
                                       f"{why[1]} (first failed job: {meta(first)['name']})")
        conditions, _ = _set_condition(conditions, "RestartingJobSet", "False", "JobSetFailed", "jobset failed")
        status["terminalState"] = "Failed"
        return conditions

    @staticmethod
    def _counts_for_success(spec: dict, job: dict) -> bool:
        targets = (spec.get("successPolicy") or {}).get("targetReplicatedJobs") or []
        return not targets or (meta(job).get("labels") or {}).get(RJOB_KEY) in targets

    @staticmethod
    def _expected(spec: dict) -> int:
        policy = spec.get("successPolicy") or {"operator": "All"}  # the webhook's default
        if policy.get("operator") == "Any":
            return 1
        targets = policy.get("targetReplicatedJobs") or []
        return sum(int(r.get("replicas", 1)) for r in spec.get("replicatedJobs") or []
                   if not targets or r.get("name") in targets)

    @staticmethod
    def _all_ready(spec: dict, active: list[dict], succeeded: list[dict]) -> bool:
        total = sum(int(r.get("replicas", 1)) for r in spec.get("replicatedJobs") or [])
        ready = sum(1 for j in active if (j.get("status") or {}).get("ready", 0) + (j.get("status") or {}).get(
            "succeeded", 0) >= min((j.get("spec") or {}).get("parallelism", 1), (j.get("spec") or {}).get(
                "completions") or (j.get("spec") or {}).get("parallelism", 1)))
        return total == ready + len(succeeded)

    @staticmethod
    def _replicated_statuses(spec: dict, active: list[dict], failed: list[dict], succeeded: list[dict]) -> list[dict]:
        def of(jobs: list[dict], name: str) -> list[dict]:
            return [j for j in jobs if (meta(j).get("labels") or {}).get(RJOB_KEY) == name]
        statuses = []
        for rjob in spec.get("replicatedJobs") or []:
            name = rjob.get("name", "")
            mine = of(active, name)
            statuses.append({"name": name, "ready": sum(1 for j in mine if (j.get("status") or {}).get("ready")),
                             "succeeded": len(of(succeeded, name)), "failed": len(of(failed, name)),
                             "active": sum(1 for j in mine if (j.get("status") or {}).get("active")),
                             "suspended": sum(1 for j in mine if (j.get("spec") or {}).get("suspend"))})
        return statuses

    # -- objects -------------------------------------------------------------------------------------

    async def _create_jobs(self, js: dict, existing: set[str]) -> list[dict]:
        created = []
        for rjob in (js.get("spec") or {}).get("replicatedJobs") or []:
            for index in range(int(rjob.get("replicas", 1))):
                name = job_name(meta(js)["name"], rjob["name"], index)
                if name in existing:
                    continue
                job = await self.api.create(JOBS, meta(js)["namespace"], build_child_job(js, rjob, index))
                self.jobs.observe(job)
                created.append(job)
        return created

    async def _ensure_service(self, js: dict) -> None:
        name = subdomain(js)
        if self.services.get((meta(js)["namespace"], name)) is not None:
            return
        if await self.api.get(SERVICES, meta(js)["namespace"], name) is not None:
            return
        network = (js.get("spec") or {}).get("network") or {}
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": name, "namespace": meta(js)["namespace"], "ownerReferences": [_owner(js)]},
            "spec": {"clusterIP": "None", "selector": {NAME_KEY: meta(js)["name"]},
                     "publishNotReadyAddresses": network.get("publishNotReadyAddresses", True)}}
        self.services.observe(await self.api.create(SERVICES, meta(js)["namespace"], service))

    async def _delete(self, jobs: list[dict]) -> None:
        for job in jobs:
            if not meta(job).get("deletionTimestamp"):
                await self.api.delete(JOBS, meta(job)["namespace"], meta(job)["name"], propagation_policy="Foreground",
                                      preconditions={"uid": meta(job)["uid"]})

    async def _patch_job(self, job: dict, suspend: bool) -> None:
        self.jobs.observe(await self.api.patch(JOBS, meta(job)["namespace"], meta(job)["name"],
                                               {"spec": {"suspend": suspend}}))

    async def _write(self, js: dict, status: dict) -> None:
        """The status computed from `js`, written only over that version, as the real controller's
        Status().Update is: a status computed from a JobSet changed meanwhile (Kueue admitted it) would
        say Suspended after its resume, a suspension and a resume that never were. The newer version's
        event brings the JobSet back here."""
        if status == (js.get("status") or {}):
            return
        try:
            written = await self.api.patch(JOBSETS, meta(js)["namespace"], meta(js)["name"],
                                           {"metadata": {"resourceVersion": meta(js).get("resourceVersion")},
                                            "status": status}, subresource="status")
        except ApiError as exc:
            if exc.status == 409:
                return
            raise
        self.jobsets.observe(written)


def _owner(js: Mapping[str, Any]) -> dict:
    return {"apiVersion": API_VERSION, "kind": "JobSet", "name": meta(js)["name"], "uid": meta(js)["uid"],
            "controller": True, "blockOwnerDeletion": True}


def build_child_job(js: Mapping[str, Any], rjob: Mapping[str, Any], index: int) -> dict:
    """As constructJob: the replicated job's template, labelled and annotated as JobSet does."""
    template = copy.deepcopy(rjob.get("template") or {})
    name, namespace = job_name(meta(js)["name"], rjob["name"], index), meta(js)["namespace"]
    spec = template.get("spec") or {}
    spec.setdefault("completionMode", "Indexed")  # the webhook's defaults
    pod_template = spec.setdefault("template", {})
    pod_template.setdefault("spec", {}).setdefault("restartPolicy", "OnFailure")
    replicated = (js.get("spec") or {}).get("replicatedJobs") or []
    before = sum(int(r.get("replicas", 1)) for r in replicated[:next(
        (i for i, r in enumerate(replicated) if r.get("name") == rjob["name"]), 0)])
    ours = {NAME_KEY: meta(js)["name"], UID_KEY: meta(js)["uid"], RJOB_KEY: rjob["name"],
            RESTARTS_KEY: str(_restarts(js)), f"{PREFIX}replicatedjob-replicas": str(rjob.get("replicas", 1)),
            f"{PREFIX}global-replicas": str(sum(int(r.get("replicas", 1)) for r in replicated)),
            INDEX_KEY: str(index), f"{PREFIX}job-key": hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest(),
            f"{PREFIX}job-global-index": str(before + index)}
    coordinator = (js.get("spec") or {}).get("coordinator")
    if coordinator:
        ours[COORDINATOR_KEY] = (f"{meta(js)['name']}-{coordinator['replicatedJob']}-{coordinator.get('jobIndex', 0)}-"
                                 f"{coordinator.get('podIndex', 0)}.{subdomain(js)}")
    job_meta = template.get("metadata") or {}
    pod_meta = pod_template.setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **ours}
    pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), **ours}
    if dns_hostnames(js):
        pod_template["spec"]["subdomain"] = subdomain(js)
    spec["suspend"] = bool((js.get("spec") or {}).get("suspend"))
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {**(job_meta.get("labels") or {}), **ours},
                         "annotations": {**(job_meta.get("annotations") or {}), **ours},
                         "ownerReferences": [_owner(js)]},
            "spec": spec}
