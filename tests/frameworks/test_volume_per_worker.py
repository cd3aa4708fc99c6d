"""A volume per worker for real (output.volumePerWorker, engine JobSet), through local mode: a
2-replica torchrun job (gloo on CPU) trains with DDP and saves torch DCP from both ranks, each rank
into its own volume (rank 0: `.metadata` and its shard; rank 1: its shard; both an identical
config.json); each step becomes ONE Checkpoint, torch-dcp, complete over the union; a second
2-replica job resumes with `dcp.load` from `latest`, each rank reading the union mounted from both
workers' volumes side by side, and gets the trained weights back. A rank that loses its shard
leaves its step incomplete, the reason naming the shard; ranks that write config.json with
different bytes make no Checkpoint of that step, and the Skipped event names the file and both
workers; perWorker keeps each worker's files its own Checkpoints, named per worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_distributed import DDP, job

SAVE = '        dcp.save(state(step), checkpoint_id=os.path.join(out, f"step-{step}"))\n'
# After each save: every rank writes config.json (identical unless CONFLICT_AT names this step),
# and rank 1 removes its own shard at DROP_SHARD_AT (a lost write).
AFTER_SAVE = SAVE + '''\
        step_dir = os.path.join(out, f"step-{step}")
        conflict = step == int(os.environ.get("CONFLICT_AT", "0"))
        with open(os.path.join(step_dir, "config.json"), "w") as f:
            json.dump({"layers": [8, 16, 4], "writer": rank if conflict else "all"}, f)
        if rank == 1 and step == int(os.environ.get("DROP_SHARD_AT", "0")):
            os.remove(os.path.join(step_dir, "__1_0.distcp"))
'''
PARTS_DDP = DDP.replace(SAVE, AFTER_SAVE)


def parts_job(name: str, command: list[str], *, env: dict | None = None, **spec) -> dict:
    """A JobSet job; its output a volume per worker unless `output` says otherwise (perWorker)."""
    return job(name, command, env=env, engine="JobSet", backoffLimit=spec.pop("backoffLimit", 0),
               output=spec.pop("output", {"volumePerWorker": True}), **spec)


# `store` as run() takes it -> local run's flags: snapshots is the volume store on block storage with
# volume snapshots (one VolumeSnapshot per worker volume, restored for each consumer).
STORE_FLAGS = {"volume": ["--store", "volume"], "s3": ["--store", "s3"],
               "snapshots": ["--store", "volume", "--storage-class", "block", "--volume-snapshot-class",
                             "block-snapshots"]}


def run(tmp_path: Path, jobs: list[dict], store: str = "volume") -> tuple[dict, dict, str]:
    """Run the jobs in local mode (`store`: volume, s3 on a SeaweedFS it starts, or snapshots); the
    report, every Checkpoint's and TrainingJob's stored object, and every stored object's line."""
    (tmp_path / "jobs.yaml").write_text("\n---\n".join(json.dumps(j) for j in jobs) + "\n")
    (tmp_path / "parts_ddp.py").write_text(PARTS_DDP)
    state = tmp_path / "state"
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "local", "run", "-f", "jobs.yaml",
                           "--runtime", "process", "-o", "json", "--state-dir", str(state), "--timeout", "900",
                           *STORE_FLAGS[store]], cwd=tmp_path, capture_output=True, text=True, timeout=1000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = (state / "api-objects.jsonl").read_text()
    stored = [json.loads(line) for line in lines.splitlines()[1:]]
    objects = {o["object"]["metadata"]["name"]: o["object"] for o in stored
               if o["object"].get("kind") in ("Checkpoint", "TrainingJob")}
    return json.loads(proc.stdout), objects, lines


