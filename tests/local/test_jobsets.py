"""The local cluster's JobSet controller and Kueue stand-in (checkpoint_operator.local.jobsets,
local.kueue), and the Job controller's suspension, with real pod commands. JobSets are created
through JobSet's published CRD (tests/schemas/), as the `cluster` fixture installs it."""

from __future__ import annotations

import sys

import pytest

from checkpoint_operator.local.cluster import LocalCluster
from checkpoint_operator.local.server import ApiClient, ApiError

NS = "default"
JOBSETS = "jobset.x-k8s.io/v1alpha2/jobsets"
JOBS = "batch/v1/jobs"


def jobset(name: str, code: str, *, parallelism: int = 2, max_restarts: int | None = 1, rules: list | None = None,
           **spec: object) -> dict:
    job_spec = {"parallelism": parallelism, "completions": parallelism, "completionMode": "Indexed", "backoffLimit": 0,
                "template": {"spec": {"restartPolicy": "Never", "containers": [
                    {"name": "main", "image": "x", "command": [sys.executable, "-c", code]}]}}}
    body: dict = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": name},
                  "spec": {"replicatedJobs": [{"name": "node", "replicas": 1, "template": {"spec": job_spec}}],
                           "network": {"enableDNSHostnames": True}, "successPolicy": {"operator": "All"}, **spec}}
    if max_restarts is not None:
        body["spec"]["failurePolicy"] = {"maxRestarts": max_restarts, "rules": rules or []}
    return body


def conditions(obj: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c.get("reason", "")) for c in obj.get("status", {}).get("conditions") or []}


async def until(api: ApiClient, wait_for, resource: str, name: str, test, timeout: float = 30) -> dict:
    async def check():
        obj = await api.get(resource, NS, name)
        return obj if obj is not None and test(obj) else None
    return await wait_for(check, timeout=timeout)


async def test_a_jobset_runs_its_child_job_with_names_labels_and_a_headless_service(api, cluster, wait_for):
    code = "import os; print(os.environ['HOSTNAME'], os.environ['JOB_COMPLETION_INDEX'])"
    await api.create(JOBSETS, NS, jobset("js", code, coordinator={"replicatedJob": "node", "jobIndex": 0,
                                                                  "podIndex": 0}))
    done = await until(api, wait_for, JOBSETS, "js", lambda o: "Completed" in conditions(o))
    assert conditions(done)["Completed"] == ("True", "AllJobsCompleted") and done["status"]["terminalState"] == "Completed"
    assert done["status"]["replicatedJobsStatus"][0]["succeeded"] == 1
    job = await api.get(JOBS, NS, "js-node-0")
    labels = job["metadata"]["labels"]
    assert (labels["jobset.sigs.k8s.io/jobset-name"], labels["jobset.sigs.k8s.io/replicatedjob-name"],
            labels["jobset.sigs.k8s.io/restart-attempt"], labels["jobset.sigs.k8s.io/job-index"]) == ("js", "node", "0", "0")
    assert job["metadata"]["ownerReferences"][0]["kind"] == "JobSet"
    pods = await api.list("v1/pods", NS, label_selector="jobset.sigs.k8s.io/jobset-name=js")
    assert sorted(p["spec"]["hostname"] for p in pods) == ["js-node-0-0", "js-node-0-1"]
    assert {p["spec"]["subdomain"] for p in pods} == {"js"}
    assert {p["metadata"]["labels"]["jobset.sigs.k8s.io/coordinator"] for p in pods} == {"js-node-0-0.js"}
    logs = [(await api.read_log(NS, p["metadata"]["name"])).strip() for p in pods]
    assert sorted(logs) == ["js-node-0-0 0", "js-node-0-1 1"]
    service = await api.get("v1/services", NS, "js")
    assert service["spec"] == {"clusterIP": "None", "selector": {"jobset.sigs.k8s.io/jobset-name": "js"},
                               "publishNotReadyAddresses": True}


