"""Live sealing through the real operator and the local cluster: the kubelet runs the sealing
sidecar (`agent watch`, for real) beside the training container, reads nothing but its log, and
stops it after the training container. The training code (the test's behaviours) blocks on
events the test sets once it has seen what it waits for, so every check is about order, not time."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading

import pytest

from conftest import CKPT, NS, TJ, training_job, write_checkpoint
from formats_files import torch_file, weights
from test_operator_lifecycle import events_for, ready_condition, wait_event, wait_phase

pytestmark = pytest.mark.timeout(180)
LIVE = {"publish": "Continuous"}


def trainer_checkpoint(out: str, step: int, eval_loss: float | None = None) -> None:
    """A Transformers Trainer checkpoint; trainer_state.json (its completion marker) written last."""
    history = [{"step": step, "loss": 1.0}] + ([{"step": step, "eval_loss": eval_loss}] if eval_loss is not None else [])
    write_checkpoint(out, f"checkpoint-{step}", {"config.json": b"{}", "model.safetensors": weights(b"w" * step),
                                                 "optimizer.pt": torch_file()})
    write_checkpoint(out, f"checkpoint-{step}", {"trainer_state.json": json.dumps(
        {"global_step": step, "log_history": history}).encode()})


def gate() -> threading.Event:
    return threading.Event()


async def checkpoint(api, name):
    return await api.get(CKPT, NS, name)


async def ready(api, name):
    obj = await checkpoint(api, name)
    return obj if obj and obj.get("status", {}).get("phase") == "Ready" else None


async def job_checkpoints(api, job):
    return sorted(c["metadata"]["name"] for c in await api.list(CKPT, NS)
                  if c["spec"]["source"].get("trainingJob", {}).get("name") == job)


async def test_checkpoints_are_ready_while_the_job_runs_and_retention_frees_the_volume(
        api, operator, cluster, trainer, wait_for):
    first_seen, second_seen = gate(), gate()
    volume = {}

    def train(attempt, env):
        out = env["CHECKPOINT_OUTPUT_DIR"]
        volume["out"] = os.path.realpath(out)
        volume["resume"] = env["CHECKPOINT_RESUME_PATH"]
        trainer_checkpoint(out, 10)
        assert first_seen.wait(90)
        trainer_checkpoint(out, 20)
        assert second_seen.wait(90)
        return 0
    trainer.behaviours["live"] = train
    await api.create(TJ, NS, training_job("live", output={**LIVE, "keep": 1}))

    first = await wait_for(lambda: ready(api, "live.checkpoint-10"), timeout=60)
    assert (await api.get(TJ, NS, "live"))["status"]["phase"] == "Running"
    status = first["status"]
    assert (status["format"], status["step"], status["resumable"], status["complete"]) == ("huggingface", 10, True, True)
    # The sidecar stores the full manifest beside the data (never in the sealed directory).
    assert status["location"] == {"volume": {"claimName": (await api.get(TJ, NS, "live"))["status"]["outputClaim"],
                                             "path": "checkpoint-10",
                                             "manifest": f".ckpt-manifests/{status['digest'].replace(':', '-')}.json"}}
    assert os.path.isfile(os.path.join(volume["out"], status["location"]["volume"]["manifest"]))
    assert status["metrics"] == {"loss": 1.0}
    # The Checkpoint owns the output volume with the job: deleting the job would not take its bytes.
    claim = await api.get("v1/persistentvolumeclaims", NS, status["location"]["volume"]["claimName"])
    assert {o["kind"] for o in claim["metadata"]["ownerReferences"]} == {"TrainingJob", "Checkpoint"}
    assert os.readlink(os.path.join(volume["out"], ".ckpt-live", "resume")).endswith("checkpoint-10")
    first_seen.set()

    await wait_for(lambda: ready(api, "live.checkpoint-20"), timeout=60)

    async def retired_and_removed():
        gone = await checkpoint(api, "live.checkpoint-10") is None
        return gone and not os.path.exists(os.path.join(volume["out"], "checkpoint-10"))
    await wait_for(retired_and_removed, timeout=60)
    assert (await api.get(TJ, NS, "live"))["status"]["phase"] == "Running"
    second_seen.set()

    tj = await wait_phase(api, wait_for, TJ, "live", "Succeeded", timeout=60)
    assert tj["status"]["outputCheckpoints"] == ["live.checkpoint-20"]
    assert tj["status"]["live"]["sealedCount"] == 2
    assert "retired" not in tj["status"]["live"], "the removal was acknowledged"
    assert await job_checkpoints(api, "live") == ["live.checkpoint-20"], "the snapshot created nothing twice"
    assert not any(c["type"] == "OutputRetained" and c["status"] == "True" for c in tj["status"]["conditions"])
    assert volume["resume"].endswith("/.ckpt-live/resume")
    sealed = [e for e in await events_for(api, "live.checkpoint-20") if e["reason"] == "Sealed"]
    assert sealed and "complete: trainer_state.json" in sealed[0]["message"]


async def test_retention_keeps_a_directory_an_adopter_points_into_until_the_adopter_goes(
        api, operator, cluster, trainer, wait_for):
    """hostile1 D13: with keep: 1, retention deleted live.checkpoint-10 and the sidecar removed
    its directory although Checkpoint `kept` (source.volume on the output) pointed into it:
    `kept` stayed Ready on nothing (failed before: checkpoint-10 removed, kept Ready). Now the
    directory stays while `kept` exists, and goes once `kept` is deleted (the job still runs)."""
    first_seen, second_seen, done = gate(), gate(), gate()
    volume = {}

    def train(attempt, env):
        out = env["CHECKPOINT_OUTPUT_DIR"]
        volume["out"] = os.path.realpath(out)
        trainer_checkpoint(out, 10)
        assert first_seen.wait(90)
        trainer_checkpoint(out, 20)
        assert second_seen.wait(90)
        assert done.wait(90)
        return 0
    trainer.behaviours["live"] = train
    await api.create(TJ, NS, training_job("live", output={**LIVE, "keep": 1}))
    first = await wait_for(lambda: ready(api, "live.checkpoint-10"), timeout=60)
    claim = first["status"]["location"]["volume"]["claimName"]
    await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": "kept"},
                                "spec": {"source": {"volume": {"claimName": claim, "path": "/checkpoint-10"}}}})
    adopted = await wait_for(lambda: ready(api, "kept"), timeout=60)
    assert adopted["status"]["digest"] == first["status"]["digest"]
    first_seen.set()

    await wait_for(lambda: ready(api, "live.checkpoint-20"), timeout=60)

    async def retired():
        return await checkpoint(api, "live.checkpoint-10") is None or None
    await wait_for(retired, timeout=60)
    kept_event = await wait_event(api, wait_for, "live", lambda e: e["reason"] == "RetiredKept")
    assert kept_event[0]["message"] == ("retention released checkpoint-10, but Checkpoint kept points into it: it "
                                        "stays while they do")
    second_seen.set()
    assert os.path.exists(os.path.join(volume["out"], "checkpoint-10", "model.safetensors"))
    kept = await checkpoint(api, "kept")
    assert kept["status"]["phase"] == "Ready" and kept["status"]["digest"] == first["status"]["digest"]

    await api.delete(CKPT, NS, "kept")

    async def removed():
        return not os.path.exists(os.path.join(volume["out"], "checkpoint-10")) or None
    await wait_for(removed, timeout=60)
    assert (await api.get(TJ, NS, "live"))["status"]["phase"] == "Running"
    done.set()
    await wait_phase(api, wait_for, TJ, "live", "Succeeded", timeout=60)


async def test_a_consumer_takes_the_latest_of_a_running_producer_or_waits_for_it_to_finish(
        api, operator, cluster, trainer, wait_for):
    consumed, release = {}, gate()

    def produce(attempt, env):
        trainer_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], 5)
        assert release.wait(90)
        trainer_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], 6)
        return 0

    def evaluate(attempt, env):
        consumed["evaluate"] = sorted(os.listdir(env["CHECKPOINT_INPUT_PATH"]))
        return 0

    def after(attempt, env):
        consumed["after"] = env["CHECKPOINT_INPUT_NAMES"]
        return 0
    trainer.behaviours.update(producer=produce, evaluate=evaluate, after=after)
    await api.create(TJ, NS, training_job("producer", output=LIVE))
    await wait_for(lambda: ready(api, "producer.checkpoint-5"), timeout=60)
    await api.create(TJ, NS, training_job("evaluate", checkpoints=[{"fromTrainingJob": "producer"}],
                                          output={"enabled": False}))
    await api.create(TJ, NS, training_job("after", checkpoints=[{"fromTrainingJob": "producer", "wait": "Finished"}],
                                          output={"enabled": False}))
    evaluated = await wait_phase(api, wait_for, TJ, "evaluate", "Succeeded", timeout=60)
    assert evaluated["status"]["inputs"][0]["name"] == "producer.checkpoint-5"
    assert consumed["evaluate"] == ["config.json", "model.safetensors", "optimizer.pt", "trainer_state.json"]
    assert (await api.get(TJ, NS, "producer"))["status"]["phase"] == "Running"
    waiting = await api.get(TJ, NS, "after")
    assert waiting["status"]["phase"] == "Pending" and "has not finished" in waiting["status"]["message"]
    release.set()
    await wait_phase(api, wait_for, TJ, "after", "Succeeded", timeout=90)
    assert consumed["after"] == "producer.checkpoint-6"


async def test_a_retried_pod_resumes_from_the_latest_sealed_checkpoint(api, operator, cluster, trainer, wait_for):
    seen = []

    def train(attempt, env):
        resume = env["CHECKPOINT_RESUME_PATH"]
        seen.append((os.path.exists(resume), os.path.basename(os.path.realpath(resume))))
        out = env["CHECKPOINT_OUTPUT_DIR"]
        if attempt == 1:
            trainer_checkpoint(out, 1)
            trainer_checkpoint(out, 2)
            return 1  # dies; the Job retries
        trainer_checkpoint(out, 3)
        return 0
    trainer.behaviours["resumer"] = train
    await api.create(TJ, NS, training_job("resumer", output=LIVE, backoffLimit=2))
    tj = await wait_phase(api, wait_for, TJ, "resumer", "Succeeded", timeout=90)
    assert seen[0][0] is False, "no resume path on the first attempt"
    assert seen[1] == (True, "checkpoint-2"), "the retry finds the latest checkpoint sealed by the first pod"
    assert tj["status"]["outputCheckpoints"] == ["resumer.checkpoint-1", "resumer.checkpoint-2", "resumer.checkpoint-3"]


PREEMPTED = r"""
import json, os, signal, sys, time
out = os.environ["CHECKPOINT_OUTPUT_DIR"]
WEIGHTS = bytes.fromhex("%s")
OPTIMIZER = bytes.fromhex("%s")
def save(step, **extra):
    d = os.path.join(out, f"checkpoint-{step}")
    os.makedirs(d, exist_ok=True)
    files = {"config.json": b"{}", "model.safetensors": WEIGHTS, "optimizer.pt": OPTIMIZER,
             **{k: v.encode() for k, v in extra.items()}}
    for name, data in files.items():
        open(os.path.join(d, name), "wb").write(data)
    open(os.path.join(d, "trainer_state.json"), "w").write(json.dumps({"global_step": step}))
