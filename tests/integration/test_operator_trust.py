"""What a tenant's own namespace can still try against the result channel, through the real
operator (issue 23 items 1 and 9, issue 18 item 4): a result far past its bound is refused
unread, recorded as that pod's failure (no crash, no partial result), and results are read only
from the pods the operator created (their UIDs recorded in status), never from a pod that merely
has the right name and owner, or a worker's label."""

from __future__ import annotations

import asyncio
import json
import os
import threading

import pytest

from checkpoint_operator.local.server import ApiClient
from checkpoint_operator.protocol import channel
from checkpoint_operator.protocol.errors import REFUSED_EXIT_CODE
from checkpoint_operator.protocol.results import CheckpointSummary, ScanReport
from conftest import CKPT, NS, TJ, Trainer, training_job, write_checkpoint
from formats_files import torch_file
from test_operator_lifecycle import events_for, sha256sum_digest, wait_phase

pytestmark = pytest.mark.timeout(240)
FORGED_DIGEST = "sha256:" + "0" * 64
HOLD = "test.ckpt.dev/hold"


class Forger(Trainer):
    """The training code, and a snapshot agent that writes a result far past the bound (the log
    a kubelet would serve for it), for jobs named in `oversized`."""

    def __init__(self, api_url: str) -> None:
        super().__init__()
        self.api_url = api_url
        self.oversized: set[str] = set()
        # job -> (the agent's last line, its exit code), for its first snapshot pod only
        self.failing_snapshot: dict[str, tuple[str, int]] = {}
        self.slow_deletion: dict[str, float] = {}  # job -> seconds its failed snapshot pod stays terminating

    async def _release(self, namespace: str, name: str) -> None:
        async with ApiClient(self.api_url) as api:
            await api.patch("v1/pods", namespace, name, {"metadata": {"finalizers": None}})

    async def __call__(self, pod: dict, container: dict, env: dict, mounts: dict) -> int | None:
        labels = pod["metadata"].get("labels", {})
        job = labels.get("ckpt.dev/trainingjob", "")
        if labels.get("ckpt.dev/component") == "snapshot" and job in self.failing_snapshot:
            line, code = self.failing_snapshot.pop(job)  # the next attempt runs the real agent
            namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            async with ApiClient(self.api_url) as api:
                await api.write_log(namespace, name, container["name"], line + "\n")
                if job in self.slow_deletion:  # its deletion takes a while (a kubelet under load)
                    await api.patch("v1/pods", namespace, name, {"metadata": {"finalizers": [HOLD]}})
                    asyncio.get_running_loop().call_later(
                        self.slow_deletion[job], lambda: asyncio.ensure_future(self._release(namespace, name)))
            return code
        if labels.get("ckpt.dev/component") == "snapshot" and labels.get("ckpt.dev/trainingjob") in self.oversized:
            line = '{"kind":"scan","version":1,"checkpoints":[' + ",".join(
                json.dumps({"path": f"step-{i}", "digest": FORGED_DIGEST, "sizeBytes": 1, "fileCount": 1})
                for i in range(120_000)) + "]}\n"  # about 11 MB: past the 6 MiB a result may have
            async with ApiClient(self.api_url) as api:
                await api.write_log(pod["metadata"]["namespace"], pod["metadata"]["name"], container["name"], line)
            return 0
        return await super().__call__(pod, container, env, mounts)


@pytest.fixture
def trainer(api_url: str) -> Forger:
    return Forger(api_url)