@pytest.mark.parametrize("store", ["volume", "s3", "snapshots"])
def test_each_step_written_across_two_workers_volumes_is_one_complete_checkpoint_and_resumes(tmp_path, store):
    assert SAVE in DDP  # the hook point of the script this test extends
    train = parts_job("parts-train", ["torchrun", "parts_ddp.py", "train", "6", "2", str(tmp_path / "train.json")],
                      env={"DROP_SHARD_AT": "2", "CONFLICT_AT": "4"})
    resume = parts_job("parts-resume", ["torchrun", "parts_ddp.py", "resume", "2", "2",
                                        str(tmp_path / "resume.json")],
                       checkpoints=[{"fromTrainingJob": "parts-train", "select": "latest"}])
    report, stored, events = run(tmp_path, [train, resume], store)
    phases = {j["name"]: j["phase"] for j in report["trainingJobs"]}
    assert phases == {"parts-train": "Succeeded", "parts-resume": "Succeeded"}, report
    trained = json.loads((tmp_path / "train.json").read_text())
    assert (trained["world"], trained["start"]) == (2, 0)

    # Each worker wrote into its own ReadWriteOnce volume, which (volume store) the Checkpoints now
    # own, or (s3 store) which was released once everything in it was uploaded.
    objects = [json.loads(line)["object"] for line in events.splitlines()[1:]]
    claims = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "PersistentVolumeClaim"
              and o["metadata"]["name"].startswith("parts-train-output-")}
    if store == "volume":
        assert len(claims) == 2 and all(c["spec"]["accessModes"] == ["ReadWriteOnce"] for c in claims.values())
        for claim in claims.values():
            assert {r["kind"] for r in claim["metadata"]["ownerReferences"]} == {"Checkpoint"}
    # step-6: one Checkpoint, the union of both workers' files; config.json (same bytes) once.
    status = stored["parts-train.step-6"]["status"]
    assert (status["phase"], status["format"], status["complete"], status["step"]) == \
        ("Ready", "torch-dcp", True, 6), status
    assert status["fileCount"] == 4, status  # .metadata, __0_0.distcp, __1_0.distcp, config.json
    if store == "volume":  # the parts, mounted side by side by a consumer
        parts = status["location"]["volumeParts"]
        assert [p["claimName"].rsplit("-", 1)[1] for p in parts] == ["0", "1"]
        assert parts[0]["items"] == [".metadata", "__0_0.distcp", "config.json"]
        assert parts[1]["items"] == ["__1_0.distcp"]
    elif store == "snapshots":  # each part in the snapshot of its worker's volume, restored for consumers
        parts = status["location"]["snapshotParts"]
        assert [(p["worker"], p["items"]) for p in parts] == [(0, [".metadata", "__0_0.distcp", "config.json"]),
                                                             (1, ["__1_0.distcp"])]
        snapshots = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "VolumeSnapshot"}
        assert all(p["volumeSnapshotName"] in snapshots for p in parts)
        assert [snapshots[p["volumeSnapshotName"]]["spec"]["source"]["persistentVolumeClaimName"].rsplit("-", 1)[1]
                for p in parts] == ["0", "1"]
    else:  # the union, uploaded as one checkpoint
        assert status["location"]["s3"]["uri"].endswith("/dirs/step-6/"), status["location"]
    # step-2: rank 1's shard was lost: not complete, the reason names the shard.
    lost = stored["parts-train.step-2"]["status"]
    assert (lost["phase"], lost["complete"]) == ("Ready", False), lost
    assert "__1_0.distcp is named by .metadata but missing" in lost["message"]
    # step-4: config.json differs between the ranks: no Checkpoint, and the event names both.
    assert "parts-train.step-4" not in stored
    train_status = stored["parts-train"]["status"]
    assert sorted(train_status["outputCheckpoints"]) == ["parts-train.step-2", "parts-train.step-6"]
    assert "'config.json' differs between worker 0" in events and "and worker 1" in events

    # The second job read the union of step-6 from both volumes, with dcp.load on both ranks.
    resumed = json.loads((tmp_path / "resume.json").read_text())
    assert (resumed["source"], resumed["start"], resumed["world"]) == ("parts-train.step-6", 6, 2)
    assert resumed["weights_at_start"] == trained["weights"]
    nxt = stored["parts-resume.step-8"]["status"]
    assert (nxt["format"], nxt["complete"], nxt["fileCount"]) == ("torch-dcp", True, 4), nxt
    assert [p["name"] for p in nxt["parents"]] == ["parts-train.step-6"]


def test_per_worker_keeps_each_worker_s_output_its_own_checkpoints(tmp_path):
    train = parts_job("own", ["torchrun", "parts_ddp.py", "train", "2", "2", str(tmp_path / "own.json")],
                      output={"perWorker": True})
    report, stored, _ = run(tmp_path, [train])
    assert {j["name"]: j["phase"] for j in report["trainingJobs"]} == {"own": "Succeeded"}, report
    assert sorted(stored["own"]["status"]["outputCheckpoints"]) == ["own-worker-0.step-2", "own-worker-1.step-2"]
    rank0, rank1 = stored["own-worker-0.step-2"]["status"], stored["own-worker-1.step-2"]["status"]
    # Each worker's part alone: rank 0's lacks rank 1's shard, rank 1's has no .metadata.
    assert (rank0["fileCount"], rank0["complete"]) == (3, False)
    assert "__1_0.distcp is named by .metadata but missing" in rank0["message"]
    assert (rank1["fileCount"], rank1["complete"]) == (2, False)
    assert stored["own-worker-1.step-2"]["spec"]["source"]["trainingJob"]["directory"] == "worker-1/step-2"


