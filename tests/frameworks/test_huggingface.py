"""Hugging Face Trainer: checkpoint-5/10/15 + the root final model; a save killed mid-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import torch
from transformers import GPT2LMHeadModel, Trainer, TrainerCallback

from frameworks_support import agent_scan, materialize, summary

TRAIN = textwrap.dedent('''
    import os, sys, time, torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    class Tokens(torch.utils.data.Dataset):
        def __len__(self): return 64
        def __getitem__(self, i):
            x = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": x, "labels": x}

    def model():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32,
                                           bos_token_id=0, eos_token_id=0))

    def args(out, max_steps):
        return TrainingArguments(out, max_steps=max_steps, save_steps=5, per_device_train_batch_size=4,
                                 logging_steps=5, report_to="none", use_cpu=True, dataloader_num_workers=0)
''')

# Stalls while writing checkpoint-10/optimizer.pt: half the bytes are on disk, then the
# process waits to be killed, as a node dies in the middle of a save.
STALL = textwrap.dedent('''
    class StallingTrainer(Trainer):
        def _save_optimizer_and_scheduler(self, output_dir):
            if self.state.global_step != 10:
                return super()._save_optimizer_and_scheduler(output_dir)
            import io
            buffer = io.BytesIO()
            torch.save(self.optimizer.state_dict(), buffer)
            data = buffer.getvalue()
            with open(os.path.join(output_dir, "optimizer.pt"), "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                open(sys.argv[2], "w").close()
                time.sleep(600)

    StallingTrainer(model=model(), args=args(sys.argv[1], 15), train_dataset=Tokens()).train()
''')


def _namespace() -> dict:
    ns: dict = {}
    exec(TRAIN, ns)  # the same definitions the subprocess uses
    return ns


class _CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def test_trainer_checkpoints_final_model_and_resume(tmp_path):
    ns = _namespace()
    out = tmp_path / "out"
    trainer = Trainer(model=ns["model"](), args=ns["args"](str(out), 15), train_dataset=ns["Tokens"]())
    trainer.train()
    trainer.save_model()  # the final model at the root of the output

    found = agent_scan(out)
    assert [p for p in found if p != "__skipped__"] == [".", "checkpoint-10", "checkpoint-15", "checkpoint-5"]
    for step in (5, 10, 15):
        m = found[f"checkpoint-{step}"]
        assert summary(m) == ("huggingface", step, True, True)
        assert "trainer_state.json" in m["completeReason"]
    assert summary(found["."]) == ("huggingface", None, False, True)

    # A second job resumes from checkpoint-15 as mounted (only its manifest's files).
    mounted = materialize(found["checkpoint-15"], out / "checkpoint-15", tmp_path / "input" / "ckpt")
    counter = _CountSteps()
    second = Trainer(model=ns["model"](), args=ns["args"](str(tmp_path / "out2"), 20),
                     train_dataset=ns["Tokens"](), callbacks=[counter])
    second.train(resume_from_checkpoint=str(mounted))
    assert (second.state.global_step, counter.steps) == (20, 5)

    final = materialize(found["."], out, tmp_path / "input" / "final")
    loaded = GPT2LMHeadModel.from_pretrained(final)
    assert torch.equal(loaded.lm_head.weight, trainer.model.lm_head.weight.detach().cpu())


def test_trainer_killed_while_saving_leaves_an_incomplete_checkpoint(tmp_path):
    out, saving = tmp_path / "out", tmp_path / "saving"
    script = tmp_path / "train.py"
    script.write_text(TRAIN + STALL)
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(saving)], env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not saving.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the training never reached the save of checkpoint-10"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()

    found = agent_scan(out)
    assert summary(found["checkpoint-5"]) == ("huggingface", 5, True, True)
    broken = found["checkpoint-10"]
    assert (broken["format"], broken["step"], broken["complete"]) == ("huggingface", 10, False)
    assert broken["completeReason"] == "missing trainer_state.json (a Trainer checkpoint writes it last)"
    assert "checkpoint-15" not in found


def test_sharded_save_pretrained_needs_every_shard_its_index_names(tmp_path):
    model = _namespace()["model"]()
    out = tmp_path / "out"
    model.save_pretrained(out / "sharded", max_shard_size="5KB")
    shards = sorted(p.name for p in (out / "sharded").glob("model-*.safetensors"))
    assert len(shards) >= 2 and (out / "sharded" / "model.safetensors.index.json").exists()
    model.save_pretrained(out / "broken", max_shard_size="5KB")
    (out / "broken" / shards[-1]).unlink()

    found = agent_scan(out)
    assert summary(found["sharded"]) == ("huggingface", None, False, True)
    assert (found["broken"]["complete"], found["broken"]["completeReason"]) == (
        False, f"model.safetensors.index.json names {shards[-1]}, which is missing")
    loaded = GPT2LMHeadModel.from_pretrained(materialize(found["sharded"], out / "sharded", tmp_path / "in" / "s"))
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)
