"""What a checkpoint is: format, step, resumable and complete, from its files.

Two layers. The name rules are pure functions of the checkpoint's relative, '/'-separated file
paths (and its own name). `describe_checkpoint` adds what small metadata files say, read
through `safe_read` (bounded, no unpickling): the step in `trainer_state.json`, DeepSpeed's
`latest` or a torch pickle; optimizer keys in torch DCP `.metadata`, Orbax `_METADATA` or a
`torch.save` pickle; and the completeness verdict of `completeness`.

`RULES` is the one table: detection order, the readers each format uses, and the words of
the format table of docs/concepts.md (`format_table_markdown`, checked by a test).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

from checkpoint_operator.agent import completeness
from checkpoint_operator.agent import metadata as md
from checkpoint_operator.agent.completeness import Verdict
from checkpoint_operator.agent.metrics_files import checkpoint_metrics
from checkpoint_operator.agent.safe_read import CheckpointFiles, Unreadable, bounded_int, parse_json, quoted

# Files a Transformers/PEFT model directory is loaded from (`from_pretrained`).
_HF_CONFIGS = {"config.json", "adapter_config.json"}
_HF_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json",
               "adapter_model.bin", "tf_model*.h5", "flax_model*.msgpack")
_DEEPSPEED_FILES = ("*_model_states.pt", "*optim_states.pt", "zero_to_fp32.py")
_ORBAX_MARKERS = {"_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "commit_success.txt", ".zarray"}
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")

_GLOBAL_STEP_DIR = re.compile(r"^global_step\d+$")
_MEGATRON_ITER_DIR = re.compile(r"^iter_\d{7}$")
_OPTIMIZER_FILES = {"optimizer.pt", "optimizer.bin", "distrib_optim.pt"}
_OPTIMIZER_FILE = re.compile(r"^optimizer(_\d+)?\.(pt|bin)$")  # Accelerate: optimizer_1.bin for a second one
# Directories in which Orbax/Flax/T5X keep optimizer state.
_OPTIMIZER_DIRS = {"opt_state", "optimizer", "optimizer_state"}


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _dirs(path: str) -> list[str]:
    return path.split("/")[:-1]


def _any_name(paths: Iterable[str], patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(_basename(p), pat) for p in paths for pat in patterns)


def _suffix(paths: Sequence[str], *suffixes: str) -> bool:
    return any(p.lower().endswith(suffixes) for p in paths)


def is_huggingface(paths: Sequence[str], name: str = "") -> bool:
    root = [p for p in paths if "/" not in p]
    return any(p in _HF_CONFIGS for p in root) and _any_name(root, _HF_WEIGHTS)


def is_nemo(paths: Sequence[str], name: str = "") -> bool:
    root = {p for p in paths if "/" not in p}
    # NeMo 2: context/ (the model's config, io.json) and weights/ (a torch DCP checkpoint).
    nemo2 = any(p.startswith("context/") for p in paths) or any(
        p.startswith("weights/") and (p.endswith(".distcp") or p == "weights/.metadata") for p in paths)
    return _suffix(paths, ".nemo") or nemo2 or {"model_config.yaml", "model_weights.ckpt"} <= root


def is_deepspeed(paths: Sequence[str], name: str = "") -> bool:
    return ("latest" in paths or bool(_GLOBAL_STEP_DIR.match(name))
            or any(_GLOBAL_STEP_DIR.match(d) for p in paths for d in _dirs(p))
            or _any_name(paths, _DEEPSPEED_FILES))


def is_megatron(paths: Sequence[str], name: str = "") -> bool:
    return (md.MEGATRON_TRACKER in paths or bool(_MEGATRON_ITER_DIR.match(name))
            or any(_MEGATRON_ITER_DIR.match(d) for p in paths for d in _dirs(p))
            or any(_basename(p) == "model_optim_rng.pt" for p in paths))


def is_torch_dcp(paths: Sequence[str], name: str = "") -> bool:
    return _suffix(paths, ".distcp")


def is_orbax(paths: Sequence[str], name: str = "") -> bool:
    return any(_basename(p) in _ORBAX_MARKERS for p in paths)


def is_cerebras(paths: Sequence[str], name: str = "") -> bool:
    return _suffix(paths, ".mdl")


def is_gguf(paths: Sequence[str], name: str = "") -> bool:
    return _suffix(paths, ".gguf")


def is_keras(paths: Sequence[str], name: str = "") -> bool:
    return _suffix(paths, ".keras")


def is_safetensors(paths: Sequence[str], name: str = "") -> bool:
    return _suffix(paths, ".safetensors")


def is_lightning(paths: Sequence[str], name: str = "") -> bool:
    return _suffix(paths, ".ckpt")


def is_torch(paths: Sequence[str], name: str = "") -> bool:
    return _suffix(paths, *_TORCH_SUFFIXES)


def is_single_file(paths: Sequence[str], name: str = "") -> bool:
    return len(paths) == 1


def _always(paths: Sequence[str], name: str = "") -> bool:
    return True


# --- readers of the data, per format -------------------------------------------------------

def _torch_step(files: CheckpointFiles) -> Optional[int]:
    return md.step_from_torch_files(files, md.torch_files(files))


def _torch_resumable(files: CheckpointFiles) -> bool:
    return md.torch_files_resumable(files, md.torch_files(files))


def _megatron_rank_files(files: CheckpointFiles) -> list[str]:
    return [p for p in files.paths if _basename(p) == "model_optim_rng.pt" and files.is_zip(p)]


def _megatron_step(files: CheckpointFiles) -> Optional[int]:
    step = md.step_from_megatron(files)
    return step if step is not None else md.step_from_torch_files(files, _megatron_rank_files(files))


def _megatron_resumable(files: CheckpointFiles) -> bool:
    return md.dcp_resumable(files) or md.torch_files_resumable(files, _megatron_rank_files(files))


def _keras_resumable(files: CheckpointFiles) -> bool:
    return any(md.keras_compiled_with_optimizer(files, p) for p in files.paths if p.lower().endswith(".keras"))


def _lightning_or_torch(files: CheckpointFiles) -> str:
    """A `.ckpt` is Lightning's unless its pickle is readable and says nothing of Lightning."""
    ckpts = [p for p in md.torch_files(files) if p.lower().endswith(".ckpt")]
    pickles = [obj for _, obj in md.read_pickles(files, ckpts)]
    return "torch" if pickles and not any(md.is_lightning_pickle(o) for o in pickles) else "lightning"


