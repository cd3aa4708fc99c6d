"""Multi-node training for real, through local mode (`checkpoint-operator local run`, process
runtime): 2-replica TrainingJobs run `torchrun` (gloo on CPU) from the PET_* variables the operator
gives, train a small model with DDP and save torch DCP checkpoints from both ranks into the shared
output; a second 2-replica job resumes with `dcp.load` from `latest`; a worker killed mid-run
restarts the group, which resumes from the latest sealed checkpoint (CHECKPOINT_RESUME_PATH); the
same with `engine: JobSet`; and a 2-process JAX job saves one Orbax checkpoint from both processes
(JAX's gloo CPU collectives, from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
Each job records what it saw in a file this test reads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DDP = textwrap.dedent('''
    """python ddp.py train TOTAL SAVE_EVERY REPORT: train to step TOTAL (resuming from
    CHECKPOINT_RESUME_PATH when it exists); python ddp.py resume MORE SAVE_EVERY REPORT: start from
    CHECKPOINT_INPUT_PATH (a DCP checkpoint) and train MORE steps. KILL_AT=N: in the first attempt
    rank 1 is killed (SIGKILL) right after step N is saved."""
    import json, os, signal, sys
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.nn.parallel import DistributedDataParallel as DDP

    mode, count, save_every, report = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo")  # MASTER_ADDR/PORT, RANK, WORLD_SIZE: set by torchrun from PET_*
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    out = os.environ["CHECKPOINT_OUTPUT_DIR"]

    def state(step):  # each rank also saves its own loader position: every rank writes a shard
        return {"model": model.state_dict(), "step": torch.tensor(step), f"loader_rank{rank}": torch.tensor([rank, step])}

    start, source = 0, None
    resume = os.environ.get("CHECKPOINT_RESUME_PATH")
    if mode == "resume":
        source = os.environ["CHECKPOINT_INPUT_PATH"]
    elif resume and os.path.exists(resume):
        source = os.path.realpath(resume)
    if source:
        loaded = state(0)
        dcp.load(loaded, checkpoint_id=source)
        model.load_state_dict(loaded["model"])
        start = int(loaded["step"])
    weights_at_start = sum(p.sum().item() for p in model.parameters())
    counter = f"{report}.attempts-{rank}"
    attempt = int(open(counter).read()) if os.path.exists(counter) else 0
    open(counter, "w").write(str(attempt + 1))
    last = count if mode == "train" else start + count
    for step in range(start + 1, last + 1):
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1000 * step + rank))
        loss = ddp(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % save_every == 0:
            dcp.save(state(step), checkpoint_id=os.path.join(out, f"step-{step}"))
            if rank == 1 and attempt == 0 and step == int(os.environ.get("KILL_AT", "0")):
                os.kill(os.getpid(), signal.SIGKILL)  # a worker dies mid-run
    if rank == 0:
        with open(report, "w") as f:
            json.dump({"start": start, "source": source and os.path.basename(source), "world": world,
                       "weights_at_start": weights_at_start, "attempt": attempt, "master": os.environ["MASTER_ADDR"],
                       "weights": sum(p.sum().item() for p in model.parameters())}, f)
    dist.barrier()
    dist.destroy_process_group()
    # torch's gloo threads sometimes abort the interpreter's exit under load ("terminate called
    # without an active exception", SIGABRT) after everything is saved: not what these tests judge.
    sys.stdout.flush()
    os._exit(0)
''')

JAX = textwrap.dedent('''
    """Two JAX processes (one per pod) save one sharded array with Orbax, each its own shards."""
    import json, os, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
    import numpy as np
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), P("d"))
    shape = (jax.device_count() * 4,)
    values = np.arange(shape[0], dtype=np.float32)
    weights = jax.make_array_from_callback(shape, sharding, lambda index: values[index])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(os.environ["CHECKPOINT_OUTPUT_DIR"], "step-1"), {"w": weights})
    checkpointer.wait_until_finished()
    total = float(jax.jit(lambda x: x.sum())(weights))  # a computation over both processes: both run it
    if jax.process_index() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"processes": jax.process_count(), "sum": total}, f)
    jax.distributed.shutdown()
''')


def trainer(command: list[str], env: dict | None = None) -> dict:
    container: dict = {"name": "trainer", "image": "pytorch/pytorch:2.13.0-cpu", "command": command}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return {"spec": {"containers": [container]}}


def job(name: str, command: list[str], *, env: dict | None = None, **spec) -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"replicas": 2, "template": trainer(command, env), **spec}}


def local_run(tmp_path: Path, jobs: list[dict]) -> tuple[dict, dict]:
    """Run the jobs in local mode; the report, and every Checkpoint's status as stored."""
    (tmp_path / "jobs.yaml").write_text("\n---\n".join(json.dumps(j) for j in jobs) + "\n")
    (tmp_path / "ddp.py").write_text(DDP)
    (tmp_path / "jax_save.py").write_text(JAX)
    state = tmp_path / "state"
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "local", "run", "-f", "jobs.yaml",
                           "--runtime", "process", "-o", "json", "--state-dir", str(state), "--timeout", "900"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=1000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    stored = [json.loads(line) for line in (state / "api-objects.jsonl").read_text().splitlines()[1:]]
    statuses = {o["object"]["metadata"]["name"]: o["object"] for o in stored
                if o["object"].get("kind") in ("Checkpoint", "TrainingJob")}
    return json.loads(proc.stdout), statuses


