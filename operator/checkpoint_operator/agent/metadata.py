"""Step and optimizer state from what frameworks write beside the weights, read safely.

Each function takes a `CheckpointFiles` and returns None when its files are absent or
unreadable: the name rules (agent/formats.py) then decide alone. Pickles are read with
`safe_pickle` (no unpickling), JSON with `safe_read.parse_json`, every read is capped
(`safe_read.MAX_METADATA_BYTES`). What a reader ignores (an unreadable file, a step beyond
int64) is noted on the `CheckpointFiles` (`files.note`), so the checkpoint says so.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Optional

from checkpoint_operator.agent import safe_pickle
from checkpoint_operator.protocol.names import component_problem
from checkpoint_operator.agent.safe_read import (MAX_INT_DIGITS, CheckpointFiles, Unreadable, bounded_int, is_too_big,
                                                 quoted)

TRAINER_STATE = "trainer_state.json"
DEEPSPEED_LATEST = "latest"
MEGATRON_TRACKER = "latest_checkpointed_iteration.txt"
DCP_METADATA = ".metadata"
TORCH_ZIP_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Top-level keys under which training code saves optimizer state (torch.save dicts, Lightning,
# Megatron, DCP state dicts, Orbax/Flax pytrees).
OPTIMIZER_KEYS = {"optimizer", "optimizers", "optimizer_state_dict", "optimizer_states", "optimizer_state",
                  "optim", "optim_state", "optim_state_dict", "opt", "opt_state"}
# Top-level keys that carry the training step (Lightning: global_step; Megatron: iteration).
STEP_KEYS = ("global_step", "step", "iteration", "iter")
MAX_PICKLES_READ = 4  # torch files whose pickle is read per checkpoint
_GLOBAL_STEP_TAG = re.compile(r"^global_step([0-9]+)$")
_DIGITS = re.compile(r"^[0-9]+$")  # ASCII only: str.isdigit() also takes '²', which int() refuses


def step_value(files: CheckpointFiles, rel: str, what: str, value: Any) -> Optional[int]:
    """`value` as a step (a non-negative int64), noting on `files` when it is a number too big
    for one (the status's int64 could not hold it)."""
    step = bounded_int(value)
    if step is None and is_too_big(value):
        files.note(rel, f"{what} {quoted(value, 24)} is beyond int64: not used as the step")
    return step


def digits_value(files: CheckpointFiles, rel: str, what: str, text: str) -> Optional[int]:
    """ASCII digits as a step: at most MAX_INT_DIGITS of them (int() of a long digit string is
    slow, and of more than 4300 digits an error), within int64."""
    if not _DIGITS.fullmatch(text):
        return None
    if len(text) > MAX_INT_DIGITS:
        files.note(rel, f"{what} {quoted(text, 24)} is beyond int64: not used as the step")
        return None
    return step_value(files, rel, what, int(text))


def trainer_state(files: CheckpointFiles) -> Optional[dict]:
    if not files.has(TRAINER_STATE):
        return None
    try:
        state = files.json(TRAINER_STATE)
    except Unreadable:
        return None
    if not isinstance(state, dict):
        files.note(TRAINER_STATE, "not a JSON object")
        return None
    return state


def step_from_trainer_state(files: CheckpointFiles) -> Optional[int]:
    state = trainer_state(files)
    return step_value(files, TRAINER_STATE, "global_step", state.get("global_step")) if state else None


def deepspeed_tag(files: CheckpointFiles) -> Optional[str]:
    """The tag DeepSpeed's `latest` file names (`global_step100`), or None."""
    if not files.has(DEEPSPEED_LATEST):
        return None
    try:
        tag = files.text(DEEPSPEED_LATEST).strip()
    except Unreadable:
        return None
    if not tag or component_problem(tag) or tag in (".", ".."):
        files.note(DEEPSPEED_LATEST, f"{quoted(tag)} is not a directory name")
        return None
    return tag


def step_from_deepspeed(files: CheckpointFiles) -> Optional[int]:
    tag = deepspeed_tag(files)
    match = _GLOBAL_STEP_TAG.fullmatch(tag or "")
    return digits_value(files, DEEPSPEED_LATEST, "the tag's step", match.group(1)) if match else None


def megatron_iteration(files: CheckpointFiles) -> Optional[str]:
    """What `latest_checkpointed_iteration.txt` says: a number or `release`, or None."""
    if not files.has(MEGATRON_TRACKER):
        return None
    try:
        text = files.text(MEGATRON_TRACKER).strip()
    except Unreadable:
        return None
    if text == "release" or (_DIGITS.fullmatch(text) and digits_value(files, MEGATRON_TRACKER, "iteration", text)
                             is not None):
        return text
    return None


def step_from_megatron(files: CheckpointFiles) -> Optional[int]:
    iteration = megatron_iteration(files)
    return int(iteration) if iteration and _DIGITS.fullmatch(iteration) else None


def torch_files(files: CheckpointFiles, *, root_only: bool = True) -> list[str]:
    """torch.save zip files of the checkpoint (the root only, by default), by path."""
    return [p for p in files.paths
            if p.lower().endswith(TORCH_ZIP_SUFFIXES) and (not root_only or "/" not in p) and files.is_zip(p)]


def read_pickles(files: CheckpointFiles, paths: list[str]) -> Iterator[tuple[str, Any]]:
    """(path, object) of the first MAX_PICKLES_READ torch files among `paths` that read."""
    for path in paths[:MAX_PICKLES_READ]:
        try:
            yield path, files.torch_pickle(path)
        except Unreadable:
            continue


def step_from_pickle(obj: Any, files: Optional[CheckpointFiles] = None, rel: str = "") -> Optional[int]:
    if not isinstance(obj, dict):
        return None
    for key in STEP_KEYS:
        value = obj.get(key)
        step = bounded_int(value) if files is None else step_value(files, rel, key, value)
        if step is not None:
            return step
    return None


def pickle_has_optimizer_state(obj: Any) -> bool:
    """A top-level optimizer key with something in it, or a torch `Optimizer.state_dict()`
    (a dict with `state` and `param_groups`) anywhere."""
    if isinstance(obj, dict):
        for key in OPTIMIZER_KEYS & {k for k in obj if isinstance(k, str)}:
            value = obj[key]
            if value is not None and not (isinstance(value, (dict, list, tuple)) and not value):
                return True
    return any(isinstance(node, dict) and "param_groups" in node and "state" in node
               for _, node in safe_pickle.walk(obj))


def is_lightning_pickle(obj: Any) -> bool:
    return isinstance(obj, dict) and ("pytorch-lightning_version" in obj or "lightning_version" in obj)


def step_from_torch_files(files: CheckpointFiles, paths: list[str]) -> Optional[int]:
    for path, obj in read_pickles(files, paths):
        step = step_from_pickle(obj, files, path)
        if step is not None:
            return step
    return None


def torch_files_resumable(files: CheckpointFiles, paths: list[str]) -> bool:
    return any(pickle_has_optimizer_state(obj) for _, obj in read_pickles(files, paths))


# --- torch distributed checkpoint (DCP) -----------------------------------------------------

def dcp_metadata(files: CheckpointFiles, rel: str) -> Optional[Any]:
    """The Metadata object of a DCP `.metadata` file (safe_pickle form), or None."""
    try:
        obj = files.pickle(rel)
    except Unreadable:
        return None
    if isinstance(obj, safe_pickle.Opaque) and obj.what.endswith("checkpoint.metadata.Metadata"):
        return obj
    return None


def dcp_keys(metadata: Any) -> list[str]:
    keys = safe_pickle.field(metadata, "state_dict_metadata")
    return [k for k in keys if isinstance(k, str)] if isinstance(keys, dict) else []


def dcp_storage(metadata: Any) -> Optional[list[tuple[str, int]]]:
    """(relative file, bytes it must hold at least) for every stored item of a DCP checkpoint;
    None when an item's path, offset or length is not one (a path, two int64 counts)."""
    storage = safe_pickle.field(metadata, "storage_data")
    out = []
    for info in (storage or {}).values() if isinstance(storage, dict) else []:
        path = safe_pickle.field(info, "relative_path")
        offset, length = bounded_int(safe_pickle.field(info, "offset")), bounded_int(safe_pickle.field(info, "length"))
        if not isinstance(path, str) or not path or offset is None or length is None:
            return None
        out.append((path, offset + length))
    return out


def dcp_keys_have_optimizer(keys: list[str]) -> bool:
    """`get_state_dict(model, opt)` flattened by DCP: `optim.state.<param>.exp_avg`,
    `optim.param_groups.0.lr`; any key under an optimizer name or holding `param_groups`."""
    for key in keys:
        parts = key.split(".")
        if parts[0] in OPTIMIZER_KEYS or "param_groups" in parts:
            return True
    return False


def dcp_metadata_files(files: CheckpointFiles) -> list[str]:
    """`.metadata` files, and `__<rank>.metadata` of saves without rank coordination."""
    return [p for p in files.paths if re.match(r"^(__\d+)?\.metadata$", p.rsplit("/", 1)[-1])]


def dcp_resumable(files: CheckpointFiles) -> bool:
    for rel in dcp_metadata_files(files):
        metadata = dcp_metadata(files, rel)
        if metadata is not None and dcp_keys_have_optimizer(dcp_keys(metadata)):
            return True
    return False


# --- Orbax -------------------------------------------------------------------------------------

def orbax_tree_keys(files: CheckpointFiles, rel: str) -> list[list[str]]:
    """Key paths of the pytree an Orbax item's `_METADATA` describes (`tree_metadata`)."""
    try:
        data = files.json(rel)
    except Unreadable:
        return []
    tree = data.get("tree_metadata") if isinstance(data, dict) else None
    paths = []
    for entry in (tree or {}).values() if isinstance(tree, dict) else []:
        keys = entry.get("key_metadata") if isinstance(entry, dict) else None
        if isinstance(keys, list):
            paths.append([k["key"] for k in keys if isinstance(k, dict) and isinstance(k.get("key"), str)])
    return paths


def orbax_resumable(files: CheckpointFiles) -> bool:
    """Optimizer state inside an item: a key path through `opt_state` (or another optimizer
    name) in an item's `_METADATA`, as Orbax's default single-item save writes it."""
    for rel in files.paths:
        if rel.rsplit("/", 1)[-1] == "_METADATA":
            if any(OPTIMIZER_KEYS & set(path) for path in orbax_tree_keys(files, rel)):
                return True
    return False


# --- Keras -----------------------------------------------------------------------------------

def keras_compiled_with_optimizer(files: CheckpointFiles, rel: str) -> bool:
    """A `.keras` zip whose config.json has a compile_config with an optimizer: Keras then saves
    the optimizer's variables in model.weights.h5 beside the model's."""
    try:
        config = files.zip_json(rel, "config.json")
    except Unreadable:
        return False
    compile_config = config.get("compile_config") if isinstance(config, dict) else None
    return isinstance(compile_config, dict) and bool(compile_config.get("optimizer"))
