"""What a checkpoint is, from the names of its files: format, step, resumable.

Pure functions over the checkpoint's relative, '/'-separated file paths (and, for the step,
its name or the text of `trainer_state.json`); `scan` does the reading.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from typing import Iterable, Optional, Sequence

FORMATS = ("huggingface", "safetensors", "torch", "deepspeed", "orbax", "cerebras", "file", "unknown")

# Files a Transformers/PEFT model directory is loaded from (`from_pretrained`).
_HF_CONFIGS = {"config.json", "adapter_config.json"}
_HF_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json",
               "adapter_model.bin", "tf_model*.h5", "flax_model*.msgpack")
_DEEPSPEED_FILES = ("*_model_states.pt", "*optim_states.pt", "zero_to_fp32.py")
_ORBAX_MARKERS = {"_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "commit_success.txt", ".zarray"}
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

_GLOBAL_STEP_DIR = re.compile(r"^global_step\d+$")
_OPTIMIZER_FILES = {"optimizer.pt", "optimizer.bin"}
# Directories in which Orbax/Flax/T5X keep optimizer state.
_OPTIMIZER_DIRS = {"opt_state", "optimizer", "optimizer_state"}


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _dirs(path: str) -> list[str]:
    return path.split("/")[:-1]


def _any_name(paths: Iterable[str], patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(_basename(p), pat) for p in paths for pat in patterns)


def is_huggingface(paths: Sequence[str]) -> bool:
    root = [p for p in paths if "/" not in p]
    return any(p in _HF_CONFIGS for p in root) and _any_name(root, _HF_WEIGHTS)


def is_deepspeed(paths: Sequence[str]) -> bool:
    return ("latest" in paths
            or any(_GLOBAL_STEP_DIR.match(d) for p in paths for d in _dirs(p))
            or _any_name(paths, _DEEPSPEED_FILES))


def is_orbax(paths: Sequence[str]) -> bool:
    return any(_basename(p) in _ORBAX_MARKERS for p in paths)


def detect_format(paths: Sequence[str]) -> str:
    """The format of a checkpoint made of these files (paths relative to its root).

    The first rule that matches wins, most specific first:
      1. huggingface: `config.json` (or PEFT's `adapter_config.json`) at the root with model
         weights at the root (`*.safetensors`, `*.safetensors.index.json`, `pytorch_model*.bin`...).
         Wins over everything: a Trainer checkpoint also holds `optimizer.pt`, and with
         DeepSpeed also `global_step*/` and `latest`, yet it loads with `from_pretrained`.
      2. deepspeed: a root `latest` file, a `global_step<N>/` directory, `*_model_states.pt`,
         `*optim_states.pt` or `zero_to_fp32.py`.
      3. orbax: `_CHECKPOINT_METADATA`, `_METADATA`, `manifest.ocdbt`, `commit_success.txt`,
         or zarr arrays (`.zarray`) anywhere.
      4. cerebras: any `*.mdl`.
      5. safetensors: any `*.safetensors` (no Transformers config beside it).
      6. torch: any `*.pt`, `*.pth`, `*.bin`, `*.ckpt`.
      7. file: exactly one file, of none of the formats above.
      8. unknown.
    Framework layouts (2-4) come before bare weight suffixes (5-6) because their directories
    also contain such files (DeepSpeed's shards are `.pt`).
    """
    if is_huggingface(paths):
        return "huggingface"
    if is_deepspeed(paths):
        return "deepspeed"
    if is_orbax(paths):
        return "orbax"
    names = [_basename(p).lower() for p in paths]
    if any(n.endswith(".mdl") for n in names):
        return "cerebras"
    if any(n.endswith(".safetensors") for n in names):
        return "safetensors"
    if any(n.endswith(_TORCH_SUFFIXES) for n in names):
        return "torch"
    if len(paths) == 1:
        return "file"
    return "unknown"


def is_resumable(paths: Sequence[str]) -> bool:
    """True when optimizer state is present, so training can resume rather than only restart:
    `optimizer.pt`/`optimizer.bin` at any depth (Transformers, Accelerate), DeepSpeed
    `*optim_states*` shards, or an Orbax/Flax directory named opt_state/optimizer/optimizer_state."""
    for p in paths:
        name = _basename(p)
        if name in _OPTIMIZER_FILES or "optim_states" in name:
            return True
        if any(d in _OPTIMIZER_DIRS for d in _dirs(p)):
            return True
    return False


# `step-2000`, `step_2000`, `step2000`, `checkpoint-2000`, `checkpoint_20000.mdl`, `ckpt-5`,
# `global_step2000`, `iter_0001000` (Megatron), `epoch=3-step=500.ckpt` (Lightning),
# `model-step-2000.pt`: a keyword at the start or after a separator, then the number, then
# the end or a separator (so `step-20a` or `steps-3` give nothing).
_STEP_IN_NAME = re.compile(
    r"(?:^|[._=-])(?:global_step|step|checkpoint|ckpt|iter|iteration)[._=-]?(\d+)(?=$|[._=-])", re.IGNORECASE)
# Orbax's CheckpointManager names each checkpoint directory by its bare step: `2000/`.
_BARE_STEP = re.compile(r"^\d+$")


def step_from_name(name: str) -> Optional[int]:
    """The training step a checkpoint's name carries, or None."""
    if _BARE_STEP.match(name):
        return int(name)
    match = _STEP_IN_NAME.search(name)
    return int(match.group(1)) if match else None


def step_from_trainer_state(text: str) -> Optional[int]:
    """`global_step` of a Transformers `trainer_state.json`, or None when absent or malformed."""
    try:
        value = json.loads(text).get("global_step")
    except (ValueError, AttributeError):
        return None
    # bool is an int in Python; a step is a non-negative integer.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


# A whole token, so `attempt-3`, `template`, `temperature` stay; `ckpt.tmp`, `x-incomplete`,
# `step-5.orbax-checkpoint-tmp-1712` go.
_UNFINISHED = re.compile(r"(?:^|[._-])(tmp|temp|incomplete|partial)(?:[._-]|$)", re.IGNORECASE)


def unfinished_marker(name: str) -> Optional[str]:
    """The tmp/temp/incomplete/partial token in a name, which marks a checkpoint still being written."""
    match = _UNFINISHED.search(name)
    return match.group(1) if match else None
