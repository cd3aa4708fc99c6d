"""The s3 store's snapshot of several workers' volumes (`agent snapshot --parts`) against a real
SeaweedFS: each checkpoint assembled from parts is uploaded as ONE checkpoint, read from where each
file lies, and downloads into one directory whose digest is the manifest's; a conflicting
directory is not uploaded at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from checkpoint_operator.agent.manifest import MANIFEST_NAME, Manifest
from checkpoint_operator.agent.s3 import manifest_exists
from checkpoint_operator.agent.scan import scan_directory
from checkpoint_operator.protocol import channel
from checkpoint_operator.protocol.results import ScanReport
from formats_files import dcp_metadata_bytes


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_the_union_is_uploaded_as_one_checkpoint_and_downloads_into_one_directory(s3, tmp_path):
    out = tmp_path / "out"
    storage = [("__0_0.distcp", 0, 32), ("__1_0.distcp", 0, 32)]
    write(out / "worker-0" / "step-10" / ".metadata", dcp_metadata_bytes(["model.w"], storage))
    for rank in (0, 1):
        write(out / f"worker-{rank}" / "step-10" / f"__{rank}_0.distcp", bytes([rank]) * 32)
        write(out / f"worker-{rank}" / "step-10" / "config.json", b"{}")
        write(out / f"worker-{rank}" / "step-20" / "config.json", f"{rank}".encode())  # a conflict
    prefix = s3.uri("ns/job-1234/")
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "snapshot", str(out),
                           "--upload-to", prefix, "--parts", "2"], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    result = channel.find_result(proc.stdout, (ScanReport,), limit_bytes=1 << 20)  # the operator's bounded result
    assert [c.path for c in result.checkpoints] == ["step-10"]
    [step] = result.checkpoints
    assert step.uri == prefix + "dirs/step-10/" and step.fileCount == 4
    assert step.parts is None  # the s3 store keeps the union as one prefix: no worker's share is needed
    assert [s.path for s in result.skipped] == ["step-20"]
    assert not manifest_exists(prefix + "dirs/step-20/")

    dst = tmp_path / "dst"
    down = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "download",
                           step.uri, str(dst), "--digest", step.digest],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert down.returncode == 0, down.stderr
    assert sorted(p.name for p in dst.iterdir() if p.name != MANIFEST_NAME) == \
        [".metadata", "__0_0.distcp", "__1_0.distcp", "config.json"]
    assert (dst / "__1_0.distcp").read_bytes() == b"\x01" * 32
    [again] = scan_directory(dst, single=True).checkpoints  # the downloaded union, scanned as one
    assert again.digest == step.digest
    assert (again.format, again.complete) == ("torch-dcp", True)
    assert Manifest.model_validate_json((dst / MANIFEST_NAME).read_text()).digest == again.digest