async def test_a_failed_child_job_restarts_the_whole_set_until_max_restarts(api, cluster, wait_for):
    await api.create(JOBSETS, NS, jobset("fails", "import sys; sys.exit(1)", max_restarts=2))
    failed = await until(api, wait_for, JOBSETS, "fails", lambda o: "Failed" in conditions(o), timeout=60)
    assert failed["status"]["restarts"] == 2 and failed["status"]["restartsCountTowardsMax"] == 2
    assert conditions(failed)["Failed"] == ("True", "ReachedMaxRestarts")
    message = next(c["message"] for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert message == "jobset failed due to reaching max number of restarts (first failed job: fails-node-0)"
    assert conditions(failed)["RestartingJobSet"] == ("False", "JobSetFailed")
    job = await api.get(JOBS, NS, "fails-node-0")
    assert job["metadata"]["labels"]["jobset.sigs.k8s.io/restart-attempt"] == "2"  # the third attempt's Job


async def test_a_failure_policy_rule_fails_the_set_at_once(api, cluster, wait_for):
    body = jobset("deadline", "import time; time.sleep(30)", max_restarts=5, rules=[
        {"name": "deadline", "action": "FailJobSet", "onJobFailureReasons": ["DeadlineExceeded"]}])
    body["spec"]["replicatedJobs"][0]["template"]["spec"]["activeDeadlineSeconds"] = 1
    await api.create(JOBSETS, NS, body)
    failed = await until(api, wait_for, JOBSETS, "deadline", lambda o: "Failed" in conditions(o))
    assert conditions(failed)["Failed"] == ("True", "FailJobSetFailurePolicyAction")
    assert failed["status"].get("restarts", 0) == 0


async def test_suspending_a_jobset_stops_its_pods_and_resuming_runs_them_again(api, cluster, wait_for):
    code = ("import os, time, pathlib; d = pathlib.Path(os.environ['OUT']); "
            "(d / f\"run-{os.environ['JOB_COMPLETION_INDEX']}-{os.getpid()}\").touch(); time.sleep(1)")
    body = jobset("susp", code, suspend=True)
    container = body["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "OUT", "value": str(cluster.data_dir)}]
    await api.create(JOBSETS, NS, body)
    suspended = await until(api, wait_for, JOBSETS, "susp", lambda o: "Suspended" in conditions(o))
    assert conditions(suspended)["Suspended"] == ("True", "SuspendedJobs")
    assert (await api.get(JOBS, NS, "susp-node-0"))["spec"]["suspend"] is True
    assert await api.list("v1/pods", NS) == []
    await api.patch(JOBSETS, NS, "susp", {"spec": {"suspend": False}})
    done = await until(api, wait_for, JOBSETS, "susp", lambda o: "Completed" in conditions(o))
    assert conditions(done)["Suspended"] == ("False", "ResumeJobs")
    assert len(list(cluster.data_dir.glob("run-*"))) == 2


async def test_a_suspended_job_deletes_its_pods_without_counting_them_failed(api, cluster, wait_for):
    code = "import time; time.sleep(30)"
    await api.create(JOBS, NS, {"metadata": {"name": "held"}, "spec": {
        "parallelism": 2, "completions": 2, "completionMode": "Indexed", "backoffLimit": 0,
        "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "main", "image": "x", "command": [sys.executable, "-c", code]}]}}}})
    await until(api, wait_for, JOBS, "held", lambda o: o.get("status", {}).get("active") == 2)
    await api.patch(JOBS, NS, "held", {"spec": {"suspend": True}})
    job = await until(api, wait_for, JOBS, "held", lambda o: o["status"].get("active") == 0
                      and o["status"].get("terminating") == 0 and "Suspended" in conditions(o))
    assert job["status"]["failed"] == 0 and "Failed" not in conditions(job) and "startTime" not in job["status"]
    await api.patch(JOBS, NS, "held", {"spec": {"suspend": False}})
    job = await until(api, wait_for, JOBS, "held", lambda o: o["status"].get("active") == 2)
    assert conditions(job)["Suspended"] == ("False", "JobResumed") and job["status"]["startTime"]


@pytest.fixture
def reported() -> list[str]:
    return []


@pytest.fixture
async def kueue_cluster(api_url: str, tmp_path, reported: list[str]):
    async with LocalCluster(api_url, tmp_path / "cluster", report=reported.append) as local_cluster:
        yield local_cluster


async def test_the_kueue_stand_in_admits_a_queued_job_and_preempts_it(api, kueue_cluster, wait_for, reported):
    await api.create(JOBS, NS, {"metadata": {"name": "queued", "labels": {"kueue.x-k8s.io/queue-name": "team-a"}},
                                "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
                                    {"name": "m", "image": "x", "command": [sys.executable, "-c",
                                                                            "import time; time.sleep(30)"]}]}}}})
    await until(api, wait_for, JOBS, "queued", lambda o: o.get("status", {}).get("active") == 1)
    assert reported == ["kueue (local stand-in): admitted Job default/queued (LocalQueue team-a: admitted at once, "
                        "no quota here)"]
    await kueue_cluster.preempt(JOBS, NS, "queued", hold=0.5)
    await until(api, wait_for, JOBS, "queued", lambda o: "Suspended" in conditions(o)
                and conditions(o)["Suspended"][0] == "True")
    job = await until(api, wait_for, JOBS, "queued", lambda o: not o["spec"].get("suspend")
                      and o["status"].get("active") == 1)
    assert job["status"]["failed"] == 0
    assert reported[1].startswith("kueue (local stand-in): preempted jobs default/queued")
    assert reported[2].startswith("kueue (local stand-in): admitted again Job default/queued")


async def test_the_kueue_stand_in_leaves_unlabelled_and_jobset_owned_jobs_alone(api, kueue_cluster, wait_for,
                                                                               reported):
    await api.create(JOBS, NS, {"metadata": {"name": "mine"}, "spec": {"suspend": True, "template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "m", "image": "x", "command": ["true"]}]}}}})
    kueue_cluster.resync()
    await kueue_cluster.kueue_queue.stop()  # every queued key handled
    assert (await api.get(JOBS, NS, "mine"))["spec"]["suspend"] is True and reported == []


async def test_a_jobset_is_refused_by_its_published_schema_as_the_api_server_would(api, cluster):
    bad = jobset("bad", "pass")
    bad["spec"]["replicatedJobs"][0]["replicas"] = "one"
    with pytest.raises(ApiError) as refused:
        await api.create(JOBSETS, NS, bad)
    assert refused.value.status == 422
