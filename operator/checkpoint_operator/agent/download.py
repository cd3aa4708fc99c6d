"""`agent download s3://bucket/prefix/ DIR [--digest sha256:...]`: fetch a checkpoint and verify
it against its manifest.

Before any byte moves: the manifest must be consistent with itself (protocol/manifest.py), have
the pinned digest when one is given, fit the limits and the free space of DIR, and every
directory on the way to a file must be a real directory of DIR (never a symlink: nothing is
written through a link).

Files arrive under a short hidden temporary name (`.ckpt-download-<hash of the name>`, so any
valid name fits) and get their real name only once their size and sha256 match the manifest:
a file with its real name is always a good one. Big files come in parallel ranged GETs
streamed into place; the sha256 is fed with the parts in order as they arrive, so nothing is
read twice. A part whose connection fails (refused, reset, cut short, timed out, 5xx) is
retried from where it stopped, with backoff. When a file still cannot be completed, its
temporary file is kept with a record of the parts already on disk (`<temporary>.parts`), and a
rerun fetches only the rest (re-hashing what is on disk; the final sha256 check decides).
The manifest is written into DIR last: a consumer that finds it knows every file is there and
verified. A rerun keeps the files already present with the right size and sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import stat
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

from checkpoint_operator.agent import fstree
from checkpoint_operator.agent.hashing import hash_files
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, FileEntry, Manifest, manifest_problem
from checkpoint_operator.protocol.names import TEMP_PREFIX, printable
from checkpoint_operator.agent.progress import Progress, human_bytes
from checkpoint_operator.objectstore.s3 import (
    DEFAULT_CONCURRENCY, DEFAULT_PART_SIZE, AgentError, ByteBudget, FailureLatch, S3Location,
    describe_error, env_size, fast_data_path, fast_for_endpoint, is_transient, make_client, parse_s3_uri,
    read_manifest, resolve_endpoint,
)

# Files up to this size come in one GET into memory; bigger ones are streamed to disk.
SMALL_FILE = 1 << 20

# The streaming buffer of each network thread. The socket copies into it, then pwrite (in
# WRITE_PIECE writes) and sha256 read it while it is still in the core's L2 cache.
STREAM_CHUNK = 256 * 1024

# Each chunk is written in pieces of this size. Linux sizes a page-cache folio for a buffered
# write by the length of the write call: up to 32 KiB (order 3) the pages come from the per-CPU
# free lists, recently freed and warm; bigger writes get large folios from the buddy allocator,
# which on a VM with free page reporting (virtio-balloon; this 2-core Firecracker VM reports free
# 2 MiB blocks to the host) are often pages the host has taken back: every first touch of them
# is a host fault, billed to the copy into the page cache. 1 GiB down, alternated runs at load
# 12: the agent's CPU 1.9-2.7 s per 10^9 bytes with 256 KiB writes, 1.33-1.43 with 32 KiB
# (16 KiB: 1.5-1.8, more calls); s5cmd writes 32 KiB (Go's io.Copy buffer).
WRITE_PIECE = 32 * 1024

# Attempts per part (CKPT_S3_PART_ATTEMPTS), on top of botocore's own retries of each request:
# those do not cover a body cut short, nor a server that is away for longer than they last.
DEFAULT_PART_ATTEMPTS = 6
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 8.0

SIDECAR_SUFFIX = ".parts"
MAX_SIDECAR_BYTES = 4 * 1024 * 1024
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_OPEN_FLAGS = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)

_buffers = threading.local()


def _buffer() -> bytearray:
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(STREAM_CHUNK)
    return buf


def _scratch() -> bytearray:
    """A second buffer of the thread, to read back into while its chunk is in the first."""
    buf = getattr(_buffers, "scratch", None)
    if buf is None:
        buf = _buffers.scratch = bytearray(STREAM_CHUNK)
    return buf


def _write_at(fd: int, data: memoryview, offset: int) -> None:
    """All of `data` at `offset` of the file, in WRITE_PIECE writes (short writes continued)."""
    written, n = 0, len(data)
    while written < n:
        written += os.pwrite(fd, data[written:written + WRITE_PIECE], offset + written)


def _tag(exc: BaseException, uri: str) -> None:
    if not hasattr(exc, "ckpt_uri"):
        try:
            exc.ckpt_uri = uri  # type: ignore[attr-defined]
        except AttributeError:
            pass


class ObjectMismatch(AgentError):
    """The store's object is not the one the manifest describes (never retried)."""


