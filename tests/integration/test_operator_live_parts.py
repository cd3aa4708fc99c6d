"""Live sealing with a volume per worker (output.volumePerWorker, publish: Continuous) through the
real operator and the local cluster: each worker's pod runs the sealing sidecar on its own volume
(`agent watch --part`, for real), the operator assembles each directory once both workers sealed
their part (the union pod, for real), and publishes ONE Checkpoint per step while the workers
still run. The training code (the test's behaviours, one per worker) blocks on events the test
sets once it has seen what it waits for: every check is about order, not time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time

import pytest

from conftest import CKPT, NS, TJ, training_job
from formats_files import dcp_metadata_bytes
from test_operator_lifecycle import events_for, wait_phase

pytestmark = pytest.mark.timeout(240)
LIVE_PARTS = {"publish": "Continuous", "volumePerWorker": True}


def dcp_part(out: str, step: int, rank: int, ranks: int = 2) -> None:
    """Rank `rank`'s part of a torch DCP save of `step` into its own volume, written under a temporary
    name and renamed into place; rank 0 writes `.metadata` (every rank's shard named) last."""
    tmp, final = os.path.join(out, f"step-{step}.tmp"), os.path.join(out, f"step-{step}")
    os.makedirs(tmp)
    with open(os.path.join(tmp, f"__{rank}_0.distcp"), "wb") as f:
        f.write(bytes([rank, step]) * 32)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        f.write('{"layers": 2}')
    if rank == 0:
        with open(os.path.join(tmp, ".metadata"), "wb") as f:
            f.write(dcp_metadata_bytes(["model.w"], [(f"__{r}_0.distcp", 0, 64) for r in range(ranks)]))
    os.rename(tmp, final)


async def ready(api, name):
    obj = await api.get(CKPT, NS, name)
    return obj if obj and obj.get("status", {}).get("phase") == "Ready" else None


async def job_checkpoints(api, job):
    return sorted(c["metadata"]["name"] for c in await api.list(CKPT, NS)
                  if c["spec"]["source"].get("trainingJob", {}).get("name") == job)


async def test_one_checkpoint_per_step_is_published_from_both_workers_parts_while_they_run(
        api, operator, cluster, trainer, wait_for):
    first_seen, second_seen = threading.Event(), threading.Event()
    volumes: dict[int, str] = {}

    def train(attempt, env):
        rank, out = int(env["RANK"]), env["CHECKPOINT_OUTPUT_DIR"]
        volumes[rank] = os.path.realpath(out)
        assert "CHECKPOINT_RESUME_PATH" not in env  # a worker's part is nothing to resume from
        dcp_part(out, 1, rank)
        assert first_seen.wait(120)
        dcp_part(out, 2, rank)
        assert second_seen.wait(120)
        return 0
    trainer.behaviours["lp"] = train
    await api.create(TJ, NS, training_job("lp", replicas=2, engine="JobSet", backoffLimit=0, output=LIVE_PARTS))

    for step, seen in ((1, first_seen), (2, second_seen)):
        ckpt = await wait_for(lambda step=step: ready(api, f"lp.step-{step}"), timeout=120)
        tj = await api.get(TJ, NS, "lp")
        assert tj["status"]["phase"] == "Running"  # published while both workers still run
        status = ckpt["status"]
        assert (status["format"], status["step"], status["complete"], status["fileCount"]) == ("torch-dcp", step, True, 4)
        parts = status["location"]["volumeParts"]  # where the end-of-job union puts it: the parts side by side
        assert [p["items"] for p in parts] == [[".metadata", "__0_0.distcp", "config.json"], ["__1_0.distcp"]]
        assert [p["path"] for p in parts] == [f"step-{step}"] * 2
        sealed = [e for e in await events_for(api, f"lp.step-{step}") if e["reason"] == "Sealed"]
        assert sealed and "from the sealed parts of worker 0, 1" in sealed[0]["message"]
        seen.set()

    tj = await wait_phase(api, wait_for, TJ, "lp", ("Succeeded", "Failed"), timeout=120)
    assert tj["status"]["phase"] == "Succeeded", tj["status"].get("message")
    # The end-of-job snapshot found both and made nothing twice.
    assert await job_checkpoints(api, "lp") == ["lp.step-1", "lp.step-2"]
    assert sorted(tj["status"]["outputCheckpoints"]) == ["lp.step-1", "lp.step-2"]
    assert tj["status"]["live"]["sealedCount"] == 2
    for step in (1, 2):  # each worker's volume holds its own part only (nothing was copied)
        assert sorted(os.listdir(os.path.join(volumes[1], f"step-{step}"))) == ["__1_0.distcp", "config.json"]
    assert not [p for p in await api.list("v1/pods", NS) if p["metadata"]["name"] == "lp-union"]


async def test_a_rank_that_rewrites_its_sealed_shard_or_never_writes_a_step_is_not_published_live(
        api, operator, cluster, trainer, wait_for):
    """Hostile ranks: rank 1 rewrites its step-1 shard after step-1 was published (as root, which
    the read-only bits do not stop), and never writes step-2. step-1's Checkpoint fails
    (ChangedAfterSealing, naming the worker); step-2 waits for rank 1 while its pod runs and is
    judged at the end over what exists: not complete, the missing shard named."""
    published, changed, rank1_done = threading.Event(), threading.Event(), threading.Event()

    def train(attempt, env):
        rank, out = int(env["RANK"]), env["CHECKPOINT_OUTPUT_DIR"]
        dcp_part(out, 1, rank)
        assert published.wait(120)
        if rank == 1:
            shard = os.path.join(out, "step-1", "__1_0.distcp")
            os.chmod(shard, 0o644)
            with open(shard, "r+b") as f:
                f.write(b"\xff" * 8)
            rank1_done.set()
            assert changed.wait(120)
            return 0
        dcp_part(out, 2, 0)
        assert rank1_done.wait(120) and changed.wait(120)
        return 0
    trainer.behaviours["hp"] = train
    await api.create(TJ, NS, training_job("hp", replicas=2, engine="JobSet", backoffLimit=0, output=LIVE_PARTS))
    await wait_for(lambda: ready(api, "hp.step-1"), timeout=120)
    published.set()

    async def failed():
        obj = await api.get(CKPT, NS, "hp.step-1")
        return obj if obj and obj["status"].get("phase") == "Failed" else None
    step1 = await wait_for(failed, timeout=120)
    condition = next(c for c in step1["status"]["conditions"] if c["type"] == "Ready")
    assert condition["reason"] == "ChangedAfterSealing"
    assert "worker 1's part changed after it was sealed" in condition["message"]
    assert await api.get(CKPT, NS, "hp.step-2") is None  # waiting for rank 1's part while its pod runs
    changed.set()
    tj = await wait_phase(api, wait_for, TJ, "hp", ("Succeeded", "Failed"), timeout=120)
    step2 = await api.get(CKPT, NS, "hp.step-2")
    assert step2 is not None and step2["status"]["complete"] is False
    condition = next(c for c in step2["status"]["conditions"] if c["type"] == "Complete")
    assert condition["message"] == "__1_0.distcp is named by .metadata but missing"
    assert await job_checkpoints(api, "hp") == ["hp.step-1", "hp.step-2"]
    assert tj["status"]["phase"] == "Succeeded", tj["status"].get("message")


async def test_retention_deletes_a_dropped_union_and_each_worker_removes_its_part_while_they_run(
        api, operator, cluster, trainer, wait_for):
    """keep: 1 with a volume per worker: once step-2 is published, step-1's Checkpoint is deleted, and
    each worker's sidecar removes its own part of step-1 from its volume (asked by the digest of its
    part), while both still run; the retirement is then forgotten and nothing is published again."""
    second_seen, removed = threading.Event(), threading.Event()
    volumes: dict[int, str] = {}

    def train(attempt, env):
        rank, out = int(env["RANK"]), env["CHECKPOINT_OUTPUT_DIR"]
        volumes[rank] = os.path.realpath(out)
        dcp_part(out, 1, rank)
        dcp_part(out, 2, rank)
        assert second_seen.wait(120) and removed.wait(120)
        return 0
    trainer.behaviours["rp"] = train
    await api.create(TJ, NS, training_job("rp", replicas=2, engine="JobSet", backoffLimit=0,
                                          output={**LIVE_PARTS, "keep": 1}))
    await wait_for(lambda: ready(api, "rp.step-2"), timeout=120)
    second_seen.set()

    async def parts_gone():
        if await api.get(CKPT, NS, "rp.step-1") is not None:
            return None
        tj = await api.get(TJ, NS, "rp")
        if (tj["status"].get("live") or {}).get("retired"):
            return None  # forgotten only once every worker removed its part
        return all(not os.path.exists(os.path.join(volumes[r], "step-1")) for r in (0, 1)) or None
    await wait_for(parts_gone, timeout=120)
    assert (await api.get(TJ, NS, "rp"))["status"]["phase"] == "Running"
    removed.set()

    tj = await wait_phase(api, wait_for, TJ, "rp", ("Succeeded", "Failed"), timeout=120)
    assert tj["status"]["phase"] == "Succeeded", tj["status"].get("message")
    assert await job_checkpoints(api, "rp") == ["rp.step-2"]


async def test_a_union_deleted_by_hand_while_the_workers_run_goes_and_is_not_published_again(
        api, operator, cluster, trainer, wait_for):
    """Its deletion waits for the job to record it retired (as one volume's live sealing): recorded
    at the next pass, so it goes while the job runs. Rank 1 has ended by then, so only rank 0's
    sidecar removes its part: what is left at the end (rank 1's part, another digest) is not made
    into a Checkpoint again by the end-of-job snapshot."""
    published, removed = threading.Event(), threading.Event()
    volumes: dict[int, str] = {}

    def train(attempt, env):
        rank, out = int(env["RANK"]), env["CHECKPOINT_OUTPUT_DIR"]
        volumes[rank] = os.path.realpath(out)
        dcp_part(out, 1, rank)
        assert published.wait(120)
        assert rank == 1 or removed.wait(120)
        return 0
    trainer.behaviours["dp"] = train
    await api.create(TJ, NS, training_job("dp", replicas=2, engine="JobSet", backoffLimit=0, output=LIVE_PARTS))
    await wait_for(lambda: ready(api, "dp.step-1"), timeout=120)
    published.set()

    async def rank1_ended():
        pods = [p for p in await api.list("v1/pods", NS) if p["metadata"].get("labels", {}).get(
            "ckpt.dev/worker-index") == "1" and p["metadata"]["labels"].get("ckpt.dev/trainingjob") == "dp"]
        return pods and all(p.get("status", {}).get("phase") == "Succeeded" for p in pods) or None
    await wait_for(rank1_ended, timeout=120)
    await api.delete(CKPT, NS, "dp.step-1")

    async def deleted_and_removed():
        gone = await api.get(CKPT, NS, "dp.step-1") is None
        return gone and not os.path.exists(os.path.join(volumes[0], "step-1")) or None
    await wait_for(deleted_and_removed, timeout=60)
    assert (await api.get(TJ, NS, "dp"))["status"]["phase"] == "Running"
    assert os.path.exists(os.path.join(volumes[1], "step-1"))  # rank 1's pod has ended: its part stays
    removed.set()
    tj = await wait_phase(api, wait_for, TJ, "dp", ("Succeeded", "Failed"), timeout=120)
    assert tj["status"]["phase"] == "Succeeded", tj["status"].get("message")
    assert await job_checkpoints(api, "dp") == []


@pytest.mark.timeout(240)
async def test_a_worker_s_part_is_known_by_its_sidecar_not_by_its_pod_s_label(api, operator, cluster, trainer,
                                                                               wait_for):
    """hostile8 F4: the label ckpt.dev/worker-index of a pod is anyone's to patch (the stock edit role); worker
    1's pod relabelled "0" made its parts count as worker 0's, and a step was published Ready from one
    worker's part only, incomplete. A part is the worker's whose template the pod's sidecar is."""
    relabelled, done = threading.Event(), threading.Event()
    name = "relabel"

    def train(attempt, env):
        rank, out = int(env["RANK"]), env["CHECKPOINT_OUTPUT_DIR"]
        assert relabelled.wait(120)
        dcp_part(out, 1, rank)
        if rank == 1:
            time.sleep(4)  # a straggler: rank 0's step-2 is sealed first
        dcp_part(out, 2, rank)
        assert done.wait(60)
        return 0
    trainer.behaviours[name] = train
    await api.create(TJ, NS, training_job(name, replicas=2, engine="JobSet", backoffLimit=0,
                                          output={"publish": "Continuous", "volumePerWorker": True}))

    async def worker1_pod():
        pods = [p for p in await api.list("v1/pods", NS)
                if p["metadata"].get("labels", {}).get("ckpt.dev/trainingjob") == name
                and p["metadata"]["labels"].get("ckpt.dev/worker-index") == "1"
                and p.get("status", {}).get("phase") == "Running"]
        return pods[0] if pods else None
    pod = await wait_for(worker1_pod, timeout=120)
    await api.patch("v1/pods", NS, pod["metadata"]["name"], {"metadata": {"labels": {"ckpt.dev/worker-index": "0"}}})
    relabelled.set()

    async def both_published():
        found = {c["metadata"]["name"]: c for c in await api.list(CKPT, NS) if c["metadata"]["name"].startswith(name + ".")
                 and c.get("status", {}).get("phase") == "Ready"}
        return found if len(found) >= 2 else None
    published = await wait_for(both_published, timeout=120)
    for checkpoint in published.values():
        assert checkpoint["status"]["complete"] is True, checkpoint["status"]
    done.set()
    tj = await wait_phase(api, wait_for, TJ, name, "Succeeded", timeout=120)
    assert tj["status"]["outputCheckpoints"] == [f"{name}.step-1", f"{name}.step-2"]


async def test_an_unsigned_checkpoint_naming_the_job_does_not_stop_a_step_being_published(
        api, operator, cluster, trainer, wait_for):
    """review4 F0: a Checkpoint anyone wrote whose spec names the job and a directory is not the job's
    (unsigned): the union of that directory is still assembled and published while the workers run."""
    seen = threading.Event()

    def train(attempt, env):
        dcp_part(env["CHECKPOINT_OUTPUT_DIR"], 1, int(env["RANK"]))
        assert seen.wait(120)
        return 0
    trainer.behaviours["sq"] = train
    await api.create(TJ, NS, training_job("sq", replicas=2, engine="JobSet", backoffLimit=0, output=LIVE_PARTS))
    uid = (await wait_for(lambda: api.get(TJ, NS, "sq"), timeout=30))["metadata"]["uid"]
    await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                                "metadata": {"name": "squat", "namespace": NS},
                                "spec": {"source": {"trainingJob": {"name": "sq", "uid": uid, "directory": "step-1"}}}})
    ckpt = await wait_for(lambda: ready(api, "sq.step-1"), timeout=120)
    assert (await api.get(TJ, NS, "sq"))["status"]["phase"] == "Running"
    assert ckpt["status"]["complete"] is True
    seen.set()
    tj = await wait_phase(api, wait_for, TJ, "sq", ("Succeeded", "Failed"), timeout=120)
    assert tj["status"]["phase"] == "Succeeded", tj["status"].get("message")
    assert tj["status"]["outputCheckpoints"] == ["sq.step-1"]


