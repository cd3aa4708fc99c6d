"""The real operator process (kopf, real HTTP client) against the emulated API, with the local
cluster playing the Job controller and the kubelet. The operator's own agent pods run for real
(`checkpoint-operator agent ...` on the claim directories); tests play the training code
through `container_runner`, or let the kubelet run the template's command."""

from __future__ import annotations

import asyncio
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

# The timers' interval is read when checkpoint_operator.main is imported: keep tests snappy.
os.environ.setdefault("CKPT_RECONCILE_INTERVAL", "0.2")

import kopf  # noqa: E402
import pytest  # noqa: E402

from checkpoint_operator import main  # noqa: E402
from checkpoint_operator.config import OperatorConfig  # noqa: E402
from checkpoint_operator.reconcile.context import Context  # noqa: E402
from checkpoint_operator.kube import Kube  # noqa: E402
from checkpoint_operator.local.server import run_kopf_in_thread  # noqa: E402

NS = "default"
CKPT = "ckpt.dev/v1alpha1/checkpoints"
TJ = "ckpt.dev/v1alpha1/trainingjobs"


@dataclass
class Operator:
    """Start/stop the operator (restartable mid-test) and reach its API client."""

    api_url: str
    config: OperatorConfig
    handle: Any = None
    namespaces: list = field(default_factory=lambda: [NS])
    ctx: Any = None  # the running operator's Context (tests wait on its indexes to order their steps)

    async def start(self) -> None:
        settings = kopf.OperatorSettings()
        main.configure_settings(settings)
        ctx = self.ctx = Context(kube=Kube.from_url(self.api_url), config=self.config, namespaces=list(self.namespaces))
        self.handle = await asyncio.to_thread(run_kopf_in_thread, kopf.get_default_registry(), settings, self.namespaces,
                                              self.api_url, memo=main.make_memo(ctx))

    async def stop(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            await asyncio.to_thread(handle.stop)


@pytest.fixture
def operator_config() -> OperatorConfig:
    return OperatorConfig(reconcile_interval=0.2, agent_image="checkpoint-operator:test")


@pytest.fixture
async def operator(api_url: str, cluster, operator_config: OperatorConfig) -> AsyncIterator[Operator]:
    op = Operator(api_url, operator_config)
    await op.start()
    yield op
    await op.stop()


def training_job(name: str, *, checkpoints: list | None = None, command: list | None = None, **spec: Any) -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"checkpoints": checkpoints or [],
                     "template": {"spec": {"containers": [
                         {"name": "trainer", "image": "trainer:1", "command": command or ["train"]}]}},
                     **spec}}


def write_checkpoint(root: str, directory: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = os.path.join(root, directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


class Trainer:
    """Plays the training code: `behaviour(attempt, env)` runs for each training container and
    returns an exit code; the env is what the container got (paths already on the host). A
    plain function runs in a thread; a coroutine function (`held_until`) in the test's loop, so
    that a job held open holds no thread (the loop's default pool has only cores + 4)."""

    def __init__(self) -> None:
        self.behaviours: dict[str, Callable[[int, dict], int]] = {}
        self.envs: dict[str, list[dict]] = {}

    async def __call__(self, pod: dict, container: dict, env: dict, mounts: dict) -> int | None:
        job = pod["metadata"].get("labels", {}).get("ckpt.dev/trainingjob")
        if pod["metadata"].get("labels", {}).get("ckpt.dev/component") != "worker" or job not in self.behaviours \
                or container["name"] != "trainer":
            return None  # the operator's own agent pods and init containers (and unknown pods) run for real
        self.envs.setdefault(job, []).append(dict(env))
        attempt = len(self.envs[job])
        behaviour = self.behaviours[job]
        if inspect.iscoroutinefunction(behaviour):
            return await behaviour(attempt, env)
        return await asyncio.to_thread(behaviour, attempt, env)


def held_until(event: asyncio.Event, timeout: float = 60, exit_code: int = 0) -> Callable:
    """A behaviour that runs until `event` is set (at most `timeout` s), then exits."""
    async def behaviour(attempt: int, env: dict) -> int:
        await asyncio.wait_for(event.wait(), timeout)
        return exit_code
    return behaviour


@pytest.fixture
def trainer() -> Trainer:
    return Trainer()


@pytest.fixture
def container_runner(trainer: Trainer) -> Trainer:
    return trainer