resume = os.environ["CHECKPOINT_RESUME_PATH"]
if os.path.exists(resume):  # the replacement pod: resume, train on, finish
    save(3, resumed_from=os.path.basename(os.path.realpath(resume)))
    sys.exit(0)
def on_term(*_):
    save(2)  # the emergency checkpoint, written in the grace period
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
save(1)
while True:
    time.sleep(0.05)
""" % (weights(b"w").hex(), torch_file().hex())


async def test_a_preempted_pod_s_emergency_checkpoint_is_sealed_and_its_replacement_resumes_from_it(
        api, operator, cluster, wait_for):
    await api.create(TJ, NS, training_job("preempted", output=LIVE, backoffLimit=3,
                                          command=["python", "-c", PREEMPTED]))
    await wait_for(lambda: ready(api, "preempted.checkpoint-1"), timeout=60)
    pods = [p for p in await api.list("v1/pods", NS) if p["metadata"]["labels"].get("ckpt.dev/trainingjob") == "preempted"
            and p["metadata"]["labels"].get("ckpt.dev/component") == "worker"]
    await api.delete("v1/pods", NS, pods[0]["metadata"]["name"])  # preemption: SIGTERM, then the grace period
    tj = await wait_phase(api, wait_for, TJ, "preempted", "Succeeded", timeout=90)
    assert tj["status"]["outputCheckpoints"] == ["preempted.checkpoint-1", "preempted.checkpoint-2",
                                                 "preempted.checkpoint-3"]
    assert tj["status"]["live"]["sealedCount"] == 3, "all three sealed by the sidecars, none left to the snapshot"
    sealed = [e for e in await events_for(api, "preempted.checkpoint-2") if e["reason"] == "Sealed"]
    assert sealed, "sealed by the sidecar (in the grace period, or once the trainer had exited)"
    claim = cluster.claim_dir(NS, tj["status"]["outputClaim"])
    assert (claim / "checkpoint-3" / "resumed_from").read_text() == "checkpoint-2"


async def test_a_sealed_directory_changed_afterwards_fails_its_checkpoint(api, operator, cluster, trainer, wait_for):
    seen = gate()

    def train(attempt, env):
        out = env["CHECKPOINT_OUTPUT_DIR"]
        trainer_checkpoint(out, 7)
        assert seen.wait(90)
        path = os.path.join(out, "checkpoint-7", "model.safetensors")
        os.chmod(path, 0o644)  # what a root container can do despite the missing write bits
        with open(path, "ab") as f:
            f.write(b"more")
        return 0
    trainer.behaviours["mutating"] = train
    await api.create(TJ, NS, training_job("mutating", output=LIVE))
    before = await wait_for(lambda: ready(api, "mutating.checkpoint-7"), timeout=60)
    assert before["status"]["digest"].startswith("sha256:")
    seen.set()
    await wait_phase(api, wait_for, TJ, "mutating", ("Succeeded", "Failed"), timeout=90)
    after = await checkpoint(api, "mutating.checkpoint-7")
    assert after["status"]["phase"] == "Failed"
    assert next(c for c in after["status"]["conditions"] if c["type"] == "Ready")["reason"] == "ChangedAfterSealing"
    assert after["status"]["digest"] == before["status"]["digest"], "its digest is never rewritten"
    assert await job_checkpoints(api, "mutating") == ["mutating.checkpoint-7"]


async def test_retention_never_takes_a_checkpoint_a_running_consumer_uses(api, operator, cluster, trainer, wait_for):
    """keep: 1 drops checkpoint-10 when checkpoint-20 seals, but a consumer pinned it: it stays
    (deletion blocked, its directory on the volume) until the consumer finishes; then it goes and
    the sidecar removes its directory, while the producer still runs."""
    consumer_started, consumer_done, producer_done = gate(), gate(), gate()
    volume = {}

    def produce(attempt, env):
        volume["out"] = os.path.realpath(env["CHECKPOINT_OUTPUT_DIR"])
        trainer_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], 10)
        assert consumer_started.wait(90)
        trainer_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], 20)
        assert producer_done.wait(90)
        return 0

    def consume(attempt, env):
        consumer_started.set()
        assert consumer_done.wait(90)
        return 0
    trainer.behaviours.update(held=produce, user=consume)
    await api.create(TJ, NS, training_job("held", output={**LIVE, "keep": 1}))
    await wait_for(lambda: ready(api, "held.checkpoint-10"), timeout=60)
    await api.create(TJ, NS, training_job("user", checkpoints=[{"fromTrainingJob": "held"}],
                                          output={"enabled": False}))
    await wait_for(lambda: consumer_started.is_set(), timeout=60)
    await wait_for(lambda: ready(api, "held.checkpoint-20"), timeout=60)

    async def blocked():
        obj = await checkpoint(api, "held.checkpoint-10")
        reason = next((c["reason"] for c in (obj or {}).get("status", {}).get("conditions") or []
                       if c["type"] == "Ready"), None)
        return obj if obj and obj["metadata"].get("deletionTimestamp") and reason == "DeletionBlocked" else None
    held = await wait_for(blocked, timeout=60)
    assert held["status"]["phase"] == "Ready" and "user" in held["status"]["message"]
    assert os.path.isdir(os.path.join(volume["out"], "checkpoint-10")), "its bytes stay while it is in use"

    consumer_done.set()
    await wait_phase(api, wait_for, TJ, "user", "Succeeded", timeout=60)

    async def released_and_removed():
        return await checkpoint(api, "held.checkpoint-10") is None and \
            not os.path.exists(os.path.join(volume["out"], "checkpoint-10"))
    await wait_for(released_and_removed, timeout=60)
    assert (await api.get(TJ, NS, "held"))["status"]["phase"] == "Running"
    producer_done.set()
    tj = await wait_phase(api, wait_for, TJ, "held", "Succeeded", timeout=60)
    assert tj["status"]["outputCheckpoints"] == ["held.checkpoint-20"]


async def test_a_checkpoint_labelled_keep_survives_retention_while_newer_ones_seal(
        api, operator, cluster, trainer, wait_for):
    """keepLatest: 1 while the job runs: checkpoint-10, labelled ckpt.dev/keep=true, stays (and its
    directory) while 20 and 30 seal; 20, unlabelled, is deleted and removed when 30 seals."""
    labelled, twenty_seen, thirty_seen = gate(), gate(), gate()
    volume = {}

    def train(attempt, env):
        out = env["CHECKPOINT_OUTPUT_DIR"]
        volume["out"] = os.path.realpath(out)
        trainer_checkpoint(out, 10)
        assert labelled.wait(90)
        trainer_checkpoint(out, 20)
        assert twenty_seen.wait(90)
        trainer_checkpoint(out, 30)
        assert thirty_seen.wait(90)
        return 0
    trainer.behaviours["kept"] = train
    await api.create(TJ, NS, training_job("kept", output={**LIVE, "retention": {"keepLatest": 1}}))
    await wait_for(lambda: ready(api, "kept.checkpoint-10"), timeout=60)
    await api.patch(CKPT, NS, "kept.checkpoint-10", {"metadata": {"labels": {"ckpt.dev/keep": "true"}}})

    async def label_seen_by_the_operator():
        info = operator.ctx.indexes.checkpoint(NS, "kept.checkpoint-10")
        return info is not None and info.exempt
    await wait_for(label_seen_by_the_operator, timeout=30)
    labelled.set()

    await wait_for(lambda: ready(api, "kept.checkpoint-20"), timeout=60)
    twenty_seen.set()
    await wait_for(lambda: ready(api, "kept.checkpoint-30"), timeout=60)

    async def twenty_retired_and_removed():
        return await checkpoint(api, "kept.checkpoint-20") is None and \
            not os.path.exists(os.path.join(volume["out"], "checkpoint-20"))
    await wait_for(twenty_retired_and_removed, timeout=60)
    assert (await api.get(TJ, NS, "kept"))["status"]["phase"] == "Running"
    kept = await ready(api, "kept.checkpoint-10")
    assert kept is not None and not kept["metadata"].get("deletionTimestamp"), "the labelled one is never retired"
    assert os.path.isdir(os.path.join(volume["out"], "checkpoint-10"))
    retired = await wait_event(api, wait_for, "kept", lambda e: e["reason"] == "Retired")
    assert [e["message"] for e in retired] == ["retention: deleting Checkpoint kept.checkpoint-20 (step 20)"]
    thirty_seen.set()

    tj = await wait_phase(api, wait_for, TJ, "kept", "Succeeded", timeout=60)
    assert tj["status"]["outputCheckpoints"] == ["kept.checkpoint-10", "kept.checkpoint-30"], \
        "the end-of-job retention keeps the labelled one too"
    assert await job_checkpoints(api, "kept") == ["kept.checkpoint-10", "kept.checkpoint-30"]
    assert os.path.isdir(os.path.join(volume["out"], "checkpoint-10"))


async def test_nothing_of_a_live_sealing_job_stays_in_the_operator_s_memory(api, operator, cluster, trainer,
                                                                            wait_for):
    """Per-job state of live sealing goes when the job leaves Running, the rest when it is
    deleted: a long-running operator sees thousands of jobs (issue 21 item 6)."""
    sealed = gate()

    def train(attempt, env):
        trainer_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], 10)
        assert sealed.wait(90)
        return 0
    trainer.behaviours["mem"] = train
    await api.create(TJ, NS, training_job("mem", output=LIVE))
    await wait_for(lambda: ready(api, "mem.checkpoint-10"), timeout=60)
    assert operator.ctx.live, "remembered while it runs"
    sealed.set()
    await wait_phase(api, wait_for, TJ, "mem", "Succeeded", timeout=60)
    assert operator.ctx.live == {}

    await api.delete(TJ, NS, "mem")
    for name in await job_checkpoints(api, "mem"):
        await api.delete(CKPT, NS, name)

    async def forgotten():
        gone = await api.get(TJ, NS, "mem") is None and not await job_checkpoints(api, "mem")
        kept = [k for k in list(operator.ctx.own_writes) if k[2].startswith("mem")] + \
            [k for k in list(operator.ctx.last_uses) if k[1] == "mem"]
        return gone and not kept
    await wait_for(forgotten, timeout=60)


async def test_nothing_of_deleted_jobs_and_checkpoints_stays_in_the_object_cache(api, operator, cluster, trainer,
                                                                                wait_for):
    """Jobs run to Succeeded and deleted with their Checkpoints leave no body in the operator's
    object cache: the response of the write that removed a Checkpoint's last finalizer came back
    after its DELETED event and was kept for good, about 500 bytes per lifecycle (docs/performance.md
    "Memory over many job lifecycles")."""
    names = [f"gone-{i}" for i in range(4)]
    for i, name in enumerate(names):
        def train(attempt, env):
            trainer_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], 10)
            return 0
        trainer.behaviours[name] = train
        await api.create(TJ, NS, training_job(name, **({"output": LIVE} if i % 2 else {})))
    for name in names:
        await wait_phase(api, wait_for, TJ, name, "Succeeded", timeout=60)
    made = [c for name in names for c in await job_checkpoints(api, name)]
    assert len(made) == len(names)
    for name in names:
        await api.delete(TJ, NS, name)
    for name in made:
        await api.delete(CKPT, NS, name)

    async def gone():
        return all([await api.get(TJ, NS, n) is None for n in names]) and \
            all([await api.get(CKPT, NS, c) is None for c in made])
    await wait_for(gone, timeout=60)
    await asyncio.sleep(1.0)  # the writes' late responses, if any, are observed by now
    cache = operator.ctx.kube.cache
    kept = [(kind, name) for kind in ("TrainingJob", "Checkpoint") for name in names + made
            if cache.knows(kind, NS, name)]
    assert kept == []


async def test_every_sealed_checkpoint_owns_the_output_volume_while_the_job_runs(api, operator, cluster, trainer,
                                                                                 wait_for):
    """Each sealing pass adds its Checkpoints to the volume's owners and keeps the earlier ones:
    deleting the job mid-run never takes an earlier Ready Checkpoint's bytes."""
    second, checked = gate(), gate()

    def train(attempt, env):
        trainer_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], 10)
        assert second.wait(90)
        trainer_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], 20)
        assert checked.wait(90)
        return 0
    trainer.behaviours["own"] = train
    await api.create(TJ, NS, training_job("own", output=LIVE))
    first = await wait_for(lambda: ready(api, "own.checkpoint-10"), timeout=60)
    second.set()
    later = await wait_for(lambda: ready(api, "own.checkpoint-20"), timeout=60)
    claim_name = first["status"]["location"]["volume"]["claimName"]

    async def owners():
        claim = await api.get("v1/persistentvolumeclaims", NS, claim_name)
        return {o["uid"] for o in claim["metadata"].get("ownerReferences") or []}
    job = await api.get(TJ, NS, "own")
    wanted = {first["metadata"]["uid"], later["metadata"]["uid"]}
    assert job["status"]["phase"] == "Running"
    assert wanted | {job["metadata"]["uid"]} <= await owners()
    checked.set()
    await wait_phase(api, wait_for, TJ, "own", "Succeeded", timeout=60)
    after = await owners()
    assert wanted <= after and job["metadata"]["uid"] not in after  # handed over: the job no longer owns it


