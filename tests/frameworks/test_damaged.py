"""What the real writers write is complete; damaged copies of the same files are not, and say why.

Every file here comes from the framework's own writer (safetensors, transformers' save_pretrained,
torch.save in both formats, torch DCP, Orbax, Keras, h5py, gguf, msgpack, Lightning). Each is
then damaged the ways a crash, a bad copy or a Git clone without LFS damages files: cut short
at several points, overwritten with zeros or random bytes of the same size, replaced by a Git
LFS pointer, given trailing bytes. The scan (the real `agent scan` CLI) must call the whole
ones complete and every damaged one incomplete, with a reason naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoint_operator.agent.file_checks import LFS_REASON
from frameworks_support import agent_scan

LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 123456789\n")


def damaged(data: bytes) -> dict[str, bytes]:
    """The ways a weight file is found damaged, by name."""
    return {"cut-1": data[:-1], "cut-half": data[: len(data) // 2], "cut-to-16": data[:16],
            "zeros": b"\0" * len(data), "random": os.urandom(len(data)), "lfs": LFS_POINTER,
            "tail": data + b"\0" * 7}


def copy_with(src: Path, dest: Path, rel: str, data: bytes) -> Path:
    shutil.copytree(src, dest)
    (dest / rel).write_bytes(data)
    return dest


def assert_damage_found(out: Path, whole: str, rel: str, cases: dict[str, bytes], *args: str) -> None:
    """`out/whole` is complete; each `out/<case>` (the same checkpoint with `rel` replaced) is not,
    its reason naming `rel`."""
    found = agent_scan(out, *args)
    assert found[whole]["complete"] is True, found[whole]["completeReason"]
    for case in cases:
        m = found[case]
        assert m["complete"] is False, (case, m["completeReason"])
        assert rel in m["completeReason"], (case, m["completeReason"])
        if case == "lfs":
            assert m["completeReason"].endswith(LFS_REASON), m["completeReason"]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


# --- safetensors, torch.save, DCP ------------------------------------------------------------------

def test_safetensors_of_every_dtype_and_its_damaged_copies(tmp_path):
    from safetensors.torch import save_file

    tensors = {"f32": torch.randn(7, 3), "bf16": torch.randn(5).to(torch.bfloat16), "i64": torch.arange(9),
               "bool": torch.tensor([True, False, True]), "f8": torch.randn(6).to(torch.float8_e4m3fn),
               "empty": torch.zeros(0, 4)}
    out = tmp_path / "out"
    (out / "whole").mkdir(parents=True)
    save_file(tensors, str(out / "whole" / "model.safetensors"))
    data = (out / "whole" / "model.safetensors").read_bytes()
    cases = damaged(data)
    for case, bad in cases.items():
        copy_with(out / "whole", out / case, "model.safetensors", bad)
    assert_damage_found(out, "whole", "model.safetensors", cases)


def test_torch_save_in_both_formats_and_damaged_copies(tmp_path):
    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 5,
             "view": torch.arange(10.0)[3:6], "half": torch.ones(3, dtype=torch.float16)}
    for form, zipped in (("zip", True), ("legacy", False)):
        out = tmp_path / form
        (out / "whole").mkdir(parents=True)
        torch.save(state, out / "whole" / "ckpt.pt", _use_new_zipfile_serialization=zipped)
        data = (out / "whole" / "ckpt.pt").read_bytes()
        cases = damaged(data)
        for case, bad in cases.items():
            copy_with(out / "whole", out / case, "ckpt.pt", bad)
        assert_damage_found(out, "whole", "ckpt.pt", cases)
        loaded = torch.load(out / "whole" / "ckpt.pt", weights_only=True)  # the whole one loads
        assert loaded["step"] == 5


def test_sharded_save_pretrained_and_a_damaged_shard(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=32))
    out = tmp_path / "out"
    model.save_pretrained(out / "whole", max_shard_size="100KB")
    shards = sorted(p.name for p in (out / "whole").glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "whole" / "model.safetensors.index.json").exists()
    data = (out / "whole" / shards[1]).read_bytes()
    cases = damaged(data)
    for case, bad in cases.items():
        copy_with(out / "whole", out / case, shards[1], bad)
    shutil.copytree(out / "whole", out / "shard-gone")
    (out / "shard-gone" / shards[1]).unlink()
    shutil.copytree(out / "whole", out / "config-cut")
    config = (out / "whole" / "config.json").read_bytes()
    (out / "config-cut" / "config.json").write_bytes(config[: len(config) // 2])
    assert_damage_found(out, "whole", shards[1], cases)
    found = agent_scan(out)
    assert found["shard-gone"]["completeReason"] == f"model.safetensors.index.json names {shards[1]}, which is missing"
    assert found["config-cut"]["completeReason"].startswith("config.json: not valid JSON")
    assert GPT2LMHeadModel.from_pretrained(out / "whole") is not None


def test_dcp_with_a_cut_data_file_or_a_garbled_metadata(tmp_path):
    import torch.distributed.checkpoint as dcp

    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": _model().state_dict()}, checkpoint_id=str(out / "whole"))
    (distcp,) = [p.name for p in (out / "whole").glob("*.distcp")]
    data = (out / "whole" / distcp).read_bytes()
    copy_with(out / "whole", out / "cut", distcp, data[:-10])
    metadata = (out / "whole" / ".metadata").read_bytes()
    copy_with(out / "whole", out / "meta-cut", ".metadata", metadata[: len(metadata) // 2])
    copy_with(out / "whole", out / "meta-random", ".metadata", os.urandom(len(metadata)))
    found = agent_scan(out)
    assert found["whole"]["complete"] is True
    assert found["cut"]["completeReason"] == f"{distcp} has {len(data) - 10} bytes, .metadata needs {len(data)} " \
                                            "(cut short)"
    for case in ("meta-cut", "meta-random"):
        assert found[case]["complete"] is False
        assert found[case]["completeReason"].startswith(".metadata is not a readable torch DCP metadata pickle")


# --- Orbax (OCDBT) -----------------------------------------------------------------------------------

def test_orbax_with_a_damaged_manifest_or_node_file(tmp_path):
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    out = tmp_path / "out"
    with ocp.CheckpointManager(out / "mgr") as manager:
        manager.save(1, args=ocp.args.StandardSave({"w": jnp.arange(64.0).reshape(8, 8), "b": jnp.zeros(3)}))
        manager.wait_until_finished()
    whole = out / "whole"
    shutil.move(out / "mgr" / "1", whole)
    shutil.rmtree(out / "mgr")
    manifests = sorted(str(p.relative_to(whole)) for p in whole.rglob("manifest.ocdbt"))
    nodes = sorted(str(p.relative_to(whole)) for p in whole.rglob("d/*") if p.read_bytes()[:4] == b"\x0c\xdb\x20\xde")
    assert manifests and nodes
    for rel in (manifests[0], nodes[0]):
        data = (whole / rel).read_bytes()
        tag = "manifest" if rel.endswith("manifest.ocdbt") else "node"
        copy_with(whole, out / f"{tag}-cut", rel, data[:-5])
        copy_with(whole, out / f"{tag}-flipped", rel, data[:20] + bytes([data[20] ^ 0xFF]) + data[21:])
    shutil.copytree(whole, out / "item-gone")
    shutil.rmtree(out / "item-gone" / "default")
    found = agent_scan(out)
    assert found["whole"]["complete"] is True, found["whole"]["completeReason"]
    assert "(cut short)" in found["manifest-cut"]["completeReason"]
    assert found["manifest-flipped"]["completeReason"].endswith("its CRC-32C does not match its content")
    assert "(cut short)" in found["node-cut"]["completeReason"]
    assert found["node-flipped"]["completeReason"].endswith("its CRC-32C does not match its content")
    assert found["item-gone"]["completeReason"] == \
        "_CHECKPOINT_METADATA names the item default, whose directory is not in this checkpoint"


# --- Keras, HDF5, GGUF, msgpack, Lightning ------------------------------------------------------------

def test_keras_weights_h5_and_a_plain_h5_file(tmp_path):
    import h5py
    import keras

    out = tmp_path / "out"
    (out / "whole").mkdir(parents=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.save_weights(out / "whole" / "model.weights.h5")
    with h5py.File(out / "whole" / "tf_model.h5", "w") as f:
        f.create_dataset("w", data=np.arange(4096, dtype="float32"))
    for rel in ("model.weights.h5", "tf_model.h5"):
        data = (out / "whole" / rel).read_bytes()
        copy_with(out / "whole", out / f"{rel}-cut", rel, data[: len(data) - 1000])
        copy_with(out / "whole", out / f"{rel}-lfs", rel, LFS_POINTER)
        copy_with(out / "whole", out / f"{rel}-random", rel, os.urandom(len(data)))
    found = agent_scan(out)
    assert found["whole"]["complete"] is True, found["whole"]["completeReason"]
    for rel in ("model.weights.h5", "tf_model.h5"):
        assert found[f"{rel}-cut"]["completeReason"].startswith(f"{rel}: its HDF5 superblock's end-of-file address")
        assert found[f"{rel}-lfs"]["completeReason"] == f"{rel}: {LFS_REASON}"
        assert found[f"{rel}-random"]["completeReason"] == f"{rel}: no HDF5 signature"


def test_gguf_with_a_garbled_header(tmp_path):
    import gguf

    out = tmp_path / "out"
    (out / "whole").mkdir(parents=True)
    writer = gguf.GGUFWriter(str(out / "whole" / "m.gguf"), "llama")
    writer.add_block_count(2)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("w", np.arange(256, dtype=np.float32).reshape(16, 16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = (out / "whole" / "m.gguf").read_bytes()
    cases = {k: v for k, v in damaged(data).items() if k != "tail"}  # GGUF allows trailing bytes
    for case, bad in cases.items():
        copy_with(out / "whole", out / case, "m.gguf", bad)
    assert_damage_found(out, "whole", "m.gguf", cases)
    assert len(gguf.GGUFReader(str(out / "whole" / "m.gguf")).tensors) == 1


def test_a_flax_style_msgpack_file(tmp_path):
    import msgpack

    def array(values: np.ndarray) -> msgpack.ExtType:  # as flax.serialization encodes an ndarray
        return msgpack.ExtType(1, msgpack.packb((values.shape, values.dtype.name, values.tobytes())))

    state = {"params": {"Dense_0": {"kernel": array(np.ones((16, 8), "float32")), "bias": array(np.zeros(8))}},
             "step": 12, "opt_state": [{"count": array(np.array(3))}, None]}
    out = tmp_path / "out"
    (out / "whole").mkdir(parents=True)
    (out / "whole" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (out / "whole" / "flax_model.msgpack").write_bytes(msgpack.packb(state))
    data = (out / "whole" / "flax_model.msgpack").read_bytes()
    cases = damaged(data)
    for case, bad in cases.items():
        copy_with(out / "whole", out / case, "flax_model.msgpack", bad)
    assert_damage_found(out, "whole", "flax_model.msgpack", cases)
    assert agent_scan(out)["whole"]["format"] == "huggingface"


def test_lightning_ckpt_damaged(tmp_path):
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    out = tmp_path / "out"
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[pl.callbacks.ModelCheckpoint(dirpath=str(out / "whole"), filename="last")])
    trainer.fit(Tiny(), data_loader)
    data = (out / "whole" / "last.ckpt").read_bytes()
    cases = damaged(data)
    for case, bad in cases.items():
        copy_with(out / "whole", out / case, "last.ckpt", bad)
    assert_damage_found(out, "whole", "last.ckpt", cases)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_a_git_clone_without_lfs_beside_config_json(tmp_path, name):
    out = tmp_path / "out"
    (out / "final").mkdir(parents=True)
    (out / "final" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (out / "final" / name).write_bytes(LFS_POINTER)
    m = agent_scan(out)["final"]
    assert (m["format"], m["complete"], m["completeReason"]) == ("huggingface", False, f"{name}: {LFS_REASON}")
