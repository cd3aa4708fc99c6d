"""`checkpoint-operator agent resume-parts DIR --parts N`: give every worker the latest checkpoint
assembled across the workers' volumes, so a group restarted with output.volumePerWorker can
resume from it (each worker's volume mounted read-write at DIR/worker-<i>, every worker stopped).

Why a copy: a torch DCP load reads `.metadata` and every rank's shard on every rank (DCP spreads
replicated tensors over the ranks' files), and a restarted worker cannot mount another worker's
ReadWriteOnce volume on another node. So the union is written into each worker's own volume:

- the latest checkpoint is the directory name with the highest step (read from its name, as the
  scan reads it) whose union over the parts is complete by its format's rule
  (agent/parts.py: a conflict or an incomplete union is passed over for the one before it), so
  only the directories tried are hashed, newest first;
- each worker's volume gets `.ckpt-resume/<digest hex>/` holding every file of the union, copied
  from where it lies and checked against the manifest's sha256 as it is copied (a file that
  changed since it was hashed fails the run: nothing half-checked is offered), written under a
  temporary name in every volume first; only when all are whole is each named (and each
  `latest` pointed at it, for people: the operator gives the workers the digest's directory, one
  name for all of them, as renames in N volumes are not one atomic step);
- earlier copies in `.ckpt-resume/` are then removed, except `--keep` (the copy the operator
  recorded last), and only names this step writes; anything else there is left and said, and a
  `.ckpt-resume` that is a link (or a `latest` that is not) is refused before anything is written:
  the workers' own directories are never touched.

Every worker gets the whole union (a sharded load reads only its ranks' files, but which those
are is the framework's business): N times the checkpoint's size written, in each volume beside
what the worker wrote. With no complete union, nothing is written and what is there stays.

Parts sealed for a union never published are given back (`--published-list=VALUE`: the
directories the operator published, is publishing or retired, in one argument whatever their count,
protocol/published.py; `--published=DIR`, repeated, by hand; `--keep-sealed`: none; H9-3): a worker's sidecar seals its
part by a sign of its end (a rename into place, a format's marker) and takes its write bits; when
another worker died before its part, that step has no Checkpoint and the restarted group writes it
again, which a non-root trainer cannot do in a read-only directory (EACCES, the job failed where it
should retry). So each worker's parts recorded in its `.ckpt-live/sealed.json` whose directory is
not published get back the write bits they had before the seal (recorded by the sidecar; the
owner's when the record, an older sidecar's, has no modes), and leave the record (a restarted sidecar would seal them again
at its start); nothing is deleted, and parts of published directories stay as they are, as does a
record inside or containing a published directory (the record is tenant-writable) and a file with
more than one hard link (it may be a published step's file too). What was given back is written to
`.ckpt-live/given-back.json` (path, inode): the restarted sidecar does not take its moved ctime for
a rename into place (agent/live_sealing.renamed_at_first_look).
"""

from __future__ import annotations

import argparse
import hashlib
import errno
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Collection, Iterable, Mapping, Optional

from checkpoint_operator.agent import fstree, live_sealing
from checkpoint_operator.agent.formats import step_from_name
from checkpoint_operator.agent.live_sealing import LIVE_DIR, record_path_problem
from checkpoint_operator.agent.live_watch import MAX_STATE_BYTES, STATE_FILE
from checkpoint_operator.agent.safe_read import Unreadable, parse_json, read_capped
from checkpoint_operator.agent.parts import Assembled, part_directory, twin_directories, union_of
from checkpoint_operator.agent.scan import RESUME_DIR, ROOT, list_checkpoints
from checkpoint_operator.agent.tree import EntryBudget, entry_limit
from checkpoint_operator.protocol import channel
from checkpoint_operator.protocol import published as published_list
from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.names import printable
from checkpoint_operator.protocol.results import MAX_PASSED_REPORTED, ResumeReport, cut

LATEST = "latest"
COPY_CHUNK = 1024 * 1024


def _newest_first(paths: list[str]) -> list[str]:
    """Directory names by the step their name gives, highest first (no step: after every step)."""
    def key(path: str) -> tuple[int, int, bytes]:
        step = step_from_name(path.rsplit("/", 1)[-1]) if path != ROOT else None
        return (0, -step, path.encode()) if step is not None else (1, 0, path.encode())
    return sorted(paths, key=key)


