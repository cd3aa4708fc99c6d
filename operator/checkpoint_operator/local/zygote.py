"""A pre-started Python process that forks one child per `checkpoint-operator ...` command.

A fresh interpreter spends 0.2-0.5 s importing pydantic, boto3 and the agent before an agent
command does anything; local mode runs two or more agent pods per TrainingJob. The zygote imports
those modules once, then forks a child per command, so a command starts in milliseconds and still
runs in its own process (own pid, session, environment, working directory, file descriptors):
a crash, ``os._exit`` or a leak in one command cannot touch the kubelet or the next command.

Forking is safe only from a single-threaded process, so the zygote is its own process (started
with ``python -m checkpoint_operator.local.zygote SOCKET``) that never starts a thread; the
kubelet (which lives beside kopf's threads) only talks to it over a Unix socket.

Protocol, one connection per command: the client sends one JSON line ``{"argv", "env", "cwd"}``
with two file descriptors attached (SCM_RIGHTS: the child's stdout and stderr); the zygote
answers ``{"pid": N}`` once forked and ``{"exit": CODE}`` when the child ended (a signal N is
reported as 128+N, as container runtimes do). A client that closes the connection early gets
its child killed. The zygote exits when its stdin closes (the kubelet went away).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from checkpoint_operator.local import reaper

# Imported once in the zygote, so children start with them loaded.
# The program a child becomes: the `checkpoint-operator` console script (what `python -m
# checkpoint_operator` runs). Named, not imported: the command line sits above local/ in the layers.
ENTRY_POINT = "checkpoint_operator.cli:main"


def _entry_point():
    module, _, name = ENTRY_POINT.partition(":")
    return getattr(importlib.import_module(module), name)


PRELOAD = ("checkpoint_operator.cli", "checkpoint_operator.agent.cli", "checkpoint_operator.agent.scan",
           "checkpoint_operator.agent.snapshot", "checkpoint_operator.agent.upload",
           "checkpoint_operator.agent.download", "checkpoint_operator.agent.importer",
           "checkpoint_operator.objectstore.s3", "boto3", "botocore.session")
MAX_REQUEST = 4 * 1024 * 1024


def exit_code_of(status: int) -> int:
    """A wait status as a container runtime reports it: the exit code, or 128 + the signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# --- the zygote process ----------------------------------------------------------------------------

def _run_child(request: dict[str, Any], stdout_fd: int, stderr_fd: int) -> int:
    """In the forked child: become the command, run it, return its exit code. It is a child
    subreaper and ends every process it started before it exits (local/reaper.py)."""
    os.setsid()
    reaper.become_subreaper()
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    os.closerange(3, 1 << 16)  # the listening socket, other connections, the inherited pipes
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    sys.argv = argv
    try:
        return _entry_point()(argv[1:])
    except SystemExit as exc:  # as the interpreter handles it
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - as an interpreter would: a traceback, exit code 1
        import traceback
        traceback.print_exc()
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        reaper.end_descendants()


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    fds = array.array("i")
    data, ancdata, _, _ = conn.recvmsg(MAX_REQUEST, socket.CMSG_LEN(2 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return json.loads(data), list(fds)


def serve(socket_path: str) -> None:
    # A command killed before it could end its own processes leaves them to the zygote, not to
    # the host's init: they are ended as soon as they arrive (_end_orphans).
    reaper.become_subreaper()
    for module in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    server.listen(64)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the selector
    children: dict[int, socket.socket] = {}  # pid -> the connection that asked for it
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ, "accept")
    selector.register(wake_read, selectors.EVENT_READ, "child")
    selector.register(0, selectors.EVENT_READ, "parent")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in selector.select():
            if key.data == "accept":
                conn, _ = server.accept()
                try:
                    request, fds = _receive(conn)
                except (OSError, ValueError):
                    conn.close()
                    continue
                # The child starts with SIGTERM held (blocked): its command takes it once its own
                # handler is in place (checkpoint_operator.cli), so a SIGTERM that comes while it
                # starts is not lost, as a command that starts in milliseconds can expect.
                held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
                pid = os.fork()
                if pid == 0:
                    os._exit(_run_child(request, *fds[:2]))
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                selector.register(conn, selectors.EVENT_READ, pid)
            elif key.data == "child":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 4096)
                _reap(children, selector)
            elif key.data == "parent":
                if not os.read(0, 4096):  # the kubelet is gone: so are its commands
                    for pid in children:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(pid, signal.SIGKILL)
                    reaper.end_descendants()
                    return
            else:  # the client hung up before its command ended: stop the command
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(key.data, signal.SIGKILL)
                selector.unregister(key.fileobj)


def _reap(children: dict[int, socket.socket], selector: selectors.BaseSelector) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue  # an orphan ended below
        _end_orphans(children)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"exit": exit_code_of(status)}).encode() + b"\n")
        conn.close()


def _end_orphans(children: dict[int, socket.socket]) -> None:
    """Children of the zygote that are not commands were left by a command that died (SIGKILL):
    end them with everything below them, as their container's end would."""
    for pid in reaper.children_of(os.getpid()):
        if pid not in children:
            for doomed in [pid, *reaper.descendants(pid)]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(doomed, signal.SIGKILL)


# --- the client (in the kubelet) -------------------------------------------------------------------

class ZygoteProcess:
    """One command running in a child of the zygote."""

    def __init__(self, pid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.pid = pid
        self._reader = reader
        self._writer = writer

    async def wait(self) -> int:
        try:
            line = await self._reader.readline()
            if not line:
                return 137  # the zygote died with the command
            return int(json.loads(line)["exit"])
        finally:
            self._writer.close()

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            try:
                os.killpg(self.pid, signum)
            except ProcessLookupError:  # just forked: not yet the leader of its own group (setsid)
                os.kill(self.pid, signum)


class Zygote:
    """Starts the zygote process on first use; ``spawn`` runs a command in a fresh child."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._dir: tempfile.TemporaryDirectory | None = None
        self._socket_path = ""
        self._lock = asyncio.Lock()

    async def _ensure_started(self) -> None:
        async with self._lock:
            if self._process is not None and self._process.returncode is None:
                return
            self._dir = tempfile.TemporaryDirectory(prefix="ckpt-zygote-")
            self._socket_path = os.path.join(self._dir.name, "zygote.sock")
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "checkpoint_operator.local.zygote", self._socket_path,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            assert self._process.stdout is not None
            if await self._process.stdout.readline() != b"ready\n":
                raise RuntimeError("local kubelet: the agent zygote process did not start")

    async def spawn(self, argv: list[str], env: dict[str, str], cwd: str | Path,
                    stdout_fd: int, stderr_fd: int) -> ZygoteProcess:
        """Run ``checkpoint-operator ARGS`` (``argv[0]`` is the program name) in a new child whose
        stdout and stderr are the given descriptors (the caller closes its copies afterwards)."""
        await self._ensure_started()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self._socket_path)
            request = json.dumps({"argv": argv, "env": dict(env), "cwd": str(cwd)}).encode()
            socket.send_fds(sock, [request], [stdout_fd, stderr_fd])
            sock.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        line = await reader.readline()
        if not line:
            writer.close()
            raise RuntimeError("local kubelet: the agent zygote did not start the command")
        return ZygoteProcess(int(json.loads(line)["pid"]), reader, writer)

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except asyncio.TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


if __name__ == "__main__":
    serve(sys.argv[1])
