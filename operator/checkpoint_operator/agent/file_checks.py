"""Is a weight file what its name says? Structural checks that read headers and ends only.

`check_file(path, kind)` opens a file once, refuses what no writer of that kind leaves (an
empty file, a Git LFS pointer in place of the weights) and then checks the structure of its
kind, reading only headers, tables and ends, never the weights, with every read bounded
(agent/safe_read.py's caps):
  - safetensors: the header length fits the file, the header is a JSON object, every tensor's
    dtype and shape agree with its data_offsets, and the tensors tile the data exactly, from
    byte 0 to the end of the file (truncation, the commonest damage of a crash, is caught);
  - torch (`.pt`, `.pth`, `.bin`, `.ckpt`): a zip (torch.save since 1.6) whose central directory
    is whole and whose entries lie before it, or the legacy format: its magic, protocol and
    pickles, then every storage's size record, which must end exactly at the end of the file;
  - GGUF: magic, version, key-value and tensor tables within the file, tensor data within it;
  - HDF5 (`.h5`, Keras and TF weights): the superblock's end-of-file address within the file;
  - msgpack (Flax): one whole msgpack object, seeking over its byte strings, ending the file;
  - tar (`.nemo`): every member's header and data inside the file;
  - OCDBT (Orbax): `manifest.ocdbt` and B-tree node files have their magic, their length is
    the file's, and a small manifest's CRC-32C matches.
A `Structure` is ok, broken (`why` says what, in one line), or not checked (`checked` False:
a kind this check does not know inside a file, or beyond a read cap); agent/completeness.py
turns "not checked" into `complete: null`, never true.
"""

from __future__ import annotations

import os
import re
import struct
import tarfile
from dataclasses import dataclass
from typing import IO, Any, Callable, Optional

from checkpoint_operator.agent import safe_pickle
from checkpoint_operator.agent.safe_read import (
    INT64_MAX, JSON_BYTES_PER_STEP, MAX_METADATA_BYTES, Unreadable, central_directory, open_regular, parse_json,
    quoted, torch_pickle_name, zip_entries, zip_member,
)
from checkpoint_operator.agent.work_limit import OverBudget, WorkBudget

MAX_TAR_MEMBERS = 100_000
MAX_TAR_HEADER_READ = 1024 * 1024  # a pax or GNU long-name header (names, a few attributes)
TAR_HEADER_BYTES_PER_STEP = 4  # tarfile parses pax records at about 2 us per 6-byte record
MAX_MSGPACK_OBJECTS = 2_000_000  # a Flax model file holds a few objects per parameter array
MAX_MSGPACK_DEPTH = 1_000
MAX_CRC_BYTES = 256 * 1024  # OCDBT files up to this size have their CRC-32C computed (pure Python)
CRC_BYTES_PER_STEP = 16  # what a step of the work budget buys of the pure-Python CRC
SAFETENSORS_MAX_HEADER = 100_000_000  # what the safetensors library itself refuses beyond
LFS_POINTER_MAX_BYTES = 1024  # git-lfs: "pointer files must be less than 1024 bytes"
LFS_REASON = "a Git LFS pointer, not the weights: fetch with git lfs pull"
CHECK_FAILED = "the check of this file failed on its content"


@dataclass(frozen=True)
class Structure:
    """A structural check of one file: ok, or why not; `checked` False when nothing could be
    concluded (then `why` says why not)."""

    ok: bool
    why: str = ""
    checked: bool = True


OK = Structure(True)


def broken(why: str) -> Structure:
    return Structure(False, why)


def not_checked(why: str) -> Structure:
    return Structure(True, why, checked=False)


class _Cut(Exception):
    """A read ran past the end of the file."""


def _cut_short(what: str, needed: int, size: int) -> Structure:
    return broken(f"{what} needs {needed} bytes, the file has {size} (cut short)")


# --- which check a file gets, by its name ------------------------------------------------------

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
HDF5_SUFFIXES = (".h5", ".hdf5", ".mdl")
# `.bin` is a generic suffix: only these names must be torch.save files (Transformers, PEFT,
# Accelerate, DeepSpeed); another `.bin` is checked when its content is a known kind.
_TORCH_BIN = re.compile(r"^(pytorch_model.*|adapter_model|training_args|optimizer(_\d+)?|scheduler(_\d+)?|"
                        r"scaler(_\d+)?|.*model_states|.*optim_states.*)\.bin$")
