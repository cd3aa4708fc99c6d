"""A group restart with a volume per worker, for real torch DCP (agent/resume_parts.py): two ranks
(torchrun, gloo on CPU, DDP) save DCP each into its own volume (a directory per worker, as
output.volumePerWorker mounts them: rank 0 `.metadata` and its shard, rank 1 its shard); rank 1 is
killed (SIGKILL) after step 4; `agent resume-parts` writes the latest union complete over both
volumes into each; the restarted ranks each `dcp.load` from their OWN volume's
`.ckpt-resume/latest` and get the weights of step 4 back. Without the copy neither rank can load:
each reads `.metadata` and both shards. This is the data path the operator's group restart runs
between attempts (the whole restart through local mode: test_volume_per_worker.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from test_distributed import DDP

PER_WORKER = DDP.replace(
    'out = os.environ["CHECKPOINT_OUTPUT_DIR"]',
    'out = os.path.join(os.environ["CHECKPOINT_OUTPUT_DIR"], f"worker-{rank}")  # each rank its own volume',
).replace(
    'resume = os.environ.get("CHECKPOINT_RESUME_PATH")',
    'resume = os.path.join(out, ".ckpt-resume", "latest")  # its own volume only',
)


def torchrun(tmp_path: Path, output: Path, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(port), str(tmp_path / "ddp.py"), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CHECKPOINT_OUTPUT_DIR": str(output), **(env or {})})


def test_a_killed_worker_s_group_resumes_from_the_union_copied_into_each_worker_s_volume(tmp_path):
    assert "out = os.path.join" in PER_WORKER and ".ckpt-resume" in PER_WORKER
    (tmp_path / "ddp.py").write_text(PER_WORKER)
    # the weights at step 4, from a run that is not killed
    reference = torchrun(tmp_path, tmp_path / "reference", ["train", "4", "2", str(tmp_path / "reference.json")])
    assert reference.returncode == 0, reference.stderr[-3000:]
    at_step_4 = json.loads((tmp_path / "reference.json").read_text())["weights"]

    output = tmp_path / "out"
    killed = torchrun(tmp_path, output, ["train", "8", "2", str(tmp_path / "kill.json")], env={"KILL_AT": "4"})
    assert killed.returncode != 0 and not (tmp_path / "kill.json").exists()
    assert sorted(p.name for p in (output / "worker-0" / "step-4").iterdir()) == [".metadata", "__0_0.distcp"]
    assert sorted(p.name for p in (output / "worker-1" / "step-4").iterdir()) == ["__1_0.distcp"]
    assert not (output / "worker-0" / "step-6").exists()

    copied = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "resume-parts", str(output),
                             "--parts", "2"], capture_output=True, text=True, timeout=120)
    assert copied.returncode == 0, copied.stderr
    assert "resume: step-4 (step 4, 3 files" in copied.stdout, copied.stdout
    for worker in (0, 1):
        latest = output / f"worker-{worker}" / ".ckpt-resume" / "latest"
        assert sorted(p.name for p in latest.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]

    restarted = torchrun(tmp_path, output, ["train", "8", "2", str(tmp_path / "kill.json")], env={"KILL_AT": "4"})
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    final = json.loads((tmp_path / "kill.json").read_text())
    assert (final["attempt"], final["start"]) == (1, 4)  # resumed from step 4, on both ranks (one collective)
    assert final["weights_at_start"] == at_step_4   # dcp.load gave step 4's weights back
    assert sorted(p.name for p in (output / "worker-1" / "step-8").iterdir()) == ["__1_0.distcp"]