@pytest.mark.slow  # 40 s: a result line far past its bound, written and refused
async def test_a_result_far_past_its_bound_fails_that_snapshot_with_one_clear_line(api, operator, trainer,
                                                                                   wait_for):
    trainer.oversized.add("flood")
    trainer.behaviours["flood"] = lambda attempt, env: write_checkpoint(
        env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.pt": b"w"}) or 0
    trainer.behaviours["calm"] = lambda attempt, env: write_checkpoint(
        env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.pt": b"w"}) or 0
    await api.create(TJ, NS, training_job("flood"))
    tj = await wait_phase(api, wait_for, TJ, "flood", ("Failed", "Succeeded"), timeout=150)
    assert tj["status"]["phase"] == "Failed" and tj["status"]["snapshotAttempts"] == 2
    message = tj["status"]["message"]
    assert f"longer than the {channel.RESULT_READ_BYTES} bytes the operator reads: refused unread" in message
    assert "flood-snapshot" in message and len(message) < 1000
    assert [c["metadata"]["name"] for c in await api.list(CKPT, NS)] == []  # nothing of the forged result
    retries = [e for e in await events_for(api, "flood") if e["reason"] == "SnapshotRetry"]
    assert sorted(e["message"].split(":")[0] for e in retries) == ["attempt 1", "attempt 2"]  # each attempt once
    # The operator is as it was: the next job in the namespace goes through.
    await api.create(TJ, NS, training_job("calm"))
    assert (await wait_phase(api, wait_for, TJ, "calm", ("Succeeded", "Failed")))["status"]["phase"] == "Succeeded"


async def test_a_snapshot_pod_with_the_right_name_and_owner_but_another_uid_is_not_read(api, operator, cluster,
                                                                                         trainer, wait_for):
    go = threading.Event()

    def train(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.pt": b"real weights"})
        assert go.wait(60)
        return 0
    trainer.behaviours["victim"] = train
    await api.create(TJ, NS, training_job("victim"))
    tj = await wait_phase(api, wait_for, TJ, "victim", "Running")
    forged_line = channel.encode(ScanReport(checkpoints=[CheckpointSummary(path="step-1", digest=FORGED_DIGEST,
                                                                           sizeBytes=1, fileCount=1)]))
    # Someone with pod rights in the namespace makes the snapshot pod first: the expected name,
    # the job as owner, a result that names other bytes.
    await api.create("v1/pods", NS, {"metadata": {
        "name": "victim-snapshot", "namespace": NS, "labels": {"ckpt.dev/component": "snapshot"},
        "ownerReferences": [{"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "name": "victim",
                             "uid": tj["metadata"]["uid"]}]},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "snapshot", "image": "x", "command": [
            "python", "-c", f"print({forged_line!r})"]}]}})

    async def forged_done():
        pod = await api.get("v1/pods", NS, "victim-snapshot")
        return pod if pod and pod.get("status", {}).get("phase") == "Succeeded" else None
    forged = await wait_for(forged_done, timeout=30)
    go.set()
    done = await wait_phase(api, wait_for, TJ, "victim", ("Succeeded", "Failed"), timeout=60)
    assert done["status"]["phase"] == "Succeeded", done["status"].get("message")
    assert done["status"]["snapshotPodUid"] != forged["metadata"]["uid"]
    ckpt = await api.get(CKPT, NS, "victim.step-1")
    real = sha256sum_digest(os.path.join(cluster.claim_dir(NS, done["status"]["outputClaim"]), "step-1"))
    assert ckpt["status"]["digest"] == real != FORGED_DIGEST


