"""When is a checkpoint directory that training is still writing complete? (`agent watch`)

The rules of live sealing, as pure decisions over what a listing of the output shows at each
tick of the watcher (agent/live_watch.py does the I/O). A directory is sealed when its listing
(every file's path, size and modification time) is the same at two ticks in a row, no
completeness rule finds it incomplete, and one of these says the writer is done with it:

1. its format's own completion marker is there: what the framework writes last (a Trainer's
   `trainer_state.json`, torch DCP's `.metadata`, Orbax's commit marker, DeepSpeed's `latest`,
   Megatron's tracker file, Accelerate's `random_states_0.pkl`), checked by agent/completeness.py;
2. it appeared by an atomic rename: its inode was listed before under an unfinished name
   (`step-N.tmp`, `N.orbax-checkpoint-tmp-*`), or, when the watcher never saw that name, its
   ctime is later than its own mtime and not earlier than anything in it, its parent changed
   at that moment too, and this held already at the first look that listed it under its final
   name (`_renamed_by_ctime`: a chmod, chown or xattr moves the ctime but not the parent; never for
   the inode of a part the resume step gave back, `renamed_at_first_look`: its chmod and the resume
   copy's mkdir in the volume's root look like a rename);
3. a newer step directory appeared beside it (frameworks save steps in order), finished or not;
4. the training containers have exited (the watcher got SIGTERM: a native sidecar is stopped
   only after the pod's regular containers): the listing is final, sealed as it is, except a
   checkpoint its rule finds incomplete: left writable for a retry (hostile8 R1), and recorded as
   incomplete by the end-of-job snapshot if it is still there then. A worker's part (`--part`)
   has no rule of its own (the union is judged), so at its pod's end a part is sealed only with
   one of the signs above (its part marker, a rename, a newer step); one without any is left
   writable for the restarted group (F7).

A checkpoint whose weight files are merely whole (safetensors headers, zip ends) is not
thereby complete: more files may follow, so that alone seals nothing. Hashing then checks the
files did not change while they were read (agent/hashing.py), and a change aborts the seal.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from checkpoint_operator.agent import completeness, containers, formats
from checkpoint_operator.agent import metadata as md
from checkpoint_operator.protocol.names import component_problem
from checkpoint_operator.agent.safe_read import CheckpointFiles, Unreadable
from checkpoint_operator.agent.tree import EntryBudget, walk_checkpoint

# The watcher's own directory in the output (state, the resume link): never a checkpoint, and
# ignored by the scan (agent/scan.py) so it is neither published nor reported as skipped.
LIVE_DIR = ".ckpt-live"
RESUME_LINK = "resume"
_ORBAX_TMP_STEP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")

FileStat = tuple[str, int, int]  # (path inside the checkpoint, size, mtime_ns)


@dataclass(frozen=True)
class Listed:
    """One checkpoint directory as listed at one tick."""

    path: str                       # relative to the output directory ('step-100', 'checkpoints/checkpoint_0')
    name: str                       # the name its step is read from
    directory: str                  # host path
    inode: tuple[int, int]
    files: tuple[FileStat, ...]
    renamed_by_ctime: bool = False  # the ctime rule of _renamed_by_ctime held at this look

    @property
    def parent(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    @property
    def step(self) -> Optional[int]:
        return formats.step_from_name(self.name)


@dataclass
class Listing:
    checkpoints: dict[str, Listed] = field(default_factory=dict)
    unfinished: dict[tuple[int, int], str] = field(default_factory=dict)  # inode -> path under an unfinished name
    steps_seen: dict[str, list[int]] = field(default_factory=dict)       # parent -> steps of every entry in it
    unreadable: dict[str, str] = field(default_factory=dict)  # directory that could not be listed -> why


def unfinished_step(name: str) -> Optional[int]:
    match = _ORBAX_TMP_STEP.match(name)
    return int(match.group(1)) if match else formats.step_from_name(name)


def _dir_entries(directory: str, budget: EntryBudget) -> list[os.DirEntry]:
    with os.scandir(directory) as it:
        entries = []
        for entry in it:
            budget.take(entry.path)
            entries.append(entry)
    return entries


def _kind(entry: os.DirEntry) -> str:
    try:
        if component_problem(entry.name) or entry.is_symlink():
            return "other"
        return "dir" if entry.is_dir() else "file" if entry.is_file() else "other"
    except OSError:
        return "other"


def list_output(root: str, budget: EntryBudget, skip: set[str] | frozenset = frozenset()) -> Listing:
    """The checkpoint directories of an output directory (layout auto/directories), as the scan
    finds them, with their files' sizes and mtimes; `skip`: paths not to walk (sealed already)."""
    listing = Listing()
    for entry in sorted(_dir_entries(root, budget), key=lambda e: e.name):
        name = entry.name
        if name.startswith(".") or component_problem(name) or _kind(entry) != "dir":
            continue
        if formats.unfinished_marker(name):
            _note_unfinished(listing, "", name, entry)
            continue
        try:
            children = _dir_entries(entry.path, budget)
        except OSError as exc:  # one unreadable directory (its owner's chmod) stops no other's sealing
            listing.unreadable[name] = exc.strerror or str(exc)
            continue
        split = containers.split_container(name, (containers.Entry(c.name, _kind(c)) for c in children))
        if split is None:
            _note_step(listing, "", formats.step_from_name(name))
            if name not in skip:
                _add(listing, name, name, entry.path, budget)
            continue
        for child in children:
            if formats.unfinished_marker(child.name) and _kind(child) == "dir":
                _note_unfinished(listing, name, child.name, child)
        for step_name in split.checkpoints:
            path = f"{name}/{step_name}"
            _note_step(listing, name, formats.step_from_name(step_name))
            if path not in skip:
                _add(listing, path, step_name, os.path.join(entry.path, step_name), budget)
    return listing


