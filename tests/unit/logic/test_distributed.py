"""Distributed TrainingJobs, the pure parts: rendezvous names and variables, the Job and JobSet
builders (Jobs and Services validated against Kubernetes' OpenAPI schema; JobSets against JobSet's
published CRD in tests/test_jobset_schema.py), reading the workload's state, the worker that failed
first, and the group's decisions."""

from __future__ import annotations

import copy
import re
import kubernetes_validate
import pytest

from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobPhase
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import engines, rendezvous, workers, workload
from checkpoint_operator.logic import trainingjob_flow as flow
from checkpoint_operator.logic.engines import WorkloadState
from checkpoint_operator.logic.status import set_fields
from checkpoint_operator.storage import store_for
from factories import training_job

CONFIG = OperatorConfig()
KUBE_VERSIONS = ("1.29.0", "1.34.0")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def typed(**fields) -> TrainingJob:
    name = fields.pop("name", "train")
    labels = fields.pop("labels", None)
    body = training_job(name, **fields)
    if labels:
        body["metadata"]["labels"] = labels
    return TrainingJob.model_validate(body)


def build(tj: TrainingJob, **kw) -> workload.BuiltJob:
    return workload.build_workload(tj, [], store_for(CONFIG).input_volumes(tj, []), **kw)


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def pod_spec(obj: dict) -> dict:
    if obj["kind"] == "JobSet":
        return obj["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def validate_kubernetes(obj: dict) -> None:
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(copy.deepcopy(obj), version, strict=True)


# --- names ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["train", "7b-sft", "a.b.c", "x" * 63, "llama-3.1-70b", "9" * 20])
@pytest.mark.parametrize("replicas", [2, 16, 1000])
@pytest.mark.parametrize("engine", ["Job", "JobSet"])
def test_workload_names_are_services_names_and_every_pod_name_fits(name, replicas, engine):
    tj = typed(name=name, replicas=replicas, engine=engine)
    workload_name = rendezvous.workload_name(tj)
    assert DNS1035.match(workload_name) and len(workload_name) <= 63
    last = replicas - 1
    host = f"{workload_name}-{last}" if engine == "Job" else f"{workload_name}-node-0-{last}"
    assert len(host) <= 63 and DNS1035.match(host)
    if engine == "JobSet":  # what JobSet's webhook checks: the longest pod name with its random suffix
        assert len(f"{host}-abcde") <= 63
    assert rendezvous.worker_host(tj, last) == f"{host}.{workload_name}"


def test_a_valid_name_is_kept_and_changed_names_stay_distinct():
    assert rendezvous.workload_name(typed(name="pretrain", replicas=2)) == "pretrain"
    assert rendezvous.workload_name(typed(name="x" * 200)) == workload.job_name(typed(name="x" * 200))  # one pod
    a, b = (rendezvous.workload_name(typed(name=n, replicas=2)) for n in ("a.b", "a-b"))
    assert b == "a-b" and a != b and a.startswith("a-b-")
    assert rendezvous.workload_name(typed(name="7b", replicas=2)).startswith("tj-7b-")


# --- the Job engine ---------------------------------------------------------------------------------

def test_a_distributed_job_gets_a_service_subdomain_and_the_launchers_variables_everywhere():
    tj = typed(name="ddp", replicas=3, nprocPerNode=4, containers=[
        {"name": "trainer", "image": "t", "command": ["torchrun", "train.py"]}, {"name": "logger", "image": "l"}])
    job = build(tj, rendezvous_at=rendezvous.rendezvous_of(tj)).job
    validate_kubernetes(job)
    spec = pod_spec(job)
    assert spec["subdomain"] == "ddp"
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["backoffLimit"]) == ("Indexed", 3, 0)
    index = {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    for container in spec["containers"]:
        env = env_of(container)
        assert env["PET_NNODES"] == "3" and env["PET_NPROC_PER_NODE"] == "4"
        assert env["PET_MASTER_ADDR"] == env["MASTER_ADDR"] == "ddp-0.ddp"
        assert env["PET_MASTER_PORT"] == env["MASTER_PORT"] == "29500"
        assert env["PET_NODE_RANK"] == env["RANK"] == env["JAX_PROCESS_ID"] == index
        assert env["WORLD_SIZE"] == env["JAX_NUM_PROCESSES"] == "3"
        assert env["JAX_COORDINATOR_ADDRESS"] == "ddp-0.ddp:29500"
    service = workload.build_rendezvous_service(tj)
    validate_kubernetes({"apiVersion": "v1", "kind": "Service", **service})
    assert service["metadata"]["name"] == "ddp" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    template_labels = job["spec"]["template"]["metadata"]["labels"]
    assert all(template_labels[k] == v for k, v in service["spec"]["selector"].items())
    assert service["metadata"]["ownerReferences"][0]["uid"] == tj.metadata.uid


def test_local_mode_points_every_worker_at_127_0_0_1_and_its_port():
    tj = typed(replicas=2)
    job = build(tj, rendezvous_at=rendezvous.rendezvous_of(tj, "127.0.0.1", 41234)).job
    env = env_of(pod_spec(job)["containers"][0])
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["JAX_COORDINATOR_ADDRESS"]) == (
        "127.0.0.1", "41234", "127.0.0.1:41234")