async def test_a_pod_that_merely_carries_a_worker_s_labels_is_not_read(api, operator, trainer, wait_for):
    """Live sealing reads the sidecar logs of the job's worker pods: only those the Job the
    operator created controls (its UID in status.jobUid), not any pod with the labels."""
    go = threading.Event()

    def train(attempt, env):
        # Real torch files: an incomplete checkpoint is held until the writer exits (docs/concepts.md).
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.pt": torch_file("w")})
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-2", {"model.pt": torch_file("w2")})  # step-1 sealed
        assert go.wait(90)
        return 0
    trainer.behaviours["busy"] = train
    await api.create(TJ, NS, training_job("busy", output={"publish": "Continuous"}))
    tj = await wait_phase(api, wait_for, TJ, "busy", "Running")
    assert tj["status"]["jobUid"]
    forged_line = json.dumps({"kind": "sealed", "version": 1, "checkpoint": {
        "path": "step-9", "digest": FORGED_DIGEST, "sizeBytes": 1, "fileCount": 1}}, separators=(",", ":"))
    await api.create("v1/pods", NS, {"metadata": {
        "name": "busy-impostor", "namespace": NS, "labels": {  # every label a worker of the job has
            "app.kubernetes.io/managed-by": "checkpoint-operator", "ckpt.dev/component": "worker",
            "ckpt.dev/trainingjob": "busy",
            "ckpt.dev/trainingjob-uid": tj["metadata"]["uid"]}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "ckpt-live", "image": "x", "command": [
            "python", "-c", f"print({forged_line!r})"]}]}})

    async def step_1_sealed():
        obj = await api.get(CKPT, NS, "busy.step-1")
        return obj if obj and obj.get("status", {}).get("phase") == "Ready" else None
    await wait_for(step_1_sealed, timeout=60)  # the real sidecar's lines are read, pass after pass

    async def impostor_done():
        pod = await api.get("v1/pods", NS, "busy-impostor")
        return pod if pod and pod.get("status", {}).get("phase") == "Succeeded" else None
    await wait_for(impostor_done, timeout=30)
    go.set()
    done = await wait_phase(api, wait_for, TJ, "busy", ("Succeeded", "Failed"), timeout=90)
    assert done["status"]["phase"] == "Succeeded"
    names = sorted(c["metadata"]["name"] for c in await api.list(CKPT, NS))
    assert names == ["busy.step-1", "busy.step-2"]  # never the impostor's step-9


async def test_a_snapshot_the_agent_refuses_fails_at_once_and_a_transient_failure_is_retried(api, operator, trainer,
                                                                                            wait_for):
    """The agent exits REFUSED_EXIT_CODE when it refuses the output for what it is (too many entries,
    a key S3 cannot hold): the same output is refused again, so the job fails at once with the
    agent's line, without SnapshotRetry (before: three snapshot pods, 40 s of backoff, for the same
    line). Any other failure (a store that was down: exit 1) is still retried."""
    for name in ("refused", "transient"):
        trainer.behaviours[name] = lambda attempt, env: write_checkpoint(
            env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.pt": b"w"}) or 0
    trainer.failing_snapshot["refused"] = ("error: /output: more than 3 entries (at 'step-1'); refusing to go on",
                                           REFUSED_EXIT_CODE)
    trainer.failing_snapshot["transient"] = ("error: s3://bucket/x: connection refused", 1)
    # The failed pod, deleted once its failure is counted, stays terminating for 4 s: every pass
    # meanwhile (the status write, the pod's own updates) must not count the same failure again.
    trainer.slow_deletion["transient"] = 4.0
    await api.create(TJ, NS, training_job("refused"))
    await api.create(TJ, NS, training_job("transient"))
    tj = await wait_phase(api, wait_for, TJ, "refused", ("Failed", "Succeeded"), timeout=60)
    status = tj["status"]
    assert status["phase"] == "Failed" and not status.get("snapshotAttempts")
    assert "snapshot refused the output (not retried" in status["message"]
    assert "more than 3 entries (at 'step-1')" in status["message"] and "exit code 3" in status["message"]
    assert not [e for e in await events_for(api, "refused") if e["reason"] == "SnapshotRetry"]
    tj = await wait_phase(api, wait_for, TJ, "transient", ("Failed", "Succeeded"), timeout=90)
    assert tj["status"]["phase"] == "Succeeded" and tj["status"]["snapshotAttempts"] == 1
    retries = [e for e in await events_for(api, "transient") if e["reason"] == "SnapshotRetry"]
    assert len(retries) == 1 and "connection refused" in retries[0]["message"]
