"""Every process a container started ends with the container, as a container runtime does it.

In a pod, each container has its own PID namespace: when its main process exits, the kernel kills
every other process in it, detached or not. The process runtime has no namespaces (local mode
runs unprivileged), so a trainer's child started with `start_new_session=True` outlived its
container and could rewrite a checkpoint after it was sealed (issue 18 item 8a). Each container's
command therefore runs under a small init process, this module's `main`:

- it becomes a *child subreaper* (Linux `prctl(PR_SET_CHILD_SUBREAPER)`): a descendant whose
  parent dies is re-parented to it, not to the host's init, so no descendant can leave its tree;
- it runs the command as its one child, in a process group of its own, forwards SIGTERM, SIGINT,
  SIGHUP and SIGQUIT to that group, and reaps whatever is re-parented to it (as tini does);
- when the command exits, or on SIGUSR1 (the kubelet's SIGKILL, which an init process must be
  told instead of receiving it), or when the kubelet's thread that started it goes away
  (`PR_SET_PDEATHSIG`), it SIGKILLs every descendant, waits until none is left, and exits with
  the command's status (128 + N for a signal N, as container runtimes report it).

The kubelet learns through a status pipe (file descriptor 3) whether the command could be
started: `{"pid": N}` or `{"error": errno, "message": ...}` (then the container fails to start,
as `CreateContainerError` does on a cluster). The agent zygote (zygote.py) makes its command
children subreapers with the same functions.

Only Linux has subreapers; elsewhere the command still runs and its own process group is ended,
but a process that detached into another session is not found (documented in docs/local-mode.md).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import sys
import time
from typing import Optional

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STATUS_FD = 3
KILL_ALL = signal.SIGUSR1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
END_TIMEOUT = 10.0  # seconds to wait for killed descendants to be gone (a process in D state dies late)


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process (Linux 3.4+); False where unsupported."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc; [] where there is no /proc."""
    return _children_by_parent().get(pid, [])


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first), from /proc; [] where there is no /proc."""
    children = _children_by_parent()
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def reap(main: Optional[int] = None) -> Optional[int]:
    """Collect every exited child without blocking; the wait status of `main` if it was one of them."""
    status = None
    while True:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == main:
            status = code


def end_descendants(timeout: float = END_TIMEOUT) -> None:
    """SIGKILL every descendant of this process until none is left (a process that forks while
    it is killed is found at the next round), reaping them; gives up after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    me = os.getpid()
    while time.monotonic() < deadline:
        left = descendants(me)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        reap()
        if not left:
            try:
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return  # no child left, not even a zombie
        time.sleep(0.01)


def exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _report(status_fd: int, message: dict) -> None:
    try:
        os.write(status_fd, json.dumps(message).encode() + b"\n")
        os.close(status_fd)
    except OSError:
        pass


def _start(argv: list[str], status_fd: int) -> int:
    """Fork the command in a process group of its own; its pid, or raise OSError when exec fails."""
    read_end, write_end = os.pipe()  # not inherited: a successful exec closes it (EOF = started)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.close(status_fd)
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            for signum in (*FORWARDED, KILL_ALL, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(signum, signal.SIG_DFL)  # as subprocess restores them
            os.execvpe(argv[0], argv, dict(os.environ))
        except OSError as exc:
            os.write(write_end, f"{exc.errno}:{exc.strerror}".encode())
        finally:
            os._exit(127)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        failure = pipe.read()
    if failure:
        os.waitpid(pid, 0)
        number, _, text = failure.decode(errors="replace").partition(":")
        raise OSError(int(number) if number.isdigit() else errno.ENOEXEC, text)
    return pid


def main(argv: Optional[list[str]] = None) -> None:
    """`reaper --status-fd N -- COMMAND...` (see the module's docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    status_fd = int(args[1]) if len(args) > 1 and args[0] == "--status-fd" else STATUS_FD
    if args[:1] == ["--status-fd"]:
        args = args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        _report(status_fd, {"error": errno.EINVAL, "message": "no command"})
        os._exit(127)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    os.set_blocking(wake_read, False)
    signal.set_wakeup_fd(wake_write)  # any signal wakes the select below at once
    pending: list[int] = []
    for signum in (*FORWARDED, KILL_ALL, signal.SIGCHLD):
        signal.signal(signum, lambda n, _frame: pending.append(n))
    become_subreaper()
    _prctl(PR_SET_PDEATHSIG, KILL_ALL)  # the kubelet's thread is gone: end everything
    try:
        main_pid = _start(args, status_fd)
    except OSError as exc:
        _report(status_fd, {"error": exc.errno, "message": f"cannot run {args[0]!r}: {exc.strerror}"})
        os._exit(127)
    _report(status_fd, {"pid": main_pid})
    status: Optional[int] = None
    while status is None:
        while pending and status is None:
            received = pending.pop(0)
            if received == KILL_ALL:
                try:
                    os.kill(main_pid, signal.SIGKILL)
                    status = os.waitpid(main_pid, 0)[1]
                except (ProcessLookupError, ChildProcessError):
                    status = int(signal.SIGKILL)  # a wait status: killed by SIGKILL
            elif received in FORWARDED:
                try:
                    os.killpg(main_pid, received)
                except (ProcessLookupError, PermissionError):
                    pass
        if status is None:
            status = reap(main_pid)
        if status is None:
            select.select([wake_read], [], [], 1.0)
            try:
                os.read(wake_read, 4096)
            except BlockingIOError:
                pass
    end_descendants()  # the container's main process is done: so is everything it started
    os._exit(exit_code(status))


if __name__ == "__main__":
    main()