def dcp_files(checkpoint: dict) -> None:
    status = checkpoint["status"]
    assert (status["phase"], status["format"], status.get("complete")) == ("Ready", "torch-dcp", True), status
    # .metadata and a shard from each rank (__0_0.distcp, __1_0.distcp)
    assert status["fileCount"] == 3, status


@pytest.mark.parametrize("engine", ["Job", "JobSet"])
def test_ddp_saves_dcp_from_both_ranks_and_a_second_job_resumes_from_latest(tmp_path, engine):
    train = job("ddp-train", ["torchrun", "ddp.py", "train", "6", "2", str(tmp_path / "train.json")],
                engine=engine, backoffLimit=0)
    resume = job("ddp-resume", ["torchrun", "ddp.py", "resume", "2", "2", str(tmp_path / "resume.json")],
                 engine=engine, backoffLimit=0, checkpoints=[{"fromTrainingJob": "ddp-train", "select": "latest"}])
    report, stored = local_run(tmp_path, [train, resume])
    phases = {j["name"]: j["phase"] for j in report["trainingJobs"]}
    assert phases == {"ddp-train": "Succeeded", "ddp-resume": "Succeeded"}, report
    trained = json.loads((tmp_path / "train.json").read_text())
    assert (trained["world"], trained["master"], trained["start"]) == (2, "127.0.0.1", 0)
    for step in (2, 4, 6):
        dcp_files(stored[f"ddp-train.step-{step}"])
        assert stored[f"ddp-train.step-{step}"]["status"]["step"] == step
    resumed = json.loads((tmp_path / "resume.json").read_text())
    assert (resumed["source"], resumed["start"], resumed["world"]) == ("ddp-train.step-6", 6, 2)
    assert resumed["weights_at_start"] == trained["weights"]  # dcp.load gave the trained weights back
    dcp_files(stored["ddp-resume.step-8"])
    assert [p["name"] for p in stored["ddp-resume.step-8"]["status"]["parents"]] == ["ddp-train.step-6"]
    assert stored["ddp-train"]["status"]["jobName"] == "ddp-train"


@pytest.mark.parametrize("engine", ["Job", "JobSet"])
def test_a_killed_worker_restarts_the_group_which_resumes_from_the_latest(tmp_path, engine):
    train = job("ddp-kill", ["torchrun", "ddp.py", "train", "8", "2", str(tmp_path / "kill.json")], env={
        "KILL_AT": "4"}, engine=engine, backoffLimit=2, output={"publish": "Continuous"})
    report, stored = local_run(tmp_path, [train])
    tj = stored["ddp-kill"]["status"]
    assert tj["phase"] == "Succeeded", tj
    assert tj["restarts"] == 1 and tj["workerFailure"]["attempt"] == 0 and tj["workerFailure"]["index"] == 1
    final = json.loads((tmp_path / "kill.json").read_text())
    assert (final["attempt"], final["source"], final["start"]) == (1, "step-4", 4)  # resumed from the latest
    assert sorted(tj["outputCheckpoints"]) == [f"ddp-kill.step-{s}" for s in (2, 4, 6, 8)]
    for step in (2, 4, 6, 8):
        dcp_files(stored[f"ddp-kill.step-{step}"])


def test_two_jax_processes_save_one_orbax_checkpoint(tmp_path):
    jax_job = job("jax-save", ["python", "jax_save.py", str(tmp_path / "jax.json")],
                  env={"JAX_PLATFORMS": "cpu"}, backoffLimit=0)
    report, stored = local_run(tmp_path, [jax_job])
    saved = json.loads((tmp_path / "jax.json").read_text())
    assert saved == {"processes": 2, "sum": 28.0}
    status = stored["jax-save.step-1"]["status"]
    assert (status["phase"], status["format"], status.get("complete")) == ("Ready", "orbax", True), status
