"""Whole lifecycles through the real operator: train -> Checkpoints -> consume -> lineage,
deletion protection, failures, retries, retention, naming, waiting, races and restarts."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess

import pytest

from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.protocol.manifest import parse_manifest
from conftest import CKPT, NS, TJ, held_until, training_job, write_checkpoint
from formats_files import torch_file, weights

pytestmark = pytest.mark.timeout(120)


async def phase_of(api, resource, name):
    obj = await api.get(resource, NS, name)
    return (obj or {}).get("status", {}).get("phase")


async def wait_phase(api, wait_for, resource, name, phases, timeout=30):
    phases = (phases,) if isinstance(phases, str) else phases

    async def reached():
        obj = await api.get(resource, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") in phases else None
    return await wait_for(reached, timeout=timeout)


async def events_for(api, name):
    return [e for e in await api.list("v1/events", NS) if e.get("involvedObject", {}).get("name") == name]


async def wait_event(api, wait_for, name, matches):
    """kopf posts events in the background, so they may trail the status that announced them."""
    async def found():
        return [e for e in await events_for(api, name) if matches(e)]
    return await wait_for(found, timeout=10)


def ready_condition(obj):
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


def sha256sum_digest(directory: str) -> str:
    """The digest the documentation (docs/concepts.md) promises anyone can recompute with coreutils."""
    files = sorted((os.path.relpath(os.path.join(d, f), directory) for d, _, fs in os.walk(directory) for f in fs),
                   key=lambda p: p.encode())
    out = subprocess.run(["sha256sum", *files], cwd=directory, capture_output=True, check=True).stdout
    return "sha256:" + hashlib.sha256(out).hexdigest()


async def test_train_then_consume_latest_with_lineage(api, operator, cluster, trainer, wait_for):
    def pretrain(attempt, env):
        out = env["CHECKPOINT_OUTPUT_DIR"]
        for step in (100, 200):
            write_checkpoint(out, f"step-{step}", {"model.safetensors": weights(b"w" * step), "optimizer.pt": torch_file(),
                                                   "nested/config.json": b"{}"})
        write_checkpoint(out, ".", {"config.json": b"{}", "model.safetensors": weights(b"final")})
        return 0
    trainer.behaviours["pretrain"] = pretrain

    seen = {}

    def finetune(attempt, env):
        seen.update(env)
        src = env["CHECKPOINT_INPUT_PATH"]
        seen["read"] = open(os.path.join(src, "model.safetensors"), "rb").read()
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-300", {"model.safetensors": weights(b"x")})
        return 0
    trainer.behaviours["finetune"] = finetune

    # The consumer first: it waits for the producer to finish, then takes its latest checkpoint.
    await api.create(TJ, NS, training_job("finetune", checkpoints=[{"fromTrainingJob": "pretrain", "select": "latest"}]))
    waiting = await wait_phase(api, wait_for, TJ, "finetune", "Pending")
    await api.create(TJ, NS, training_job("pretrain"))

    tj = await wait_phase(api, wait_for, TJ, "pretrain", "Succeeded")
    assert sorted(tj["status"]["outputCheckpoints"]) == ["pretrain", "pretrain.step-100", "pretrain.step-200"]
    assert ready_condition(tj)["status"] == "True"

    step200 = await api.get(CKPT, NS, "pretrain.step-200")
    status = step200["status"]
    assert status["phase"] == "Ready" and status["step"] == 200 and status["resumable"] is True
    size = len(weights(b"w" * 200)) + len(torch_file()) + 2
    assert status["fileCount"] == 3 and status["sizeBytes"] == size and status["complete"] is True
    assert status["producedBy"] == {"name": "pretrain", "uid": tj["metadata"]["uid"]}
    assert status["parents"] == []
    claim_name = tj["status"]["outputClaim"]
    assert claim_name.startswith("pretrain-output-")  # unique per run
    claim_dir = cluster.claim_dir(NS, claim_name)
    assert status["digest"] == sha256sum_digest(os.path.join(claim_dir, "step-200"))
    # The full manifest is stored beside the data, outside the checkpoint's directory (which stays
    # exactly what the job wrote), and named in the location; the status carries nothing per file.
    stored = f".ckpt-manifests/{status['digest'].replace(':', '-')}.json"
    assert status["location"] == {"volume": {"claimName": claim_name, "path": "step-200", "manifest": stored}}
    with open(os.path.join(claim_dir, stored), "rb") as f:
        manifest = parse_manifest(f.read(), stored)
    assert manifest.digest == status["digest"] and [e.path for e in manifest.files] == [
        "model.safetensors", "nested/config.json", "optimizer.pt"]
    assert "ckpt.dev/in-use-protection" in step200["metadata"]["finalizers"]
    final = await api.get(CKPT, NS, "pretrain")
    assert final["status"]["location"]["volume"]["items"] == ["config.json", "model.safetensors"]

    # The output volume now belongs to the Checkpoints, not to the job.
    claim = await api.get("v1/persistentvolumeclaims", NS, claim_name)
    assert {o["kind"] for o in claim["metadata"]["ownerReferences"]} == {"Checkpoint"}
    assert len(claim["metadata"]["ownerReferences"]) == 3

    done = await wait_phase(api, wait_for, TJ, "finetune", "Succeeded")
    assert done["status"]["inputs"] == [{"name": "pretrain.step-200", "uid": step200["metadata"]["uid"],
                                         "digest": status["digest"], "sizeBytes": size}]
    assert seen["read"] == weights(b"w" * 200)
    assert seen["CHECKPOINT_INPUT_NAMES"] == "pretrain.step-200"
    assert seen["CHECKPOINT_INPUT_PATH"] == seen["ML_CHECKPOINT_PATH"]
    assert seen["CHECKPOINT_OUTPUT_DIR"] == seen["FLEXAI_OUTPUT_CHECKPOINT_DIR"]
    child = await api.get(CKPT, NS, "finetune.step-300")
    assert child["status"]["parents"][0]["name"] == "pretrain.step-200"
    # The waiting job said why it waited.
    assert "pretrain" in ready_condition(waiting)["message"]

    job = await api.get("batch/v1/jobs", NS, "finetune")
    mounts = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    input_mount = next(m for m in mounts if m["mountPath"] == "/input-checkpoint/pretrain.step-200")
    assert input_mount["readOnly"] is True and input_mount["subPath"] == "step-200"
    # Released: nothing uses the input any more (usedBy is written debounced, so it trails the job).
    async def released():
        ckpt = await api.get(CKPT, NS, "pretrain.step-200")
        return ckpt if not ckpt["status"].get("usedBy") and not ckpt["status"].get("usedByCount") else None
    await wait_for(released, timeout=10)


async def test_delete_while_in_use_is_blocked_then_released(api, operator, trainer, wait_for):
    trainer.behaviours["producer"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1",
                                                                      {"w.pt": b"1"}) or 0
    release = asyncio.Event()
    trainer.behaviours["consumer"] = held_until(release, timeout=30)

    await api.create(TJ, NS, training_job("producer"))
    await wait_phase(api, wait_for, TJ, "producer", "Succeeded")
    await api.create(TJ, NS, training_job("consumer", checkpoints=[{"name": "producer.step-1"}]))
    await wait_phase(api, wait_for, TJ, "consumer", "Running")
    async def used_by_consumer():  # written debounced from the index: it may trail the job's Running
        used = await api.get(CKPT, NS, "producer.step-1")
        return [u["name"] for u in used["status"].get("usedBy") or []] == ["consumer"] \
            and used["status"]["usedByCount"] == 1
    await wait_for(used_by_consumer, timeout=10)

    await api.delete(CKPT, NS, "producer.step-1")

    async def blocked():
        obj = await api.get(CKPT, NS, "producer.step-1")
        if obj and any(c.get("reason") == "DeletionBlocked" for c in obj["status"].get("conditions", [])):
            return obj
    obj = await wait_for(blocked, timeout=15)
    assert obj["metadata"].get("deletionTimestamp")
    assert "consumer" in ready_condition(obj)["message"]
    warnings = await wait_event(api, wait_for, "producer.step-1", lambda e: e.get("reason") == "DeletionBlocked")
    assert warnings[0]["type"] == "Warning" and "consumer" in warnings[0]["message"]
    await asyncio.sleep(1.0)
    assert await api.get(CKPT, NS, "producer.step-1") is not None  # still there

    release.set()
    await wait_phase(api, wait_for, TJ, "consumer", "Succeeded")
    await wait_for(lambda: _gone(api, CKPT, "producer.step-1"), timeout=15)


async def _gone(api, resource, name):
    return await api.get(resource, NS, name) is None


async def test_failed_job_still_snapshots_its_partial_checkpoints(api, operator, trainer, wait_for):
    def crash(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-50", {"model.pt": b"partial but complete"})
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-60.tmp", {"model.pt": b"half"})
        return 1
    trainer.behaviours["crashy"] = crash
    await api.create(TJ, NS, training_job("crashy", backoffLimit=0))
    tj = await wait_phase(api, wait_for, TJ, "crashy", "Failed")
    assert tj["status"]["outputCheckpoints"] == ["crashy.step-50"]
    # The message names the pod's own failure, not only the Job's BackoffLimitExceeded.
    assert "container trainer failed (Error, exit code 1)" in tj["status"]["message"]
    # step-60.tmp was skipped: the volume that holds it is kept (by the Checkpoint here), and said so.
    assert {c["type"]: c["status"] for c in tj["status"]["conditions"]} == {
        "Ready": "False", "Stalled": "True", "OutputRetained": "True"}
    retained = next(c for c in tj["status"]["conditions"] if c["type"] == "OutputRetained")
    assert "step-60.tmp" in retained["message"] and "ckpt.dev/release-output" in retained["message"]
    assert tj["status"]["skippedCount"] == 1
    assert (await phase_of(api, CKPT, "crashy.step-50")) == "Ready"
    await wait_event(api, wait_for, "crashy", lambda e: e.get("reason") == "Skipped" and "step-60.tmp" in e["message"])


@pytest.mark.parametrize("operator_config", [OperatorConfig(
    reconcile_interval=0.2, agent_image="checkpoint-operator:test", rendezvous_address="127.0.0.1", rendezvous_port=0,
    publish_timeout=3.0)])  # CKPT_PUBLISH_TIMEOUT=3: the setting the operator goes by
async def test_a_checkpoint_that_never_becomes_ready_fails_its_job_naming_it(api, operator, trainer, wait_for,
                                                                              monkeypatch):
    """The job is Succeeded once its Checkpoints' own reconciles made them Ready; one held forever (here its
    bytes are never handed over: the claim stays the job's alone) must end the job with a clear condition,
    never keep it Snapshotting (before, it waited on forever)."""
    from checkpoint_operator.logic import trainingjob_flow
    from checkpoint_operator.reconcile import trainingjob
    from datetime import datetime, timedelta, timezone
    monkeypatch.setattr(trainingjob, "_hand_over_output_claim", lambda *args, **kwargs: None)
    counted_from, publish_wait = [], trainingjob_flow.publish_wait
    monkeypatch.setattr(trainingjob_flow, "publish_wait", lambda not_ready, since, *args: (
        counted_from.append(since), publish_wait(not_ready, since, *args))[1])
    started = datetime.now(timezone.utc).replace(microsecond=0)
    trainer.behaviours["unheld"] = lambda attempt, env: write_checkpoint(
        env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.pt": b"weights"}) or 0
    await api.create(TJ, NS, training_job("unheld"))
    tj = await wait_phase(api, wait_for, TJ, "unheld", ("Succeeded", "Failed"))
    assert tj["status"]["phase"] == "Failed"
    ready = ready_condition(tj)
    assert ready["reason"] == "CheckpointsNotReady", ready
    assert "unheld.step-1 (Pending)" in ready["message"] and "Ready condition" in ready["message"]
    waited = int(ready["message"].split(" not Ready ")[1].split(" s ")[0])
    assert 3 <= waited < 600  # the setting (CKPT_PUBLISH_TIMEOUT=3), not the default
    held = await api.get(CKPT, NS, "unheld.step-1")  # its own reconcile still waits for its bytes, kept
    assert held is not None and held.get("status", {}).get("phase", "Pending") == "Pending"
    assert not await api.get("v1/pods", NS, tj["status"]["snapshotPod"])
    # Counted from when the live snapshot pod ended (the pod the job built has no time: it failed at once so).
    ended = datetime.fromisoformat(counted_from[-1].replace("Z", "+00:00"))
    assert started <= ended <= datetime.now(timezone.utc) + timedelta(seconds=1)


async def test_retried_pod_resumes_from_its_own_earlier_checkpoints(api, operator, trainer, wait_for):
    def flaky(attempt, env):
        out = env["CHECKPOINT_OUTPUT_DIR"]
        if attempt == 1:
            write_checkpoint(out, "step-1", {"w.pt": b"1"})
            return 1
        assert os.path.exists(os.path.join(out, "step-1", "w.pt")), "the retry sees the first attempt's output"
        write_checkpoint(out, "step-2", {"w.pt": b"2"})
        return 0
    trainer.behaviours["flaky"] = flaky
    await api.create(TJ, NS, training_job("flaky", backoffLimit=2))
    tj = await wait_phase(api, wait_for, TJ, "flaky", "Succeeded")
    assert sorted(tj["status"]["outputCheckpoints"]) == ["flaky.step-1", "flaky.step-2"]
    assert len(trainer.envs["flaky"]) == 2


@pytest.mark.slow
async def test_keep_names_and_collisions(api, operator, trainer, wait_for):
    # A foreign object already has one of the names the snapshot derives: the snapshot waits
    # (NameConflict, naming it) and never uses another name; once it is gone, the names are made.
    await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                                "metadata": {"name": "multi.step-3", "namespace": NS},
                                "spec": {"source": {"http": {"url": "http://127.0.0.1:9/none"}}}})

    def many(attempt, env):
        out = env["CHECKPOINT_OUTPUT_DIR"]
        for d in ("step-1", "step-2", "step-3", "Step_4", "step-4", "ümlaut dir", "empty-later"):
            write_checkpoint(out, d, {"w.pt": d.encode()})
        os.remove(os.path.join(out, "empty-later", "w.pt"))
        write_checkpoint(out, ".hidden", {"w.pt": b"h"})
        return 0
    trainer.behaviours["multi"] = many
    await api.create(TJ, NS, training_job("multi", output={"keep": 3}))

    async def conflicted():
        tj = await api.get(TJ, NS, "multi")
        ready = next((c for c in tj.get("status", {}).get("conditions") or [] if c["type"] == "Ready"), {})
        return tj if ready.get("reason") == "NameConflict" else None
    waiting = await wait_for(conflicted, timeout=30)
    assert waiting["status"]["phase"] == "Snapshotting"
    assert "output 'step-3' would be Checkpoint multi.step-3, which exists" in ready_condition(waiting)["message"]
    assert not [c for c in await api.list(CKPT, NS) if c["metadata"]["name"].startswith("multi.step-4")]
    await api.delete(CKPT, NS, "multi.step-3")

    tj = await wait_phase(api, wait_for, TJ, "multi", "Succeeded", timeout=60)
    names = sorted(tj["status"]["outputCheckpoints"])
    # keep 3 highest steps: Step_4, step-4 (both step 4) and step-3; "ümlaut dir" has no step, so it is kept
    assert "multi.step-4" in names and "multi.step-3" in names                # the derived names, never others
    assert [n for n in names if n.startswith("multi.step-4.")]              # Step_4: readable part and a hash
    assert [n for n in names if n.startswith("multi.mlaut-dir.")]
    assert not any("step-1" in n or "step-2" in n or "hidden" in n or "empty" in n for n in names)
    assert len(names) == 4
    for name in names:
        assert (await phase_of(api, CKPT, name)) == "Ready"
    assert (await api.get(CKPT, NS, "multi.step-3"))["spec"]["source"]["trainingJob"]["directory"] == "step-3"


async def test_missing_input_waits_then_proceeds_when_created(api, operator, cluster, trainer, wait_for, tmp_path):
    trainer.behaviours["late"] = lambda a, env: 0 if os.path.exists(
        os.path.join(env["CHECKPOINT_INPUT_PATH"], "weights.bin")) else 3
    await api.create(TJ, NS, training_job("late", checkpoints=[{"name": "adopted"}], output={"enabled": False}))
    await wait_phase(api, wait_for, TJ, "late", "Pending")

    async def says_why():
        obj = await api.get(TJ, NS, "late")
        cond = next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
        return cond if cond and cond["reason"] == "InputNotFound" else None
    cond = await wait_for(says_why)
    assert "adopted" in cond["message"] and cond["status"] == "False"
    await wait_event(api, wait_for, "late", lambda e: e["type"] == "Warning" and "adopted" in e["message"])

    # Adopt data that already sits on a PVC: scanned in place, never owned.
    await api.create("v1/persistentvolumeclaims", NS, {"metadata": {"name": "datasets"},
                                                       "spec": {"accessModes": ["ReadWriteOnce"],
                                                                "resources": {"requests": {"storage": "1Gi"}}}})
    claim_dir = await wait_for(lambda: cluster.claim_dir(NS, "datasets"))
    write_checkpoint(str(claim_dir), "models/base", {"weights.bin": b"base weights", "config.json": b"{}"})
    await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                                "metadata": {"name": "adopted", "namespace": NS},
                                "spec": {"source": {"volume": {"claimName": "datasets", "path": "/models/base"}}}})
    adopted = await wait_phase(api, wait_for, CKPT, "adopted", "Ready")
    assert adopted["status"]["owned"] is False and adopted["status"]["fileCount"] == 2
    assert adopted["status"]["location"] == {"volume": {"claimName": "datasets", "path": "models/base"}}
    await wait_phase(api, wait_for, TJ, "late", "Succeeded")

    # Deleting an adopted checkpoint never deletes the data it points to.
    await api.delete(CKPT, NS, "adopted")
    await wait_for(lambda: _gone(api, CKPT, "adopted"))
    assert os.path.exists(os.path.join(claim_dir, "models/base/weights.bin"))
    assert await api.get("v1/persistentvolumeclaims", NS, "datasets") is not None


async def test_bad_template_mount_and_env_conflict_are_reported(api, operator, trainer, wait_for):
    bad = training_job("bad")
    bad["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "x", "mountPath": "/output-checkpoint/logs"}]
    bad["spec"]["template"]["spec"]["volumes"] = [{"name": "x", "emptyDir": {}}]
    await api.create(TJ, NS, bad)
    tj = await wait_phase(api, wait_for, TJ, "bad", "Failed")
    cond = ready_condition(tj)
    assert cond["reason"] == "InvalidSpec" and "/output-checkpoint/logs" in cond["message"]
    assert await api.get("batch/v1/jobs", NS, "bad") is None

    trainer.behaviours["env"] = lambda a, env: 0
    envjob = training_job("env", output={"enabled": False})
    envjob["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "CHECKPOINT_INPUT_DIR", "value": "/mine"}]
    await api.create(TJ, NS, envjob)
    await wait_phase(api, wait_for, TJ, "env", "Succeeded")
    assert trainer.envs["env"][0]["CHECKPOINT_INPUT_DIR"] != "/mine"
    await wait_event(api, wait_for, "env", lambda e: e["reason"] == "EnvOverridden" and e["type"] == "Warning")


async def test_a_template_a_cluster_refuses_in_the_job_fails_with_the_api_server_line(api, operator, trainer, wait_for):
    """hostile5 F3: what the CRD does not check (an init container named as a container) but kube-apiserver
    refuses in the Job: local mode's API refuses the Job as a cluster does, and the job fails naming the field
    (it ran before)."""
    bad = training_job("dupname")
    bad["spec"]["template"]["spec"]["initContainers"] = [{"name": "trainer", "image": "x", "command": ["true"]}]
    await api.create(TJ, NS, bad)
    tj = await wait_phase(api, wait_for, TJ, "dupname", "Failed")
    cond = ready_condition(tj)
    assert cond["reason"] == "InvalidSpec" and cond["message"].startswith(
        'the API server refused the Job or its volume: Job.batch "dupname" is invalid: '
        'spec.template.spec.initContainers['), cond
    assert cond["message"].endswith('].name: Duplicate value: "trainer"'), cond
    assert await api.get("batch/v1/jobs", NS, "dupname") is None


async def test_deleting_a_job_deletes_its_job_and_releases_inputs(api, operator, trainer, wait_for):
    trainer.behaviours["src"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "s-1", {"a": b"1"}) or 0
    hold = asyncio.Event()
    trainer.behaviours["user"] = held_until(hold, timeout=20)
    await api.create(TJ, NS, training_job("src"))
    await wait_phase(api, wait_for, TJ, "src", "Succeeded")
    await api.create(TJ, NS, training_job("user", checkpoints=[{"name": "src.s-1"}]))
    await wait_phase(api, wait_for, TJ, "user", "Running")
    await api.delete(TJ, NS, "user")
    await wait_for(lambda: _gone(api, TJ, "user"))
    await wait_for(lambda: _gone(api, "batch/v1/jobs", "user"))
    async def released():
        return not (await api.get(CKPT, NS, "src.s-1"))["status"].get("usedBy")
    await wait_for(released, timeout=10)
    hold.set()


async def test_an_output_volume_that_never_binds_is_named_with_its_reason(api, operator, cluster, trainer, wait_for,
                                                                           monkeypatch):
    """The local provisioner knows no StorageClass `no-such-class`: it never binds the claim and says
    why in an Event (ProvisioningFailed), as the PV controller does."""
    from checkpoint_operator.reconcile import volumes
    monkeypatch.setattr(volumes, "CLAIM_RECHECK", 0.5)
    monkeypatch.setattr(volumes, "PODS_GRACE", 1.0)  # a claim younger is not explained yet: 5 s of waiting
    trainer.behaviours["stuck"] = lambda a, env: 0
    await api.create(TJ, NS, training_job("stuck", output={"storageClassName": "no-such-class"}))

    async def explained():
        tj = await api.get(TJ, NS, "stuck")
        ready = next((c for c in (tj or {}).get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})
        return ready if ready.get("reason") == "VolumeNotBound" and "ProvisioningFailed" in ready["message"] else None
    ready = await wait_for(explained, timeout=30)
    claim = (await api.get(TJ, NS, "stuck"))["status"]["outputClaim"]
    assert ready["message"] == f'PersistentVolumeClaim {claim} is Pending: ProvisioningFailed: ' \
                               'storageclass.storage.k8s.io "no-such-class" not found'
    assert (await api.get(TJ, NS, "stuck"))["status"]["phase"] == "Running" and "stuck" not in trainer.envs
    await wait_event(api, wait_for, "stuck", lambda e: e["reason"] == "VolumeNotBound" and e["type"] == "Warning")


async def test_jobs_waiting_on_each_other_are_stalled_naming_the_cycle(api, operator, trainer, wait_for):
    """Before: both stayed Pending with "has not finished (phase Pending)" forever (issue 18 item 6)."""
    await api.create(TJ, NS, training_job("ping", checkpoints=[{"fromTrainingJob": "pong", "select": "latest"}]))
    await api.create(TJ, NS, training_job("pong", checkpoints=[{"fromTrainingJob": "ping", "select": "latest"}]))

    def stalled_on_cycle(name, arrows):
        async def check():
            tj = await api.get(TJ, NS, name)
            conditions = {c["type"]: c for c in tj.get("status", {}).get("conditions") or []}
            stalled = conditions.get("Stalled", {})
            ready = conditions.get("Ready", {})
            if stalled.get("status") == "True" and ready.get("reason") == "InputCycle" and arrows in ready["message"]:
                return tj
            return None
        return check
    ping = await wait_for(stalled_on_cycle("ping", "ping -> pong -> ping"), timeout=20)
    pong = await wait_for(stalled_on_cycle("pong", "pong -> ping -> pong"), timeout=20)
    assert ping["status"]["phase"] == pong["status"]["phase"] == "Pending"
    assert await api.get("batch/v1/jobs", NS, "ping") is None  # nothing started

    await api.delete(TJ, NS, "pong")  # the cycle is broken: ping waits for a job that does not exist

    async def not_found():
        tj = await api.get(TJ, NS, "ping")
        ready = next((c for c in tj["status"].get("conditions") or [] if c["type"] == "Ready"), {})
        return tj if ready.get("reason") == "InputNotFound" else None
    await wait_for(not_found, timeout=20)


@pytest.mark.slow
async def test_a_detached_child_of_the_trainer_cannot_rewrite_a_sealed_checkpoint(api, operator, cluster, wait_for):
    """The trainer runs as a real process (no stand-in) and leaves a detached child that rewrites
    its checkpoint a few seconds after the container ended. Before: the child outlived the pod and
    the Ready Checkpoint's bytes were no longer its digest (issue 18 item 8a)."""
    code = ("import os, subprocess, sys; d = os.path.join(os.environ['CHECKPOINT_OUTPUT_DIR'], 'step-1'); "
            "os.makedirs(d); open(os.path.join(d, 'model.bin'), 'w').write('sealed bytes'); "
            "subprocess.Popen([sys.executable, '-c', 'import sys, time; time.sleep(3); "
            "open(sys.argv[1], \"w\").write(\"rewritten later\")', os.path.join(d, 'model.bin')], "
            "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)")
    await api.create(TJ, NS, training_job("detacher", command=["python", "-c", code]))
    tj = await wait_phase(api, wait_for, TJ, "detacher", ("Succeeded", "Failed"), timeout=60)
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    status = (await api.get(CKPT, NS, "detacher.step-1"))["status"]
    directory = os.path.join(cluster.claim_dir(NS, tj["status"]["outputClaim"]), "step-1")
    await asyncio.sleep(4)
    assert open(os.path.join(directory, "model.bin")).read() == "sealed bytes"
    assert status["phase"] == "Ready" and status["digest"] == sha256sum_digest(directory)


