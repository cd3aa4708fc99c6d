"""The local cluster (checkpoint_operator.local.cluster): PVC binder, Job controller, kubelet, GC."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import pytest

from checkpoint_operator.local.cluster import LocalCluster
from checkpoint_operator.local.podview import Mount, PodView
from checkpoint_operator.local.server import ApiClient

NS = "default"
COMPLETE = [("SuccessCriteriaMet", "CompletionsReached"), ("Complete", "CompletionsReached")]  # Kubernetes 1.31+


def claim(name: str, owner: dict | None = None) -> dict:
    metadata: dict = {"name": name}
    if owner:
        metadata["ownerReferences"] = [owner]
    return {"metadata": metadata, "spec": {"accessModes": ["ReadWriteOnce"],
                                           "resources": {"requests": {"storage": "1Gi"}}}}


def job(name: str, containers: list[dict], *, volumes: list[dict] | None = None, init: list[dict] | None = None,
        **spec: object) -> dict:
    pod_spec: dict = {"restartPolicy": "Never", "containers": containers, "volumes": volumes or []}
    if init:
        pod_spec["initContainers"] = init
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {"metadata": {"labels": {"app": "t"}}, "spec": pod_spec}, **spec}}


def python_container(name: str, code: str, **extra: object) -> dict:
    return {"name": name, "image": "ignored", "command": ["python", "-c", code], **extra}


async def finished_job(api: ApiClient, wait_for, name: str, timeout: float = 10) -> dict:
    async def finished() -> dict | None:
        obj = await api.get("batch/v1/jobs", NS, name)
        conditions = obj.get("status", {}).get("conditions") or []
        return obj if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions) else None
    return await wait_for(finished, timeout=timeout)


def condition_types(obj: dict) -> list[tuple[str, str | None]]:
    return [(c["type"], c.get("reason")) for c in obj["status"].get("conditions", [])]


async def job_pods(api: ApiClient, name: str) -> list[dict]:
    return await api.list("v1/pods", NS, label_selector=f"job-name={name}")


async def test_pvc_is_bound_to_a_directory(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    created = await api.create("v1/persistentvolumeclaims", NS, claim("data"))
    bound = await wait_for(lambda: _phase_is(api, "v1/persistentvolumeclaims", "data", "Bound"))
    assert bound["status"]["capacity"] == {"storage": "1Gi"}
    directory = cluster.claim_dir(NS, "data")
    assert directory.is_dir() and directory.name == f"data-{created['metadata']['uid'][:8]}"


async def test_a_claim_s_directory_is_known_before_its_bound_status_is_written(
        api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    """Whoever reads Bound from the API (a test, a user of --serve) finds the claim's directory: the
    binder remembers it before it writes the status (it was after: read in between, it was None)."""
    binder = cluster.binder
    seen: dict[str, object] = {}
    patch = binder.api.patch

    async def watching_patch(resource, namespace, name, body, *args, **kwargs):
        if resource == "v1/persistentvolumeclaims" and kwargs.get("subresource") == "status" \
                and (body.get("status") or {}).get("phase") == "Bound":
            seen[name] = cluster.claim_dir(namespace, name)
        return await patch(resource, namespace, name, body, *args, **kwargs)
    binder.api = type("Watched", (), {"__getattr__": lambda self, attr: getattr(api_of_binder, attr),
                                      "patch": staticmethod(watching_patch)})()
    api_of_binder = patch.__self__
    try:
        await api.create("v1/persistentvolumeclaims", NS, claim("early"))
        await wait_for(lambda: _phase_is(api, "v1/persistentvolumeclaims", "early", "Bound"))
    finally:
        binder.api = api_of_binder
    assert isinstance(seen.get("early"), Path) and seen["early"].is_dir()


async def _phase_is(api: ApiClient, resource: str, name: str, phase: str) -> dict | None:
    obj = await api.get(resource, NS, name)
    return obj if obj and obj.get("status", {}).get("phase") == phase else None


async def test_a_claim_with_the_longest_valid_name_is_bound(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    name = "c" * 253  # with the uid suffix, more than a file name may have
    await api.create("v1/persistentvolumeclaims", NS, claim(name))
    await wait_for(lambda: _phase_is(api, "v1/persistentvolumeclaims", name, "Bound"))
    assert cluster.claim_dir(NS, name).is_dir()


async def test_job_writes_into_its_claim_and_completes(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    await api.create("v1/persistentvolumeclaims", NS, claim("out"))
    code = ("import os, pathlib; d = pathlib.Path(os.environ['OUT']) / 'step-1'; d.mkdir(); "
            "(d / 'w.bin').write_text(os.environ['POD'] + ' ' + os.environ['SECRET']); print('{\"done\": 1}')")
    await api.create("v1/secrets", NS, {"metadata": {"name": "s"}, "data": {"token": base64.b64encode(b"t0k").decode()}})
    await api.create("batch/v1/jobs", NS, job("train", [python_container("main", code, env=[
        {"name": "OUT", "value": "/output-checkpoint"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
    ], volumeMounts=[{"name": "out", "mountPath": "/output-checkpoint"}])],
        volumes=[{"name": "out", "persistentVolumeClaim": {"claimName": "out"}}]))
    done = await finished_job(api, wait_for, "train")
    assert condition_types(done) == COMPLETE
    assert done["status"]["succeeded"] == 1 and done["status"]["active"] == 0
    assert done["status"]["startTime"] and done["status"]["completionTime"]
    [pod] = await job_pods(api, "train")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert pod["metadata"]["name"].startswith("train-") and pod["metadata"]["labels"]["app"] == "t"
    assert pod["metadata"]["labels"]["controller-uid"] == done["metadata"]["uid"]
    assert pod["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"]
    written = cluster.claim_dir(NS, "out") / "step-1" / "w.bin"
    assert written.read_text() == f"{pod['metadata']['name']} t0k"
    assert json.loads(await api.read_log(NS, pod["metadata"]["name"])) == {"done": 1}


async def test_failing_pods_are_retried_up_to_the_backoff_limit(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    await api.create("batch/v1/jobs", NS, job("flaky", [python_container(
        "main", "import sys; print('out', flush=True); print('boom', file=sys.stderr); sys.exit(3)")], backoffLimit=2))
    done = await finished_job(api, wait_for, "flaky")
    assert condition_types(done) == [("FailureTarget", "BackoffLimitExceeded"), ("Failed", "BackoffLimitExceeded")]
    pods = await job_pods(api, "flaky")
    assert len(pods) == 3 and done["status"]["failed"] == 3
    assert {p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods} == {3}
    assert await api.read_log(NS, pods[0]["metadata"]["name"]) == "out\nboom\n"  # both streams, as written


async def test_a_failed_indexed_job_is_failed_only_once_every_pod_has_stopped(api: ApiClient, cluster: LocalCluster,
                                                                               wait_for) -> None:
    """Issue 18.7: two pods that exit 1 a second after start, backoffLimit 0. The Job controller
    stops the other pod, and (as Kubernetes 1.31+ does) adds Failed only once no pod is left
    terminating: before, the Job was Failed with `terminating: 1` forever (a pod object that no
    longer existed), and whatever waited for the pods to stop waited until its timeout."""
    await api.create("batch/v1/jobs", NS, job("pair", [python_container(
        "main", "import time, sys; time.sleep(1); sys.exit(1)")], completions=2, parallelism=2,
        completionMode="Indexed", backoffLimit=0))
    done = await finished_job(api, wait_for, "pair")
    assert condition_types(done) == [("FailureTarget", "BackoffLimitExceeded"), ("Failed", "BackoffLimitExceeded")]
    assert done["status"]["active"] == 0 and done["status"]["terminating"] == 0
    assert done["status"]["failed"] >= 1
    await wait_for(lambda: _all_pods_stopped(api, "pair"))


async def _all_pods_stopped(api: ApiClient, job_name: str) -> bool:
    return all(p["status"].get("phase") in ("Succeeded", "Failed") for p in await job_pods(api, job_name))


async def test_active_deadline_fails_the_job_and_stops_its_pod(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    await api.create("batch/v1/jobs", NS, job("slow", [python_container("main", "import time; time.sleep(30)")],
                                              activeDeadlineSeconds=1))
    done = await finished_job(api, wait_for, "slow")
    assert condition_types(done) == [("FailureTarget", "DeadlineExceeded"), ("Failed", "DeadlineExceeded")]
    await wait_for(lambda: _no_pods(api, "slow"))


async def _no_pods(api: ApiClient, job_name: str) -> bool:
    return not await job_pods(api, job_name)


async def test_indexed_job_gives_each_pod_its_index(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    await api.create("v1/persistentvolumeclaims", NS, claim("shared"))
    code = "import os; open(f\"/shared/{os.environ['JOB_COMPLETION_INDEX']}\", 'w').write('x')"
    await api.create("batch/v1/jobs", NS, job("idx", [python_container(
        "main", code.replace("/shared", "$(SHARED)"), env=[{"name": "SHARED", "value": "/shared"}],
        volumeMounts=[{"name": "v", "mountPath": "/shared"}])],
        volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "shared"}}],
        completions=2, parallelism=2, completionMode="Indexed"))
    done = await finished_job(api, wait_for, "idx")
    assert condition_types(done) == [("SuccessCriteriaMet", "CompletionsReached"), ("Complete", "CompletionsReached")]
    assert done["status"]["completedIndexes"] == "0,1"
    assert sorted(p.name for p in cluster.claim_dir(NS, "shared").iterdir()) == ["0", "1"]
    pods = await job_pods(api, "idx")
    assert sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]


async def test_init_container_runs_first_and_shares_an_empty_dir(api: ApiClient, cluster: LocalCluster,
                                                                  wait_for) -> None:
    mount = [{"name": "scratch", "mountPath": "/scratch"}]
    await api.create("batch/v1/jobs", NS, job(
        "staged",
        # Only whole arguments (and env values) are paths to translate: the path goes in argv.
        init=[python_container("fetch", "import sys; open(sys.argv[1], 'w').write('from init')",
                               args=["/scratch/in.txt"], volumeMounts=mount)],
        containers=[python_container("main", "import sys; print(open(sys.argv[1]).read())",
                                     args=["/scratch/in.txt"], volumeMounts=mount)],
        volumes=[{"name": "scratch", "emptyDir": {}}]))
    done = await finished_job(api, wait_for, "staged")
    assert condition_types(done) == COMPLETE
    [pod] = await job_pods(api, "staged")
    assert await api.read_log(NS, pod["metadata"]["name"], container="main") == "from init\n"
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


async def test_bare_pod_waits_for_its_claim(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    await api.create("v1/pods", NS, {"metadata": {"name": "early"}, "spec": {
        "containers": [python_container("main", "import os, sys; print(os.listdir(sys.argv[1]))", args=["/data"],
                                        volumeMounts=[{"name": "d", "mountPath": "/data"}])],
        "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "late"}}]}})
    await asyncio.sleep(0.3)
    assert (await api.get("v1/pods", NS, "early"))["status"]["phase"] == "Pending"
    await api.create("v1/persistentvolumeclaims", NS, claim("late"))
    await wait_for(lambda: _phase_is(api, "v1/pods", "early", "Succeeded"))
    assert await api.read_log(NS, "early") == "[]\n"


async def test_container_runner_plays_the_training_code(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    seen: dict = {}

    async def training(pod: dict, container: dict, env: dict, mounts: dict) -> int | None:
        seen.update(env=env, mounts=mounts)
        (Path(env["CHECKPOINT_OUTPUT_DIR"]) / "model.bin").write_bytes(b"weights")
        return 0

    cluster.set_container_runner(training)
    await api.create("v1/persistentvolumeclaims", NS, claim("out"))
    await api.create("batch/v1/jobs", NS, job("user", [{
        "name": "main", "image": "my/training", "env": [{"name": "CHECKPOINT_OUTPUT_DIR", "value": "/output-checkpoint"}],
        "volumeMounts": [{"name": "o", "mountPath": "/output-checkpoint"}]}],
        volumes=[{"name": "o", "persistentVolumeClaim": {"claimName": "out"}}]))
    assert condition_types(await finished_job(api, wait_for, "user")) == COMPLETE
    assert (cluster.claim_dir(NS, "out") / "model.bin").read_bytes() == b"weights"
    assert seen["mounts"] == {"/output-checkpoint": str(cluster.claim_dir(NS, "out"))}


async def test_checkpoint_operator_command_runs_the_package_cli(api: ApiClient, cluster: LocalCluster,
                                                                 wait_for) -> None:
    await api.create("v1/pods", NS, {"metadata": {"name": "cli"}, "spec": {"containers": [
        {"name": "main", "image": "x", "command": ["checkpoint-operator", "--help"]}]}})
    await wait_for(lambda: _phase_is(api, "v1/pods", "cli", "Succeeded"))
    assert "checkpoint-operator" in await api.read_log(NS, "cli")


async def test_gc_deletes_a_claim_whose_owner_is_gone(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    owner = await api.create("ckpt.dev/v1alpha1/trainingjobs", NS, {"metadata": {"name": "tj"}, "spec": {
        "template": {"spec": {"containers": [{"name": "main", "image": "x"}]}}}})
    ref = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "name": "tj", "uid": owner["metadata"]["uid"]}
    await api.create("v1/persistentvolumeclaims", NS, claim("owned", owner=ref))
    await wait_for(lambda: _phase_is(api, "v1/persistentvolumeclaims", "owned", "Bound"))
    directory = cluster.claim_dir(NS, "owned")
    await asyncio.sleep(0.3)
    assert await api.get("v1/persistentvolumeclaims", NS, "owned")  # the owner exists: kept
    await api.delete("ckpt.dev/v1alpha1/trainingjobs", NS, "tj")
    await wait_for(lambda: _gone(api, "v1/persistentvolumeclaims", "owned"))
    await wait_for(lambda: not directory.exists())


async def test_gc_drops_the_reference_to_a_deleted_owner_and_keeps_the_object_of_its_other_owners(
        api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    """As the Kubernetes garbage collector: a dependent with owners left is not deleted, and the
    reference to the owner that is gone is removed (it stayed before)."""
    refs = []
    for name in ("a", "b"):
        owner = await api.create("ckpt.dev/v1alpha1/trainingjobs", NS, {"metadata": {"name": name}, "spec": {
            "template": {"spec": {"containers": [{"name": "main", "image": "x"}]}}}})
        refs.append({"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "name": name,
                     "uid": owner["metadata"]["uid"]})
    body = claim("shared")
    body["metadata"]["ownerReferences"] = refs
    await api.create("v1/persistentvolumeclaims", NS, body)
    await api.delete("ckpt.dev/v1alpha1/trainingjobs", NS, "a")

    async def owners() -> list[str] | None:
        obj = await api.get("v1/persistentvolumeclaims", NS, "shared")
        names = [r["name"] for r in obj["metadata"]["ownerReferences"]]
        return names if names == ["b"] else None
    await wait_for(owners)
    await api.delete("ckpt.dev/v1alpha1/trainingjobs", NS, "b")
    await wait_for(lambda: _gone(api, "v1/persistentvolumeclaims", "shared"))


def test_a_writes_answer_that_removed_the_object_does_not_put_it_back_into_the_cache() -> None:
    """Removing the last finalizer of a deleting object removes it; the write's answer (the object with
    its deletionTimestamp and no finalizer) may come after the watch's DELETED event: it must not bring
    the object back. It did, and a VolumeSnapshot waited forever on a content the cache still had."""
    from checkpoint_operator.local.informer import Informer
    changes: list = []
    informer = Informer(None, "v1/persistentvolumeclaims", "default", lambda old, new: changes.append((old, new)))
    live = {"metadata": {"name": "c", "namespace": "default", "uid": "u", "resourceVersion": "5",
                         "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["x"]}}
    informer.observe(live)
    informer._apply("DELETED", {**live, "metadata": {**live["metadata"], "resourceVersion": "6", "finalizers": []}})
    informer.observe({**live, "metadata": {**live["metadata"], "resourceVersion": "6", "finalizers": []}})
    assert informer.get("default", "c") is None
    assert [new is None for _, new in changes] == [False, True]


async def test_gc_deletes_pods_of_a_deleted_job(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    await api.create("batch/v1/jobs", NS, job("gone", [python_container("main", "import time; time.sleep(30)")]))
    await wait_for(lambda: _running_pods(api, "gone"))
    await api.delete("batch/v1/jobs", NS, "gone", propagation_policy="Background")
    await wait_for(lambda: _no_pods(api, "gone"))


async def test_a_job_deleted_in_the_foreground_stays_until_its_pods_have_stopped(
        api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    """The garbage collector deletes a Foreground-deleted Job's pods first and releases the Job only
    once they are gone: a pod that takes its grace period to stop keeps its Job (H9-10: the Job went
    at once, and an operator that waits for it to be gone started the next attempt beside the old pods)."""
    stubborn = ("import signal, time\n"
                "signal.signal(signal.SIGTERM, lambda *a: None)\n"  # ignores SIGTERM: killed at the grace's end
                "time.sleep(60)")
    await api.create("batch/v1/jobs", NS, _with_grace(job("slow-stop", [python_container("main", stubborn)]), 3))
    await wait_for(lambda: _running_pods(api, "slow-stop"))
    await asyncio.sleep(0.5)  # the handler is installed
    await api.delete("batch/v1/jobs", NS, "slow-stop", propagation_policy="Foreground")
    deleted_at = asyncio.get_running_loop().time()
    pods = await wait_for(lambda: _terminating_pods(api, "slow-stop"))
    assert pods
    held = await api.get("batch/v1/jobs", NS, "slow-stop")
    assert held is not None and "foregroundDeletion" in held["metadata"]["finalizers"]
    await wait_for(lambda: _gone(api, "batch/v1/jobs", "slow-stop"), timeout=20)
    assert await _no_pods(api, "slow-stop")  # never the Job gone with a pod left
    assert asyncio.get_running_loop().time() - deleted_at >= 2.5  # it waited for the grace period


async def test_a_jobset_deleted_in_the_foreground_goes_after_its_jobs_and_their_pods(
        api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    """JobSet -> Job -> pod: the collector deletes the Jobs in the foreground too (they have pods), as
    the real collector does, so the JobSet is gone only once every pod is."""
    js = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "grp"},
          "spec": {"replicatedJobs": [{"name": "node", "replicas": 2, "template": {"spec": {
              "template": {"spec": {"restartPolicy": "Never", "containers": [
                  python_container("main", "import time; time.sleep(60)")]}}}}}]}}
    await api.create("jobset.x-k8s.io/v1alpha2/jobsets", NS, js)
    await wait_for(lambda: _running_in_jobset(api, "grp", 2))
    await api.delete("jobset.x-k8s.io/v1alpha2/jobsets", NS, "grp", propagation_policy="Foreground")
    seen_held = False
    while await api.get("jobset.x-k8s.io/v1alpha2/jobsets", NS, "grp") is not None:
        remaining = await api.list("v1/pods", NS, label_selector="jobset.sigs.k8s.io/jobset-name=grp")
        seen_held = seen_held or bool(remaining)
        await asyncio.sleep(0.05)
    assert seen_held
    assert await api.list("v1/pods", NS, label_selector="jobset.sigs.k8s.io/jobset-name=grp") == []
    assert await api.list("batch/v1/jobs", NS, label_selector="jobset.sigs.k8s.io/jobset-name=grp") == []


SERVICES_RESOURCE = "v1/services"
def _service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": [{"port": 80}], "selector": {"app": name}}}


def _ref(obj: dict, block: bool = True) -> dict:
    return {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "blockOwnerDeletion": block}


async def _set_owners(api: ApiClient, resource: str, name: str, owners: list[dict]) -> None:
    await api.patch(resource, NS, name, {"metadata": {"ownerReferences": owners}})


async def _gone_all(api: ApiClient, resource: str, *names: str) -> bool:
    return all([await api.get(resource, NS, n) is None for n in names])


async def test_an_ownership_cycle_deleted_in_the_foreground_goes(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    """a owns b, b owns a, both blocking: the Kubernetes collector breaks such cycles (it unblocks the
    dependent's references when a dependent of its own is itself deleting dependents,
    attemptToDeleteItem), so both go. (Hostile pass 10, H10-7: each waited for the other forever.)"""
    a = await api.create(SERVICES_RESOURCE, NS, _service("cyc-a"))
    b = await api.create(SERVICES_RESOURCE, NS, _service("cyc-b"))
    await _set_owners(api, SERVICES_RESOURCE, "cyc-b", [_ref(a)])
    await _set_owners(api, SERVICES_RESOURCE, "cyc-a", [_ref(b)])
    await asyncio.sleep(1)
    await api.delete(SERVICES_RESOURCE, NS, "cyc-a", propagation_policy="Foreground")
    try:
        await wait_for(lambda: _gone_all(api, SERVICES_RESOURCE, "cyc-a", "cyc-b"), timeout=25)
    except Exception:
        left = {n: (o or {}).get("metadata", {}) for n in ("cyc-a", "cyc-b") if (o := await api.get(SERVICES_RESOURCE, NS, n))}
        raise AssertionError("stuck deleting: " + repr({n: (m.get("deletionTimestamp"), m.get("finalizers"))
                                                        for n, m in left.items()}))


async def test_an_object_owning_itself_deleted_in_the_foreground_goes(api: ApiClient, cluster: LocalCluster,
                                                                      wait_for) -> None:
    """A reference to itself never blocks its own deletion (H10-7)."""
    a = await api.create(SERVICES_RESOURCE, NS, _service("self-a"))
    await _set_owners(api, SERVICES_RESOURCE, "self-a", [_ref(a)])
    await asyncio.sleep(1)
    await api.delete(SERVICES_RESOURCE, NS, "self-a", propagation_policy="Foreground")
    try:
        await wait_for(lambda: _gone_all(api, SERVICES_RESOURCE, "self-a"), timeout=25)
    except Exception:
        m = (await api.get(SERVICES_RESOURCE, NS, "self-a"))["metadata"]
        raise AssertionError(f"stuck deleting: {m.get('deletionTimestamp')} {m.get('finalizers')}")


async def test_a_dependent_that_stops_blocking_releases_its_owner_promptly(api: ApiClient, cluster: LocalCluster,
                                                                         wait_for) -> None:
    """The owner's only blocking dependent keeps its reference but sets blockOwnerDeletion false (as
    the real collector's cycle breaking does): the owner may go. The dependent has its own finalizer
    so it stays. (H10-8: the owner went only at the next resync.)"""
    a = await api.create(SERVICES_RESOURCE, NS, _service("rel-a"))
    dep = _service("rel-b")
    dep["metadata"]["finalizers"] = ["example.com/hold"]
    await api.create(SERVICES_RESOURCE, NS, dep)
    await _set_owners(api, SERVICES_RESOURCE, "rel-b", [_ref(a)])
    await asyncio.sleep(1)
    await api.delete(SERVICES_RESOURCE, NS, "rel-a", propagation_policy="Foreground")
    await asyncio.sleep(1)
    held = await api.get(SERVICES_RESOURCE, NS, "rel-a")
    assert held is not None and "foregroundDeletion" in held["metadata"]["finalizers"]
    cluster.resync = lambda: None  # no safety net: only the dependent's own event may release the owner
    await _set_owners(api, SERVICES_RESOURCE, "rel-b", [_ref(a, block=False)])
    await wait_for(lambda: _gone_all(api, SERVICES_RESOURCE, "rel-a"), timeout=25)
    await _set_owners(api, SERVICES_RESOURCE, "rel-b", [])
    await api.patch(SERVICES_RESOURCE, NS, "rel-b", {"metadata": {"finalizers": []}})


def _with_grace(obj: dict, seconds: int) -> dict:
    obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = seconds
    return obj


async def _terminating_pods(api: ApiClient, job_name: str) -> list[dict]:
    return [p for p in await job_pods(api, job_name) if p["metadata"].get("deletionTimestamp")]


async def _running_in_jobset(api: ApiClient, name: str, count: int) -> bool:
    pods = await api.list("v1/pods", NS, label_selector=f"jobset.sigs.k8s.io/jobset-name={name}")
    return len([p for p in pods if p["status"].get("phase") == "Running"]) == count


async def test_claim_in_use_is_deleted_only_after_its_pod_finished(api: ApiClient, cluster: LocalCluster,
                                                                    wait_for) -> None:
    await api.create("v1/persistentvolumeclaims", NS, claim("busy"))
    await api.create("v1/pods", NS, {"metadata": {"name": "user"}, "spec": {
        "containers": [python_container("main", "import time; time.sleep(1)",
                                        volumeMounts=[{"name": "d", "mountPath": "/d"}])],
        "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "busy"}}]}})
    await wait_for(lambda: _phase_is(api, "v1/pods", "user", "Running"))
    await api.delete("v1/persistentvolumeclaims", NS, "busy")
    assert (await api.get("v1/persistentvolumeclaims", NS, "busy"))["metadata"]["deletionTimestamp"]
    await wait_for(lambda: _phase_is(api, "v1/pods", "user", "Succeeded"))
    await wait_for(lambda: _gone(api, "v1/persistentvolumeclaims", "busy"))


async def _running_pods(api: ApiClient, job_name: str) -> list[dict]:
    return [p for p in await job_pods(api, job_name) if p["status"].get("phase") == "Running"]


async def _gone(api: ApiClient, resource: str, name: str) -> bool:
    return await api.get(resource, NS, name) is None


@pytest.mark.parametrize("value, expected", [
    ("/out", "V/out"), ("/out/x/y", "V/out/x/y"), ("/outside", "/outside"), ("/in/a", "V/in/a"),
    ("/in", "V/in"), ("/in/a/deeper/f", "V/in/a/deeper/f"), ("--dir=/out/x", "--dir=V/out/x"),
    ("relative", "relative"), ("/", "/"), ("/in/../out", "V/out"),
])
def test_view_translates_mounted_paths_and_their_parents(value: str, expected: str) -> None:
    view = PodView(Path("V"), [Mount("/out", Path("/host/o"), False), Mount("/in/a", Path("/host/i"), True),
                               Mount("/in/a/deeper", Path("/host/deep"), True)])
    assert view.translate(value) == expected


def test_python_maps_to_this_interpreter() -> None:
    from checkpoint_operator.local.runtime import host_command
    assert host_command(["python3", "-c", "x"]) == [sys.executable, "-c", "x"]
    assert host_command(["checkpoint-operator", "agent"])[:3] == [sys.executable, "-m", "checkpoint_operator"]


def test_cluster_runs_in_its_own_thread(tmp_path: Path) -> None:
    """Local mode: emulator and cluster each in a thread, driven from synchronous code."""
    import time

    from checkpoint_operator.local.server import EmulatorServer

    async def create_claim(url: str) -> None:
        async with ApiClient(url) as client:
            await client.create("v1/persistentvolumeclaims", NS, claim("c"))

    with EmulatorServer(state_dir=tmp_path / "state") as server:
        local_cluster = LocalCluster(server.url, tmp_path / "data", namespaces=[NS])
        local_cluster.start_in_thread()
        try:
            asyncio.run(create_claim(server.url))
            deadline = time.monotonic() + 5
            while local_cluster.claim_dir(NS, "c") is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert local_cluster.claim_dir(NS, "c").is_dir()
        finally:
            local_cluster.stop_thread()


# --- native sidecars and graceful termination ---------------------------------------------------------

SIDECAR = """
import pathlib, signal, sys, time
marks = pathlib.Path(sys.argv[1])
def stop(*_):
    (marks / "sidecar-stopped").write_text("SIGTERM")
    sys.exit(int(sys.argv[2]))
