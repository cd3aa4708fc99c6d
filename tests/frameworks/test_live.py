"""Live sealing of what the real writers write: the real sidecar (`checkpoint-operator agent watch`,
a process) watches while a Transformers Trainer, torch DCP and an Orbax CheckpointManager save;
after each save the writer waits until the sidecar has sealed it (so each is sealed while
training runs, by its format's own rule, not at the end), then trains on. Then a second job's
code resumes from the sealed directories, and local mode runs a producer with publish:
Continuous and a consumer that resumes from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path


from frameworks_support import agent_scan

WAIT_FOR_SEAL = textwrap.dedent('''
    import json, os, time
    def wait_sealed(log, path, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in open(log).read().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("kind") == "sealed" and event["checkpoint"]["path"] == path:
                    return
            time.sleep(0.05)
        raise SystemExit(f"{path} was never sealed")
''')


class Sidecar:
    """The real `agent watch` on OUT, its lines in a file."""

    def __init__(self, out: Path, log: Path):
        self.log = log
        self.process = subprocess.Popen([sys.executable, "-m", "checkpoint_operator", "agent", "watch", str(out)],
                                        stdout=open(log, "w"), stderr=subprocess.PIPE, text=True)

    def stop(self) -> dict[str, dict]:
        """SIGTERM (the training containers are done), then the sealed checkpoints by path."""
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=120)
        assert self.process.returncode == 0, err
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return {e["checkpoint"]["path"]: e["checkpoint"] for e in lines if e.get("kind") == "sealed"}


def run(script: str, *args: str, timeout: int = 600) -> None:
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def check_against_scan(out: Path, sealed: dict[str, dict]) -> None:
    """The sealed manifests are exactly what the end-of-job scan finds (same digests)."""
    scanned = agent_scan(out)
    for path, line in sealed.items():
        assert scanned[path]["digest"] == line["digest"], path
        assert (scanned[path]["format"], scanned[path]["step"], scanned[path]["resumable"]) == \
            (line["format"], line["step"], line["resumable"])


HF = WAIT_FOR_SEAL + textwrap.dedent('''
    import sys, torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    class Tokens(torch.utils.data.Dataset):
        def __len__(self): return 64
        def __getitem__(self, i):
            x = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": x, "labels": x}

    class WaitForTheSidecar(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            wait_sealed(sys.argv[2], f"checkpoint-{state.global_step}")

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    out, _, max_steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    args = TrainingArguments(out, max_steps=max_steps, save_steps=5, per_device_train_batch_size=4,
                             logging_steps=5, eval_strategy="steps", eval_steps=5, report_to="none", use_cpu=True,
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), eval_dataset=Tokens(),
                      callbacks=[WaitForTheSidecar()] if resume == "-" else [])
    trainer.train(resume_from_checkpoint=None if resume == "-" else resume)
    print("global_step", trainer.state.global_step)
''')


def test_trainer_checkpoints_are_sealed_as_they_are_saved_and_resume(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    sidecar = Sidecar(out, tmp_path / "sidecar.log")
    try:
        run(HF, str(out), str(sidecar.log), "15", "-")
    finally:
        sealed = sidecar.stop()
    assert set(sealed) == {"checkpoint-5", "checkpoint-10", "checkpoint-15"}
    for step in (5, 10, 15):
        line = sealed[f"checkpoint-{step}"]
        assert (line["format"], line["step"], line["resumable"], line["complete"]) == ("huggingface", step, True, True)
        assert line["sealReason"].startswith("complete: trainer_state.json"), line["sealReason"]
        assert "eval_loss" in line["metrics"] and "loss" in line["metrics"]
        assert os.stat(out / f"checkpoint-{step}" / "model.safetensors").st_mode & 0o222 == 0
    check_against_scan(out, sealed)
    assert os.readlink(out / ".ckpt-live" / "resume") == os.path.join("..", "checkpoint-15")
    # A second job resumes from the sealed (read-only) checkpoint, through CHECKPOINT_RESUME_PATH's link.
    resumed = tmp_path / "resumed"
    run(HF, str(resumed), "-", "20", str(out / ".ckpt-live" / "resume"))
    state = json.loads((resumed / "checkpoint-20" / "trainer_state.json").read_text())
    assert state["global_step"] == 20 and [h["step"] for h in state["log_history"] if "loss" in h][0] == 5


DCP = WAIT_FOR_SEAL + textwrap.dedent('''
    import sys, torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    out, log, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.Adam(model.parameters())
    if mode == "save":
        for step in (1, 2, 3):
            model(torch.randn(2, 8)).sum().backward()
            opt.step()
            msd, osd = get_state_dict(model, opt)
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=f"{out}/step-{step}")
            wait_sealed(log, f"step-{step}")
        torch.save(model.state_dict(), f"{log}.expected")
    else:
        fresh = torch.nn.Linear(8, 4)
        fresh_opt = torch.optim.Adam(fresh.parameters())
        msd, osd = get_state_dict(fresh, fresh_opt)
        state = {"model": msd, "optim": osd}
        dcp.load(state, checkpoint_id=mode)
        set_state_dict(fresh, fresh_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        expected = torch.load(f"{log}.expected")
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in expected.items())
        assert fresh_opt.state_dict()["state"], "optimizer state restored"
''')


def test_torch_dcp_saves_are_sealed_by_their_metadata_and_load(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    sidecar = Sidecar(out, tmp_path / "sidecar.log")
    try:
        run(DCP, str(out), str(sidecar.log), "save")
    finally:
        sealed = sidecar.stop()
    assert set(sealed) == {"step-1", "step-2", "step-3"}
    for step in (1, 2, 3):
        line = sealed[f"step-{step}"]
        assert (line["format"], line["step"], line["resumable"], line["complete"]) == ("torch-dcp", step, True, True)
        assert ".metadata" in line["sealReason"], line["sealReason"]
    check_against_scan(out, sealed)
    run(DCP, str(out), str(sidecar.log), str(out / "step-3"))


ORBAX = WAIT_FOR_SEAL + textwrap.dedent('''
    import sys
    import jax.numpy as jnp
    import optax
    import orbax.checkpoint as ocp
    out, log, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    params = {"w": jnp.arange(8.0), "b": jnp.ones(2)}
    tx = optax.adam(1e-3)
    if mode == "save":
        manager = ocp.CheckpointManager(f"{out}/orbax")
        state = {"params": params, "opt_state": tx.init(params)}
        for step in (1, 2, 3):
            state["params"] = {k: v + step for k, v in params.items()}
            manager.save(step, args=ocp.args.StandardSave(state))
            manager.wait_until_finished()
            wait_sealed(log, f"orbax/{step}")
        manager.close()
    else:
        abstract = {"params": params, "opt_state": tx.init(params)}
        restored = ocp.StandardCheckpointer().restore(f"{mode}/default", abstract)
        assert float(restored["params"]["w"][0]) == 3.0
''')


def test_orbax_checkpoint_manager_steps_are_sealed_and_restore(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    sidecar = Sidecar(out, tmp_path / "sidecar.log")
    try:
        run(ORBAX, str(out), str(sidecar.log), "save")
    finally:
        sealed = sidecar.stop()
    assert set(sealed) == {"orbax/1", "orbax/2", "orbax/3"}
    for step in (1, 2, 3):
        line = sealed[f"orbax/{step}"]
        assert (line["format"], line["step"], line["resumable"], line["complete"]) == ("orbax", step, True, True)
        assert line["sealReason"].startswith(("complete: Orbax commit marker", "renamed into place")), line
    check_against_scan(out, sealed)
    run(ORBAX, str(out), str(sidecar.log), str(out / "orbax" / "3"))


# --- local mode: a producer publishing continuously, a consumer resuming from it ---------------------

PRODUCER = textwrap.dedent('''
    apiVersion: ckpt.dev/v1alpha1
    kind: TrainingJob
    metadata: {name: hf-live}
    spec:
      output: {publish: Continuous}
      template:
        spec:
          containers:
            - name: trainer
              image: trainer
              command: ["python", "train_hf.py", "10"]
    ---
    apiVersion: ckpt.dev/v1alpha1
    kind: TrainingJob
    metadata: {name: hf-resume}
    spec:
      checkpoints: [{fromTrainingJob: hf-live, select: latestResumable, wait: Finished}]
      template:
        spec:
          containers:
            - name: trainer
              image: trainer
              command: ["python", "train_hf.py", "15"]
''')

TRAIN_HF = textwrap.dedent('''
    import os, sys, torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    class Tokens(torch.utils.data.Dataset):
        def __len__(self): return 64
        def __getitem__(self, i):
            x = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": x, "labels": x}

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    args = TrainingArguments(os.environ["CHECKPOINT_OUTPUT_DIR"], max_steps=int(sys.argv[1]), save_steps=5,
                             per_device_train_batch_size=4, logging_steps=5, report_to="none", use_cpu=True,
                             dataloader_num_workers=0)
    resume = os.environ.get("CHECKPOINT_INPUT_PATH") or (os.environ.get("CHECKPOINT_RESUME_PATH") if
                                                        os.path.exists(os.environ.get("CHECKPOINT_RESUME_PATH", "-")) else None)
    Trainer(model=model, args=args, train_dataset=Tokens()).train(resume_from_checkpoint=resume)
''')


def test_local_mode_a_second_job_resumes_from_a_continuously_published_trainer_run(tmp_path):
    (tmp_path / "jobs.yaml").write_text(PRODUCER)
    (tmp_path / "train_hf.py").write_text(TRAIN_HF)
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "local", "run", "-f", "jobs.yaml",
                           "--runtime", "process", "-o", "json", "--state-dir", str(tmp_path / "state")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(proc.stdout)
    jobs = {j["name"]: j for j in report["trainingJobs"]}
    checkpoints = {c["name"]: c for c in report["checkpoints"]}
    assert sorted(jobs["hf-live"]["outputCheckpoints"]) == ["hf-live.checkpoint-10", "hf-live.checkpoint-5"]
    assert (checkpoints["hf-live.checkpoint-10"]["format"], checkpoints["hf-live.checkpoint-10"]["resumable"]) == (
        "huggingface", True)
    assert [i["name"] for i in jobs["hf-resume"]["inputs"]] == ["hf-live.checkpoint-10"]
    resumed = checkpoints["hf-resume.checkpoint-15"]
    assert (resumed["format"], resumed["step"], resumed["resumable"]) == ("huggingface", 15, True)
    assert [p["name"] for p in resumed["parents"]] == ["hf-live.checkpoint-10"]
    # It resumed at step 10 (only checkpoint-15 is new), rather than training from scratch (5, 10, 15).
    assert sorted(c for c in checkpoints if c.startswith("hf-resume.")) == ["hf-resume.checkpoint-15"]