async def _fg_gone(api, resource, name):
    return await api.get(resource, NS, name) is None


async def _fg_phase(api, wait_for, resource, name, phases, timeout=60):
    async def reached():
        obj = await api.get(resource, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") in phases else None
    return await wait_for(reached, timeout=timeout)


async def _fg_fg_gone(api, resource, name):
    return await api.get(resource, NS, name) is None


async def test_a_running_job_deleted_in_the_foreground_goes(api, operator, trainer, wait_for):
    """`kubectl delete --cascade=foreground` on a running TrainingJob: its Job and pods go first, then
    the job (local mode holds a Foreground deletion's owner until its dependents are gone)."""
    hold = asyncio.Event()
    trainer.behaviours["fg"] = held_until(hold, timeout=60)
    await api.create(TJ, NS, training_job("fg"))
    await _fg_phase(api, wait_for, TJ, "fg", ("Running",))
    await api.delete(TJ, NS, "fg", propagation_policy="Foreground")
    try:
        await wait_for(lambda: _fg_gone(api, TJ, "fg"), timeout=40)
    except AssertionError:
        obj = await api.get(TJ, NS, "fg")
        raise AssertionError(f"stuck: {obj['metadata'].get('finalizers')} {obj.get('status', {}).get('phase')}")
    finally:
        hold.set()
    assert await _fg_gone(api, "batch/v1/jobs", "fg")
    assert await api.list("v1/pods", NS, label_selector="ckpt.dev/trainingjob=fg") == []


async def test_a_finished_job_deleted_in_the_foreground_leaves_its_checkpoint_and_bytes(api, operator, trainer,
                                                                                         wait_for):
    trainer.behaviours["fgdone"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1",
                                                                   {"w.bin": b"x" * 100}) or 0
    await api.create(TJ, NS, training_job("fgdone"))
    await _fg_phase(api, wait_for, TJ, "fgdone", ("Succeeded",))
    await _fg_phase(api, wait_for, CKPT, "fgdone.step-1", ("Ready",))
    claim = (await api.get(TJ, NS, "fgdone"))["status"].get("outputClaim")
    await api.delete(TJ, NS, "fgdone", propagation_policy="Foreground")
    await wait_for(lambda: _fg_gone(api, TJ, "fgdone"), timeout=40)
    await asyncio.sleep(3)
    again = await api.get(CKPT, NS, "fgdone.step-1")
    assert again is not None and again["status"]["phase"] == "Ready", again and again.get("status")
    pvc = await api.get("v1/persistentvolumeclaims", NS, claim)
    assert pvc is not None and not pvc["metadata"].get("deletionTimestamp"), pvc and pvc["metadata"]
