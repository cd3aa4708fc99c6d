"""Safe extraction of checkpoint archives (.tar, .tar.gz/.tgz, .tar.bz2, .zip).

An archive comes from outside the cluster and is treated as hostile. Refused, naming the member:
absolute paths, `..` components, symlinks and hardlinks whose target leaves the destination,
device files, fifos and other special members, more than `max_members` members, and more than
`max_size` bytes once expanded (checked against the declared sizes before any data is
decompressed, and again while writing). Checks are our own, member by member, in one pass;
Python's `data` tar filter runs behind them as a second layer, and a last pass checks every
symlink left in the tree by where it really resolves.

Memory stays bounded whatever the headers claim: tarfile reads a GNU long name or a PAX header
whole, so the decompressed stream it reads refuses any single read past MAX_READ (a 4 GiB
long-name header is refused, not read); a zip's central directory is counted, entry by entry,
before zipfile parses it (zipfile keeps an object per entry).

The caller extracts into an empty staging directory and removes it on any error, so a refused
archive leaves nothing behind.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import posixpath
import shutil
import stat
import struct
import tarfile
import zipfile
from typing import Optional

from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.agent.manifest import RESERVED_ROOT_NAMES
from checkpoint_operator.agent.names import path_problem, printable
from checkpoint_operator.agent.tree import UnsafeTree, check_written_tree

DEFAULT_MAX_SIZE = 2 * 1024 ** 4  # 2 TiB
DEFAULT_MAX_MEMBERS = 1_000_000
COPY_CHUNK = 8 * 1024 * 1024
# The largest single read tarfile may make of the decompressed stream: member data is read in
# COPY_CHUNK pieces; only a header (GNU long name/link, PAX) is read whole, and real ones are
# a few KiB.
MAX_READ = COPY_CHUNK

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar", ".zip")


def archive_kind(name: str) -> Optional[str]:
    """'tar' or 'zip' from the file name, or None when it is not an archive we extract."""
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2")):
        return "tar"
    return None


class UnsafeArchive(AgentError):
    pass


def _member_path(name: str, archive: str) -> str:
    """The normalized relative path of a member, or UnsafeArchive naming it."""
    if "\x00" in name:
        raise UnsafeArchive(f"{archive}: member {name!r} has a NUL byte in its name; archive refused")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise UnsafeArchive(f"{archive}: member {name!r} has an absolute path; archive refused")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{archive}: member {name!r} leaves the destination ('..'); archive refused")
    rel = "/".join(parts)
    problem = path_problem(rel) if rel else None
    if problem:
        raise UnsafeArchive(f"{archive}: member '{printable(name)}': file name {problem}; archive refused")
    if rel in RESERVED_ROOT_NAMES:  # a pulled checkpoint's manifest, say: never data, never trusted
        raise UnsafeArchive(f"{archive}: member '{printable(name)}': file name {rel!r} is reserved for the agent's own "
                            f"use (the manifest the agent writes beside a checkpoint); remove it from the archive")
    return rel


def _link_stays_inside(member_rel: str, target: str) -> bool:
    """A symlink at `member_rel` pointing at `target`, resolved lexically, stays in the root."""
    if target.startswith("/") or "\x00" in target:
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member_rel), target))
    return not (resolved == ".." or resolved.startswith("../") or resolved.startswith("/"))


class _Limits:
    def __init__(self, archive: str, max_size: int, max_members: int) -> None:
        self.archive = archive
        self.max_size = max_size
        self.max_members = max_members
        self.size = 0
        self.members = 0

    def count(self, name: str, size: int) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise UnsafeArchive(f"{self.archive}: more than {self.max_members} members (at {name!r}); "
                                f"archive refused (raise the member limit if this is intended)")
        self.size += size
        if self.size > self.max_size:
            raise UnsafeArchive(f"{self.archive}: expands past the size limit of {self.max_size} bytes "
                                f"(at member {name!r}); archive refused (see --max-size)")


def _inside(root_real: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real + os.sep)


def _prepare_target(root: str, root_real: str, rel: str, archive: str, name: str, is_dir: bool = False) -> str:
    """Create the parent directories of a member, check they really lie inside the root, and
    clear the member's own path: a symlink or a file already there goes (a later member
    replaces an earlier one, as tar does; never written through), a directory stays only for a
    directory member."""
    target = os.path.join(root, *rel.split("/"))
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = _first_non_directory(root, rel.split("/")[:-1])
        raise UnsafeArchive(f"{archive}: member {name!r} needs '{printable(blocker)}' to be a directory, but the "
                            f"archive has it as a file; archive refused") from None
    if not _inside(root_real, parent):
        raise UnsafeArchive(f"{archive}: member {name!r} would be written through a symlink leading outside "
                            f"the destination; archive refused")
    if os.path.islink(target) or (os.path.lexists(target) and not os.path.isdir(target)):
        os.unlink(target)
    elif os.path.isdir(target) and not is_dir:
        raise UnsafeArchive(f"{archive}: member {name!r} would replace a directory; archive refused")
    return target


def _first_non_directory(root: str, parts: list[str]) -> str:
    """The first of the leading paths of `parts` under `root` that exists and is not a directory."""
    for i in range(1, len(parts) + 1):
        path = os.path.join(root, *parts[:i])
        if os.path.lexists(path) and not os.path.isdir(path):
            return "/".join(parts[:i])
    return "/".join(parts)


class _BoundedReads(io.RawIOBase):
    """A readable stream whose single reads may not exceed `limit` bytes (nor be unbounded)."""

    def __init__(self, stream, limit: int, archive: str, underlying=None) -> None:
        self.stream = stream
        self.limit = limit
        self.archive = archive
        self.underlying = underlying  # the file under a decompressor, closed with it

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self.limit:
            claimed = "everything" if size is None or size < 0 else f"{size} bytes"
            raise UnsafeArchive(f"{self.archive}: a tar header (GNU long name or PAX) claims {claimed}, more than "
                                f"the {self.limit} a header may have; archive refused")
        return self.stream.read(size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()

    def close(self) -> None:
        self.stream.close()
        if self.underlying is not None:
            self.underlying.close()
        super().close()


def _decompressed(path: str, archive: str) -> _BoundedReads:
    """The tar stream inside `path` (gzip, bzip2, xz or none, told by the magic bytes)."""
    raw = open(path, "rb")
    magic = raw.read(6)
    raw.seek(0)
    stream: io.BufferedIOBase
    if magic[:2] == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif magic[:3] == b"BZh":
        stream = bz2.BZ2File(raw)
    elif magic == b"\xfd7zXZ\x00":
        stream = lzma.LZMAFile(raw)
    else:
        return _BoundedReads(raw, MAX_READ, archive)
    return _BoundedReads(stream, MAX_READ, archive, underlying=raw)


def extract_tar(path: str, dest: str, *, max_size: int = DEFAULT_MAX_SIZE,
                max_members: int = DEFAULT_MAX_MEMBERS, label: Optional[str] = None) -> int:
    """Extract a tar archive (plain, gzip, bzip2 or xz) into the existing directory dest.
    Returns the number of bytes written."""
    archive = label or os.path.basename(path)
    limits = _Limits(archive, max_size, max_members)
    root_real = os.path.realpath(dest)
    written = 0
    try:
        stream = _decompressed(path, archive)
    except OSError as exc:
        raise AgentError(f"{archive}: cannot read: {exc.strerror}") from exc
    try:
        tar = tarfile.open(fileobj=stream, mode="r:")
    except UnsafeArchive:
        stream.close()
        raise
    except (tarfile.TarError, OSError, EOFError, zlib_error(), lzma.LZMAError) as exc:
        stream.close()
        raise AgentError(f"{archive}: not a readable tar archive: {exc}") from exc
    with tar, stream:
        try:
            # Iterating reads one header at a time: the limits are checked on the declared sizes
            # before the data of a member is decompressed (a gzip bomb is refused unexpanded).
            for member in tar:
                written += _extract_tar_member(tar, member, dest, root_real, archive, limits)
        except (tarfile.TarError, EOFError, OSError, zlib_error(), lzma.LZMAError) as exc:
            raise AgentError(f"{archive}: corrupt archive: {exc}") from exc
    _check_symlinks(dest, root_real, archive)
    return written


def zlib_error():
    import zlib
    return zlib.error


def _extract_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str, root_real: str,
                        archive: str, limits: _Limits) -> int:
    name = member.name
    rel = _member_path(name, archive)
    if member.isdev() or member.isfifo() or not (member.isreg() or member.isdir() or member.issym()
                                                   or member.islnk()):
        kind = ("character device" if member.ischr() else "block device" if member.isblk()
                else "fifo" if member.isfifo() else f"special member (type {member.type!r})")
        raise UnsafeArchive(f"{archive}: member {name!r} is a {kind}; archive refused")
    limits.count(name, member.size if member.isreg() else 0)
    if not rel:  # the archive's root directory itself ("./")
        return 0
    if member.issym():
        if not _link_stays_inside(rel, member.linkname):
            raise UnsafeArchive(f"{archive}: symlink {name!r} -> {member.linkname!r} leads outside the "
                                f"destination; archive refused")
    if member.islnk():
        try:
            link_rel = _member_path(member.linkname, archive)
        except UnsafeArchive:
            link_rel = None
        if not link_rel:
            raise UnsafeArchive(f"{archive}: hardlink {name!r} -> {member.linkname!r} leads outside the "
                                f"destination; archive refused")
        link_path = os.path.join(dest, *link_rel.split("/"))
        if not _inside(root_real, link_path) or not os.path.isfile(link_path) or os.path.islink(link_path):
            raise UnsafeArchive(f"{archive}: hardlink {name!r} -> {member.linkname!r} does not point at a file "
                                f"extracted before it; archive refused")
    target = _prepare_target(dest, root_real, rel, archive, name, is_dir=member.isdir())
    if member.issym():
        real = os.path.realpath(os.path.join(os.path.dirname(target), member.linkname))
        if not (real == root_real or real.startswith(root_real + os.sep)):
            raise UnsafeArchive(f"{archive}: symlink {name!r} -> {member.linkname!r} leads outside the "
                                f"destination; archive refused")
    # Second layer: the standard library's own rules for untrusted archives (PEP 706; absent
    # before Python 3.11.4, e.g. Debian 12's 3.11.2 — the checks above are complete without it).
    member.name = rel
    if member.islnk():
        member.linkname = _member_path(member.linkname, archive)
    safe = member
    if hasattr(tarfile, "data_filter"):
        try:
            safe = tarfile.data_filter(member, dest)
        except tarfile.FilterError as exc:
            raise UnsafeArchive(f"{archive}: member {name!r} refused: {exc}") from exc
    if member.isreg():
        src = tar.extractfile(member)
        if src is None:  # isreg() members always have data; a tarfile that says otherwise is broken
            raise UnsafeArchive(f"{archive}: member {name!r} has no data; archive refused")
        written = 0
        with open(target, "wb") as out:
            while written < member.size:
                chunk = src.read(min(COPY_CHUNK, member.size - written))
                if not chunk:
                    raise AgentError(f"{archive}: member {name!r} is truncated")
                out.write(chunk)
                written += len(chunk)
        os.chmod(target, (safe.mode if safe.mode is not None else 0o644) & 0o755 | 0o600)
        return written
    # Directories and links are made here rather than by tar.extract, so that no mode, owner or
    # time from the archive applies (and no `filter=` argument is needed on older Pythons).
    if member.isdir():
        os.makedirs(target, exist_ok=True)
    elif member.issym():
        os.symlink(member.linkname, target)
    else:  # a hard link to a regular file extracted before it (checked above)
        os.link(os.path.join(dest, *member.linkname.split("/")), target)
    return 0


def extract_zip(path: str, dest: str, *, max_size: int = DEFAULT_MAX_SIZE,
                max_members: int = DEFAULT_MAX_MEMBERS, label: Optional[str] = None) -> int:
    archive = label or os.path.basename(path)
    limits = _Limits(archive, max_size, max_members)
    root_real = os.path.realpath(dest)
    _count_zip_directory(path, archive, max_members)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise AgentError(f"{archive}: not a readable zip archive: {exc}") from exc
    written = 0
    with zf:
        infos = zf.infolist()
        # The central directory lists every member up front: check them all before writing.
        plan: list[tuple[zipfile.ZipInfo, str, Optional[str]]] = []
        for info in infos:
            rel = _member_path(info.filename, archive)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode) if info.create_system == 3 and mode else 0
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                raise UnsafeArchive(f"{archive}: member {info.filename!r} is a special file; archive refused")
            is_link = kind == stat.S_IFLNK
            limits.count(info.filename, 0 if info.is_dir() else info.file_size)
            if is_link:
                if info.file_size > 4096:
                    raise UnsafeArchive(f"{archive}: symlink {info.filename!r} has an oversized target")
                link_target = zf.read(info).decode("utf-8", "surrogateescape")
                if not _link_stays_inside(rel, link_target):
                    raise UnsafeArchive(f"{archive}: symlink {info.filename!r} -> {link_target!r} leads outside "
                                        f"the destination; archive refused")
                plan.append((info, rel, link_target))
            else:
                plan.append((info, rel, None))
        try:
            for info, rel, planned_link in plan:
                if not rel:
                    continue
                target = _prepare_target(dest, root_real, rel, archive, info.filename, is_dir=info.is_dir())
                if info.is_dir():
                    os.makedirs(target, exist_ok=True)
                    continue
                if planned_link is not None:
                    real = os.path.realpath(os.path.join(os.path.dirname(target), planned_link))
                    if not (real == root_real or real.startswith(root_real + os.sep)):
                        raise UnsafeArchive(f"{archive}: symlink {info.filename!r} -> {planned_link!r} leads "
                                            f"outside the destination; archive refused")
                    os.symlink(planned_link, target)
                    continue
                with zf.open(info) as src, open(target, "wb") as out:
                    # zipfile stops at the declared size and checks the CRC: a lying header fails.
                    shutil.copyfileobj(src, out, COPY_CHUNK)
                    written += out.tell()
                if written > max_size:
                    raise UnsafeArchive(f"{archive}: expands past the size limit of {max_size} bytes "
                                        f"(at member {info.filename!r}); archive refused (see --max-size)")
        except (zipfile.BadZipFile, zlib_error(), EOFError, NotImplementedError) as exc:
            raise AgentError(f"{archive}: corrupt or unsupported zip archive: {exc}") from exc
    _check_symlinks(dest, root_real, archive)
    return written


_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"


def _count_zip_directory(path: str, archive: str, max_members: int) -> None:
    """Walk the central directory header by header (46 bytes each plus its variable fields),
    refusing past `max_members` entries, before zipfile builds an object for every one. An
    archive this cannot make sense of is left to zipfile, which refuses it."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        tail_start = max(0, end - (65535 + 22))
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) - at < 22:
            return
        cd_size, cd_offset = struct.unpack("<II", tail[at + 12:at + 20])
        locator = at - 20
        if locator >= 0 and tail[locator:locator + 4] == _ZIP64_LOCATOR:
            (zip64_at,) = struct.unpack("<Q", tail[locator + 8:locator + 16])
            f.seek(zip64_at)
            record = f.read(56)
            zip64 = record[:4] == _ZIP64_EOCD and len(record) == 56
            if zip64:
                cd_size, cd_offset = struct.unpack("<QQ", record[40:56])
        else:
            zip64 = False
        # zipfile allows data prepended to the archive: the directory then sits further on.
        concat = (tail_start + at) - (cd_offset + cd_size) - (76 if zip64 else 0)
        f.seek(max(0, cd_offset + max(0, concat)))
        entries = 0
        while True:
            header = f.read(46)
            if len(header) < 46 or header[:4] != _CENTRAL:
                return
            entries += 1
            if entries > max_members:
                raise UnsafeArchive(f"{archive}: more than {max_members} members (from its central directory); "
                                    f"archive refused (raise the member limit if this is intended)")
            name_len, extra_len, comment_len = struct.unpack("<HHH", header[28:34])
            f.seek(name_len + extra_len + comment_len, os.SEEK_CUR)


def _check_symlinks(dest: str, root_real: str, archive: str) -> None:
    """Last pass: links that each looked fine can still combine into one that leads out
    (`a -> .` then `b -> a/..`), or resolve inside only because of where the extraction sits
    (`l -> ../tree/f` in a directory named `tree`). Every symlink must resolve inside by the
    rule the scan and a pod reading the checkpoint follow (agent/tree.py)."""
    try:
        check_written_tree(dest, archive)
    except UnsafeTree as exc:
        raise UnsafeArchive(f"{exc}".replace("; refused", "; archive refused")) from None


def extract_archive(path: str, dest: str, *, max_size: int = DEFAULT_MAX_SIZE,
                    max_members: int = DEFAULT_MAX_MEMBERS, label: Optional[str] = None) -> int:
    """Extract an archive into the existing empty directory `dest` (the caller removes `dest`
    on error). Returns the bytes written."""
    kind = archive_kind(label or path)
    if kind == "zip":
        return extract_zip(path, dest, max_size=max_size, max_members=max_members, label=label)
    if kind == "tar":
        return extract_tar(path, dest, max_size=max_size, max_members=max_members, label=label)
    raise AgentError(f"{label or path}: not an archive (expected {', '.join(ARCHIVE_SUFFIXES)})")
