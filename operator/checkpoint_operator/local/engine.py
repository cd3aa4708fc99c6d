"""The container runtime of the local kubelet: every container runs as a container of its image,
with Podman or Docker, the way a kubelet would run it.

- image: used as it is, never pulled (``--pull never``): an image that is not present fails the
  pod with ``ErrImagePull`` and a message naming the image;
- command/args: ``command`` replaces the image's ENTRYPOINT and ``args`` its CMD, as in Kubernetes;
  ``$(VAR)`` references are expanded from the container's env first;
- mounts: bind mounts of the volume directories (subPath: a path inside them; ``:ro`` for
  read-only mounts, enforced by the kernel: a write fails with EROFS);
- env: exactly the container's (plus HOSTNAME), no host variables;
- securityContext: runAsUser/runAsGroup (``--user``), supplementalGroups and fsGroup
  (``--group-add``), readOnlyRootFilesystem (``--read-only``, without Podman's extra tmpfs mounts:
  a pod gets none either), capabilities (``--cap-drop``/``--cap-add``), allowPrivilegeEscalation:
  false (``no-new-privileges``), runAsNonRoot (refused before start when the user would be root);
- network: the host's (``--network host``): agents reach S3 servers on 127.0.0.1, and no bridge
  network (with its nftables state) is ever made;
- logs and exit codes: the container's stdout and stderr and exit code, as the kubelet reports them.

Podman runs with the project's settings for these machines when the source tree has them
(``e2e/image/podman.py``: storage under one work directory, containers.conf with ulimits and runc),
else with the machine's own defaults. Containers carry a label of this kubelet, and whatever is
left of them is removed when the runtime closes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from checkpoint_operator.local.runtime import ContainerRun, HostProcess, StartError, normalised_exit_code

ENGINES = ("podman", "docker")
LABEL = "ckpt.dev/local-kubelet"
OPERATOR_IMAGE = "localhost/checkpoint-operator:dev"
PODMAN_SETTINGS = Path(__file__).resolve().parents[3] / "e2e" / "image" / "podman.py"


def _project_podman_settings() -> ModuleType | None:
    """``e2e/image/podman.py`` of this source tree (an editable install), if there is one."""
    if not PODMAN_SETTINGS.is_file():
        return None
    spec = importlib.util.spec_from_file_location("checkpoint_operator_e2e_podman", PODMAN_SETTINGS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Engine:
    """How to call one container engine: the program, its global flags and its environment."""

    name: str
    program: str
    global_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def find(cls, name: str) -> "Engine | None":
        program = shutil.which(name)
        if program is None:
            return None
        if name == "podman":
            settings = _project_podman_settings()
            if settings is not None:
                return cls(name, program, tuple(settings.global_args()), settings.env())
        return cls(name, program, (), dict(os.environ))

    def command(self, *args: str) -> list[str]:
        return [self.program, *self.global_args, *args]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.env, capture_output=True, text=True, timeout=timeout)

    async def run_async(self, *args: str, timeout: float = 120) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            *self.command(*args), env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            return 124, f"{self.name} {args[0]} timed out after {timeout:.0f} s"
        return process.returncode or 0, output.decode(errors="replace")


def probe(engine_name: str, image: str) -> tuple[Engine | None, str]:
    """Whether an engine works here: found, and a trivial ``run --rm`` of ``image`` succeeds.
    Returns the engine (None when it does not work) and why, in one line."""
    engine = Engine.find(engine_name)
    if engine is None:
        return None, f"{engine_name} is not installed"
    try:
        result = engine.run("run", "--rm", "--pull", "never", "--network", "host", "--entrypoint", "true", image,
                            timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{engine_name} does not answer: {exc}"
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[0]
        return None, f"{engine_name} cannot run {image}: {first}"
    return engine, f"{engine_name} runs {image}"


class ContainerProcessOfEngine(HostProcess):
    """``podman run`` in the foreground: its exit code and output are the container's."""

    def __init__(self, runtime: "ContainerEngineRuntime", name: str, pid: int, exited, output_fd: int) -> None:
        super().__init__(pid, exited, output_fd)
        self.runtime = runtime
        self.container_name = name

    def send_signal(self, signum: int) -> None:
        self.runtime.signal_container(self.container_name, signum)

    async def wait(self) -> tuple[int, str]:
        code = await self._exited
        output = await self._output
        return code, output.decode(errors="replace")