_RANDOM_STATES = re.compile(r"^random_states_\d+\.pkl$")  # Accelerate: torch.save files


def kind_of(path: str) -> Optional[str]:
    """The check a checkpoint file gets by its path, or None (not a weight file)."""
    low = path.lower()
    base = low.rsplit("/", 1)[-1]
    if low.endswith(".safetensors"):
        return "safetensors"
    if low.endswith(".gguf"):
        return "gguf"
    if low.endswith(".nemo"):
        return "tar"
    if low.endswith(".keras"):
        return "zip"
    if low.endswith(".msgpack"):
        return "msgpack"
    if low.endswith(".mdl"):
        return "hdf5-or-other"  # Cerebras writes HDF5; other content is not checked
    if low.endswith(HDF5_SUFFIXES):
        return "hdf5"
    if base == "manifest.ocdbt" or re.search(r"(^|/)d/[0-9a-f]{32}$", low):
        return "ocdbt"
    if low.endswith(".bin"):
        return "torch" if _TORCH_BIN.match(base) else "bin"
    if low.endswith(TORCH_SUFFIXES) or _RANDOM_STATES.match(base):
        return "torch"
    return None


def check_file(path: str, kind: str, budget: Optional[WorkBudget] = None) -> Structure:
    """The structure of the file at `path` as `kind` (one of kind_of's answers). `budget`: the
    checkpoint's work budget (agent/work_limit.py), charged for every parsing step."""
    budget = budget or WorkBudget.unlimited()
    try:
        budget.spend()
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64)
            if size == 0:
                return broken("empty (0 bytes): its save never wrote it")
            if is_lfs_pointer(head, size):
                return broken(LFS_REASON)
            return _CHECKS[kind](f, size, head, budget)
    except OSError as e:
        return broken(f"unreadable ({e.strerror})")
    except Unreadable as e:
        return broken(str(e))
    except _Cut:
        return broken("cut short")
    except OverBudget as e:
        return not_checked(str(e))
    except Exception as e:  # noqa: BLE001 - a check's own bug must not lose the step: said, not hidden
        return not_checked(f"{CHECK_FAILED} ({type(e).__name__})")


def is_lfs_pointer(head: bytes, size: int) -> bool:
    """A Git LFS pointer file (what a clone without `git lfs` leaves in place of large files)."""
    return size < LFS_POINTER_MAX_BYTES and head.startswith((b"version https://git-lfs.github.com/spec/",
                                                           b"version https://hawser.github.com/spec/"))


def _read_at(f: IO[bytes], offset: int, n: int) -> bytes:
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        raise _Cut()
    return data


# --- safetensors -----------------------------------------------------------------------------

# Bits per element of each safetensors dtype (the safetensors library's Dtype enum).
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64,
    "I64": 64, "U64": 64,
}
MAX_DIMENSIONS = 64  # torch's own limit
_DTYPE_NAME = re.compile(r"^(BOOL|[A-Z]{1,2}\d{1,3}(_[A-Z0-9]+)*)$")  # F8_E4M3, BF16, U64: the library's spelling


