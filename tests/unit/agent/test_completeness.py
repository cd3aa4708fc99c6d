"""Completeness, step and resumable from the data (agent/completeness.py, metadata.py, safe_read.py,
safe_pickle.py) on files laid out as each format writes them."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest

from checkpoint_operator.agent import safe_pickle
from checkpoint_operator.agent.formats import completeness_of, describe_checkpoint
from checkpoint_operator.agent.file_checks import gguf_structure, safetensors_structure, tar_structure, zip_structure
from checkpoint_operator.agent.safe_read import MAX_METADATA_BYTES, list_files
from formats_files import (LFS_POINTER, dcp_metadata_bytes, gguf_bytes, ocdbt_bytes, safetensors_bytes, tar_bytes,
                           torch_zip_bytes, write, zip_bytes)


def describe(root: Path, name: str | None = None):
    return describe_checkpoint(root, list_files(root), root.name if name is None else name)


# --- safe_pickle ---------------------------------------------------------------------------

class Custom:
    def __init__(self):
        self.value = 3


class Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/safe-pickle-was-executed",))


def test_safe_pickle_reads_containers_and_stands_in_for_objects():
    data = pickle.dumps({"a": [1, 2.5, "x", None, True], "o": OrderedDict(k=1), "c": Custom(), "t": (1, b"b")})
    obj = safe_pickle.loads(data)
    assert obj["a"] == [1, 2.5, "x", None, True] and obj["o"] == {"k": 1} and obj["t"] == (1, b"b")
    assert isinstance(obj["c"], safe_pickle.Opaque) and obj["c"].what.endswith("Custom")
    assert safe_pickle.field(obj["c"], "value") == 3


def test_safe_pickle_never_runs_what_a_pickle_names(tmp_path):
    marker = Path("/tmp/safe-pickle-was-executed")
    marker.unlink(missing_ok=True)
    obj = safe_pickle.loads(pickle.dumps({"x": Boom()}))
    assert obj["x"].what == "posix.system" and not marker.exists()


@pytest.mark.parametrize("data", [b"", b"\x80\x02}q\x00(X\x01\x00\x00\x00a", b"garbage", pickle.dumps([1])[:-1]])
def test_safe_pickle_refuses_cut_or_malformed_pickles(data):
    with pytest.raises(safe_pickle.NotAPickle):
        safe_pickle.loads(data)


def test_safe_pickle_walk_survives_cycles():
    a: list = []
    a.append(a)
    assert len(list(safe_pickle.walk(safe_pickle.loads(pickle.dumps(a))))) == 2


# --- structural checks of weight containers ----------------------------------------------

def test_safetensors_structure(tmp_path):
    good = write(tmp_path / "a.safetensors", safetensors_bytes({"w": 100, "b": 8}))
    assert safetensors_structure(str(good)).ok
    cut = write(tmp_path / "b.safetensors", safetensors_bytes({"w": 100})[:-10])
    assert safetensors_structure(str(cut)).why.endswith("(cut short)")
    assert "not valid JSON" in safetensors_structure(str(write(tmp_path / "c", b"\x04\0\0\0\0\0\0\0{{{{"))).why
    huge = write(tmp_path / "d", (MAX_METADATA_BYTES + 1).to_bytes(8, "little") + b"{}")
    assert "(cut short)" in safetensors_structure(str(huge)).why
    assert safetensors_structure(str(write(tmp_path / "e", b""))).why == "empty (0 bytes): its save never wrote it"


def test_zip_structure_reads_only_the_end(tmp_path):
    data = torch_zip_bytes({"step": 1})
    assert zip_structure(str(write(tmp_path / "a.pt", data))).ok
    for cut in (1, 30, len(data) // 2):
        assert not zip_structure(str(write(tmp_path / f"cut{cut}.pt", data[:-cut]))).ok
    assert not zip_structure(str(write(tmp_path / "tail.pt", data + b"junk"))).ok


def test_gguf_structure(tmp_path):
    tensors = [("w", [8, 8], 0), ("h", [3, 5], 1)]
    assert gguf_structure(str(write(tmp_path / "a.gguf", gguf_bytes(tensors)))).ok
    assert "cut short" in gguf_structure(str(write(tmp_path / "b.gguf", gguf_bytes(tensors, cut=40)))).why
    assert gguf_structure(str(write(tmp_path / "c.gguf", b"GGML" + b"\0" * 40))).why == "no GGUF magic"


def test_tar_structure(tmp_path):
    data = tar_bytes({"model_config.yaml": b"a: 1\n", "model_weights.ckpt": b"w" * 5000})
    assert tar_structure(str(write(tmp_path / "a.nemo", data))).ok
    assert "cut short" in tar_structure(str(write(tmp_path / "b.nemo", data[:3000]))).why


# --- Hugging Face ----------------------------------------------------------------------------

def trainer_checkpoint(root: Path, *, state: str | None = '{"global_step": 10}') -> Path:
    write(root / "config.json", "{}")
    write(root / "model.safetensors", safetensors_bytes({"w": 64}))
    write(root / "optimizer.pt", torch_zip_bytes({"state": {}, "param_groups": []}))
    write(root / "scheduler.pt", torch_zip_bytes({}))
    if state is not None:
        write(root / "trainer_state.json", state)
    return root


def test_trainer_checkpoint_is_complete_with_its_trainer_state(tmp_path):
    d = describe(trainer_checkpoint(tmp_path / "checkpoint-10"))
    assert (d.format, d.step, d.resumable, d.complete) == ("huggingface", 10, True, True)
    assert d.completeReason.startswith("trainer_state.json is present and valid")
    assert d.completeReason.endswith("3 weight files whole (headers and ends agree with sizes)")


@pytest.mark.parametrize("state, reason", [
    (None, "missing trainer_state.json (a Trainer checkpoint writes it last)"),
    ('{"global_step": 1', "trainer_state.json: not valid JSON (Expecting ',' delimiter at line 1 column 18)"),
])
def test_trainer_checkpoint_without_a_valid_trainer_state_is_incomplete(tmp_path, state, reason):
    d = describe(trainer_checkpoint(tmp_path / "checkpoint-10", state=state))
    assert (d.complete, d.completeReason) == (False, reason)


def test_a_cut_optimizer_file_makes_it_incomplete_even_with_a_trainer_state(tmp_path):
    root = trainer_checkpoint(tmp_path / "checkpoint-10")
    data = (root / "optimizer.pt").read_bytes()
    write(root / "optimizer.pt", data[: len(data) // 2])
    d = describe(root)
    assert d.complete is False and d.completeReason.startswith("optimizer.pt: no end-of-central-directory")


def test_a_model_directory_is_complete_when_every_indexed_shard_is_present(tmp_path):
    root = tmp_path / "final"
    write(root / "config.json", "{}")
    write(root / "model-00001-of-00002.safetensors", safetensors_bytes({"a": 4}))
    write(root / "model.safetensors.index.json", json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    d = describe(root)
    assert (d.format, d.complete) == ("huggingface", False)
    assert d.completeReason == "model.safetensors.index.json names model-00002-of-00002.safetensors, which is missing"
    write(root / "model-00002-of-00002.safetensors", safetensors_bytes({"b": 4}))
    assert describe(root).complete is True


def test_a_saved_model_named_like_a_step_is_not_held_to_the_trainer_rule(tmp_path):
    root = tmp_path / "checkpoint-5"
    write(root / "config.json", "{}")
    write(root / "model.safetensors", safetensors_bytes({"w": 4}))
    assert describe(root).complete is True


def test_a_huge_trainer_state_is_not_read(tmp_path):
    root = trainer_checkpoint(tmp_path / "checkpoint-1", state="{}")
    with open(root / "trainer_state.json", "wb") as f:
        f.truncate(MAX_METADATA_BYTES + 1)
    assert describe(root).complete is False


# --- torch DCP -------------------------------------------------------------------------------

def dcp_checkpoint(root: Path, keys=("model.w", "optim.state.w.exp_avg", "optim.param_groups.0.lr"),
                   files=(("__0_0.distcp", 100),)) -> Path:
    storage = [(name, 0, size) for name, size in files]
    write(root / ".metadata", dcp_metadata_bytes(list(keys), storage))
    for name, size in files:
        write(root / name, b"\0" * size)
    return root


def test_dcp_metadata_names_the_optimizer_and_every_data_file(tmp_path):
    d = describe(dcp_checkpoint(tmp_path / "step-4"))
    assert (d.format, d.step, d.resumable, d.complete) == ("torch-dcp", 4, True, True)
    assert describe(dcp_checkpoint(tmp_path / "w", keys=("model.w", "model.b"))).resumable is False


def test_dcp_incomplete_cases(tmp_path):
    root = dcp_checkpoint(tmp_path / "a", files=(("__0_0.distcp", 100), ("__1_0.distcp", 50)))
    (root / "__1_0.distcp").unlink()
    assert describe(root).completeReason == "__1_0.distcp is named by .metadata but missing"
    root = dcp_checkpoint(tmp_path / "b")
    write(root / "__0_0.distcp", b"\0" * 10)
    assert describe(root).completeReason == "__0_0.distcp has 10 bytes, .metadata needs 100 (cut short)"
    root = dcp_checkpoint(tmp_path / "c")
    (root / ".metadata").rename(root / ".metadata.tmp")
    assert describe(root).completeReason == ".metadata.tmp but no .metadata: the save was still writing it"
    root = dcp_checkpoint(tmp_path / "e")
    (root / ".metadata").rename(root / "__0.metadata")  # saved without rank coordination
    assert describe(root).complete is True
    write(tmp_path / "d" / "__0_0.distcp", b"x")
    assert describe(tmp_path / "d").completeReason == "no .metadata beside the .distcp files (torch DCP writes it last)"


# --- Orbax -----------------------------------------------------------------------------------

def orbax_step(root: Path, *, committed=True, keys=(("params", "w"), ("opt_state", "0", "mu", "w"))) -> Path:
    meta = {"item_handlers": {"default": "x"}, "commit_timestamp_nsecs": 1 if committed else None}
    write(root / "_CHECKPOINT_METADATA", json.dumps(meta))
    tree = {str(k): {"key_metadata": [{"key": p, "key_type": 2} for p in k]} for k in keys}
    write(root / "default" / "_METADATA", json.dumps({"tree_metadata": tree}))
    write(root / "default" / "manifest.ocdbt", ocdbt_bytes())
    write(root / "default" / "d" / "abc", b"data")
    return root


def test_orbax_single_item_save_is_resumable_from_its_metadata_keys(tmp_path):
    d = describe(orbax_step(tmp_path / "5"))
    assert (d.format, d.step, d.resumable, d.complete) == ("orbax", 5, True, True)
    assert describe(orbax_step(tmp_path / "6", keys=(("params", "w"),))).resumable is False


def test_orbax_incomplete_cases(tmp_path):
    assert "never finalized" in describe(orbax_step(tmp_path / "1", committed=False)).completeReason
    root = orbax_step(tmp_path / "2", committed=False)
    write(root / "commit_success.txt", "ok")
    assert describe(root).complete is True
    root = orbax_step(tmp_path / "3")
    (root / "default" / "manifest.ocdbt").unlink()
    assert describe(root).completeReason == "default/manifest.ocdbt is missing (an OCDBT item needs it)"
    root = orbax_step(tmp_path / "4")
    write(root / "opt_state.orbax-checkpoint-tmp-17" / "_METADATA", "{}")
    assert "temporary name" in describe(root).completeReason


# --- DeepSpeed, Megatron, NeMo, Keras, Accelerate, torch, Lightning ------------------------

def test_deepspeed_latest_names_its_tag(tmp_path):
    root = tmp_path / "ds"
    write(root / "latest", "global_step20\n")
    write(root / "zero_to_fp32.py", "#")
    write(root / "global_step20" / "mp_rank_00_model_states.pt", torch_zip_bytes({}))
    write(root / "global_step20" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", torch_zip_bytes({}))
    d = describe(root)
    assert (d.format, d.step, d.resumable, d.complete) == ("deepspeed", 20, True, True)
    write(root / "latest", "global_step30")
    assert describe(root).completeReason == "latest names global_step30, which is not in this checkpoint"


def test_megatron_tracker_names_its_iteration(tmp_path):
    root = tmp_path / "megatron"
    write(root / "latest_checkpointed_iteration.txt", "100")
    write(root / "iter_0000100" / "mp_rank_00" / "model_optim_rng.pt",
          torch_zip_bytes({"iteration": 100, "optimizer": {"state": {}}, "model": {}}))
    d = describe(root)
    assert (d.format, d.step, d.resumable, d.complete) == ("megatron", 100, True, True)
    write(root / "latest_checkpointed_iteration.txt", "200")
    assert describe(root).completeReason == \
        "latest_checkpointed_iteration.txt names iter_0000200, which is not in this checkpoint"
    lone = tmp_path / "iter_0000300"
    write(lone / "mp_rank_00" / "model_optim_rng.pt", torch_zip_bytes({"iteration": 300, "model": {}}))
    assert (describe(lone).format, describe(lone).step, describe(lone).resumable) == ("megatron", 300, False)


def test_nemo(tmp_path):
    write(tmp_path / "a" / "model-step=7.nemo", tar_bytes({"model_config.yaml": b"x"}))
    d = describe(tmp_path / "a", "")
    assert (d.format, d.complete) == ("nemo", True)
    dcp_checkpoint(tmp_path / "b" / "weights", keys=("optimizer.state.w",))
    d = describe(tmp_path / "b", "megatron_gpt--step=9-last")
    assert (d.format, d.step, d.resumable, d.complete) == ("nemo", 9, True, False)
    assert d.completeReason == "weights/ without context/ (NeMo 2 writes both)"
    write(tmp_path / "b" / "context" / "io.json", "{}")
    assert describe(tmp_path / "b").complete is True


def test_keras_archive(tmp_path):
    config = json.dumps({"compile_config": {"optimizer": "adam"}}).encode()
    write(tmp_path / "m.keras", zip_bytes({"config.json": config, "model.weights.h5": b"h5", "metadata.json": b"{}"}))
    d = describe_checkpoint(tmp_path, {"m.keras": (tmp_path / "m.keras").stat().st_size}, "")
    assert (d.format, d.resumable, d.complete) == ("keras", True, True)
    write(tmp_path / "n.keras", zip_bytes({"config.json": b"{}"}))
    d = describe_checkpoint(tmp_path, {"n.keras": (tmp_path / "n.keras").stat().st_size}, "")
    assert (d.resumable, d.completeReason) == (False, "n.keras lacks model.weights.h5")


def test_accelerate_save_state_needs_its_last_file(tmp_path):
    root = tmp_path / "checkpoint_3"
    write(root / "model.safetensors", safetensors_bytes({"w": 8}))
    write(root / "optimizer.bin", torch_zip_bytes({"state": {}, "param_groups": []}))
    d = describe(root)
    assert (d.format, d.step, d.resumable, d.complete) == ("safetensors", 3, True, False)
    write(root / "random_states_0.pkl", torch_zip_bytes({"python": 1}))
    assert describe(root).complete is True
    # Not Accelerate's: an optimizer.bin of another writer (examples/local/train.py saves safetensors
    # bytes under that name beside a trainer_state.json).
    other = tmp_path / "step-1"
    write(other / "model.safetensors", safetensors_bytes({"w": 8}))
    write(other / "optimizer.bin", safetensors_bytes({"m": 8}))
    assert describe(other).complete is True
    write(other / "optimizer.bin", torch_zip_bytes({"state": {}}))
    write(other / "trainer_state.json", '{"global_step": 1}')
    assert describe(other).complete is True


def test_torch_save_pickle_gives_step_and_optimizer_state(tmp_path):
    write(tmp_path / "a" / "ckpt.pt", torch_zip_bytes({"model": {}, "optimizer": {"state": {}, "param_groups": []},
                                                      "step": 12}, archive="ckpt"))
    d = describe(tmp_path / "a", "")
    assert (d.format, d.step, d.resumable, d.complete) == ("torch", 12, True, True)
    write(tmp_path / "b" / "w.pt", torch_zip_bytes({"model": {}, "optimizer": None}))
    assert describe(tmp_path / "b", "").resumable is False
    write(tmp_path / "c" / "empty.pt", b"")
    assert describe(tmp_path / "c", "").completeReason == "empty.pt: empty (0 bytes): its save never wrote it"


def test_ckpt_files_are_lightning_only_when_their_pickle_says_so(tmp_path):
    write(tmp_path / "a" / "last.ckpt", torch_zip_bytes({"pytorch-lightning_version": "2.6", "global_step": 40,
                                                        "optimizer_states": [{"state": {}}], "state_dict": {}}))
    d = describe(tmp_path / "a", "")
    assert (d.format, d.step, d.resumable, d.complete) == ("lightning", 40, True, True)
    write(tmp_path / "b" / "model.ckpt", torch_zip_bytes({"state_dict": {}}))
    assert describe(tmp_path / "b", "").format == "torch"
    write(tmp_path / "c" / "model.ckpt", b"not a zip")
    assert describe(tmp_path / "c", "").format == "lightning"


def test_no_rule_means_complete_is_none(tmp_path):
    write(tmp_path / "a" / "notes.txt", "x")
    write(tmp_path / "a" / "data.npz", "y")
    d = describe(tmp_path / "a")
    assert (d.format, d.complete) == ("unknown", None)
    assert d.completeReason == "not checked: no completeness check applies to these files (format unknown)"


def test_completeness_of_is_the_verdict_describe_gives(tmp_path):
    root = trainer_checkpoint(tmp_path / "checkpoint-10", state=None)
    verdict = completeness_of(root, list_files(root), root.name)
    d = describe(root)
    assert (verdict.complete, verdict.reason) == (d.complete, d.completeReason)


def test_the_local_example_writes_complete_resumable_checkpoints(tmp_path):
    import subprocess
    import sys

    from checkpoint_operator.agent.scan import scan_directory
    example = Path(__file__).resolve().parents[3] / "examples" / "local" / "train.py"
    env = {**os.environ, "CHECKPOINT_OUTPUT_DIR": str(tmp_path), "STEPS": "200", "SAVE_EVERY": "100"}
    env.pop("CHECKPOINT_INPUT_PATH", None)
    subprocess.run([sys.executable, str(example)], env=env, check=True, capture_output=True, timeout=120)
    found = {m.path: (m.format, m.step, m.resumable, m.complete) for m in scan_directory(tmp_path).checkpoints}
    assert found == {"step-100": ("safetensors", 100, True, True), "step-200": ("safetensors", 200, True, True)}


# --- complete means the files are what their format says (issue 18 item 2) ---------------------

NOT_WEIGHTS = {
    "random bytes": bytes(range(256)) * 4,
    "zeros": b"\0" * 1024,
    "ASCII text": b"weights go here\n" * 10,
    "a Git LFS pointer": LFS_POINTER,
}


@pytest.mark.parametrize("what", sorted(NOT_WEIGHTS))
def test_a_model_directory_whose_weights_are_not_weights_is_incomplete(tmp_path, what):
    root = tmp_path / "final"
    write(root / "config.json", json.dumps({"model_type": "gpt2"}))
    write(root / "model.safetensors", NOT_WEIGHTS[what])
    d = describe(root)
    assert (d.format, d.complete) == ("huggingface", False)
    assert d.completeReason.startswith("model.safetensors: ")
    if what == "a Git LFS pointer":
        assert d.completeReason == "model.safetensors: a Git LFS pointer, not the weights: fetch with git lfs pull"


def test_a_cut_shard_of_an_index_and_a_garbled_config(tmp_path):
    root = tmp_path / "final"
    write(root / "config.json", "{}")
    shard, second = safetensors_bytes({"a": 64}), safetensors_bytes({"b": 64})
    write(root / "model-00001-of-00002.safetensors", shard)
    write(root / "model-00002-of-00002.safetensors", second[:-1])
    write(root / "model.safetensors.index.json", json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    assert describe(root).completeReason == \
        "model-00002-of-00002.safetensors: its header's tensors need 134 bytes, the file has 133 (cut short)"
    write(root / "model-00002-of-00002.safetensors", second)
    assert describe(root).complete is True
    write(root / "config.json", '{"model_type": ')
    assert describe(root).completeReason.startswith("config.json: not valid JSON")
    write(root / "config.json", "{}")
    write(root / "model.safetensors.index.json", json.dumps({"weight_map": {"a": ["x"]}}))
    assert describe(root).completeReason == \
        "model.safetensors.index.json: its weight_map names a shard that is not a file name"


@pytest.mark.parametrize("content, why", [
    (b"\x13" * 64, "not checked: data.bin: content of a kind this check does not know"),
    (gzip.compress(tar_bytes({"a": b"1"}), mtime=0), None),
], ids=["unknown-content", "gzip-tar"])  # the ids, not the bytes: xdist's workers must collect the same names
def test_what_cannot_be_checked_is_null_never_true(tmp_path, content, why):
    root = tmp_path / "step-1"
    write(root / "model.safetensors", safetensors_bytes({"w": 8}))
    name = "data.bin" if why else "model.nemo"
    write(root / name, content)
    d = describe(root)
    assert d.complete is None and d.completeReason.startswith(why or "not checked: model.nemo: gzip-compressed")


def test_deepspeed_tag_needs_every_rank(tmp_path):
    root = tmp_path / "ds"
    write(root / "latest", "global_step20")
    for name in ("mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt",
                 "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt",
                 "zero_pp_rank_0_mp_rank_01_optim_states.pt", "zero_pp_rank_1_mp_rank_01_optim_states.pt"):
        write(root / "global_step20" / name, torch_zip_bytes({}))
    assert describe(root).complete is True
    (root / "global_step20" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    assert describe(root).completeReason == ("global_step20/zero_pp_rank_1_mp_rank_00_optim_states.pt is missing "
                                             "(optimizer states of 2 data-parallel ranks are saved)")
    (root / "global_step20" / "mp_rank_00_model_states.pt").unlink()
    assert describe(root).completeReason == ("global_step20/mp_rank_00_model_states.pt is missing (model-parallel "
                                             "ranks 0-1 are saved)")


def test_orbax_items_and_layout(tmp_path):
    root = orbax_step(tmp_path / "5")
    meta = json.loads((root / "_CHECKPOINT_METADATA").read_text())
    write(root / "_CHECKPOINT_METADATA", json.dumps({**meta, "item_handlers": {"default": "x", "opt_state": "y"}}))
    assert describe(root).completeReason == \
        "_CHECKPOINT_METADATA names the item opt_state, whose directory is not in this checkpoint"
    root = orbax_step(tmp_path / "6")
    write(root / "default" / "ocdbt.process_0" / "d" / ("a" * 32), ocdbt_bytes(b"n", magic=0x0CDB20DE))
    assert describe(root).completeReason == \
        "default/ocdbt.process_0/manifest.ocdbt is missing (each process's OCDBT part needs it)"
    write(root / "default" / "ocdbt.process_0" / "manifest.ocdbt", ocdbt_bytes()[:-1])
    assert "default/ocdbt.process_0/manifest.ocdbt: its OCDBT header says" in describe(root).completeReason
    root = orbax_step(tmp_path / "7")
    write(root / "default" / "w" / ".zarray", '{"chunks": [1]')
    assert describe(root).completeReason.startswith("default/w/.zarray: not valid JSON")


# --- what a symlink out of the checkpoint took away (issue 18 item 1, in the cluster) -----------

def test_a_weight_file_linked_from_outside_is_not_part_of_the_checkpoint(tmp_path):
    from checkpoint_operator.agent.scan import scan_directory

    blobs = tmp_path / "blobs"
    write(blobs / "weights", safetensors_bytes({"w": 64}))
    out = tmp_path / "out"
    write(out / "final" / "config.json", "{}")
    (out / "final" / "model.safetensors").symlink_to(blobs / "weights")
    write(out / "step-2" / "config.json", "{}")
    write(out / "step-2" / "model-00001-of-00002.safetensors", safetensors_bytes({"a": 4}))
    (out / "step-2" / "model-00002-of-00002.safetensors").symlink_to("../../blobs/weights")
    write(out / "step-2" / "model.safetensors.index.json", json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    dcp_checkpoint(out / "step-3", files=(("__0_0.distcp", 100), ("__1_0.distcp", 10)))
    (out / "step-3" / "__1_0.distcp").unlink()
    write(blobs / "shard", b"\0" * 10)
    (out / "step-3" / "__1_0.distcp").symlink_to(blobs / "shard")
    write(out / "ds" / "latest", "global_step5")
    write(blobs / "tag" / "mp_rank_00_model_states.pt", torch_zip_bytes({}))
    (out / "ds" / "global_step5").symlink_to(blobs / "tag")
    result = scan_directory(out)
    found = {m.path: (m.format, m.complete, m.completeReason) for m in result.checkpoints}
    leaves = "symlink leaves the checkpoint"
    assert found["final"] == ("huggingface", False, f"model.safetensors is not part of the checkpoint ({leaves})")
    assert found["step-2"] == ("huggingface", False,
                               f"model-00002-of-00002.safetensors is not part of the checkpoint ({leaves})")
    assert found["step-3"] == ("torch-dcp", False, f"__1_0.distcp is not part of the checkpoint ({leaves})")
    assert found["ds"] == ("deepspeed", False, f"latest names global_step5, which is not part of the checkpoint "
                                               f"({leaves})")
    assert {s.path for s in result.skipped} >= {"final/model.safetensors", "step-3/__1_0.distcp", "ds/global_step5"}


def test_a_link_inside_the_checkpoint_is_the_file_it_names(tmp_path):
    from checkpoint_operator.agent.scan import scan_directory

    out = tmp_path / "out"
    write(out / "final" / "config.json", "{}")
    write(out / "final" / "blobs" / "w", safetensors_bytes({"w": 64}))
    (out / "final" / "model.safetensors").symlink_to("blobs/w")
    (manifest,) = scan_directory(out).checkpoints
    assert (manifest.complete, manifest.format) == (True, "huggingface")


def test_a_root_weight_file_linked_from_outside_leaves_the_final_model_incomplete(tmp_path):
    from checkpoint_operator.agent.scan import scan_directory

    write(tmp_path / "elsewhere.safetensors", safetensors_bytes({"w": 8}))
    out = tmp_path / "out"
    write(out / "config.json", "{}")
    (out / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    (manifest,) = scan_directory(out).checkpoints
    assert (manifest.path, manifest.complete) == (".", False)
    assert manifest.completeReason == "model.safetensors is not part of the checkpoint (symlink leaves the checkpoint)"


# --- steps the status can hold (issue 18 item 12) ------------------------------------------------

def test_a_step_beyond_int64_is_no_step_with_a_reason(tmp_path):
    root = tmp_path / "step-99999999999999999999"
    write(root / "model.safetensors", safetensors_bytes({"w": 8}))
    d = describe(root)
    assert (d.step, d.complete) == (None, True)
    assert d.completeReason.endswith("ignored: step 99999999999999999999 in the checkpoint's name is beyond int64: "
                                     "not used as the step")
    root = trainer_checkpoint(tmp_path / "final", state='{"global_step": 9223372036854775808}')
    d = describe(root, "")
    assert d.step is None and "global_step 9223372036854775808 is beyond int64" in d.completeReason
    root = trainer_checkpoint(tmp_path / "last", state='{"global_step": 9223372036854775807}')
    assert describe(root, "").step == 2**63 - 1
    write(tmp_path / "m" / "latest_checkpointed_iteration.txt", "1" * 30)
    write(tmp_path / "m" / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt", torch_zip_bytes({}))
    d = describe(tmp_path / "m", "")
    assert (d.step, d.complete) == (None, False)
    assert "latest_checkpointed_iteration.txt holds neither an iteration number nor 'release'" in d.completeReason