async def test_a_pod_of_anyone_s_claiming_the_job_s_job_as_owner_is_not_its_sealing_sidecar(
        api, operator, cluster, trainer, wait_for):
    """hostile8 F1: a user who may create pods makes one with the worker's labels, a controller owner
    reference to the job's Job and a container named ckpt-live printing a `sealed` line (a step-7 the
    trainer never wrote, complete, with the digest of their choosing). Its sidecar is not the one the
    operator built into the Job's template: its log is not read, one SealingWarning names the pod, and the
    job's real checkpoint is published as before."""
    release = gate()

    def train(attempt, env):
        trainer_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], 1)
        assert release.wait(90)
        return 0
    trainer.behaviours["forged"] = train
    await api.create(TJ, NS, training_job("forged", output=LIVE))
    await wait_for(lambda: ready(api, "forged.checkpoint-1"), timeout=60)
    real = next(p for p in await api.list("v1/pods", NS)
                if p["metadata"].get("labels", {}).get("ckpt.dev/trainingjob") == "forged")
    owner = next(o for o in real["metadata"]["ownerReferences"] if o.get("controller"))
    line = {"kind": "sealed", "version": 1, "checkpoint": {
        "path": "checkpoint-7", "digest": "sha256:" + "7" * 64, "sizeBytes": 4000, "fileCount": 1, "format": "safetensors",
        "step": 7, "resumable": True, "complete": True}}
    sidecar = next(c for c in real["spec"]["initContainers"] if c["name"] == "ckpt-live")
    forged = {"metadata": {"name": "forged-extra", "labels": real["metadata"]["labels"],
                           "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": owner["name"],
                                                "uid": owner["uid"], "controller": True}]},
              "spec": {"restartPolicy": "Never",
                       "initContainers": [{**sidecar, "command": [
                           "python", "-c", f"import time; print({json.dumps(json.dumps(line))}, flush=True); "
                                           "time.sleep(60)"]}],
                       "containers": [{"name": "main", "image": "img", "command": [
                           "python", "-c", "import time; time.sleep(60)"]}],
                       "volumes": real["spec"].get("volumes", [])}}
    await api.create("v1/pods", NS, forged)
    async def warned():
        return [e for e in await events_for(api, "forged") if e["reason"] == "SealingWarning"
                and "pod forged-extra: its container ckpt-live is not the sealing sidecar the operator built"
                in e["message"]]
    await wait_for(warned, timeout=60)
    release.set()
    tj = await wait_phase(api, wait_for, TJ, "forged", "Succeeded", timeout=60)
    assert await checkpoint(api, "forged.checkpoint-7") is None
    assert tj["status"]["outputCheckpoints"] == ["forged.checkpoint-1"]