class ConnectionLost(ConnectionError):
    """The body ended before the bytes asked for (retried, like any connection failure)."""


class _Cancelled(Exception):
    """Another part failed: stop this one quietly."""


def _body_readinto(body) -> Callable[[memoryview], int]:
    """readinto for a botocore StreamingBody, straight from the socket into our buffer.

    botocore's and urllib3's read(n) allocate a new bytes object per call (and read() of a
    whole part maps fresh pages for every part); http.client's readinto fills the caller's
    buffer with recv_into. The response is not content-encoded (botocore asks urllib3 not to
    decode), so the bytes are the same. Falls back to read(n) if the layers ever change.
    """
    fp = getattr(getattr(body, "_raw_stream", None), "_fp", None)
    if fp is not None and callable(getattr(fp, "readinto", None)):
        return fp.readinto

    def readinto(view: memoryview) -> int:
        data = body.read(len(view))
        view[:len(data)] = data
        return len(data)
    return readinto


class _BotocoreBody:
    """A botocore GetObject answer behind the interface of s3http.Response (CKPT_S3_FAST=0, proxies)."""

    def __init__(self, resp: dict) -> None:
        self._body = resp["Body"]
        self.content_length = resp.get("ContentLength")
        self.readinto = _body_readinto(self._body)

    def read(self, n: int) -> bytes:
        return self._body.read(n)

    def finish(self) -> None:
        _finish_body(self._body)

    def close(self) -> None:
        self._body.close()


def _finish_body(body) -> None:
    """Hand the connection back to the pool once the body is read to its end."""
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    if fp is not None and callable(getattr(fp, "isclosed", None)) and fp.isclosed():
        release = getattr(raw, "release_conn", None)
        if release is not None:
            release()
            return
    body.close()


def temp_name(final_path: str) -> str:
    """The temporary name of a file being downloaded: hidden, in the same directory (the rename
    is atomic), short whatever the file's name, and reserved by the names rule (no file of a
    checkpoint can have it)."""
    head, tail = os.path.split(final_path)
    return os.path.join(head, TEMP_PREFIX + hashlib.sha256(os.fsencode(tail)).hexdigest()[:32])


