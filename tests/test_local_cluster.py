"""The local cluster (checkpoint_operator.local.cluster): PVC binder, Job controller, kubelet, GC."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import pytest

from checkpoint_operator.local.cluster import LocalCluster, translate_path
from checkpoint_operator.local.server import ApiClient

NS = "default"


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


async def _phase_is(api: ApiClient, resource: str, name: str, phase: str) -> dict | None:
    obj = await api.get(resource, NS, name)
    return obj if obj and obj.get("status", {}).get("phase") == phase else None


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
    assert condition_types(done) == [("Complete", None)]
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
        "main", "import sys; print('out'); print('boom', file=sys.stderr); sys.exit(3)")], backoffLimit=2))
    done = await finished_job(api, wait_for, "flaky")
    assert condition_types(done) == [("Failed", "BackoffLimitExceeded")]
    pods = await job_pods(api, "flaky")
    assert len(pods) == 3 and done["status"]["failed"] == 3
    assert {p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods} == {3}
    assert await api.read_log(NS, pods[0]["metadata"]["name"]) == "out\nboom\n"  # stdout, then stderr


async def test_active_deadline_fails_the_job_and_stops_its_pod(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    await api.create("batch/v1/jobs", NS, job("slow", [python_container("main", "import time; time.sleep(30)")],
                                              activeDeadlineSeconds=1))
    done = await finished_job(api, wait_for, "slow")
    assert condition_types(done) == [("Failed", "DeadlineExceeded")]
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
    assert condition_types(done) == [("Complete", None)] and done["status"]["completedIndexes"] == "0,1"
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
    assert condition_types(done) == [("Complete", None)]
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
    assert condition_types(await finished_job(api, wait_for, "user")) == [("Complete", None)]
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


async def test_gc_deletes_pods_of_a_deleted_job(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    await api.create("batch/v1/jobs", NS, job("gone", [python_container("main", "import time; time.sleep(30)")]))
    await wait_for(lambda: _running_pods(api, "gone"))
    await api.delete("batch/v1/jobs", NS, "gone", propagation_policy="Background")
    await wait_for(lambda: _no_pods(api, "gone"))


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
    ("/out", "/host/o"), ("/out/x/y", "/host/o/x/y"), ("/outside", "/outside"), ("/in/a", "/host/i/a"),
    ("/in/a/deeper/f", "/host/deep/f"), ("--dir=/out/x", "--dir=/host/o/x"), ("relative", "relative"),
])
def test_translate_path_prefers_the_longest_mount(value: str, expected: str) -> None:
    mounts = {"/out": Path("/host/o"), "/in": Path("/host/i"), "/in/a/deeper": Path("/host/deep")}
    assert translate_path(value, mounts) == expected


def test_python_maps_to_this_interpreter() -> None:
    from checkpoint_operator.local.cluster import host_command
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