def _note_step(listing: Listing, parent: str, step: Optional[int]) -> None:
    if step is not None:
        listing.steps_seen.setdefault(parent, []).append(step)


def _note_unfinished(listing: Listing, parent: str, name: str, entry: os.DirEntry) -> None:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return
    listing.unfinished[(st.st_dev, st.st_ino)] = f"{parent}/{name}" if parent else name
    _note_step(listing, parent, unfinished_step(name))


def _add(listing: Listing, path: str, name: str, directory: str, budget: EntryBudget) -> None:
    try:
        st = os.stat(directory, follow_symlinks=False)
    except OSError:
        return  # gone meanwhile (a framework's own rotation): nothing to seal
    files = []
    for f in walk_checkpoint(directory, budget).files:
        try:
            fst = os.stat(f.open_path)
        except OSError:
            continue
        files.append((f.rel, fst.st_size, fst.st_mtime_ns))
    renamed = _renamed_by_ctime(directory, st, files)
    listing.checkpoints[path] = Listed(path, name, directory, (st.st_dev, st.st_ino), tuple(sorted(files)),
                                       renamed_by_ctime=renamed)


def list_one(root: str, path: str, budget: EntryBudget) -> Optional[Listed]:
    """One checkpoint directory of the output as `list_output` lists it (a restarted watcher's
    record of it is looked at again); None when it is gone or cannot be read."""
    listing = Listing()
    _add(listing, path, path.rsplit("/", 1)[-1], os.path.join(root, path), budget)
    return listing.checkpoints.get(path)


def record_path_problem(path: str) -> Optional[str]:
    """Why a path read from the watcher's state file (tenant-writable) is not one `list_output`
    could have sealed: one component, or a container's step (two), none hidden or odd."""
    parts = path.split("/")
    if not path or len(parts) > 2:
        return f"{path!r} is not a checkpoint directory of the output"
    for part in parts:
        if part.startswith(".") or component_problem(part):
            return f"{path!r} is not a checkpoint directory of the output"
    return None


RENAME_TICK_NS = 20_000_000  # timestamps come from a coarse clock: a tick is up to 10 ms