def writable(directory: str) -> bool:
    """Every file and directory of it keeps its write bits: what a non-root trainer needs to write
    there again (these tests run as root, whom the bits do not stop)."""
    paths = [directory] + [os.path.join(root, n) for root, dirs, files in os.walk(directory) for n in dirs + files]
    return all(os.stat(p).st_mode & 0o222 for p in paths)


async def test_a_step_cut_short_stays_writable_for_the_restarted_group_that_writes_it_again(
        api, operator, cluster, trainer, wait_for):
    """F7: attempt 0 saves step-1 on both ranks, then step-2 in place is cut short (rank 1's shard
    whole, rank 0 dies before DCP's `.metadata`). The operator restarts the group from step-1 (the
    union complete over the volumes); each rank of attempt 1 writes step-2 again. Its part of step-2
    must still be writable (sealed read-only at its pod's end, a non-root trainer got PermissionError
    and the group failed at every attempt); step-2 is then published once, complete, from the
    bytes attempt 1 wrote."""
    found: dict[int, bool] = {}

    def train(attempt, env):
        rank, out = int(env["RANK"]), env["CHECKPOINT_OUTPUT_DIR"]
        step2 = os.path.join(out, "step-2")
        if "CHECKPOINT_RESUME_PATH" not in env:  # attempt 0
            dcp_part(out, 1, rank)
            os.makedirs(step2)
            with open(os.path.join(step2, f"__{rank}_0.distcp"), "wb") as f:
                f.write(bytes([rank, 2]) * (32 if rank == 1 else 8))  # rank 0 killed mid-shard
            return 3
        assert os.path.basename(os.path.realpath(env["CHECKPOINT_RESUME_PATH"])) != "step-2"
        found[rank] = writable(step2)
        if not found[rank]:
            return 13  # EACCES: what a non-root trainer gets writing its sealed part again
        with open(os.path.join(step2, f"__{rank}_0.distcp"), "wb") as f:
            f.write(bytes([rank, 2]) * 32)
        if rank == 0:
            with open(os.path.join(step2, ".metadata"), "wb") as f:
                f.write(dcp_metadata_bytes(["model.w"], [(f"__{r}_0.distcp", 0, 64) for r in range(2)]))
        return 0
    trainer.behaviours["cs"] = train
    await api.create(TJ, NS, training_job("cs", replicas=2, engine="JobSet", backoffLimit=1, output=LIVE_PARTS))
    tj = await wait_phase(api, wait_for, TJ, "cs", ("Succeeded", "Failed"), timeout=200)
    status = tj["status"]
    assert found == {0: True, 1: True}, found
    assert status["phase"] == "Succeeded" and status["restarts"] == 1, status.get("message")
    assert (status["resume"]["directory"], status["resume"]["step"]) == ("step-1", 1), status["resume"]
    step2 = await api.get(CKPT, NS, "cs.step-2")
    assert (step2["status"]["phase"], step2["status"]["complete"]) == ("Ready", True), step2["status"]
    assert await job_checkpoints(api, "cs") == ["cs.step-1", "cs.step-2"]