def _elements(shape: Any) -> Optional[int]:
    """The element count of a shape (a list of non-negative integers), None when it is not one."""
    if not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS:
        return None
    total = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim <= INT64_MAX:
            return None
        total *= dim
        if total > INT64_MAX:
            return None
    return total


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safetensors_structure_of(f: IO[bytes], size: int, head: bytes, budget: WorkBudget) -> Structure:
    if size < 8:
        return _cut_short("the 8-byte header length", 8, size)
    (n,) = struct.unpack("<Q", head[:8])
    if n > SAFETENSORS_MAX_HEADER:
        return broken(f"header length {n} is beyond safetensors' {SAFETENSORS_MAX_HEADER}-byte limit "
                      "(not a safetensors file, or damaged)")
    if 8 + n > size:
        return _cut_short(f"the header of {n} bytes", 8 + n, size)
    if n > MAX_METADATA_BYTES:
        return not_checked(f"header of {n} bytes is beyond the {MAX_METADATA_BYTES}-byte read cap")
    budget.spend(n // JSON_BYTES_PER_STEP)
    raw = _read_at(f, 8, n)
    if raw.lstrip(b" \t\r\n")[:1] != b"{":  # the library's JSON parser allows leading whitespace
        return broken("header does not start with '{' (not a safetensors file)")
    try:
        header = parse_json(raw)
    except Unreadable as e:
        return broken(f"header: {e}")
    if not isinstance(header, dict):
        return broken("header is not a JSON object")
    data_size = size - 8 - n
    spans = []
    unknown = ""
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and (not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values())):
                return broken("__metadata__ is not a map of strings")
            continue
        what = f"tensor {quoted(name)}"
        if not _is_utf8(name):
            return broken(f"{what}: its name is not valid Unicode (a lone surrogate escape)")
        if not isinstance(info, dict):
            return broken(f"{what} is not an object")
        offsets, dtype = info.get("data_offsets"), info.get("dtype")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            return broken(f"{what} has no valid data_offsets")
        elements = _elements(info.get("shape"))
        if elements is None:
            return broken(f"{what} has no valid shape")
        if not isinstance(dtype, str):
            return broken(f"{what} has no dtype")
        bits = SAFETENSORS_DTYPE_BITS.get(dtype)
        if bits is None:  # the library refuses a dtype it does not know ("unknown variant")
            if not _DTYPE_NAME.match(dtype):
                return broken(f"{what} has dtype {quoted(dtype)}, which is not a safetensors dtype")
            # A name of the library's form: maybe a dtype newer than this table. Not a verdict of
            # whole (the installed loader may refuse it), nor of broken (a newer one may read it).
            unknown = unknown or f"{what} has dtype {quoted(dtype)}, unknown to this check: its size is not checked"
        elif elements * bits % 8:
            return broken(f"{what}: {elements} elements of {dtype} are not a whole number of bytes")
        elif elements * bits // 8 != offsets[1] - offsets[0]:
            return broken(f"{what}: {dtype} {quoted(str(info.get('shape')))} needs {elements * bits // 8} "
                          f"bytes, its data_offsets give {offsets[1] - offsets[0]}")
        spans.append((offsets[0], offsets[1], what))
    spans.sort()
    end = 0
    for begin, stop, what in spans:
        if begin != end:
            return broken(f"{what} starts at byte {begin} of the data, the previous tensor ends at {end} "
                          "(data_offsets overlap or leave a gap)")
        end = stop
    if end > data_size:
        return broken(f"its header's tensors need {8 + n + end} bytes, the file has {size} (cut short)")
    if end < data_size:
        return broken(f"{data_size - end} bytes after the last tensor (the header describes {8 + n + end} bytes, "
                      f"the file has {size})")
    return not_checked(unknown) if unknown else OK


def safetensors_tensor_names(path: str, budget: WorkBudget) -> Optional[frozenset[str]]:
    """The tensor names a safetensors file's header holds (header only, within the read cap), or
    None when the header cannot be read (the structure check says why)."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n > MAX_METADATA_BYTES or 8 + n > size:
                return None
            budget.spend(n // JSON_BYTES_PER_STEP)
            header = parse_json(_read_at(f, 8, n))
    except (OSError, Unreadable, _Cut, OverBudget):
        return None
    if not isinstance(header, dict):
        return None
    return frozenset(k for k in header if k != "__metadata__")


# --- torch.save: zip, or the legacy (pre-1.6) pickles -----------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001
# Bytes per element of each storage type the legacy format names (torch's dtype map).
_STORAGE_BYTES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2,
    "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1, "BFloat16Storage": 2, "ComplexDoubleStorage": 16,
    "ComplexFloatStorage": 8, "QInt8Storage": 1, "QInt32Storage": 4, "QUInt8Storage": 1, "QUInt4x2Storage": 1,
    "QUInt2x4Storage": 1,
}
MAX_LEGACY_STORAGES = 1_000_000


def zip_structure_of(f: IO[bytes], size: int, head: bytes, budget: WorkBudget) -> Structure:
    """The central directory ends where the end records begin, at the end of the file, and every
    entry's data lies before it."""
    if head[:4] != b"PK\x03\x04":
        return broken("not a zip (no local file header at its start)")
    cd_offset, cd_size, entries = central_directory(f, size)
    if entries == 0:
        return broken("a zip without entries")
    budget.spend(min(entries, 2**32))
    zip_entries(f.name)  # entries inside the data, within the caps (raises Unreadable)
    return OK