async def test_a_deleted_checkpoint_applied_again_from_its_saved_yaml_never_becomes_ready(
        api, operator, cluster, trainer, wait_for):
    """Its signature binds no uid, so a copy of a deleted snapshot Checkpoint (`kubectl apply` of saved
    YAML, GitOps, a backup restore) verifies; its directory is gone (retired, removed by the sidecar).
    The job never hands it the output claim, and it fails, named, instead of becoming Ready without bytes."""
    removed, release = gate(), gate()
    where: dict[str, str] = {}

    def train(attempt, env):
        out = env["CHECKPOINT_OUTPUT_DIR"]
        where["out"] = os.path.realpath(out)
        trainer_checkpoint(out, 1)
        assert removed.wait(90)
        trainer_checkpoint(out, 2)
        assert release.wait(90)
        return 0
    trainer.behaviours["rpl"] = train
    await api.create(TJ, NS, training_job("rpl", output=LIVE))
    saved = await wait_for(lambda: ready(api, "rpl.checkpoint-1"), timeout=60)
    await api.delete(CKPT, NS, "rpl.checkpoint-1")  # retired first, then the sidecar removes its directory

    async def gone():
        return await api.get(CKPT, NS, "rpl.checkpoint-1") is None and \
            not os.path.exists(os.path.join(where["out"], "checkpoint-1")) or None
    await wait_for(gone, timeout=60)

    async def forgotten():  # the sidecar reported the removal: the job's record of it is gone too
        tj = await api.get(TJ, NS, "rpl")
        return not ((tj.get("status") or {}).get("live") or {}).get("retired") or None
    await wait_for(forgotten, timeout=60)
    removed.set()
    await wait_for(lambda: ready(api, "rpl.checkpoint-2"), timeout=60)
    again = {"apiVersion": saved["apiVersion"], "kind": "Checkpoint",
             "metadata": {"name": saved["metadata"]["name"], "namespace": NS,
                          "labels": saved["metadata"].get("labels", {})},
             "spec": saved["spec"]}
    await api.create(CKPT, NS, again)
    release.set()
    tj = await wait_phase(api, wait_for, TJ, "rpl", "Succeeded", timeout=120)
    assert tj["status"]["outputCheckpoints"] == ["rpl.checkpoint-2"]

    async def settled():
        body = await checkpoint(api, "rpl.checkpoint-1")
        return body if body and body.get("status", {}).get("phase") in ("Ready", "Failed") else None
    replay = await wait_for(settled, timeout=30)
    assert replay["metadata"]["uid"] != saved["metadata"]["uid"]
    assert replay["status"]["phase"] == "Failed", replay["status"]
    assert ready_condition(replay)["reason"] == "NotCreatedByJob", replay["status"]
    message = ready_condition(replay)["message"]
    assert "never handed checkpoint-1 to this Checkpoint" in message and "saved YAML" in message, message
    assert "\n" not in message


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chattr"), reason="makes a file immutable (chattr +i)")
async def test_a_retired_directory_the_sidecar_cannot_remove_does_not_hold_newer_removals_back(
        api, operator, cluster, trainer, wait_for, monkeypatch):
    """The removal annotation names the oldest retired directories only (100; 1 here): one the sidecar
    can never remove (a root trainer's files: EACCES; an immutable file here, which root cannot remove
    either) stayed at its head, and every newer one was never asked for. Now a directory the sidecar
    said it could not remove goes behind the others: checkpoint-20, retired after it, is removed while
    the job runs, and the failures are said in one RemovalFailed warning (how many, and why)."""
    from checkpoint_operator.logic import live_sealing as live_logic
    monkeypatch.setattr(live_logic, "MAX_REMOVALS_ANNOTATED", 1)
    gates = [gate() for _ in range(3)]
    volume: dict[str, str] = {}

    def train(attempt, env):
        out = volume["out"] = os.path.realpath(env["CHECKPOINT_OUTPUT_DIR"])
        for step, g in zip((10, 20, 30), gates):
            trainer_checkpoint(out, step)
            assert g.wait(90)
        return 0
    trainer.behaviours["stuck"] = train
    await api.create(TJ, NS, training_job("stuck", output={**LIVE, "keep": 1}))
    pinned = None
    try:
        await wait_for(lambda: ready(api, "stuck.checkpoint-10"), timeout=60)
        pinned = os.path.join(volume["out"], "checkpoint-10", "config.json")
        subprocess.run(["chattr", "+i", pinned], check=True)  # never removable, whoever the sidecar runs as
        gates[0].set()
        await wait_for(lambda: ready(api, "stuck.checkpoint-20"), timeout=60)
        gates[1].set()
        await wait_for(lambda: ready(api, "stuck.checkpoint-30"), timeout=60)

        async def removed_20():
            return not os.path.exists(os.path.join(volume["out"], "checkpoint-20")) or None
        await wait_for(removed_20, timeout=60)
        assert (await api.get(TJ, NS, "stuck"))["status"]["phase"] == "Running"
        assert os.path.isdir(os.path.join(volume["out"], "checkpoint-10"))
        failed = [e for e in await events_for(api, "stuck") if e["reason"] == "RemovalFailed"]
        assert failed and failed[0]["message"].startswith("1 retired directory could not be removed by the sealing "
                                                          "sidecar (the latest: could not remove checkpoint-10"), failed
        assert not [e for e in await events_for(api, "stuck") if e["reason"] == "SealingWarning"
                    and "could not remove" in e["message"]], "one aggregated warning, not one per directory"
    finally:
        if pinned:
            subprocess.run(["chattr", "-i", pinned], check=False)
        for g in gates:
            g.set()
    await wait_phase(api, wait_for, TJ, "stuck", ("Succeeded", "Failed"), timeout=60)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chattr"), reason="makes a file immutable (chattr +i)")