def _renamed_by_ctime(directory: str, st: os.stat_result, files: list[FileStat]) -> bool:
    """A rename into place moves the directory's ctime, after its own mtime (its last entry) and
    not before anything inside (a rename right after the last write shares that write's clock
    tick: equal, not later), and it changes the parent directory at the same moment. A chmod,
    chown or xattr moves the ctime too, but leaves the parent alone: without the parent's change
    (within a tick) the ctime says nothing."""
    newest = _newest_mtime(directory, files)
    if not (st.st_ctime_ns > st.st_mtime_ns and st.st_ctime_ns >= newest):
        return False
    try:
        parent = os.stat(os.path.dirname(directory))  # the output dir may be reached by a link (local mode)
    except OSError:
        return False
    return parent.st_mtime_ns >= st.st_ctime_ns - RENAME_TICK_NS


def _newest_mtime(directory: str, files: list[FileStat]) -> int:
    """The latest mtime of the files and subdirectories of a checkpoint (a rename into place comes
    after all of them)."""
    newest = max((mtime for _, _, mtime in files), default=0)
    subdirectories = {rel.rsplit("/", 1)[0] for rel, _, _ in files if "/" in rel}
    for sub in {"/".join(d.split("/")[:i]) for d in subdirectories for i in range(1, d.count("/") + 2)}:
        try:
            newest = max(newest, os.stat(os.path.join(directory, sub), follow_symlinks=False).st_mtime_ns)
        except OSError:
            continue
    return newest


# --- completion markers --------------------------------------------------------------------------

def completion_marker(files: CheckpointFiles) -> Optional[str]:
    """What the checkpoint's framework writes last, when it is there and its rule agrees."""
    def ok(verdict: Optional[completeness.Verdict]) -> bool:
        return verdict is not None and verdict.complete is True

    if files.has(md.TRAINER_STATE) and completeness.is_trainer_checkpoint(files) and ok(completeness.huggingface(files)):
        return "trainer_state.json (a Trainer writes it last)"
    if any(p.endswith(".distcp") for p in files.paths) and ok(completeness.torch_dcp(files)):
        return ".metadata (torch DCP writes it last)"
    if _orbax_committed(files) and ok(completeness.orbax(files)):
        return "Orbax commit marker"
    if files.has(md.DEEPSPEED_LATEST) and ok(completeness.deepspeed(files)):
        return "latest (DeepSpeed writes it after every rank saved)"
    if files.has(md.MEGATRON_TRACKER) and ok(completeness.megatron(files)):
        return f"{md.MEGATRON_TRACKER} (Megatron writes it after the save)"
    if completeness.is_accelerate_state(files) and ok(completeness.accelerate(files)):
        return "random_states_0.pkl (Accelerate's save_state writes it last)"
    return None


def _orbax_committed(files: CheckpointFiles) -> bool:
    if files.has(completeness.ORBAX_COMMIT_FILE):
        return True
    if not files.has(completeness.ORBAX_CHECKPOINT_METADATA):
        return False
    try:
        meta = files.json(completeness.ORBAX_CHECKPOINT_METADATA)
    except Unreadable:
        return False
    return isinstance(meta, dict) and isinstance(meta.get("commit_timestamp_nsecs"), int)


# What a framework writes last into the part of the worker that finishes a multi-worker save: torch
# DCP's coordinator writes `.metadata` once every rank's shards are written; DeepSpeed's rank 0 its
# `latest` tag after every rank saved; Orbax its commit marker; a Trainer its trainer_state.json.
_PART_MARKERS = {md.DCP_METADATA: ".metadata (torch DCP writes it once every rank's shards are written)",
                 md.DEEPSPEED_LATEST: "latest (DeepSpeed writes it after every rank saved)",
                 completeness.ORBAX_COMMIT_FILE: "Orbax's commit marker",
                 md.TRAINER_STATE: "trainer_state.json (a Trainer writes it last)"}