def test_a_killed_rank_s_group_is_restarted_by_the_operator_and_both_ranks_load_the_union(tmp_path):
    """The operator's group restart with a volume per worker, end to end: rank 1 is killed (SIGKILL)
    right after step 4 is saved on both volumes (rank 0's `.metadata` and shard in its own, rank 1's
    shard in its own); the operator deletes the failed JobSet, its resume pod copies step 4's union
    into each volume, and the next attempt's ranks each `dcp.load` from CHECKPOINT_RESUME_PATH in
    their OWN volume and get the weights of step 4 back (those of a run that was not killed)."""
    kill = parts_job("vpw-kill", ["torchrun", "parts_ddp.py", "train", "8", "2", str(tmp_path / "kill.json")],
                     env={"KILL_AT": "4"}, backoffLimit=2)
    reference = parts_job("vpw-ref", ["torchrun", "parts_ddp.py", "train", "4", "2", str(tmp_path / "ref.json")])
    report, stored, events = run(tmp_path, [kill, reference])
    assert {j["name"]: j["phase"] for j in report["trainingJobs"]} == {"vpw-kill": "Succeeded",
                                                                      "vpw-ref": "Succeeded"}, report
    tj = stored["vpw-kill"]["status"]
    assert tj["restarts"] == 1, (tj, events)
    assert tj["workerFailure"]["attempt"] == 0 and tj["workerFailure"]["index"] == 1
    resume = tj["resume"]
    assert (resume["attempt"], resume["directory"], resume["step"]) == (1, "step-4", 4), resume
    final = json.loads((tmp_path / "kill.json").read_text())
    # resumed from the copy of step 4 in rank 0's own volume (.ckpt-resume/<digest>), at step 4
    assert (final["attempt"], final["start"], final["world"]) == (1, 4, 2), final
    assert final["source"] == resume["digest"].split(":")[1]
    at_step_4 = json.loads((tmp_path / "ref.json").read_text())["weights"]
    assert final["weights_at_start"] == at_step_4  # dcp.load of the union gave step 4's weights back
    # the copy was of the Checkpoint the snapshot made of step 4's union
    assert stored["vpw-kill.step-4"]["status"]["digest"] == resume["digest"]
    assert "attempt 2 resumes every worker from step-4 (step 4)" in events


@pytest.mark.parametrize("store", ["volume", "s3"])
def test_live_sealing_publishes_each_dcp_step_once_from_both_ranks_parts(tmp_path, store):
    """publish: Continuous with a volume per worker, real torch DCP from 2 ranks: each rank's sidecar
    seals its part (rank 0's by `.metadata`, rank 1's when its next step appears; its last one, with no
    sign of its end, is left writable at its pod's end and read by the union as it is), the
    union pod assembles each step while the job runs, and the end-of-job snapshot adds no second
    Checkpoint: one torch-dcp Checkpoint per step, complete over the union."""
    train = parts_job("parts-live", ["torchrun", "parts_ddp.py", "train", "6", "2", str(tmp_path / "train.json")],
                      output={"volumePerWorker": True, "publish": "Continuous"})
    report, stored, events = run(tmp_path, [train], store)
    assert {j["name"]: j["phase"] for j in report["trainingJobs"]} == {"parts-live": "Succeeded"}, report
    status = stored["parts-live"]["status"]
    assert sorted(status["outputCheckpoints"]) == ["parts-live.step-2", "parts-live.step-4", "parts-live.step-6"]
    checkpoints = sorted(name for name, o in stored.items() if o["kind"] == "Checkpoint")
    assert checkpoints == ["parts-live.step-2", "parts-live.step-4", "parts-live.step-6"]
    for step in (2, 4, 6):
        s = stored[f"parts-live.step-{step}"]["status"]
        assert (s["phase"], s["format"], s["complete"], s["step"], s["fileCount"]) == \
            ("Ready", "torch-dcp", True, step, 4), s
    # Whether a step's union starts before the pods end is a race here (the ranks train 6 steps in
    # seconds; a step's last sign comes with the next save): those that did are from both workers'
    # sealed parts, the rest the snapshot published, and none twice (above). Assembly while the
    # workers run is checked step by step in tests/integration/test_operator_live_parts.py.
    if (status.get("live") or {}).get("sealedCount"):
        assert "assembled while parts-live runs from the sealed parts of worker 0, 1" in events
