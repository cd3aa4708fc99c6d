"""Bounded, read-only looks at a checkpoint's small metadata: never a weight, never an unpickle.

Everything here reads what a tenant wrote, so every read has a bound whatever the input:
  - size: at most MAX_METADATA_BYTES per read (a bigger file is not read at all);
  - JSON (`parse_json`): UTF-8 only, at most MAX_JSON_DEPTH levels of nesting (checked before
    parsing: Python's parser recurses), integers of at most MAX_INT_DIGITS digits and finite
    floats; a number beyond those becomes an `OutOfRange`, which no reader takes for a number;
  - pickles: agent/safe_pickle.py (opcodes counted, nothing imported or called);
  - zips: the central directory at the end, at most MAX_ZIP_ENTRIES entries.
Every failure is `Unreadable` with a one-line reason; `CheckpointFiles` remembers which of a
checkpoint's files could not be read and why (`problems`), so the checkpoint says so instead
of the scan failing. The structural checks of weight files are in agent/file_checks.py.
"""

from __future__ import annotations

import json
import operator
import os
import re
import stat
import struct
import zipfile
from dataclasses import dataclass, field
from itertools import accumulate, count
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Optional, TypeVar

from checkpoint_operator.agent import safe_pickle
from checkpoint_operator.protocol.names import printable
from checkpoint_operator.agent.work_limit import OverBudget, WorkBudget

MAX_METADATA_BYTES = 16 * 1024 * 1024  # cap of any one metadata read (json, pickle, header)
MAX_JSON_DEPTH = 64  # real metadata nests a few levels (a Keras config.json about 20)
MAX_INT_DIGITS = 19  # int64's; a longer integer is never a step, a size or a count
MAX_FLOAT_CHARS = 64  # a float literal longer than this is not something a framework wrote
MAX_ZIP_ENTRIES = 100_000
INT64_MAX = 2**63 - 1  # every integer the operator writes fits the CRD schema's int64
MAX_QUOTED = 80  # characters of a tenant-written string quoted in a reason
JSON_BYTES_PER_STEP = 16  # what a step of the work budget (agent/work_limit.py) buys of JSON parsing

T = TypeVar("T")


class Unreadable(Exception):
    """The file cannot be read as what it claims to be; the message says why, for a user."""


class NotRead(Unreadable):
    """Beyond a cap or the checkpoint's work or memory bound: not read, so nothing is concluded."""


class OutOfRange:
    """A JSON number no reader uses: an integer of more than MAX_INT_DIGITS digits, a float that
    is not finite (`1e999`), `NaN` or `Infinity`. Neither an int nor a float, so a reader that
    wants a number skips it; `text` is its start, for messages."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)"

    def __repr__(self) -> str:
        return f"OutOfRange({self.text})"


def bounded_int(value: Any) -> Optional[int]:
    """`value` when it is a non-negative integer that fits int64 (a step, a size, a count), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX:
        return value
    return None


def is_too_big(value: Any) -> bool:
    """An integer beyond int64 or an OutOfRange number: said so, rather than silently dropped."""
    return isinstance(value, OutOfRange) or (isinstance(value, int) and not isinstance(value, bool)
                                             and value > INT64_MAX)


def quoted(text: Any, limit: int = MAX_QUOTED) -> str:
    """A tenant-written value for a one-line reason: printable, at most `limit` characters."""
    if isinstance(text, OutOfRange):
        return printable(text.text)
    if isinstance(text, int) and not isinstance(text, bool) and text.bit_length() > 64:
        return f"an integer of {len(str(text)) if text.bit_length() < 14000 else 'over 4000'} digits"
    text = text if isinstance(text, str) else repr(text) if isinstance(text, (int, float)) else type(text).__name__
    short = text[:limit]
    return printable(short) + (f"... ({len(text)} characters)" if len(text) > limit else "")


def _nonblocking(path: str, flags: int) -> int:
    # O_NONBLOCK: opening a fifo put in place of a file would otherwise wait for a writer forever
    # (regular files ignore the flag).
    return os.open(path, flags | os.O_NONBLOCK)


def _open_regular(path: str) -> IO[bytes]:
    # O_NOFOLLOW is not used: the scan follows symlinks that stay inside the checkpoint.
    f = open(path, "rb", opener=_nonblocking)
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise Unreadable("not a regular file")
    return f


