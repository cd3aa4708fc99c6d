"""The Podman settings of podman-env.sh, for Python: the image tests and local mode's container tests.

Standard library only, importable by path (e2e/ is not a package)::

    sys.path.insert(0, str(REPO / "e2e" / "image"))
    import podman
    subprocess.run(podman.command("run", "--rm", podman.OPERATOR_IMAGE, "--help"), env=podman.env())

`command()` is `podman` with the work directory's storage flags (--root/--runroot/--tmpdir);
`env()` adds CONTAINERS_CONF (ulimits, runc, cgroupfs: containers.conf says why). Both follow
$CKPT_PODMAN_DIR like podman-env.sh; tests/test_dockerfile.py checks that the two agree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Optional

HERE = Path(__file__).resolve().parent
CONTAINERS_CONF = HERE / "containers.conf"
BUILD_SCRIPT = HERE / "build.sh"
DEFAULT_WORK_DIR = "/var/tmp/ckpt-podman"

BASE_IMAGE = "localhost/debian-python:3.11"
OPERATOR_IMAGE = "localhost/checkpoint-operator:dev"
TRAIN_IMAGE = "localhost/ckpt-train:dev"
# Where the training image has the example loop; its working directory is /app, so the
# examples' command `python examples/local/train.py` finds it.
TRAIN_SCRIPT = "/app/examples/local/train.py"


def work_dir() -> Path:
    return Path(os.environ.get("CKPT_PODMAN_DIR") or DEFAULT_WORK_DIR)


def global_args() -> list[str]:
    """Podman's storage flags: every image, layer and container of ours under work_dir()."""
    root = work_dir()
    return ["--root", str(root / "root"), "--runroot", str(root / "run"), "--tmpdir", str(root / "run" / "libpod")]


def command(*args: str) -> list[str]:
    return ["podman", *global_args(), *args]


def env(base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    environ = dict(os.environ if base is None else base)
    environ["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return environ


def run(*args: str, check: bool = False, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`podman ARGS...` with these settings; text output captured unless told otherwise."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("env", env())
    return subprocess.run(command(*args), check=check, timeout=timeout, **kwargs)


def unavailable() -> Optional[str]:
    """Why Podman cannot run containers on this machine (None when it can): not root, not installed."""
    if os.geteuid() != 0:
        return "not root (Podman runs as root on these machines)"
    missing = [tool for tool in ("podman", "runc") if not shutil.which(tool)]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install -y podman runc debootstrap)"
    return None


def image_exists(image: str) -> bool:
    return run("image", "exists", image, timeout=60).returncode == 0