@dataclass(frozen=True)
class FormatRule:
    """One format: how it is recognised (first match in RULES wins), where its step and optimizer
    state are read from beyond the names, how its completeness is decided, and those same
    decisions in words for the documentation's format table."""

    name: str
    matches: Callable[[Sequence[str], str], bool]
    detected_by: str
    step: str
    resumable: str
    complete: str
    step_from_data: Optional[Callable[[CheckpointFiles], Optional[int]]] = None
    resumable_from_data: Optional[Callable[[CheckpointFiles], bool]] = None
    completeness: Optional[Callable[[CheckpointFiles], Optional[Verdict]]] = None
    refine: Optional[Callable[[CheckpointFiles], str]] = None


_NAME_STEP = "name only"
_WEIGHTS = "the weight-file checks"
RULES: tuple[FormatRule, ...] = (
    FormatRule("huggingface", is_huggingface,
               "`config.json` or `adapter_config.json` at the root beside model weights ("
               + ", ".join(f"`{p}`" for p in _HF_WEIGHTS) + "); wins over all others",
               "name, else `trainer_state.json` `global_step`",
               "`optimizer.pt`/`optimizer.bin`",
               "`config.json` parses; every shard an `*.index.json` names is present; a Trainer checkpoint "
               "(`trainer_state.json`, or `checkpoint-N/` with `optimizer.pt`/`scheduler.pt`/`rng_state*.pth`/"
               "`training_args.bin`) needs a valid `trainer_state.json`, which the Trainer writes last; " + _WEIGHTS,
               step_from_data=md.step_from_trainer_state, completeness=completeness.huggingface),
    FormatRule("nemo", is_nemo,
               "a `*.nemo` file; NeMo 2 `context/` or a DCP `weights/`; `model_config.yaml` + `model_weights.ckpt`",
               _NAME_STEP + " (`step=N`)",
               "optimizer keys in `weights/.metadata` (torch DCP)",
               "a `.nemo` tar's members lie inside the file; NeMo 2: `weights/` and `context/` both present, "
               "the DCP rule for `weights/`",
               resumable_from_data=md.dcp_resumable, completeness=completeness.nemo),
    FormatRule("deepspeed", is_deepspeed,
               "a root `latest` file, a `global_stepN/` directory, `*_model_states.pt`, `*optim_states.pt` or "
               "`zero_to_fp32.py`",
               "name, else the `latest` tag (`global_stepN`)",
               "`*optim_states*` files",
               "`latest` (written after every rank saved) names a tag directory holding the model states of "
               "every model-parallel rank and the ZeRO optimizer states of every data-parallel rank; without "
               "`latest`, model states present; " + _WEIGHTS,
               step_from_data=md.step_from_deepspeed, completeness=completeness.deepspeed),
    FormatRule("megatron", is_megatron,
               "`latest_checkpointed_iteration.txt`, an `iter_NNNNNNN/` directory (or the checkpoint's own name), "
               "`model_optim_rng.pt`",
               "name, else `latest_checkpointed_iteration.txt`, else `iteration` in `model_optim_rng.pt`",
               "`distrib_optim.pt`; an `optimizer` key in `model_optim_rng.pt`; optimizer keys in `.metadata`",
               "the tracker file names an iteration directory holding `mp_rank_*/model_optim_rng.pt` or a "
               "torch DCP checkpoint (DCP rule); " + _WEIGHTS,
               step_from_data=_megatron_step, resumable_from_data=_megatron_resumable,
               completeness=completeness.megatron),
    FormatRule("torch-dcp", is_torch_dcp,
               "`*.distcp` files (torch.distributed.checkpoint)",
               _NAME_STEP,
               "keys in `.metadata` under an optimizer name (`optim.state.*`, `optimizer.*`) or holding "
               "`param_groups`, as `get_state_dict(model, optimizer)` saves them",
               "`.metadata` (renamed into place after all data) present and readable in each directory with "
               "`.distcp` files, and every file it names present and as long as it says",
               resumable_from_data=md.dcp_resumable, completeness=completeness.torch_dcp),
    FormatRule("orbax", is_orbax,
               "`_CHECKPOINT_METADATA`, `_METADATA`, `manifest.ocdbt`, `commit_success.txt` or `.zarray` anywhere",
               _NAME_STEP + " (CheckpointManager's bare `N/`)",
               "an `opt_state/`/`optimizer/` item, or optimizer keys (`opt_state`...) in an item's `_METADATA`",
               "`_CHECKPOINT_METADATA` records `commit_timestamp_nsecs` or `commit_success.txt` is present; "
               "nothing under an `*.orbax-checkpoint-tmp*` name; every item `_CHECKPOINT_METADATA` names is "
               "there; every `_METADATA` and `.zarray` parses; OCDBT items and each process's part have "
               "`manifest.ocdbt`; " + _WEIGHTS + " (OCDBT manifests and node files)",
               resumable_from_data=md.orbax_resumable, completeness=completeness.orbax),
    FormatRule("cerebras", is_cerebras, "any `*.mdl`", _NAME_STEP, "-",
               "no rule of its own; " + _WEIGHTS + " (an HDF5 `.mdl`; other content: not checked)"),
    FormatRule("gguf", is_gguf, "any `*.gguf`", _NAME_STEP, "-",
               "magic, version, key-value and tensor tables parse within the file (at most 4 dimensions, "
               "offsets aligned), and the file holds all the tensor data"),
    FormatRule("keras", is_keras, "any `*.keras`", _NAME_STEP,
               "the archive's `config.json` has a `compile_config` optimizer (Keras then saves its variables)",
               "the zip's central directory is whole and it holds `config.json`, which parses, and "
               "`model.weights.h5`",
               resumable_from_data=_keras_resumable, completeness=completeness.keras),
    FormatRule("safetensors", is_safetensors, "any `*.safetensors` (no Transformers config beside it)",
               _NAME_STEP, "`optimizer*.bin` (Accelerate)",
               _WEIGHTS + "; Accelerate `save_state` directories need `random_states_0.pkl`, written last"),
    FormatRule("lightning", is_lightning,
               "any `*.ckpt`; a readable one whose pickle lacks `pytorch-lightning_version` is torch",
               "name, else `global_step` in the pickle",
               "`optimizer_states` (non-empty) in the pickle",
               _WEIGHTS,
               step_from_data=_torch_step, resumable_from_data=_torch_resumable, refine=_lightning_or_torch),
    FormatRule("torch", is_torch, "any `*.pt`, `*.pth`, `*.bin`",
               "name, else `step`/`global_step`/`iteration` in the pickle of a root file",
               "an optimizer key (`optimizer`, `optim`, `optimizer_state_dict`...) or an `Optimizer.state_dict()` "
               "(`state` + `param_groups`) in the pickle of a root file (read with pickletools, never unpickled)",
               _WEIGHTS + "; Accelerate as for safetensors",
               step_from_data=_torch_step, resumable_from_data=_torch_resumable),
    FormatRule("file", is_single_file, "exactly one file, of none of the formats above", _NAME_STEP, "-",
               "none: not checked (`complete` absent)"),
    FormatRule("unknown", _always, "anything else", _NAME_STEP, "-",
               "no rule of its own; " + _WEIGHTS + "; with no weight file, not checked (`complete` absent)"),
)
FORMATS = tuple(r.name for r in RULES)
_BY_NAME = {r.name: r for r in RULES}