async def test_a_step_is_not_published_without_the_part_of_a_worker_whose_pod_failed_and_is_restarted(
        api, operator, cluster, trainer, wait_for):
    """hostile9 H9-1: rank 1 dies (exit 1) after rank 0's part of step-1 is sealed, while rank 0's pod
    still runs (a real cluster deletes it gracefully: here a finalizer on its Job keeps it running).
    step-1 was published Ready from worker 0's part alone (complete: false, waiting only for running
    workers); the restarted group's rank 1 wrote its part, but the step counted as published, the
    end-of-job union (another digest) failed it "changed after it was sealed", and the job ended with
    no checkpoint. Every worker of the job is waited for: step-1 is published once, from both parts."""
    calls: dict[int, int] = {0: 0, 1: 0}
    part0_sealed, released = threading.Event(), threading.Event()
    lock = threading.Lock()

    def train(attempt, env):
        rank, out = int(env["RANK"]), env["CHECKPOINT_OUTPUT_DIR"]
        with lock:
            calls[rank] += 1
            first = calls[rank] == 1
        if first:
            if rank == 1:
                assert part0_sealed.wait(60)
                return 1  # rank 1 dies (a node lost, OOM) before writing its part of step-1
            dcp_part(out, 1, 0)
            released.wait(60)  # rank 0 still runs (torchrun waiting for its peer)
            return 1
        if not os.path.exists(os.path.join(out, "step-1")):  # the next attempt: rank 0's part is there
            dcp_part(out, 1, rank)
        return 0
    trainer.behaviours["pu"] = train
    body = training_job("pu", replicas=2, engine="JobSet", backoffLimit=1, output=LIVE_PARTS)
    await api.create(TJ, NS, body)

    async def pods(index):
        return [p for p in await api.list("v1/pods", NS) if p["metadata"].get("labels", {}).get(
            "ckpt.dev/trainingjob") == "pu" and p["metadata"]["labels"].get("ckpt.dev/worker-index") == index]
    pod0 = (await wait_for(lambda: pods("0"), timeout=30))[0]["metadata"]["name"]
    # Local mode's GC removes a deleted pod at once: a finalizer on worker 0's Job keeps its pod running
    # while the group is stopped, as a graceful deletion on a cluster does.
    jobs = [j["metadata"]["name"] for j in await api.list("batch/v1/jobs", NS) if j["metadata"]["name"].startswith("pu-node-0")]
    assert jobs
    for job in jobs:
        await api.patch("batch/v1/jobs", NS, job, {"metadata": {"finalizers": ["test/hold"]}})

    async def sealed0():
        return '"kind":"sealed"' in await api.read_log(NS, pod0, container="ckpt-live") or None
    await wait_for(sealed0, timeout=60)
    part0_sealed.set()

    async def rank1_failed_rank0_runs():
        failed = [p for p in await pods("1") if p.get("status", {}).get("phase") == "Failed"]
        running = [p for p in await pods("0") if p.get("status", {}).get("phase") == "Running"]
        return failed and running or None
    await wait_for(rank1_failed_rank0_runs, timeout=60)
    for _ in range(8):  # the operator's passes (live_poll_interval 1 s) while worker 1's pod has failed
        assert await api.get(CKPT, NS, "pu.step-1") is None, "published without worker 1's part"
        await asyncio.sleep(1)
    released.set()
    for job in jobs:
        if await api.get("batch/v1/jobs", NS, job):
            await api.patch("batch/v1/jobs", NS, job, {"metadata": {"finalizers": None}})

    tj = await wait_phase(api, wait_for, TJ, "pu", ("Succeeded", "Failed"), timeout=180)
    assert tj["status"]["phase"] == "Succeeded" and tj["status"]["restarts"] == 1, tj["status"].get("message")
    step1 = await api.get(CKPT, NS, "pu.step-1")
    assert (step1["status"]["phase"], step1["status"]["complete"], step1["status"]["fileCount"]) == \
        ("Ready", True, 4), step1["status"]
    assert tj["status"]["outputCheckpoints"] == ["pu.step-1"]