def test_one_pod_gets_no_launcher_variables_unless_it_starts_several_processes():
    assert "MASTER_ADDR" not in env_of(pod_spec(build(typed()).job)["containers"][0])
    assert "subdomain" not in pod_spec(build(typed()).job)
    env = env_of(pod_spec(build(typed(nprocPerNode=8)).job)["containers"][0])
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"], env["PET_NODE_RANK"], env["MASTER_ADDR"]) == (
        "1", "8", "0", "127.0.0.1")
    assert "subdomain" not in pod_spec(build(typed(nprocPerNode=8)).job)


def test_a_template_s_own_launcher_variable_is_replaced_with_a_warning():
    tj = typed(replicas=2, containers=[{"name": "t", "image": "x", "env": [
        {"name": "MASTER_PORT", "value": "1234"}, {"name": "RANK", "value": "0"}, {"name": "OTHER", "value": "1"}]}])
    built = build(tj)
    env = env_of(pod_spec(built.job)["containers"][0])
    assert env["MASTER_PORT"] == "29500" and env["OTHER"] == "1" and "fieldRef" in env["RANK"]
    assert len(built.warnings) == 2 and any("RANK" in w and "the pod's index" in w for w in built.warnings)


@pytest.mark.parametrize("field_name", ["hostname", "subdomain"])
def test_a_template_that_names_its_pods_is_refused_for_several_replicas(field_name):
    template = {"spec": {field_name: "mine", "containers": [{"name": "t", "image": "x"}]}}
    with pytest.raises(ValueError, match="spec.template.spec.hostname and subdomain are set by the operator"):
        typed(replicas=2, template=template)  # the CRD's rule (the API server and local mode refuse it)
    one = typed(template=template)  # one pod: its own business
    build(one)
    # and the builder refuses it too, should such a spec reach it (an object stored before the rule)
    with pytest.raises(workload.InvalidSpec, match=f"spec.template.spec.{field_name}"):
        build(one.model_copy(update={"spec": one.spec.model_copy(update={"replicas": 2})}))


def test_the_attempt_labels_the_job_and_its_pods():
    job = build(typed(replicas=2), attempt=3).job
    assert job["metadata"]["labels"]["ckpt.dev/restart-attempt"] == "3"
    assert job["spec"]["template"]["metadata"]["labels"]["ckpt.dev/restart-attempt"] == "3"
    assert engines.JOB.read(job).attempt == 3


def test_a_queued_job_is_created_suspended_with_the_kueue_labels():
    tj = typed(replicas=2, labels={"kueue.x-k8s.io/queue-name": "team-a", "kueue.x-k8s.io/priority-class": "high",
                                   "team": "nlp"})
    job = build(tj).job
    validate_kubernetes(job)
    assert job["spec"]["suspend"] is True
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a" and labels["kueue.x-k8s.io/priority-class"] == "high"
    assert "team" not in labels
    assert "suspend" not in build(typed(replicas=2)).job["spec"]


# --- the JobSet engine ---------------------------------------------------------------------------------

