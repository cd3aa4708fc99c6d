"""The operator itself (`checkpoint-operator run`, the image's default command) running from the image
with the cluster's flags, against the emulated API on the host's loopback: it reconciles a
TrainingJob to Ready Checkpoints, serves its liveness probe and metrics, and stops cleanly on
SIGTERM. The local cluster (tests/conftest.py) plays the Job controller and the kubelet on the
host, so the pods it starts (training and agent) run as host processes here; running them as
containers is local mode's container runtime (tests/containers/)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from image_helpers import CLUSTER_FLAGS, Image, podman, require_engine
from s3server import free_port

pytestmark = [pytest.mark.image, pytest.mark.timeout(180)]
require_engine()

NS = "default"
TJ = "ckpt.dev/v1alpha1/trainingjobs"
CKPT = "ckpt.dev/v1alpha1/checkpoints"
TRAIN = ("import os; d = os.path.join(os.environ['CHECKPOINT_OUTPUT_DIR'], 'step-7'); os.makedirs(d); "
         "open(os.path.join(d, 'model.safetensors'), 'wb').write(b'x' * 1000)")


def get(url: str) -> str:
    return urllib.request.urlopen(url, timeout=2).read().decode()


def metrics(port: int) -> dict[str, float]:
    samples = {}
    for line in get(f"http://127.0.0.1:{port}/metrics").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def kubeconfig_dir(tmp_path: Path, api_url: str) -> Path:
    kube = tmp_path / "kube"
    kube.mkdir()
    (kube / "config").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": api_url}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local", "namespace": NS}}],
        "users": [{"name": "local", "user": {"token": "local"}}]}))
    kube.chmod(0o755)
    (kube / "config").chmod(0o644)  # the pod's user reads it, as a mounted Secret
    return kube


@pytest.fixture
async def operator_container(image: Image, api_url: str, cluster, tmp_path: Path):
    kube = kubeconfig_dir(tmp_path, api_url)
    ports = {"metrics": free_port(), "liveness": free_port()}
    name = f"ckpt-operator-test-{os.getpid()}"
    started = await asyncio.to_thread(
        podman.run, "run", "--detach", "--name", name, *CLUSTER_FLAGS, "--network", "host",
        "--volume", f"{kube}:/kube:ro", "--env", "KUBECONFIG=/kube/config", "--env", "CKPT_RECONCILE_INTERVAL=0.2",
        "--env", f"CKPT_AGENT_IMAGE={image.name}", "--env", "CKPT_LOG_FORMAT=json",
        image.name, "run", "--namespace", NS, "--standalone",
        "--metrics-port", str(ports["metrics"]), "--liveness-port", str(ports["liveness"]))
    assert started.returncode == 0, started.stderr

    def logs() -> str:
        result = podman.run("logs", name, timeout=60)
        return result.stdout + result.stderr

    try:
        for _ in range(300):
            try:
                await asyncio.to_thread(get, f"http://127.0.0.1:{ports['liveness']}/healthz")
                break
            except OSError:
                state = await asyncio.to_thread(podman.run, "inspect", "--format", "{{.State.Status}}", name)
                assert state.stdout.strip() == "running", f"the operator container stopped:\n{logs()[-4000:]}"
                await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"no liveness probe after 60 s:\n{logs()[-4000:]}")
        await asyncio.sleep(1.0)  # let its watch streams open
        yield {"name": name, "logs": logs, **ports}
    finally:
        await asyncio.to_thread(podman.run, "rm", "--force", "--time", "0", name, timeout=60)


async def test_the_operator_from_the_image_reconciles_a_training_job(api, operator_container, wait_for):
    before = await asyncio.to_thread(metrics, operator_container["metrics"])
    assert before['checkpoint_operator_checkpoints{phase="Ready"}'] == 0
    await api.create(TJ, NS, {
        "apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "boxed", "namespace": NS},
        "spec": {"template": {"spec": {"containers": [
            {"name": "trainer", "image": "trainer:1", "command": [sys.executable, "-c", TRAIN]}]}}}})

    async def succeeded():
        obj = await api.get(TJ, NS, "boxed")
        return obj if obj.get("status", {}).get("phase") == "Succeeded" else None
    try:
        tj = await wait_for(succeeded, timeout=90)
    except AssertionError:
        raise AssertionError(operator_container["logs"]()[-4000:])
    assert tj["status"]["outputCheckpoints"] == ["boxed.step-7"]
    checkpoint = await api.get(CKPT, NS, "boxed.step-7")
    assert checkpoint["status"]["phase"] == "Ready"
    assert checkpoint["status"]["fileCount"] == 1 and checkpoint["status"]["sizeBytes"] == 1000

    after = await asyncio.to_thread(metrics, operator_container["metrics"])
    assert after['checkpoint_operator_checkpoints{phase="Ready"}'] == 1
    assert after['checkpoint_operator_trainingjobs{phase="Succeeded"}'] == 1

    # SIGTERM, as a kubelet stops it: a clean exit, JSON logs, nothing but its own log lines
    name = operator_container["name"]
    stop = await asyncio.to_thread(podman.run, "stop", "--time", "30", name, timeout=90)
    assert stop.returncode == 0, stop.stderr
    exit_code = (await asyncio.to_thread(podman.run, "inspect", "--format", "{{.State.ExitCode}}", name)).stdout
    lines = [line for line in operator_container["logs"]().splitlines() if line.strip()]
    assert exit_code.strip() == "0", "\n".join(lines[-30:])
    assert lines and all(json.loads(line) for line in lines), "a log line that is not JSON"
    assert "Traceback" not in "\n".join(lines)