def rule_for(paths: Sequence[str], name: str = "") -> FormatRule:
    return next(r for r in RULES if r.matches(paths, name))


def detect_format(paths: Sequence[str], name: str = "") -> str:
    """The format by file names alone (the first rule of RULES that matches). Framework layouts
    come before bare weight suffixes because their directories also contain such files
    (DeepSpeed's shards are `.pt`)."""
    return rule_for(paths, name).name


def is_resumable(paths: Sequence[str]) -> bool:
    """True when file names show optimizer state: `optimizer.pt`/`optimizer.bin`/`optimizer_N.bin`
    at any depth (Transformers, Accelerate), Megatron `distrib_optim.pt`, DeepSpeed
    `*optim_states*` shards, or an Orbax/Flax directory named opt_state/optimizer/optimizer_state."""
    for p in paths:
        name = _basename(p)
        if name in _OPTIMIZER_FILES or _OPTIMIZER_FILE.match(name) or "optim_states" in name:
            return True
        if any(d in _OPTIMIZER_DIRS for d in _dirs(p)):
            return True
    return False


@dataclass(frozen=True)
class Description:
    format: str
    step: Optional[int]
    resumable: bool
    complete: Optional[bool]
    completeReason: Optional[str]
    metrics: Optional[dict[str, float]] = field(default=None)


