"""Is this checkpoint whole? Decided from what each format writes last or must contain, and
from whether every weight file is what its name says.

Every rule is a function of a `CheckpointFiles` (the checkpoint's root and file list) that
reads only small metadata files and the headers or ends of weight files (agent/file_checks.py),
never hashing and never loading weights, so it can be asked at any time, cheaply, while a save
may still be going on ("is it complete now?"). A rule returns None when it does not apply,
else a `Verdict`: True (checked, whole), False (the reason names the file and what is wrong),
or None (a file of a kind that could not be checked). `verdict` puts a checkpoint's verdicts
together: false wins, then "not checked", then true; no rule at all is None too. So `complete`
is true only when something was checked and everything that could matter was.
"""

from __future__ import annotations

import itertools
import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from checkpoint_operator.agent import file_checks
from checkpoint_operator.agent import metadata as md
from checkpoint_operator.agent.safe_read import CheckpointFiles, Unreadable, bounded_int, quoted

MAX_STRUCTURE_CHECKS = 100_000  # weight files whose header/end is checked per checkpoint
MAX_REASON_CHARS = 1000  # a reason is one line a person reads (and goes into status and events)


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


def _unchecked(reason: str) -> Verdict:
    return Verdict(None, reason)


def _base(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _join(directory: str, name: str) -> str:
    return posixpath.join(directory, name) if directory else name


def _files_under(files: CheckpointFiles, directory: str) -> list[str]:
    prefix = directory.rstrip("/") + "/"
    return [p for p in files.paths if p.startswith(prefix)]


def _plural(n: int, word: str, plural: str = "") -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


# --- weight containers: each checked by its header or its end ---------------------------

def weight_files(files: CheckpointFiles) -> Optional[Verdict]:
    """Every file whose name says it holds weights (agent/file_checks.py `kind_of`) is what its
    name says: broken files make the checkpoint incomplete, files that could not be checked
    leave it unchecked (None)."""
    checked = 0
    unchecked: list[tuple[str, str]] = []
    for path in files.paths:
        kind = file_checks.kind_of(path)
        if kind is None:
            continue
        if checked + len(unchecked) >= MAX_STRUCTURE_CHECKS:
            unchecked.append((path, f"more than {MAX_STRUCTURE_CHECKS} weight files: the rest are not checked"))
            break
        result = files.structure(path, file_checks.checker(kind))
        if not result.checked:
            unchecked.append((path, result.why))
            continue
        checked += 1
        if not result.ok:
            return _broken(f"{path}: {result.why}")
    if unchecked:
        path, why = unchecked[0]
        more = f" (and {_plural(len(unchecked) - 1, 'more file')})" if len(unchecked) > 1 else ""
        return _unchecked(f"not checked: {path}: {why}{more}")
    if not checked:
        return None
    return _ok(f"{_plural(checked, 'weight file')} whole (headers and ends agree with sizes)")


# Files some rule reads or needs, by name: one that the writer put in the checkpoint but that is
# not part of it (a symlink leading out of it) leaves the checkpoint incomplete.
_NEEDED_NAMES = {md.TRAINER_STATE, "config.json", "adapter_config.json", md.DEEPSPEED_LATEST, md.MEGATRON_TRACKER,
                 md.DCP_METADATA, "_CHECKPOINT_METADATA", "_METADATA", "commit_success.txt", ".zarray", "zarr.json",
                 "random_states_0.pkl"}
_NEEDED = re.compile(r"(\.index\.json|\.distcp|^__\d+\.metadata)$")


def lost_files(files: CheckpointFiles) -> Optional[Verdict]:
    """A file of the checkpoint's directory that its format needs (a weight file, an index, a
    marker a rule reads) but that is not part of the checkpoint: incomplete, naming it."""
    for path, why in sorted(files.skipped.items()):
        base = _base(path)
        if file_checks.kind_of(path) is not None or base in _NEEDED_NAMES or _NEEDED.search(base):
            return _broken(f"{path} is not part of the checkpoint ({why})")
    return None


# --- Hugging Face ----------------------------------------------------------------------------

_TRAINER_DIR = re.compile(r"^checkpoint-\d+$")  # transformers' PREFIX_CHECKPOINT_DIR-<global_step>
_TRAINER_FILES = {"optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", md.TRAINER_STATE}
_RNG_STATE = re.compile(r"^rng_state(_\d+)?\.pth$")
_HF_CONFIGS = ("config.json", "adapter_config.json")


def is_trainer_checkpoint(files: CheckpointFiles) -> bool:
    """A Trainer's `checkpoint-N/` (its name and a file only the Trainer writes), or any
    directory with a `trainer_state.json`."""
    if files.has(md.TRAINER_STATE):
        return True
    root = [p for p in files.paths if "/" not in p]
    return bool(_TRAINER_DIR.match(files.name)) and any(p in _TRAINER_FILES or _RNG_STATE.match(p) for p in root)


def weight_indexes(files: CheckpointFiles) -> Optional[Verdict]:
    """Every shard a `*.index.json` weight map names (sharded `save_pretrained`) is present
    (each shard's own structure is checked with the weight files)."""
    indexes = [p for p in files.paths if p.endswith((".safetensors.index.json", ".bin.index.json"))]
    shards = 0
    for index in indexes:
        try:
            data = files.json(index)
        except Unreadable as e:
            return _broken(f"{index}: {e}")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            return _broken(f"{index} has no weight_map")
        directory = posixpath.dirname(index)
        values = list(weight_map.values())
        if not all(isinstance(v, str) and v for v in values):
            return _broken(f"{index}: its weight_map names a shard that is not a file name")
        names = set(values)
        for shard in sorted(names):
            shards += 1
            path = _join(directory, shard)
            if not files.has(path):
                return _broken(f"{index} names {quoted(shard)}, which is {files.missing(path)}")
        problem = _shards_hold_their_tensors(files, index, directory, weight_map)
        if problem is not None:
            return problem
    if not indexes:
        return None
    return _ok(f"{_plural(len(indexes), 'weight index', 'weight indexes')} and its {_plural(shards, 'shard')} present")


def _shards_hold_their_tensors(files: CheckpointFiles, index: str, directory: str,
                               weight_map: dict) -> Optional[Verdict]:
    """Every tensor the index names is held by its shards (their headers' names: a safetensors
    header, or a torch.save shard's state-dict keys): a shard of another save under the index's
    name is found without reading a weight. Where in the shards a tensor lies is not required
    (transformers and accelerate load every tensor of every shard the index lists, so swapped
    shards load). A shard whose names could not be read is left to the weight-file check."""
    held: set[str] = set()
    for shard in sorted(set(weight_map.values())):
        names = _tensor_names(files, _join(directory, shard))
        if names is None:
            return None
        held |= names
    missing = [(t, s) for t, s in weight_map.items() if t not in held]
    if missing:
        tensor, shard = missing[0]
        more = f" (and {_plural(len(missing) - 1, 'more tensor')})" if len(missing) > 1 else ""
        return _broken(f"{_join(directory, shard)} lacks the tensor {quoted(tensor)}{more} that {index} assigns to "
                       "it, and no other shard holds it (a shard of another save?)")
    return None


def _tensor_names(files: CheckpointFiles, path: str) -> Optional[frozenset[str]]:
    if path.endswith(".safetensors"):
        return files.structure(path, file_checks.safetensors_tensor_names)
    if file_checks.kind_of(path) == "torch":
        try:
            state = files.torch_pickle(path)
        except Unreadable:
            return None
        return frozenset(k for k in state if isinstance(k, str)) if isinstance(state, dict) else None
    return None


# Transformers' (and mlx, diffusers, gguf-split's) numbered shards: `<prefix>-00002-of-00005.<ext>`.
_NUMBERED_SHARD = re.compile(r"^(?P<prefix>.+)-(?P<k>\d{5})-of-(?P<n>\d{5})\.(?P<ext>safetensors|bin|gguf)$")


def numbered_shards(files: CheckpointFiles) -> Optional[Verdict]:
    """Shards named `<prefix>-0000k-of-0000N.<ext>` say how many there are: all N must be there
    (a save killed after k of them leaves the rest missing), and sharded safetensors/.bin need
    the `<prefix>.<ext>.index.json` save_pretrained writes after them (from_pretrained reads it)."""
    groups: dict[tuple[str, str, str, int], set[int]] = {}
    for path in files.paths:
        m = _NUMBERED_SHARD.match(_base(path))
        if m:
            key = (posixpath.dirname(path), m["prefix"], m["ext"], int(m["n"]))
            groups.setdefault(key, set()).add(int(m["k"]))
    for (directory, prefix, ext, n), present in sorted(groups.items()):
        for k in range(1, n + 1):
            if k not in present:
                name = _join(directory, f"{prefix}-{k:05d}-of-{n:05d}.{ext}")
                return _broken(f"{name} is {files.missing(name)} (shards 1-{n} of {prefix} are named; "
                               f"{_plural(len(present & set(range(1, n + 1))), 'is', 'are')} present)")
        index = _join(directory, f"{prefix}.{ext}.index.json")
        if ext != "gguf" and n > 1 and not files.has(index):
            return _broken(f"{index} is {files.missing(index)}: its {n} shards are there, but the index "
                           "(written after them) is not")
    if not groups:
        return None
    return _ok(f"all {_plural(sum(k[3] for k in groups), 'numbered shard')} present")


def huggingface(files: CheckpointFiles) -> Optional[Verdict]:
    for config in _HF_CONFIGS:
        if files.has(config):
            try:
                data = files.json(config)
            except Unreadable as e:
                return _broken(f"{config}: {e}")
            if not isinstance(data, dict):
                return _broken(f"{config} is not a JSON object")
    index = weight_indexes(files)
    if index is not None and index.complete is False:
        return index
    if not is_trainer_checkpoint(files):
        return _ok("config.json parses and the model weights are present")
    if not files.has(md.TRAINER_STATE):
        return _broken("missing trainer_state.json (a Trainer checkpoint writes it last)")
    try:
        state = files.json(md.TRAINER_STATE)
    except Unreadable as e:
        return _broken(f"trainer_state.json: {e}")
    if not isinstance(state, dict):
        return _broken("trainer_state.json is not a JSON object")
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
        has_data = any(p.endswith(".distcp") for p in under)
        if not metadata_files:
            if files.has(meta_rel + ".tmp"):
                return _broken(f"{where}.metadata.tmp but no {where}.metadata: the save was still writing it")
            if meta_rel in files.skipped:
                return _broken(f"{meta_rel} is {files.missing(meta_rel)}")
            return _broken(f"no {where}.metadata beside the .distcp files (torch DCP writes it last)")
        for meta in metadata_files:
            metadata = md.dcp_metadata(files, meta)
            if metadata is None:
                if not has_data:
                    continue  # a `.metadata` of something else
                why = files.problems.get(meta) or "not torch DCP metadata"
                if meta in files.not_read:
                    return _unchecked(f"not checked: {meta}: {why}")
                return _broken(f"{meta} is not a readable torch DCP metadata pickle ({why})")
            storage = md.dcp_storage(metadata)
            if storage is None:
                return _broken(f"{meta}: a storage entry has no valid relative_path, offset or length")
            for rel, end in sorted(set(storage)):
                path = _join(directory, rel)
                if not files.has(path):
                    return _broken(f"{quoted(path)} is named by {meta} but {files.missing(path)}")
                if files.sizes[path] < end:
                    return _broken(f"{path} has {files.sizes[path]} bytes, {meta} needs {end} (cut short)")
                named.add(path)
    if not named:
        return None
    return _ok(f".metadata (written last) and the {_plural(len(named), 'data file')} it names are present")


# --- Orbax -----------------------------------------------------------------------------------

ORBAX_TMP = ".orbax-checkpoint-tmp"
ORBAX_CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"
ORBAX_COMMIT_FILE = "commit_success.txt"
_ZARR_ARRAY = (".zarray", "zarr.json")


def _orbax_items(files: CheckpointFiles, meta: object) -> Optional[Verdict]:
    """Every item `_CHECKPOINT_METADATA`'s item_handlers names has its directory."""
    handlers = meta.get("item_handlers") if isinstance(meta, dict) else None
    if not isinstance(handlers, dict):
        return None
    for item in sorted(k for k in handlers if isinstance(k, str)):
        if "/" in item or item in ("", ".", ".."):
            return _broken(f"{ORBAX_CHECKPOINT_METADATA} names an item {quoted(item)} that is not a directory name")
        if not _files_under(files, item):
            return _broken(f"{ORBAX_CHECKPOINT_METADATA} names the item {quoted(item)}, whose directory is "
                           f"{files.missing(item, directory=True)}")
    return None


MAX_ZARR_CHUNKS = 1_000_000  # chunk names looked up per checkpoint; beyond: not checked
_ARRAY_VALUES = ("jax.Array", "np.ndarray")  # what Orbax writes as an array of its own


def _orbax_item_data(files: CheckpointFiles, item: str) -> Optional[Verdict]:
    """An item's data is where its `_METADATA` says: with `use_ocdbt` false, each array of the
    tree has its zarr directory (`<key>.<key>/` with its `.zarray` or `zarr.json`); with OCDBT,
    the item's `manifest.ocdbt` has data files in `d/` beside it (the B-tree nodes it refers to;
    which ones it names is inside the zstd-compressed manifest, not read here)."""
    where = f"{item}/" if item else ""
    try:
        meta = files.json(_join(item, "_METADATA"))
    except Unreadable:
        return None
    if not isinstance(meta, dict):
        return None
    under = _files_under(files, item) if item else files.paths
    if meta.get("use_ocdbt") is False:
        tree = meta.get("tree_metadata")
        for entry in tree.values() if isinstance(tree, dict) else []:
            keys = entry.get("key_metadata") if isinstance(entry, dict) else None
            value = entry.get("value_metadata") if isinstance(entry, dict) else None
            if not isinstance(keys, list) or not isinstance(value, dict) or value.get("skip_deserialize") is True \
                    or value.get("value_type") not in _ARRAY_VALUES:
                continue
            names = [k["key"] for k in keys if isinstance(k, dict) and isinstance(k.get("key"), str)]
            if not names or len(names) != len(keys):
                continue
            directory = _join(item, ".".join(names))
            if not any(files.has(_join(directory, m)) for m in _ZARR_ARRAY):
                return _broken(f"{where}_METADATA names the array {quoted('.'.join(names))}, whose "
                               f"{quoted(_base(directory) + '/')} is {files.missing(directory, directory=True)}")
    manifest = _join(item, "manifest.ocdbt")
    d = _join(item, "d") + "/"
    if files.has(manifest) and not any(p.startswith(d) for p in under):
        # Restore opens this manifest, whose B-tree root is a file in d/. (A process's own
        # `ocdbt.process_N/d/` may go: the root's merged tree is what restore reads.)
        return _broken(f"{manifest} has no data files in {d} (its B-tree nodes are missing)")
    return None


def _zarr_chunks(files: CheckpointFiles, array: str, meta: dict, left: list[int]) -> Optional[Verdict]:
    """Every chunk of a zarr array is present where no chunk may be left out: zarr v2 without a
    fill value (a missing chunk has nothing to read as). Where a fill value stands in for a
    missing chunk (zarr v3, v2 with one) its absence is what the writer meant, so nothing is
    required. At most MAX_ZARR_CHUNKS names are looked up per checkpoint."""
    if _base(array) != ".zarray" or meta.get("fill_value", 0) is not None:
        return None
    shape, chunks = meta.get("shape"), meta.get("chunks")
    if not (isinstance(shape, list) and isinstance(chunks, list) and len(shape) == len(chunks)
            and all(bounded_int(n) is not None for n in shape)
            and all(bounded_int(n) is not None and n > 0 for n in chunks)):
        return _broken(f"{array}: its shape and chunks are not lists of counts")
    grid = [-(-n // c) for n, c in zip(shape, chunks)]
    total = 1
    for n in grid:
        total *= n
    if total > left[0]:
        return _unchecked(f"not checked: {array}: more than {MAX_ZARR_CHUNKS} chunks to look for")
    left[0] -= total
    separator = meta.get("dimension_separator", ".")
    separator = separator if separator in (".", "/") else "."
    directory = posixpath.dirname(array)
    if not grid:
        keys: Iterable[str] = ["0"]
    else:
        keys = (separator.join(map(str, index)) for index in itertools.product(*(range(n) for n in grid)))
    for key in keys:
        if not files.has(_join(directory, key)):
            return _broken(f"{_join(directory, key)} is {files.missing(_join(directory, key))} (a chunk of "
                           f"{quoted(directory)}, which has no fill value to stand in for it)")
    return None


def orbax(files: CheckpointFiles) -> Optional[Verdict]:
    """Committed: `_CHECKPOINT_METADATA` records `commit_timestamp_nsecs` or `commit_success.txt`
    is present (Orbax writes both when it finalizes, before its rename); no item still under a
    `*.orbax-checkpoint-tmp*` name; every item `_CHECKPOINT_METADATA` names is there; every
    item's `_METADATA` and every zarr array's metadata parses; OCDBT items (and each process's
    part of them) have their `manifest.ocdbt`, whose header and checksum are checked with the
    weight files."""
    for path in files.paths:
        if ORBAX_TMP in path:
            return _broken(f"{path}: still under Orbax's temporary name (an unfinished save)")
    marker = ORBAX_COMMIT_FILE if files.has(ORBAX_COMMIT_FILE) else None
    if files.has(ORBAX_CHECKPOINT_METADATA):
        try:
            meta = files.json(ORBAX_CHECKPOINT_METADATA)
        except Unreadable as e:
            return _broken(f"{ORBAX_CHECKPOINT_METADATA}: {e}")
        if isinstance(meta, dict) and bounded_int(meta.get("commit_timestamp_nsecs")) is not None:
            marker = f"{ORBAX_CHECKPOINT_METADATA} commit_timestamp_nsecs"
        elif marker is None:
            return _broken(f"{ORBAX_CHECKPOINT_METADATA} has no commit_timestamp_nsecs and there is no "
                           f"{ORBAX_COMMIT_FILE}: the save was never finalized")
        problem = _orbax_items(files, meta)
        if problem:
            return problem
    items = sorted({posixpath.dirname(p) for p in files.paths if _base(p) == "_METADATA"})
    for item in items:
        where = f"{item}/" if item else ""
        try:
            files.json(_join(item, "_METADATA"))
        except Unreadable as e:
            return _broken(f"{where}_METADATA: {e}")
        under = _files_under(files, item) if item else files.paths
        if any(p.startswith(f"{where}d/") or "ocdbt.process_" in p for p in under) \
                and not files.has(_join(item, "manifest.ocdbt")):
            return _broken(f"{where}manifest.ocdbt is {files.missing(_join(item, 'manifest.ocdbt'))} "
                           "(an OCDBT item needs it)")
        for process in sorted({p.split("/")[len(item.split("/")) if item else 0] for p in under
                               if "ocdbt.process_" in p}):
            manifest = _join(_join(item, process), "manifest.ocdbt")
            if not files.has(manifest):
                return _broken(f"{manifest} is {files.missing(manifest)} (each process's OCDBT part needs it)")
    for item in items:
        problem = _orbax_item_data(files, item)
        if problem:
            return problem
    chunks_left = [MAX_ZARR_CHUNKS]
    for array in (p for p in files.paths if _base(p) in _ZARR_ARRAY):
        try:
            data = files.json(array)
        except Unreadable as e:
            return _broken(f"{array}: {e}")
        if not isinstance(data, dict) or "shape" not in data:
            return _broken(f"{array} is not zarr array metadata (no shape)")
        problem = _zarr_chunks(files, array, data, chunks_left)
        if problem:
            return problem
    what = f"the _METADATA of {_plural(len(items), 'item')} parse{'s' if len(items) == 1 else ''}"
    if marker:
        return _ok(f"committed ({marker}); {what}")
    return _ok(f"no commit marker (Orbax before 0.5: the rename to its final name is the commit); {what}")


# --- DeepSpeed, Megatron, NeMo, Keras, Accelerate ---------------------------------------------

_DS_MODEL_STATES = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
_DS_OPTIM_STATES = re.compile(r"^(\w*?)zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")


def _deepspeed_tag_files(files: CheckpointFiles, tag: str) -> Optional[Verdict]:
    """A tag directory holds the model states of every model-parallel rank and, under ZeRO, the
    optimizer states of every data-parallel rank for each of them."""
    under = _files_under(files, tag) if tag else files.paths
    names = {_base(p) for p in under if posixpath.dirname(p) == tag}
    where = f"{tag}/" if tag else ""
    model_ranks = sorted(int(m.group(1)) for n in names if (m := _DS_MODEL_STATES.match(n)))
    if not model_ranks and not any(n.endswith("model_states.pt") for n in names):
        return _broken(f"{tag or 'the checkpoint'} holds no *model_states.pt")
    for rank in range(max(model_ranks, default=-1) + 1):
        name = f"mp_rank_{rank:02d}_model_states.pt"
        if name not in names:
            return _broken(f"{where}{name} is {files.missing(where + name)} (model-parallel ranks "
                           f"0-{max(model_ranks)} are saved)")
    grids: dict[str, set[tuple[int, int]]] = {}
    for n in names:
        m = _DS_OPTIM_STATES.match(n)
        if m:
            grids.setdefault(m.group(1), set()).add((int(m.group(2)), int(m.group(3))))
    for prefix, cells in sorted(grids.items()):
        dp, mp = max(c[0] for c in cells), max(c[1] for c in cells)
        for d in range(dp + 1):
            for m_rank in range(mp + 1):
                if (d, m_rank) not in cells:
                    name = f"{prefix}zero_pp_rank_{d}_mp_rank_{m_rank:02d}_optim_states.pt"
                    return _broken(f"{where}{name} is {files.missing(where + name)} (optimizer states of "
                                   f"{dp + 1} data-parallel ranks are saved)")
    return None


def deepspeed(files: CheckpointFiles) -> Optional[Verdict]:
    """`latest` (written after every rank saved) names a tag directory that holds model states
    of every rank; a lone `global_stepN/` directory must hold them itself."""
    if files.has(md.DEEPSPEED_LATEST):
        tag = md.deepspeed_tag(files)
        if tag is None:
            return _broken("latest names no tag directory (DeepSpeed writes the tag there last)")
        if not _files_under(files, tag):
            return _broken(f"latest names {quoted(tag)}, which is {files.missing(tag, directory=True)}")
        return _deepspeed_tag_files(files, tag) or _ok(f"latest names {tag}, which holds the model states "
                                                       "of every rank")
    if md.DEEPSPEED_LATEST in files.skipped:
        return _broken(f"latest is {files.missing(md.DEEPSPEED_LATEST)}")
    if any(_base(p).endswith("model_states.pt") for p in files.paths if "/" not in p):
        return _deepspeed_tag_files(files, "") or \
            _ok("model states of every rank present (no latest file: the tag is this directory)")
    if any(_base(p).endswith("model_states.pt") for p in files.paths):
        return _ok("model states present (no latest file)")
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
            return _broken(f"{md.MEGATRON_TRACKER} names {directory}, which is {files.missing(directory, directory=True)}")
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
            return _broken(f"context/ without weights/ (weights/ is {files.missing('weights', directory=True)})")
        if not has_context:
            return _broken("weights/ without context/ (NeMo 2 writes both)")
        return _ok("weights/ and context/ present")
    return None


_KERAS_MEMBERS = ("config.json", "model.weights.h5")


def keras(files: CheckpointFiles) -> Optional[Verdict]:
    """A `.keras` zip is whole (checked with the weight files) and holds config.json, which
    parses, and model.weights.h5."""
    archives = [p for p in files.paths if p.lower().endswith(".keras")]
    for path in archives:
        try:
            entries = files.zip_entries(path)
        except Unreadable:
            return None  # the weight-file check reports it
        missing = [n for n in _KERAS_MEMBERS if n not in entries]
        if missing:
            return _broken(f"{path} lacks {', '.join(missing)}")
        try:
            files.zip_json(path, "config.json")
        except Unreadable as e:
            return _broken(f"{path}: {e}")
    if not archives:
        return None
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
        return _broken("no random_states_0.pkl (Accelerate's save_state writes it after the model, optimizer and "
                       "scheduler)")
    return _ok("random_states_0.pkl present (Accelerate's save_state writes it last)")


# --- all together ------------------------------------------------------------------------

def verdict(files: CheckpointFiles, format_rule: Optional[Rule]) -> Verdict:
    """The checkpoint's verdict from the files it lost, its format's rule, the rules of layouts
    that can appear inside any format (DCP directories, Accelerate state) and its weight files:
    the first that says incomplete wins; else any "not checked" makes it None; else the first
    reason, with the weight files' appended."""
    lost = lost_files(files)
    if lost is not None:
        return lost
    primary = format_rule(files) if format_rule else None
    layouts = [] if format_rule is torch_dcp else [torch_dcp(files)]
    if format_rule is not huggingface:
        layouts.append(accelerate(files))
    layouts.append(numbered_shards(files))
    weights = weight_files(files)
    verdicts = [v for v in (primary, *layouts, weights) if v is not None]
    for v in verdicts:
        if v.complete is False:
            return v
    for v in verdicts:
        if v.complete is None:
            return v
    if not verdicts:
        return NO_RULE
    if weights is not None and verdicts[0] is not weights:
        return Verdict(True, f"{verdicts[0].reason}; {weights.reason}")
    return verdicts[0]


def with_notes(reason: Optional[str], notes: Iterable[str]) -> Optional[str]:
    """The verdict's reason with what was ignored (metadata that could not be read safely, a step
    out of range), as one line of at most MAX_REASON_CHARS characters."""
    parts = [reason] if reason else []
    parts.extend(notes)
    if not parts:
        return None
    line = "; ".join(parts).replace("\n", " ")
    return line if len(line) <= MAX_REASON_CHARS else line[:MAX_REASON_CHARS - 3] + "..."
