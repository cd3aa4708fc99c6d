"""How the local kubelet runs one container: the process runtime (host processes in a view of the
pod's mounts) and what every runtime is given and gives back.

A runtime's ``start(run)`` returns a ``ContainerProcess`` (``wait()`` -> exit code and log;
``send_signal(n)``) or raises ``StartError`` (the container could not be created: the pod
fails with that reason, e.g. ``ErrImagePull``). The container engines live in ``engine.py``.

The process runtime ignores images and security contexts: ``python``/``python3`` run this
interpreter, ``checkpoint-operator ...`` runs in a fork of the agent zygote (``zygote.py``),
anything else runs as it is, from ``workdir`` (local mode: the current directory). Paths are
rewritten into the container's view (``podview.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from checkpoint_operator.agent import fstree
from checkpoint_operator.local import reaper
from checkpoint_operator.local.podview import Mount, PodView
from checkpoint_operator.local.zygote import Zygote

HOST_ENV_PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "SSL_CERT_FILE")
LOG_LIMIT = 8 * 1024 * 1024  # bytes of stdout (and of stderr) kept per container: the end of it


@dataclass(frozen=True)
class Security:
    """The effective securityContext of a container (the container's fields over the pod's)."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool = False
    read_only_root_filesystem: bool = False
    allow_privilege_escalation: bool | None = None
    capabilities_add: tuple[str, ...] = ()
    capabilities_drop: tuple[str, ...] = ()
    supplemental_groups: tuple[int, ...] = ()

    @classmethod
    def of(cls, pod: Mapping[str, Any], container: Mapping[str, Any]) -> "Security":
        pod_context = pod.get("spec", {}).get("securityContext") or {}
        context = {**pod_context, **(container.get("securityContext") or {})}
        capabilities = (container.get("securityContext") or {}).get("capabilities") or {}
        groups = [*(pod_context.get("supplementalGroups") or [])]
        if pod_context.get("fsGroup") is not None:
            groups.append(pod_context["fsGroup"])
        return cls(run_as_user=context.get("runAsUser"), run_as_group=context.get("runAsGroup"),
                   run_as_non_root=bool(context.get("runAsNonRoot")),
                   read_only_root_filesystem=bool(context.get("readOnlyRootFilesystem")),
                   allow_privilege_escalation=context.get("allowPrivilegeEscalation"),
                   capabilities_add=tuple(capabilities.get("add") or ()),
                   capabilities_drop=tuple(capabilities.get("drop") or ()),
                   supplemental_groups=tuple(int(g) for g in groups))


@dataclass
class ContainerRun:
    """One container of a pod, resolved by the kubelet: what any runtime needs to run it."""

    pod: dict
    container: dict
    argv: list[str]  # command + args as in the spec: $(VAR) not yet expanded; container paths
    env: dict[str, str]  # exactly the container's environment (no host variables)
    mounts: list[Mount]
    pod_dir: Path
    security: Security = field(default_factory=Security)

    @property
    def name(self) -> str:
        return self.container["name"]

    @property
    def image(self) -> str:
        return self.container.get("image") or ""

    @property
    def working_dir(self) -> str | None:
        return self.container.get("workingDir") or None

    def expanded_argv(self, env: Mapping[str, str]) -> list[str]:
        return [expand_variables(arg, env) for arg in self.argv]