signal.signal(signal.SIGTERM, stop)
(marks / "sidecar-running").write_text("yes")
while True:
    time.sleep(0.05)
"""

STUBBORN = """
import pathlib, signal, sys, time
marks = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: (marks / "got-sigterm").write_text("ignored"))
(marks / "running").write_text("yes")
while True:
    time.sleep(0.05)
"""


WAIT_FOR_RUNNING = "import os, sys, time\nwhile not os.path.exists(sys.argv[1] + '/running'): time.sleep(0.05)"


def host_dir(tmp_path: Path) -> tuple[list[dict], list[dict]]:
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    return [{"name": "marks", "hostPath": {"path": str(marks)}}], [{"name": "marks", "mountPath": "/marks"}]


async def test_native_sidecar_runs_beside_the_containers_and_is_stopped_after_them(
        api: ApiClient, cluster: LocalCluster, wait_for, tmp_path: Path) -> None:
    volumes, mounts = host_dir(tmp_path)
    # A sidecar counts as started once its process runs (no startup probe), so the next containers
    # wait for it to be up (as in Kubernetes); the sidecar must still be running while they do.
    check = ("import os, sys, time\nwhile not os.path.exists(sys.argv[1] + '/sidecar-running'): time.sleep(0.05)\n"
             "assert not os.path.exists(sys.argv[1] + '/sidecar-stopped'); print('sidecar seen')")
    await api.create("v1/pods", NS, {"metadata": {"name": "with-sidecar"}, "spec": {
        "terminationGracePeriodSeconds": 5, "volumes": volumes,
        "initContainers": [
            python_container("agent", SIDECAR, args=["/marks", "3"], restartPolicy="Always", volumeMounts=mounts),
            python_container("after-sidecar", check, args=["/marks"], volumeMounts=mounts)],
        "containers": [python_container("main", check, args=["/marks"], volumeMounts=mounts)]}})
    pod = await wait_for(lambda: _phase_is(api, "v1/pods", "with-sidecar", "Succeeded"))
    # The sidecar was running before the next init container and the main container started,
    # got SIGTERM after the main container exited, and its exit code 3 did not fail the pod.
    assert await api.read_log(NS, "with-sidecar", container="main") == "sidecar seen\n"
    assert (tmp_path / "marks" / "sidecar-stopped").read_text() == "SIGTERM"
    [sidecar, after] = pod["status"]["initContainerStatuses"]
    assert sidecar["name"] == "agent" and sidecar["state"]["terminated"]["exitCode"] == 3
    assert after["state"]["terminated"]["exitCode"] == 0


async def test_a_sidecar_is_stopped_with_sigterm_when_a_played_container_ends_at_once(
        api: ApiClient, cluster: LocalCluster, wait_for, tmp_path: Path) -> None:
    """A container played by a stand-in (the integration tests' trainer) that ends before the
    sidecar's process is up: the sidecar still gets its SIGTERM (it was killed at the end of the
    grace period, so the live agent's last pass never ran and every such pod took 30 s)."""
    volumes, mounts = host_dir(tmp_path)

    async def played(pod: dict, container: dict, env: dict, mounts: dict) -> int | None:
        return 0 if container["name"] == "main" else None

    cluster.set_container_runner(played)
    await api.create("v1/pods", NS, {"metadata": {"name": "played"}, "spec": {
        "terminationGracePeriodSeconds": 600, "volumes": volumes,
        "initContainers": [python_container("agent", SIDECAR, args=["/marks", "3"], restartPolicy="Always",
                                            volumeMounts=mounts)],
        "containers": [python_container("main", "raise SystemExit(9)", volumeMounts=mounts)]}})
    pod = await wait_for(lambda: _phase_is(api, "v1/pods", "played", "Succeeded"), timeout=60)
    [sidecar] = pod["status"]["initContainerStatuses"]
    # 3: its handler ran; 143: the SIGTERM came before Python had set the handler (as a kubelet may
    # send it: a sidecar without a startup probe counts as started once its process runs). Never
    # 137, the SIGKILL at the end of the grace period.
    assert sidecar["state"]["terminated"]["exitCode"] in (3, 143), "stopped by its SIGTERM, not killed"


async def test_sidecar_that_ignores_sigterm_is_killed_after_the_grace_period(
        api: ApiClient, cluster: LocalCluster, wait_for, tmp_path: Path) -> None:
    volumes, mounts = host_dir(tmp_path)
    await api.create("v1/pods", NS, {"metadata": {"name": "stubborn"}, "spec": {
        "terminationGracePeriodSeconds": 1, "volumes": volumes,
        "initContainers": [python_container("agent", STUBBORN, args=["/marks"], restartPolicy="Always",
                                            volumeMounts=mounts)],
        # Waits until the sidecar has set up its handler (a sidecar counts as started once it runs).
        "containers": [python_container("main", WAIT_FOR_RUNNING, args=["/marks"], volumeMounts=mounts)]}})
    pod = await wait_for(lambda: _phase_is(api, "v1/pods", "stubborn", "Succeeded"), timeout=15)
    assert (tmp_path / "marks" / "got-sigterm").read_text() == "ignored"
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 128 + 9  # SIGKILL


@pytest.mark.slow
async def test_sidecar_that_exits_is_restarted(api: ApiClient, cluster: LocalCluster, wait_for, tmp_path: Path) -> None:
    volumes, mounts = host_dir(tmp_path)
    count = "import pathlib, sys; p = pathlib.Path(sys.argv[1]) / 'starts'; p.write_text(p.read_text() + 'x' if p.exists() else 'x')"
    # The main container may start before the sidecar's first write (it waits for started, not for that).
    wait = ("import pathlib, sys, time\np = pathlib.Path(sys.argv[1]) / 'starts'\n"
            "while not p.exists() or len(p.read_text()) < 3: time.sleep(0.05)")
    await api.create("v1/pods", NS, {"metadata": {"name": "restarts"}, "spec": {
        "volumes": volumes,
        "initContainers": [python_container("agent", count, args=["/marks"], restartPolicy="Always", volumeMounts=mounts)],
        "containers": [python_container("main", wait, args=["/marks"], volumeMounts=mounts)]}})
    pod = await wait_for(lambda: _phase_is(api, "v1/pods", "restarts", "Succeeded"), timeout=30)
    assert pod["status"]["initContainerStatuses"][0]["restartCount"] >= 2


async def test_deleting_a_running_pod_terminates_it_gracefully(api: ApiClient, cluster: LocalCluster, wait_for,
                                                               tmp_path: Path) -> None:
    volumes, mounts = host_dir(tmp_path)
    await api.create("batch/v1/jobs", NS, job_spec_with({"terminationGracePeriodSeconds": 2}, "slow", [
        python_container("main", STUBBORN, args=["/marks"], volumeMounts=mounts)], volumes=volumes))
    await wait_for(lambda: (tmp_path / "marks" / "running").exists())
    [pod] = await job_pods(api, "slow")
    name = pod["metadata"]["name"]
    await api.delete("v1/pods", NS, name)

    async def terminating() -> dict | None:
        obj = await api.get("v1/pods", NS, name)
        return obj if obj and obj["metadata"].get("deletionTimestamp") and obj["status"]["phase"] == "Running" else None
    await wait_for(terminating)  # still there, still running, with its deletionTimestamp
    await wait_for(lambda: (tmp_path / "marks" / "got-sigterm").exists())

    async def counted() -> dict | None:
        obj = await api.get("batch/v1/jobs", NS, "slow")
        return obj if obj["status"].get("terminating") == 1 else None
    counted_job = await wait_for(counted)
    assert counted_job["status"]["active"] == 1  # the replacement pod; the terminating one is not active
    await wait_for(lambda: _gone(api, "v1/pods", name), timeout=15)  # SIGKILL after 2 s, then removed


def job_spec_with(pod_spec_extra: dict, *args, **kwargs) -> dict:
    obj = job(*args, **kwargs)
    obj["spec"]["template"]["spec"].update(pod_spec_extra)
    return obj


# --- the pod's view of its mounts (process runtime) ---------------------------------------------------

VIEW_PROBE = """
import json, os, pathlib
inputs = os.environ["CHECKPOINT_INPUT_DIR"]
seen = {"input_dir": sorted(os.listdir(inputs)),
        "listing": {name: sorted(os.listdir(os.path.join(inputs, name))) for name in os.listdir(inputs)},
        "input_path_name": os.path.basename(os.environ["CHECKPOINT_INPUT_PATH"]),
        "input_parent": sorted(os.listdir(os.path.dirname(os.environ["CHECKPOINT_INPUT_PATH"]))),
        "weights": open(os.path.join(os.environ["CHECKPOINT_INPUT_PATH"], "model.safetensors")).read()}
try:
    with open(os.path.join(os.environ["CHECKPOINT_INPUT_PATH"], "model.safetensors"), "w") as f:
        f.write("overwritten")
    seen["write"] = "allowed"
except OSError as exc:
    seen["write"] = type(exc).__name__
out = pathlib.Path(os.environ["CHECKPOINT_OUTPUT_DIR"]) / "step-1"
out.mkdir()
(out / "w.bin").write_text("new")
print(json.dumps(seen))
"""


async def test_pod_sees_its_inputs_exactly_as_mounted(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    """The operator's volume-store layout: a directory checkpoint (subPath of a directory) and a
    file checkpoint (one subPath mount per file), both read-only, beside other steps that the
    pod must not see; the output volume read-write."""
    await api.create("v1/persistentvolumeclaims", NS, claim("producer-output"))
    await api.create("v1/persistentvolumeclaims", NS, claim("out"))
    source = await wait_for(lambda: cluster.claim_dir(NS, "producer-output"))
    for step in ("step-1", "step-2"):
        (source / step).mkdir()
        (source / step / "model.safetensors").write_text(f"weights of {step}")
        (source / step / "optimizer.pt").write_text("o")
    (source / "config.json").write_text("{}")
    (source / "model.safetensors").write_text("final weights")
    input_mounts = [
        {"name": "in", "mountPath": "/input-checkpoint/pre.step-2", "subPath": "step-2", "readOnly": True},
        {"name": "in", "mountPath": "/input-checkpoint/pre/config.json", "subPath": "config.json",
         "readOnly": True},
        {"name": "in", "mountPath": "/input-checkpoint/pre/model.safetensors", "subPath": "model.safetensors",
         "readOnly": True}]
    env = [{"name": "CHECKPOINT_INPUT_DIR", "value": "/input-checkpoint"},
           {"name": "CHECKPOINT_INPUT_PATH", "value": "/input-checkpoint/pre.step-2"},
           {"name": "CHECKPOINT_OUTPUT_DIR", "value": "/output-checkpoint"}]
    await api.create("batch/v1/jobs", NS, job("consumer", [python_container(
        "main", VIEW_PROBE, env=env, volumeMounts=[*input_mounts, {"name": "out", "mountPath": "/output-checkpoint"}])],
        volumes=[{"name": "in", "persistentVolumeClaim": {"claimName": "producer-output", "readOnly": True}},
                 {"name": "out", "persistentVolumeClaim": {"claimName": "out"}}], backoffLimit=0))
    done = await finished_job(api, wait_for, "consumer")
    [pod] = await job_pods(api, "consumer")
    log = await api.read_log(NS, pod["metadata"]["name"])
    assert condition_types(done) == COMPLETE, log
    seen = json.loads(log)
    assert seen["input_dir"] == ["pre", "pre.step-2"]  # exactly the mounted inputs
    assert seen["listing"] == {"pre": ["config.json", "model.safetensors"],
                               "pre.step-2": ["model.safetensors", "optimizer.pt"]}
    assert seen["input_path_name"] == "pre.step-2"  # named after the Checkpoint, not the source directory
    assert seen["input_parent"] == ["pre", "pre.step-2"]  # no sibling steps of the producer
    assert seen["weights"] == "weights of step-2"
    import os
    # Read-only: a non-root process cannot write; root bypasses permission bits in the process
    # runtime, but only changes the pod's private copy.
    assert seen["write"] == ("allowed" if os.geteuid() == 0 else "PermissionError")
    assert (source / "step-2" / "model.safetensors").read_text() == "weights of step-2"
    assert (cluster.claim_dir(NS, "out") / "step-1" / "w.bin").read_text() == "new"


def test_view_refuses_a_mount_nested_in_a_read_write_volume(tmp_path: Path) -> None:
    from checkpoint_operator.local.podview import ViewError
    (tmp_path / "vol").mkdir()
    (tmp_path / "ro").mkdir()
    view = PodView(tmp_path / "view", [Mount("/data", tmp_path / "vol", False),
                                       Mount("/data/sub", tmp_path / "ro", True)])
    with pytest.raises(ViewError, match="/data/sub.*inside the read-write mount /data"):
        view.materialise()
    assert not (tmp_path / "vol" / "sub").exists()  # the volume was not touched


def test_read_only_copy_keeps_the_source_intact(tmp_path: Path) -> None:
    from checkpoint_operator.local.podview import read_only_copy, remove_tree
    (tmp_path / "src" / "nested").mkdir(parents=True)
    (tmp_path / "src" / "nested" / "f").write_bytes(b"data")
    read_only_copy(tmp_path / "src", tmp_path / "copy")
    copied = tmp_path / "copy" / "nested" / "f"
    assert copied.read_bytes() == b"data" and not copied.stat().st_mode & 0o222
    assert not (tmp_path / "copy" / "nested").stat().st_mode & 0o222
    assert (tmp_path / "src" / "nested" / "f").stat().st_mode & 0o200  # the source keeps its modes
    remove_tree(tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_read_only_copy_leaves_fifos_sockets_out_and_never_blocks(tmp_path: Path) -> None:
    """hostile4 D13: opening a FIFO to copy it blocked for good (the snapshot pod's view of an
    output holding one was never laid out, and `local run` hung). Special files are left out, as
    the agent's scan leaves them out of a checkpoint; regular files are copied."""
    import os
    import socket
    import threading
    from checkpoint_operator.local.podview import clone_or_copy, read_only_copy
    (tmp_path / "src" / "step-1").mkdir(parents=True)
    (tmp_path / "src" / "step-1" / "w").write_bytes(b"x")
    os.mkfifo(tmp_path / "src" / "step-1" / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "src" / "step-1" / "sock"))
    done = threading.Event()
    errors: list[BaseException] = []

    def copy() -> None:
        try:
            read_only_copy(tmp_path / "src", tmp_path / "copy")
            assert clone_or_copy(str(tmp_path / "src" / "step-1" / "pipe"), str(tmp_path / "one")) is False
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        done.set()
    threading.Thread(target=copy, daemon=True).start()
    finished = done.wait(10)
    if not finished:  # unblock the copy stuck in open(): a writer end
        os.close(os.open(tmp_path / "src" / "step-1" / "pipe", os.O_WRONLY | os.O_NONBLOCK))
    sock.close()
    assert finished, "the copy blocked on the FIFO"
    assert errors == []
    assert sorted(p.name for p in (tmp_path / "copy" / "step-1").iterdir()) == ["w"]
    assert (tmp_path / "copy" / "step-1" / "w").read_bytes() == b"x"
    assert not (tmp_path / "one").exists()


async def test_a_pod_is_running_once_its_containers_processes_run(api: ApiClient, cluster: LocalCluster,
                                                                  wait_for) -> None:
    """As a kubelet reports it: an exec or a log read that follows "Running" finds each container
    started (before, Running was written first and the processes started after it)."""
    await api.create("v1/pods", NS, {"metadata": {"name": "two"}, "spec": {"restartPolicy": "Never", "containers": [
        python_container("a", "import time; time.sleep(30)"), python_container("b", "import time; time.sleep(30)")]}})

    async def running() -> dict | None:
        pod = await api.get("v1/pods", NS, "two")
        return pod if pod.get("status", {}).get("phase") == "Running" else None
    pod = await wait_for(running, timeout=20, interval=0.005)
    worker = cluster.kubelet.workers[pod["metadata"]["uid"]]
    assert set(worker.processes) == {"a", "b"}
    await api.delete("v1/pods", NS, "two")


async def test_a_namespaced_claim_owned_by_a_cluster_scoped_object_lives_as_long_as_its_owner(
        api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    """As the Kubernetes garbage collector: a namespaced dependent may name a cluster-scoped owner (a catalog
    entry owns each namespace's copy), looked up without the dependent's namespace. (The collector used to look
    for it in the claim's namespace, found nothing and deleted the claim at once.)"""
    entry = await api.create("ckpt.dev/v1alpha1/clustercheckpoints", None, {
        "apiVersion": "ckpt.dev/v1alpha1", "kind": "ClusterCheckpoint", "metadata": {"name": "gpt2"},
        "spec": {"source": {"huggingFace": {"repo": "org/gpt2"}}}})
    owner = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "ClusterCheckpoint", "name": "gpt2",
             "uid": entry["metadata"]["uid"], "controller": True}
    await api.create("v1/persistentvolumeclaims", NS, {"metadata": {"name": "copy", "ownerReferences": [owner]},
                                                        "spec": {"accessModes": ["ReadWriteOnce"],
                                                                 "resources": {"requests": {"storage": "1Gi"}}}})
    await wait_for(lambda: cluster.claim_dir(NS, "copy"), timeout=10)
    await cluster.gc.reconcile("v1/persistentvolumeclaims", await api.get("v1/persistentvolumeclaims", NS, "copy"))
    assert await api.get("v1/persistentvolumeclaims", NS, "copy") is not None
    await api.delete("ckpt.dev/v1alpha1/clustercheckpoints", None, "gpt2")
    await cluster.gc.reconcile("v1/persistentvolumeclaims", await api.get("v1/persistentvolumeclaims", NS, "copy"))

    async def gone():
        return await api.get("v1/persistentvolumeclaims", NS, "copy") is None
    await wait_for(gone, timeout=10)
