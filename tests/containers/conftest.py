"""The containers tier: local mode's kubelet runs every pod as Podman containers of its images.

Not part of the default run (it needs root, Podman and the images e2e/image/build.sh makes):
`python -m pytest -m containers tests/containers` (.ci/run does it after the image tier). Where
Podman, root or the images are missing, each test is skipped with "containers tier did not run:
<why>"; with CKPT_CONTAINERS_TIER=required (set by .ci/run where it could build the images) that is
a failure instead.

The operator fixtures are the integration tier's (tests/integration/conftest.py), with two
differences: the cluster's runtime is Podman, and the agent image is the operator's real image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import AsyncIterator

import pytest

from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.local.cluster import LocalCluster
from checkpoint_operator.local.engine import OPERATOR_IMAGE, ContainerEngineRuntime, Engine, probe
from containers_support import HERE, TRAIN_IMAGE, Operator



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.containers)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root (Podman runs as root on these machines)"
    engine, why = probe("podman", OPERATOR_IMAGE)
    if engine is None:
        return f"{why} (install podman and runc, then run `bash e2e/image/build.sh`)"
    code = engine.run("image", "exists", TRAIN_IMAGE).returncode
    return None if code == 0 else f"{TRAIN_IMAGE} is not built (run `bash e2e/image/build.sh`)"


@pytest.fixture(scope="session")
def engine() -> Engine:
    why = _unavailable()
    if why is not None:
        if os.environ.get("CKPT_CONTAINERS_TIER") == "required":
            pytest.fail(f"containers tier cannot run: {why}", pytrace=False)
        pytest.skip(f"containers tier did not run: {why}")
    found = Engine.find("podman")
    assert found is not None
    return found


@pytest.fixture
async def cluster(api_url: str, tmp_path: Path, engine: Engine) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(api_url, tmp_path / "cluster", runtime=ContainerEngineRuntime(engine)) as local_cluster:
        yield local_cluster


@pytest.fixture
def operator_config() -> OperatorConfig:
    return OperatorConfig(reconcile_interval=0.2, agent_image=OPERATOR_IMAGE)


@pytest.fixture
async def operator(api_url: str, cluster: LocalCluster, operator_config: OperatorConfig) -> AsyncIterator:
    op = Operator(api_url, operator_config)
    await op.start()
    yield op
    await op.stop()