class ContainerEngineRuntime:
    """Containers of their images with Podman or Docker (see the module's docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.name = engine.name
        self.kubelet_id = uuid.uuid4().hex[:12]
        self._names = itertools.count()
        self._present: set[str] = set()
        self._image_users: dict[str, str] = {}
        self._signals: set[asyncio.Task] = set()

    async def start(self, run: ContainerRun) -> ContainerProcessOfEngine:
        await self._check_image(run.image)
        await self._check_user(run)
        name = f"ckpt-{run.pod['metadata']['uid'][:8]}-{run.name}-{next(self._names)}"[:63]
        argv = self.engine.command(*self.run_args(run, name))
        out_read, out_write = os.pipe()  # stdout and stderr both: one log, interleaved as written
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, env=self.engine.env, stdin=asyncio.subprocess.DEVNULL, stdout=out_write, stderr=out_write,
                start_new_session=True)
        finally:
            os.close(out_write)
        return ContainerProcessOfEngine(self, name, process.pid, _exit_code(process), out_read)

    def run_args(self, run: ContainerRun, name: str) -> list[str]:
        """The ``run`` arguments of one container (everything but the global flags)."""
        args = ["run", "--rm", "--name", name, "--label", f"{LABEL}={self.kubelet_id}", "--pull", "never",
                "--network", "host"]
        env = dict(run.env)
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        for mount in run.mounts:
            for part in (str(mount.source), mount.path):
                if ":" in part:
                    raise StartError("CreateContainerConfigError", f"mount {mount.path!r}: a path with ':' cannot "
                                                                   f"be bind-mounted by {self.name} ({part!r})")
            args += ["--volume", f"{mount.source}:{mount.path}{':ro' if mount.read_only else ''}"]
        args += self._security_args(run)
        if run.working_dir:
            args += ["--workdir", run.working_dir]
        command = [*(run.container.get("command") or [])]
        rest = [*(run.container.get("args") or [])]
        if command:
            args += ["--entrypoint", json.dumps([_expand(c, env) for c in command])]
        return [*args, run.image, *(_expand(a, env) for a in rest)]

    def _security_args(self, run: ContainerRun) -> list[str]:
        security, args = run.security, []
        if security.run_as_user is not None:
            user = str(security.run_as_user)
            if security.run_as_group is not None:
                user += f":{security.run_as_group}"
            args += ["--user", user]
        for group in security.supplemental_groups:
            args += ["--group-add", str(group)]
        if security.read_only_root_filesystem:
            args += ["--read-only"] + (["--read-only-tmpfs=false"] if self.name == "podman" else [])
        for capability in security.capabilities_drop:
            args += ["--cap-drop", capability]
        for capability in security.capabilities_add:
            args += ["--cap-add", capability]
        if security.allow_privilege_escalation is False:
            args += ["--security-opt", "no-new-privileges"]
        return args

    async def _check_image(self, image: str) -> None:
        if image in self._present:
            return
        if not image:
            raise StartError("InvalidImageName", "the container has no image")
        code, _ = await self.engine.run_async("image", "exists" if self.name == "podman" else "inspect", image)
        if code != 0:
            raise StartError("ErrImagePull", f'image "{image}" is not present in the local {self.name} storage, and '
                                             f'local mode has no registry to pull it from: build it there (e2e/image/'
                                             f'build.sh builds {OPERATOR_IMAGE} and localhost/ckpt-train:dev) or '
                                             f'load it ({self.name} load)')
        self._present.add(image)

    async def _check_user(self, run: ContainerRun) -> None:
        """runAsNonRoot: refuse to start when the container would run as root, as the kubelet does."""
        security = run.security
        if not security.run_as_non_root:
            return
        user = str(security.run_as_user) if security.run_as_user is not None else await self._image_user(run.image)
        if user.split(":")[0] in ("", "0", "root"):
            raise StartError("CreateContainerConfigError", "container has runAsNonRoot and image will run as root "
                                                           f"(image {run.image!r}, user {user or 'not set'!r})")

    async def _image_user(self, image: str) -> str:
        if image not in self._image_users:
            code, output = await self.engine.run_async("image", "inspect", "--format", "{{.Config.User}}", image)
            self._image_users[image] = output.strip() if code == 0 else ""
        return self._image_users[image]

    def signal_container(self, name: str, signum: int) -> None:
        task = asyncio.ensure_future(self.engine.run_async("kill", "--signal", signal.Signals(signum).name, name, timeout=30))
        self._signals.add(task)
        task.add_done_callback(self._signals.discard)

    async def close(self) -> None:
        """Stop and remove what is left of this kubelet's containers."""
        await asyncio.gather(*self._signals, return_exceptions=True)
        code, output = await self.engine.run_async("ps", "--all", "--quiet", "--filter", f"label={LABEL}={self.kubelet_id}")
        ids = output.split() if code == 0 else []
        if ids:
            await self.engine.run_async("rm", "--force", "--time", "0", *ids)


def _expand(value: str, env: dict[str, str]) -> str:
    from checkpoint_operator.local.runtime import expand_variables
    return expand_variables(value, env)


async def _exit_code(process: asyncio.subprocess.Process) -> int:
    return normalised_exit_code(await process.wait())


def container_runtime(engine_name: str) -> ContainerEngineRuntime:
    engine = Engine.find(engine_name)
    if engine is None:
        raise RuntimeError(f"{engine_name} is not installed")
    return ContainerEngineRuntime(engine)


def choose_runtime(requested: str | None, agent_image: str, workdir: Path | None) -> tuple[object, str]:
    """The runtime for ``local run --runtime``: ``process``, ``podman``, ``docker``, or None (auto:
    the first engine that works with the agent image, else processes). Returns it and one line
    saying which and why."""
    from checkpoint_operator.local.runtime import ProcessRuntime
    if requested == "process":
        return ProcessRuntime(workdir), "runtime: process (--runtime process): pod commands run as host processes"
    candidates = [requested] if requested else list(ENGINES)
    reasons = []
    for name in candidates:
        engine, why = probe(name, agent_image)
        if engine is not None:
            return ContainerEngineRuntime(engine), f"runtime: {name} ({why}): every pod runs as containers of its images"
        reasons.append(why)
    if requested:
        raise RuntimeError(f"--runtime {requested}: {reasons[0]}")
    return ProcessRuntime(workdir), (f"runtime: process (no container engine works: {'; '.join(reasons)}): "
                                     "pod commands run as host processes")