def part_marker(listed: Listed) -> Optional[str]:
    """The last-written file of a multi-worker save, when this part holds it at its top (only
    the worker that writes it has it: the other parts are sealed by a rename or a newer step; at
    their pod's end without either they are left writable)."""
    names = {p for p, _, _ in listed.files if "/" not in p}
    for name, what in _PART_MARKERS.items():
        if name in names and (name != md.DCP_METADATA or any(p.endswith(".distcp") for p, _, _ in listed.files)):
            return what
    return None


@dataclass(frozen=True)
class Evidence:
    """What the completeness rules say of a listed directory (cheap: no hashing)."""

    complete: Optional[bool]
    reason: str
    marker: Optional[str]


def evidence(listed: Listed) -> Evidence:
    files = CheckpointFiles(Path(listed.directory), {p: size for p, size, _ in listed.files}, listed.name)
    verdict = formats.completeness_of(Path(listed.directory), files.sizes, listed.name)
    marker = completion_marker(files) if verdict.complete is not False else None
    return Evidence(verdict.complete, verdict.reason or "not checked", marker)


# --- the decision ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seal:
    reason: str


@dataclass(frozen=True)
class Hold:
    reason: str


def renamed_into_place(listed: Listed, unfinished_before: dict[tuple[int, int], str], *,
                       renamed_at_first_look: bool) -> Optional[str]:
    """`renamed_at_first_look`: the ctime rule held at the first look that listed this directory
    (this inode) under its final name."""
    if listed.inode in unfinished_before:
        return f"renamed into place from {unfinished_before[listed.inode]}"
    if listed.renamed_by_ctime and renamed_at_first_look:
        return "renamed into place (its ctime is later than every change in it)"
    return None


GIVEN_BACK_FILE = "given-back.json"  # in LIVE_DIR: the parts the resume step made writable again (H9-3)


def given_back_inodes(records: Any) -> dict[str, int]:
    """The resume step's record of the parts it gave back (tenant-writable: only well-typed entries):
    path -> the inode number of the directory it gave back (not the device: another node's mount of
    the same volume may number it otherwise)."""
    given: dict[str, int] = {}
    for record in records if isinstance(records, list) else []:
        if isinstance(record, dict) and isinstance(record.get("path"), str) and \
                isinstance(record.get("inode"), int) and not isinstance(record.get("inode"), bool):
            given[record["path"]] = record["inode"]
    return given


def renamed_at_first_look(listed: Listed, given_back: Mapping[str, int]) -> bool:
    """The ctime rule's verdict at a directory's first look, except for a part the resume step gave back
    (the same inode): its chmod moved the ctime, and the resume copy's mkdir (or anything else in the
    volume's root) the parent's mtime: that is no rename into place, and sealing it again would make the
    restarted trainer's write of it fail (EACCES). A directory renamed into place since is another inode."""
    return listed.renamed_by_ctime and given_back.get(listed.path) != listed.inode[1]


def newer_step(listed: Listed, listing: Listing) -> Optional[int]:
    step = listed.step
    if step is None:
        return None
    newer = [s for s in listing.steps_seen.get(listed.parent, []) if s > step]
    return min(newer) if newer else None


