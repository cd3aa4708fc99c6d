"""Bounded, read-only looks at a checkpoint's small metadata: never a weight, never an unpickle.

`CheckpointFiles` is one checkpoint as a root directory and its file list (path -> size), with
each read capped at `MAX_METADATA_BYTES` and remembered, so the format, step, resumable and
completeness rules can all ask for the same file and it is read once. Structural checks of
weight containers read only their headers or their ends:
  - safetensors: the 8-byte header length and the JSON header; data must end at the file's end.
  - zip (torch.save, .keras): the end-of-central-directory record at the end of the file.
  - tar (.nemo): the member headers, seeking over the data.
  - GGUF: the header and tensor table.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from checkpoint_operator.agent import safe_pickle

MAX_METADATA_BYTES = 16 * 1024 * 1024  # cap of any one metadata read (json, pickle, header)
MAX_TAR_MEMBERS = 100_000
MAX_ZIP_ENTRIES = 100_000


class Unreadable(Exception):
    """The file cannot be read as what it claims to be; the message says why, for a user."""


@dataclass(frozen=True)
class Structure:
    """A structural check of one file: ok, or why not; `checked` False when the file is not
    what its name says (then nothing is concluded from it)."""

    ok: bool
    why: str = ""
    checked: bool = True


NOT_CHECKED = Structure(True, "", checked=False)


def _open_regular(path: str):
    # O_NOFOLLOW is not used: the scan follows symlinks that stay inside the checkpoint.
    f = open(path, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise Unreadable("not a regular file")
    return f


def read_capped(path: str, limit: int = MAX_METADATA_BYTES) -> bytes:
    try:
        with _open_regular(path) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise Unreadable(f"unreadable ({e.strerror})") from None
    if len(data) > limit:
        raise Unreadable(f"larger than {limit} bytes, not read")
    return data


# --- safetensors -----------------------------------------------------------------------------

def safetensors_structure(path: str) -> Structure:
    """The header parses and the data it describes ends exactly at the end of the file."""
    try:
        with _open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return Structure(False, "empty (0 bytes): its save never wrote it")
            head = f.read(9)
            if len(head) < 9 or head[8:9] != b"{":
                return NOT_CHECKED  # no JSON header where safetensors has one: another format
            (n,) = struct.unpack("<Q", head[:8])
            if n < 2 or n > MAX_METADATA_BYTES:
                return Structure(False, f"header length {n} is not between 2 and the {MAX_METADATA_BYTES}-byte cap")
            if 8 + n > size:
                return Structure(False, f"header of {n} bytes does not fit in {size} bytes (cut short)")
            header = json.loads(b"{" + f.read(n - 1))
    except (OSError, Unreadable) as e:
        return Structure(False, str(getattr(e, "strerror", None) or e))
    except (ValueError, UnicodeDecodeError):
        return Structure(False, "header is not valid JSON")
    if not isinstance(header, dict):
        return Structure(False, "header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            return Structure(False, f"tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    expected = 8 + n + end
    if expected != size:
        return Structure(False, f"header describes {expected} bytes, the file has {size} (cut short)"
                         if size < expected else f"header describes {expected} bytes, the file has {size}")
    return Structure(True)


# --- zip (torch.save, .keras) ----------------------------------------------------------------

_EOCD = struct.Struct("<4sHHHHIIH")          # end of central directory record, 22 bytes
_ZIP64_LOCATOR = struct.Struct("<4sIQI")     # 20 bytes, just before the EOCD
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes


def _central_directory(f, size: int) -> tuple[int, int, int]:
    """(offset, size, number of entries) of the central directory, from the records at the end of the
    file (at most 64 KiB read): it must end where those records begin, as a writer that
    finished leaves it."""
    tail_len = min(size, _EOCD.size + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise Unreadable("no end-of-central-directory record at the end (cut short, or not a zip)")
    _, _, _, _, count, cd_size, cd_offset, comment_len = _EOCD.unpack_from(tail, at)
    eocd_pos = size - tail_len + at
    if eocd_pos + _EOCD.size + comment_len != size:
        raise Unreadable("end-of-central-directory record does not end the file")
    end = eocd_pos
    # torch.save (miniz) writes zip64 records even for small files; others only when needed.
    has_locator = at >= _ZIP64_LOCATOR.size and tail[at - _ZIP64_LOCATOR.size:][:4] == b"PK\x06\x07"
    if has_locator or cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:
        if not has_locator:
            raise Unreadable("zip64 locator missing")
        _, _, z64_pos, _ = _ZIP64_LOCATOR.unpack_from(tail, at - _ZIP64_LOCATOR.size)
        if z64_pos + _ZIP64_EOCD.size > size:
            raise Unreadable("zip64 locator is invalid")
        f.seek(z64_pos)
        record = f.read(_ZIP64_EOCD.size)
        if len(record) != _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
            raise Unreadable("zip64 end-of-central-directory record is invalid")
        count, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)[7:10]
        end = z64_pos
    if cd_offset + cd_size != end:
        raise Unreadable("central directory does not end where its end record begins")
    return cd_offset, cd_size, count


def zip_entries(path: str) -> dict[str, zipfile.ZipInfo]:
    """The entries of a zip whose central directory is whole; raises Unreadable otherwise, or
    when it has more than MAX_ZIP_ENTRIES (listing them is what costs memory)."""
    try:
        with _open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            cd_offset, cd_size, count = _central_directory(f, size)
            if count > MAX_ZIP_ENTRIES or cd_size > MAX_METADATA_BYTES:
                raise Unreadable(f"central directory of {count} entries, {cd_size} bytes: beyond the caps, not listed")
            infos = zipfile.ZipFile(f).infolist()
    except OSError as e:
        raise Unreadable(f"unreadable ({e.strerror})") from None
    except zipfile.BadZipFile as e:
        raise Unreadable(f"not a valid zip: {e}") from None
    for info in infos:
        if info.header_offset + info.compress_size > cd_offset:
            raise Unreadable(f"entry {info.filename!r} extends past the data (cut short)")
    return {info.filename: info for info in infos}


def zip_member(path: str, name: str, limit: int = MAX_METADATA_BYTES) -> bytes:
    """One small member of a zip, its CRC checked; at most `limit` bytes decompressed."""
    try:
        with _open_regular(path) as f, zipfile.ZipFile(f) as z:
            info = z.getinfo(name)
            if info.file_size > limit:
                raise Unreadable(f"{name} is larger than {limit} bytes, not read")
            with z.open(info) as member:
                data = member.read(limit + 1)
    except (OSError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise Unreadable(f"cannot read {name}: {e}") from None
    if len(data) > limit:
        raise Unreadable(f"{name} is larger than {limit} bytes, not read")
    return data


def is_zip(path: str) -> bool:
    try:
        with _open_regular(path) as f:
            return f.read(4) == b"PK\x03\x04"
    except (OSError, Unreadable):
        return False


def zip_structure(path: str) -> Structure:
    """The central directory ends where the end records begin, at the end of the file."""
    try:
        with _open_regular(path) as f:
            _central_directory(f, os.fstat(f.fileno()).st_size)
    except OSError as e:
        return Structure(False, f"unreadable ({e.strerror})")
    except Unreadable as e:
        return Structure(False, str(e))
    return Structure(True)


def torch_pickle_name(entries: Mapping[str, zipfile.ZipInfo]) -> Optional[str]:
    """`<archive>/data.pkl` of a torch.save zip (the archive is named after the file), or None."""
    names = [n for n in entries if n.count("/") == 1 and n.endswith("/data.pkl")]
    return names[0] if len(names) == 1 else None


# --- tar (.nemo) -----------------------------------------------------------------------------

def tar_structure(path: str) -> Structure:
    """Every member header is readable and its data is inside the file; an uncompressed tar only."""
    try:
        with _open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if f.read(2) == b"\x1f\x8b":
                return Structure(True, "gzip-compressed: only the gzip magic was read")
            f.seek(0)
            count = 0
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for member in tar:
                    count += 1
                    if count > MAX_TAR_MEMBERS:
                        return Structure(False, f"more than {MAX_TAR_MEMBERS} members, not checked")
                    if member.offset_data + member.size > size:
                        return Structure(False, f"member {member.name!r} extends past the end (cut short)")
    except (OSError, Unreadable) as e:
        return Structure(False, str(getattr(e, "strerror", None) or e))
    except tarfile.TarError as e:
        return Structure(False, f"not a valid tar: {e}")
    if count == 0:
        return Structure(False, "no members")
    return Structure(True)


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


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        s = struct.Struct("<" + fmt)
        if self.pos + s.size > len(self.data):
            raise Unreadable("header is cut short")
        values = s.unpack_from(self.data, self.pos)
        self.pos += s.size
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.data):
            raise Unreadable("header is cut short")
        text = self.data[self.pos:self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return text

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _GGUF_SCALARS:
            return self.take(_GGUF_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9 and depth < 4:
            # Arrays (a tokenizer's vocabulary) are skipped, not built: only scalars are needed.
            item_kind, count = self.take("IQ")
            if count > len(self.data) - self.pos:
                raise Unreadable("array longer than the header")
            if item_kind in _GGUF_SCALARS:
                self.pos += count * struct.calcsize("<" + _GGUF_SCALARS[item_kind])
            else:
                for _ in range(count):
                    self.value(item_kind, depth + 1)
            return None
        raise Unreadable(f"unknown value type {kind}")


def gguf_structure(path: str) -> Structure:
    """Magic, version, metadata and tensor table parse within the header cap, and the file is
    at least as long as the tensor data they describe."""
    try:
        with _open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            cur = _Cursor(f.read(MAX_METADATA_BYTES))
        if cur.take("4s") != b"GGUF":
            return Structure(False, "no GGUF magic")
        version = cur.take("I")
        if version not in (2, 3):
            return Structure(False, f"GGUF version {version} is not 2 or 3")
        n_tensors, n_kv = cur.take("QQ")
        alignment = 32
        for _ in range(n_kv):
            key = cur.string()
            value = cur.value(cur.take("I"))
            if key == "general.alignment" and isinstance(value, int) and value > 0:
                alignment = value
        end, unknown = 0, False
        for _ in range(n_tensors):
            cur.string()
            dims = [cur.take("Q") for _ in range(cur.take("I"))]
            kind, offset = cur.take("IQ")
            elements = 1
            for d in dims:
                elements *= d
            if kind not in GGML_TYPE_SIZES:
                unknown = True
                continue
            per_block, block_bytes = GGML_TYPE_SIZES[kind]
            end = max(end, offset + elements // per_block * block_bytes)
    except Unreadable as e:
        return Structure(False, str(e))
    except OSError as e:
        return Structure(False, f"unreadable ({e.strerror})")
    data_start = -(-cur.pos // alignment) * alignment
    if data_start + end > size:
        return Structure(False, f"tensor data needs {data_start + end} bytes, the file has {size} (cut short)")
    return Structure(True, "tensor types unknown to this check: sizes not all verified" if unknown else "")


# --- one checkpoint's files ----------------------------------------------------------------

@dataclass
class CheckpointFiles:
    """A checkpoint as its root and files (relative '/'-separated path -> size in bytes).

    `name` is the checkpoint directory's own name (its step and Trainer naming come from it).
    Reads go through the cache, so each metadata file is read at most once."""

    root: Path
    sizes: Mapping[str, int]
    name: str = ""
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.paths = sorted(self.sizes)

    def has(self, rel: str) -> bool:
        return rel in self.sizes

    def path_of(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def _cached(self, key: tuple, compute):
        if key not in self._cache:
            try:
                self._cache[key] = compute()
            except Unreadable as e:
                self._cache[key] = e
        value = self._cache[key]
        if isinstance(value, Unreadable):
            raise value
        return value

    def bytes(self, rel: str) -> bytes:
        return self._cached(("bytes", rel), lambda: read_capped(self.path_of(rel)))

    def json(self, rel: str) -> Any:
        def parse():
            try:
                return json.loads(self.bytes(rel))
            except (ValueError, UnicodeDecodeError):
                raise Unreadable(f"{rel} is not valid JSON") from None
        return self._cached(("json", rel), parse)

    def text(self, rel: str) -> str:
        return self.bytes(rel).decode("utf-8", "replace")

    def zip_entries(self, rel: str) -> dict[str, zipfile.ZipInfo]:
        return self._cached(("zip", rel), lambda: zip_entries(self.path_of(rel)))

    def torch_pickle(self, rel: str) -> Any:
        """The object a torch.save zip holds, as safe_pickle reads it (tensors opaque)."""
        def load():
            name = torch_pickle_name(self.zip_entries(rel))
            if name is None:
                raise Unreadable(f"{rel} is a zip without a torch data.pkl")
            return safe_pickle.loads(zip_member(self.path_of(rel), name))
        return self._cached(("torch", rel), load)

    def pickle(self, rel: str) -> Any:
        return self._cached(("pickle", rel), lambda: safe_pickle.loads(self.bytes(rel)))

    def structure(self, rel: str, check) -> Structure:
        return self._cached(("structure", rel, check.__name__), lambda: check(self.path_of(rel)))

    def is_zip(self, rel: str) -> bool:
        return self._cached(("is_zip", rel), lambda: is_zip(self.path_of(rel)))


def list_files(root: Path) -> dict[str, int]:
    """Regular files under `root` (symlinks not followed), for callers without a scan of their own."""
    out: dict[str, int] = {}
    stack = [("", os.fspath(root))]
    while stack:
        rel_dir, directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((rel, entry.path))
                elif entry.is_file(follow_symlinks=False):
                    out[rel] = entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return out

