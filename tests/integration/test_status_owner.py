"""One owner per status, one write per pass (issue 21 item 4), on the running operator: an
observer of the status writer (reconcile/status_writer.py `observers`) sees every status PATCH
with the pass that made it. A live-sealing job publishes two Checkpoints while it runs (the
first retired by keep: 1 and deleted), changes the second after it was sealed (its Checkpoint
fails), and ends with the final snapshot: every status written is the status of the object whose
reconcile made the write, never more than once in one pass."""

from __future__ import annotations

import collections
import os

import pytest

from checkpoint_operator.reconcile import status_writer
from conftest import NS, TJ, training_job
from test_operator_lifecycle import wait_phase
from test_operator_live import LIVE, checkpoint, gate, ready, trainer_checkpoint

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def status_writes():
    """(the pass's owner, the pass, the object written) of every status write the operator makes."""
    seen: list[tuple] = []

    def observe(current, key, patch):
        seen.append((current.owner if current else None, current.pass_id if current else None, key, patch))
    status_writer.observers.append(observe)
    yield seen
    status_writer.observers.remove(observe)


async def test_each_status_is_written_by_its_own_reconcile_once_per_pass(
        api, operator, trainer, wait_for, status_writes):
    first_seen, second_seen = gate(), gate()

    def train(attempt, env):
        out = env["CHECKPOINT_OUTPUT_DIR"]
        trainer_checkpoint(out, 10)
        assert first_seen.wait(90)
        trainer_checkpoint(out, 20)
        assert second_seen.wait(90)
        path = os.path.join(out, "checkpoint-20", "model.safetensors")
        os.chmod(path, 0o644)
        with open(path, "ab") as f:  # changed after sealing: its Checkpoint must fail
            f.write(b"more")
        return 0
    trainer.behaviours["owner"] = train
    await api.create(TJ, NS, training_job("owner", output={**LIVE, "keep": 1}))
    await wait_for(lambda: ready(api, "owner.checkpoint-10"), timeout=60)
    first_seen.set()
    await wait_for(lambda: ready(api, "owner.checkpoint-20"), timeout=60)

    async def retired():
        return await checkpoint(api, "owner.checkpoint-10") is None
    await wait_for(retired, timeout=60)
    second_seen.set()
    tj = await wait_phase(api, wait_for, TJ, "owner", ("Succeeded", "Failed"), timeout=90)

    async def failed():
        body = await checkpoint(api, "owner.checkpoint-20")
        return body if body["status"].get("phase") == "Failed" else None
    changed = await wait_for(failed, timeout=30)
    assert next(c for c in changed["status"]["conditions"] if c["type"] == "Ready")["reason"] == "ChangedAfterSealing"
    assert tj["status"]["live"]["sealedCount"] == 2

    ours = [w for w in status_writes if w[2][1] == NS]
    kinds = collections.Counter(key[0] for _, _, key, _ in ours)
    assert kinds["TrainingJob"] >= 3 and kinds["Checkpoint"] >= 3, kinds  # Running, Snapshotting, Succeeded; 2 Ready, Failed
    strays = [(owner, key) for owner, _, key, _ in ours if owner != key]
    assert not strays, f"status written by another object's reconcile (or outside a pass): {strays}"
    per_pass = collections.Counter(pass_id for _, pass_id, _, _ in ours)
    twice = {p: n for p, n in per_pass.items() if n > 1}
    assert not twice, f"passes that wrote their status more than once: {twice}"
    made_ready = [key[2] for _, _, key, patch in ours if key[0] == "Checkpoint" and patch.get("phase") == "Ready"]
    assert sorted(made_ready) == ["owner.checkpoint-10", "owner.checkpoint-20"]
