"""The servers tests start (SeaweedFS, Azurite, git daemon, the Hub mirror) die with the test process."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).parent


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return False


def test_a_server_dies_when_the_test_process_is_killed():
    """A pytest killed with SIGKILL (a CI timeout) runs no teardown: the server must go by itself."""
    starter = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         f"sys.path.insert(0, {str(TESTS)!r})\n"
         "from processes import die_with_parent\n"
         "server = subprocess.Popen(['sleep', '600'], start_new_session=True, preexec_fn=die_with_parent())\n"
         "print(server.pid, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    server = int(starter.stdout.readline())
    try:
        assert _alive(server)
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        deadline = time.monotonic() + 10
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(server), "the server outlived the killed test process"
    finally:
        if _alive(server):
            os.kill(server, signal.SIGKILL)