def latest_union(directory: str, count: int, layout: str = "auto", workers: Optional[int] = None,
                 max_entries: Optional[int] = None) -> tuple[Optional[Assembled], list[str]]:
    """The newest checkpoint complete over the parts, and why each newer one was passed over."""
    parts = [os.path.join(directory, part_directory(i)) for i in range(count)]
    budget = EntryBudget(entry_limit(max_entries), what=f"{directory} (all {count} workers' volumes)")
    for i, part in enumerate(parts):
        if not os.path.isdir(part):
            raise AgentError(f"{part}: not a directory (worker {i}'s volume is mounted there)")
    listings = [list_checkpoints(Path(p), layout, budget) for p in parts]
    by_path: dict[str, list[int]] = {}
    for i, listing in enumerate(listings):
        for path in listing.candidates:
            by_path.setdefault(path, []).append(i)
    twins = twin_directories(by_path)
    passed: list[str] = []
    for path in _newest_first([p for p in by_path if p not in twins and p != ROOT]):
        union = union_of(parts, listings, path, layout, budget, workers)
        if union is None:
            continue
        if not isinstance(union, Assembled):
            passed.append(f"{union.path}: {union.reason}")
        elif union.manifest.complete is not True:
            passed.append(f"{path}: not complete over the workers' parts: {union.manifest.completeReason}")
        else:
            return union, passed
    return None, passed


def _copy_checked(source: str, target: str, sha256: str, size: int, what: str) -> None:
    digest = hashlib.sha256()
    copied = 0
    with open(source, "rb") as src, open(target, "xb") as dst:
        while chunk := src.read(COPY_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            copied += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    if copied != size or digest.hexdigest() != sha256:
        raise AgentError(f"{what}: changed since it was hashed (sha256 {digest.hexdigest()[:12]}, the manifest "
                         f"says {sha256[:12]}); no resume copy is made: run again once the workers have stopped")


# What this step writes in a `.ckpt-resume/` (and so the only names it ever removes there): a copy
# named by its digest, one under way or set aside, and the `latest` link (being switched).
_OWN_NAME = re.compile(r"^(\.?[0-9a-f]{64}(\.(partial|old)-[0-9]+)?|latest|\.latest\.[0-9]+)$")


def _check_resume_dirs(resumes: list[str]) -> None:
    """Written by this step only: a link at `.ckpt-resume` (or its `latest`) would send the copies, and
    the removal of earlier copies, elsewhere (into the workers' own checkpoints: every volume is mounted)."""
    for i, resume in enumerate(resumes):
        if os.path.islink(resume) or (os.path.lexists(resume) and not os.path.isdir(resume)):
            raise AgentError(f"{resume}: not a directory (worker {i}'s {RESUME_DIR} is a link or a file; only the "
                             f"resume step writes there): no resume copy is made")
        latest = os.path.join(resume, LATEST)
        if os.path.lexists(latest) and not os.path.islink(latest):
            raise AgentError(f"{latest}: not a link (worker {i}'s {RESUME_DIR}/{LATEST} was not written by the "
                             f"resume step): no resume copy is made")


def write_union(directory: str, count: int, union: Assembled, keep: Optional[str] = None) -> list[str]:
    """Write `union` into every worker's volume as `.ckpt-resume/<digest hex>/`: all the copies are
    written and checked under temporary names first, then named in every volume, then each `latest`
    is switched. The operator points the workers at `.ckpt-resume/<digest hex>` itself (renames in N
    volumes are not one atomic step: a failure between two leaves `latest` on different copies, never
    the digest's directory). Then copies other than this one and `keep` (the copy the operator last
    recorded: what the workers fall back to if this step's result is lost) are removed, and only names
    this step writes: anything else found there is left and said. The copies' paths."""
    manifest = union.manifest
    name = manifest.digest.split(":", 1)[1]
    kept = {name, *([keep.split(":", 1)[-1]] if keep else [])}
    sources = dict(zip((f.path for f in manifest.files), union.sources))
    resumes = [os.path.join(directory, part_directory(i), RESUME_DIR) for i in range(count)]
    partial_name = f".{name}.partial-{os.getpid()}"
    _check_resume_dirs(resumes)
    try:
        for resume in resumes:
            os.makedirs(resume, mode=0o755, exist_ok=True)
            partial = os.path.join(resume, partial_name)
            _remove(partial)
            for entry in manifest.files:
                target = os.path.join(partial, *entry.path.split("/"))
                os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
                source = os.path.join(union.tops[entry.path], *entry.path.split("/"))
                _copy_checked(source, target, entry.sha256, entry.size,
                              f"{manifest.path}/{entry.path} (worker {sources[entry.path]})")
        for resume in resumes:
            final = os.path.join(resume, name)
            if os.path.lexists(final):  # an earlier run's copy of the same checkpoint: replaced by this checked one
                os.rename(final, os.path.join(resume, f".{name}.old-{os.getpid()}"))
            os.rename(os.path.join(resume, partial_name), final)
            _sync_dir(resume)
    except BaseException:
        for resume in resumes:
            _remove(os.path.join(resume, partial_name))
        raise
    for resume in resumes:
        link = os.path.join(resume, f".{LATEST}.{os.getpid()}")
        _remove(link)
        os.symlink(name, link)
        os.rename(link, os.path.join(resume, LATEST))
        _sync_dir(resume)
    for i, resume in enumerate(resumes):
        for other in sorted(os.listdir(resume)):
            if other in kept or other == LATEST:
                continue
            if _OWN_NAME.match(other):
                _remove(os.path.join(resume, other))
            else:
                print(f"left {printable(other)} in worker {i}'s {RESUME_DIR}: not written by the resume step",
                      flush=True)
    return [os.path.join(resume, name) for resume in resumes]


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


# --- parts sealed for a union never published, given back (H9-3) --------------------------------------

def parts_to_reopen(sealed: Mapping[int, Iterable[str]], published: Collection[str]) -> dict[int, list[str]]:
    """Each worker's sealed parts to make writable again: those of directories with no Checkpoint
    (`published`: what the operator published, is publishing or retired: those parts are the
    published bytes and stay sealed), and only paths a sidecar could have sealed. The record is
    tenant-writable: a path inside a published directory, or one containing it, is never given back
    (compared by whole components, both ways)."""
    kept = set(published)
    containing = {"/".join(parts[:i]) for q in kept for parts in [q.split("/")] for i in range(1, len(parts))}

    def overlaps(path: str) -> bool:
        parts = path.split("/")
        return path in kept or path in containing or any("/".join(parts[:i]) in kept for i in range(1, len(parts)))
    reopen = {w: sorted({p for p in paths if record_path_problem(p) is None and not overlaps(p)})
              for w, paths in sealed.items()}
    return {w: paths for w, paths in sorted(reopen.items()) if paths}


def reopened_mode(current: int, recorded: Optional[int]) -> int:
    """A sealed entry's mode given back: its mode now with the write bits it had before the seal (`recorded`,
    by the sidecar), or the owner's when none was recorded; nothing else changes (no bit is taken away,
    none but write bits is added)."""
    bits = (recorded & 0o222) if isinstance(recorded, int) else 0o200
    return stat.S_IMODE(current) | bits


def _sealed_records(state_dir: str) -> list:
    try:
        records = parse_json(read_capped(os.path.join(state_dir, STATE_FILE), MAX_STATE_BYTES))
    except Unreadable:
        return []
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("path"), str)] \
        if isinstance(records, list) else []


