"""Outputs with many files through the real operator (issue 18 item 4): the agent's result does
not grow with the number of files, so 10,000 and 50,000 files in one output become Ready like
ten do. (Before the bounded result channel, ~8,600 files made a result line past local mode's
1 MiB log limit and the snapshot failed three times.)"""

from __future__ import annotations

import os

import pytest

from conftest import CKPT, NS, TJ, training_job

pytestmark = pytest.mark.timeout(600)


def write_many(out: str, directory: str, count: int, per_dir: int = 1000) -> None:
    for i in range(count):
        sub = os.path.join(out, directory, f"shard-{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"part-{i:06d}.bin"), "wb") as f:
            f.write(b"%d" % i)


# 50,000 files (8 s quiet, 17 s loaded): its size is its point, so the slow tier runs it; 10,000,
# past the ~8,600 that broke the result line, stays in the default tier.
@pytest.mark.parametrize("count", [10_000, pytest.param(50_000, marks=pytest.mark.slow)])
async def test_an_output_of_many_files_becomes_ready(api, operator, trainer, wait_for, count):
    name = f"many-{count // 1000}k"

    def train(attempt, env):
        write_many(env["CHECKPOINT_OUTPUT_DIR"], "step-1", count)
        return 0
    trainer.behaviours[name] = train
    await api.create(TJ, NS, training_job(name))

    async def finished():
        obj = await api.get(TJ, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None
    tj = await wait_for(finished, timeout=500)
    assert tj["status"]["phase"] == "Succeeded", tj["status"].get("message")
    ckpt = await api.get(CKPT, NS, f"{name}.step-1")
    assert ckpt["status"]["phase"] == "Ready"
    assert ckpt["status"]["fileCount"] == count
