"""`checkpoint-operator agent scan DIR`: the checkpoints in an output directory, with manifests.

The snapshot rules of DESIGN.md §3. `scan_checkpoints` does the work: it walks each checkpoint
in canonical order (agent/tree.py), hashes its files on every core a bounded window ahead of
the walk, and builds its manifest file by file (protocol/manifest.py), so memory does not grow
with the tree: the manifests go to `--manifests-dir` (or are kept for callers that use the
files), and what the format rules need is each path and size. `main` checks the argument and
prints: a table, `--json` (every manifest, for people and `agent upload --manifest`), or
`--result` (the bounded typed result the operator reads: protocol/results.py).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import errno
import heapq
import json
import os
import re
import stat
import sys
import time
from array import array
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Collection, Iterator, Mapping, Optional, Union


from checkpoint_operator.agent import containers, formats
from checkpoint_operator.protocol.errors import AgentError, Refusal
from checkpoint_operator.agent.hashing import CHANGED_WHILE_READ, FileChanged, default_workers, sha256_file
from checkpoint_operator.protocol.manifest import MANIFESTS_DIR, Manifest, ManifestBuilder, stored_manifest_name
from checkpoint_operator.protocol.names import collision_problem, collisions, component_problem, printable, spelled
from checkpoint_operator.agent.live_sealing import LIVE_DIR
from checkpoint_operator.agent.tree import (
    DEFAULT_MAX_ENTRIES, LEAVES_CHECKPOINT, STREAMING_MAX_ENTRIES, EntryBudget, TreeFile, entry_limit, iter_checkpoint,
    resolve_link, special_kind,
)

if TYPE_CHECKING:  # pydantic's models: imported where a result is written (`agent scan --json` never loads them)
    from checkpoint_operator.protocol import results

__all__ = ["LEAVES_CHECKPOINT", "OutputScan", "ScanResult", "Scanned", "Skipped", "describe_checkpoint",
           "format_table", "report_of", "scan_checkpoints", "scan_directory"]

LAYOUTS = ("auto", "directories", "files")
ROOT = "."
# `skipped` lists at most this many entries (the first in path order); `skippedCount` counts all.
MAX_SKIPPED_LISTED = 1000
# Files hashed ahead of the one whose result is written next: keeps every core busy past a slow
# file, at a few hundred bytes each.
HASH_WINDOW = 2048
# Files whose hash is remembered, so a file reached twice (a hard link, a link to a file) is read
# once: those that may be reached twice, and big ones; at most this many.
MAX_REMEMBERED = 100_000
BIG_FILE = 16 * 1024 * 1024
# A worker's copy of the union a restarted group resumes from (agent/resume_parts.py).
RESUME_DIR = ".ckpt-resume"
# Names of the output's root the scan never looks at: the sidecar's state, the stored manifests,
# the resume copy.
AGENT_DIRS = (LIVE_DIR, MANIFESTS_DIR, RESUME_DIR)
# What the agent itself writes in each (anything else there is the training code's: hostile6 O1, a
# trainer saving beside its CHECKPOINT_RESUME_PATH wrote into .ckpt-live and every such checkpoint
# went with the output volume, unmentioned): the sealing sidecar's state and resume link, stored
# manifests (and a scan's temporary files), the resume step's copies and link.
AGENT_OWN_NAMES = {
    LIVE_DIR: re.compile(r"^(sealed[.]json|resume)([.]tmp)?$"),
    MANIFESTS_DIR: re.compile(r"^(sha256-[0-9a-f]{64}[.]json|[.]tmp-[0-9]+-[0-9]+[.](files|json))$"),
    RESUME_DIR: re.compile(r"^([.]?[0-9a-f]{64}([.](partial|old)-[0-9]+)?|latest|[.]latest[.][0-9]+)$"),
}
STALE_TEMP_SECONDS = 3600  # a temporary file of a killed scan in the manifests directory
# The root files' names reported for a volume location to mount one by one: protocol/results.py's
# MAX_ITEMS (not imported: the scan's start-up loads no pydantic; tests/unit/agent checks they agree).
MAX_ITEMS = 256


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
class Scanned:
    manifest: Manifest              # its files listed only when the scan kept them
    stored: bool = False            # its full manifest was written to the manifests directory
    items: Optional[list[str]] = None  # the root files ('.'): their names, when few enough to mount one by one
    # a volume per worker (agent/parts.py): (worker, items or None for its whole directory) per worker
    parts: Optional[list[tuple[int, Optional[list[str]]]]] = None


@dataclass
class OutputScan:
    checkpoints: list[Scanned]
    skipped: list[Skipped]          # the first `max_skipped` by path
    skipped_count: int
    manifests_problem: Optional[str] = None


@dataclass
class _Candidate:
    path: str  # checkpoint path relative to the scanned directory, or "."
    top: str  # the directory its file paths are relative to
    step_name: str  # the name the step is read from
    files: Optional[list[TreeFile]] = None  # known at listing time (root files), else walked later
    is_file: bool = False  # layout 'files': the checkpoint is this one root file
    # Entries of its directory that are not part of it (relative path -> why): the format may need them.
    lost: dict[str, str] = field(default_factory=dict)


class _Skips:
    """What was left out: the first `limit` by path (kept in a heap), and a count of all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._heap: list[tuple[bytes, str, str]] = []  # (-ordered key, path, reason): a max-heap by path

    def add(self, checkpoint: str, rel: str, reason: str) -> None:
        """`rel` is printable already (escaped) unless it comes straight from a valid name."""
        path = rel if checkpoint == ROOT else (f"{checkpoint}/{rel}" if rel else checkpoint)
        path = path or ROOT
        self.count += 1
        key = bytes(255 - b for b in path.encode("utf-8", "surrogateescape")) + b"\xff"  # larger path: smaller key
        if len(self._heap) < self.limit:
            heapq.heappush(self._heap, (key, path, reason))
        elif self.limit and key > self._heap[0][0]:
            heapq.heapreplace(self._heap, (key, path, reason))

    def items(self) -> list[Skipped]:
        ordered = sorted(self._heap, key=lambda item: item[1].encode("utf-8", "surrogateescape"))
        return [Skipped(path=path, reason=reason) for _, path, reason in ordered]


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
    container of step checkpoints (agent/containers.py decides). Their files are walked later."""
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
        return [_Candidate(path=name, top=path, step_name=name)]
    for child, reason in split.skipped:
        skips.add(ROOT, f"{name}/{child}", reason)
    return [_Candidate(path=f"{name}/{child}", top=os.path.join(path, child), step_name=child)
            for child in split.checkpoints]


def _agent_dir_strays(path: str, name: str, skips: _Skips, budget: EntryBudget) -> None:
    """Entries of an agent directory at the output's root that the agent does not write there."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            skips.add(ROOT, name, "name reserved for the agent's own files (not a directory of its own)")
            return
        with os.scandir(path) as it:
            for entry in it:
                budget.take(entry.path)
                if not AGENT_OWN_NAMES[name].match(entry.name):
                    skips.add(ROOT, f"{name}/{printable(entry.name)}",
                              "in a directory the agent reserves for its own files (not made into a Checkpoint)")
    except OSError as exc:
        skips.add(ROOT, name, f"unreadable: {exc.strerror}")