def open_regular(path: str) -> IO[bytes]:
    """The file opened for reading; Unreadable when it is not a regular file (OSError as is)."""
    return _open_regular(path)


def read_capped(path: str, limit: int = MAX_METADATA_BYTES) -> bytes:
    try:
        with _open_regular(path) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise Unreadable(f"unreadable ({e.strerror})") from None
    if len(data) > limit:
        raise Unreadable(f"larger than {limit} bytes, not read")
    return data


# --- JSON ------------------------------------------------------------------------------------

# A JSON string (escapes included), unrolled so the regex engine never backtracks; an unterminated
# one runs to the end of the text, so that no quote after it starts another scan to the end (which
# made the skeleton quadratic in the number of escaped quotes of an unterminated string).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*\\?(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN_AS_TWO = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def json_depth(data: bytes) -> int:
    """How deep the brackets of a JSON text nest (strings ignored), without recursion: each
    opening bracket counts 2 and each closing 0, so after k brackets the depth is the sum - k.
    C-speed iterators throughout: about 40 ns a bracket."""
    skeleton = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKET).translate(_OPEN_AS_TWO)
    return max(map(operator.sub, accumulate(skeleton), count(1)), default=0)


def _parse_int(text: str) -> int | OutOfRange:
    return OutOfRange(text) if len(text.lstrip("-")) > MAX_INT_DIGITS else int(text)


def _parse_float(text: str) -> float | OutOfRange:
    if len(text) > MAX_FLOAT_CHARS:
        return OutOfRange(text)
    value = float(text)
    return value if value - value == 0 else OutOfRange(text)  # inf - inf and nan - nan are nan


def parse_json(data: bytes) -> Any:
    """JSON within the bounds of the module doc; Unreadable (one line, no file name) otherwise."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Unreadable(f"not UTF-8 text (byte {e.start})") from None
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise Unreadable(f"nested {depth} levels deep (at most {MAX_JSON_DEPTH} are read)")
    try:
        return json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=OutOfRange)
    except json.JSONDecodeError as e:
        raise Unreadable(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (ValueError, RecursionError):  # the depth check makes RecursionError impossible; belt and braces
        raise Unreadable("not valid JSON") from None


# --- zip (torch.save, .keras) ----------------------------------------------------------------

_EOCD = struct.Struct("<4sHHHHIIH")          # end of central directory record, 22 bytes
_ZIP64_LOCATOR = struct.Struct("<4sIQI")     # 20 bytes, just before the EOCD
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes


def central_directory(f: IO[bytes], size: int) -> tuple[int, int, int]:
    """(offset, size, number of entries) of the central directory, from the records at the end of the
    file (at most 64 KiB read): it must end where those records begin, as a writer that
    finished leaves it. Unreadable otherwise."""
    tail_len = min(size, _EOCD.size + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise Unreadable("no end-of-central-directory record at the end (cut short, or not a zip)")
    _, _, _, _, entries, cd_size, cd_offset, comment_len = _EOCD.unpack_from(tail, at)
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
        entries, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)[7:10]
        end = z64_pos
    if cd_offset + cd_size != end:
        raise Unreadable("central directory does not end where its end record begins")
    return cd_offset, cd_size, entries


def zip_entries(path: str) -> dict[str, zipfile.ZipInfo]:
    """The entries of a zip whose central directory is whole; raises Unreadable otherwise, or
    when it has more than MAX_ZIP_ENTRIES (listing them is what costs memory)."""
    try:
        with _open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            cd_offset, cd_size, entries = central_directory(f, size)
            if entries > MAX_ZIP_ENTRIES or cd_size > MAX_METADATA_BYTES:
                raise Unreadable(f"central directory of {entries} entries, {cd_size} bytes: beyond the caps, "
                                 "not listed")
            infos = zipfile.ZipFile(f).infolist()
            _check_local_headers(f, infos, cd_offset)
    except OSError as e:
        raise Unreadable(f"unreadable ({e.strerror})") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, NotImplementedError, struct.error,
            OverflowError) as e:  # zipfile refuses some headers with NotImplementedError ("zip file version 10.2")
        raise Unreadable(f"not a valid zip: {quoted(str(e))}") from None
    return {info.filename: info for info in infos}


_LOCAL_HEADER = struct.Struct("<4s22xHH")
_MIN_DATA_DESCRIPTOR = 12  # CRC and two 4-byte sizes (a signature and zip64 sizes make it longer)  # signature, then (after 22 bytes) name and extra lengths: 30 bytes


def _check_local_headers(f: IO[bytes], infos: list[zipfile.ZipInfo], cd_offset: int) -> None:
    """Every entry the central directory lists has its local header where it says, under the
    same name, and its data ends before the next entry begins (or the central directory): a
    member removed, cut or rewritten shorter after the directory was written is found here.
    One 30-byte read and the name per entry; no member data is read."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    for info, following in zip(ordered, [*ordered[1:], None]):
        what = f"entry {quoted(info.filename)}"
        f.seek(info.header_offset)
        header = f.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or info.header_offset + _LOCAL_HEADER.size > cd_offset:
            raise Unreadable(f"{what}: its local header is past the data (cut short)")
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
        if signature != b"PK\x03\x04":
            raise Unreadable(f"{what}: no local header at offset {info.header_offset} (the member is missing "
                             "or was overwritten)")
        name = f.read(name_len)
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        if name.decode(encoding, "replace") != info.orig_filename:
            raise Unreadable(f"{what}: the local header at offset {info.header_offset} names "
                             f"{quoted(name.decode(encoding, 'replace'))} (the member is missing)")
        end = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
        if info.flag_bits & 0x8:
            end += _MIN_DATA_DESCRIPTOR  # sizes and CRC written after the data (torch's miniz does)
        limit = following.header_offset if following is not None else cd_offset
        if end > limit:
            raise Unreadable(f"{what}: its {info.compress_size} bytes of data end at {end}, past "
                             f"{'the next entry' if following is not None else 'the end of the data'} at {limit} "
                             "(cut short)")


