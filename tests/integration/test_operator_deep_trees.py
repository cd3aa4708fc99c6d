"""A checkpoint 1,000 directories deep through the real operator and the local kubelet (issue 18
item 5): the snapshot pod's read-only view of the output, the Checkpoint, a consumer's read-only
input, and kubectl ckpt push / pull / verify over exec. Before the fix the kubelet's copy raised
RecursionError and the snapshot failed three times."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import CKPT, NS, TJ, training_job
from deep_trees import DEEP_FILE, LEAF, build_deep_tree, files_of
from deep_trees import remove_deep_trees  # noqa: F401  (fixture)
from plugin_helpers import Plugin, write_kubeconfig

pytestmark = pytest.mark.timeout(240)


async def wait_phase(api, wait_for, resource, name, phases, timeout=60):
    async def reached():
        obj = await api.get(resource, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") in phases else None
    return await wait_for(reached, timeout=timeout)


async def test_a_deep_output_snapshots_and_is_read_by_a_consumer(api, operator, cluster, trainer, wait_for):
    def deep_writer(attempt, env):
        build_deep_tree(Path(env["CHECKPOINT_OUTPUT_DIR"]) / "step-1")
        return 0
    seen: dict = {}

    def consumer(attempt, env):
        seen.update(files_of(Path(env["CHECKPOINT_INPUT_PATH"])))
        return 0
    trainer.behaviours["deep"] = deep_writer
    trainer.behaviours["reader"] = consumer
    await api.create(TJ, NS, training_job("deep"))
    job = await wait_phase(api, wait_for, TJ, "deep", ("Succeeded", "Failed"), timeout=120)
    assert job["status"]["phase"] == "Succeeded", job["status"]
    [name] = job["status"]["outputCheckpoints"]
    checkpoint = (await api.get(CKPT, NS, name))["status"]
    assert checkpoint["phase"] == "Ready" and checkpoint["fileCount"] == 2
    assert not job["status"].get("snapshotAttempts")  # the first snapshot pod did it

    await api.create(TJ, NS, training_job("reader", checkpoints=[{"fromTrainingJob": "deep"}]))
    done = await wait_phase(api, wait_for, TJ, "reader", ("Succeeded", "Failed"), timeout=120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert seen[DEEP_FILE] == LEAF


@pytest.mark.slow
async def test_push_pull_and_verify_of_a_deep_checkpoint(api_url, api, operator, cluster, tmp_path):
    ckpt = Plugin(write_kubeconfig(tmp_path / "kubeconfig", api_url))
    source = build_deep_tree(tmp_path / "deep")
    pushed = await ckpt("push", str(source), "--name", "deep-pushed")
    assert pushed.code == 0, pushed.err[-2000:]
    assert (await api.get(CKPT, NS, "deep-pushed"))["status"]["fileCount"] == 2
    pulled = await ckpt("pull", "deep-pushed", str(tmp_path / "back"))
    assert pulled.code == 0, pulled.err[-2000:]
    back = files_of(tmp_path / "back")
    back.pop(".checkpoint-manifest.json", None)
    assert back == files_of(source)
    verified = await ckpt("verify", "deep-pushed")
    assert verified.code == 0, verified.err[-2000:]
    assert "Verified=True" in verified.out
    assert os.path.exists(tmp_path / "back" / DEEP_FILE)
