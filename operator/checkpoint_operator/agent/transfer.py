"""Moving a checkpoint between a user's machine and a pod, over `kubectl exec`'s stdin/stdout
(the volume store's push and pull; `kubectl ckpt push|pull` drive them).

- `agent receive DIR --digest D` is the main container of an upload's receiver pod: it waits
  until an `agent unpack` run in the same pod (by `kubectl ckpt push`, with exec) has committed
  an upload into DIR, then scans DIR itself (the operator trusts this scan, not the pusher) and
  writes its result line (protocol/results.py TransferReport): the checkpoint's summary,
  `verified`, and `problems` (the files that differ from the manifest the push sent, a digest
  other than D, anything the scan skipped). With no push for `--idle` seconds: `received: false`.
- `agent unpack DIR` reads a tar stream on stdin: first the manifest of the checkpoint
  (`.checkpoint-manifest.json`), then files it lists. Each file lands under a temporary name and
  gets its real name only once its size and sha256 match the manifest. Files already in DIR
  from an interrupted push stay (the pusher sends only the rest); files the manifest does not
  list go. Then the manifest is written into DIR and the commit marker beside DIR.
- `agent pack DIR [--manifest FILE]` writes the checkpoint in DIR as a tar stream on stdout (its
  stored manifest first, when it has one: FILE, or DIR's own); `agent hold` is the main container of a pull pod: it ends once the
  pulls run in the pod are over, or after `--idle` seconds without one.

Memory is bounded by the tar reader (agent/tarstream.py); nothing is written through a symlink
(every directory on the way is created by us and checked to be a real directory).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from checkpoint_operator.agent import fstree
from checkpoint_operator.agent.download import temp_name
from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.agent.hashing import hash_files
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, FileEntry, Manifest, parse_manifest
from checkpoint_operator.protocol.names import TEMP_PREFIX, printable
from checkpoint_operator.agent.tarstream import COPY_CHUNK, ByteSink, ByteSource, TarWriter, iter_files
from checkpoint_operator.agent.tree import EntryBudget, entry_limit, locate_file, walk_checkpoint
from checkpoint_operator.agent.verify import Problem, compare
from checkpoint_operator.protocol import channel, results

_OPEN_FLAGS = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
POLL_SECONDS = 0.5


def commit_marker(directory: str) -> str:
    """Beside DIR (on the same volume), never inside it: nothing but the data is in DIR."""
    parent, name = os.path.split(os.path.abspath(directory))
    return os.path.join(parent, f".ckpt-upload-{name}.commit")


def lock_path(directory: str) -> str:
    parent, name = os.path.split(os.path.abspath(directory))
    return os.path.join(parent, f".ckpt-upload-{name}.lock")


def take_push_lock(directory: str) -> int:
    """One push into DIR at a time (a second one is refused at once, not queued). The lock is
    never released by hand: the process's end releases it, so `agent receive` (which ends the
    pod, and an exec with it) never ends before the push has exited."""
    fd = os.open(lock_path(directory), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AgentError(f"{directory}: another push into it is under way; wait for it to end") from None
    return fd


def push_under_way(directory: str) -> bool:
    return _locked(lock_path(directory))


# --- unpack (push) and the receiving end of a pull --------------------------------------------

@dataclass
class Unpacked:
    manifest: Optional[Manifest] = None
    received_files: int = 0
    received_bytes: int = 0
    kept_files: int = 0
    removed_files: int = 0


class StreamReceiver:
    """Writes a tar stream of a checkpoint into DIR.

    A push (`pulled=False`, agent unpack in a receiver pod): the stream starts with the manifest;
    files it does not send must already be in DIR as it lists them (an interrupted push); files
    it does not list are removed; then the commit marker. A pull (`pulled=True`, kubectl ckpt
    pull on the user's machine): the manifest may come first (then each file is checked against
    it as it arrives); without one, the files stay under temporary names until the digest of
    all of them is `digest`. Nothing else in DIR is touched. Either way a file gets its real
    name only once verified, and the manifest is written into DIR last.
    """

    def __init__(self, directory: str, *, pulled: bool = False, digest: Optional[str] = None,
                 max_size: Optional[int] = None, name: str = "", where: str = "the pushed stream",
                 on_bytes=None, before_writing: Optional[Callable[[Optional[Manifest]], None]] = None) -> None:
        self.dir = directory
        self.pulled = pulled
        self.digest = digest
        self.max_size = max_size
        self.name = name
        self.where = where
        self.on_bytes = on_bytes or (lambda n: None)
        # Called once the stream says what it holds (its manifest, or None), before any file is
        # written: a pull checks there what DIR already holds.
        self.before_writing = before_writing or (lambda manifest: None)
        self._dirs_ok: set[str] = set()
        self._made_dirs: list[str] = []

    def run(self, source: ByteSource) -> Unpacked:
        """A push takes the lock of DIR first (take_push_lock)."""
        fstree.make_dirs(self.dir)
        if not self.pulled:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(commit_marker(self.dir))  # what DIR holds is no longer committed
        return self._receive(source)

    def _receive(self, source: ByteSource) -> Unpacked:
        members = iter_files(source, self.where)
        first = next(members, None)
        manifest = None
        pending = None
        if first is not None and first.path == MANIFEST_NAME:
            if first.size > MAX_MANIFEST_BYTES:
                raise AgentError(f"{self.where}: the manifest is {first.size} bytes, more than {MAX_MANIFEST_BYTES}")
            manifest = parse_manifest(first.read(first.size), f"{self.where} ({MANIFEST_NAME})")
            self._check_totals(manifest)
        elif not self.pulled:
            raise AgentError(f"{self.where}: must start with {MANIFEST_NAME}, the manifest of the checkpoint")
        else:
            pending = first
        self.before_writing(manifest)
        done = Unpacked(manifest)
        if manifest is not None:
            arrived = self._files_of_manifest(manifest, members, done)
            if not self.pulled:
                self._check_kept(manifest, arrived, done)
                done.removed_files = self._remove_unlisted({e.path for e in manifest.files})
        else:
            manifest = done.manifest = self._files_without_manifest(pending, members, done)
        _write_atomically(os.path.join(self.dir, MANIFEST_NAME), manifest.to_json().encode())
        if not self.pulled:
            marker = {"digest": manifest.digest, "name": self.name, "time": time.time()}
            _write_atomically(commit_marker(self.dir), json.dumps(marker).encode())
        return done

    def _check_totals(self, manifest: Manifest) -> None:
        if self.digest and manifest.digest != self.digest:
            raise AgentError(f"{self.where}: the checkpoint has digest {manifest.digest}, not the recorded "
                             f"{self.digest}; nothing written")
        if self.max_size is not None and manifest.sizeBytes > self.max_size:
            raise AgentError(f"the checkpoint is {manifest.sizeBytes} bytes, past the size limit of {self.max_size}")

    def _files_of_manifest(self, manifest: Manifest, members, done: Unpacked) -> set[str]:
        expected = {e.path: e for e in manifest.files}
        arrived: set[str] = set()
        for member in members:
            entry = expected.get(member.path)
            if entry is None or member.path in arrived:
                why = "is not in the manifest" if entry is None else "arrives twice"
                raise AgentError(f"{self.where}: file '{printable(member.path)}' {why}")
            if member.size != entry.size:
                raise AgentError(f"{self.where}: file '{printable(member.path)}' is {member.size} bytes, the manifest "
                                 f"says {entry.size}")
            tmp, sha = self._write_temporary(member)
            if sha != entry.sha256:
                _unlink_quietly(tmp)
                raise AgentError(f"file '{printable(entry.path)}': sha256 {sha}, the manifest says {entry.sha256} "
                                 f"(it changed while it was sent, or was corrupted on the way); try again")
            os.replace(tmp, self._final(entry.path))
            arrived.add(member.path)
            done.received_files += 1
            done.received_bytes += entry.size
        if self.pulled and arrived != set(expected):
            missing = sorted(set(expected) - arrived)
            raise AgentError(f"{self.where}: ended without {len(missing)} of the files the manifest lists (first: "
                             f"'{printable(missing[0])}')")
        return arrived

    def _files_without_manifest(self, first, members, done: Unpacked) -> Manifest:
        """A pull of a checkpoint stored without a manifest: all files staged, then the digest decides."""
        from checkpoint_operator.protocol.manifest import digest_of, paths_problem
        from checkpoint_operator.protocol.names import check_path
        staged: list[tuple[FileEntry, str]] = []
        seen: set[str] = set()
        try:
            for member in itertools.chain([first] if first is not None else [], members):
                if member.path in seen:
                    raise AgentError(f"{self.where}: file '{printable(member.path)}' arrives twice")
                seen.add(member.path)
                check_path(member.path, self.where)
                tmp, sha = self._write_temporary(member)
                staged.append((FileEntry(path=member.path, size=member.size, sha256=sha), tmp))
                done.received_files += 1
                done.received_bytes += member.size
            entries = [e for e, _ in staged]
            problem = paths_problem(e.path for e in entries)
            if problem:
                raise AgentError(f"{self.where}: {problem}")
            if not entries:
                raise AgentError(f"{self.where}: no files")
            digest = digest_of(entries)
            if self.digest and digest != self.digest:
                raise AgentError(f"{self.where}: the data received has digest {digest} ({len(entries)} files, "
                                 f"{sum(e.size for e in entries)} bytes), not the recorded {self.digest}; nothing kept "
                                 f"(no manifest is stored with it, so the file that differs cannot be named)")
        except BaseException:
            for _, tmp in staged:
                _unlink_quietly(tmp)
            for made in reversed(self._made_dirs):  # nothing kept: not even the directories made for it
                with contextlib.suppress(OSError):
                    os.rmdir(made)
            raise
        for entry, tmp in staged:
            os.replace(tmp, self._final(entry.path))
        from checkpoint_operator.agent.scan import describe_checkpoint
        ordered = sorted(entries, key=lambda e: e.path.encode())
        info = describe_checkpoint(self.dir, [e.path for e in ordered], self.name, {e.path: e.size for e in ordered})
        return Manifest(path=".", files=ordered, sizeBytes=sum(e.size for e in ordered), fileCount=len(ordered),
                        digest=digest, **info)

    def _final(self, rel: str) -> str:
        return os.path.join(self.dir, *rel.split("/"))

    def _write_temporary(self, member) -> tuple[str, str]:
        """The member under its temporary name beside its final place; (that name, its sha256)."""
        self._make_dirs(os.path.dirname(member.path))
        final = self._final(member.path)
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
                    self.on_bytes(len(chunk))
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp, digest.hexdigest()

    def _make_dirs(self, rel_dir: str) -> None:
        """Every component a real directory made here or found as one: never a symlink. A loop
        from the top down, not a recursion: the depth is the sender's choice."""
        if not rel_dir or rel_dir in self._dirs_ok:
            return
        parts = rel_dir.split("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if prefix in self._dirs_ok:
                continue
            path = os.path.join(self.dir, *parts[:depth])
            try:
                os.mkdir(path)
                self._made_dirs.append(path)
            except FileExistsError:
                pass
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                raise AgentError(f"{path}: is {what}, but the checkpoint has files under '{printable(prefix)}/'")
            self._dirs_ok.add(prefix)

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

    def _remove_unlisted(self, listed: set[str]) -> int:
        """Files an earlier push left that this checkpoint does not have, and temporary files."""
        tree = walk_checkpoint(self.dir, EntryBudget(entry_limit(), what=self.dir))
        removed = 0
        for f in tree.files:
            if f.rel not in listed:
                os.unlink(self._final(f.rel))
                removed += 1
        for rel, _reason in tree.skipped:
            if os.path.basename(rel).startswith(TEMP_PREFIX):
                _unlink_quietly(self._final(rel))
        return removed


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


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
    """The commit marker's content once an unpack committed and ended (it holds the lock until it
    has said its last word: this container's end would end it too), or None after
    `idle_seconds` with no push under way."""
    marker = commit_marker(directory)
    idle_since = time.monotonic()
    while True:
        under_way = push_under_way(directory)
        if not under_way:
            try:
                with open(marker, "rb") as f:
                    return json.loads(f.read(64 * 1024) or b"{}")
            except FileNotFoundError:
                pass
            except (ValueError, RecursionError):
                return {}
        if under_way:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= idle_seconds:
            return None
        time.sleep(POLL_SECONDS)


def received_result(directory: str, digest: Optional[str], commit: dict,
                    max_size: Optional[int]) -> results.TransferReport:
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
    return results.TransferReport(
        received=True, verified=not problems, checkpoint=results.CheckpointSummary.of(found) if found else None,
        problems=reported_problems(problems), problemCount=len(problems))


def reported_problems(problems: list[Problem]) -> list[results.Problem]:
    """The first problems, each within the result's bounds."""
    return [results.Problem(path=results.cut(p.path, results.MAX_REPORTED_PATH), problem=results.cut(p.problem))
            for p in problems[:results.MAX_PROBLEMS_REPORTED]]


# --- pack and hold -------------------------------------------------------------------------------

def pack(directory: str, out: ByteSink, digest: Optional[str] = None, manifest_path: Optional[str] = None) -> int:
    """Write the checkpoint in DIR to `out`; returns the bytes of file data written. Its stored
    manifest (`manifest_path`, stored beside the data; else DIR's own) goes first, and gives the
    files, only when it has the recorded `digest` (verify.py trusted_manifest); else DIR's files
    are read as they are, and the puller checks their digest."""
    from checkpoint_operator.agent.verify import trusted_manifest
    writer = TarWriter(out)
    total = 0
    manifest = trusted_manifest(directory, digest, manifest_path) if digest or manifest_path else None
    if manifest is not None:
        writer.add_bytes(MANIFEST_NAME, manifest.to_json().encode())
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
    """Seen by `agent hold` in the same pod: a pull under way (a session file locked until this
    process ends, so the pod never ends an exec that is still exiting), then one pull done."""
    if not session_dir:
        yield
        return
    sessions = os.path.join(session_dir, "sessions")
    fstree.make_dirs(sessions)
    fd = os.open(os.path.join(sessions, f"{os.getpid()}-{time.monotonic_ns()}"),
                 os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # released by the process's end, never by hand
    try:
        yield
    finally:
        Path(os.path.join(session_dir, "served")).touch()


def _locked(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def hold(session_dir: str, idle_seconds: float) -> str:
    """Until a pull was served and none is under way, or `idle_seconds` without one."""
    sessions = os.path.join(session_dir, "sessions")
    idle_since = time.monotonic()
    while True:
        names = os.listdir(sessions) if os.path.isdir(sessions) else []
        if any(_locked(os.path.join(sessions, n)) for n in names):
            idle_since = time.monotonic()
        elif os.path.exists(os.path.join(session_dir, "served")):
            return "served"
        elif time.monotonic() - idle_since >= idle_seconds:
            return "idle"
        time.sleep(POLL_SECONDS)


# --- entry points --------------------------------------------------------------------------------

def _max_size(args: argparse.Namespace) -> Optional[int]:
    from checkpoint_operator.objectstore.s3 import parse_size
    return parse_size(args.max_size) if getattr(args, "max_size", None) else None


def main_unpack(args: argparse.Namespace) -> int:
    stdin = os.fdopen(os.dup(0), "rb", buffering=COPY_CHUNK)
    fstree.make_dirs(args.dir)
    take_push_lock(args.dir)  # held until this process ends: `agent receive` waits for that
    done = StreamReceiver(args.dir, max_size=_max_size(args), name=args.name or "").run(stdin)
    print(json.dumps({"dir": args.dir, "receivedFiles": done.received_files, "receivedBytes": done.received_bytes,
                      "keptFiles": done.kept_files, "removedFiles": done.removed_files}), flush=True)
    return 0


def main_receive(args: argparse.Namespace) -> int:
    fstree.make_dirs(args.dir)
    print(f"receive: waiting for a push into {args.dir} (kubectl ckpt push)", file=sys.stderr, flush=True)
    commit = wait_for_commit(args.dir, args.idle)
    if commit is None:
        channel.write(results.TransferReport(received=False, reason=f"no push within {args.idle:.0f} s"))
        return 0
    result = received_result(args.dir, args.digest, commit, _max_size(args))
    if getattr(args, "sync", False):  # a volume snapshot of it follows: its bytes must be on the disk
        from checkpoint_operator.agent.durability import sync_filesystem
        result = result.model_copy(update={"synced": sync_filesystem(args.dir)})
    channel.write(result)
    return 0


def main_pack(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.dir):
        raise AgentError(f"{args.dir}: not a directory")
    out = os.fdopen(os.dup(1), "wb", buffering=COPY_CHUNK)
    with pull_session(args.session_dir):
        try:
            pack(args.dir, out, args.digest, getattr(args, "manifest", None))
            out.flush()
        except BrokenPipeError:
            raise AgentError("pack: the reader went away before the end") from None
        finally:
            with contextlib.suppress(OSError):
                out.close()
    return 0


def main_hold(args: argparse.Namespace) -> int:
    fstree.make_dirs(args.session_dir)
    print(f"hold: {hold(args.session_dir, args.idle)}", file=sys.stderr, flush=True)
    return 0


def main(args: argparse.Namespace) -> int:
    return {"unpack": main_unpack, "receive": main_receive, "pack": main_pack,
            "hold": main_hold}[args.agent_command](args)


__all__ = ["StreamReceiver", "commit_marker", "hold", "pack", "push_under_way", "received_result", "wait_for_commit"]
