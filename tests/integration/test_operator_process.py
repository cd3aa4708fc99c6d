"""The real `checkpoint-operator run` process (kubeconfig, kopf's liveness probe, Prometheus
metrics) against the emulated API, with a training command run by the local kubelet."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from conftest import CKPT, NS, TJ, training_job

pytestmark = pytest.mark.timeout(120)

TRAIN = ("import os; d = os.path.join(os.environ['CHECKPOINT_OUTPUT_DIR'], 'step-7'); os.makedirs(d); "
         "open(os.path.join(d, 'model.safetensors'), 'wb').write(b'x' * 1000)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.fixture
def operator_process(api_url, cluster, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": api_url}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local", "namespace": NS}}],
        "users": [{"name": "local", "user": {"token": "local"}}]}))
    metrics_port, liveness_port = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "CKPT_RECONCILE_INTERVAL": "0.2",
           "CKPT_AGENT_IMAGE": "checkpoint-operator:test", "CKPT_LOG_FORMAT": "json"}
    log = open(tmp_path / "operator.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "checkpoint_operator", "run", "--namespace", NS, "--standalone",
                             "--metrics-port", str(metrics_port), "--liveness-port", str(liveness_port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{liveness_port}/healthz", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("operator did not come up:\n" + (tmp_path / "operator.log").read_text()[-3000:])
            time.sleep(0.2)
    time.sleep(1.0)  # let its watch streams open
    yield {"metrics": metrics_port, "log": tmp_path / "operator.log"}
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


async def test_process_reconciles_and_exposes_metrics(api, operator_process, wait_for):
    before = scrape(operator_process["metrics"])
    assert before['checkpoint_operator_checkpoints{phase="Ready"}'] == 0
    await api.create(TJ, NS, training_job("proc", command=[sys.executable, "-c", TRAIN]))

    async def succeeded():
        obj = await api.get(TJ, NS, "proc")
        return obj if obj.get("status", {}).get("phase") == "Succeeded" else None
    try:
        tj = await wait_for(succeeded, timeout=60)
    except AssertionError:
        raise AssertionError(operator_process["log"].read_text()[-4000:])
    assert tj["status"]["outputCheckpoints"] == ["proc.step-7"]
    checkpoint = await api.get(CKPT, NS, "proc.step-7")
    assert checkpoint["status"]["format"] == "safetensors" and checkpoint["status"]["step"] == 7

    after = scrape(operator_process["metrics"])
    assert after['checkpoint_operator_checkpoints{phase="Ready"}'] == 1
    assert after['checkpoint_operator_trainingjobs{phase="Succeeded"}'] == 1
    assert after["checkpoint_operator_checkpoints_created_total"] == 1
    assert after['checkpoint_operator_transferred_bytes_total{direction="snapshot"}'] == 1000
    assert after['checkpoint_operator_snapshot_duration_seconds_count{store="volume"}'] == 1
    assert "checkpoint_operator_blocked_deletions_total" in after
    # Structured logs: one JSON object per line.
    lines = [line for line in operator_process["log"].read_text().splitlines() if line.startswith("{")]
    assert any('"Running"' in line or "Job proc started" in line for line in lines)