def _root_candidates(root: str, layout: str, skips: _Skips, budget: EntryBudget,
                     lost: Optional[dict[str, dict[str, str]]] = None) -> list[_Candidate]:
    """The checkpoints the top-level entries of `root` make, per the layout; files not yet walked.
    `lost`: gets the root's lost entries when no root file makes a checkpoint of them."""
    candidates: list[_Candidate] = []
    root_files = _Candidate(path=ROOT, top=root, step_name="", files=[])
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
        if name in AGENT_DIRS:
            # the agent's own (the sealing sidecar's state, the stored manifests, the resume copies): not a
            # checkpoint; what the training code put there is skipped by name, so its volume is kept
            _agent_dir_strays(entry.path, name, skips, budget)
            continue
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
            root_files.lost[name] = f"unreadable: {exc.strerror}"
            continue
        open_path, shared = entry.path, st.st_nlink > 1
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
            open_path, st, shared = real, target, True
        if stat.S_ISDIR(st.st_mode):
            if layout == "files":
                skips.add(ROOT, name, "directory: layout 'files' takes only the files at the root")
                continue
            candidates.extend(_directory_candidates(name, entry.path, skips, budget))
        elif stat.S_ISREG(st.st_mode):
            file = TreeFile(name, open_path, (st.st_dev, st.st_ino), st.st_size, shared)
            if layout == "directories":
                skips.add(ROOT, name, "file at the root: layout 'directories' takes only subdirectories")
            elif layout == "files":
                candidates.append(_Candidate(path=name, top=root, step_name=name, files=[file], is_file=True))
            else:
                assert root_files.files is not None
                root_files.files.append(file)
        else:
            skips.add(ROOT, name, special_kind(st.st_mode))
            root_files.lost[name] = special_kind(st.st_mode)
    if root_files.files:
        candidates.append(root_files)
    elif lost is not None and root_files.lost:
        lost[ROOT] = root_files.lost
    return candidates


