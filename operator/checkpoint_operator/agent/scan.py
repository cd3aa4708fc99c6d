"""`checkpoint-operator agent scan DIR`: the checkpoints in an output directory, with manifests.

The snapshot rules of DESIGN.md §3. `scan_directory` does the work and returns a typed
result; `main` only checks the argument and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


from checkpoint_operator.agent import containers, formats
from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.agent.hashing import CHANGED_WHILE_READ, FileChanged, hash_files
from checkpoint_operator.agent.manifest import FileEntry, Manifest, digest_of
from checkpoint_operator.agent.names import collision_problem, collisions, component_problem, printable, spelled
from checkpoint_operator.agent.live_sealing import LIVE_DIR
from checkpoint_operator.agent.tree import (
    DEFAULT_MAX_ENTRIES, LEAVES_CHECKPOINT, EntryBudget, Tree, TreeFile, entry_limit, resolve_link, special_kind,
    walk_checkpoint,
)

__all__ = ["LEAVES_CHECKPOINT", "ScanResult", "Skipped", "describe_checkpoint", "format_table", "scan_directory"]

LAYOUTS = ("auto", "directories", "files")
ROOT = "."
# `skipped` lists at most this many entries (the first in path order); `skippedCount` counts all.
MAX_SKIPPED_LISTED = 1000


@dataclass
class Skipped:
    path: str  # relative to the scanned directory, '/'-separated, with unsafe characters escaped
    reason: str


@dataclass
class ScanResult:
    """What `agent scan --json` prints (a dataclass: the agent only writes it; logic/snapshot.py reads it)."""

    checkpoints: list[Manifest]
    skipped: list[Skipped]  # the first MAX_SKIPPED_LISTED, by path
    skippedCount: int = 0  # all of them

    def model_dump(self, mode: str = "json") -> dict:
        return {"checkpoints": [m.model_dump(mode="json") for m in self.checkpoints],
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
                "skippedCount": self.skippedCount}


@dataclass
class _Candidate:
    path: str  # checkpoint path relative to the scanned directory, or "."
    top: str  # the directory its file paths are relative to
    step_name: str  # the name the step is read from
    files: list[TreeFile] = field(default_factory=list)
    is_file: bool = False  # layout 'files': the checkpoint is this one root file
    # Entries of its directory that are not part of it (relative path -> why): the format may need them.
    lost: dict[str, str] = field(default_factory=dict)


class _Skips:
    def __init__(self) -> None:
        self.items: list[Skipped] = []

    def add(self, checkpoint: str, rel: str, reason: str) -> None:
        """`rel` is printable already (escaped) unless it comes straight from a valid name."""
        path = rel if checkpoint == ROOT else (f"{checkpoint}/{rel}" if rel else checkpoint)
        self.items.append(Skipped(path=path or ROOT, reason=reason))

    def add_tree(self, checkpoint: str, tree: Tree) -> None:
        for rel, reason in tree.skipped:
            self.add(checkpoint, rel, reason)


def _name_bytes(name: str) -> bytes:
    return os.fsencode(name)


def _entry_kind(entry: os.DirEntry) -> str:
    try:
        if component_problem(entry.name) or entry.is_symlink():
            return "other"  # not a container then: the walk of the whole directory reports it
        return "dir" if entry.is_dir() else "file" if entry.is_file() else "other"
    except OSError:
        return "other"


def _directory_candidates(name: str, path: str, skips: _Skips, budget: EntryBudget) -> list[_Candidate]:
    """One checkpoint for a top-level directory, or one per step subdirectory when it is a
    container of step checkpoints (agent/containers.py decides)."""
    def entries(it):
        for e in it:
            budget.take(e.path)  # what a split keeps is bounded like everything the scan looks at
            yield containers.Entry(e.name, _entry_kind(e))

    try:
        with os.scandir(path) as it:
            split = containers.split_container(name, entries(it))
    except OSError:
        split = None  # the walk reports the unreadable directory
    if split is None:
        split_paths = [(name, path, name)]
    else:
        for child, reason in split.skipped:
            skips.add(ROOT, f"{name}/{child}", reason)
        split_paths = [(f"{name}/{child}", os.path.join(path, child), child) for child in split.checkpoints]
    found = []
    for rel, directory, step_name in split_paths:
        candidate = _Candidate(path=rel, top=directory, step_name=step_name)
        tree = walk_checkpoint(directory, budget)
        candidate.files = tree.files
        candidate.lost = dict(tree.skipped)
        skips.add_tree(rel, tree)
        found.append(candidate)
    return found


def _root_candidates(root: str, layout: str, skips: _Skips, budget: EntryBudget) -> list[_Candidate]:
    """The checkpoints the top-level entries of `root` make, per the layout; files not yet walked."""
    candidates: list[_Candidate] = []
    root_files = _Candidate(path=ROOT, top=root, step_name="")
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: _name_bytes(e.name))
    twins = collisions([entry.name for entry in entries])
    for entry in entries:
        name = entry.name
        budget.take(entry.path)
        problem = component_problem(name)
        if problem:
            skips.add(ROOT, printable(name), f"name {problem}")
            continue
        if name in twins:
            skips.add(ROOT, spelled(name), f"name {collision_problem(twins[name])}")
            continue
        if name == LIVE_DIR:
            continue  # the live-sealing watcher's own state (agent/live_sealing.py), not output
        if name.startswith("."):
            skips.add(ROOT, name, "hidden name")
            continue
        marker = formats.unfinished_marker(name)
        if marker:
            skips.add(ROOT, name, f"name marks an unfinished write ({marker!r})")
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:
            skips.add(ROOT, name, f"unreadable: {exc.strerror}")
            continue
        open_path = entry.path
        if stat.S_ISLNK(st.st_mode):
            real, target, reason = resolve_link(root, [], name)
            if real is None:
                skips.add(ROOT, name, reason)
                root_files.lost[name] = reason  # a root file the final model may need
                continue
            assert target is not None
            if stat.S_ISDIR(target.st_mode):
                # Its target is inside the output, so it is scanned under its own name; following
                # the link would only make a second checkpoint of the same bytes.
                skips.add(ROOT, name, "symlink to a directory: only real directories are checkpoints")
                continue
            open_path, st = real, target
        if stat.S_ISDIR(st.st_mode):
            if layout == "files":
                skips.add(ROOT, name, "directory: layout 'files' takes only the files at the root")
                continue
            candidates.extend(_directory_candidates(name, entry.path, skips, budget))
        elif stat.S_ISREG(st.st_mode):
            file = TreeFile(name, open_path, (st.st_dev, st.st_ino), st.st_size)
            if layout == "directories":
                skips.add(ROOT, name, "file at the root: layout 'directories' takes only subdirectories")
            elif layout == "files":
                candidates.append(_Candidate(path=name, top=root, step_name=name, files=[file], is_file=True))
            else:
                root_files.files.append(file)
        else:
            skips.add(ROOT, name, special_kind(st.st_mode))
    if root_files.files:
        candidates.append(root_files)
    return candidates


def describe_checkpoint(top: str, paths: list[str], name: str, sizes: Optional[dict[str, int]] = None,
                        lost: Optional[dict[str, str]] = None, tops: Optional[dict[str, str]] = None) -> dict:
    """What the files say about a checkpoint: format, step, resumable, complete (the Manifest
    fields beyond the files), by agent/formats.py. `top` is the directory the `paths` are
    relative to, `name` the name the step is read from ("" for none); `sizes` (path -> bytes)
    when known, else read with stat; `lost`: entries of the directory that are not part of the
    checkpoint (path -> why); `tops`: the directory of each file, when not `top` (a checkpoint
    assembled from workers' parts). Shared by scan, upload and agent/parts.py.

    Whatever the files hold, the answer is about this checkpoint only: a reader that fails in a
    way no rule foresaw makes it "not checked", with the reason, and the scan goes on."""
    if sizes is None:
        sizes = {}
        for p in paths:
            try:
                sizes[p] = os.stat(os.path.join((tops or {}).get(p, top), *p.split("/"))).st_size
            except OSError:
                sizes[p] = 0
    try:
        d = formats.describe_checkpoint(Path(top), sizes, name, lost, **({"tops": tops} if tops else {}))
    except Exception as exc:  # noqa: BLE001 - one checkpoint's hostile metadata never fails the scan
        reason = f"not checked: its files could not be read safely ({type(exc).__name__})"
        return {"format": formats.detect_format(sorted(sizes), name), "step": None, "resumable": False,
                "complete": None, "completeReason": reason, "metrics": None}
    return {"format": d.format, "step": d.step, "resumable": d.resumable, "complete": d.complete,
            "completeReason": d.completeReason, "metrics": d.metrics}


def scan_directory(root: Path, layout: str = "auto", single: bool = False,
                   workers: Optional[int] = None, max_entries: int = DEFAULT_MAX_ENTRIES,
                   follow_links: bool = False) -> ScanResult:
    """The checkpoints under `root` per the snapshot rules, each with its manifest.

    `single`: `root` itself is one checkpoint, path ".", whatever its name (hidden and
    unfinished-name rules do not apply; the rules of agent/tree.py do). `follow_links` (with
    `single`; a push of the user's own directory): links followed as `cp -L` does (agent/tree.py).
    Raises NotADirectoryError / FileNotFoundError when `root` is not a directory, TooManyEntries
    past `max_entries` directory entries.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    top = os.fspath(root)
    if not os.path.isdir(top):
        raise (NotADirectoryError if os.path.exists(top) else FileNotFoundError)(top)
    skips = _Skips()
    budget = EntryBudget(max_entries, what=top)
    if single:
        candidate = _Candidate(path=ROOT, top=top, step_name=Path(os.path.realpath(top)).name)
        tree = walk_checkpoint(top, budget, follow_links=follow_links)
        candidate.files = tree.files
        candidate.lost = dict(tree.skipped)
        skips.add_tree(ROOT, tree)
        candidates = [candidate]
    else:
        candidates = _root_candidates(top, layout, skips, budget)

    # Hash every distinct file once, across all checkpoints at once, so that many small
    # checkpoints keep every core busy as well as a few big ones.
    unique: dict[tuple[int, int], TreeFile] = {}
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
                reason = (result.strerror or CHANGED_WHILE_READ) if isinstance(result, FileChanged) \
                    else f"unreadable: {result.strerror}"
                skips.add(candidate.path, "" if candidate.is_file else f.rel, reason)
                candidate.lost[f.rel] = reason
                continue
            size, sha = result
            entries.append(FileEntry.model_construct(path=f.rel, size=size, sha256=sha))
        if not entries:
            skips.add(ROOT, candidate.path, "empty directory: no regular files")
            continue
        entries.sort(key=lambda e: e.path.encode())
        manifests.append(Manifest(
            path=candidate.path, files=entries, sizeBytes=sum(e.size for e in entries), fileCount=len(entries),
            digest=digest_of(entries),
            **describe_checkpoint(candidate.top, [e.path for e in entries], candidate.step_name,
                                  {e.path: e.size for e in entries}, candidate.lost)))
    manifests.sort(key=lambda m: m.path.encode())
    skipped = sorted(skips.items, key=lambda s: s.path.encode())
    return ScanResult(checkpoints=manifests, skipped=skipped[:MAX_SKIPPED_LISTED], skippedCount=len(skipped))


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
    for title, which in (("incomplete", False), ("not checked", None)):
        listed = [m for m in result.checkpoints if m.complete is which]
        if listed:
            lines.append("")
            lines.append(f"{title} ({len(listed)}):")
            lines.extend(f"  {m.path}  {m.completeReason}" for m in listed)
    if result.skipped:
        width = max(len(s.path) for s in result.skipped)
        lines.append("")
        lines.append(f"skipped ({result.skippedCount}):")
        lines.extend(f"  {s.path.ljust(width)}  {s.reason}" for s in result.skipped)
        if result.skippedCount > len(result.skipped):
            lines.append(f"  ... and {result.skippedCount - len(result.skipped)} more")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if not os.path.exists(args.dir):
        raise AgentError(f"{args.dir}: no such directory")
    if not os.path.isdir(args.dir):
        raise AgentError(f"{args.dir}: not a directory (scan takes the directory that holds the checkpoints)")
    sources = None
    if getattr(args, "parts", None):
        from checkpoint_operator.agent.parts import scan_parts
        parts = scan_parts(args.dir, args.parts, args.layout, args.per_worker, workers=args.workers,
                           max_entries=entry_limit(args.max_entries))
        result, sources = parts.result, parts.sources
    else:
        result = scan_directory(Path(args.dir), layout=args.layout, single=args.single, workers=args.workers,
                                max_entries=entry_limit(args.max_entries))
    extra: dict = {"sources": sources} if sources is not None else {}
    if getattr(args, "sync", False):  # a volume snapshot follows: the bytes must be on the disk first
        from checkpoint_operator.agent.durability import sync_filesystem
        extra["synced"] = sync_filesystem(args.dir)
    if args.json:
        sys.stdout.write(json.dumps({**result.model_dump(mode="json"), **extra}) + "\n")
    else:
        print(format_table(result))
    return 0
