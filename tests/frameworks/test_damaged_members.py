"""Damage that leaves a file's outer structure whole: what the framework's own reader refuses,
the scan calls incomplete, naming the file and the part that is wrong.

Each good case comes from the framework's writer (torch.save, save_pretrained, Orbax); each bad
case is the same output damaged inside: a torch zip whose central directory is whole but whose
members are missing, short or cut; a sharded save_pretrained killed after some shards; a shard
of another model under the index's name; an Orbax item that lost an array or a chunk. Every bad
case is first shown to be refused by the real reader, so the test asserts what a user would hit.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

from frameworks_support import agent_scan


def _refused(load: Callable[[], object]) -> bool:
    try:
        load()
    except Exception:  # noqa: BLE001 - any failure of the real reader is a refusal
        return True
    return False


# --- torch.save zips whose members are damaged ------------------------------------------------

def _rewritten(src: Path, dest: Path, change: Callable[[str, bytes], Optional[bytes]]) -> None:
    """`src`'s zip rewritten member by member (None drops a member): the central directory is
    written anew, so it is whole whatever happened to the members."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)


def _cut_before_central_directory(src: Path, dest: Path, k: int) -> None:
    """`src` with the last k bytes before its central directory removed and the directory's
    offsets moved to match: a zip whose last member is cut but whose end records agree."""
    b = bytearray(src.read_bytes())
    eocd, locator = b.rfind(b"PK\x05\x06"), b.rfind(b"PK\x06\x07")
    z64 = struct.unpack_from("<Q", b, locator + 8)[0]
    cd_offset = struct.unpack_from("<Q", b, z64 + 48)[0]
    out = b[:cd_offset - k] + b[cd_offset:]
    struct.pack_into("<Q", out, z64 - k + 48, cd_offset - k)
    struct.pack_into("<Q", out, locator - k + 8, z64 - k)
    if struct.unpack_from("<I", out, eocd - k + 16)[0] != 0xFFFFFFFF:
        struct.pack_into("<I", out, eocd - k + 16, cd_offset - k)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(bytes(out))


def test_torch_zips_with_whole_directories_and_damaged_members(tmp_path):
    out = tmp_path / "out"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    good = out / "whole" / "model.pt"
    good.parent.mkdir(parents=True)
    torch.save(model.state_dict(), good)
    storage = "model/data/0"  # the first weight's storage
    cases: dict[str, Callable[[Path], None]] = {
        "rewritten": lambda d: _rewritten(good, d, lambda n, b: b),
        "no-storage": lambda d: _rewritten(good, d, lambda n, b: None if n == storage else b),
        "short-storage": lambda d: _rewritten(good, d, lambda n, b: b[:4] if n == storage else b),
        "empty-storage": lambda d: _rewritten(good, d, lambda n, b: b"" if n == storage else b),
        "no-data-pkl": lambda d: _rewritten(good, d, lambda n, b: None if n.endswith("data.pkl") else b),
        "garbage-data-pkl": lambda d: _rewritten(good, d, lambda n, b: b"garbage" if n.endswith("data.pkl") else b),
        "last-member-cut": lambda d: _cut_before_central_directory(good, d, 40),
    }
    for name, make in cases.items():
        make(out / name / "model.pt")
    assert not _refused(lambda: torch.load(out / "rewritten" / "model.pt"))
    for name in cases:
        if name != "rewritten":
            assert _refused(lambda path=out / name / "model.pt": torch.load(path)), name

    found = agent_scan(out)
    for name in ("whole", "rewritten"):
        assert found[name]["complete"] is True, found[name]["completeReason"]
    expected = {
        "no-storage": "member model/data/0 is missing",
        "short-storage": "member model/data/0 holds 4 bytes, model/data.pkl says",
        "empty-storage": "member model/data/0 holds 0 bytes",
        "no-data-pkl": "no <archive>/data.pkl member",
        "garbage-data-pkl": "member model/data.pkl: not a readable pickle",
        "last-member-cut": "entry model/.data/serialization_id: its 40 bytes of data end at",
    }
    for name, why in expected.items():
        m = found[name]
        assert m["complete"] is False, (name, m["completeReason"])
        assert m["completeReason"].startswith(f"model.pt: {why}"), (name, m["completeReason"])


# --- sharded save_pretrained: killed part way, or a shard of another save --------------------

def _gpt2(width: int):
    import transformers

    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(n_embd=width, n_layer=2, n_head=2, vocab_size=100, n_positions=16)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def _loads(path: Path) -> bool:
    import transformers

    return not _refused(lambda: transformers.GPT2LMHeadModel.from_pretrained(path))


