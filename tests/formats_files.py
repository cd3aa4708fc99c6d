"""Hand-made files of each format, byte for byte as their writers lay them out, for unit tests
that run without the frameworks installed (tests/frameworks/ uses the real writers)."""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile
import types
import zipfile
from pathlib import Path


def write(path: Path, data: bytes | str = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def safetensors_bytes(tensors: dict[str, int]) -> bytes:
    """A safetensors file: tensors by name -> byte length (dtype U8)."""
    header, offset = {}, 0
    for name, length in tensors.items():
        header[name] = {"dtype": "U8", "shape": [length], "data_offsets": [offset, offset + length]}
        offset += length
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"\0" * offset


def torch_zip_bytes(obj, archive: str = "archive") -> bytes:
    """A torch.save-style zip: `<archive>/data.pkl` holding the pickle, stored uncompressed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", pickle.dumps(obj, protocol=2))
        z.writestr(f"{archive}/version", "3\n")
        z.writestr(f"{archive}/data/0", b"\0" * 64)
    return buffer.getvalue()


def dcp_metadata_bytes(keys: list[str], storage: list[tuple[str, int, int]]) -> bytes:
    """A torch DCP `.metadata` pickle: Metadata(state_dict_metadata, storage_data), its items as
    objects with fields (SimpleNamespace pickles as class + BUILD state, as the dataclasses do)."""
    state = {"state_dict_metadata": {k: types.SimpleNamespace(size=[1]) for k in keys},
             "storage_data": {("index", i): types.SimpleNamespace(
                 relative_path=path, offset=offset, length=length) for i, (path, offset, length) in enumerate(storage)},
             "version": "1.0.0"}
    body = pickle.dumps(state, protocol=2)[2:-1]  # without PROTO and STOP
    return b"\x80\x02ctorch.distributed.checkpoint.metadata\nMetadata\n)\x81" + body + b"b."


def gguf_bytes(tensors: list[tuple[str, list[int], int]], alignment: int = 32, cut: int = 0) -> bytes:
    """A GGUF v3 file: (name, dims, ggml type) tensors laid out one after the other."""
    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()
    sizes = {0: 4, 1: 2}
    kv = string("general.architecture") + struct.pack("<I", 8) + string("llama")
    kv += string("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, 3) + struct.pack("<3f", 0, 1, 2)
    infos, offset, data = b"", 0, b""
    for name, dims, kind in tensors:
        n = 1
        for d in dims:
            n *= d
        infos += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", kind, offset)
        length = n * sizes[kind]
        pad = -length % alignment
        data += b"\1" * length + b"\0" * pad
        offset += length + pad
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 2) + kv + infos
    head += b"\0" * (-len(head) % alignment)
    out = head + data
    return out[:len(out) - cut] if cut else out


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()