_STORAGE_BYTES_ZIP = {**{k: v for k, v in {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2,
    "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1, "BFloat16Storage": 2, "ComplexDoubleStorage": 16,
    "ComplexFloatStorage": 8}.items()}, "UntypedStorage": 1}


def torch_zip_structure_of(f: IO[bytes], size: int, head: bytes, budget: WorkBudget, *,
                           strict: bool = True) -> Structure:
    """A torch.save zip: the zip is whole (every member's local header and data inside the
    file), `<archive>/data.pkl` is there and is a pickle, and every storage it refers to
    (persistent ids `("storage", type, key, location, numel)`) has its record
    `<archive>/data/<key>` of exactly numel elements, as torch.load reads it."""
    zipped = zip_structure_of(f, size, head, budget)
    if not zipped.ok:
        return zipped
    entries = zip_entries(f.name)
    pickle_name = torch_pickle_name(entries)
    if pickle_name is None:
        if not strict:
            return not_checked("a zip, not torch.save's (no <archive>/data.pkl)")
        pkls = [n for n in entries if n.endswith("data.pkl")]
        return broken("no <archive>/data.pkl member (torch.save writes its object there)" if not pkls
                      else f"{quoted(pkls[0])} is not where torch.save writes it (<archive>/data.pkl)")
    info = entries[pickle_name]
    if info.file_size > MAX_METADATA_BYTES:
        return not_checked(f"{quoted(pickle_name)} of {info.file_size} bytes is beyond the "
                           f"{MAX_METADATA_BYTES}-byte read cap")
    try:
        data = zip_member(f.name, pickle_name)
    except Unreadable as e:
        return broken(str(e))
    persistent: list = []
    try:
        safe_pickle.load_prefix(data, 0, persistent, budget)
    except safe_pickle.TooBig as e:
        return not_checked(f"member {quoted(pickle_name)}: {e}")
    except safe_pickle.NotAPickle as e:
        return broken(f"member {quoted(pickle_name)}: {e}")
    archive = pickle_name.rsplit("/", 1)[0]
    budget.spend(len(persistent))
    for pid in persistent:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[2], str)):
            continue  # not a storage torch.load would read from a record
        record = f"{archive}/data/{pid[2]}"
        member = entries.get(record)
        if member is None:
            return broken(f"member {quoted(record)} is missing (the storage {quoted(pid[2])} of "
                          f"{quoted(pickle_name)})")
        type_name = (safe_pickle.global_name(pid[1]) or "").rsplit(".", 1)[-1]
        element = _STORAGE_BYTES_ZIP.get(type_name)
        numel = pid[4]
        if element is None or not isinstance(numel, int) or isinstance(numel, bool):
            continue  # a storage type newer than this table: present, its size not checked
        if member.file_size != numel * element:
            return broken(f"member {quoted(record)} holds {member.file_size} bytes, {quoted(pickle_name)} "
                          f"says {numel} elements of {element} bytes ({numel * element} bytes)")
    return OK


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    return len(head) >= 9 and head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= size


def torch_structure_of(f: IO[bytes], size: int, head: bytes, budget: WorkBudget, *, strict: bool = True) -> Structure:
    if head[:4] == b"PK\x03\x04":
        return torch_zip_structure_of(f, size, head, budget, strict=strict)
    if head[:1] == b"\x80":
        return legacy_torch_structure(f, size, budget, strict=strict)
    if _looks_like_safetensors(head, size):  # safetensors bytes under a torch name (some writers do)
        return safetensors_structure_of(f, size, head, budget)
    if strict:
        return broken("not a torch.save file (neither a zip nor a pickle)")
    return not_checked("content of a kind this check does not know")


_LEGACY_PICKLES = ("magic number", "protocol version", "system info", "object", "storage keys")


