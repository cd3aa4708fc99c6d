"""Run `checkpoint-operator agent ...` in the test's own process, through the same entry point
and error handling as the real command (one `error: ...` line, exit codes), with its output
captured and the environment changed only for the call. Spawning a process per case costs
seconds on a loaded machine; the tests that are about the process itself spawn one."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Optional


@dataclass
class AgentRun:
    code: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict:
        """The JSON line the command printed on success."""
        assert self.code == 0, self.stderr
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def error(self) -> str:
        """The one `error: ...` line of a failure (and that there is no traceback)."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        assert self.code != 0 and len(lines) == 1 and "Traceback" not in self.stderr, (self.code, self.stderr)
        return lines[0]


@contextlib.contextmanager
def environment(env: Optional[dict]):
    saved = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_agent(*argv: str, env: Optional[dict] = None) -> AgentRun:
    from checkpoint_operator.cli import main
    out, err = io.StringIO(), io.StringIO()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["agent", *argv])
            except SystemExit as exc:  # argparse: usage errors
                code = int(exc.code or 0)
    finally:
        signal.signal(signal.SIGTERM, handler)
    import credentials
    credentials.saw(f"agent {argv[0] if argv else ''} stdout", out.getvalue())
    credentials.saw(f"agent {argv[0] if argv else ''} stderr", err.getvalue())
    return AgentRun(code, out.getvalue(), err.getvalue())


def agent_process(*argv: str, check: bool = False) -> subprocess.CompletedProcess:
    """run_agent as subprocess.run(["checkpoint-operator", "agent", *argv], capture_output=True,
    text=True) returns it (returncode, stdout, stderr), for the unit tests that read what the
    command prints: each process paid 0.3 s of CPU for its imports, a fifth of the unit tier."""
    run = run_agent(*argv)
    done = subprocess.CompletedProcess(["checkpoint-operator", "agent", *argv], run.code, run.stdout, run.stderr)
    if check:
        done.check_returncode()
    return done