def test_the_jobset_has_one_replicated_job_and_restarts_the_group():
    tj = typed(name="ddp", engine="JobSet", replicas=4, nprocPerNode=2, backoffLimit=3, activeDeadlineSeconds=3600,
               labels={"kueue.x-k8s.io/queue-name": "q"})
    js = build(tj, rendezvous_at=rendezvous.rendezvous_of(tj)).job  # tests/test_jobset_schema.py validates it
    spec = js["spec"]
    assert (js["apiVersion"], js["kind"], js["metadata"]["name"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet", "ddp")
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    assert spec["failurePolicy"]["maxRestarts"] == 3 and spec["successPolicy"] == {"operator": "All"}
    assert spec["suspend"] is True and js["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
    (rjob,) = spec["replicatedJobs"]
    assert (rjob["name"], rjob["replicas"]) == ("node", 1)
    job_spec = rjob["template"]["spec"]
    assert (job_spec["completions"], job_spec["parallelism"], job_spec["completionMode"], job_spec["backoffLimit"],
            job_spec["activeDeadlineSeconds"]) == (4, 4, "Indexed", 0, 3600)
    validate_kubernetes({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "ddp-node-0"}, "spec": job_spec})
    env = env_of(job_spec["template"]["spec"]["containers"][0])
    assert env["MASTER_ADDR"] == "ddp-node-0-0.ddp" and env["PET_NNODES"] == "4"
    assert "subdomain" not in job_spec["template"]["spec"]  # JobSet sets it (network.enableDNSHostnames)
    assert rjob["template"]["metadata"]["labels"]["ckpt.dev/trainingjob-uid"] == tj.metadata.uid


def test_a_jobset_without_backoff_limit_restarts_as_often_as_a_job_retries():
    js = build(typed(engine="JobSet")).job
    assert js["spec"]["failurePolicy"]["maxRestarts"] == engines.DEFAULT_BACKOFF_LIMIT == 6


# --- reading the workload -------------------------------------------------------------------------------

def job_with(status: dict, **spec) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "labels": {
        "ckpt.dev/restart-attempt": "1"}}, "spec": spec, "status": status}


def condition(kind: str, reason: str = "", message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


def test_a_job_is_over_only_when_final_and_every_pod_has_stopped():
    failing = job_with({"terminating": 1, "conditions": [condition("FailureTarget", "BackoffLimitExceeded")]})
    assert engines.JOB.read(failing).outcome is None
    # An older API server adds Failed while pods still stop: not over either.
    early = job_with({"terminating": 1, "conditions": [condition("Failed", "BackoffLimitExceeded")]})
    assert engines.JOB.read(early).outcome is None
    failed = engines.JOB.read(job_with({"conditions": [condition("Failed", "BackoffLimitExceeded", "limit")]}))
    assert (failed.outcome, failed.failure, failed.attempt, failed.deadline_exceeded) == (
        False, "BackoffLimitExceeded: limit", 1, False)
    assert engines.JOB.read(job_with({"conditions": [condition("Failed", "DeadlineExceeded")]})).deadline_exceeded
    assert engines.JOB.read(job_with({"conditions": [condition("Complete")]})).outcome is True
    assert engines.JOB.read(job_with({}, suspend=True)).suspended


def test_a_jobset_s_conditions_and_restarts():
    def jobset(status: dict, **spec) -> dict:
        return {"kind": "JobSet", "metadata": {"name": "s"}, "spec": spec, "status": status}
    state = engines.JOBSET.read(jobset({"restarts": 2, "conditions": [
        condition("Failed", "ReachedMaxRestarts", "jobset failed due to reaching max number of restarts")]}))
    assert (state.outcome, state.attempt, state.failure) == (
        False, 2, "ReachedMaxRestarts: jobset failed due to reaching max number of restarts")
    assert engines.JOBSET.read(jobset({"conditions": [condition("Completed")]})).outcome is True
    running = engines.JOBSET.read(jobset({"conditions": [condition("StartupPolicyCompleted")]}, suspend=False))
    assert running.outcome is None and not running.suspended
    assert engines.JOBSET.read(jobset({"conditions": [condition("Suspended")]}, suspend=True)).suspended


# --- workers --------------------------------------------------------------------------------------------

def pod(name: str, index: int, phase: str, *, attempt: int = 0, exit_code: int = 1, finished: str = "",
        deleting: bool = False, jobset: bool = False) -> dict:
    label = "jobset.sigs.k8s.io/restart-attempt" if jobset else "ckpt.dev/restart-attempt"
    meta: dict = {"name": name, "labels": {label: str(attempt)},
                  "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:09Z"
    status: dict = {"phase": phase}
    if phase == "Failed":
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {
            "exitCode": exit_code, "reason": "Error", "finishedAt": finished}}}]
    return {"metadata": meta, "status": status}


