"""A tar stream of a checkpoint's files, written and read one member at a time (push and pull).

Writing uses the standard library (POSIX.1-2001 pax format, so long names and files past 8 GiB
need nothing else). Reading is our own, for the subset written here: regular files with
ustar or pax headers. tarfile's stream mode reads a pax header whole whatever size it claims;
here a header is refused past MAX_HEADER_BYTES, so memory stays bounded whatever arrives, and
every other kind of member (links, devices, directories) is refused, naming it.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol

from checkpoint_operator.protocol.errors import AgentError

BLOCK = 512
MAX_HEADER_BYTES = 1 << 20  # a pax header holds a path (at most 4096 bytes) and a few numbers
COPY_CHUNK = 1 << 20


class TarStreamError(AgentError):
    pass


# --- writing -------------------------------------------------------------------------------------

class ByteSource(Protocol):
    """What a tar stream is read from: a file, stdin, a pod's exec session."""

    def read(self, n: int, /) -> bytes: ...


class ByteSink(Protocol):
    """What a tar stream is written to: a file, stdout, a pod's exec session."""

    def write(self, data: bytes, /) -> int: ...


class TarWriter:
    """Regular files into a pax tar stream on `out` (anything with write(bytes))."""

    def __init__(self, out: ByteSink, on_bytes: Optional[Callable[[int], None]] = None) -> None:
        # stream mode ("w|") only writes to `out`; typeshed asks for a seekable file object
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                                bufsize=COPY_CHUNK)
        self.on_bytes = on_bytes

    def add_bytes(self, rel: str, data: bytes) -> None:
        self.tar.addfile(self._info(rel, len(data)), io.BytesIO(data))

    def add_file(self, rel: str, path: str, size: int) -> None:
        """`size` as recorded in the manifest: a file that changed meanwhile fails here (shorter)
        or arrives with its first `size` bytes, whose sha256 the reader then refuses."""
        with open(path, "rb") as f:
            self.tar.addfile(self._info(rel, size), _Counting(f, self.on_bytes) if self.on_bytes else f)

    def close(self) -> None:
        self.tar.close()

    @staticmethod
    def _info(rel: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(rel)
        info.size, info.mode, info.type = size, 0o644, tarfile.REGTYPE
        return info


class _Counting:
    def __init__(self, f: ByteSource, on_bytes: Callable[[int], None]) -> None:
        self.f, self.on_bytes = f, on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.on_bytes(len(data))
        return data


# --- reading -------------------------------------------------------------------------------------

@dataclass
class Member:
    path: str
    size: int
    stream: "_MemberReader"

    def read(self, n: int) -> bytes:
        return self.stream.read(n)


class _MemberReader:
    def __init__(self, source: ByteSource, size: int, where: str) -> None:
        self.source, self.left, self.where = source, size, where

    def read(self, n: int) -> bytes:
        n = min(n, self.left)
        if n <= 0:
            return b""
        data = self.source.read(n)
        if not data:
            raise TarStreamError(f"{self.where}: the stream ended inside a file")
        self.left -= len(data)
        return data

    def drain(self) -> None:
        while self.read(COPY_CHUNK):
            pass


def _read_exactly(source: ByteSource, n: int, where: str) -> bytes:
    chunks, left = [], n
    while left:
        data = source.read(left)
        if not data:
            raise TarStreamError(f"{where}: the stream ended inside a tar header")
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def _number(field: bytes, where: str) -> int:
    if field and field[0] & 0x80:  # base-256 (GNU), for sizes past the octal field
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarStreamError(f"{where}: corrupt tar header (number {field!r}): not a tar stream") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes, where: str) -> dict[str, str]:
    records, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarStreamError(f"{where}: corrupt pax header") from None
        if length <= 0 or space < 0 or pos + length > len(data):
            raise TarStreamError(f"{where}: corrupt pax header")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def iter_files(source: ByteSource, where: str) -> Iterator[Member]:
    """The regular files of a tar stream, in order. Each member must be read (or is drained)
    before the next one is produced. Ends at the end-of-archive blocks; TarStreamError for
    anything else than regular files, a header past MAX_HEADER_BYTES, a stream cut short."""
    pax: dict[str, str] = {}
    while True:
        header = _read_exactly(source, BLOCK, where)
        if header == b"\0" * BLOCK:
            return
        checksum = _number(header[148:156], where)
        if checksum not in (sum(header[:148]) + 256 + sum(header[156:]),):
            raise TarStreamError(f"{where}: corrupt tar header (bad checksum): not a tar stream")
        kind, size = header[156:157], _number(header[124:136], where)
        if kind in (b"x", b"g"):
            if size > MAX_HEADER_BYTES:
                raise TarStreamError(f"{where}: a pax header claims {size} bytes, more than the {MAX_HEADER_BYTES} "
                                     f"a header may have")
            records = _pax_records(_read_exactly(source, size, where), where)
            _read_exactly(source, -size % BLOCK, where)
            if kind == b"x":
                pax.update(records)
            continue
        name = _text(header[0:100])
        if header[257:262] == b"ustar" and header[345:500].strip(b"\0"):
            name = _text(header[345:500]) + "/" + name
        name = pax.pop("path", name)
        if "size" in pax:
            try:
                size = int(pax.pop("size"))
            except ValueError:
                raise TarStreamError(f"{where}: corrupt pax header (size)") from None
        pax.clear()
        if kind not in (b"0", b"\0"):
            what = {b"1": "a hard link", b"2": "a symlink", b"3": "a character device", b"4": "a block device",
                    b"5": "a directory", b"6": "a fifo"}.get(kind, f"a member of type {kind!r}")
            raise TarStreamError(f"{where}: member '{name}' is {what}; only regular files are accepted")
        reader = _MemberReader(source, size, where)
        yield Member(name, size, reader)
        reader.drain()
        _read_exactly(source, -size % BLOCK, where)
