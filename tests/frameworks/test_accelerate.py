"""Accelerate save_state: an explicit directory, and automatic naming (checkpoints/checkpoint_N)."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from checkpoint_operator.logic.naming import checkpoint_name
from frameworks_support import agent_scan, materialize, summary


def _prepared(accelerator: Accelerator):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    return accelerator.prepare(model, optimizer, scheduler)


def _train_step(accelerator, model, optimizer, scheduler):
    accelerator.backward(model(torch.randn(3, 4)).sum())
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_automatic_naming_makes_one_checkpoint_per_checkpoint_n(tmp_path):
    out = tmp_path / "out"
    accelerator = Accelerator(cpu=True, project_config=ProjectConfiguration(
        project_dir=str(out), automatic_checkpoint_naming=True, total_limit=5))
    model, optimizer, scheduler = _prepared(accelerator)
    for _ in range(3):
        _train_step(accelerator, model, optimizer, scheduler)
        accelerator.save_state()

    found = agent_scan(out)
    paths = [p for p in found if p != "__skipped__"]
    assert paths == ["checkpoints/checkpoint_0", "checkpoints/checkpoint_1", "checkpoints/checkpoint_2"]
    for n, path in enumerate(paths):
        assert summary(found[path]) == ("safetensors", n, True, True)
        assert "random_states_0.pkl" in found[path]["completeReason"]
    names = [checkpoint_name("job", p) for p in paths]
    assert all(name.startswith(f"job.checkpoints-checkpoint-{n}.") for n, name in enumerate(names))
    assert len(set(names)) == len(paths)

    mounted = materialize(found[paths[2]], out / paths[2], tmp_path / "input" / "ckpt")
    second = Accelerator(cpu=True)
    model2, optimizer2, scheduler2 = _prepared(second)
    second.load_state(str(mounted))
    assert torch.equal(model2.weight, model.weight)
    assert scheduler2.state_dict()["last_epoch"] == 3


def test_explicit_directory(tmp_path):
    out = tmp_path / "out"
    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = _prepared(accelerator)
    _train_step(accelerator, model, optimizer, scheduler)
    accelerator.save_state(str(out / "step-1"))
    _train_step(accelerator, model, optimizer, scheduler)
    accelerator.save_state(str(out / "step-2"))
    (out / "step-3").mkdir()  # a save killed before its last file: weights and optimizer only
    for name in ("model.safetensors", "optimizer.bin"):
        (out / "step-3" / name).write_bytes((out / "step-2" / name).read_bytes())

    found = agent_scan(out)
    assert summary(found["step-1"]) == ("safetensors", 1, True, True)
    assert summary(found["step-2"]) == ("safetensors", 2, True, True)
    broken = found["step-3"]
    assert (broken["complete"], broken["completeReason"]) == (
        False, "no random_states_0.pkl (Accelerate's save_state writes it after the model, optimizer and scheduler)")
    second = Accelerator(cpu=True)
    model2, _, _ = _prepared(second)
    second.load_state(str(materialize(found["step-2"], out / "step-2", tmp_path / "input" / "s2")))
    assert torch.equal(model2.weight, model.weight)