def test_the_worker_that_failed_on_its_own_first_is_named():
    pods = [workers.worker_pod(p) for p in (
        pod("w-0", 0, "Failed", exit_code=143, finished="2026-01-01T00:00:05Z", deleting=True),  # stopped by the group
        pod("w-2", 2, "Failed", finished="2026-01-01T00:00:06Z"),
        pod("w-1", 1, "Failed", exit_code=3, finished="2026-01-01T00:00:06Z"),
        pod("old", 0, "Failed", attempt=0, finished="2026-01-01T00:00:01Z", jobset=True),
        pod("w-3", 3, "Running"))]
    first = workers.first_failure([p for p in pods if p.name != "old"], 0)
    assert first is not None and first.name == "w-1"
    assert first.failure == "worker 1 pod w-1: container trainer failed (Error, exit code 3)"
    assert [p.name for p in workers.live(pods)] == ["w-3"]
    assert workers.first_failure(pods, 1) is None
    assert workers.worker_pod(pod("x", 0, "Failed", attempt=2, jobset=True)).attempt == 2


# --- the group's decisions -------------------------------------------------------------------------------

def state(**kw) -> WorkloadState:
    values = {"kind": "Job", "name": "ddp", "attempt": 0, "suspended": False, "outcome": None, "stopped": False}
    return WorkloadState(**{**values, **kw})


def with_status(tj: TrainingJob, **status) -> TrainingJob:
    body = tj.to_wire()
    body["status"] = {**body.get("status", {}), **status}
    return TrainingJob.model_validate(body)


def test_a_failed_attempt_restarts_the_group_until_the_restarts_are_used_up():
    tj = with_status(typed(replicas=2, backoffLimit=2), phase="Running", restarts=1, workerFailure={
        "attempt": 1, "index": 1, "pod": "ddp-1-x", "message": "worker 1 pod ddp-1-x: container t failed (Error, "
                                                              "exit code 1)"})
    failed = state(attempt=1, outcome=False, stopped=True, failure="BackoffLimitExceeded: limit")
    change = flow.restart_change(tj, failed, 2, None)
    assert change is not None and set_fields(change.fields)["restarts"] == 2 and change.reason == "Restarting"
    assert "worker 1 pod ddp-1-x" in change.message and "restart 2 of 2" in change.message
    assert "CHECKPOINT_OUTPUT_DIR" in change.message
    assert flow.restart_change(with_status(tj, restarts=2), failed, 2, None) is None  # used up
    assert flow.restart_change(tj, state(attempt=1, outcome=False, stopped=True, deadline_exceeded=True), 2, None) is None
    assert flow.restart_change(tj, failed, 2, 0.5) is None  # no time left
    assert flow.restart_change(tj, state(outcome=True, stopped=True), 2, None) is None
    outcome = flow.group_outcome(with_status(tj, restarts=2), failed, "failed: BackoffLimitExceeded")
    assert "worker 1 pod ddp-1-x" in outcome and "after 2 group restart(s)" in outcome


def test_the_first_failure_is_recorded_once_per_attempt():
    tj = with_status(typed(replicas=2), phase="Running")
    pods = [workers.worker_pod(pod("w-1", 1, "Failed", finished="2026-01-01T00:00:06Z"))]
    change = flow.worker_failure_change(tj, state(), pods)
    assert change is not None and set_fields(change.fields)["workerFailure"]["index"] == 1
    recorded = with_status(tj, workerFailure=set_fields(change.fields)["workerFailure"])
    assert flow.worker_failure_change(recorded, state(), pods) is None
    assert flow.worker_failure_change(typed(), state(), pods) is None  # one pod: not a group


