"""Is this checkpoint whole? Decided from what each format writes last or must contain.

Every rule is a function of a `CheckpointFiles` (the checkpoint's root and file list) that
reads only small metadata files and the ends or headers of weight files, never hashing and
never loading weights, so it can be asked at any time, cheaply, while a save may still be
going on ("is it complete now?"). A rule returns None when it does not apply, else a
`Verdict`; `verdict` puts a checkpoint's verdicts together: the first that says incomplete
wins, then the format's own rule, then the others. No rule at all: `complete` is None.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from checkpoint_operator.agent import metadata as md
from checkpoint_operator.agent.safe_read import (
    CheckpointFiles,
    Unreadable,
    gguf_structure,
    safetensors_structure,
    tar_structure,
    zip_structure,
)

MAX_STRUCTURE_CHECKS = 10_000  # weight files whose header/end is checked per checkpoint


@dataclass(frozen=True)
class Verdict:
    complete: Optional[bool]
    reason: Optional[str]


NO_RULE = Verdict(None, None)
Rule = Callable[[CheckpointFiles], Optional[Verdict]]


def _ok(reason: str) -> Verdict:
    return Verdict(True, reason)


def _broken(reason: str) -> Verdict:
    return Verdict(False, reason)


def _base(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _join(directory: str, name: str) -> str:
    return posixpath.join(directory, name) if directory else name


def _files_under(files: CheckpointFiles, directory: str) -> list[str]:
    prefix = directory.rstrip("/") + "/"
    return [p for p in files.paths if p.startswith(prefix)]


# --- weight containers: each checked by its header or its end ---------------------------

def _structure_check(path: str) -> Optional[Callable]:
    low = path.lower()
    if low.endswith(".safetensors"):
        return safetensors_structure
    if low.endswith(".gguf"):
        return gguf_structure
    if low.endswith(".nemo"):
        return tar_structure
    if low.endswith(".keras"):
        return zip_structure
    if low.endswith(md.TORCH_ZIP_SUFFIXES) or re.search(r"(^|/)random_states_\d+\.pkl$", low):
        return zip_structure
    return None


def weight_files(files: CheckpointFiles) -> Optional[Verdict]:
    """Every safetensors file's header agrees with its size; every torch.save/.keras zip has its
    central directory at its end; every GGUF header and tensor table fits; every .nemo tar's
    members are inside it. An empty file is incomplete; a file that is not what its name says
    (a torch file in the pre-1.6 format, not a zip; a `.safetensors` without a JSON header)
    is not checked."""
    checked = 0
    for path in files.paths:
        check = _structure_check(path)
        if check is None:
            continue
        if checked >= MAX_STRUCTURE_CHECKS:
            break
        if check is zip_structure and not path.lower().endswith(".keras"):
            if files.sizes[path] == 0:
                return _broken(f"{path} is empty (0 bytes): its save never wrote it")
            if not files.is_zip(path):
                continue
        result = files.structure(path, check)
        if not result.checked:
            continue
        checked += 1
        if not result.ok:
            return _broken(f"{path}: {result.why}")
    if not checked:
        return None
    return _ok(f"{checked} weight file{'s' if checked != 1 else ''} whole (headers and ends agree with sizes)")


# --- Hugging Face ----------------------------------------------------------------------------

_TRAINER_DIR = re.compile(r"^checkpoint-\d+$")  # transformers' PREFIX_CHECKPOINT_DIR-<global_step>
_TRAINER_FILES = {"optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", md.TRAINER_STATE}
_RNG_STATE = re.compile(r"^rng_state(_\d+)?\.pth$")


def is_trainer_checkpoint(files: CheckpointFiles) -> bool:
    """A Trainer's `checkpoint-N/` (its name and a file only the Trainer writes), or any
    directory with a `trainer_state.json`."""
    if files.has(md.TRAINER_STATE):
        return True
    root = [p for p in files.paths if "/" not in p]
    return bool(_TRAINER_DIR.match(files.name)) and any(p in _TRAINER_FILES or _RNG_STATE.match(p) for p in root)


def weight_indexes(files: CheckpointFiles) -> Optional[Verdict]:
    """Every shard a `*.index.json` weight map names (sharded `save_pretrained`) is present."""
    indexes = [p for p in files.paths if p.endswith((".safetensors.index.json", ".bin.index.json"))]
    shards = 0
    for index in indexes:
        try:
            weight_map = files.json(index).get("weight_map")
        except (Unreadable, AttributeError):
            return _broken(f"{index} is not valid JSON (cut short while being written?)")
        if not isinstance(weight_map, dict):
            return _broken(f"{index} has no weight_map")
        directory = posixpath.dirname(index)
        for shard in sorted({s for s in weight_map.values() if isinstance(s, str)}):
            shards += 1
            if not files.has(_join(directory, shard)):
                return _broken(f"{index} names {shard}, which is missing")
    return _ok(f"{len(indexes)} weight index{'es' if len(indexes) != 1 else ''} and its {shards} shards present") \
        if indexes else None


def huggingface(files: CheckpointFiles) -> Optional[Verdict]:
    index = weight_indexes(files)
    if index is not None and index.complete is False:
        return index
    if not is_trainer_checkpoint(files):
        return _ok("config.json and model weights present")
    if not files.has(md.TRAINER_STATE):
        return _broken("missing trainer_state.json (a Trainer checkpoint writes it last)")
    if md.trainer_state(files) is None:
        return _broken("trainer_state.json is not a valid JSON object (cut short while being written?)")
    return _ok("trainer_state.json is present and valid (the Trainer writes it last, after weights and optimizer)")


# --- torch distributed checkpoint ----------------------------------------------------------

_RANK_METADATA = re.compile(r"^__\d+\.metadata$")


def _dcp_directories(files: CheckpointFiles) -> list[str]:
    dirs = {posixpath.dirname(p) for p in files.paths
            if _base(p) in (md.DCP_METADATA, md.DCP_METADATA + ".tmp") or p.endswith(".distcp")}
    return sorted(dirs)


def torch_dcp(files: CheckpointFiles) -> Optional[Verdict]:
    """Each directory with `.distcp` files has a `.metadata` (DCP renames it into place last),
    and every file it names is present and as long as the metadata says."""
    directories = _dcp_directories(files)
    named: set[str] = set()
    for directory in directories:
        where = f"{directory}/" if directory else ""
        under = _files_under(files, directory) if directory else files.paths
        meta_rel = _join(directory, md.DCP_METADATA)
        # Saved without rank coordination, each rank writes its own `__<rank>.metadata`.
        metadata_files = [meta_rel] if files.has(meta_rel) else [p for p in under if _RANK_METADATA.match(_base(p))
                                                                 and posixpath.dirname(p) == directory]
        if not metadata_files:
            if files.has(meta_rel + ".tmp"):
                return _broken(f"{where}.metadata.tmp but no {where}.metadata: the save was still writing it")
            return _broken(f"no {where}.metadata beside the .distcp files (torch DCP writes it last)")
        for meta in metadata_files:
            metadata = md.dcp_metadata(files, meta)
            if metadata is None:
                if not any(p.endswith(".distcp") for p in under):
                    continue  # a `.metadata` of something else
                return _broken(f"{meta} is not a readable torch DCP metadata pickle")
            for rel, end in sorted(set(md.dcp_storage(metadata))):
                path = _join(directory, rel)
                if not files.has(path):
                    return _broken(f"{path} is named by {meta} but missing")
                if files.sizes[path] < end:
                    return _broken(f"{path} has {files.sizes[path]} bytes, {meta} needs {end} (cut short)")
                named.add(path)
    if not named:
        return None
    return _ok(f".metadata (written last) and the {len(named)} data file{'s' if len(named) != 1 else ''} "
               f"it names are present")


# --- Orbax -----------------------------------------------------------------------------------

ORBAX_TMP = ".orbax-checkpoint-tmp"
ORBAX_CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"
ORBAX_COMMIT_FILE = "commit_success.txt"


def orbax(files: CheckpointFiles) -> Optional[Verdict]:
    """Committed: `_CHECKPOINT_METADATA` records `commit_timestamp_nsecs` or `commit_success.txt`
    is present (Orbax writes both when it finalizes, before its rename); no item still under a
    `*.orbax-checkpoint-tmp*` name; every item's `_METADATA` parses and OCDBT items have
    `manifest.ocdbt`."""
    for path in files.paths:
        if ORBAX_TMP in path:
            return _broken(f"{path}: still under Orbax's temporary name (an unfinished save)")
    marker = ORBAX_COMMIT_FILE if files.has(ORBAX_COMMIT_FILE) else None
    if files.has(ORBAX_CHECKPOINT_METADATA):
        try:
            meta = files.json(ORBAX_CHECKPOINT_METADATA)
        except Unreadable:
            return _broken(f"{ORBAX_CHECKPOINT_METADATA} is not valid JSON (cut short while being written?)")
        if isinstance(meta, dict) and isinstance(meta.get("commit_timestamp_nsecs"), int):
            marker = f"{ORBAX_CHECKPOINT_METADATA} commit_timestamp_nsecs"
        elif marker is None:
            return _broken(f"{ORBAX_CHECKPOINT_METADATA} has no commit_timestamp_nsecs and there is no "
                           f"{ORBAX_COMMIT_FILE}: the save was never finalized")
    items = sorted({posixpath.dirname(p) for p in files.paths if _base(p) == "_METADATA"})
    for item in items:
        where = f"{item}/" if item else ""
        try:
            files.json(_join(item, "_METADATA"))
        except Unreadable:
            return _broken(f"{where}_METADATA is not valid JSON (cut short while being written?)")
        under = _files_under(files, item) if item else files.paths
        ocdbt = any("ocdbt.process_" in p or p.startswith(f"{where}d/") for p in under)
        if ocdbt and not files.has(_join(item, "manifest.ocdbt")):
            return _broken(f"{where}manifest.ocdbt missing for an OCDBT item")
    what = f"the _METADATA of {len(items)} item{'s' if len(items) != 1 else ''} parse{'s' if len(items) == 1 else ''}"
    if marker:
        return _ok(f"committed ({marker}); {what}")
    return _ok(f"no commit marker (Orbax before 0.5: the rename to its final name is the commit); {what}")


# --- DeepSpeed, Megatron, NeMo, Keras, Accelerate ---------------------------------------------

def deepspeed(files: CheckpointFiles) -> Optional[Verdict]:
    """`latest` (written after every rank saved) names a tag directory that holds model states;
    a lone `global_stepN/` directory must hold them itself."""
    def model_states(paths: Iterable[str]) -> bool:
        return any(_base(p).endswith("model_states.pt") for p in paths)

    if files.has(md.DEEPSPEED_LATEST):
        tag = md.deepspeed_tag(files)
        if tag is None:
            return _broken("latest is empty or unreadable (DeepSpeed writes the tag there last)")
        under = _files_under(files, tag)
        if not under:
            return _broken(f"latest names {tag}, which is not in this checkpoint")
        if not model_states(under):
            return _broken(f"latest names {tag}, which holds no *model_states.pt")
        return _ok(f"latest names {tag}, which holds model states")
    if model_states(files.paths):
        return _ok("model states present (no latest file: the tag is this directory)")
    return _broken("no *model_states.pt and no latest file")


def _megatron_iteration_dir(files: CheckpointFiles, directory: str) -> Optional[Verdict]:
    where = f"{directory}/" if directory else ""
    under = _files_under(files, directory) if directory else files.paths
    if any(_base(p) == "model_optim_rng.pt" for p in under):
        return None  # legacy per-rank files: their zips are checked with the weight files
    if files.has(_join(directory, md.DCP_METADATA)) or any(p.endswith(".distcp") for p in under):
        return None  # torch_dist: the DCP rule checks it
    return _broken(f"{where or 'the checkpoint '}holds neither mp_rank_*/model_optim_rng.pt nor a distributed checkpoint")


def megatron(files: CheckpointFiles) -> Optional[Verdict]:
    """`latest_checkpointed_iteration.txt` (written after the save) names an `iter_NNNNNNN/` (or
    `release/`) directory that holds model files; a lone `iter_N/` must hold them itself."""
    if files.has(md.MEGATRON_TRACKER):
        iteration = md.megatron_iteration(files)
        if iteration is None:
            return _broken(f"{md.MEGATRON_TRACKER} holds neither an iteration number nor 'release'")
        directory = "release" if iteration == "release" else f"iter_{int(iteration):07d}"
        if not _files_under(files, directory):
            return _broken(f"{md.MEGATRON_TRACKER} names {directory}, which is not in this checkpoint")
        problem = _megatron_iteration_dir(files, directory)
        return problem or _ok(f"{md.MEGATRON_TRACKER} names {directory}, which holds the model files")
    return _megatron_iteration_dir(files, "") or _ok("model files present (no tracker file: this is one iteration)")


def nemo(files: CheckpointFiles) -> Optional[Verdict]:
    """A `.nemo` tar is checked with the weight files; a NeMo 2 directory needs `weights/` and
    `context/` (the distributed checkpoint in weights/ is checked by the DCP rule)."""
    if any(p.lower().endswith(".nemo") for p in files.paths):
        return None
    has_weights, has_context = bool(_files_under(files, "weights")), bool(_files_under(files, "context"))
    if has_weights or has_context:
        if not has_weights:
            return _broken("context/ without weights/")
        if not has_context:
            return _broken("weights/ without context/ (NeMo 2 writes both)")
        return _ok("weights/ and context/ present")
    return None


def keras(files: CheckpointFiles) -> Optional[Verdict]:
    """A `.keras` zip is whole and holds config.json and model.weights.h5."""
    for path in files.paths:
        if path.lower().endswith(".keras"):
            try:
                entries = files.zip_entries(path)
            except Unreadable:
                return None  # the weight-file check reports it
            missing = [n for n in ("config.json", "model.weights.h5") if n not in entries]
            if missing:
                return _broken(f"{path} lacks {', '.join(missing)}")
    return _ok(".keras archive holds config.json and model.weights.h5")


_ACCELERATE_STATE = re.compile(r"^(optimizer(_\d+)?\.bin|scheduler(_\d+)?\.bin|random_states_\d+\.pkl)$")


def is_accelerate_state(files: CheckpointFiles) -> bool:
    """What `Accelerator.save_state` writes: `random_states_N.pkl`, or `optimizer*.bin` /
    `scheduler*.bin` saved by torch.save (zips); never beside a `trainer_state.json`."""
    if files.has(md.TRAINER_STATE):
        return False
    return any(_ACCELERATE_STATE.match(p) and (p.endswith(".pkl") or files.is_zip(p)) for p in files.paths)


def accelerate(files: CheckpointFiles) -> Optional[Verdict]:
    """`Accelerator.save_state`: `random_states_0.pkl` is written after weights, optimizers and
    schedulers."""
    if not is_accelerate_state(files):
        return None
    if not files.has("random_states_0.pkl"):
        return _broken("no random_states_0.pkl (Accelerate's save_state writes it after the model, "
                       "optimizer and scheduler)")
    return _ok("random_states_0.pkl present (Accelerate's save_state writes it last)")


# --- all together ------------------------------------------------------------------------

def verdict(files: CheckpointFiles, format_rule: Optional[Rule]) -> Verdict:
    """The checkpoint's verdict from its format's rule, the rules of layouts that can appear
    inside any format (DCP directories, Accelerate state) and its weight files: the first
    that says incomplete wins; else the first reason, with the weight files' appended."""
    primary = format_rule(files) if format_rule else None
    layouts = [] if format_rule is torch_dcp else [torch_dcp(files)]
    if format_rule is not huggingface:
        layouts.append(accelerate(files))
    weights = weight_files(files)
    verdicts = [v for v in (primary, *layouts, weights) if v is not None and v.complete is not None]
    for v in verdicts:
        if v.complete is False:
            return v
    if not verdicts:
        return NO_RULE
    if weights is not None and verdicts[0] is not weights:
        return Verdict(True, f"{verdicts[0].reason}; {weights.reason}")
    return verdicts[0]