NOBODY = 65534
# The step written again removes its old part first (EACCES in a sealed directory for a non-root user).
RENAME_PART = 'set -e; rm -rf "step-$2" "step-$2.tmp"; mkdir "step-$2.tmp"; ' \
              'printf "rank %s step %s" "$3" "$2" > "step-$2.tmp/rank-$3.bin"; sleep 0.3; mv "step-$2.tmp" "step-$2"'


def rename_part_as_nobody(out: str, step: int, rank: int) -> subprocess.CompletedProcess:
    """Rank `rank`'s part of `step`, written under a temporary name and renamed into place, by a
    non-root user (no format marker: a rename-per-rank writer, which torch DCP is not)."""
    # cwd: entered before the user changes (the test's temporary directories are root's, 0700)
    return subprocess.run(["/bin/sh", "-c", RENAME_PART, "part", "", str(step), str(rank)], cwd=out, user=NOBODY,
                          group=NOBODY, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="writes as another user (uid 65534)")
async def test_a_part_sealed_for_a_step_never_published_is_writable_again_for_a_non_root_restarted_group(
        api, operator, cluster, trainer, wait_for):
    """H9-3: worker 0 (a non-root trainer) seals its part of step-1 by a rename into place, worker 1
    dies before its part. step-1 has no Checkpoint; the group restarts. The resume step gave worker 0's
    part back with the trainer's modes: its next attempt writes step-1 again (rmtree, rename) as the
    same user and succeeds (it got EACCES in its sealed directory, and the job failed where it should
    retry); step-1 is then published from both parts."""
    part0_sealed = threading.Event()
    rewrite: dict[int, subprocess.CompletedProcess] = {}
    calls = {0: 0, 1: 0}
    lock = threading.Lock()

    def train(attempt, env):
        rank, out = int(env["RANK"]), os.path.realpath(env["CHECKPOINT_OUTPUT_DIR"])
        with lock:
            calls[rank] += 1
            first = calls[rank] == 1
        os.chmod(out, 0o777)  # the trainer's user writes its volume (an fsGroup on a cluster)
        if first:
            if rank == 1:
                assert part0_sealed.wait(60)
                return 1  # rank 1 dies before writing its part of step-1
            done = rename_part_as_nobody(out, 1, 0)
            assert done.returncode == 0, done.stderr
            part0_sealed.wait(60)
            return 0
        done = rename_part_as_nobody(out, 1, rank)
        rewrite[rank] = done
        return 0 if done.returncode == 0 else 13
    trainer.behaviours["rw"] = train
    await api.create(TJ, NS, training_job("rw", replicas=2, engine="JobSet", backoffLimit=1, output=LIVE_PARTS))

    async def sealed0():
        pods = [p["metadata"]["name"] for p in await api.list("v1/pods", NS)
                if p["metadata"].get("labels", {}).get("ckpt.dev/trainingjob") == "rw"
                and p["metadata"]["labels"].get("ckpt.dev/worker-index") == "0"]
        for pod in pods:
            if '"kind":"sealed"' in await api.read_log(NS, pod, container="ckpt-live"):
                return True
        return None
    await wait_for(sealed0, timeout=60)
    part0_sealed.set()
    tj = await wait_phase(api, wait_for, TJ, "rw", ("Succeeded", "Failed"), timeout=180)
    status = tj["status"]
    assert 0 in rewrite and rewrite[0].returncode == 0, rewrite.get(0) and rewrite[0].stderr
    assert status["phase"] == "Succeeded" and status["restarts"] == 1, status.get("message")
    step1 = await wait_for(lambda: ready(api, "rw.step-1"), timeout=60)
    assert step1["status"]["fileCount"] == 2, step1["status"]
    assert await job_checkpoints(api, "rw") == ["rw.step-1"]