def _real_directory(root: str, path: str) -> Optional[str]:
    """`root/path` when every component of `path` is a directory and none a link (a link could send
    the chmod into another worker's published part: every volume is mounted here)."""
    current = root
    for part in path.split("/"):
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
    return current


def chmod_same_inode(path: str, seen: os.stat_result, mode: int) -> None:
    """chmod the file or directory `seen` by lstat, never what replaced it since (the volume is the
    trainer's: a path swapped for a symlink into a published checkpoint between the lstat and a
    chmod, which follows links, would give that checkpoint's file its write bits)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if stat.S_ISDIR(seen.st_mode):
        flags |= os.O_DIRECTORY
    fd = os.open(path, flags)  # ELOOP for a symlink
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino) or \
                (not stat.S_ISDIR(now.st_mode) and now.st_nlink > 1):
            raise OSError(errno.ESTALE, "it changed while its write bits were given back")
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _give_back(directory: str, modes: Optional[Mapping[str, object]]) -> int:
    """The write bits of every file and directory under `directory` (links left alone); how many changed.
    `modes`: what the sidecar took them from (an entry not in it lost none: the s3 store's sidecar takes
    none); None (a record of an older sidecar, which kept no modes): the owner's write bit."""
    changed = 0
    entries = [directory]
    for root, dirs, files in fstree.walk(directory):
        entries += [os.path.join(root, n) for n in dirs + files]
    for path in entries:
        try:
            st = os.lstat(path)
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                continue  # links, FIFOs, sockets: nothing of a checkpoint's bytes
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                # A hard link: the same inode may be a file of a published checkpoint (a dedup of an
                # unchanged shard), whose bytes must stay read-only. The trainer replaces it instead.
                print(f"left {printable(path)} read-only: it has {st.st_nlink} hard links (one may be in a published "
                      f"checkpoint); remove or replace it to write it again", flush=True)
                continue
            rel = os.path.relpath(path, directory).replace(os.sep, "/")
            found = modes.get(rel) if modes is not None else None
            recorded = found if isinstance(found, int) else None
            if modes is not None and recorded is None:
                continue
            mode = reopened_mode(st.st_mode, recorded)
            if mode != stat.S_IMODE(st.st_mode):
                chmod_same_inode(path, st, mode)
                changed += 1
        except OSError as exc:
            print(f"cannot give back the write bits of {printable(path)}: {exc.strerror}", flush=True)
    return changed