def _not_checked(fmt: str) -> str:
    return f"not checked: no completeness check applies to these files (format {fmt})"


def describe_checkpoint(root: Path, sizes: Mapping[str, int], name: str = "",
                        skipped: Optional[Mapping[str, str]] = None,
                        tops: Optional[Mapping[str, str]] = None) -> Description:
    """Format, step, resumable, completeness and metrics of the checkpoint at `root` made of
    these files (relative path -> size). `name` is its directory's name ("" for the root files).
    `skipped`: entries of its directory that are not part of it (path -> why), which the format
    may need. Completeness is decided on the files alone; the format is the writer's, so it is
    detected on what was written (files and skipped entries). `tops`: a checkpoint assembled from
    workers' parts, the directory each file is in (agent/parts.py)."""
    files = CheckpointFiles(Path(root), sizes, name, skipped=dict(skipped or {}), tops=dict(tops or {}))
    written = sorted({*files.paths, *files.skipped})
    rule = rule_for(written, name)
    fmt = rule.refine(files) if rule.refine else rule.name
    step = None
    if name:
        from_name = step_from_name(name)
        step = bounded_int(from_name)
        if from_name is not None and step is None:
            files.note("", f"step {quoted(str(from_name), 24)} in the checkpoint's name is beyond int64: not used "
                           "as the step")
    if step is None and rule.step_from_data:
        step = rule.step_from_data(files)
    if step is None:  # a trainer_state.json says the step whatever the weights' format
        step = md.step_from_trainer_state(files)
    resumable = is_resumable(files.paths) or bool(rule.resumable_from_data and rule.resumable_from_data(files))
    metrics = checkpoint_metrics(files)
    verdict = completeness.verdict(files, _BY_NAME[fmt].completeness)
    return Description(fmt, step, resumable, verdict.complete, _reason(verdict, files, fmt), metrics)