def decide(listed: Listed, before: Optional[Listed], found: Evidence, *, renamed: Optional[str],
           newer: Optional[int], writers_done: bool, part: bool = False) -> Seal | Hold:
    """Seal now, or hold and say why (the module docstring has the rules). `part`: the directory is
    one worker's part of a checkpoint assembled across workers' volumes (`agent watch --part`): its
    own completeness says nothing (rank 1's DCP part has no `.metadata`, rank 0's lacks rank 1's
    shard; the operator judges the union), so only the listing's stability and the writer's signs
    count, a framework's last-written file among them (`part_marker`); at the pod's end too: a part
    without any of those signs is left writable (`_part_done`)."""
    if not listed.files:
        return Hold("no files yet")
    if writers_done and part:
        # A part's own completeness says nothing (the union is judged), so a part is known finished
        # only by its writer's signs. One without any may be a save the crash (or the stop) cut short
        # on some rank: left writable, so the restarted group (which resumes from the latest union
        # complete over the volumes) can write this step again (sealed, a non-root trainer got
        # PermissionError: F7, as hostile8 R1 for one volume); the end-of-job snapshot reads it as it
        # is then (no union is assembled live without every worker's sealed part).
        done = _part_done(listed, renamed, newer)
        if done is None:
            return Hold("no sign this worker's part was finished when the training containers exited "
                        "(no completion marker, rename or newer step): left writable for a retry")
        return Seal(f"the training containers exited ({done})")
    if writers_done and found.complete is False:
        # A save the crash (or the stop) cut short: left writable, so the retry that resumes from the
        # latest complete one can write this step again (sealed, a non-root trainer got PermissionError
        # on every retry: hostile8 R1); the end-of-job snapshot records it if it is still there then.
        return Hold(f"incomplete when the training containers exited ({found.reason}): left writable for a retry")
    if writers_done:
        return Seal("the training containers exited")
    if before is None or before.files != listed.files:
        return Hold("being written (its listing changed since the last look)")
    if part:
        marker = part_marker(listed)
        if marker:
            return Seal(f"this worker's part holds {marker}")
    elif found.complete is False:
        return Hold(f"incomplete: {found.reason}")
    elif found.marker:
        return Seal(f"complete: {found.marker}")
    if renamed:
        return Seal(renamed)
    if newer is not None:
        return Seal(f"a newer step ({newer}) appeared beside it")
    return Hold("no sign yet that the writer is done (no completion marker, rename or newer step)")


def _part_done(listed: Listed, renamed: Optional[str], newer: Optional[int]) -> Optional[str]:
    """The sign that this worker is done writing its part, or None: the file a multi-worker save
    writes last (in the part that holds it), a rename into place, a newer step beside it. A part
    has no completeness of its own (a DCP rank's shard is whole while another rank's save was cut
    short): without a sign, it is not known to be finished."""
    marker = part_marker(listed)
    if marker:
        return f"this worker's part holds {marker}"
    if renamed:
        return renamed
    if newer is not None:
        return f"a newer step ({newer}) appeared beside it"
    return None


# --- sealed directories, looked at again ------------------------------------------------------------

RecordedStat = tuple[str, int, int, int, int]   # (path inside the checkpoint, size, mtime_ns, ctime_ns, inode)
StatNow = tuple[int, int, int, int]             # (size, mtime_ns, ctime_ns, inode)


@dataclass(frozen=True)
class Observed:
    """A sealed directory as one cheap look (stats and a listing, no hashing) finds it."""

    stats: dict[str, Optional[StatNow]]  # each recorded file -> its stat now (None: cannot be stat'ed)
    listed: frozenset[str]               # every file the listing found
    unlistable: Optional[str] = None     # a directory in it that could not be listed, and why


@dataclass(frozen=True)
class Change:
    """What a look found different from when the directory was sealed. `final`: hashing cannot
    show the bytes are the same (what cannot be listed cannot be hashed whole)."""

    message: str
    final: bool


def sealed_change(recorded: list[RecordedStat], observed: Observed) -> Optional[Change]:
    """The first difference between a sealed directory's recorded stats and a look at it now, or
    None. A directory that cannot be listed any more is a change at once: a file added in it
    would not be seen (the walk's error is never taken for "nothing there")."""
    if observed.unlistable is not None:
        return Change(f"{observed.unlistable}: a file may have been added or changed there", final=True)
    seen = set()
    for rel, size, mtime, ctime, ino in recorded:
        seen.add(rel)
        now = observed.stats.get(rel)
        if now is None:
            return Change(f"{rel} is missing", final=False)
        if now != (size, mtime, ctime, ino):
            return Change(f"{rel} changed", final=False)
    added = sorted(observed.listed - seen)
    if added:
        return Change(f"{added[0]} was added", final=False)
    return None