def sidecar_name(tmp: str) -> str:
    return tmp + SIDECAR_SUFFIX


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _covered(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    return any(s <= start and end <= e for s, e in ranges)


def _unlink_quietly(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@dataclass
class FileJob:
    """One file being streamed to disk: parts land at their offsets, the hash follows in order.

    At most one thread owns the hash at a time (`hashing`). The owner hashes each chunk of its
    own part as it arrives (no second pass); when its part is done it goes on with the next
    parts already on disk (read back from the page cache), and lets go at the first part still
    in flight, whose thread takes over as soon as it sees the hash has caught up with it.
    Parts taken from an earlier run (`resumed`) are on disk from the start.
    """

    entry: FileEntry
    loc: S3Location
    final: str
    tmp: str
    nparts: int
    part_size: int
    fd: int = -1
    hash_pos: int = 0  # bytes hashed so far, from the start of the file
    done: set = field(default_factory=set)  # indices of the parts completely on disk
    on_disk: list = field(default_factory=list)  # byte ranges on disk, recorded in the sidecar
    hashing: bool = False
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sidecar(self) -> str:
        return sidecar_name(self.tmp)


@dataclass
class _Stream:
    pos: int  # next byte of the file to receive
    owner: bool = False  # this thread owns the file's hash


@dataclass
class DownloadResult:
    uri: str
    dest: str
    manifest: Manifest
    downloaded_files: int = 0
    downloaded_bytes: int = 0
    kept_files: int = 0
    kept_bytes: int = 0
    resumed_bytes: int = 0  # parts taken from an earlier, interrupted run
    fetched_bytes: int = 0  # bytes received from the store by this run
    retries: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"uri": self.uri, "dir": self.dest, "digest": self.manifest.digest,
                "sizeBytes": self.manifest.sizeBytes, "fileCount": self.manifest.fileCount}


class Downloader:
    def __init__(self, uri: str, dest: str, *, concurrency: Optional[int] = None,
                 endpoint_url: Optional[str] = None, part_size: Optional[int] = None,
                 manifest: Optional[Manifest] = None, write_manifest: bool = True,
                 digest: Optional[str] = None, max_size: Optional[int] = None, max_files: Optional[int] = None,
                 on_part_done: Optional[Callable[[str, int], None]] = None,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> None:
        self.prefix = parse_s3_uri(uri).as_prefix()
        self.dest = dest
        self.concurrency = max(1, concurrency or int(os.environ.get("CKPT_S3_CONCURRENCY", DEFAULT_CONCURRENCY)))
        self.part_size = part_size or env_size("CKPT_S3_PART_SIZE", DEFAULT_PART_SIZE)
        self.attempts = max(1, int(os.environ.get("CKPT_S3_PART_ATTEMPTS", DEFAULT_PART_ATTEMPTS)))
        self.endpoint = resolve_endpoint(endpoint_url)
        # A custom endpoint with static credentials needs no botocore client (half the start-up);
        # otherwise botocore's client supplies credentials, region and URLs (s3http.py).
        self.fast = fast_for_endpoint(self.endpoint)
        self._client = None
        if self.fast is None:
            self.fast = fast_data_path(self.client)
        self.manifest = manifest
        self.write_manifest = write_manifest
        self.digest = digest
        self.max_size = max_size
        self.max_files = max_files
        self.on_part_done = on_part_done
        self.log = log
        self.latch = FailureLatch()
        self.budget = ByteBudget(env_size("CKPT_S3_MAX_BUFFER", max(2 * self.concurrency * self.part_size,
                                                                   4 * self.part_size)))
        self._open_jobs: dict[int, FileJob] = {}
        self._jobs_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._dirs_ok: set[str] = set()
        self._blob_root: Optional[S3Location] = None  # the manifest's blobs (content-addressed layout)

    @property
    def client(self):
        """botocore's client, made on first use (never, on the fast path with a custom endpoint)."""
        if self._client is None:
            self._client = make_client(self.endpoint, max_pool_connections=self.concurrency + 4)
        return self._client

    def run(self) -> DownloadResult:
        started = time.monotonic()
        manifest = self._checked_manifest()
        for entry in manifest.files:
            self._check_dir(os.path.dirname(entry.path), create=False)
            self._check_final(entry)
        fstree.make_dirs(self.dest)
        marker = os.path.join(self.dest, MANIFEST_NAME)
        if self.write_manifest and os.path.lexists(marker):
            os.unlink(marker)  # withdrawn until every file is verified again
        self.result = result = DownloadResult(self.prefix.uri, self.dest, manifest)

        with Progress("download", manifest.sizeBytes) as self.progress:
            todo = self._keep_verified(manifest)
            resumable = self._resumable(todo)
            self._check_free_space(todo, resumable)
            self.log(f"download: {len(todo)} of {manifest.fileCount} files "
                     f"({human_bytes(sum(e.size for e in todo))}) from {self.prefix.uri} to {self.dest}; "
                     f"kept {result.kept_files} already verified"
                     + (f", resuming {len(resumable)} partial files" if resumable else ""))
            net = ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-get")
            try:
                self._submit_all(net, todo, resumable)
                net.shutdown(wait=True)
            except BaseException as exc:  # noqa: BLE001 - SIGTERM/Ctrl-C included: stop the workers
                self.latch.fail(exc)
                raise
            finally:
                net.shutdown(wait=True, cancel_futures=True)  # no worker may still use a file we close
                self._close_open_jobs()
            if self.latch.failed:
                raise self._error()

        if self.write_manifest:
            tmp = temp_name(marker)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _OPEN_FLAGS, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(manifest.to_json())
            os.replace(tmp, marker)
        result.seconds = time.monotonic() - started
        self.log(f"download: downloaded {result.downloaded_files} files ({human_bytes(result.downloaded_bytes)}), "
                 f"kept {result.kept_files} ({human_bytes(result.kept_bytes)}) in {result.seconds:.1f}s"
                 + (f"; {result.retries} parts retried" if result.retries else ""))
        return result

    # ---- before any byte moves ----
    def _checked_manifest(self) -> Manifest:
        uri = self.prefix.uri
        if self.manifest is None:  # read_manifest checks it
            manifest = read_manifest(uri, endpoint_url=self.endpoint, fast=self.fast,
                                     client=None if self.fast is not None else self.client)
        else:
            manifest = self.manifest
            problem = manifest_problem(manifest)
            if problem:
                raise AgentError(f"invalid manifest for {uri}: {problem}")
        if self.digest and manifest.digest != self.digest:
            raise AgentError(f"{uri}: the checkpoint there has digest {manifest.digest}, not the pinned "
                             f"{self.digest}; refusing to download it (the objects at this prefix were replaced)")
        if self.max_files is not None and manifest.fileCount > self.max_files:
            raise AgentError(f"{uri}: {manifest.fileCount} files, more than the limit of {self.max_files} "
                             f"(see --max-files)")
        if self.max_size is not None and manifest.sizeBytes > self.max_size:
            raise AgentError(f"{uri}: {manifest.sizeBytes} bytes, past the size limit of {self.max_size} "
                             f"(see --max-size)")
        from checkpoint_operator.objectstore.blobs import manifest_blob_root
        root = manifest_blob_root(uri, manifest)  # both layouts: blobs by sha256, or files by path
        self._blob_root = parse_s3_uri(root).as_prefix() if root else None
        return manifest

    def _check_dir(self, rel_dir: str, create: bool) -> None:
        """Every component of DIR/rel_dir is a real directory (or, unless `create`, missing):
        never a symlink, so nothing is written through a link already in DIR."""
        if rel_dir in self._dirs_ok or not rel_dir:
            return
        parts = rel_dir.split("/")  # from the top down, in a loop: the depth is the checkpoint's
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if prefix in self._dirs_ok:
                continue
            path = os.path.join(self.dest, *parts[:depth])
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    return  # created once everything is checked
                os.mkdir(path)
                st = os.lstat(path)
            except NotADirectoryError:
                return  # a parent is missing (checked above): nothing below it exists yet
            if stat.S_ISLNK(st.st_mode):
                raise AgentError(f"{path}: is a symlink; download does not write through links (remove it)")
            if not stat.S_ISDIR(st.st_mode):
                raise AgentError(f"{path}: exists and is not a directory, but the checkpoint has files under "
                                 f"'{printable(prefix)}/'")
            self._dirs_ok.add(prefix)

    def _check_final(self, entry: FileEntry) -> None:
        path = self._final(entry)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        if not stat.S_ISREG(st.st_mode):
            raise AgentError(f"{path}: exists and is not a regular file")

    def _keep_verified(self, manifest: Manifest) -> list[FileEntry]:
        """Files already in DIR with the right size and sha256 stay; the rest is to do."""
        todo: list[FileEntry] = []
        candidates: list[tuple[FileEntry, str]] = []
        for entry in manifest.files:
            path = self._final(entry)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                todo.append(entry)
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size == entry.size:
                candidates.append((entry, path))
            else:
                os.unlink(path)  # a file with this name must be a good one
                todo.append(entry)
        results = hash_files([path for _, path in candidates], workers=min(4, len(candidates) or 1))
        for (entry, path), hashed in zip(candidates, results):
            if not isinstance(hashed, OSError) and hashed[1] == entry.sha256:
                self.result.kept_files += 1
                self.result.kept_bytes += entry.size
                self.progress.add(entry.size)
            else:
                _unlink_quietly(path)
                todo.append(entry)
        return todo

    def _resumable(self, todo: list[FileEntry]) -> dict[str, list[tuple[int, int]]]:
        """Byte ranges already on disk from an interrupted run, per file (stale records go)."""
        found: dict[str, list[tuple[int, int]]] = {}
        for entry in todo:
            if entry.size <= SMALL_FILE:
                continue
            tmp = temp_name(self._final(entry))
            ranges = self._read_sidecar(entry, tmp)
            if ranges:
                found[entry.path] = ranges
            elif os.path.lexists(tmp) or os.path.lexists(sidecar_name(tmp)):
                _unlink_quietly(tmp, sidecar_name(tmp))
        return found

    def _read_sidecar(self, entry: FileEntry, tmp: str) -> list[tuple[int, int]]:
        try:
            st = os.lstat(tmp)
            if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
                return []
            fd = os.open(sidecar_name(tmp), os.O_RDONLY | _OPEN_FLAGS)
            with os.fdopen(fd, "rb") as f:
                record = json.loads(f.read(MAX_SIDECAR_BYTES))
            if (record.get("path"), record.get("size"), record.get("sha256")) != (entry.path, entry.size,
                                                                                  entry.sha256):
                return []
            ranges = [(int(s), int(e)) for s, e in record.get("done", [])]
        except (OSError, ValueError, TypeError, AttributeError, RecursionError):
            return []
        return _merge([(max(0, s), min(entry.size, e)) for s, e in ranges if s < e])

    def _check_free_space(self, todo: list[FileEntry], resumable: dict[str, list[tuple[int, int]]]) -> None:
        if not todo:
            return
        on_disk = sum(e - s for ranges in resumable.values() for s, e in ranges)
        need = sum(e.size for e in todo) - on_disk
        st = os.statvfs(self.dest)
        free = st.f_bavail * st.f_frsize
        if need > free:
            largest = max(todo, key=lambda e: e.size)
            raise AgentError(f"{self.dest}: not enough free space for {self.prefix.uri}: {len(todo)} files need "
                             f"{human_bytes(need)} ({need} bytes; the largest, '{printable(largest.path)}', "
                             f"{human_bytes(largest.size)}), {human_bytes(free)} free")

    def _final(self, entry: FileEntry) -> str:
        return os.path.join(self.dest, *entry.path.split("/"))

    # ---- transfer ----
    def _submit_all(self, net: ThreadPoolExecutor, todo: list[FileEntry],
                    resumable: dict[str, list[tuple[int, int]]]) -> None:
        """Queue every GET: big files first (the last one to finish is the tail), their parts
        taken in turn from up to `concurrency` files at once. Each file's hash follows its parts in
        order, and only the thread holding the part it has reached hashes as bytes arrive (the
        others' parts are hashed back from the page cache): one stream per file where there are
        enough files keeps nearly every byte hashed on arrival, many streams per file where
        there are few."""
        files = iter(sorted(todo, key=lambda e: -e.size))
        window: deque = deque()  # (job, iterator of the indices of its parts still to fetch)
        while not self.latch.failed:
            while len(window) < self.concurrency:
                entry = next(files, None)
                if entry is None:
                    break
                self._check_dir(os.path.dirname(entry.path), create=True)
                if entry.size <= SMALL_FILE:
                    job = self._job(entry)
                    if not self.budget.acquire(entry.size, self.latch.event):
                        return
                    net.submit(self._guarded, self._get_whole, job)
                    continue
                job = self._open_job(entry, resumable.get(entry.path, []), net)
                window.append((job, iter([i for i in range(job.nparts) if i not in job.done])))
            if not window:
                return
            job, indices = window.popleft()
            index = next(indices, None)
            if index is None:
                continue
            size = min(self.part_size, job.entry.size - index * self.part_size)
            # Parts are streamed through a small per-thread buffer: the budget bounds the
            # queued parts (and so the files open at once), not memory.
            if not self.budget.acquire(size, self.latch.event):
                return
            net.submit(self._guarded, self._get_part, job, index, size)
            window.append((job, indices))

    def _job(self, entry: FileEntry) -> FileJob:
        final = self._final(entry)
        nparts = max(1, -(-entry.size // self.part_size))
        loc = self._blob_root.child(entry.sha256) if self._blob_root is not None else self.prefix.child(entry.path)
        return FileJob(entry, loc, final, temp_name(final), nparts, self.part_size)

    def _open_job(self, entry: FileEntry, resumed: list[tuple[int, int]], net: ThreadPoolExecutor) -> FileJob:
        """A big file: its temporary file open at full size, the parts already on disk known."""
        job = self._job(entry)
        flags = os.O_RDWR | os.O_CREAT | _OPEN_FLAGS | (0 if resumed else os.O_TRUNC)
        try:
            job.fd = os.open(job.tmp, flags, 0o644)
            with self._jobs_lock:
                self._open_jobs[id(job)] = job
            os.ftruncate(job.fd, entry.size)
        except OSError as exc:
            raise AgentError(f"{job.final}: cannot create it ({human_bytes(entry.size)}): {exc.strerror}") from None
        job.on_disk = list(resumed)
        for index in range(job.nparts):
            start = index * self.part_size
            if _covered(resumed, start, min(entry.size, start + self.part_size)):
                job.done.add(index)
        if job.done:
            resumed_bytes = sum(min(self.part_size, entry.size - i * self.part_size) for i in job.done)
            with self._count_lock:
                self.result.resumed_bytes += resumed_bytes
            self.progress.add(resumed_bytes)
            net.submit(self._guarded, self._take_hash, job)  # re-hash what is on disk meanwhile
        return job

    def _guarded(self, fn, *args) -> None:
        if self.latch.failed:
            return
        try:
            fn(*args)
        except _Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised by run()
            self.latch.fail(exc)

    def _open(self, loc: S3Location, rng: Optional[str]):
        """GET of an object or a range: an s3http.Response (or botocore's, behind the same interface)."""
        try:
            if self.fast is not None:
                return self.fast.get(loc.bucket, loc.key, rng)
            kwargs = {"Bucket": loc.bucket, "Key": loc.key}
            if rng:
                kwargs["Range"] = rng
            return _BotocoreBody(self.client.get_object(**kwargs))
        except Exception as exc:  # noqa: BLE001
            _tag(exc, loc.uri)
            raise

    def _with_retries(self, job: FileJob, what: str, attempt_fn: Callable[[], None]) -> None:
        """Run one transfer; on a connection failure, again (from where it stopped), with backoff."""
        attempt = 1
        while True:
            try:
                attempt_fn()
                return
            except Exception as exc:  # noqa: BLE001 - sorted below
                if isinstance(exc, _Cancelled) or self.latch.failed:
                    raise _Cancelled() from exc
                if not is_transient(exc) or attempt >= self.attempts:
                    _tag(exc, job.loc.uri)
                    if is_transient(exc):
                        try:
                            exc.ckpt_attempts = attempt  # type: ignore[attr-defined]
                        except AttributeError:
                            pass
                    raise
                delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                why = describe_error(exc, job.loc.uri, self.endpoint)
                self.log(f"download: {printable(job.entry.path)} ({what}): {why}; retrying in {delay:.1f}s "
                         f"(attempt {attempt + 1} of {self.attempts})")
                with self._count_lock:
                    self.result.retries += 1
                if self.latch.event.wait(delay):
                    raise _Cancelled() from exc
                attempt += 1

    def _get_whole(self, job: FileJob) -> None:
        """A small file: one GET into memory, hashed, written under its temporary name."""
        size = job.entry.size
        try:
            data: bytes | bytearray = b""

            def attempt() -> None:
                nonlocal data
                body = self._open(job.loc, None)
                if body.content_length not in (None, size):
                    body.close()
                    raise ObjectMismatch(f"{job.entry.path}: {job.loc.uri} is {body.content_length} bytes, "
                                         f"the manifest says {size} (the object does not match its manifest)")
                buf = bytearray(size)
                view = memoryview(buf)
                got = 0
                try:
                    while got < size:
                        n = body.readinto(view[got:])
                        if not n:
                            break
                        got += n
                    if got == size and body.content_length is None and body.read(1):
                        raise ObjectMismatch(f"{job.entry.path}: {job.loc.uri} is longer than the {size} bytes the "
                                             f"manifest says (the object does not match its manifest)")
                    body.finish()
                except BaseException:
                    body.close()
                    raise
                with self._count_lock:
                    self.result.fetched_bytes += got
                if got != size:
                    raise ConnectionLost(f"{got} of {size} bytes")
                data = buf

            if size:
                self._with_retries(job, "whole object", attempt)
            self._verify(job, hashlib.sha256(data).hexdigest())
            fd = os.open(job.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _OPEN_FLAGS, 0o644)
            try:
                _write_at(fd, memoryview(data), 0)
            finally:
                os.close(fd)
        finally:
            self.budget.release(size)
        os.replace(job.tmp, job.final)
        self._done(job)
        self.progress.add(size)

    def _get_part(self, job: FileJob, index: int, size: int) -> None:
        """One ranged GET streamed to its offset: socket -> reused buffer -> pwrite (-> sha256)."""
        try:
            start = index * job.part_size
            state = _Stream(pos=start)
            self._with_retries(job, f"offset {start}", lambda: self._stream(job, start, start + size, state))
            self.progress.add(size)
            with job.lock:
                job.done.add(index)
                job.on_disk = _merge([*job.on_disk, (start, start + size)])
                self._save_sidecar(job)
            if self.on_part_done is not None:
                self.on_part_done(job.entry.path, index)
            if state.owner:
                self._drain_hash(job, memoryview(_buffer()))
            else:
                self._take_hash(job)
        finally:
            self.budget.release(size)

    def _stream(self, job: FileJob, start: int, end: int, state: _Stream) -> None:
        """Receive [state.pos, end) of the file into place; state.pos follows what arrived."""
        first = state.pos
        rng = f"bytes={first}-{end - 1}" if job.nparts > 1 or first > start else None
        body = self._open(job.loc, rng)
        if body.content_length not in (None, end - first):
            body.close()
            raise ObjectMismatch(f"{job.entry.path}: {job.loc.uri} answered {body.content_length} bytes for "
                                 f"{end - first} asked at offset {first} (the object does not match its manifest)")
        buf = _buffer()
        view = memoryview(buf)
        readinto = body.readinto
        try:
            while state.pos < end:
                if self.latch.failed:
                    raise _Cancelled()
                pos = state.pos
                n = readinto(view[:min(len(buf), end - pos)])
                if not n:
                    raise ConnectionLost(f"the body ended after {pos - start} of {end - start} bytes")
                chunk = view[:n]
                try:
                    _write_at(job.fd, chunk, pos)
                except OSError as exc:
                    raise AgentError(f"{job.final}: cannot write: {exc.strerror}") from None
                if not state.owner:
                    with job.lock:
                        if not job.hashing and job.hash_pos == start:
                            job.hashing = state.owner = True
                    if state.owner and pos > start:
                        # the hash has caught up with this part: take it over, reading back what
                        # of the part came before this chunk (this one is hashed from memory)
                        self._hash_from_disk(job, pos, memoryview(_scratch()))
                if state.owner:
                    job.hasher.update(chunk)
                    job.hash_pos = pos + n
                state.pos = pos + n
            body.finish()
        except BaseException:
            body.close()
            raise
        finally:
            with self._count_lock:
                self.result.fetched_bytes += state.pos - first

    def _save_sidecar(self, job: FileJob) -> None:
        """Record the parts on disk (under job.lock), so that a rerun fetches only the rest."""
        record = {"version": 1, "path": job.entry.path, "size": job.entry.size, "sha256": job.entry.sha256,
                  "done": [list(r) for r in job.on_disk]}
        new = job.sidecar + ".new"
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _OPEN_FLAGS, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(new, job.sidecar)

    def _take_hash(self, job: FileJob) -> None:
        """Become the hash owner if nobody is and the next part to hash is on disk; then drain."""
        with job.lock:
            if job.hashing or job.fd < 0 or job.hash_pos // job.part_size not in job.done:
                return
            job.hashing = True
        self._drain_hash(job, memoryview(_buffer()))

    def _hash_from_disk(self, job: FileJob, upto: int, view: memoryview) -> None:
        """Feed the hash with bytes already written (back from the page cache), up to `upto`."""
        while job.hash_pos < upto:
            if self.latch.failed:
                raise _Cancelled()
            n = os.preadv(job.fd, [view[:min(len(view), upto - job.hash_pos)]], job.hash_pos)
            if not n:
                raise AgentError(f"{job.tmp}: shorter than written (was it truncated by another process?)")
            job.hasher.update(view[:n])
            job.hash_pos += n

    def _drain_hash(self, job: FileJob, view: memoryview) -> None:
        """As the hash owner: hash every part already on disk, in order; let go at the first part
        still in flight (its thread takes over), or finish the file after the last one."""
        while True:
            with job.lock:
                if job.hash_pos >= job.entry.size:
                    job.hashing = False
                    break
                index = job.hash_pos // job.part_size
                if index not in job.done:
                    job.hashing = False
                    return
            self._hash_from_disk(job, min(job.entry.size, (index + 1) * job.part_size), view)
        self._finish_file(job)

    def _finish_file(self, job: FileJob) -> None:
        with self._jobs_lock:
            self._open_jobs.pop(id(job), None)
        os.close(job.fd)
        job.fd = -1
        self._verify(job, job.hasher.hexdigest())
        os.replace(job.tmp, job.final)
        _unlink_quietly(job.sidecar)
        self._done(job)

    def _verify(self, job: FileJob, digest: str) -> None:
        if digest != job.entry.sha256:
            _unlink_quietly(job.tmp, job.sidecar)  # bad bytes are not kept for a resume
            raise ObjectMismatch(f"{job.entry.path}: sha256 mismatch for {job.loc.uri}: got {digest}, the manifest "
                                 f"says {job.entry.sha256}; the object was altered or corrupted, file refused")

    def _done(self, job: FileJob) -> None:
        with self._count_lock:
            self.result.downloaded_files += 1
            self.result.downloaded_bytes += job.entry.size

    def _close_open_jobs(self) -> None:
        """After a failure: unfinished files keep their temporary file and its record of the
        parts on disk (a rerun resumes them); only their descriptors are closed."""
        with self._jobs_lock:
            jobs = list(self._open_jobs.values())
            self._open_jobs.clear()
        for job in jobs:
            if job.fd >= 0:
                os.close(job.fd)
                job.fd = -1
            if not job.on_disk:
                _unlink_quietly(job.tmp, job.sidecar)  # nothing of it arrived: nothing to resume

    def _error(self) -> AgentError:
        exc = self.latch.error
        assert exc is not None
        where = getattr(exc, "ckpt_uri", self.prefix.uri)
        error = describe_error(exc, where, self.endpoint)
        if self._blob_root is not None and where.startswith(self._blob_root.uri):
            # a blob is named by its sha256: say which file of the checkpoint it holds
            sha = where[len(self._blob_root.uri):]
            named = next((e.path for e in self.result.manifest.files if e.sha256 == sha), None)
            if named is not None:
                error = AgentError(f"{printable(named)}: {error}")
        attempts = getattr(exc, "ckpt_attempts", None)
        if attempts is None:
            return error
        return AgentError(f"{error} (after {attempts} attempts); the files received in part are kept in "
                          f"{self.dest}: rerun to resume")


def download_prefix(uri: str, dest: str, **kwargs) -> DownloadResult:
    """Download and verify the checkpoint at the prefix `uri` into `dest`."""
    return Downloader(uri, dest, **kwargs).run()


def main(args: argparse.Namespace) -> int:
    if args.digest is not None and not DIGEST.match(args.digest):
        print(f"error: --digest {args.digest!r}: expected sha256:<64 lower-case hex digits>", file=sys.stderr)
        return 2
    try:
        result = download_prefix(args.uri, args.dir, concurrency=args.concurrency, endpoint_url=args.endpoint_url,
                                 digest=args.digest)
    except KeyboardInterrupt as exc:
        print(f"error: download of {args.uri} interrupted; the files received in part are kept in {args.dir}: "
              f"rerun to resume", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    print(json.dumps(result.summary()), flush=True)
    return 0