def reopen_unpublished(directory: str, count: int, published: Collection[str]) -> list[str]:
    """Give every worker's sealed parts of unpublished directories their write bits back, and drop them
    from its sidecar's record; what was reopened, as `worker <i>: <path>`."""
    states = {i: os.path.join(directory, part_directory(i), LIVE_DIR) for i in range(count)}
    records = {i: _sealed_records(d) if os.path.isdir(d) and not os.path.islink(d) else [] for i, d in states.items()}
    reopen = parts_to_reopen({i: [r["path"] for r in recs] for i, recs in records.items()}, published)
    done: list[str] = []
    for worker, paths in reopen.items():
        root = os.path.join(directory, part_directory(worker))
        by_path = {r["path"]: r for r in records[worker]}  # the last record of a path (a linear lookup: H10-6)
        gone = set()
        given_back: list[dict[str, object]] = []
        for path in paths:
            target = _real_directory(root, path)
            record = by_path[path]
            if target is not None:
                modes = record.get("modes")
                _give_back(target, modes if isinstance(modes, dict) else None)
                done.append(f"worker {worker}: {path}")
                try:
                    given_back.append({"path": path, "inode": os.lstat(target).st_ino})
                except OSError:
                    pass
            gone.add(path)
        # What was given back, for the restarted sidecar: the chmod moved each one's ctime (and this
        # step's mkdir of .ckpt-resume the volume root's mtime), which its rename sign would take for a
        # rename into place, sealing it again at once (agent/live_sealing.renamed_at_first_look).
        _write_json(os.path.join(states[worker], live_sealing.GIVEN_BACK_FILE), given_back,
                    f"worker {worker}'s {LIVE_DIR}/{live_sealing.GIVEN_BACK_FILE}")
        kept = [r for r in records[worker] if r["path"] not in gone]
        state = os.path.join(states[worker], STATE_FILE)
        tmp = os.path.join(states[worker], f".{STATE_FILE}.resume-{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(kept, f)
            os.replace(tmp, state)
        except OSError as exc:  # its sidecar seals them again at its start: said, the copy is still made
            print(f"cannot rewrite worker {worker}'s {LIVE_DIR}/{STATE_FILE}: {exc.strerror}", flush=True)
    return done


def _write_json(path: str, value: object, what: str) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.resume-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f)
        os.replace(tmp, path)
    except OSError as exc:
        print(f"cannot write {what}: {exc.strerror}", flush=True)


MAX_PARTS = 100000  # api.trainingjob.MAX_REPLICAS: one volume per worker


def main(args: argparse.Namespace) -> int:
    if args.parts > MAX_PARTS:
        raise AgentError(f"--parts {args.parts}: at most {MAX_PARTS} (one volume per worker)")
    if args.keep is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", args.keep):
        raise AgentError(f"--keep {printable(args.keep[:80])}: expected sha256:<64 hex digits>")
    if not os.path.isdir(args.dir):
        raise AgentError(f"{args.dir}: not a directory (resume-parts takes the directory holding worker-0 .. "
                         f"worker-<N-1>)")
    published = list(args.published or [])
    if args.published_list is not None:
        try:
            published += published_list.decode(args.published_list)
        except published_list.PublishedListError as exc:  # never read as "nothing published"
            raise AgentError(str(exc)) from None
    union, passed = latest_union(args.dir, args.parts, args.layout, workers=args.workers, max_entries=args.max_entries)
    if args.keep_sealed:
        print("every sealed part stays sealed (--keep-sealed: the list of published directories did not fit in "
              "the pod's arguments)", flush=True)
    else:
        for line in reopen_unpublished(args.dir, args.parts, published):
            print(f"made writable again (sealed as a part of a checkpoint never published): {printable(line)}",
                  flush=True)
    for line in passed:
        print(f"passed over {line}", flush=True)
    shown = [cut(line) for line in passed[:MAX_PASSED_REPORTED]]
    if union is None:
        print(f"no checkpoint is complete over the {args.parts} workers' parts: nothing written", flush=True)
        channel.write(ResumeReport(passed=shown, passedCount=len(passed)))
        return 0
    write_union(args.dir, args.parts, union, keep=args.keep)
    m = union.manifest
    print(f"resume: {m.path} (step {m.step}, {m.fileCount} files, {m.sizeBytes} bytes, {m.digest}) written into "
          f"{RESUME_DIR}/{LATEST} of each of the {args.parts} workers' volumes", flush=True)
    # The result line the operator reads (protocol/results.py): which checkpoint the group resumes from.
    channel.write(ResumeReport(path=m.path, digest=m.digest, step=m.step, sizeBytes=m.sizeBytes,
                               fileCount=m.fileCount, passed=shown, passedCount=len(passed)))
    return 0
