"""Every process a container started ends with the container (issue 18 item 8a), as its PID
namespace's end does on a cluster: the process runtime runs each command under local/reaper.py
(a child subreaper), and the agent zygote's commands are subreapers too.

Each case starts a *detached* grandchild (a new session, the parent exits at once) that tries to
write a file after its container has ended; before the fix it did, and outlived the pod."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checkpoint_operator.local.cluster import LocalCluster
from checkpoint_operator.local.runtime import ContainerRun, ProcessRuntime, StartError
from checkpoint_operator.local.server import ApiClient

NS = "default"
LATE = 1.5  # seconds the detached grandchild waits before it writes

DETACH = f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c",
                  "import sys, time; time.sleep({LATE}); open(sys.argv[1], 'w').write('written after the container ended')",
                  sys.argv[1]], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("parent exits", flush=True)
"""


def processes_mentioning(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


def run_of(argv: list[str], pod_dir: Path) -> ContainerRun:
    return ContainerRun(pod={"metadata": {"name": "p", "namespace": NS, "uid": "u"}}, container={"name": "c"},
                        argv=argv, env={"PATH": os.environ["PATH"]}, mounts=[], pod_dir=pod_dir)


@pytest.fixture
async def runtime():
    runtime = ProcessRuntime()
    yield runtime
    await runtime.close()


async def test_a_detached_grandchild_ends_with_its_container(runtime: ProcessRuntime, tmp_path: Path) -> None:
    target = tmp_path / "late.txt"
    process = await runtime.start(run_of(["python", "-c", DETACH, str(target)], tmp_path / "pod"))
    code, log = await process.wait()
    assert (code, log) == (0, "parent exits\n")
    await asyncio.sleep(LATE + 1)
    assert not target.exists()
    assert processes_mentioning(str(target)) == []


async def test_a_killed_container_ends_everything_it_started(runtime: ProcessRuntime, tmp_path: Path) -> None:
    target = tmp_path / "late.txt"
    code = DETACH + "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n"
    process = await runtime.start(run_of(["python", "-c", code, str(target)], tmp_path / "pod"))
    await asyncio.sleep(0.5)
    process.send_signal(15)  # ignored, as a stuck trainer does
    await asyncio.sleep(0.2)
    process.send_signal(9)  # the grace period is over
    started = time.monotonic()
    exit_code, _ = await process.wait()
    assert exit_code == 137 and time.monotonic() - started < 10
    await asyncio.sleep(LATE + 1)
    assert not target.exists() and processes_mentioning(str(target)) == []


async def test_sigterm_reaches_the_command_and_its_exit_code_is_the_containers(runtime: ProcessRuntime,
                                                                                tmp_path: Path) -> None:
    process = await runtime.start(run_of(["sh", "-c", "trap 'echo stopping; exit 3' TERM; sleep 30 & wait"],
                                         tmp_path / "pod"))
    await asyncio.sleep(0.5)
    process.send_signal(15)
    assert await process.wait() == (3, "stopping\n")


async def test_a_command_that_cannot_run_does_not_start(runtime: ProcessRuntime, tmp_path: Path) -> None:
    with pytest.raises(StartError) as raised:
        await runtime.start(run_of(["no-such-program-here"], tmp_path / "pod"))
    message = raised.value.message
    assert message.startswith("cannot run 'no-such-program-here': ") and "No such file or directory" in message


ENTRY = """import runpy, sys
def main(argv):
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name='__main__')
    return 0
"""


def zygote_python(tmp_path: Path, code: str) -> list[str]:
    """A fresh interpreter whose zygote children become a tiny entry point running a Python file
    (instead of `checkpoint_operator.cli:main`), then `code`."""
    (tmp_path / "zygote_entry.py").write_text(ENTRY)
    prelude = (f"import os, sys; sys.path.insert(0, {str(tmp_path)!r}); "
               "from checkpoint_operator.local import zygote; zygote.ENTRY_POINT = 'zygote_entry:main'; ")
    return [sys.executable, "-c", prelude + code]


def test_an_agent_command_in_a_zygote_child_ends_what_it_started(tmp_path: Path) -> None:
    target, script = tmp_path / "late.txt", tmp_path / "detach.py"
    script.write_text(DETACH)
    request = {"argv": ["checkpoint-operator", str(script), str(target)], "env": dict(os.environ),
               "cwd": str(tmp_path)}
    # as the zygote runs a command in a forked child: here in a process of its own
    ran = subprocess.run(zygote_python(tmp_path, f"os._exit(zygote._run_child({request!r}, 1, 2))"),
                         capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, "parent exits\n"), ran.stderr
    time.sleep(LATE + 1)
    assert not target.exists() and processes_mentioning(str(target)) == []


def test_the_zygote_ends_what_a_killed_command_left_behind(tmp_path: Path) -> None:
    """A command SIGKILLed before it could end its processes: they are re-parented to the zygote
    (a subreaper), which ends them."""
    target, script = tmp_path / "late.txt", tmp_path / "detach.py"
    script.write_text(DETACH + "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    sock_path = str(tmp_path / "z.sock")
    server = subprocess.Popen(zygote_python(tmp_path, f"zygote.serve({sock_path!r})"), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        assert server.stdout.readline() == b"ready\n"
        out = os.open(tmp_path / "out.log", os.O_WRONLY | os.O_CREAT)
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(sock_path)
            request = {"argv": ["checkpoint-operator", str(script), str(target)], "env": dict(os.environ),
                       "cwd": str(tmp_path)}
            socket.send_fds(conn, [json.dumps(request).encode()], [out, out])
            os.close(out)
            answers = conn.makefile("rb")
            assert "pid" in json.loads(answers.readline())
            assert json.loads(answers.readline()) == {"exit": 137}
        assert "parent exits" in (tmp_path / "out.log").read_text()
        time.sleep(LATE + 1)
        assert not target.exists() and processes_mentioning(str(target)) == []
    finally:
        server.stdin.close()  # the zygote's kubelet is gone: it ends
        assert server.wait(timeout=30) == 0


async def test_through_the_kubelet_a_pod_leaves_no_process_behind(api: ApiClient, cluster: LocalCluster,
                                                                  wait_for, tmp_path: Path) -> None:
    target = tmp_path / "late.txt"
    await api.create("batch/v1/jobs", NS, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "detach"},
                                           "spec": {"backoffLimit": 0, "template": {"spec": {
                                               "restartPolicy": "Never", "containers": [{
                                                   "name": "trainer", "image": "ignored",
                                                   "command": ["python", "-c", DETACH, str(target)]}]}}}})

    async def succeeded():
        pods = await api.list("v1/pods", NS, label_selector="job-name=detach")
        return pods if pods and pods[0].get("status", {}).get("phase") == "Succeeded" else None
    await wait_for(succeeded, timeout=20)
    await asyncio.sleep(LATE + 1)
    assert not target.exists() and processes_mentioning(str(target)) == []