def test_a_failure_the_engine_restarted_before_it_was_seen_is_recorded_for_its_attempt():
    """JobSet restarted the group (attempt 1) before a pass saw attempt 0's failed pod, which is
    still in the index: it is recorded for attempt 0 (the restart's message names it), once."""
    tj = with_status(typed(replicas=2, engine="JobSet"), phase="Running")
    pods = [workers.worker_pod(pod("w-1", 1, "Failed", finished="2026-01-01T00:00:06Z", jobset=True)),
            workers.worker_pod(pod("w-0b", 0, "Running", attempt=1, jobset=True))]
    change = flow.worker_failure_change(tj, state(attempt=1), pods)
    assert change is not None
    assert {k: set_fields(change.fields)["workerFailure"][k] for k in ("attempt", "index")} == {"attempt": 0, "index": 1}
    recorded = with_status(tj, workerFailure=set_fields(change.fields)["workerFailure"])
    assert flow.worker_failure_change(recorded, state(attempt=1), pods) is None
    # An attempt's own failure still comes first.
    pods.append(workers.worker_pod(pod("w-0c", 0, "Failed", attempt=1, finished="2026-01-01T00:00:09Z",
                                       jobset=True)))
    later = flow.worker_failure_change(recorded, state(attempt=1), pods)
    assert later is not None and set_fields(later.fields)["workerFailure"]["attempt"] == 1


def test_preemption_queues_a_running_job_and_admission_runs_it_again():
    running = with_status(typed(replicas=2, labels={"kueue.x-k8s.io/queue-name": "q"}), phase="Running",
                          startTime="2026-01-01T00:00:00Z")
    preempted = flow.suspension_change(running, state(suspended=True), "q", "now")
    assert preempted is not None and preempted.phase == TrainingJobPhase.QUEUED and preempted.reason == "Preempted"
    assert set_fields(preempted.fields) == {"preemptions": 1} and "LocalQueue q" in preempted.message
    queued = with_status(running, phase="Queued", preemptions=1)
    assert flow.suspension_change(queued, state(suspended=True), "q", "now") is None
    admitted = flow.suspension_change(queued, state(), "q", "now")
    assert admitted is not None and admitted.phase == TrainingJobPhase.RUNNING and "after 1 preemption" in admitted.message
    first = flow.suspension_change(with_status(typed(), phase="Queued"), state(), "q", "now")
    assert first is not None and set_fields(first.fields) == {"startTime": "now", "suspendTransition": ""}


def test_a_preemption_undone_before_a_look_is_counted_once_from_the_workload_s_suspended_record():
    """Kueue suspended the running workload and admitted it again before any pass looked (hostile6
    R5): the workload runs, but its Suspended condition has a resume later than the one recorded.
    Counted once (Preempted, a Warning event), recorded; before, nothing was counted."""
    queued = with_status(typed(replicas=2, labels={"kueue.x-k8s.io/queue-name": "q"}), phase="Queued")
    admitted = flow.suspension_change(queued, state(suspend_transition="2026-01-01T00:00:05Z"), "q", "now")
    assert admitted is not None and admitted.phase == TrainingJobPhase.RUNNING
    assert set_fields(admitted.fields) == {"startTime": "now", "suspendTransition": "2026-01-01T00:00:05Z"}
    running = with_status(queued, phase="Running", startTime="now", suspendTransition="2026-01-01T00:00:05Z")
    assert flow.suspension_change(running, state(suspend_transition="2026-01-01T00:00:05Z"), "q", "now") is None
    resumed_again = state(suspend_transition="2026-01-01T00:00:13Z")
    change = flow.suspension_change(running, resumed_again, "q", "now")
    assert change is not None and change.reason == "Preempted" and change.event == "Warning"
    assert change.phase is None  # it runs again already
    assert set_fields(change.fields) == {"preemptions": 1, "suspendTransition": "2026-01-01T00:00:13Z"}
    assert "preempted by Kueue (LocalQueue q) and admitted again" in change.message
    counted = with_status(running, preemptions=1, suspendTransition="2026-01-01T00:00:13Z")
    assert flow.suspension_change(counted, resumed_again, "q", "now") is None  # once
    # Another one later is counted again.
    later = flow.suspension_change(counted, state(suspend_transition="2026-01-01T00:01:00Z"), "q", "now")
    assert later is not None and set_fields(later.fields)["preemptions"] == 2


