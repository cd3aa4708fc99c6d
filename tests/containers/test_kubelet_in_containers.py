"""The local kubelet's container runtime on its own: images, security contexts, native sidecars,
graceful termination, and `local run --runtime podman` against the process runtime."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from containers_support import NS, TRAIN_IMAGE

pytestmark = pytest.mark.timeout(240)
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def pod(name: str, containers: list[dict], **spec) -> dict:
    return {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": containers, **spec}}


def python(name: str, code: str, **extra) -> dict:
    return {"name": name, "image": TRAIN_IMAGE, "command": ["python", "-c", code], **extra}


async def finished(api, wait_for, name, timeout=60):
    async def done():
        obj = await api.get("v1/pods", NS, name)
        return obj if obj and obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None
    return await wait_for(done, timeout=timeout)


async def test_missing_image_fails_the_pod_naming_the_image(api, cluster, wait_for):
    await api.create("v1/pods", NS, pod("no-image", [{"name": "main", "image": "localhost/not-built:1",
                                                      "command": ["true"]}]))
    obj = await finished(api, wait_for, "no-image")
    assert obj["status"]["phase"] == "Failed" and obj["status"]["reason"] == "ErrImagePull"
    waiting = obj["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ErrImagePull"
    assert '"localhost/not-built:1" is not present' in waiting["message"] and "no registry" in waiting["message"]


async def test_security_context_is_applied(api, cluster, wait_for):
    probe = ("import json, os\nresult = {'uid': os.getuid(), 'gid': os.getgid(), 'groups': sorted(os.getgroups())}\n"
             "try:\n    open('/probe', 'w')\n    result['root_fs'] = 'writable'\n"
             "except OSError as exc:\n    result['root_fs'] = exc.strerror\n"
             "result['cap_eff'] = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
             "result['no_new_privs'] = [l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0]\n"
             "print(json.dumps(result))")
    await api.create("v1/pods", NS, pod("locked", [python("main", probe, securityContext={
        "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}})],
        securityContext={"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True, "fsGroup": 2000}))
    obj = await finished(api, wait_for, "locked")
    log = await api.read_log(NS, "locked")
    assert obj["status"]["phase"] == "Succeeded", log
    assert json.loads(log) == {"uid": 65532, "gid": 65532, "groups": [2000, 65532], "root_fs": "Read-only file system",
                               "cap_eff": "0000000000000000", "no_new_privs": "1"}


async def test_run_as_non_root_refuses_an_image_that_runs_as_root(api, cluster, wait_for):
    await api.create("v1/pods", NS, pod("rooted", [python("main", "print('ran')")],
                                        securityContext={"runAsNonRoot": True}))
    obj = await finished(api, wait_for, "rooted")
    assert obj["status"]["phase"] == "Failed" and obj["status"]["reason"] == "CreateContainerConfigError"
    assert "runAsNonRoot and image will run as root" in obj["status"]["message"]


async def test_native_sidecar_container_outlives_the_main_container(api, cluster, wait_for, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir(mode=0o777)
    sidecar = ("import pathlib, signal, sys, time\n"
               "signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path('/m/stopped').write_text('TERM'), sys.exit(0)))\n"
               "pathlib.Path('/m/running').write_text('yes')\nwhile True: time.sleep(0.05)")
    main = "import os, time\nwhile not os.path.exists('/m/running'): time.sleep(0.05)\nprint('sidecar up')"
    mounts = [{"name": "m", "mountPath": "/m"}]
    await api.create("v1/pods", NS, pod("sidecar", [python("main", main, volumeMounts=mounts)],
                                        initContainers=[python("agent", sidecar, restartPolicy="Always",
                                                               volumeMounts=mounts)],
                                        volumes=[{"name": "m", "hostPath": {"path": str(marks)}}],
                                        terminationGracePeriodSeconds=10))
    obj = await finished(api, wait_for, "sidecar")
    assert obj["status"]["phase"] == "Succeeded"
    assert await api.read_log(NS, "sidecar", container="main") == "sidecar up\n"
    assert (marks / "stopped").read_text() == "TERM"  # SIGTERM reached the container after main exited


def local_run(runtime: str, state_dir) -> dict:
    result = subprocess.run([sys.executable, "-m", "checkpoint_operator", "local", "run", "-f", "examples/local/",
                             "-o", "json", "--runtime", runtime, "--state-dir", str(state_dir)],
                            cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.startswith(f"runtime: {runtime} ")  # the first line says which runtime
    return json.loads(result.stdout)


def test_local_run_with_podman_reaches_the_same_checkpoints_as_processes(tmp_path, engine):
    in_containers = local_run("podman", tmp_path / "podman")
    as_processes = local_run("process", tmp_path / "process")

    def digests(report):
        return {c["name"]: (c["phase"], c["digest"], c["step"]) for c in report["checkpoints"]}
    assert digests(in_containers) == digests(as_processes)
    assert sorted(digests(in_containers)) == ["finetune.step-350", "finetune.step-400", "live.step-100",
                                              "live.step-400", "live.step-500", "pretrain.step-200",
                                              "pretrain.step-300"]