def _reason(verdict: Verdict, files: CheckpointFiles, fmt: str) -> Optional[str]:
    reason = verdict.reason or (_not_checked(fmt) if verdict.complete is None else None)
    # What a reader ignored, unless the verdict already says it.
    notes = [f"{rel}: {why}" if rel else why for rel, why in sorted(files.problems.items())
             if not (reason and why in reason)]
    if notes:
        notes[0] = "ignored: " + notes[0]
    return completeness.with_notes(reason, notes)


def completeness_of(root: Path, sizes: Mapping[str, int], name: str = "",
                    skipped: Optional[Mapping[str, str]] = None) -> Verdict:
    """Only the verdict: is the checkpoint at `root` complete now? (Cheap: no hashing.)"""
    files = CheckpointFiles(Path(root), sizes, name, skipped=dict(skipped or {}))
    verdict = completeness.verdict(files, rule_for(sorted({*files.paths, *files.skipped}), name).completeness)
    if verdict.complete is None and verdict.reason is None:
        return Verdict(None, "not checked: no completeness check applies to these files")
    return verdict


def format_table_markdown() -> str:
    """The format table of docs/concepts.md, from RULES."""
    rows = ["| format | detected by (first match wins, top to bottom) | step | `resumable` | `complete` |",
            "| --- | --- | --- | --- | --- |"]
    for r in RULES:
        cells = [f"`{r.name}`", r.detected_by, r.step, r.resumable, r.complete]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


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
    """`global_step` of a Transformers `trainer_state.json`, or None when absent, malformed or
    beyond int64 (read with the bounds of safe_read.parse_json)."""
    try:
        state = parse_json(text.encode("utf-8", "surrogatepass"))
    except Unreadable:
        return None
    return bounded_int(state.get("global_step")) if isinstance(state, dict) else None


# A whole token, so `attempt-3`, `template`, `temperature` stay; `ckpt.tmp`, `x-incomplete`,
# `step-5.orbax-checkpoint-tmp-1712` go.
_UNFINISHED = re.compile(r"(?:^|[._-])(tmp|temp|incomplete|partial)(?:[._-]|$)", re.IGNORECASE)


def unfinished_marker(name: str) -> Optional[str]:
    """The tmp/temp/incomplete/partial token in a name, which marks a checkpoint still being written."""
    match = _UNFINISHED.search(name)
    return match.group(1) if match else None