def test_a_seen_preemption_is_not_counted_again_at_its_resume():
    """Seen suspended (counted, Queued), then admitted: the resume is recorded, not counted again."""
    running = with_status(typed(replicas=2, labels={"kueue.x-k8s.io/queue-name": "q"}), phase="Running",
                          startTime="t0", suspendTransition="2026-01-01T00:00:05Z")
    # spec.suspend set, its controller has not written the condition yet: the old resume's time.
    preempted = flow.suspension_change(running, state(suspended=True, suspend_transition="2026-01-01T00:00:05Z"),
                                       "q", "now")
    assert preempted is not None and set_fields(preempted.fields) == {"preemptions": 1}
    queued = with_status(running, phase="Queued", preemptions=1)
    assert flow.suspension_change(queued, state(suspended=True, suspend_transition="2026-01-01T00:00:09Z"),
                                  "q", "now") is None
    admitted = flow.suspension_change(queued, state(suspend_transition="2026-01-01T00:00:20Z"), "q", "now")
    assert admitted is not None and set_fields(admitted.fields) == {"suspendTransition": "2026-01-01T00:00:20Z"}
    again = with_status(queued, phase="Running", suspendTransition="2026-01-01T00:00:20Z")
    assert flow.suspension_change(again, state(suspend_transition="2026-01-01T00:00:20Z"), "q", "now") is None


def test_a_first_admission_not_recorded_is_recorded_not_counted():
    """Created suspended for Kueue and adopted running (or recorded by an earlier operator): its
    one resume is its admission. Without a queue the workload was created running: any resume
    follows a suspension, counted."""
    adopted = with_status(typed(replicas=2, labels={"kueue.x-k8s.io/queue-name": "q"}), phase="Running")
    change = flow.suspension_change(adopted, state(suspend_transition="2026-01-01T00:00:05Z"), "q", "now")
    assert change is not None and change.reason is None
    assert set_fields(change.fields) == {"suspendTransition": "2026-01-01T00:00:05Z"}
    unqueued = with_status(typed(replicas=2), phase="Running")
    assert flow.suspension_change(unqueued, state(), None, "now") is None  # never suspended
    # Admitted before its controller wrote any Suspended condition (a JobSet admitted at once):
    # "" recorded, and the first condition written later is a preemption's.
    queued = with_status(typed(replicas=2, engine="JobSet", labels={"kueue.x-k8s.io/queue-name": "q"}), phase="Queued")
    admitted = flow.suspension_change(queued, state(kind="JobSet"), "q", "now")
    assert admitted is not None and set_fields(admitted.fields)["suspendTransition"] == ""
    running = with_status(queued, phase="Running", suspendTransition="")
    later = flow.suspension_change(running, state(kind="JobSet", suspend_transition="2026-01-01T00:00:05Z"), "q", "now")
    assert later is not None and later.reason == "Preempted"
    change = flow.suspension_change(unqueued, state(suspend_transition="2026-01-01T00:00:05Z"), None, "now")
    assert change is not None and change.reason == "Preempted" and "suspended (spec.suspend)" in change.message
    # A group with a volume per worker: counted as any preemption, so the operator makes the group again
    # after the resume step (hostile7 R1: flow.attempt_of counts preemptions there).
    per_worker = with_status(typed(replicas=2, engine="JobSet", output={"volumePerWorker": True},
                                   labels={"kueue.x-k8s.io/queue-name": "q"}),
                             phase="Running", suspendTransition="2026-01-01T00:00:05Z")
    quick = flow.suspension_change(per_worker, state(kind="JobSet", suspend_transition="2026-01-01T00:00:09Z"), "q", "n")
    assert quick is not None and set_fields(quick.fields)["preemptions"] == 1
    assert "the resume step copies the latest checkpoint" in quick.message
    assert flow.attempt_of(with_status(per_worker, preemptions=1)) == 1