@pytest.mark.skipif(os.geteuid() != 0, reason="writes as another user (uid 65534)")
async def test_a_part_given_back_beside_a_resume_copy_is_not_sealed_again_by_the_restarted_sidecar(
        api, operator, cluster, trainer, wait_for):
    """H10-2: step-1 is published from both workers' DCP parts; worker 0 (uid 65534) then seals its part
    of step-2 by a rename, worker 1 dies before its part. The group restarts from step-1: the resume step
    writes .ckpt-resume (the first time: a mkdir in each volume's root, the parent's mtime) and gives
    worker 0's step-2 back (a chmod, its ctime): the rename sign of the restarted sidecar must not take
    that for a rename into place and seal it again, so the restarted worker 0 writes step-2 again."""
    step1_ready = threading.Event()
    part2_sealed = threading.Event()
    rewrite: dict[int, subprocess.CompletedProcess] = {}
    calls = {0: 0, 1: 0}
    lock = threading.Lock()

    def train(attempt, env):
        rank, out = int(env["RANK"]), os.path.realpath(env["CHECKPOINT_OUTPUT_DIR"])
        with lock:
            calls[rank] += 1
            first = calls[rank] == 1
        os.chmod(out, 0o777)
        if first:
            if not os.path.exists(os.path.join(out, "step-1")):
                dcp_part(out, 1, rank)
            assert step1_ready.wait(90)
            if rank == 1:
                assert part2_sealed.wait(60)
                return 1  # dies before its part of step-2
            done = rename_part_as_nobody(out, 2, 0)
            assert done.returncode == 0, done.stderr
            part2_sealed.wait(60)
            return 0
        time.sleep(3)  # the restarted trainer loads step-1 and trains before it saves step-2 again
        done = rename_part_as_nobody(out, 2, rank)
        rewrite[rank] = done
        return 0 if done.returncode == 0 else 13
    trainer.behaviours["rs"] = train
    await api.create(TJ, NS, training_job("rs", replicas=2, engine="JobSet", backoffLimit=1, output=LIVE_PARTS))

    async def ready(name):
        obj = await api.get(CKPT, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") == "Ready" else None
    try:
        await wait_for(lambda: ready("rs.step-1"), timeout=90)
    finally:
        step1_ready.set()

    async def sealed2():
        for p in await api.list("v1/pods", NS):
            labels = p["metadata"].get("labels", {})
            if labels.get("ckpt.dev/trainingjob") == "rs" and labels.get("ckpt.dev/worker-index") == "0":
                log = await api.read_log(NS, p["metadata"]["name"], container="ckpt-live")
                if any('"kind":"sealed"' in line and "step-2" in line for line in log.splitlines()):
                    return True
        return None
    try:
        await wait_for(sealed2, timeout=60)
    finally:
        part2_sealed.set()
    tj = await wait_phase(api, wait_for, TJ, "rs", ("Succeeded", "Failed"), timeout=180)
    status = tj["status"]
    assert status.get("restarts") == 1, status
    assert 0 in rewrite, (calls, status.get("message"))
    assert rewrite[0].returncode == 0, f"restarted worker 0 could not write step-2 again: {rewrite[0].stderr}"
    assert status["phase"] == "Succeeded", status.get("message")
    await wait_for(lambda: ready("rs.step-2"), timeout=60)
