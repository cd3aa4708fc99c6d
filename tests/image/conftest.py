"""The image tier: the operator image, built by e2e/image/build.sh, run with Podman as a cluster runs it.

Not part of the default run (it needs root, Podman and the built images): `python -m pytest -m image`
(.ci/run does it after building). Without Podman or root each module is one skip, "image tier did
not run: <why>" (image_helpers.require_engine); with CKPT_IMAGE_TIER=required (set by .ci/run where
it installed Podman) that is a collection error instead. Podman present but the images missing or
older than this checkout is always a failure: run `bash e2e/image/build.sh`.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from image_helpers import ROOT, Image, podman

PACKAGE = ROOT / "operator" / "checkpoint_operator"


def _package_digests() -> dict[str, str]:
    """The package as the image should hold it: without local mode, which .dockerignore leaves out."""
    return {str(p.relative_to(PACKAGE)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(PACKAGE.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.relative_to(PACKAGE).parts[0] != "local"}


_IMAGE_DIGESTS = r"""
import hashlib, json, pathlib, checkpoint_operator
root = pathlib.Path(checkpoint_operator.__file__).parent
print(json.dumps({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}))
"""


@pytest.fixture(scope="session")
def engine() -> None:
    probe = podman.run("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60)
    assert probe.returncode == 0, f"podman info failed with the settings of e2e/image/podman-env.sh:\n{probe.stderr}"


@pytest.fixture(scope="session")
def image(engine) -> Image:
    """The operator image, checked to hold exactly this checkout's package (else: rebuild)."""
    missing = [name for name in (podman.OPERATOR_IMAGE, podman.BASE_IMAGE) if not podman.image_exists(name)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not built in {podman.work_dir()}: run `bash e2e/image/build.sh`",
                    pytrace=False)
    built = Image(podman.OPERATOR_IMAGE)
    result = built.run("-c", _IMAGE_DIGESTS, entrypoint="python")
    assert result.returncode == 0, result.stderr
    inside, here = json.loads(result.stdout), _package_digests()
    stale = sorted(name for name in inside.keys() | here.keys() if inside.get(name) != here.get(name))
    if stale:
        pytest.fail(f"{podman.OPERATOR_IMAGE} is older than this checkout ({len(stale)} files differ, e.g. "
                    f"{stale[0]}): run `bash e2e/image/build.sh`", pytrace=False)
    return built



@pytest.fixture(scope="session")
def train_image(engine) -> Image:
    """The small training image for local mode's container tests, with this checkout's example loop."""
    if not podman.image_exists(podman.TRAIN_IMAGE):
        pytest.fail(f"{podman.TRAIN_IMAGE} not built in {podman.work_dir()}: run `bash e2e/image/build.sh`",
                    pytrace=False)
    built = Image(podman.TRAIN_IMAGE)
    inside = built.run("cat", podman.TRAIN_SCRIPT)
    assert inside.returncode == 0, inside.stderr
    if inside.stdout != (ROOT / "examples" / "local" / "train.py").read_text():
        pytest.fail(f"{podman.TRAIN_IMAGE} has an older examples/local/train.py: run `bash e2e/image/build.sh`",
                    pytrace=False)
    return built