def expand_variables(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` references; ``$$`` escapes; unknown references stay as they are."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


class StartError(Exception):
    """The container could not be created; ``reason`` is the waiting reason (ErrImagePull, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ContainerProcess(Protocol):
    async def wait(self) -> tuple[int, str]: ...

    def send_signal(self, signum: int) -> None: ...


def normalised_exit_code(returncode: int) -> int:
    """Killed by signal N (a negative returncode) -> 128 + N, as container runtimes report it."""
    return 128 - returncode if returncode < 0 else returncode


async def read_bounded(fd: int, limit: int = LOG_LIMIT, on_chunk: Any = None) -> bytes:
    """Read a pipe to its end without blocking the loop, keeping the last ``limit`` bytes;
    ``on_chunk(data)`` sees the output as it comes (a running container's log)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    kept, size = [], 0
    try:
        while chunk := await reader.read(1 << 16):
            if on_chunk is not None:
                on_chunk(chunk)
            kept.append(chunk)
            size += len(chunk)
            while size - len(kept[0]) >= limit:
                size -= len(kept.pop(0))
    finally:
        transport.close()
    data = b"".join(kept)
    return data[-limit:]


class HostProcess:
    """A container's main process on this host (a subprocess, or a child of the zygote). Its
    stdout and stderr are one pipe (`output_fd`): the log holds them interleaved as written."""

    def __init__(self, pid: int, exited: Any, output_fd: int) -> None:
        self.pid = pid
        self._exited = exited  # awaitable -> exit code
        self.on_stdout: Any = None  # set by the kubelet to follow the output while it runs
        self._output = asyncio.ensure_future(read_bounded(output_fd, on_chunk=self._stdout_chunk))  # drained from now on
        # A pod cancelled mid-run (the kubelet stops) never awaits its output: nothing to report then.
        self._output.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _stdout_chunk(self, data: bytes) -> None:
        if self.on_stdout is not None:
            self.on_stdout(data)

    async def wait(self) -> tuple[int, str]:
        try:
            code = await self._exited
        finally:
            self.send_signal(signal.SIGKILL)  # the container ends with its main process: so do its children
        output = await self._output
        return code, output.decode(errors="replace")

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)


def host_command(argv: list[str]) -> list[str]:
    """``python``/``python3`` -> this interpreter; ``checkpoint-operator`` -> this package's CLI."""
    if not argv:
        return argv
    program = os.path.basename(argv[0])
    if program in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    if program == "checkpoint-operator":
        return [sys.executable, "-m", "checkpoint_operator", *argv[1:]]
    return argv


@dataclass
class HostCommand:
    """A container as a host process: argv, env and working directory in the container's view."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    view: PodView


async def host_command_for(run: ContainerRun, workdir: Path | None) -> HostCommand:
    """Lay out the container's view and translate its paths into it."""
    view = PodView(run.pod_dir / "views" / run.name, run.mounts)
    await asyncio.to_thread(view.materialise)
    env = {key: os.environ[key] for key in HOST_ENV_PASSED if key in os.environ}
    env.update({key: view.translate(value) for key, value in run.env.items()})
    # $(VAR) expands to the translated value, so a path inside an argument lands in the view too.
    argv = [view.translate(arg) for arg in run.expanded_argv(env)]
    cwd = Path(view.translate(run.working_dir)) if run.working_dir else (workdir or run.pod_dir)
    return HostCommand(argv, env, cwd, view)


class ProcessRuntime:
    """Containers as host processes (see the module's docstring)."""

    name = "process"

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = workdir
        self.zygote = Zygote()

    async def start(self, run: ContainerRun) -> ContainerProcess:
        if not run.argv:
            raise StartError("CreateContainerError", f"container {run.name!r} has no command: the process runtime "
                                                     f"ignores images, so it cannot run the image's entrypoint")
        command = await host_command_for(run, self.workdir)
        fstree.make_dirs(str(command.cwd))
        out_read, out_write = os.pipe()  # stdout and stderr both: one log, interleaved as written
        try:
            if os.path.basename(command.argv[0]) == "checkpoint-operator":
                child = await self.zygote.spawn(command.argv, command.env, command.cwd, out_write, out_write)
                pid, exited = child.pid, child.wait()
            else:
                return await _start_under_reaper(command, out_read, out_write)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.close(out_read)
            if isinstance(exc, OSError):
                raise StartError("StartError", f"cannot run {command.argv[0]!r}: {exc}") from None
            raise
        finally:
            with contextlib.suppress(OSError):
                os.close(out_write)
        return HostProcess(pid, exited, out_read)

    async def close(self) -> None:
        await self.zygote.stop()


# The reaper runs without site-packages' start-up cost (-S) and without the container's PYTHON*
# variables (-E); it finds this package where this process found it.
_REAPER = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
           "from checkpoint_operator.local.reaper import main; main()")
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class ReapedProcess(HostProcess):
    """A container's command under its reaper (local/reaper.py): signals go to the reaper, which
    forwards them to the command's process group; SIGKILL becomes "end everything" (SIGUSR1),
    since an init process cannot be told SIGKILL and still clean up after itself."""

    def __init__(self, pid: int, exited: Any, output_fd: int) -> None:
        super().__init__(pid, exited, output_fd)
        self.ended = False

    async def wait(self) -> tuple[int, str]:
        code = await self._exited
        self.ended = True  # the reaper ended every process of the container before it exited
        output = await self._output
        return code, output.decode(errors="replace")

    def send_signal(self, signum: int) -> None:
        if self.ended:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, reaper.KILL_ALL if signum == signal.SIGKILL else signum)


async def _start_under_reaper(command: HostCommand, out_read: int, out_write: int) -> ContainerProcess:
    status_read, status_write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-S", "-E", "-c", _REAPER, _PACKAGE_PARENT, "--status-fd", str(status_write), "--",
            *host_command(command.argv), env=command.env, cwd=str(command.cwd), stdin=asyncio.subprocess.DEVNULL,
            stdout=out_write, stderr=out_write, start_new_session=True, pass_fds=(status_write,))
    finally:
        os.close(status_write)
    with os.fdopen(status_read, "rb") as status:
        line = await asyncio.to_thread(status.readline)
    try:
        started = json.loads(line) if line.strip() else {}
    except ValueError:
        started = {}
    if "pid" not in started:
        await process.wait()
        os.close(out_read)
        message = started.get("message") or f"cannot run {command.argv[0]!r}: the process runtime could not start it"
        raise StartError("StartError", message)
    return ReapedProcess(process.pid, _exit_code(process), out_read)


async def _exit_code(process: asyncio.subprocess.Process) -> int:
    return normalised_exit_code(await process.wait())
