"""A tiny Hugging Face model layout, as `save_pretrained` writes one: config.json, a real
safetensors file (header + little-endian float32 data, written without torch), the tokenizer
files and generation_config.json. Used by every import source's tests; and a Hugging Face cache
snapshot (every file a link into ../../blobs/), as `kubectl ckpt push` meets one."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
from pathlib import Path


def safetensors_bytes(tensors: dict[str, list[float]]) -> bytes:
    header, data, offset = {}, b"", 0
    for name, values in tensors.items():
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": [len(values)], "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the header is padded to 8 bytes
    return struct.pack("<Q", len(text)) + text + data


def tiny_model(weights: int = 2048) -> dict[str, bytes]:
    """{path: bytes} of a tiny GPT-2-like model directory."""
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 1,
              "vocab_size": 16, "torch_dtype": "float32"}
    vocab = {f"t{i}": i for i in range(16)}
    return {
        "config.json": json.dumps(config, indent=2).encode(),
        "generation_config.json": b'{"bos_token_id": 0, "eos_token_id": 0}',
        "model.safetensors": safetensors_bytes({"transformer.wte.weight": [i / 7 for i in range(weights)],
                                                "lm_head.bias": [0.5] * 16}),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": vocab, "merges": []}}).encode(),
        "tokenizer_config.json": b'{"model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer"}',
        "special_tokens_map.json": b'{"eos_token": "t0"}',
    }


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def read_tree(root) -> dict[str, bytes]:
    """{relative path: bytes} of every regular file under `root`."""
    from pathlib import Path
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


# A Hugging Face cache snapshot (huggingface_hub's cache): every file a link into ../../blobs/.
WEIGHTS = os.urandom(70_000)
CONFIG = b'{"model_type": "gpt2"}'


def hf_cache_snapshot(root: Path) -> Path:
    """models--org--name/{blobs,snapshots/<rev>} as huggingface_hub's cache lays it out."""
    repo = root / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abcd"
    (snapshot / "tokenizer").mkdir(parents=True)
    for blob, data in (("b1", CONFIG), ("b2", WEIGHTS), ("b3", b'{"v": 1}')):
        (repo / "blobs" / blob).write_bytes(data)
    os.symlink("../../blobs/b1", snapshot / "config.json")
    os.symlink("../../blobs/b2", snapshot / "model.safetensors")
    os.symlink("../../../blobs/b3", snapshot / "tokenizer" / "tokenizer.json")
    return snapshot