def legacy_torch_structure(f: IO[bytes], size: int, budget: WorkBudget, *, strict: bool = True) -> Structure:
    """torch.save's legacy format: pickles of the magic number, the protocol version, the system
    info, the object (its storages as persistent ids) and the storage keys; then each storage as
    an 8-byte element count and its bytes, in the keys' order, up to the end of the file."""
    f.seek(0)
    data = f.read(MAX_METADATA_BYTES)
    position = 0
    objects: list = []
    persistent: list = []
    for what in _LEGACY_PICKLES:
        try:
            obj, position = safe_pickle.load_prefix(data, position, persistent if what == "object" else None,
                                                    budget)
        except safe_pickle.TooBig as e:
            return not_checked(f"its {what} pickle: {e}")
        except safe_pickle.NotAPickle as e:
            if len(data) < size and len(data) == MAX_METADATA_BYTES:
                return not_checked(f"its pickles are beyond the {MAX_METADATA_BYTES}-byte read cap")
            if not objects:
                return broken(f"not a torch.save file ({e})") if strict else not_checked("a pickle, not torch's")
            return broken(f"torch legacy format: its {what} pickle is unreadable ({e})")
        objects.append(obj)
        if what == "magic number" and obj != _LEGACY_MAGIC:
            return broken("a pickle, but not a torch.save file (no torch magic number)") if strict \
                else not_checked("a pickle, not torch's")
        if what == "protocol version" and obj != _LEGACY_PROTOCOL:
            return broken(f"torch legacy protocol {quoted(obj)} is not {_LEGACY_PROTOCOL}")
    keys = objects[4]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(keys) > MAX_LEGACY_STORAGES:
        return broken("torch legacy format: the storage keys are not a list of names")
    storages: dict[str, tuple[Optional[str], Any]] = {}
    for pid in persistent:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[2], str):
            type_name = safe_pickle.global_name(pid[1])
            storages[pid[2]] = (type_name.rsplit(".", 1)[-1] if type_name else None, pid[4])
    budget.spend(len(keys))
    for key in keys:
        type_name, numel = storages.get(key, (None, None))
        element = _STORAGE_BYTES.get(type_name or "")
        if element is None:
            return not_checked(f"storage {quoted(key)} is of a type this check does not know ({quoted(type_name)})")
        if position + 8 > size:
            return _cut_short(f"storage {quoted(key)}", position + 8, size)
        (recorded,) = struct.unpack("<q", _read_at(f, position, 8))
        if recorded != numel or recorded < 0:
            return broken(f"storage {quoted(key)} records {recorded} elements, the pickle says {quoted(numel)}")
        position += 8 + recorded * element
        if position > size:
            return _cut_short(f"storage {quoted(key)}", position, size)
    if position != size:
        return broken(f"{size - position} bytes after the last storage")
    return OK


def generic_bin_structure_of(f: IO[bytes], size: int, head: bytes, budget: WorkBudget) -> Structure:
    return torch_structure_of(f, size, head, budget, strict=False)


# --- tar (.nemo) -----------------------------------------------------------------------------

class _HeaderReads:
    """The tar file as tarfile walks it, refusing any read longer than MAX_TAR_HEADER_READ: tarfile
    seeks over member data, but reads a pax or GNU long-name header whole into memory, however
    large the size it claims."""

    def __init__(self, f: IO[bytes], budget: WorkBudget) -> None:
        self._f = f
        self._budget = budget

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > MAX_TAR_HEADER_READ:
            raise Unreadable(f"a member header claims more than {MAX_TAR_HEADER_READ} bytes (not a tar a writer "
                             "leaves)")
        if n > 512:
            # A pax or long-name header beyond the basic block: tarfile parses it in Python,
            # a record (a few bytes) at a time.
            self._budget.spend(n // TAR_HEADER_BYTES_PER_STEP)
        return self._f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


def tar_structure_of(f: IO[bytes], size: int, head: bytes, budget: WorkBudget) -> Structure:
    """Every member header is readable and its data is inside the file; an uncompressed tar only."""
    if head[:2] == b"\x1f\x8b":
        return not_checked("gzip-compressed: its members cannot be checked without reading it all")
    f.seek(0)
    members = 0
    try:
        with tarfile.open(fileobj=_HeaderReads(f, budget), mode="r:") as tar:  # type: ignore[call-overload]
            for member in tar:
                members += 1
                budget.spend(8)  # tarfile reads and parses each header in Python
                if members > MAX_TAR_MEMBERS:
                    return not_checked(f"more than {MAX_TAR_MEMBERS} members")
                if member.offset_data + member.size > size:
                    return broken(f"member {quoted(member.name)} extends past the end (cut short)")
    except tarfile.TarError as e:
        return broken(f"not a valid tar: {quoted(str(e))}")
    if members == 0:
        return broken("a tar without members")
    return OK


# --- GGUF --------------------------------------------------------------------------------------

# ggml tensor types: (elements per block, bytes per block), as in the GGUF spec / gguf-py.
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
}
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRUCTS = {fmt: struct.Struct("<" + fmt) for fmt in (*_GGUF_SCALARS.values(), "4s", "IQ", "QQ")}
GGML_MAX_DIMS = 4  # llama.cpp refuses more