def zip_member(path: str, name: str, limit: int = MAX_METADATA_BYTES) -> bytes:
    """One small member of a zip, its CRC checked; at most `limit` bytes decompressed."""
    try:
        with _open_regular(path) as f, zipfile.ZipFile(f) as z:
            info = z.getinfo(name)
            if info.file_size > limit:
                raise Unreadable(f"{quoted(name)} is larger than {limit} bytes, not read")
            with z.open(info) as member:
                data = member.read(limit + 1)
    except (OSError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError,
            NotImplementedError, struct.error, OverflowError, RuntimeError) as e:
        raise Unreadable(f"cannot read {quoted(name)}: {quoted(str(e))}") from None
    if len(data) > limit:
        raise Unreadable(f"{quoted(name)} is larger than {limit} bytes, not read")
    return data


def is_zip(path: str) -> bool:
    try:
        with _open_regular(path) as f:
            return f.read(4) == b"PK\x03\x04"
    except (OSError, Unreadable):
        return False


def torch_pickle_name(entries: Mapping[str, zipfile.ZipInfo]) -> Optional[str]:
    """`<archive>/data.pkl` of a torch.save zip (the archive is named after the file), or None."""
    names = [n for n in entries if n.count("/") == 1 and n.endswith("/data.pkl")]
    return names[0] if len(names) == 1 else None


# --- one checkpoint's files ----------------------------------------------------------------

