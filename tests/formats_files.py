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
    """A torch.save-style zip: `<archive>/data.pkl` holding the pickle, stored uncompressed (the
    same bytes for the same object: entries dated 1980-01-01, as torch.save's miniz writes them)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for name, data in ((f"{archive}/data.pkl", pickle.dumps(obj, protocol=2)), (f"{archive}/version", b"3\n"),
                           (f"{archive}/data/0", b"\0" * 64)):
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def weights(data: bytes = b"w") -> bytes:
    """A valid safetensors file whose one U8 tensor holds `data`: a checkpoint's weights for tests
    whose checkpoints must be complete (a `model.safetensors` of arbitrary bytes is not)."""
    text = json.dumps({"w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}).encode()
    return struct.pack("<Q", len(text)) + text + data


def torch_file(marker: object = "o") -> bytes:
    """A valid torch.save file (a zip) holding `{"marker": marker}`: an optimizer.pt, a w.pt."""
    return torch_zip_bytes({"marker": marker})


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


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def ocdbt_bytes(body: bytes = b"\x01\x28\xb5\x2f\xfd manifest", magic: int = 0x0CDB3A2A) -> bytes:
    """An OCDBT file as tensorstore writes it: magic (big-endian), its own length (little-endian),
    the body, and the CRC-32C of everything before it."""
    length = 4 + 8 + len(body) + 4
    head = struct.pack(">I", magic) + struct.pack("<Q", length) + body
    return head + struct.pack("<I", crc32c(head))


LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"4d7a" * 16 + b"\nsize 548118077\n")


def legacy_torch_bytes(storages: list[tuple[str, str, int, int]], cut: int = 0) -> bytes:
    """torch.save's legacy (pre-1.6) format, byte for byte: pickles of the magic number, the
    protocol version, the system info, the object (a dict of persistent storage ids, as
    `torch.save(..., _use_new_zipfile_serialization=False)` writes them) and the sorted storage
    keys, then each storage as an 8-byte element count and its bytes. `storages`: (key, storage
    type, element count, bytes per element)."""
    def text(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()

    obj = b"\x80\x02}q\x00("
    for key, kind, numel, _ in storages:
        pid = b"(" + text("storage") + f"ctorch\n{kind}\n".encode() + text(key) + text("cpu") + b"J" + \
            struct.pack("<i", numel) + b"Ntq\x01Q"
        obj += text(f"t{key}") + pid
    obj += b"u."
    out = (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
           + pickle.dumps({"protocol_version": 1001, "little_endian": True,
                           "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
           + obj + pickle.dumps(sorted(k for k, _, _, _ in storages), protocol=2))
    for _key, _, numel, element in sorted(storages):
        out += struct.pack("<q", numel) + b"\x07" * (numel * element)
    return out[:len(out) - cut] if cut else out


def hdf5_bytes(size: int = 4096, version: int = 0, eof: int | None = None) -> bytes:
    """The start of an HDF5 file: signature and superblock (8-byte offsets) whose end-of-file
    address is `eof` (default: the file's size), padded to `size` bytes."""
    eof = size if eof is None else eof
    sig = b"\x89HDF\r\n\x1a\n"
    if version == 0:
        block = sig + bytes([0, 0, 0, 0, 0, 8, 8, 0]) + struct.pack("<HHI", 4, 16, 0)
        block += struct.pack("<QQQQ", 0, 0xFFFFFFFFFFFFFFFF, eof, 0xFFFFFFFFFFFFFFFF)
    else:
        block = sig + bytes([version, 8, 8, 0]) + struct.pack("<QQQQ", 0, 0xFFFFFFFFFFFFFFFF, eof, 48) + b"\0" * 4
    return block + b"\0" * (size - len(block))


def msgpack_bytes(obj) -> bytes:
    """A small msgpack encoder (maps, lists, str, bytes, ints >= 0, None) for flax-like files."""
    if obj is None:
        return b"\xc0"
    if isinstance(obj, dict):
        out = bytes([0x80 | len(obj)]) if len(obj) < 16 else b"\xde" + struct.pack(">H", len(obj))
        return out + b"".join(msgpack_bytes(k) + msgpack_bytes(v) for k, v in obj.items())
    if isinstance(obj, list):
        out = bytes([0x90 | len(obj)]) if len(obj) < 16 else b"\xdc" + struct.pack(">H", len(obj))
        return out + b"".join(msgpack_bytes(v) for v in obj)
    if isinstance(obj, str):
        data = obj.encode()
        return (bytes([0xA0 | len(data)]) if len(data) < 32 else b"\xd9" + bytes([len(data)])) + data
    if isinstance(obj, bytes):
        return b"\xc6" + struct.pack(">I", len(obj)) + obj
    if isinstance(obj, int) and 0 <= obj < 128:
        return bytes([obj])
    return b"\xcf" + struct.pack(">Q", obj)
