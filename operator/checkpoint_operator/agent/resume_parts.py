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
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from checkpoint_operator.agent.formats import step_from_name
from checkpoint_operator.agent.parts import Assembled, part_directory, twin_directories, union_of
from checkpoint_operator.agent.scan import RESUME_DIR, ROOT, list_checkpoints
from checkpoint_operator.agent.tree import EntryBudget, entry_limit
from checkpoint_operator.protocol import channel
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


MAX_PARTS = 100000  # api.trainingjob.MAX_REPLICAS: one volume per worker


def main(args: argparse.Namespace) -> int:
    if args.parts > MAX_PARTS:
        raise AgentError(f"--parts {args.parts}: at most {MAX_PARTS} (one volume per worker)")
    if args.keep is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", args.keep):
        raise AgentError(f"--keep {printable(args.keep[:80])}: expected sha256:<64 hex digits>")
    if not os.path.isdir(args.dir):
        raise AgentError(f"{args.dir}: not a directory (resume-parts takes the directory holding worker-0 .. "
                         f"worker-<N-1>)")
    union, passed = latest_union(args.dir, args.parts, args.layout, workers=args.workers, max_entries=args.max_entries)
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
