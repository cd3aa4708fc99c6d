"""Concurrency and crash safety: create/delete races and an operator restart mid-snapshot."""

from __future__ import annotations

import asyncio
import os

import pytest

from checkpoint_operator.reconcile import publish as publish_handler
from conftest import CKPT, NS, TJ, held_until, training_job, write_checkpoint
from formats_files import torch_file

pytestmark = pytest.mark.timeout(120)


async def make_ready_checkpoint(api, name: str) -> dict:
    """A Ready Checkpoint pointing at a volume path, as if the operator had adopted it."""
    await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                                 "metadata": {"name": name, "namespace": NS},
                                 "spec": {"source": {"volume": {"claimName": "shared", "path": f"/{name}"}}}})
    return await api.patch(CKPT, NS, name, {"status": {
        "phase": "Ready", "owned": False, "digest": "sha256:" + "0" * 64, "fileCount": 1, "sizeBytes": 1,
        "location": {"volume": {"claimName": "shared", "path": name}}}}, subresource="status")


async def test_create_delete_race_never_deletes_a_used_checkpoint(api, operator, cluster, trainer, wait_for):
    await api.create("v1/persistentvolumeclaims", NS, {"metadata": {"name": "shared"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    hold = asyncio.Event()
    rounds = 6
    for i in range(rounds):
        trainer.behaviours[f"race-{i}"] = held_until(hold)
        await make_ready_checkpoint(api, f"input-{i}")

    # Start each job and delete its input at the same moment, with the delete a little later
    # or earlier each round, so both orders (and the tie) are exercised.
    async def race(i: int) -> None:
        delay = (i % 3) * 0.1
        create = api.create(TJ, NS, training_job(f"race-{i}", checkpoints=[{"name": f"input-{i}"}],
                                                 output={"enabled": False}))
        async def delete_later():
            await asyncio.sleep(delay)
            await api.delete(CKPT, NS, f"input-{i}")
        await asyncio.gather(create, delete_later())
    await asyncio.gather(*(race(i) for i in range(rounds)))

    async def settled():
        states = []
        for i in range(rounds):
            tj = await api.get(TJ, NS, f"race-{i}")
            phase = tj.get("status", {}).get("phase")
            reason = next((c["reason"] for c in tj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
            checkpoint = await api.get(CKPT, NS, f"input-{i}")
            if phase == "Running" and checkpoint is not None:
                states.append("ran")
            elif phase == "Pending" and reason in ("InputDeleting", "InputNotFound") and checkpoint is None:
                states.append("refused")
            else:
                return None
        return states
    states = await wait_for(settled, timeout=30)

    for i, state in enumerate(states):
        job = await api.get("batch/v1/jobs", NS, f"race-{i}")
        checkpoint = await api.get(CKPT, NS, f"input-{i}")
        if state == "ran":
            # The job got in first: its input stays, deletion blocked until the job ends.
            assert job is not None and checkpoint["metadata"].get("deletionTimestamp")
        else:
            # The deletion got in first: the job never created a pod on the deleted input.
            assert job is None
    hold.set()
    for i, state in enumerate(states):
        if state == "ran":
            async def gone(name=f"input-{i}"):
                return await api.get(CKPT, NS, name) is None
            await wait_for(gone, timeout=20)


async def test_operator_restart_in_the_middle_of_a_snapshot(api, operator, trainer, wait_for, monkeypatch):
    def produce(attempt, env):
        for step in (1, 2, 3):
            write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], f"step-{step}", {"w.pt": bytes([step])})
        return 0
    trainer.behaviours["resumable"] = produce

    # "Crash" the operator right after it created the first of the three Checkpoints.
    original = publish_handler.create_checkpoint
    created = []
    crashed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def crash_after_first(ctx, tj, planned):
        if created:
            loop.call_soon_threadsafe(crashed.set)
            raise RuntimeError("simulated crash")  # kopf retries after its backoff: crashes again until restored
        created.append(planned.name)
        return original(ctx, tj, planned)
    monkeypatch.setattr(publish_handler, "create_checkpoint", crash_after_first)

    await api.create(TJ, NS, training_job("resumable"))
    await asyncio.wait_for(crashed.wait(), 30)
    await operator.stop()
    monkeypatch.setattr(publish_handler, "create_checkpoint", original)
    tj = await api.get(TJ, NS, "resumable")
    assert tj["status"]["phase"] == "Snapshotting"
    assert len(await api.list(CKPT, NS)) == 1

    await operator.start()

    async def done():
        obj = await api.get(TJ, NS, "resumable")
        return obj if obj["status"].get("phase") == "Succeeded" else None
    tj = await wait_for(done, timeout=30)
    names = sorted(c["metadata"]["name"] for c in await api.list(CKPT, NS))
    assert names == ["resumable.step-1", "resumable.step-2", "resumable.step-3"]  # none missing, none twice
    assert sorted(tj["status"]["outputCheckpoints"]) == names
    for name in names:
        checkpoint = await api.get(CKPT, NS, name)
        assert checkpoint["status"]["phase"] == "Ready"
    claim = await api.get("v1/persistentvolumeclaims", NS, tj["status"]["outputClaim"])
    assert sorted(o["name"] for o in claim["metadata"]["ownerReferences"]) == names


async def test_a_recreated_job_of_the_same_name_never_touches_the_earlier_run(api, operator, trainer, wait_for):
    runs = []

    def train(attempt, env):
        runs.append(sorted(os.listdir(env["CHECKPOINT_OUTPUT_DIR"])))
        step = 5 if len(runs) == 1 else 3   # the second run reaches a lower step than the first
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], f"step-{step}", {"w.pt": torch_file(len(runs))})
        return 0
    trainer.behaviours["again"] = train

    async def succeeded(name):
        obj = await api.get(TJ, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") == "Succeeded" else None

    await api.create(TJ, NS, training_job("again"))
    first = await wait_for(lambda: succeeded("again"), timeout=30)
    await api.delete(TJ, NS, "again")
    await wait_for(lambda: _absent(api, TJ, "again"))
    await api.create(TJ, NS, training_job("again"))
    second = await wait_for(lambda: succeeded("again"), timeout=30)

    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert second["status"]["outputClaim"] != first["status"]["outputClaim"]
    assert runs == [[], []]  # the second run started on an empty volume of its own
    old = await api.get(CKPT, NS, "again.step-5")
    assert old["status"]["phase"] == "Ready" and old["status"]["producedBy"]["uid"] == first["metadata"]["uid"]

    # `latest` means the latest of this TrainingJob, not of an earlier one with the same name.
    trainer.behaviours["next"] = lambda a, env: 0
    await api.create(TJ, NS, training_job("next", checkpoints=[{"fromTrainingJob": "again", "select": "latest"}],
                                          output={"enabled": False}))
    done = await wait_for(lambda: succeeded("next"), timeout=30)
    assert done["status"]["inputs"][0]["name"] == "again.step-3"


async def _absent(api, resource, name):
    return await api.get(resource, NS, name) is None


async def test_a_hot_input_used_by_many_jobs_at_once(api, operator, cluster, trainer, wait_for):
    """Many jobs start on one Checkpoint together: none contends for it (each records its use on
    itself), all finish, usedBy shows them while they run (bounded), and a deletion waits."""
    trainer.behaviours["src"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "s-1", {"a": b"1"}) or 0
    await api.create(TJ, NS, training_job("src"))
    hold = asyncio.Event()
    count = 30
    for i in range(count):
        trainer.behaviours[f"hot-{i:02d}"] = held_until(hold)
    await asyncio.gather(*(api.create(TJ, NS, training_job(f"hot-{i:02d}", checkpoints=[{"name": "src.s-1"}],
                                                           output={"enabled": False})) for i in range(count)))

    async def all_running():
        jobs = [j for j in await api.list(TJ, NS) if j["metadata"]["name"].startswith("hot-")]
        return len(jobs) == count and all(j.get("status", {}).get("phase") == "Running" for j in jobs)
    await wait_for(all_running, timeout=60)

    async def used_by_all():
        ckpt = await api.get(CKPT, NS, "src.s-1")
        return ckpt if ckpt["status"].get("usedByCount") == count else None
    ckpt = await wait_for(used_by_all, timeout=20)
    assert len(ckpt["status"]["usedBy"]) == min(count, 20)  # bounded; the count says how many
    assert ckpt["status"]["usedBy"][0]["name"] == "hot-00"
    await api.delete(CKPT, NS, "src.s-1")
    hold.set()

    async def all_succeeded():
        jobs = [j for j in await api.list(TJ, NS) if j["metadata"]["name"].startswith("hot-")]
        return all(j.get("status", {}).get("phase") == "Succeeded" for j in jobs)
    await wait_for(all_succeeded, timeout=60)
    await wait_for(lambda: _absent(api, CKPT, "src.s-1"), timeout=20)  # the deletion went through after them


async def test_a_job_never_starts_on_an_input_whose_deletion_began(api, operator, cluster, trainer, wait_for):
    """The other order of the race: the deletion is first (blocked by a running user); a job
    created afterwards sees it on its live read and waits, holding no label."""
    trainer.behaviours["src"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "s-1", {"a": b"1"}) or 0
    hold = asyncio.Event()
    trainer.behaviours["first"] = held_until(hold)
    trainer.behaviours["late"] = lambda a, env: 0
    await api.create(TJ, NS, training_job("src"))
    await api.create(TJ, NS, training_job("first", checkpoints=[{"name": "src.s-1"}], output={"enabled": False}))

    async def running():
        tj = await api.get(TJ, NS, "first")
        return (tj or {}).get("status", {}).get("phase") == "Running"
    await wait_for(running, timeout=30)
    await api.delete(CKPT, NS, "src.s-1")
    await api.create(TJ, NS, training_job("late", checkpoints=[{"name": "src.s-1"}], output={"enabled": False}))

    async def late_waits():
        tj = await api.get(TJ, NS, "late")
        reason = next((c["reason"] for c in (tj or {}).get("status", {}).get("conditions", []) if c["type"] == "Ready"),
                      None)
        return tj if reason == "InputDeleting" else None
    late = await wait_for(late_waits, timeout=20)
    assert not any(k.startswith("uses.ckpt.dev/") for k in (late["metadata"].get("labels") or {}))
    assert await api.get("batch/v1/jobs", NS, "late") is None
    hold.set()
    await wait_for(lambda: _absent(api, CKPT, "src.s-1"), timeout=30)
    assert await api.get("batch/v1/jobs", NS, "late") is None  # never started on it
