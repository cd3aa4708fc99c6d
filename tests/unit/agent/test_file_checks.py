"""Each weight file is what its name says (agent/file_checks.py), on small crafted files: the
good ones pass, every kind of damage is named in one line, and what cannot be checked says
so instead of passing."""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import pytest

from checkpoint_operator.agent.file_checks import (
    LFS_REASON, MAX_CRC_BYTES, check_file, gguf_structure, hdf5_structure, kind_of, msgpack_structure,
    ocdbt_structure, safetensors_structure, tar_structure, torch_structure, zip_structure,
)
from checkpoint_operator.agent.safe_read import MAX_METADATA_BYTES
from formats_files import (LFS_POINTER, gguf_bytes, hdf5_bytes, legacy_torch_bytes, msgpack_bytes, ocdbt_bytes,
                           safetensors_bytes, tar_bytes, torch_zip_bytes, write, zip_bytes)


def header_file(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


# --- safetensors -----------------------------------------------------------------------------

NOT_SAFETENSORS = {
    "random bytes": bytes(range(256)) * 8,
    "zeros": b"\0" * 2048,
    "ASCII text": b"These are not the weights you are looking for.\n" * 20,
    "an HTML error page": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
}


@pytest.mark.parametrize("what", sorted(NOT_SAFETENSORS))
def test_a_safetensors_file_that_is_not_one_is_broken(tmp_path, what):
    result = safetensors_structure(str(write(tmp_path / "model.safetensors", NOT_SAFETENSORS[what])))
    assert result.checked and not result.ok and result.why, result


def test_a_git_lfs_pointer_is_named_as_such_whatever_the_weight_kind(tmp_path):
    for name in ("model.safetensors", "pytorch_model.bin", "model.gguf", "tf_model.h5", "flax_model.msgpack",
                 "model.pt", "last.ckpt", "model.keras", "weights.bin"):
        result = check_file(str(write(tmp_path / name, LFS_POINTER)), kind_of(name) or "")
        assert (result.ok, result.why) == (False, LFS_REASON), name
    assert LFS_REASON == "a Git LFS pointer, not the weights: fetch with git lfs pull"


def test_safetensors_whole_and_cut(tmp_path):
    good = safetensors_bytes({"w": 100, "b": 8})
    assert safetensors_structure(str(write(tmp_path / "a.safetensors", good))).ok
    for cut in (1, 8, 100, len(good) - 10):
        result = safetensors_structure(str(write(tmp_path / "c.safetensors", good[:-cut])))
        assert not result.ok and "(cut short)" in result.why, (cut, result)
    result = safetensors_structure(str(write(tmp_path / "x.safetensors", good + b"tail")))
    assert result.why == f"4 bytes after the last tensor (the header describes {len(good)} bytes, the file has " \
                         f"{len(good) + 4})"


@pytest.mark.parametrize("header, data, why", [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8,
     "tensor w: F32 [4] needs 16 bytes, its data_offsets give 8"),
    ({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "b": {"dtype": "U8", "shape": [4],
                                                                       "data_offsets": [2, 6]}}, b"\0" * 6,
     "tensor b starts at byte 2 of the data, the previous tensor ends at 4 (data_offsets overlap or leave a gap)"),
    ({"w": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}, b"\0" * 8,
     "tensor w starts at byte 4 of the data, the previous tensor ends at 0 (data_offsets overlap or leave a gap)"),
    ({"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"\0", "tensor w has no valid shape"),
    ({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 10**30]}}, b"\0", "tensor w has no valid data_offsets"),
    ({"w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 0]}}, b"\0", "tensor w has no valid data_offsets"),
    ({"w": {"shape": [1], "data_offsets": [0, 1]}}, b"\0", "tensor w has no dtype"),
    ({"w": [1, 2]}, b"", "tensor w is not an object"),
    ({"__metadata__": {"format": 1}}, b"", "__metadata__ is not a map of strings"),
    ({"w": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, b"\0\0",
     "tensor w: 3 elements of F4 are not a whole number of bytes"),
])
def test_safetensors_header_inconsistencies(tmp_path, header, data, why):
    result = safetensors_structure(str(write(tmp_path / "m.safetensors", header_file(header, data))))
    assert (result.ok, result.why) == (False, why)


def test_safetensors_what_passes(tmp_path):
    cases = {
        "sub-byte dtype": ({"w": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}, b"\0\0"),
        "no tensors at all": ({"__metadata__": {"format": "pt"}}, b""),
        "padded header": ({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}, b"\0" * 8),
    }
    for what, (header, data) in cases.items():
        assert safetensors_structure(str(write(tmp_path / "m.safetensors", header_file(header, data)))).ok, what


@pytest.mark.parametrize("data, why", [
    (b"\x05\0\0", "the 8-byte header length needs 8 bytes, the file has 3 (cut short)"),
    (struct.pack("<Q", 200_000_000) + b"{}", "header length 200000000 is beyond safetensors' 100000000-byte limit "
                                              "(not a safetensors file, or damaged)"),
    (struct.pack("<Q", 4) + b"[1] ", "header does not start with '{' (not a safetensors file)"),
    (struct.pack("<Q", 4) + b"{1: ", "header: not valid JSON (Expecting property name enclosed in double quotes at "
                                     "line 1 column 2)"),
    (struct.pack("<Q", 40_000) + b"{" * 20_000 + b"}" * 20_000, "header: nested 20000 levels deep (at most 64 are "
                                                                "read)"),
])
def test_safetensors_header_refused(tmp_path, data, why):
    assert safetensors_structure(str(write(tmp_path / "m.safetensors", data))).why == why


def test_a_safetensors_header_beyond_the_read_cap_is_not_checked(tmp_path):
    path = tmp_path / "huge.safetensors"
    n = MAX_METADATA_BYTES + 8
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + b"{")
        f.truncate(8 + n + 100)  # sparse: nothing is read past the header length
    result = safetensors_structure(str(path))
    assert (result.checked, result.ok) == (False, True) and "read cap" in result.why


# --- torch.save ------------------------------------------------------------------------------------

def test_torch_zip_and_legacy_files(tmp_path):
    zipped = torch_zip_bytes({"step": 1})
    assert torch_structure(str(write(tmp_path / "a.pt", zipped))).ok
    assert "end-of-central-directory" in torch_structure(str(write(tmp_path / "b.pt", zipped[:-30]))).why
    legacy = legacy_torch_bytes([("0", "FloatStorage", 4, 4), ("1", "LongStorage", 2, 8)])
    assert torch_structure(str(write(tmp_path / "c.pt", legacy))).ok
    assert torch_structure(str(write(tmp_path / "d.pt", legacy[:-1]))).why == \
        f"storage 1 needs {len(legacy)} bytes, the file has {len(legacy) - 1} (cut short)"
    assert torch_structure(str(write(tmp_path / "e.pt", legacy + b"\0"))).why == "1 bytes after the last storage"
    assert "its system info pickle is unreadable" in torch_structure(str(write(tmp_path / "f.pt", legacy[:80]))).why
    assert "its object pickle is unreadable" in torch_structure(str(write(tmp_path / "f.pt", legacy[:140]))).why
    unknown = legacy_torch_bytes([("0", "Float8_e4m3fnStorage", 4, 1)])
    result = torch_structure(str(write(tmp_path / "g.pt", unknown)))
    assert not result.checked and "Float8_e4m3fnStorage" in result.why


def test_a_torch_file_that_is_neither_zip_nor_pickle_is_broken_unless_its_name_is_generic(tmp_path):
    for name in ("model.pt", "rng_state.pth", "last.ckpt", "pytorch_model.bin", "optimizer.bin", "training_args.bin",
                 "mp_rank_00_model_states.pt", "random_states_0.pkl"):
        result = check_file(str(write(tmp_path / name, b"\x13" * 100)), kind_of(name) or "")
        assert (result.ok, result.why) == (False, "not a torch.save file (neither a zip nor a pickle)"), name
    result = check_file(str(write(tmp_path / "vocab.bin", b"\x13" * 100)), kind_of("vocab.bin") or "")
    assert (result.checked, result.ok) == (False, True)
    import pickle
    result = check_file(str(write(tmp_path / "other.bin", pickle.dumps({"a": 1}))), "bin")
    assert (result.checked, result.why) == (False, "a pickle, not torch's")
    assert "no torch magic number" in torch_structure(str(write(tmp_path / "p.pt", pickle.dumps([1])))).why
    # Safetensors bytes under a torch name (examples/local/train.py's optimizer.bin) are checked as such.
    assert check_file(str(write(tmp_path / "optimizer.bin", safetensors_bytes({"m": 8}))), "torch").ok


def test_zip_structure_reads_only_the_end(tmp_path):
    assert zip_structure(str(write(tmp_path / "m.keras", zip_bytes({"config.json": b"{}"})))).ok
    assert zip_structure(str(write(tmp_path / "n.keras", b"PK\x03\x04" + b"\0" * 100))).why.startswith(
        "no end-of-central-directory record")
    assert zip_structure(str(write(tmp_path / "o.keras", b"garbage" * 10))).why == \
        "not a zip (no local file header at its start)"


# --- GGUF, HDF5, msgpack, tar, OCDBT -------------------------------------------------------------

def test_gguf(tmp_path):
    tensors = [("w", [8, 8], 0), ("h", [3, 5], 1)]
    assert gguf_structure(str(write(tmp_path / "a.gguf", gguf_bytes(tensors)))).ok
    assert "(cut short)" in gguf_structure(str(write(tmp_path / "b.gguf", gguf_bytes(tensors, cut=40)))).why
    assert gguf_structure(str(write(tmp_path / "c.gguf", gguf_bytes(tensors)[:60]))).why == "the header is cut short"
    data = bytearray(gguf_bytes(tensors))
    data[4:8] = struct.pack("<I", 7)
    assert gguf_structure(str(write(tmp_path / "d.gguf", bytes(data)))).why == "GGUF version 7 is not 2 or 3"
    data[4:8] = struct.pack(">I", 3)
    assert not gguf_structure(str(write(tmp_path / "e.gguf", bytes(data)))).checked  # big-endian: not checked


def test_gguf_tables_that_lie(tmp_path):
    def string(s: bytes) -> bytes:
        return struct.pack("<Q", len(s)) + s

    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + string(b"general.alignment") + struct.pack("<II", 4, 24)
    assert gguf_structure(str(write(tmp_path / "a.gguf", head + b"\0" * 64))).why == \
        "general.alignment 24 is not a power of two"
    five_dims = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + string(b"t") + struct.pack("<I5QIQ", 5, 1, 1, 1, 1, 1, 0, 0)
    assert gguf_structure(str(write(tmp_path / "b.gguf", five_dims + b"\0" * 64))).why == \
        "tensor t has 5 dimensions (GGUF has at most 4)"
    unaligned = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + string(b"t") + struct.pack("<IQIQ", 1, 4, 0, 3)
    assert gguf_structure(str(write(tmp_path / "c.gguf", unaligned + b"\0" * 64))).why == \
        "tensor t is not aligned to 32 bytes"
    many = b"GGUF" + struct.pack("<IQQ", 3, 2**63, 2**63)  # counts far beyond what the file holds
    assert gguf_structure(str(write(tmp_path / "d.gguf", many + b"\0" * 64))).why == "the header is cut short"


def test_hdf5(tmp_path):
    for version in (0, 2):
        assert hdf5_structure(str(write(tmp_path / f"a{version}.h5", hdf5_bytes(version=version)))).ok
        cut = hdf5_structure(str(write(tmp_path / f"b{version}.h5", hdf5_bytes(version=version, eof=10_000))))
        assert cut.why == "its HDF5 superblock's end-of-file address needs 10000 bytes, the file has 4096 (cut short)"
    assert hdf5_structure(str(write(tmp_path / "c.h5", b"\0" * 600 + hdf5_bytes()))).why == "no HDF5 signature"
    user_block = write(tmp_path / "d.h5", b"\0" * 512 + hdf5_bytes(size=4096 - 512, eof=4096 - 512))
    assert hdf5_structure(str(user_block)).ok
    other = check_file(str(write(tmp_path / "e.mdl", b"not hdf5" * 100)), "hdf5-or-other")
    assert (other.checked, other.ok) == (False, True)


def test_msgpack(tmp_path):
    good = msgpack_bytes({"params": {"dense": {"kernel": b"\1" * 400, "bias": b"\2" * 20}}, "step": 3,
                          "names": ["a", None, 200]})
    assert msgpack_structure(str(write(tmp_path / "a.msgpack", good))).ok
    assert "cut short" in msgpack_structure(str(write(tmp_path / "b.msgpack", good[:-10]))).why
    assert msgpack_structure(str(write(tmp_path / "c.msgpack", good + b"\0"))).why == "1 bytes after the msgpack object"
    assert msgpack_structure(str(write(tmp_path / "d.msgpack", b"\xc1"))).why == "byte 0xc1 at 0 is not msgpack"
    huge_count = b"\xdf" + struct.pack(">I", 2**32 - 1)  # a map claiming 4 billion entries in 5 bytes
    assert "cut short" in msgpack_structure(str(write(tmp_path / "e.msgpack", huge_count))).why
    deep = b"\x91" * 5000 + b"\xc0"
    assert not msgpack_structure(str(write(tmp_path / "f.msgpack", deep))).checked


def test_tar(tmp_path):
    data = tar_bytes({"model_config.yaml": b"a: 1\n", "model_weights.ckpt": b"w" * 5000})
    assert tar_structure(str(write(tmp_path / "a.nemo", data))).ok
    assert "cut short" in tar_structure(str(write(tmp_path / "b.nemo", data[:3000]))).why
    compressed = tar_structure(str(write(tmp_path / "c.nemo", gzip.compress(data))))
    assert (compressed.checked, compressed.ok) == (False, True), "a gzip .nemo is not checked, never passed"


def test_ocdbt(tmp_path):
    good = ocdbt_bytes()
    assert ocdbt_structure(str(write(tmp_path / "manifest.ocdbt", good))).ok
    assert ocdbt_structure(str(write(tmp_path / "x" / "manifest.ocdbt", good[:-3]))).why == \
        f"its OCDBT header says {len(good)} bytes, the file has {len(good) - 3} (cut short)"
    flipped = good[:14] + bytes([good[14] ^ 1]) + good[15:]
    assert ocdbt_structure(str(write(tmp_path / "y" / "manifest.ocdbt", flipped))).why == \
        "its CRC-32C does not match its content"
    assert ocdbt_structure(str(write(tmp_path / "z" / "manifest.ocdbt", b"m" * 40))).why == \
        "not an OCDBT manifest (no magic)"
    node = ocdbt_bytes(b"nodes", magic=0x0CDB20DE)
    assert ocdbt_structure(str(write(tmp_path / "d" / ("a" * 32), node))).ok
    assert "(cut short)" in ocdbt_structure(str(write(tmp_path / "d" / ("b" * 32), node[:-1]))).why
    assert ocdbt_structure(str(write(tmp_path / "d" / ("c" * 32), b"\x28\xb5\x2f\xfd raw zstd value"))).ok
    assert MAX_CRC_BYTES >= 64 * 1024


def test_kind_of():
    assert {n: kind_of(n) for n in ("a/model.safetensors", "x.GGUF", "m.nemo", "m.keras", "flax_model.msgpack",
                                    "tf_model.h5", "c.mdl", "default/manifest.ocdbt", "default/d/" + "0" * 32,
                                    "pytorch_model-00001-of-00002.bin", "tokenizer.bin", "rng_state.pth",
                                    "random_states_0.pkl", "notes.txt", "state.pkl", "d/abc")} == {
        "a/model.safetensors": "safetensors", "x.GGUF": "gguf", "m.nemo": "tar", "m.keras": "zip",
        "flax_model.msgpack": "msgpack", "tf_model.h5": "hdf5", "c.mdl": "hdf5-or-other",
        "default/manifest.ocdbt": "ocdbt", "default/d/" + "0" * 32: "ocdbt",
        "pytorch_model-00001-of-00002.bin": "torch", "tokenizer.bin": "bin", "rng_state.pth": "torch",
        "random_states_0.pkl": "torch", "notes.txt": None, "state.pkl": None, "d/abc": None}


def test_an_empty_or_special_file(tmp_path):
    assert check_file(str(write(tmp_path / "e.safetensors", b"")), "safetensors").why == \
        "empty (0 bytes): its save never wrote it"
    assert check_file(str(tmp_path), "safetensors").why == "unreadable (Is a directory)"
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    assert check_file(str(fifo), "safetensors").why == "not a regular file"  # opened, never read: no hang
    assert check_file(str(tmp_path / "gone.pt"), "torch").why == "unreadable (No such file or directory)"


def test_reasons_are_one_bounded_line(tmp_path):
    name = "x\n" * 500
    header = {name: {"dtype": "U8", "shape": [1], "data_offsets": [0, 2]}}
    why = safetensors_structure(str(write(tmp_path / "m.safetensors", header_file(header, b"\0\0")))).why
    assert "\n" not in why and len(why) < 300 and "(1000 characters)" in why
    assert Path(tmp_path / "m.safetensors").exists()


def test_a_tar_header_claiming_a_huge_long_name_is_never_read_into_memory(tmp_path):
    import tarfile
    import tracemalloc

    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, 200 * 1024 * 1024
    path = tmp_path / "model.nemo"
    with open(path, "wb") as f:
        f.write(info.tobuf(format=tarfile.GNU_FORMAT))
        f.truncate(512 + info.size + 1024)  # sparse: the "name" is 200 MB of zeros
    tracemalloc.start()
    try:
        result = tar_structure(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.why == "a member header claims more than 1048576 bytes (not a tar a writer leaves)"
    assert peak < 16 * 1024 * 1024, peak  # tarfile alone read the whole claimed name: 200 MB


def test_zip_headers_zipfile_refuses_with_other_errors(tmp_path):
    """Found by mutating real torch.save files: zipfile raises NotImplementedError for a version it
    does not know and RuntimeError for an encrypted member, not BadZipFile."""
    data = bytearray(torch_zip_bytes({"step": 1}))
    at = data.index(b"PK\x01\x02")
    data[at + 6:at + 8] = struct.pack("<H", 102)  # "version needed to extract": 10.2
    result = torch_structure(str(write(tmp_path / "v.pt", bytes(data))))
    assert (result.ok, result.why) == (False, "not a valid zip: zip file version 10.2")
    encrypted = bytearray(torch_zip_bytes({"step": 1}))
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := encrypted.find(sig, start)) >= 0:
            encrypted[start + flag_at] |= 1  # the "encrypted" flag of every entry
            start += 4
    root = tmp_path / "enc"
    write(root / "ckpt.pt", bytes(encrypted))
    from checkpoint_operator.agent.formats import describe_checkpoint
    from checkpoint_operator.agent.safe_read import list_files
    d = describe_checkpoint(root, list_files(root), "")
    assert d.completeReason and "ckpt.pt" in d.completeReason


@pytest.mark.parametrize("header, data, why", [
    ({"w": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4,
     "tensor w has dtype f32, which is not a safetensors dtype"),
    ({"w": {"dtype": "float32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4,
     "tensor w has dtype float32, which is not a safetensors dtype"),
    ({"w": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}}, b"", "tensor w has no valid shape"),
    ({"\ud800": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\0",
     "tensor \ud800: its name is not valid Unicode (a lone surrogate escape)"),
    ({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "U8", "shape": [2],
                                                                        "data_offsets": [2, 4]}}, b"\0" * 4,
     "tensor b starts at byte 2 of the data, the previous tensor ends at 4 (data_offsets overlap or leave a gap)"),
])
def test_safetensors_headers_the_library_refuses(tmp_path, header, data, why):
    """Crafted headers that safetensors' own parser refuses: broken, naming the tensor."""
    result = safetensors_structure(str(write(tmp_path / "m.safetensors", header_file(header, data))))
    assert (result.ok, result.checked) == (False, True), result
    assert result.why == why.replace("\ud800", "\\ud800")  # quoted() escapes what it cannot print


def test_a_safetensors_dtype_newer_than_the_table_is_not_checked_and_padding_whitespace_passes(tmp_path):
    newer = header_file({"w": {"dtype": "F2_NEW", "shape": [4], "data_offsets": [0, 1]}}, b"\0")
    result = safetensors_structure(str(write(tmp_path / "m.safetensors", newer)))
    assert (result.ok, result.checked) == (True, False)
    assert result.why == "tensor w has dtype F2_NEW, unknown to this check: its size is not checked"
    text = b' {"__metadata__": null, "w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}'
    spaced = struct.pack("<Q", len(text)) + text + b"\0\0"  # the library reads both
    assert safetensors_structure(str(write(tmp_path / "s.safetensors", spaced))).ok


def gguf_tensor_table(tensors: list[tuple[bytes, list[int], int, int]], data: bytes) -> bytes:
    """A GGUF v3 file with no key-values and these (name, dims, ggml type, offset) tensors."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 0)
    for name, dims, kind, offset in tensors:
        head += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims))
        head += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", kind, offset)
    return head + b"\0" * (-len(head) % 32) + data


@pytest.mark.parametrize("tensors, why", [
    ([(b"a", [8], 4, 0)], "tensor a has ggml type 4, which GGUF does not define"),
    ([(b"a", [8], 36, 0)], "tensor a has ggml type 36, which GGUF does not define"),
    ([(b"a", [8], 0, 0), (b"a", [8], 0, 32)], "tensor a is named twice in the tensor table"),
    ([(b"a", [2**63, 2**63, 0, 5], 0, 0)], "tensor a has dimensions beyond int64 ([9223372036854775808, "),
    ([(b"a", [33], 2, 0)], "tensor a: 33 elements are not whole blocks of 32 (its type 2)"),
])
def test_gguf_tensor_tables_the_readers_refuse(tmp_path, tensors, why):
    result = gguf_structure(str(write(tmp_path / "m.gguf", gguf_tensor_table(tensors, b"\0" * 128))))
    assert (result.ok, result.checked) == (False, True), result
    assert result.why.startswith(why), result


def test_tar_pax_headers_are_charged_to_the_work_budget(tmp_path):
    """tarfile parses a pax header in Python, record by record: its bytes count against the
    checkpoint's work budget (they were free: 0.37 s/MB unbudgeted), so a tar of pax headers
    ends "not checked" at the work limit instead of costing any time."""
    import tarfile

    from checkpoint_operator.agent.file_checks import TAR_HEADER_BYTES_PER_STEP
    from checkpoint_operator.agent.work_limit import WorkBudget

    pax = b"6 a=b\n" * (60_000 // 6)
    info = tarfile.TarInfo("././@PaxHeader")
    info.size, info.type = len(pax), tarfile.XHDTYPE
    member = tarfile.TarInfo("f")
    one = info.tobuf(format=tarfile.USTAR_FORMAT) + pax + b"\0" * (-len(pax) % 512) + \
        member.tobuf(format=tarfile.USTAR_FORMAT)
    path = str(write(tmp_path / "m.nemo", one * 5 + b"\0" * 1024))
    budget = WorkBudget(10**9)
    assert check_file(path, "tar", budget).ok
    assert budget.used >= 5 * len(pax) // TAR_HEADER_BYTES_PER_STEP
    small = WorkBudget(2 * len(pax) // TAR_HEADER_BYTES_PER_STEP)
    result = check_file(path, "tar", small)
    assert (result.ok, result.checked) == (True, False)
    assert "work limit" in result.why
