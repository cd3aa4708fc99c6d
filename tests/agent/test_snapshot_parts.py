"""The s3 store's snapshot of several workers' volumes (`agent snapshot --parts`) against a real
SeaweedFS: each checkpoint assembled from parts is uploaded as ONE checkpoint, read from where each
file lies, and downloads into one directory whose digest is the manifest's; a conflicting
directory is not uploaded at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from checkpoint_operator.agent.manifest import MANIFEST_NAME, Manifest
from checkpoint_operator.agent.s3 import manifest_exists
from checkpoint_operator.agent.scan import scan_directory
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
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [c["path"] for c in result["checkpoints"]] == ["step-10"]
    assert result["uploads"] == {"step-10": prefix + "dirs/step-10/"}
    assert result["sources"] == {"step-10": [0, 0, 1, 0]}
    assert [s["path"] for s in result["skipped"]] == ["step-20"]
    assert not manifest_exists(prefix + "dirs/step-20/")

    dst = tmp_path / "dst"
    down = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "download",
                           result["uploads"]["step-10"], str(dst), "--digest", result["checkpoints"][0]["digest"]],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert down.returncode == 0, down.stderr
    assert sorted(p.name for p in dst.iterdir() if p.name != MANIFEST_NAME) == \
        [".metadata", "__0_0.distcp", "__1_0.distcp", "config.json"]
    assert (dst / "__1_0.distcp").read_bytes() == b"\x01" * 32
    [again] = scan_directory(dst, single=True).checkpoints  # the downloaded union, scanned as one
    assert again.digest == result["checkpoints"][0]["digest"]
    assert (again.format, again.complete) == ("torch-dcp", True)
    assert Manifest.model_validate_json((dst / MANIFEST_NAME).read_text()).digest == again.digest
