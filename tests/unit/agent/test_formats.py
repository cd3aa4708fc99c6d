"""Format, step and resumable detection from file names (pure functions of agent/formats.py)."""

from __future__ import annotations

import pytest

from checkpoint_operator.agent.formats import (
    detect_format,
    is_resumable,
    step_from_name,
    step_from_trainer_state,
    unfinished_marker,
)


@pytest.mark.parametrize("paths, expected", [
    # one case per format
    (["config.json", "model.safetensors", "tokenizer.json"], "huggingface"),
    (["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
      "pytorch_model.bin.index.json"], "huggingface"),
    (["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"], "huggingface"),
    (["adapter_config.json", "adapter_model.safetensors"], "huggingface"),
    (["model.safetensors"], "safetensors"),
    (["shard-0.safetensors", "shard-1.safetensors", "meta.json"], "safetensors"),
    (["latest", "global_step100/mp_rank_00_model_states.pt"], "deepspeed"),
    (["global_step100/zero_pp_rank_0_mp_rank_00_optim_states.pt"], "deepspeed"),
    (["zero_to_fp32.py", "mp_rank_00_model_states.pt"], "deepspeed"),
    (["_CHECKPOINT_METADATA", "default/_METADATA", "default/manifest.ocdbt"], "orbax"),
    (["commit_success.txt", "state/checkpoint"], "orbax"),
    (["params/layer0/.zarray", "params/layer0/0.0"], "orbax"),
    (["checkpoint_20000.mdl"], "cerebras"),
    (["model.pt", "notes.txt"], "torch"),
    (["weights.pth"], "torch"),
    (["epoch=3-step=500.ckpt"], "lightning"),
    (["model.bin", "vocab.txt"], "torch"),
    (["weights.npz"], "file"),
    (["a.txt", "b.txt"], "unknown"),
    ([], "unknown"),
    # precedence
    (["config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"], "huggingface"),
    (["config.json", "model.safetensors", "latest", "zero_to_fp32.py",
      "global_step500/mp_rank_00_model_states.pt"], "huggingface"),
    (["config.json", "global_step5/mp_rank_00_model_states.pt", "latest"], "deepspeed"),  # ZeRO-3: no weights file
    (["config.json", "sub/model.safetensors"], "safetensors"),  # the config is not beside the weights
    (["config.json", "notes.txt"], "unknown"),
    (["_CHECKPOINT_METADATA", "extra/weights.safetensors"], "orbax"),
    (["latest", "model.safetensors"], "deepspeed"),
    (["model.mdl", "model.pt"], "cerebras"),
    (["model.safetensors", "optimizer.pt"], "safetensors"),
    (["config.json"], "file"),
])
def test_detect_format(paths, expected):
    assert detect_format(paths) == expected


@pytest.mark.parametrize("paths, expected", [
    (["config.json", "model.safetensors", "optimizer.pt"], True),
    (["model.safetensors", "sub/optimizer.bin"], True),
    (["global_step10/zero_pp_rank_0_mp_rank_00_optim_states.pt"], True),
    (["bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"], True),
    (["_CHECKPOINT_METADATA", "opt_state/_METADATA"], True),
    (["state/optimizer/layer/.zarray"], True),
    (["state/optimizer_state/0"], True),
    (["config.json", "model.safetensors"], False),
    (["global_step10/mp_rank_00_model_states.pt"], False),
    (["optimizer.json"], False),
    (["my_optimizer/x"], False),
    ([], False),
])
def test_is_resumable(paths, expected):
    assert is_resumable(paths) is expected


@pytest.mark.parametrize("name, expected", [
    ("step-2000", 2000),
    ("step_2000", 2000),
    ("step2000", 2000),
    ("STEP-7", 7),
    ("checkpoint-2000", 2000),
    ("checkpoint_20000.mdl", 20000),
    ("checkpoint-500.pt", 500),
    ("global_step2000", 2000),
    ("ckpt-5", 5),
    ("iter_0001000", 1000),
    ("2000", 2000),
    ("0", 0),
    ("epoch=3-step=500.ckpt", 500),
    ("model-step-42.safetensors", 42),
    ("best", None),
    ("final-model", None),
    ("attempt-3", None),
    ("epoch-3", None),
    ("steps-3", None),
    ("step-20a", None),
    ("mystep-5", None),
    ("checkpoint", None),
    ("v2", None),
    ("", None),
])
def test_step_from_name(name, expected):
    assert step_from_name(name) == expected


@pytest.mark.parametrize("text, expected", [
    ('{"global_step": 1500, "epoch": 2.0}', 1500),
    ('{"global_step": 0}', 0),
    ('{"epoch": 2.0}', None),
    ('{"global_step": "12"}', None),
    ('{"global_step": true}', None),
    ('{"global_step": -1}', None),
    ("[1, 2]", None),
    ("not json", None),
])
def test_step_from_trainer_state(text, expected):
    assert step_from_trainer_state(text) == expected


@pytest.mark.parametrize("name, expected", [
    ("step-5.orbax-checkpoint-tmp-1712345", "tmp"),
    ("checkpoint-100.tmp", "tmp"),
    ("tmp_step_1", "tmp"),
    ("step-3-incomplete", "incomplete"),
    ("PARTIAL.step4", "PARTIAL"),
    ("ckpt.temp", "temp"),
    ("attempt-3", None),
    ("template", None),
    ("temperature-sweep", None),
    ("tmpdir", None),
    ("partially", None),
    ("step-100", None),
])
def test_unfinished_marker(name, expected):
    assert unfinished_marker(name) == expected