def test_the_workload_s_suspended_condition_is_read_from_jobs_and_jobsets():
    """What the Job controller and JobSet's write: Suspended True on a suspension, False (JobResumed,
    ResumeJobs) on the resume, each with its lastTransitionTime; a resume its controller has not
    done yet (spec.suspend false, condition still True) is still suspended."""
    for engine, kind, reason in ((engines.JOB, "Job", "JobResumed"), (engines.JOBSET, "JobSet", "ResumeJobs")):
        resumed = {"kind": kind, "metadata": {"name": "ddp"}, "spec": {"suspend": False}, "status": {"conditions": [
            {"type": "Suspended", "status": "False", "reason": reason, "lastTransitionTime": "2026-01-01T00:00:13Z"}]}}
        read = engine.read(resumed)
        assert read.suspended is False and read.suspend_transition == "2026-01-01T00:00:13Z"
        pending = {**resumed, "status": {"conditions": [{"type": "Suspended", "status": "True",
                                                         "lastTransitionTime": "2026-01-01T00:00:09Z"}]}}
        assert engine.read(pending).suspended is True
        never = {"kind": kind, "metadata": {"name": "ddp"}, "spec": {}}
        assert engine.read(never).suspend_transition is None and engine.read(never).suspended is False


def test_a_queued_workload_starts_queued():
    change = flow.running_change("ddp", [], None, "now", queue="team-a", kind="JobSet")
    assert change.phase == TrainingJobPhase.QUEUED and change.reason == "Queued"
    assert "startTime" not in set_fields(change.fields)
    assert "JobSet ddp is queued in Kueue (LocalQueue team-a)" in change.message


def test_a_restarted_group_queued_in_kueue_is_queued_not_preempted():
    """Engine Job: a group restart creates a new Job, suspended for Kueue; the job is Queued until
    Kueue admits it, and that is no preemption (before, the next look counted one)."""
    running = with_status(typed(replicas=2, labels={"kueue.x-k8s.io/queue-name": "q"}), phase="Running",
                          startTime="2026-01-01T00:00:00Z", restarts=1)
    change = flow.attempt_started_change(running, "Job", "ddp", "ddp-0.ddp:29500", "q")
    assert change.phase == TrainingJobPhase.QUEUED and change.reason == "Queued"
    assert "attempt 2" in change.message and "LocalQueue q" in change.message
    assert set_fields(change.fields) == {"rendezvous": "ddp-0.ddp:29500", "suspendTransition": None}
    queued = with_status(running, phase="Queued")
    assert flow.suspension_change(queued, state(suspended=True), "q", "now") is None  # not counted as preempted
    admitted = flow.suspension_change(queued, state(), "q", "now")
    assert admitted is not None and admitted.phase == TrainingJobPhase.RUNNING
    assert "preemption" not in admitted.message
    assert set_fields(admitted.fields) == {"suspendTransition": ""}  # startTime kept: the deadline counts on
    unqueued = flow.attempt_started_change(with_status(typed(replicas=2), phase="Running", restarts=1), "Job", "ddp",
                                           "ddp-0.ddp:29500", None)
    assert unqueued.phase is None and unqueued.reason is None  # runs at once: stays Running



def test_a_jobset_restart_is_recorded_with_the_worker_that_failed():
    tj = with_status(typed(engine="JobSet", replicas=2), phase="Running", workerFailure={
        "attempt": 0, "index": 0, "pod": "p", "message": "worker 0 pod p: container t failed (OOMKilled, exit code 137)"})
    change = flow.engine_restarts_change(tj, state(kind="JobSet", attempt=1), 6)
    assert change is not None and set_fields(change.fields) == {"restarts": 1} and "OOMKilled" in change.message
    assert flow.engine_restarts_change(with_status(tj, restarts=1), state(kind="JobSet", attempt=1), 6) is None


def test_the_deadline_left_counts_from_the_job_s_start():
    from datetime import datetime, timezone
    tj = with_status(typed(activeDeadlineSeconds=100), startTime="2026-01-01T00:00:00Z")
    assert flow.deadline_left(tj, datetime(2026, 1, 1, 0, 1, 0, tzinfo=timezone.utc)) == 40
    assert flow.deadline_left(typed(), datetime.now(timezone.utc)) is None


