"""Helpers of the compatibility tier: the real `agent scan` CLI and a mounted copy of a checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def agent_scan(directory: Path, *args: str) -> dict[str, dict]:
    """`checkpoint-operator agent scan DIR --json`, the real CLI: {path: manifest}, plus skipped."""
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "scan", str(directory), "--json",
                           *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    found = {m["path"]: m for m in result["checkpoints"]}
    found["__skipped__"] = {s["path"]: s["reason"] for s in result["skipped"]}
    return found


def materialize(manifest: dict, checkpoint_root: Path, dest: Path) -> Path:
    """The checkpoint as a second job gets it: exactly the manifest's files, under `dest`."""
    for f in manifest["files"]:
        target = dest / f["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint_root / f["path"], target)
    return dest


def summary(manifest: dict) -> tuple:
    return manifest["format"], manifest["step"], manifest["resumable"], manifest["complete"]
