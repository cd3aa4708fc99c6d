"""Moving a checkpoint between a user's machine and a pod, over `kubectl exec`'s stdin/stdout
(the volume store's push and pull; `kubectl ckpt push|pull` drive them).

- `agent receive DIR --digest D` is the main container of an upload's receiver pod: it waits
  until an `agent unpack` run in the same pod (by `kubectl ckpt push`, with exec) has committed
  an upload into DIR, then scans DIR itself (the operator trusts this scan, not the pusher) and
  prints one JSON line: the scan as `agent scan --json` prints it, plus `received`, `verified`
  and `problems` (the files that differ from the manifest the push sent, a digest other than
  D, anything the scan skipped). With no push for `--idle` seconds it prints `received: false`.
- `agent unpack DIR` reads a tar stream on stdin: first the manifest of the checkpoint
  (`.checkpoint-manifest.json`), then files it lists. Each file lands under a temporary name and
  gets its real name only once its size and sha256 match the manifest. Files already in DIR
  from an interrupted push stay (the pusher sends only the rest); files the manifest does not
  list go. Then the manifest is written into DIR and the commit marker beside DIR.
- `agent pack DIR` writes the checkpoint in DIR as a tar stream on stdout (its stored manifest
  first, when it has one); `agent hold` is the main container of a pull pod: it ends once the
  pulls run in the pod are over, or after `--idle` seconds without one.

Memory is bounded by the tar reader (agent/tarstream.py); nothing is written through a symlink
(every directory on the way is created by us and checked to be a real directory).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

from checkpoint_operator.agent.download import temp_name
from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.agent.hashing import hash_files
from checkpoint_operator.agent.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, FileEntry, Manifest, parse_manifest
from checkpoint_operator.agent.names import TEMP_PREFIX, printable
from checkpoint_operator.agent.tarstream import COPY_CHUNK, TarWriter, iter_files
from checkpoint_operator.agent.tree import EntryBudget, entry_limit, locate_file, walk_checkpoint
from checkpoint_operator.agent.verify import MAX_PROBLEMS, Problem, compare

_OPEN_FLAGS = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
POLL_SECONDS = 0.5


def commit_marker(directory: str) -> str:
    """Beside DIR (on the same volume), never inside it: nothing but the data is in DIR."""
    parent, name = os.path.split(os.path.abspath(directory))
    return os.path.join(parent, f".ckpt-upload-{name}.commit")


def lock_path(directory: str) -> str:
    parent, name = os.path.split(os.path.abspath(directory))
    return os.path.join(parent, f".ckpt-upload-{name}.lock")


@contextlib.contextmanager
def push_lock(directory: str) -> Iterator[None]:
    """One push into DIR at a time (a second one is refused at once, not queued)."""
    fd = os.open(lock_path(directory), os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AgentError(f"{directory}: another push into it is under way; wait for it to end") from None
        yield
    finally:
        os.close(fd)


def push_under_way(directory: str) -> bool:
    try:
        fd = os.open(lock_path(directory), os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# --- unpack ------------------------------------------------------------------------------------

@dataclass
class Unpacked:
    received_files: int = 0
    received_bytes: int = 0
    kept_files: int = 0
    removed_files: int = 0


class Unpacker:
    def __init__(self, directory: str, *, max_size: Optional[int] = None, name: str = "") -> None:
        self.dir = directory
        self.max_size = max_size
        self.name = name
        self._dirs_ok: set[str] = set()

    def run(self, source: BinaryIO) -> Unpacked:
        os.makedirs(self.dir, exist_ok=True)
        with push_lock(self.dir):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(commit_marker(self.dir))  # what DIR holds is no longer committed
            return self._unpack(source)

    def _unpack(self, source: BinaryIO) -> Unpacked:
        where = "the pushed stream"
        members = iter_files(source, where)
        first = next(members, None)
        if first is None or first.path != MANIFEST_NAME:
            raise AgentError(f"{where}: must start with {MANIFEST_NAME}, the manifest of the checkpoint")
        if first.size > MAX_MANIFEST_BYTES:
            raise AgentError(f"{where}: the manifest is {first.size} bytes, more than {MAX_MANIFEST_BYTES}")
        manifest = parse_manifest(first.read(first.size), f"{where} ({MANIFEST_NAME})")
        if self.max_size is not None and manifest.sizeBytes > self.max_size:
            raise AgentError(f"the checkpoint is {manifest.sizeBytes} bytes, past the size limit of {self.max_size}")
        expected = {e.path: e for e in manifest.files}
        done = Unpacked()
        arrived: set[str] = set()
        for member in members:
            entry = expected.get(member.path)
            if entry is None or member.path in arrived:
                why = "is not in the manifest" if entry is None else "arrives twice"
                raise AgentError(f"{where}: file '{printable(member.path)}' {why}")
            if member.size != entry.size:
                raise AgentError(f"{where}: file '{printable(member.path)}' is {member.size} bytes, the manifest "
                                 f"says {entry.size}")
            self._write(member, entry)
            arrived.add(member.path)
            done.received_files += 1
            done.received_bytes += entry.size
        self._check_kept(manifest, arrived, done)
        done.removed_files = self._remove_unlisted(expected)
        self._commit(manifest)
        return done

    def _write(self, member, entry: FileEntry) -> None:
        rel_dir = os.path.dirname(entry.path)
        self._make_dirs(rel_dir)
        final = os.path.join(self.dir, *entry.path.split("/"))
        if os.path.isdir(final) and not os.path.islink(final):
            raise AgentError(f"{final}: is a directory, but the checkpoint has a file there")
        tmp = temp_name(final)
        digest = hashlib.sha256()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _OPEN_FLAGS, 0o644)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := member.read(COPY_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != entry.sha256:
                raise AgentError(f"file '{printable(entry.path)}': sha256 {digest.hexdigest()}, the manifest says "
                                 f"{entry.sha256} (it changed while it was pushed, or was corrupted on the way); "
                                 f"push again")
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _make_dirs(self, rel_dir: str) -> None:
        """Every component a real directory made here or found as one: never a symlink."""
        if not rel_dir or rel_dir in self._dirs_ok:
            return
        self._make_dirs(os.path.dirname(rel_dir))
        path = os.path.join(self.dir, *rel_dir.split("/"))
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise AgentError(f"{path}: is {what}, but the checkpoint has files under '{printable(rel_dir)}/'")
        self._dirs_ok.add(rel_dir)

    def _check_kept(self, manifest: Manifest, arrived: set[str], done: Unpacked) -> None:
        """The files the push did not send must be in DIR already, as the manifest lists them."""
        kept = [e for e in manifest.files if e.path not in arrived]
        located = []
        for entry in kept:
            try:
                path, st = locate_file(self.dir, entry.path)
            except AgentError:
                raise AgentError(f"file '{printable(entry.path)}' was neither sent nor is it in {self.dir}; push "
                                 f"again") from None
            if st.st_size != entry.size:
                raise AgentError(f"file '{printable(entry.path)}' in {self.dir} is {st.st_size} bytes, the manifest "
                                 f"says {entry.size}; push again")
            located.append(path)
        for entry, hashed in zip(kept, hash_files(located)):
            if isinstance(hashed, OSError) or hashed[1] != entry.sha256:
                raise AgentError(f"file '{printable(entry.path)}' in {self.dir} differs from the manifest; push again")
        done.kept_files = len(kept)

    def _remove_unlisted(self, expected: dict[str, FileEntry]) -> int:
        """Files an earlier push left that this checkpoint does not have, and temporary files."""
        tree = walk_checkpoint(self.dir, EntryBudget(entry_limit(), what=self.dir))
        removed = 0
        for f in tree.files:
            if f.rel not in expected:
                os.unlink(os.path.join(self.dir, *f.rel.split("/")))
                removed += 1
        for rel, _reason in tree.skipped:
            if os.path.basename(rel).startswith(TEMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.dir, *rel.split("/")))
        return removed

    def _commit(self, manifest: Manifest) -> None:
        _write_atomically(os.path.join(self.dir, MANIFEST_NAME), manifest.to_json().encode())
        marker = {"digest": manifest.digest, "name": self.name, "time": time.time()}
        _write_atomically(commit_marker(self.dir), json.dumps(marker).encode())


def _write_atomically(path: str, data: bytes) -> None:
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _OPEN_FLAGS, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- receive -----------------------------------------------------------------------------------

def wait_for_commit(directory: str, idle_seconds: float) -> Optional[dict]:
    """The commit marker's content once an unpack committed, or None after `idle_seconds` with
    no push under way."""
    marker = commit_marker(directory)
    idle_since = time.monotonic()
    while True:
        try:
            with open(marker, "rb") as f:
                return json.loads(f.read(64 * 1024) or b"{}")
        except FileNotFoundError:
            pass
        except ValueError:
            return {}
        if push_under_way(directory):
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= idle_seconds:
            return None
        time.sleep(POLL_SECONDS)


def received_result(directory: str, digest: Optional[str], commit: dict, max_size: Optional[int]) -> dict:
    """The scan of DIR by this agent, checked against the manifest the push committed and the
    declared digest: the one result the operator uses."""
    from checkpoint_operator.agent.scan import describe_checkpoint, scan_directory
    scan = scan_directory(Path(directory), single=True)
    problems: list[Problem] = [Problem(s.path, f"skipped: {s.reason}") for s in scan.skipped]
    found = scan.checkpoints[0] if scan.checkpoints else None
    if found is not None and commit.get("name"):
        # The step in the pushed directory's name (DIR here is always "data").
        found = found.model_copy(update=describe_checkpoint(directory, [e.path for e in found.files], commit["name"],
                                                            {e.path: e.size for e in found.files}))
    stored = os.path.join(directory, MANIFEST_NAME)
    try:
        with open(stored, "rb") as f:
            pushed = parse_manifest(f.read(MAX_MANIFEST_BYTES + 1), stored)
    except (OSError, AgentError) as exc:
        pushed = None
        problems.append(Problem(".", f"the manifest of the push is unreadable: {exc}"))
    if found is None:
        problems.append(Problem(".", "no files were received"))
    elif pushed is not None:
        problems += compare(pushed, {e.path: e for e in found.files})
    if found is not None and digest and found.digest != digest:
        problems.append(Problem(".", f"the data received has digest {found.digest}, not the declared {digest}"))
    if found is not None and max_size is not None and found.sizeBytes > max_size:
        problems.append(Problem(".", f"{found.sizeBytes} bytes, past the size limit of {max_size}"))
    out = scan.model_dump(mode="json")
    out["checkpoints"] = [found.model_dump(mode="json")] if found is not None else []
    out.update(received=True, verified=not problems, problemCount=len(problems),
               problems=[{"path": p.path, "problem": p.problem} for p in problems[:MAX_PROBLEMS]])
    return out


# --- pack and hold -------------------------------------------------------------------------------

def pack(directory: str, out: BinaryIO) -> int:
    """Write the checkpoint in DIR to `out`; returns the bytes of file data written."""
    stored = os.path.join(directory, MANIFEST_NAME)
    writer = TarWriter(out)
    total = 0
    if os.path.isfile(stored):
        with open(stored, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        manifest = parse_manifest(raw, stored)
        writer.add_bytes(MANIFEST_NAME, raw)
        files = [(e.path, locate_file(directory, e.path)[0], e.size) for e in manifest.files]
    else:
        tree = walk_checkpoint(directory, EntryBudget(entry_limit(), what=directory))
        for rel, reason in sorted(tree.skipped):
            print(f"pack: skipped '{printable(rel)}': {reason}", file=sys.stderr)
        files = [(f.rel, f.open_path, f.size) for f in sorted(tree.files, key=lambda f: f.rel.encode())]
    for rel, path, size in files:
        writer.add_file(rel, path, size)
        total += size
    writer.close()
    return total


@contextlib.contextmanager
def pull_session(session_dir: Optional[str]) -> Iterator[None]:
    """Seen by `agent hold` in the same pod: a pull under way, then one pull done."""
    if not session_dir:
        yield
        return
    sessions = os.path.join(session_dir, "sessions")
    os.makedirs(sessions, exist_ok=True)
    mine = os.path.join(sessions, str(os.getpid()))
    Path(mine).touch()
    try:
        yield
    finally:
        Path(os.path.join(session_dir, "served")).touch()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mine)


def hold(session_dir: str, idle_seconds: float) -> str:
    """Until a pull was served and none is under way, or `idle_seconds` without one."""
    sessions = os.path.join(session_dir, "sessions")
    idle_since = time.monotonic()
    while True:
        active = os.path.isdir(sessions) and bool(os.listdir(sessions))
        if active:
            idle_since = time.monotonic()
        elif os.path.exists(os.path.join(session_dir, "served")):
            return "served"
        elif time.monotonic() - idle_since >= idle_seconds:
            return "idle"
        time.sleep(POLL_SECONDS)


# --- entry points --------------------------------------------------------------------------------

def _max_size(args: argparse.Namespace) -> Optional[int]:
    from checkpoint_operator.agent.s3 import parse_size
    return parse_size(args.max_size) if getattr(args, "max_size", None) else None


def main_unpack(args: argparse.Namespace) -> int:
    stdin = os.fdopen(os.dup(0), "rb", buffering=COPY_CHUNK)
    done = Unpacker(args.dir, max_size=_max_size(args), name=args.name or "").run(stdin)
    print(json.dumps({"dir": args.dir, "receivedFiles": done.received_files, "receivedBytes": done.received_bytes,
                      "keptFiles": done.kept_files, "removedFiles": done.removed_files}), flush=True)
    return 0


def main_receive(args: argparse.Namespace) -> int:
    os.makedirs(args.dir, exist_ok=True)
    print(f"receive: waiting for a push into {args.dir} (kubectl ckpt push)", file=sys.stderr, flush=True)
    commit = wait_for_commit(args.dir, args.idle)
    if commit is None:
        print(json.dumps({"checkpoints": [], "skipped": [], "received": False,
                          "reason": f"no push within {args.idle:.0f} s"}), flush=True)
        return 0
    print(json.dumps(received_result(args.dir, args.digest, commit, _max_size(args))), flush=True)
    return 0


def main_pack(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.dir):
        raise AgentError(f"{args.dir}: not a directory")
    out = os.fdopen(os.dup(1), "wb", buffering=COPY_CHUNK)
    with pull_session(args.session_dir):
        try:
            pack(args.dir, out)
            out.flush()
        except BrokenPipeError:
            raise AgentError("pack: the reader went away before the end") from None
        finally:
            with contextlib.suppress(OSError):
                out.close()
    return 0


def main_hold(args: argparse.Namespace) -> int:
    os.makedirs(args.session_dir, exist_ok=True)
    print(f"hold: {hold(args.session_dir, args.idle)}", file=sys.stderr, flush=True)
    return 0


def main(args: argparse.Namespace) -> int:
    return {"unpack": main_unpack, "receive": main_receive, "pack": main_pack,
            "hold": main_hold}[args.agent_command](args)


__all__ = ["Unpacker", "commit_marker", "hold", "pack", "push_under_way", "received_result", "wait_for_commit"]
