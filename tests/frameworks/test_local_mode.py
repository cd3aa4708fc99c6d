"""The issue's user, through the real local mode (`checkpoint-operator local run`, process runtime):
a Transformers Trainer job (publish: OnCompletion) writes checkpoint-5/10 and a root final model;
one consumer loads the final model (`select: final`, a Checkpoint of root files) with
`AutoModel.from_pretrained(CHECKPOINT_INPUT_PATH)`, another resumes from `select: latest`.
Each consumer checks, as it would in a pod, that CHECKPOINT_INPUT_DIR holds exactly the one
mounted checkpoint, and records what it saw in a file this test reads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

JOBS = textwrap.dedent('''
    apiVersion: ckpt.dev/v1alpha1
    kind: TrainingJob
    metadata: {name: hf-train}
    spec:
      output: {publish: OnCompletion}
      template:
        spec:
          containers:
            - {name: trainer, image: trainer, command: ["python", "hf.py", "train", "{seen}/train.json"], env: {env}}
    ---
    apiVersion: ckpt.dev/v1alpha1
    kind: TrainingJob
    metadata: {name: hf-load}
    spec:
      checkpoints: [{fromTrainingJob: hf-train, select: final}]
      output: {enabled: false}
      template:
        spec:
          containers:
            - {name: trainer, image: trainer, command: ["python", "hf.py", "load", "{seen}/load.json"], env: {env}}
    ---
    apiVersion: ckpt.dev/v1alpha1
    kind: TrainingJob
    metadata: {name: hf-resume}
    spec:
      checkpoints: [{fromTrainingJob: hf-train, select: latest}]
      template:
        spec:
          containers:
            - {name: trainer, image: trainer, command: ["python", "hf.py", "resume", "{seen}/resume.json"], env: {env}}
''')

# The pod's env is only what its spec says: the offline settings go there.
OFFLINE_ENV = [{"name": k, "value": "1"} for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")] + [
    {"name": "TOKENIZERS_PARALLELISM", "value": "false"}]

HF = textwrap.dedent('''
    import json, os, sys, torch
    from transformers import AutoModel, GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    class Tokens(torch.utils.data.Dataset):
        def __len__(self): return 64
        def __getitem__(self, i):
            x = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": x, "labels": x}

    class CountSteps(TrainerCallback):
        steps = 0
        def on_step_end(self, args, state, control, **kwargs):
            CountSteps.steps += 1

    def trainer(max_steps):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32,
                                           bos_token_id=0, eos_token_id=0))
        args = TrainingArguments(os.environ["CHECKPOINT_OUTPUT_DIR"], max_steps=max_steps, save_steps=5,
                                 per_device_train_batch_size=4, logging_steps=5, report_to="none", use_cpu=True,
                                 dataloader_num_workers=0)
        return Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[CountSteps()])

    def mounted():
        """What a pod shows: CHECKPOINT_INPUT_PATH is CHECKPOINT_INPUT_DIR's only entry."""
        input_dir, path = os.environ["CHECKPOINT_INPUT_DIR"], os.environ["CHECKPOINT_INPUT_PATH"]
        listing = sorted(os.listdir(input_dir))
        assert listing == [os.path.basename(path)] and os.path.dirname(path) == input_dir, (listing, path)
        return {"inputDir": listing, "inputPath": os.path.basename(path), "files": sorted(os.listdir(path))}

    mode, seen = sys.argv[1], sys.argv[2]
    if mode == "train":
        t = trainer(10)
        t.train()
        t.save_model(os.environ["CHECKPOINT_OUTPUT_DIR"])  # the root final model
        report = {"wte": t.model.transformer.wte.weight.sum().item()}
    elif mode == "load":
        report = mounted()
        model = AutoModel.from_pretrained(os.environ["CHECKPOINT_INPUT_PATH"])
        report.update(cls=type(model).__name__, wte=model.wte.weight.sum().item())
    else:
        report = mounted()
        t = trainer(15)
        t.train(resume_from_checkpoint=os.environ["CHECKPOINT_INPUT_PATH"])
        report.update(global_step=t.state.global_step, steps_run=CountSteps.steps)
    with open(seen, "w") as f:
        json.dump(report, f)
''')


def test_local_mode_loads_the_final_model_and_resumes_from_the_latest_checkpoint(tmp_path):
    seen = tmp_path / "seen"
    seen.mkdir()
    jobs = JOBS.replace("{seen}", str(seen)).replace("{env}", json.dumps(OFFLINE_ENV))
    (tmp_path / "jobs.yaml").write_text(jobs)
    (tmp_path / "hf.py").write_text(HF)
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "local", "run", "-f", "jobs.yaml",
                           "--runtime", "process", "-o", "json", "--state-dir", str(tmp_path / "state")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(proc.stdout)
    jobs = {j["name"]: j for j in report["trainingJobs"]}
    checkpoints = {c["name"]: c for c in report["checkpoints"]}
    assert {n: j["phase"] for n, j in jobs.items()} == {"hf-train": "Succeeded", "hf-load": "Succeeded",
                                                         "hf-resume": "Succeeded"}, jobs

    assert sorted(jobs["hf-train"]["outputCheckpoints"]) == [
        "hf-train", "hf-train.checkpoint-10", "hf-train.checkpoint-5"]
    summary = lambda name: (checkpoints[name]["phase"], checkpoints[name]["format"],  # noqa: E731
                            checkpoints[name]["step"], checkpoints[name]["resumable"])
    assert summary("hf-train.checkpoint-10") == ("Ready", "huggingface", 10, True)
    assert summary("hf-train") == ("Ready", "huggingface", None, False)
    trained = json.loads((seen / "train.json").read_text())

    # select: final mounts the root's files (single-file subPaths in a pod) as one directory.
    assert [i["name"] for i in jobs["hf-load"]["inputs"]] == ["hf-train"]
    loaded = json.loads((seen / "load.json").read_text())
    assert (loaded["inputDir"], loaded["inputPath"], loaded["cls"]) == (["hf-train"], "hf-train",
                                                                        "GPT2Model")
    # Exactly the Checkpoint's files: not the producer's whole volume with its checkpoint-N siblings.
    assert {"config.json", "model.safetensors"} <= set(loaded["files"])
    assert len(loaded["files"]) == checkpoints["hf-train"]["fileCount"], loaded["files"]
    assert loaded["wte"] == trained["wte"]  # the trained weights, not a fresh initialisation

    # select: latest is the highest step, never the root's final model; the Trainer resumes from it.
    assert [i["name"] for i in jobs["hf-resume"]["inputs"]] == ["hf-train.checkpoint-10"]
    resumed = json.loads((seen / "resume.json").read_text())
    assert (resumed["inputDir"], resumed["inputPath"]) == (["hf-train.checkpoint-10"], "hf-train.checkpoint-10")
    assert {"trainer_state.json", "optimizer.pt"} <= set(resumed["files"])
    assert len(resumed["files"]) == checkpoints["hf-train.checkpoint-10"]["fileCount"], resumed["files"]
    assert (resumed["global_step"], resumed["steps_run"]) == (15, 5)  # resumed at step 10, not from scratch
    assert jobs["hf-resume"]["outputCheckpoints"] == ["hf-resume.checkpoint-15"]
    assert summary("hf-resume.checkpoint-15") == ("Ready", "huggingface", 15, True)
    assert [p["name"] for p in checkpoints["hf-resume.checkpoint-15"]["parents"]] == ["hf-train.checkpoint-10"]