async def test_a_deleted_checkpoint_removed_in_part_is_not_published_again_from_what_is_left(
        api, operator, cluster, trainer, wait_for):
    """H10-1: checkpoint-20 is Ready; its user deletes the Checkpoint; the sidecar removes all of the
    directory but config.json (immutable here; another user's file on a cluster). At the job's end no
    Checkpoint is made of what the removal left under the deleted one's name, and one warning names it."""
    go_on = threading.Event()
    volume: dict[str, str] = {}

    def train(attempt, env):
        out = volume["out"] = os.path.realpath(env["CHECKPOINT_OUTPUT_DIR"])
        trainer_checkpoint(out, 10)
        trainer_checkpoint(out, 20)
        assert go_on.wait(120)
        return 0
    trainer.behaviours["pr"] = train
    await api.create(TJ, NS, training_job("pr", output=LIVE))
    pinned = None

    async def ready(name):
        obj = await api.get(CKPT, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") == "Ready" else None
    try:
        await wait_for(lambda: ready("pr.checkpoint-20"), timeout=60)
        pinned = os.path.join(volume["out"], "checkpoint-20", "config.json")
        subprocess.run(["chattr", "+i", pinned], check=True)
        await api.delete(CKPT, NS, "pr.checkpoint-20")

        async def removed_in_part():
            d = os.path.join(volume["out"], "checkpoint-20")
            return (os.path.isdir(d) and not os.path.exists(os.path.join(d, "model.safetensors"))) or None
        await wait_for(removed_in_part, timeout=60)
        go_on.set()
        tj = await wait_phase(api, wait_for, TJ, "pr", ("Succeeded", "Failed"), timeout=120)
        again = await api.get(CKPT, NS, "pr.checkpoint-20")
        assert again is None, f"checkpoint-20 published again from what the removal left: {again.get('status')}"
        assert tj["status"]["phase"] == "Succeeded", tj["status"].get("message")
        assert await ready("pr.checkpoint-10")
        said = await wait_event(api, wait_for, "pr", lambda e: e.get("reason") == "NotPublishedAgain")
        assert "checkpoint-20" in said[0]["message"] and "never published again" in said[0]["message"]
    finally:
        if pinned:
            subprocess.run(["chattr", "-i", pinned], check=False)
        go_on.set()


async def test_a_step_written_again_after_its_retired_directory_was_removed_is_not_published_under_the_deleted_name(
        api, operator, cluster, trainer, wait_for):
    """trust2 A: its user deletes re.checkpoint-10 (as retention does) and the sidecar removes its
    directory entirely; the operator restarts; the trainer (as after a restart from scratch) writes checkpoint-10
    again, other bytes. Failed before: nothing remembered the removed directory, and re.checkpoint-10
    was created again (a name that meant other bytes, a swap for whoever recorded it). Now the name is
    remembered in status.live.retiredPaths (across the restart), the directory is not published while
    the job runs nor by the end-of-job snapshot, and one NotPublishedAgain warning names it."""
    removed, written_again = gate(), gate()
    volume: dict[str, str] = {}

    def train(attempt, env):
        out = volume["out"] = os.path.realpath(env["CHECKPOINT_OUTPUT_DIR"])
        trainer_checkpoint(out, 10)
        trainer_checkpoint(out, 20)
        assert removed.wait(120)
        trainer_checkpoint(out, 10, eval_loss=0.5)  # other bytes under the removed directory's name
        written_again.set()
        trainer_checkpoint(out, 30)
        return 0
    trainer.behaviours["re"] = train
    await api.create(TJ, NS, training_job("re", output=LIVE))
    try:
        await wait_for(lambda: ready(api, "re.checkpoint-20"), timeout=60)
        await api.delete(CKPT, NS, "re.checkpoint-10")

        async def retired_and_removed():
            job = await api.get(TJ, NS, "re")
            live = job["status"].get("live") or {}
            gone = await checkpoint(api, "re.checkpoint-10") is None
            return (gone and not os.path.exists(os.path.join(volume["out"], "checkpoint-10"))
                    and not live.get("retired")) or None
        await wait_for(retired_and_removed, timeout=60)
        await operator.stop()  # what it remembers in memory is gone: only the job's status is left
        await operator.start()
        removed.set()
        assert written_again.wait(60)
        await wait_for(lambda: ready(api, "re.checkpoint-30"), timeout=60)  # sealed after checkpoint-10's rewrite
        tj = await wait_phase(api, wait_for, TJ, "re", ("Succeeded", "Failed"), timeout=120)
        again = await checkpoint(api, "re.checkpoint-10")
        assert again is None, f"published again under the deleted Checkpoint's name: {again['spec']}"
        assert tj["status"]["phase"] == "Succeeded", tj["status"].get("message")
        assert tj["status"]["live"]["retiredPaths"] == ["checkpoint-10"]
        said = await wait_event(api, wait_for, "re", lambda e: e.get("reason") == "NotPublishedAgain")
        assert "checkpoint-10" in said[0]["message"] and "never published again" in said[0]["message"]
        assert os.path.isdir(os.path.join(volume["out"], "checkpoint-10")), "left on the volume, not published"
    finally:
        removed.set()
