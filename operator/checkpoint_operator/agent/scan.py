"""`checkpoint-operator agent scan DIR`: the checkpoints in an output directory, with manifests.

The snapshot rules of DESIGN.md §3. `scan_directory` does the work and returns a typed
result; `main` only checks the argument and prints.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pydantic import BaseModel

from checkpoint_operator.agent import containers, formats
from checkpoint_operator.agent.hashing import hash_files
from checkpoint_operator.agent.manifest import MANIFEST_NAME, FileEntry, Manifest, digest_of

LAYOUTS = ("auto", "directories", "files")
ROOT = "."
# Reasons a reader of `skipped` sees; tests and the operator's events quote them.
LEAVES_CHECKPOINT = "symlink leaves the checkpoint"


class Skipped(BaseModel):
    path: str  # relative to the scanned directory, '/'-separated
    reason: str


class ScanResult(BaseModel):
    checkpoints: list[Manifest]
    skipped: list[Skipped]


@dataclass
class _File:
    rel: str  # path inside the checkpoint, '/'-separated
    open_path: str  # path to read: through the symlink, when it is one
    inode: tuple[int, int]  # (st_dev, st_ino): each distinct file is hashed once
    size: int


@dataclass
class _Candidate:
    path: str  # checkpoint path relative to the scanned directory, or "."
    step_name: str  # the name the step is read from
    files: list[_File] = field(default_factory=list)
    is_file: bool = False  # layout 'files': the checkpoint is this one root file


class _Skips:
    def __init__(self) -> None:
        self.items: list[Skipped] = []

    def add(self, checkpoint: str, rel: str, reason: str) -> None:
        path = rel if checkpoint == ROOT else (f"{checkpoint}/{rel}" if rel else checkpoint)
        self.items.append(Skipped(path=path or ROOT, reason=reason))


def _name_bytes(name: str) -> bytes:
    return os.fsencode(name)


def _inside(real_path: str, real_root: str) -> bool:
    return real_path == real_root or real_path.startswith(real_root.rstrip(os.sep) + os.sep)


def _symlink_problem(link: str, real_root: str) -> Optional[str]:
    """Why this symlink must not be followed, or None when it stays inside `real_root`."""
    if os.path.isabs(os.readlink(link)):
        return LEAVES_CHECKPOINT  # absolute: means something else wherever the volume is mounted
    if not _inside(os.path.realpath(link), real_root):
        return LEAVES_CHECKPOINT
    return None


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "device"
    return "not a regular file"


def _follow(path: str, is_link: bool, real_root: str) -> tuple[Optional[os.stat_result], Optional[str]]:
    """(stat of what `path` stands for, None), or (None, reason to skip it)."""
    try:
        if is_link:
            problem = _symlink_problem(path, real_root)
            if problem:
                return None, problem
        return os.stat(path), None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "symlink loop"
        if e.errno == errno.ENOENT and is_link:
            return None, "broken symlink"
        return None, f"unreadable: {e.strerror}"


def _valid_name(name: str) -> bool:
    # Names that are not UTF-8 cannot be written into the JSON manifest faithfully.
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _walk_checkpoint(top: str, candidate: _Candidate, skips: _Skips) -> None:
    """Every regular file under `top` into `candidate.files`; everything else into `skips`."""
    real_root = os.path.realpath(top)
    top_stat = os.stat(top)
    # (directory, its path inside the checkpoint, the real directories it is inside of):
    # a directory reached again through a symlink while inside itself is a cycle.
    stack: list[tuple[str, str, frozenset]] = [(top, "", frozenset({(top_stat.st_dev, top_stat.st_ino)}))]
    while stack:
        directory, rel_dir, ancestors = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as e:
            skips.add(candidate.path, rel_dir, f"unreadable directory: {e.strerror}")
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if rel == MANIFEST_NAME:
                continue  # a manifest written by an earlier upload describes, it is not content
            if not _valid_name(entry.name):
                skips.add(candidate.path, rel.encode("utf-8", "backslashreplace").decode(), "name is not valid UTF-8")
                continue
            is_link = entry.is_symlink()
            st, problem = _follow(entry.path, is_link, real_root)
            if st is None:
                skips.add(candidate.path, rel, problem or "")
            elif stat.S_ISREG(st.st_mode):
                candidate.files.append(_File(rel, entry.path, (st.st_dev, st.st_ino), st.st_size))
            elif stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    skips.add(candidate.path, rel, "symlink cycle: leads back into a directory that contains it")
                else:
                    stack.append((entry.path, rel, ancestors | {key}))
            else:
                skips.add(candidate.path, rel, _special_kind(st.st_mode))


def _entry_kind(entry: os.DirEntry) -> str:
    try:
        if not _valid_name(entry.name) or entry.is_symlink():
            return "other"
        return "dir" if entry.is_dir() else "file" if entry.is_file() else "other"
    except OSError:
        return "other"


def _directory_candidates(name: str, path: str, skips: _Skips) -> list[_Candidate]:
    """One checkpoint for a top-level directory, or one per step subdirectory when it is a
    container of step checkpoints (agent/containers.py decides)."""
    try:
        with os.scandir(path) as it:
            entries = [containers.Entry(e.name, _entry_kind(e)) for e in it]
        split = containers.split_container(name, entries)
    except OSError:
        split = None  # the walk reports the unreadable directory
    if split is None:
        candidate = _Candidate(path=name, step_name=name)
        _walk_checkpoint(path, candidate, skips)
        return [candidate]
    for child, reason in split.skipped:
        skips.add(ROOT, f"{name}/{child}", reason)
    found = []
    for child in split.checkpoints:
        candidate = _Candidate(path=f"{name}/{child}", step_name=child)
        _walk_checkpoint(os.path.join(path, child), candidate, skips)
        found.append(candidate)
    return found


def _root_candidates(root: str, layout: str, skips: _Skips) -> list[_Candidate]:
    """The checkpoints the top-level entries of `root` make, per the layout; files not yet walked."""
    real_root = os.path.realpath(root)
    candidates: list[_Candidate] = []
    root_files = _Candidate(path=ROOT, step_name="")
    for entry in sorted(os.scandir(root), key=lambda e: _name_bytes(e.name)):
        name = entry.name
        if not _valid_name(name):
            skips.add(ROOT, name.encode("utf-8", "backslashreplace").decode(), "name is not valid UTF-8")
            continue
        if name.startswith("."):
            skips.add(ROOT, name, "hidden name")
            continue
        marker = formats.unfinished_marker(name)
        if marker:
            skips.add(ROOT, name, f"name marks an unfinished write ({marker!r})")
            continue
        is_link = entry.is_symlink()
        st, problem = _follow(entry.path, is_link, real_root)
        if st is None:
            skips.add(ROOT, name, problem or "")
        elif is_link and stat.S_ISDIR(st.st_mode):
            # Its target is inside the output, so it is scanned under its own name; following
            # the link would only make a second checkpoint of the same bytes.
            skips.add(ROOT, name, "symlink to a directory: only real directories are checkpoints")
        elif stat.S_ISDIR(st.st_mode):
            if layout == "files":
                skips.add(ROOT, name, "directory: layout 'files' takes only the files at the root")
                continue
            candidates.extend(_directory_candidates(name, entry.path, skips))
        elif stat.S_ISREG(st.st_mode):
            file = _File(name, entry.path, (st.st_dev, st.st_ino), st.st_size)
            if layout == "directories":
                skips.add(ROOT, name, "file at the root: layout 'directories' takes only subdirectories")
            elif layout == "files":
                candidates.append(_Candidate(path=name, step_name=name, files=[file], is_file=True))
            else:
                root_files.files.append(file)
        else:
            skips.add(ROOT, name, _special_kind(st.st_mode))
    if root_files.files:
        candidates.append(root_files)
    return candidates


def _describe(candidate: _Candidate, top: str, files: list[FileEntry]) -> formats.Description:
    """Format, step, resumable and completeness from the names and small metadata files."""
    root = top if candidate.path == ROOT or candidate.is_file else os.path.join(top, candidate.path)
    return formats.describe_checkpoint(Path(root), {f.path: f.size for f in files}, candidate.step_name)


def scan_directory(root: Path, layout: str = "auto", single: bool = False,
                   workers: Optional[int] = None) -> ScanResult:
    """The checkpoints under `root` per the snapshot rules, each with its manifest.

    `single`: `root` itself is one checkpoint, path ".", whatever its name (hidden and
    unfinished-name rules do not apply; symlink and special-file rules do).
    Raises NotADirectoryError / FileNotFoundError when `root` is not a directory.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    top = os.fspath(root)
    if not os.path.isdir(top):
        raise (NotADirectoryError if os.path.exists(top) else FileNotFoundError)(top)
    skips = _Skips()
    if single:
        candidate = _Candidate(path=ROOT, step_name=Path(os.path.realpath(top)).name)
        _walk_checkpoint(top, candidate, skips)
        candidates = [candidate]
    else:
        candidates = _root_candidates(top, layout, skips)

    # Hash every distinct file once, across all checkpoints at once, so that many small
    # checkpoints keep every core busy as well as a few big ones.
    unique: dict[tuple[int, int], _File] = {}
    for candidate in candidates:
        for f in candidate.files:
            unique.setdefault(f.inode, f)
    keys = list(unique)
    hashed = dict(zip(keys, hash_files([unique[k].open_path for k in keys], workers,
                                       sizes=[unique[k].size for k in keys])))

    manifests: list[Manifest] = []
    for candidate in candidates:
        entries: list[FileEntry] = []
        for f in candidate.files:
            result = hashed[f.inode]
            if isinstance(result, OSError):
                skips.add(candidate.path, "" if candidate.is_file else f.rel, f"unreadable: {result.strerror}")
                continue
            size, sha = result
            entries.append(FileEntry.model_construct(path=f.rel, size=size, sha256=sha))
        if not entries:
            skips.add(ROOT, candidate.path, "empty directory: no regular files")
            continue
        entries.sort(key=lambda e: e.path.encode())
        size_bytes = sum(e.size for e in entries)
        info = _describe(candidate, top, entries)
        manifests.append(Manifest(
            path=candidate.path, files=entries, sizeBytes=size_bytes, fileCount=len(entries),
            digest=digest_of(entries), format=info.format, step=info.step, resumable=info.resumable,
            complete=info.complete, completeReason=info.completeReason))
    manifests.sort(key=lambda m: m.path.encode())
    skipped = sorted(skips.items, key=lambda s: s.path.encode())
    return ScanResult(checkpoints=manifests, skipped=skipped)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def format_table(result: ScanResult) -> str:
    """The scan as a table a person reads (`--json` is for programs)."""
    header = ("PATH", "FORMAT", "STEP", "FILES", "SIZE", "RESUMABLE", "COMPLETE", "DIGEST")
    rows = [(m.path, m.format, "-" if m.step is None else str(m.step), str(m.fileCount),
             _human_size(m.sizeBytes), "yes" if m.resumable else "no",
             "-" if m.complete is None else "yes" if m.complete else "NO", m.digest[:19]) for m in result.checkpoints]
    lines = []
    if rows:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    else:
        lines.append("no checkpoints found")
    incomplete = [m for m in result.checkpoints if m.complete is False]
    if incomplete:
        lines.append("")
        lines.append(f"incomplete ({len(incomplete)}):")
        lines.extend(f"  {m.path}  {m.completeReason}" for m in incomplete)
    if result.skipped:
        width = max(len(s.path) for s in result.skipped)
        lines.append("")
        lines.append(f"skipped ({len(result.skipped)}):")
        lines.extend(f"  {s.path.ljust(width)}  {s.reason}" for s in result.skipped)
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    prog = "checkpoint-operator agent scan"
    if not os.path.exists(args.dir):
        print(f"{prog}: {args.dir}: no such directory", file=sys.stderr)
        return 2
    if not os.path.isdir(args.dir):
        print(f"{prog}: {args.dir}: not a directory (scan takes the directory that holds the checkpoints)",
              file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"{prog}: --workers {args.workers}: must be at least 1", file=sys.stderr)
        return 2
    result = scan_directory(Path(args.dir), layout=args.layout, single=args.single, workers=args.workers)
    if args.json:
        sys.stdout.write(json.dumps(result.model_dump(mode="json")) + "\n")
    else:
        print(format_table(result))
    return 0
