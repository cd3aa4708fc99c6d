"""The control plane's cost per TrainingJob lifecycle (issue 22 item 4), on the real operator: what
bench/scale.py counts per lifecycle, held here as behaviour (which requests, which wake-ups), never
as a time. Each cut keeps what it must: a pod that waits still gets its explanation
(tests/integration/test_operator_snapshots.py, the Multi-Attach error)."""

from __future__ import annotations

import pytest

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