def describe_checkpoint(top: str, paths: list[str], name: str, sizes: Optional[Mapping[str, int]] = None,
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
        found = {}
        for p in paths:
            try:
                found[p] = os.stat(os.path.join((tops or {}).get(p, top), *p.split("/"))).st_size
            except OSError:
                found[p] = 0
        sizes = found
    try:
        d = formats.describe_checkpoint(Path(top), sizes, name, lost, **({"tops": tops} if tops else {}))
    except Exception as exc:  # noqa: BLE001 - one checkpoint's hostile metadata never fails the scan
        reason = f"not checked: its files could not be read safely ({type(exc).__name__})"
        return {"format": formats.detect_format(sorted(sizes), name), "step": None, "resumable": False,
                "complete": None, "completeReason": reason, "metrics": None}
    return {"format": d.format, "step": d.step, "resumable": d.resumable, "complete": d.complete,
            "completeReason": d.completeReason, "metrics": d.metrics}


class SortedSizes(Mapping[str, int]):
    """path -> size of one checkpoint's files, added in path order: a sorted list and an array,
    about a third of a dict's memory for the million-file checkpoint the format rules look at."""

    def __init__(self) -> None:
        self._paths: list[str] = []
        self._sizes = array("q")

    def append(self, path: str, size: int) -> None:
        self._paths.append(path)
        self._sizes.append(size)

    def _index(self, path: object) -> int:
        if not isinstance(path, str):
            return -1
        i = bisect.bisect_left(self._paths, path)
        return i if i < len(self._paths) and self._paths[i] == path else -1

    def __getitem__(self, path: str) -> int:
        i = self._index(path)
        if i < 0:
            raise KeyError(path)
        return self._sizes[i]

    def __contains__(self, path: object) -> bool:
        return self._index(path) >= 0

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


# --- hashing, in the walk's order ------------------------------------------------------------

@dataclass(frozen=True)
class _End:
    """Marks the end of a candidate's files in the stream of files to hash."""

    index: int


HashOutcome = Union[tuple[int, str], OSError]


def _hash_one(path: str) -> HashOutcome:
    try:
        return sha256_file(path)
    except OSError as exc:
        return exc


def _hashed_in_order(items: Iterator[tuple[int, Union[TreeFile, _End]]], workers: int
                     ) -> Iterator[tuple[int, Union[TreeFile, _End], Optional[HashOutcome]]]:
    """Each item with its file's hash (None for an end marker), in the order given, the files
    hashed by `workers` threads at most HASH_WINDOW ahead. A file reached again (same inode)
    is read once when it is one that may be (shared or big)."""
    remembered: dict[tuple[int, int], Future] = {}
    pending: deque = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256") if workers > 1 else None

    def submit(f: TreeFile) -> Future:
        future = remembered.get(f.inode)
        if future is not None:
            return future
        if pool is not None:
            future = pool.submit(_hash_one, f.open_path)
        else:
            future = Future()
            future.set_result(_hash_one(f.open_path))
        if (f.shared or f.size >= BIG_FILE) and len(remembered) < MAX_REMEMBERED:
            remembered[f.inode] = future
        return future

    try:
        for index, item in items:
            pending.append((index, item, submit(item) if isinstance(item, TreeFile) else None))
            while len(pending) > HASH_WINDOW:
                index0, item0, future0 = pending.popleft()
                yield index0, item0, future0.result() if future0 is not None else None
        while pending:
            index0, item0, future0 = pending.popleft()
            yield index0, item0, future0.result() if future0 is not None else None
    finally:
        if pool is not None:
            for _, _, future in pending:
                if future is not None:
                    future.cancel()
            pool.shutdown(wait=True)


# --- the scan ----------------------------------------------------------------------------------

def manifests_directory(path: str) -> None:
    """Make (or find) the directory of the stored manifests: a real directory, never a link (an
    output could hold `.ckpt-manifests -> step-100` to have the agent write into a checkpoint)."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "a link or a file, not a directory: nothing is written through it",
                                 path)


def create_exclusive(path: str, mode: int = 0o644) -> IO[bytes]:
    """A new file (never an existing one, never through a link) open for writing and reading."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), mode)
    return os.fdopen(fd, "w+b", buffering=1 << 20)


class StoredManifests:
    """Where the full manifests go (`--manifests-dir`): written as the files are hashed, then
    renamed into place (`sha256-<hex>.json`). A directory that cannot be written is one problem
    for the result (the checkpoints are still reported, without stored manifests)."""

    def __init__(self, directory: Optional[str]) -> None:
        self.directory = directory
        self.problem: Optional[str] = None
        if directory is None:
            return
        try:
            manifests_directory(directory)
            self._remove_stale()
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        if self.problem is None:
            self.problem = f"cannot write the manifests to {self.directory}: {exc.strerror or exc}"

    @property
    def usable(self) -> bool:
        return self.directory is not None and self.problem is None

    def _remove_stale(self) -> None:
        assert self.directory is not None
        now = time.time()
        for name in os.listdir(self.directory):
            if name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    path = os.path.join(self.directory, name)
                    if now - os.lstat(path).st_mtime > STALE_TEMP_SECONDS:
                        os.unlink(path)

    def spool(self) -> Optional[IO[bytes]]:
        """A file for one manifest's entries while its files are hashed, unlinked at once (a
        killed scan leaves nothing behind)."""
        if not self.usable:
            return None
        assert self.directory is not None
        path = os.path.join(self.directory, f".tmp-{os.getpid()}-{time.monotonic_ns()}.files")
        try:
            spool = create_exclusive(path, 0o600)
            os.unlink(path)
        except OSError as exc:
            self._failed(exc)
            return None
        return spool

    def store(self, builder: ManifestBuilder, manifest: Manifest, spool: Optional[IO[bytes]]) -> bool:
        """Write the manifest as `sha256-<hex>.json`; False (and the problem noted) when it cannot be."""
        if spool is None or not self.usable:
            return False
        # relative to its own root, as on s3
        return self._write(manifest.digest, lambda out: builder.write(out, manifest.model_copy(update={"path": ROOT})))

    def store_whole(self, manifest: Manifest) -> bool:
        """`store` of a manifest whose files are all in memory (a union of workers' parts)."""
        if not self.usable:
            return False
        text = manifest.model_copy(update={"path": ROOT}).to_json().encode("utf-8")
        return self._write(manifest.digest, lambda out: out.write(text))

    def _write(self, digest: str, write: Callable[[IO[bytes]], object]) -> bool:
        assert self.directory is not None
        final = os.path.join(self.directory, stored_manifest_name(digest))
        tmp = os.path.join(self.directory, f".tmp-{os.getpid()}-{time.monotonic_ns()}.json")
        try:
            with create_exclusive(tmp) as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
            return True
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._failed(exc)
            return False


def _candidate_files(candidates: list[_Candidate], budget: EntryBudget, skips: _Skips, follow_links: bool
                     ) -> Iterator[tuple[int, Union[TreeFile, _End]]]:
    for index, candidate in enumerate(candidates):
        if candidate.files is not None:
            for f in sorted(candidate.files, key=lambda f: f.rel.encode()):
                yield index, f
        else:
            def skip(shown: str, reason: str, candidate: _Candidate = candidate) -> None:
                skips.add(candidate.path, shown, reason)
                candidate.lost[shown] = reason  # the format may need it (bounded by the entry budget)
            for f in iter_checkpoint(candidate.top, budget, skip, follow_links=follow_links):
                yield index, f
        yield index, _End(index)


def that_fit(checkpoints: list[tuple[str, Optional[int]]], limit: int, roots: Collection[str] = (ROOT,)) -> list[str]:
    """The paths of the `limit` checkpoints a snapshot takes when there are more: the root files
    (`roots`: their paths), those without a step (retention always keeps both), then the highest steps."""
    def rank(item: tuple[str, Optional[int]]) -> tuple[int, int, str]:
        path, step = item
        return (0 if path in roots else 1 if step is None else 2, -(step or 0), path)
    return [path for path, _ in sorted(checkpoints, key=rank)[:limit]]


def too_many_reason(found: int, limit: int) -> str:
    """The one reason of every checkpoint `that_fit` leaves out."""
    return (f"not scanned: {found} checkpoints (directories and root files), more than the {limit} one "
            f"snapshot reports; the root files and the newest were taken")


def scan_checkpoints(root: Path, layout: str = "auto", single: bool = False, workers: Optional[int] = None,
                     max_entries: int = DEFAULT_MAX_ENTRIES, *, keep_files: bool = True,
                     manifests_dir: Optional[str] = None, max_checkpoints: Optional[int] = None,
                     max_skipped: int = MAX_SKIPPED_LISTED, follow_links: bool = False,
                     budget: Optional[EntryBudget] = None, lost: Optional[dict[str, dict[str, str]]] = None
                     ) -> OutputScan:
    """The checkpoints under `root` per the snapshot rules, each with its manifest.

    `single`: `root` itself is one checkpoint, path ".", whatever its name (hidden and
    unfinished-name rules do not apply; the rules of agent/tree.py do). `keep_files`: each
    manifest lists its files (else only its totals and digest); `manifests_dir`: the full
    manifests are written there. `max_checkpoints`: more candidates than this fail at once.
    `follow_links` (with `single`; a push of the user's own directory): links followed as
    `cp -L` does (agent/tree.py). `budget`: the entries counted against one shared with other
    scans (agent/parts.py: all workers' parts), instead of `max_entries` of this one's own.
    `lost`: filled with each checkpoint path's entries that are not part of it (relative path ->
    why: a fifo, a link leaving it, an unreadable file; bounded by the entry budget).
    Raises NotADirectoryError / FileNotFoundError when `root` is not a directory, TooManyEntries
    past `max_entries` directory entries.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    top = os.fspath(root)
    if not os.path.isdir(top):
        raise (NotADirectoryError if os.path.exists(top) else FileNotFoundError)(top)
    skips = _Skips(max_skipped)
    budget = budget or EntryBudget(max_entries, what=top)
    if single:
        candidates = [_Candidate(path=ROOT, top=top, step_name=Path(os.path.realpath(top)).name)]
    else:
        candidates = _root_candidates(top, layout, skips, budget, lost)
    candidates.sort(key=lambda c: c.path.encode())
    if max_checkpoints is not None and len(candidates) > max_checkpoints:
        # Not a failure: retention (keep, keepLatest) wants the newest, and the rest stay on the
        # output volume, which is kept for them (skipped entries), one line naming them.
        kept = set(that_fit([(c.path, formats.step_from_name(c.step_name)) for c in candidates], max_checkpoints))
        reason = too_many_reason(len(candidates), max_checkpoints)
        for candidate in candidates:
            if candidate.path not in kept:
                skips.add(ROOT, "" if candidate.path == ROOT else printable(candidate.path), reason)
        candidates = [c for c in candidates if c.path in kept]
    stored = StoredManifests(manifests_dir)
    found = list(_scanned(candidates, budget, skips, workers, follow_links, stored, keep_files, single))
    if lost is not None:
        lost.update((candidate.path, candidate.lost) for candidate in candidates if candidate.lost)
    return OutputScan(found, skips.items(), skips.count, stored.problem)


def _scanned(candidates: list[_Candidate], budget: EntryBudget, skips: _Skips, workers: Optional[int],
             follow_links: bool, stored: StoredManifests, keep_files: bool, single: bool = False) -> Iterator[Scanned]:
    """Each candidate's checkpoint, walked and hashed in order, as soon as its last file is done
    (an empty one is skipped): only one manifest is being built at a time."""
    builder: Optional[ManifestBuilder] = None
    sizes = SortedSizes()
    spool: Optional[IO[bytes]] = None
    try:
        for index, item, outcome in _hashed_in_order(_candidate_files(candidates, budget, skips, follow_links),
                                                     workers or default_workers()):
            candidate = candidates[index]
            if builder is None:
                spool = stored.spool()
                builder = ManifestBuilder(candidate.path, spool=spool, keep=keep_files)
                sizes = SortedSizes()
            if isinstance(item, TreeFile):
                if isinstance(outcome, OSError):
                    reason = (outcome.strerror or CHANGED_WHILE_READ) if isinstance(outcome, FileChanged) \
                        else f"unreadable: {outcome.strerror or outcome}"
                    skips.add(candidate.path, "" if candidate.is_file else printable(item.rel), reason)
                    candidate.lost[item.rel] = reason
                    continue
                assert outcome is not None
                builder.add(item.rel, outcome[0], outcome[1])
                sizes.append(item.rel, outcome[0])
                continue
            scanned = _finish(candidate, builder, sizes, stored, spool, single) if builder.file_count else None
            if scanned is None:
                skips.add(ROOT, candidate.path, "empty directory: no regular files")
            if spool is not None:
                spool.close()
            builder, spool = None, None
            if scanned is not None:
                yield scanned
    finally:
        if spool is not None:
            spool.close()


@dataclass
class Listing:
    """One volume's checkpoints as listed, not yet walked: agent/parts.py walks several volumes'
    directory of one name at a time, so only that directory's manifests are held."""

    candidates: dict[str, _Candidate]  # checkpoint path -> what to walk
    skips: _Skips
    root_lost: dict[str, str]  # the root's lost entries when no root file makes a checkpoint


def list_checkpoints(root: Path, layout: str, budget: EntryBudget) -> Listing:
    """The checkpoints under `root` (as scan_checkpoints finds them), listed only. Raises
    NotADirectoryError / FileNotFoundError when `root` is not a directory."""
    top = os.fspath(root)
    if not os.path.isdir(top):
        raise (NotADirectoryError if os.path.exists(top) else FileNotFoundError)(top)
    skips = _Skips(MAX_SKIPPED_LISTED)
    lost: dict[str, dict[str, str]] = {}
    candidates = _root_candidates(top, layout, skips, budget, lost)
    return Listing({c.path: c for c in candidates}, skips, lost.get(ROOT, {}))


def scan_listed(listing: Listing, path: str, budget: EntryBudget, workers: Optional[int] = None
                ) -> tuple[Optional[Scanned], dict[str, str]]:
    """The listed checkpoint `path` walked and hashed (its manifest with its files; None when it
    has no regular file, skipped as such), and its entries that are not part of it."""
    candidate = listing.candidates.get(path)
    if candidate is None:
        return None, listing.root_lost if path == ROOT else {}
    found = list(_scanned([candidate], budget, listing.skips, workers, False, StoredManifests(None), True))
    return (found[0] if found else None), candidate.lost


def _finish(candidate: _Candidate, builder: ManifestBuilder, sizes: SortedSizes, stored: StoredManifests,
            spool: Optional[IO[bytes]], single: bool) -> Scanned:
    info = describe_checkpoint(candidate.top, [], candidate.step_name, sizes, candidate.lost)
    manifest = builder.manifest(**info)
    items = list(sizes) if candidate.path == ROOT and not single and len(sizes) <= MAX_ITEMS else None
    return Scanned(manifest, stored=stored.store(builder, manifest, spool), items=items)


def scan_directory(root: Path, layout: str = "auto", single: bool = False,
                   workers: Optional[int] = None, max_entries: int = DEFAULT_MAX_ENTRIES,
                   follow_links: bool = False) -> ScanResult:
    """The checkpoints under `root` with their manifests (files listed): see scan_checkpoints."""
    scan = scan_checkpoints(root, layout, single, workers, max_entries, follow_links=follow_links)
    return ScanResult(checkpoints=[s.manifest for s in scan.checkpoints], skipped=scan.skipped,
                      skippedCount=scan.skipped_count)


def report_of(scan: OutputScan, uris: Optional[Mapping[str, str]] = None) -> "results.ScanReport":
    """The bounded result the operator reads (protocol/results.py)."""
    from checkpoint_operator.protocol import results
    uris = uris or {}
    return results.ScanReport(
        checkpoints=[results.CheckpointSummary.of(
            s.manifest, uri=uris.get(s.manifest.path), manifest_stored=s.stored, items=s.items,
            parts=None if s.parts is None else [results.PartSummary(worker=w, items=i) for w, i in s.parts])
            for s in scan.checkpoints],
        skipped=[results.Skipped(path=results.cut(s.path, results.MAX_REPORTED_PATH), reason=results.cut(s.reason))
                 for s in scan.skipped[:results.MAX_SKIPPED_REPORTED]],
        skippedCount=scan.skipped_count,
        manifestsProblem=results.cut(scan.manifests_problem) if scan.manifests_problem else None)


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


def _synced(directory: str, parts: Optional[int] = None) -> str:
    """A volume snapshot follows: the bytes must be on the disk first (agent/durability.py). With
    workers' parts, each worker's volume (mounted at DIR/worker-<i>: a filesystem of its own, which
    a syncfs of DIR would not reach) is synced, and is snapshotted after."""
    from checkpoint_operator.agent.durability import sync_filesystem
    if not parts:
        return sync_filesystem(directory)
    done = {sync_filesystem(os.path.join(directory, f"worker-{i}")) for i in range(parts)}  # agent/parts.py's names
    return done.pop() if len(done) == 1 else ", ".join(sorted(done))


def expected_parts(values: Optional[list[str]]) -> Optional[dict[int, str]]:
    """`--expect WORKER=DIGEST` (repeated): the parts a live union is made of (agent/parts.py)."""
    if not values:
        return None
    expect: dict[int, str] = {}
    for value in values:
        worker, _, digest = value.partition("=")
        if not worker.isdigit() or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise AgentError(f"--expect {value!r}: WORKER=sha256:<64 hex digits> expected")
        expect[int(worker)] = digest
    return expect


def main(args: argparse.Namespace) -> int:
    if not os.path.exists(args.dir):
        raise Refusal(f"{args.dir}: no such directory")
    if not os.path.isdir(args.dir):
        raise Refusal(f"{args.dir}: not a directory (scan takes the directory that holds the checkpoints)")
    if getattr(args, "result", False):
        from checkpoint_operator.protocol import channel, results
        if getattr(args, "parts", None):
            from checkpoint_operator.agent.parts import PartsStream, parts_output
            scan = parts_output(PartsStream(args.dir, args.parts, args.layout, args.per_worker, workers=args.workers,
                                            max_entries=entry_limit(args.max_entries), only=getattr(args, "only", None),
                                            expect=expected_parts(getattr(args, "expect", None))),
                                args.dir, args.layout, args.per_worker,
                                manifests=getattr(args, "part_manifests", False))
        else:
            scan = scan_checkpoints(Path(args.dir), layout=args.layout, single=args.single, workers=args.workers,
                                    max_entries=entry_limit(args.max_entries, STREAMING_MAX_ENTRIES), keep_files=False,
                                    manifests_dir=args.manifests_dir, max_checkpoints=results.MAX_CHECKPOINTS,
                                    max_skipped=results.MAX_SKIPPED_REPORTED)
        report = report_of(scan)
        if getattr(args, "sync", False):  # after the manifests it wrote: the snapshot holds them too
            report = report.model_copy(update={"synced": _synced(args.dir, getattr(args, "parts", None))})
        channel.write(report)
        return 0
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
        extra["synced"] = _synced(args.dir, getattr(args, "parts", None))
    if args.json:
        sys.stdout.write(json.dumps({**result.model_dump(mode="json"), **extra}) + "\n")
    else:
        print(format_table(result))
    return 0
