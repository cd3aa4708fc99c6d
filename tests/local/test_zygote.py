"""The agent zygote (checkpoint_operator.local.zygote): agent commands forked from one pre-started
process behave as if run on their own: same output and exit codes, their own working directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from checkpoint_operator.local.runtime import read_bounded
from checkpoint_operator.protocol.errors import REFUSED_EXIT_CODE
from checkpoint_operator.local.zygote import Zygote, exit_code_of


async def run(zygote: Zygote, argv: list[str], cwd: Path, env: dict | None = None) -> tuple[int, str, str]:
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        child = await zygote.spawn(argv, env or {"PATH": os.environ["PATH"]}, cwd, out_write, err_write)
    finally:
        os.close(out_write)
        os.close(err_write)
    code = await child.wait()
    return code, (await read_bounded(out_read)).decode(), (await read_bounded(err_read)).decode()


async def test_a_forked_agent_command_matches_a_fresh_interpreter(tmp_path: Path) -> None:
    (tmp_path / "step-1").mkdir()
    (tmp_path / "step-1" / "w.bin").write_bytes(b"weights")
    fresh = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "scan", ".", "--json"],
                           cwd=tmp_path, capture_output=True, text=True, check=True)
    zygote = Zygote()
    try:
        first = await run(zygote, ["checkpoint-operator", "agent", "scan", ".", "--json"], tmp_path)
        second = await run(zygote, ["checkpoint-operator", "agent", "scan", ".", "--json"], tmp_path)
        usage = await run(zygote, ["checkpoint-operator", "agent", "no-such-command"], tmp_path)
        failing = await run(zygote, ["checkpoint-operator", "agent", "scan", str(tmp_path / "missing"), "--json"],
                            tmp_path)
    finally:
        await zygote.stop()
    assert first == second == (0, fresh.stdout, "")
    assert json.loads(first[1])["checkpoints"][0]["path"] == "step-1"  # relative to the command's own cwd
    assert usage[0] == 2 and "invalid choice: 'no-such-command'" in usage[2]
    # A directory that is not there is refused as the fresh interpreter refuses it (exit 3: the same
    # command would be refused again), with its one error line.
    assert failing[0] == REFUSED_EXIT_CODE and failing[2].startswith("error: ") and "Traceback" not in failing[2]


def test_exit_codes_are_reported_as_a_container_runtime_does() -> None:
    assert exit_code_of(0) == 0 and exit_code_of(3 << 8) == 3
    assert exit_code_of(9) == 128 + 9  # killed by SIGKILL


async def test_a_sigterm_sent_as_a_command_starts_waits_for_the_command_s_own_handler(tmp_path: Path) -> None:
    """The live-sealing sidecar is stopped right after the training container, which may be at
    once: a SIGTERM sent the moment it is forked must reach its handler (seal what is there,
    exit 0), not kill it half-started; another command still ends by it (143)."""
    step = tmp_path / "out" / "checkpoint-1"
    step.mkdir(parents=True)
    (step / "model.bin").write_bytes(b"w")
    zygote = Zygote()
    try:
        results = []
        for argv in (["checkpoint-operator", "agent", "watch", str(tmp_path / "out")],
                     ["checkpoint-operator", "agent", "hold", "--session-dir", str(tmp_path), "--idle", "600"]):
            out_read, out_write = os.pipe()
            err_read, err_write = os.pipe()
            try:
                child = await zygote.spawn(argv, {"PATH": os.environ["PATH"]}, tmp_path, out_write, err_write)
            finally:
                os.close(out_write)
                os.close(err_write)
            child.send_signal(signal.SIGTERM)  # before it could have set anything up
            results.append((await child.wait(), (await read_bounded(out_read)).decode(),
                            (await read_bounded(err_read)).decode()))
    finally:
        await zygote.stop()
    (watch_code, watch_out, watch_err), (other_code, _, _) = results
    assert watch_code == 0, watch_err
    sealed = [json.loads(line) for line in watch_out.splitlines()]
    assert [(s["kind"], s["checkpoint"]["path"]) for s in sealed] == [("sealed", "checkpoint-1")]
    assert other_code == 143