def test_what_a_workload_created_before_a_crash_publishes_is_read_from_either_engine():
    live = typed(engine="JobSet", replicas=2, output={"publish": "Continuous"})
    sidecar = workload.build_live_sidecar(live, CONFIG, None, [])
    assert flow.publish_mode_of_job(build(live, sidecar=sidecar).job) == "Continuous"
    assert flow.publish_mode_of_job(build(typed(engine="JobSet", replicas=2)).job) == "OnCompletion"
    job = typed(replicas=2, output={"publish": "Continuous"})
    assert flow.publish_mode_of_job(build(job, sidecar=workload.build_live_sidecar(job, CONFIG, None, [])).job) \
        == "Continuous"


def test_the_jobset_controller_names_each_child_job_jobset_replicated_job_index():
    """Its GenJobName (jobset pkg/util/names, and local/jobsets.py job_name): `<jobset>-<rjob>-<index>`."""
    from checkpoint_operator.local import jobsets
    assert engines.jobset_child_job_name("ddp", "node-3", 0) == "ddp-node-3-0"
    assert engines.jobset_child_job_name("ddp", "node", 2) == jobsets.job_name("ddp", "node", 2) == "ddp-node-2"


@pytest.mark.parametrize("spec, expected", [
    ({"replicas": 1}, ["ddp"]),
    ({"replicas": 3}, ["ddp"]),
    ({"replicas": 3, "engine": "JobSet"}, ["ddp-node-0"]),
    # F6: each worker its own replicated job `node-<i>`, so its Job is `ddp-node-<i>-0`; the one
    # looked at was `ddp-node-0`, a Job no JobSet of this shape has.
    ({"replicas": 3, "engine": "JobSet", "output": {"volumePerWorker": True}},
     ["ddp-node-0-0", "ddp-node-1-0", "ddp-node-2-0"]),
])
def test_the_jobs_that_make_the_pods_are_the_ones_each_shape_s_controller_creates(spec, expected):
    """The Jobs whose FailedCreate events say why the pods are refused: the Job itself, or the
    Jobs the JobSet controller makes of every replicated job (local/jobsets.py, as JobSet does)."""
    from checkpoint_operator.local import jobsets
    obj = build(typed(name="ddp", **spec)).job
    obj["metadata"]["name"] = "ddp"
    names = engines.engine_of(typed(name="ddp", **spec)).pod_job_names(obj)
    assert names == expected
    if obj["kind"] == "JobSet":  # what the local JobSet controller creates, as the real one
        made = [jobsets.job_name("ddp", r["name"], i) for r in obj["spec"]["replicatedJobs"] for i in range(r["replicas"])]
        assert names == made


def test_each_attempt_records_the_uid_of_its_new_workload():
    """Issue 23 item 9: only pods the recorded workload controls are workers, and a group restart
    (engine Job) creates a new Job: its UID is recorded in the status write of the attempt."""
    started = flow.running_change("ddp", [], None, "now", kind="Job", job_uid="uid-attempt-0")
    assert set_fields(started.fields)["jobUid"] == "uid-attempt-0"
    running = with_status(typed(replicas=2), phase="Running", restarts=1, jobUid="uid-attempt-0")
    again = flow.attempt_started_change(running, "Job", "ddp", "ddp-0.ddp:29500", None, "uid-attempt-1")
    assert set_fields(again.fields) == {"rendezvous": "ddp-0.ddp:29500", "jobUid": "uid-attempt-1",
                                        "suspendTransition": None}
    unknown = flow.attempt_started_change(running, "Job", "ddp", None, None)
    assert "jobUid" not in set_fields(unknown.fields)  # never erased by a write that does not know it


def test_a_worker_pod_carries_the_uid_of_its_controller_only():
    body = pod("w-0", 0, "Running")
    body["metadata"]["ownerReferences"] = [{"kind": "ConfigMap", "uid": "not-a-controller"},
                                           {"kind": "Job", "uid": "job-uid", "controller": True}]
    assert workers.worker_pod(body).controller_uid == "job-uid"
    body["metadata"]["ownerReferences"] = [{"kind": "Job", "uid": "job-uid"}]  # an owner, not the controller
    assert workers.worker_pod(body).controller_uid is None
    assert workers.worker_pod(pod("w-1", 1, "Running")).controller_uid is None