class _HeaderEnd(Exception):
    """The parse reached the end of what was read (the file's end, or the read cap)."""


class _Cursor:
    def __init__(self, data: bytes, budget: WorkBudget) -> None:
        self.data, self.pos, self.budget = data, 0, budget

    def take(self, fmt: str) -> Any:
        s = _STRUCTS[fmt]
        if self.pos + s.size > len(self.data):
            raise _HeaderEnd()
        values = s.unpack_from(self.data, self.pos)
        self.pos += s.size
        return values[0] if len(values) == 1 else values

    def skip(self, n: int) -> None:
        if n > len(self.data) - self.pos:
            raise _HeaderEnd()
        self.pos += n

    def string(self) -> bytes:
        n = self.take("Q")
        start = self.pos
        self.skip(n)
        return self.data[start:self.pos]

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _GGUF_SCALARS:
            return self.take(_GGUF_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9 and depth < 4:
            # Arrays (a tokenizer's vocabulary) are skipped, not built: only scalars are needed.
            item_kind, n = self.take("IQ")
            if item_kind in _GGUF_SCALARS:
                self.skip(n * _STRUCTS[_GGUF_SCALARS[item_kind]].size)
            else:
                if n > len(self.data) - self.pos:  # every item takes at least a byte
                    raise _HeaderEnd()
                self.budget.spend(n)
                for _ in range(n):
                    self.value(item_kind, depth + 1)
            return None
        raise Unreadable(f"unknown value type {kind} in the key-value table")


def gguf_structure_of(f: IO[bytes], size: int, head: bytes, budget: WorkBudget) -> Structure:
    """Magic, version, metadata and tensor table parse within the header cap, and the file is
    as long as the tensor data they describe."""
    f.seek(0)
    cur = _Cursor(f.read(MAX_METADATA_BYTES), budget)
    try:
        if cur.take("4s") != b"GGUF":
            return broken("no GGUF magic")
        version = cur.take("I")
        if version not in (2, 3):
            if struct.unpack(">I", struct.pack("<I", version))[0] in (2, 3):
                return not_checked("a big-endian GGUF file")
            return broken(f"GGUF version {version} is not 2 or 3")
        n_tensors, n_kv = cur.take("QQ")
        alignment = 32
        for _ in range(n_kv):
            budget.spend()
            key = cur.string()
            value = cur.value(cur.take("I"))
            if key == b"general.alignment":
                if not isinstance(value, int) or value <= 0 or value & (value - 1):
                    return broken(f"general.alignment {quoted(value)} is not a power of two")
                alignment = value
        end = 0
        names: set[bytes] = set()
        for _ in range(n_tensors):
            budget.spend()
            name = cur.string()
            what = f"tensor {quoted(name.decode('utf-8', 'replace'))}"
            if name in names:  # llama.cpp and gguf-py refuse a duplicated tensor name
                return broken(f"{what} is named twice in the tensor table")
            names.add(name)
            n_dims = cur.take("I")
            if n_dims > GGML_MAX_DIMS:
                return broken(f"{what} has {n_dims} dimensions (GGUF has at most {GGML_MAX_DIMS})")
            dims = [cur.take("Q") for _ in range(n_dims)]
            elements = 1
            for dim in dims:
                elements *= dim
            if elements > INT64_MAX or any(dim > INT64_MAX for dim in dims):
                return broken(f"{what} has dimensions beyond int64 ({quoted(str(dims))})")
            kind, offset = cur.take("IQ")
            if offset % alignment:
                return broken(f"{what} is not aligned to {alignment} bytes")
            if kind not in GGML_TYPE_SIZES:  # the readers refuse a type they do not know
                return broken(f"{what} has ggml type {kind}, which GGUF does not define")
            per_block, block_bytes = GGML_TYPE_SIZES[kind]
            if elements % per_block:
                return broken(f"{what}: {elements} elements are not whole blocks of {per_block} (its type {kind})")
            end = max(end, offset + elements // per_block * block_bytes)
    except _HeaderEnd:
        if len(cur.data) < size:
            return not_checked(f"its header is beyond the {MAX_METADATA_BYTES}-byte read cap")
        return broken("the header is cut short")
    data_start = -(-cur.pos // alignment) * alignment
    if data_start + end > size:
        return _cut_short("the tensor data", data_start + end, size)
    return OK


# --- HDF5 (.h5: Keras and TF weights; Cerebras .mdl) --------------------------------------------

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_UNDEFINED = {4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}


def hdf5_structure_of(f: IO[bytes], size: int, head: bytes, budget: WorkBudget, *,
                      strict: bool = True) -> Structure:
    """The superblock (at 0, or after a user block of 512, 1024, 2048... bytes) and its
    end-of-file address: the file must be at least that long."""
    at = 0
    while at + 8 <= size and at <= 1 << 20:
        if _read_at(f, at, 8) == _HDF5_SIGNATURE:
            break
        at = 512 if at == 0 else at * 2
    else:
        return broken("no HDF5 signature") if strict else not_checked("not an HDF5 file")
    block = _read_at(f, at, min(96, size - at))
    if len(block) < 14:
        return _cut_short("the HDF5 superblock", at + 14, size)
    version = block[8]
    if version in (0, 1):
        offsets_size, base_at = block[13], 24 if version == 0 else 28
        fields = 3  # base, free-space info, end of file
    elif version in (2, 3):
        offsets_size, base_at = block[9], 12
        fields = 3  # base, superblock extension, end of file
    else:
        return not_checked(f"HDF5 superblock version {version}")
    if offsets_size not in (4, 8) or base_at + fields * offsets_size > len(block):
        return broken("HDF5 superblock is invalid or cut short")
    fmt = "<I" if offsets_size == 4 else "<Q"
    base = struct.unpack_from(fmt, block, base_at)[0]
    eof = struct.unpack_from(fmt, block, base_at + 2 * offsets_size)[0]
    if eof == _UNDEFINED[offsets_size] or base == _UNDEFINED[offsets_size]:
        return not_checked("HDF5 end-of-file address undefined")
    if base + eof > size:
        return _cut_short("its HDF5 superblock's end-of-file address", base + eof, size)
    return OK


def lenient_hdf5_structure_of(f: IO[bytes], size: int, head: bytes, budget: WorkBudget) -> Structure:
    return hdf5_structure_of(f, size, head, budget, strict=False)


# --- msgpack (Flax) ------------------------------------------------------------------------------

# For each first byte: (bytes of a length that follows, fixed payload bytes, items it contains per
# length unit), the rest computed in msgpack_structure_of.
_MSGPACK_LENGTH = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}     # bin / str: skip the length
_MSGPACK_EXT = {0xC7: 1, 0xC8: 2, 0xC9: 4}                                  # ext: a type byte, then data
_MSGPACK_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2,
                  0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
_MSGPACK_CONTAINER = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}  # array16/32, map16/32
_UINT = {1: ">B", 2: ">H", 4: ">I"}


def msgpack_structure_of(f: IO[bytes], size: int, head: bytes, budget: WorkBudget) -> Structure:
    """One msgpack object that ends exactly at the end of the file (what flax.serialization
    writes), walked without recursion, seeking over byte strings and arrays' data."""
    f.seek(0)
    position = 0
    pending = [1]  # objects still to read at each open level
    objects = 0

    def read(n: int) -> bytes:
        nonlocal position
        data = f.read(n)
        if len(data) != n:
            raise _Cut()
        position += n
        return data

    def skip(n: int) -> None:
        nonlocal position
        position += n
        if position > size:
            raise _Cut()
        f.seek(position)

    try:
        while pending:
            if pending[-1] == 0:
                pending.pop()
                continue
            pending[-1] -= 1
            objects += 1
            if objects % 1024 == 0:
                budget.spend(1024)
            if objects > MAX_MSGPACK_OBJECTS:
                return not_checked(f"more than {MAX_MSGPACK_OBJECTS} msgpack objects")
            b = read(1)[0]
            if b <= 0x7F or b >= 0xE0:
                continue  # fixint
            if b <= 0x8F or 0x90 <= b <= 0x9F:
                items = (b & 0x0F) * (2 if b <= 0x8F else 1)
            elif b <= 0xBF:
                skip(b & 0x1F)  # fixstr
                continue
            elif b in _MSGPACK_LENGTH:
                n = _MSGPACK_LENGTH[b]
                skip(struct.unpack(_UINT[n], read(n))[0])
                continue
            elif b in _MSGPACK_EXT:
                n = _MSGPACK_EXT[b]
                skip(1 + struct.unpack(_UINT[n], read(n))[0])
                continue
            elif b in _MSGPACK_FIXED:
                skip(_MSGPACK_FIXED[b])
                continue
            elif b in _MSGPACK_CONTAINER:
                n, per = _MSGPACK_CONTAINER[b]
                items = struct.unpack(_UINT[n], read(n))[0] * per
            else:
                return broken(f"byte 0x{b:02x} at {position - 1} is not msgpack")
            if items:
                if len(pending) >= MAX_MSGPACK_DEPTH:
                    return not_checked(f"msgpack nested deeper than {MAX_MSGPACK_DEPTH} levels")
                pending.append(items)
    except _Cut:
        return broken(f"the msgpack data is cut short at byte {min(position, size)} of {size}")
    if position != size:
        return broken(f"{size - position} bytes after the msgpack object")
    return OK


# --- OCDBT (Orbax's storage) -------------------------------------------------------------------

_OCDBT_MANIFEST_MAGIC = 0x0CDB3A2A
_OCDBT_DATA_MAGIC = 0x0CDB20DE  # a data file of B-tree and version nodes


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def ocdbt_structure_of(f: IO[bytes], size: int, head: bytes, budget: WorkBudget) -> Structure:
    """`manifest.ocdbt` and node files: magic, then their own length, which must be the file's,
    then (last 4 bytes) the CRC-32C of the rest, checked for files up to MAX_CRC_BYTES. A data
    file of raw values (no magic) has nothing to check."""
    if len(head) < 12:
        return _cut_short("an OCDBT header", 12, size) if f.name.endswith("manifest.ocdbt") else OK
    magic = struct.unpack(">I", head[:4])[0]
    manifest = magic == _OCDBT_MANIFEST_MAGIC
    if not manifest and magic != _OCDBT_DATA_MAGIC:
        return broken("not an OCDBT manifest (no magic)") if os.path.basename(f.name) == "manifest.ocdbt" else OK
    (length,) = struct.unpack("<Q", head[4:12])
    if length != size:
        return broken(f"its OCDBT header says {length} bytes, the file has {size}"
                      + (" (cut short)" if length > size else ""))
    if size <= MAX_CRC_BYTES and size >= 16:
        budget.spend(size // CRC_BYTES_PER_STEP)
        data = _read_at(f, 0, size)
        if crc32c(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
            return broken("its CRC-32C does not match its content")
    return OK


_CHECKS: dict[str, Callable[[IO[bytes], int, bytes, WorkBudget], Structure]] = {
    "safetensors": safetensors_structure_of,
    "torch": torch_structure_of,
    "bin": generic_bin_structure_of,
    "zip": zip_structure_of,
    "tar": tar_structure_of,
    "gguf": gguf_structure_of,
    "hdf5": hdf5_structure_of,
    "hdf5-or-other": lenient_hdf5_structure_of,
    "msgpack": msgpack_structure_of,
    "ocdbt": ocdbt_structure_of,
}
KINDS = tuple(_CHECKS)


def checker(kind: str) -> Callable[[str, WorkBudget], Structure]:
    """A function of a path and a budget for `kind` (named, so CheckpointFiles caches each kind's answer)."""
    def check(path: str, budget: WorkBudget) -> Structure:
        return check_file(path, kind, budget)
    check.__name__ = f"check_{kind}"
    return check


# Single-kind entry points (tests, and callers that know the kind).
def safetensors_structure(path: str) -> Structure:
    return check_file(path, "safetensors")


def zip_structure(path: str) -> Structure:
    return check_file(path, "zip")


def torch_structure(path: str) -> Structure:
    return check_file(path, "torch")


def tar_structure(path: str) -> Structure:
    return check_file(path, "tar")


def gguf_structure(path: str) -> Structure:
    return check_file(path, "gguf")


def hdf5_structure(path: str) -> Structure:
    return check_file(path, "hdf5")


def msgpack_structure(path: str) -> Structure:
    return check_file(path, "msgpack")


def ocdbt_structure(path: str) -> Structure:
    return check_file(path, "ocdbt")