def _as_torch_shards(directory: Path) -> None:
    """A sharded safetensors save rewritten as transformers 4's `safe_serialization=False` wrote
    it: each shard's tensors torch.save'd to `pytorch_model-0000k-of-0000N.bin`, and
    `pytorch_model.bin.index.json` naming them."""
    import json

    from safetensors.torch import load_file

    index = json.loads((directory / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        torch.save(load_file(directory / shard), directory / shard.replace("model", "pytorch_model", 1)
                   .replace(".safetensors", ".bin"))
        (directory / shard).unlink()
    index["weight_map"] = {k: v.replace("model", "pytorch_model", 1).replace(".safetensors", ".bin")
                           for k, v in index["weight_map"].items()}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (directory / "model.safetensors.index.json").unlink()


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_sharded_save_pretrained_killed_part_way_or_given_a_shard_of_another_save(tmp_path, safe):
    ext = "safetensors" if safe else "bin"
    prefix = "model" if safe else "pytorch_model"
    out, other = tmp_path / "out", tmp_path / "other"
    whole = out / "whole"
    _gpt2(32).save_pretrained(whole, max_shard_size="20KB")
    _gpt2(64).save_pretrained(other, max_shard_size="20KB")
    if not safe:  # transformers 5 writes safetensors only: the .bin shards as transformers 4 wrote them
        _as_torch_shards(whole)
        _as_torch_shards(other)
    shards = sorted(whole.glob(f"{prefix}-*-of-*.{ext}"))
    n = len(shards)
    assert n >= 4 and (whole / f"{prefix}.{ext}.index.json").exists()

    def variant(name: str) -> Path:
        return Path(shutil.copytree(whole, out / name))

    killed = variant("killed-after-3")  # save_pretrained writes the shards, then the index
    (killed / f"{prefix}.{ext}.index.json").unlink()
    for shard in shards[3:]:
        (killed / shard.name).unlink()
    no_index = variant("all-shards-no-index")
    (no_index / f"{prefix}.{ext}.index.json").unlink()
    foreign = variant("shard-of-another-save")
    shutil.copy(sorted(other.glob(f"{prefix}-*-of-*.{ext}"))[2], foreign / shards[2].name)
    swapped = variant("swapped-shards")  # the same tensors in other files: transformers loads it
    (swapped / shards[1].name).write_bytes(shards[2].read_bytes())
    (swapped / shards[2].name).write_bytes(shards[1].read_bytes())

    assert _loads(whole) and _loads(swapped)
    for bad in (killed, no_index, foreign):
        assert not _loads(bad), bad.name

    found = agent_scan(out)
    for name in ("whole", "swapped-shards"):
        assert found[name]["complete"] is True, (name, found[name]["completeReason"])
    assert found["killed-after-3"]["complete"] is False
    assert found["killed-after-3"]["completeReason"].startswith(
        f"{prefix}-00004-of-{n:05d}.{ext} is missing (shards 1-{n} of {prefix} are named; 3 are present)")
    assert found["all-shards-no-index"]["complete"] is False
    assert found["all-shards-no-index"]["completeReason"].startswith(f"{prefix}.{ext}.index.json is missing")
    m = found["shard-of-another-save"]
    assert m["complete"] is False
    assert m["completeReason"].startswith(f"{shards[2].name} lacks the tensor "), m["completeReason"]
    assert "no other shard holds it" in m["completeReason"]


# --- Orbax: an item that lost an array, a chunk, or its OCDBT data files -----------------------

def test_orbax_items_missing_an_array_a_chunk_or_their_data_files(tmp_path):
    import os
    import warnings

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    warnings.filterwarnings("ignore")
    state = {"params": {"w": jnp.ones((64, 32)), "b": jnp.zeros((32,))}, "opt_state": {"mu": jnp.ones((8,))}}
    out = tmp_path / "out"
    zarr, ocdbt = out / "zarr-1", out / "ocdbt-2"
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False))
    checkpointer.save(zarr, args=ocp.args.PyTreeSave(state))
    checkpointer.close()
    with ocp.StandardCheckpointer() as standard:
        standard.save(ocdbt, state)
    damaged = {
        "zarr-3-no-array": (zarr, lambda d: shutil.rmtree(d / "params.w")),
        "zarr-4-no-chunk": (zarr, lambda d: (d / "params.w" / "0.0").unlink()),
        "ocdbt-5-no-root-d": (ocdbt, lambda d: shutil.rmtree(d / "d")),
    }
    # Restore reads the root's merged tree: a process's own d/ may go (complete, as it restores).
    shutil.rmtree(Path(shutil.copytree(ocdbt, out / "ocdbt-6-no-process-d")) / "ocdbt.process_0" / "d")
    for name, (src, damage) in damaged.items():
        damage(Path(shutil.copytree(src, out / name)))

    def restores(path: Path) -> bool:
        return not _refused(lambda: ocp.StandardCheckpointer().restore(path))

    assert restores(zarr) and restores(ocdbt) and restores(out / "ocdbt-6-no-process-d")
    for name in damaged:
        assert not restores(out / name), name

    found = agent_scan(out)
    for name in ("zarr-1", "ocdbt-2", "ocdbt-6-no-process-d"):
        assert found[name]["complete"] is True, (name, found[name]["completeReason"])
    expected = {
        "zarr-3-no-array": "_METADATA names the array params.w, whose params.w/ is not in this checkpoint",
        "zarr-4-no-chunk": "params.w/0.0 is missing (a chunk of params.w, which has no fill value to stand in for it)",
        "ocdbt-5-no-root-d": "manifest.ocdbt has no data files in d/ (its B-tree nodes are missing)",
    }
    for name, why in expected.items():
        m = found[name]
        assert m["complete"] is False and m["completeReason"].startswith(why), (name, m["completeReason"])
