"""`checkpoint-operator local run --serve`: once the manifests have settled, the local cluster
and the real operator keep running for kubectl and `kubectl ckpt`, through a kubeconfig the
run writes, until SIGTERM (or Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # whole `local run`s: the slow tier
JOB = """apiVersion: ckpt.dev/v1alpha1
kind: TrainingJob
metadata: {name: tiny}
spec:
  template:
    spec:
      containers:
        - name: trainer
          image: unused
          command: ["python", "-c", "import os, sys; d = os.path.join(sys.argv[1], 'step-1'); os.makedirs(d); open(os.path.join(d, 'w.bin'), 'w').write('w')", "$(CHECKPOINT_OUTPUT_DIR)"]
"""


def ckpt(*argv: str, kubeconfig: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "checkpoint_operator", "ckpt", *argv, "--kubeconfig", str(kubeconfig)],
                          capture_output=True, text=True, timeout=180)


def test_serve_keeps_the_cluster_for_kubectl_ckpt(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "job.yaml").write_text(JOB)
    state = tmp_path / "state"
    run = subprocess.Popen([sys.executable, "-m", "checkpoint_operator", "local", "run", "-f", str(tmp_path / "m"),
                            "--runtime", "process", "--state-dir", str(state), "--serve"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = ""
        deadline = time.monotonic() + 200
        while "serving the local cluster" not in line and time.monotonic() < deadline:
            line = run.stderr.readline()
            assert line or run.poll() is None, "local run ended before serving"
        assert "export KUBECONFIG=" in run.stderr.readline()
        kubeconfig = state / "kubeconfig"
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "weights.bin").write_bytes(os.urandom(1000))
        pushed = ckpt("push", str(tmp_path / "mine"), "--name", "mine", kubeconfig=kubeconfig)
        assert pushed.returncode == 0, pushed.stderr
        listed = ckpt("ls", kubeconfig=kubeconfig)
        assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [["mine", "Ready"],
                                                                                ["tiny.step-1", "Ready"]]
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        out, _ = run.communicate(timeout=60)
    assert run.returncode == 0
    assert "tiny.step-1" in out  # the report, printed before serving
