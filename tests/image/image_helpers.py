"""What the image tests share: Podman with build.sh's settings, and a run with the cluster's flags."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "e2e" / "image"))
import podman  # noqa: E402  (e2e/image/podman.py: the settings build.sh uses)

# How the chart runs the operator and its agent pods: user 65532, read-only root filesystem,
# an emptyDir at /tmp, every capability dropped, no privilege escalation. --read-only-tmpfs=false:
# Podman would otherwise put tmpfs on /run and /var/tmp too, which a kubelet does not.
CLUSTER_FLAGS = ["--read-only", "--read-only-tmpfs=false", "--user", "65532:65532", "--tmpfs", "/tmp",
                 "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
USER = (65532, 65532)


def require_engine() -> None:
    """At the top of each test module: without Podman (or root) the module is one skip that says
    so, or, with CKPT_IMAGE_TIER=required (.ci/run, where it installed Podman), a collection error."""
    reason = podman.unavailable()
    if reason:
        message = f"image tier did not run: {reason}"
        if os.environ.get("CKPT_IMAGE_TIER") == "required":
            pytest.fail(f"{message} (CKPT_IMAGE_TIER=required)", pytrace=False)
        pytest.skip(message, allow_module_level=True)


@dataclass
class Image:
    name: str

    def run(self, *args: str, volumes: Iterable[tuple[Path, str, str]] = (), env: Mapping[str, str] = {},
            env_from_host: Iterable[str] = (), network: str = "none", entrypoint: Optional[str] = None,
            flags: Iterable[str] = CLUSTER_FLAGS, timeout: float = 180) -> subprocess.CompletedProcess:
        """`podman run --rm` of this image with the cluster's flags; volumes are (host dir, path, "ro"|"rw").

        `env_from_host` names variables passed by name only (`-e NAME`), so credentials never
        appear on a command line."""
        # Podman kills the container itself at the timeout (killing the client would leave it running).
        cmd = ["run", "--rm", "--timeout", str(int(timeout)), *flags, "--network", network]
        for host, path, mode in volumes:
            cmd += ["--volume", f"{host}:{path}:{mode}"]
        for key, value in env.items():
            cmd += ["--env", f"{key}={value}"]
        for key in env_from_host:
            cmd += ["--env", key]
        if entrypoint:
            cmd += ["--entrypoint", entrypoint]
        return podman.run(*cmd, self.name, *args, timeout=timeout + 60)
