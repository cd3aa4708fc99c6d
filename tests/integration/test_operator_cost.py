"""The control plane's cost per TrainingJob lifecycle (issue 22 item 4), on the real operator: what
bench/scale.py counts per lifecycle, held here as behaviour (which requests, which wake-ups), never
as a time. Each cut keeps what it must: a pod that waits still gets its explanation
(tests/integration/test_operator_snapshots.py, the Multi-Attach error)."""

from __future__ import annotations

import asyncio
import platform

import pytest

from checkpoint_operator import main, malloc
from checkpoint_operator.logic.memory_trim import TrimPolicy
from conftest import NS, TJ, training_job, write_checkpoint
from test_operator_lifecycle import wait_phase

pytestmark = pytest.mark.timeout(120)


async def test_a_lifecycle_whose_pods_start_at_once_reads_no_events(api, operator, trainer, wait_for):
    """Every pass of a job whose pod was scheduled but not started listed that pod's Events, looking
    for a failed attach (3.9 of 22 requests per lifecycle in bench/scale.py). A pod is looked at only
    once it has waited ATTACH_GRACE since it was scheduled: one that starts at once costs none."""
    def train(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.safetensors": b"w" * 64})
        return 0
    trainer.behaviours["quick"] = train
    before = dict(operator.ctx.kube.requests_by_target)
    await api.create(TJ, NS, training_job("quick"))
    tj = await wait_phase(api, wait_for, TJ, "quick", "Succeeded", timeout=60)
    assert tj["status"]["outputCheckpoints"] == ["quick.step-1"]
    made = {k: v - before.get(k, 0) for k, v in operator.ctx.kube.requests_by_target.items() if v > before.get(k, 0)}
    assert made.get(("GET", "events (collection)"), 0) == 0, made
    assert made[("POST", "jobs (collection)")] == 1  # the count is the operator's own: it saw the lifecycle


@pytest.fixture
def trims(monkeypatch) -> list[int]:
    """The operator's memory trims (malloc.py), as the count of what it had handled at each; a
    policy that trims after 1 s of quiet and whatever was freed, so that a test sees it."""
    done: list[int] = []
    real = malloc.Glibc.trim

    def trim(self: malloc.Glibc) -> bool:
        done.append(main.ACTIVITY())
        return real(self)
    monkeypatch.setattr(malloc.Glibc, "trim", trim)
    monkeypatch.setattr(main, "TRIM_POLICY", TrimPolicy(check_every=0.1, quiet=1.0, min_free=0, min_interval=0.0))
    return done


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
async def test_freed_memory_goes_back_once_the_work_is_over_and_not_while_idle(trims, api, operator, trainer, wait_for):
    """A burst of work (the start-up's 10,000 listed Checkpoints) leaves glibc holding what it freed:
    the RSS stayed at the burst's high-water mark (262 MB in bench/scale.py). The operator gives it
    back once nothing was handled for a while, after the work and not during it, and not again
    while it stays idle (each trim walks malloc's free lists)."""
    def train(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.safetensors": b"w" * 64})
        return 0
    trainer.behaviours["burst"] = train
    await api.create(TJ, NS, training_job("burst"))
    await wait_phase(api, wait_for, TJ, "burst", "Succeeded", timeout=60)
    # A trim that saw everything the lifecycle made the operator handle: after the work, not in it.
    await wait_for(lambda: trims and trims[-1] == main.ACTIVITY(), timeout=30)
    after_work = len(trims)
    await asyncio.sleep(3.0)  # three times the quiet the policy waits for; nothing handled meanwhile
    assert trims[-1] == main.ACTIVITY()
    assert len(trims) == after_work, trims