@dataclass
class CheckpointFiles:
    """A checkpoint as its root and files (relative '/'-separated path -> size in bytes).

    `name` is the checkpoint directory's own name (its step and Trainer naming come from it).
    `skipped`: entries the writer put in the checkpoint's directory that are not part of it
    (path -> why: a symlink that leaves it, an unreadable file), so a rule that needs one of
    them says so. Reads go through the cache, so each metadata file is read at most once;
    `problems` records every file a reader could not use, and why."""

    root: Path
    sizes: Mapping[str, int]
    name: str = ""
    skipped: Mapping[str, str] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)
    problems: dict[str, str] = field(default_factory=dict)
    # Files left unread because the checkpoint's work or memory bound was reached: no verdict on them.
    not_read: set[str] = field(default_factory=set)
    # A checkpoint assembled from workers' parts (agent/parts.py): the directory each file is in
    # (relative path -> top), where it differs from `root`.
    tops: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.paths = sorted(self.sizes)
        # Every parse of this checkpoint's files draws on one budget (agent/work_limit.py).
        self.budget = WorkBudget.for_bytes(sum(self.sizes.values()))

    def has(self, rel: str) -> bool:
        return rel in self.sizes

    def path_of(self, rel: str) -> str:
        return os.path.join(self.tops.get(rel, self.root), *rel.split("/"))

    def missing(self, rel: str, *, directory: bool = False) -> str:
        """Why `rel` is not among the files, for a reason: missing (a directory: not in this
        checkpoint), or not part of it because it was skipped, and why."""
        why = self.skipped.get(rel)
        if why is None:
            why = next((r for p, r in self.skipped.items() if rel.startswith(p + "/")), None)
        if why is None:
            return "not in this checkpoint" if directory else "missing"
        return f"not part of the checkpoint ({why})"

    def note(self, rel: str, why: str) -> None:
        """A file whose content a reader ignored: reported beside the verdict (first note kept)."""
        self.problems.setdefault(rel, why)

    def _cached(self, key: tuple, compute: Callable[[], T]) -> T:
        if key not in self._cache:
            try:
                self._cache[key] = compute()
            except Unreadable as e:
                # Kept without its traceback and context: they hold the frames of the failed parse,
                # and with them everything it built.
                e.__traceback__ = e.__context__ = e.__cause__ = None
                self._cache[key] = e
        value = self._cache[key]
        if isinstance(value, Unreadable):
            raise value
        return value

    def _recorded(self, rel: str, key: tuple, compute: Callable[[], T]) -> T:
        def bounded() -> T:
            try:
                return compute()
            except OverBudget as e:
                raise NotRead(f"not read: {e}") from None
        try:
            return self._cached(key, bounded)
        except Unreadable as e:
            self.note(rel, str(e))
            if isinstance(e, NotRead):
                self.not_read.add(rel)
            raise

    def bytes(self, rel: str) -> bytes:
        return self._recorded(rel, ("bytes", rel), lambda: read_capped(self.path_of(rel)))

    def json(self, rel: str) -> Any:
        return self._recorded(rel, ("json", rel), lambda: _budgeted_json(self.bytes(rel), self.budget))

    def text(self, rel: str) -> str:
        return self.bytes(rel).decode("utf-8", "replace")

    def zip_entries(self, rel: str) -> dict[str, zipfile.ZipInfo]:
        return self._cached(("zip", rel), lambda: zip_entries(self.path_of(rel)))

    def zip_json(self, rel: str, member: str) -> Any:
        """A JSON member of a zip (a .keras archive's config.json), bounded as any JSON."""
        def load() -> Any:
            try:
                return _budgeted_json(zip_member(self.path_of(rel), member), self.budget)
            except Unreadable as e:
                raise Unreadable(f"{quoted(member)}: {e}") from None
        return self._recorded(rel, ("zip_json", rel, member), load)

    def torch_pickle(self, rel: str) -> Any:
        """The object a torch.save zip holds, as safe_pickle reads it (tensors opaque)."""
        def load() -> Any:
            name = torch_pickle_name(self.zip_entries(rel))
            if name is None:
                raise Unreadable("a zip without a torch data.pkl")
            return _unpickled(zip_member(self.path_of(rel), name), self.budget)
        return self._recorded(rel, ("torch", rel), load)

    def pickle(self, rel: str) -> Any:
        return self._recorded(rel, ("pickle", rel), lambda: _unpickled(self.bytes(rel), self.budget))

    def structure(self, rel: str, check: Callable[[str, WorkBudget], T]) -> T:
        return self._cached(("structure", rel, getattr(check, "__name__", repr(check))),
                            lambda: check(self.path_of(rel), self.budget))

    def is_zip(self, rel: str) -> bool:
        return self._cached(("is_zip", rel), lambda: is_zip(self.path_of(rel)))


def _budgeted_json(data: bytes, budget: WorkBudget) -> Any:
    budget.spend(len(data) // JSON_BYTES_PER_STEP)
    return parse_json(data)


def _unpickled(data: bytes, budget: Optional[WorkBudget] = None) -> Any:
    try:
        return safe_pickle.load_prefix(data, budget=budget, kept=True)[0]
    except safe_pickle.NotAPickle as e:
        why, error = str(e), NotRead if isinstance(e, safe_pickle.TooBig) else Unreadable
    raise error(why)  # outside the except: the failed parse's frames are not kept as its context


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
