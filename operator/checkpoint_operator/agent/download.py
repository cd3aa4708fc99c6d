"""`agent download s3://bucket/prefix/ DIR`: fetch a checkpoint and verify it against its manifest.

Files arrive under a hidden temporary name and are renamed to their real name only once their
size and sha256 match the manifest, so a file with its real name is always a good one. Big
files come in parallel ranged GETs written in place; the sha256 is fed with the parts in
order as they arrive, so nothing is read twice. The manifest is written into DIR last: a
consumer that finds it knows every file is there and verified. A rerun keeps the files
already present with the right size and sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

from checkpoint_operator.agent.hashing import sha256_file
from checkpoint_operator.agent.manifest import MANIFEST_NAME, FileEntry, Manifest
from checkpoint_operator.agent.progress import Progress, human_bytes
from checkpoint_operator.agent.s3 import (
    DEFAULT_CONCURRENCY, DEFAULT_PART_SIZE, AgentError, ByteBudget, FailureLatch, S3Location,
    describe_error, env_size, make_client, parse_s3_uri, read_manifest, resolve_endpoint, safe_relpath,
)

READ_CHUNK = 8 * 1024 * 1024

# Files up to this size come in one GET into memory; bigger ones are streamed to disk.
SMALL_FILE = 1 << 20

# The streaming buffer of each network thread. The socket copies into it, then pwrite and
# sha256 read it: 1 MiB stays in a core's L2 cache for the second and third reads, and is
# large enough that the per-chunk Python work is noise. Measured with bench/transfer.py on
# 2 cores (ext4, kernel 6.18): 256-512 KiB slightly slower; 2 MiB and 4 MiB writes made the
# kernel's copy into the page cache ~40x slower per byte (pwrite 20 ms per 2 MiB), halving
# the download rate.
STREAM_CHUNK = 1 << 20

_buffers = threading.local()


def _buffer() -> bytearray:
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(STREAM_CHUNK)
    return buf


def _tag(exc: BaseException, uri: str) -> None:
    if not hasattr(exc, "ckpt_uri"):
        try:
            exc.ckpt_uri = uri  # type: ignore[attr-defined]
        except AttributeError:
            pass


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
    head, tail = os.path.split(final_path)
    return os.path.join(head, f".{tail}.ckpt-download")


def sha256_of(path: str) -> str:
    return sha256_file(path)[1]


@dataclass
class FileJob:
    """One file being streamed to disk: parts land at their offsets, the hash follows in order.

    At most one thread owns the hash at a time (`hashing`). The owner hashes each chunk of its
    own part as it arrives (no second pass); when its part is done it goes on with the next
    parts already on disk (read back from the page cache), and lets go at the first part still
    in flight, whose thread takes over as soon as it sees the hash has caught up with it.
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
    hashing: bool = False
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class DownloadResult:
    uri: str
    dest: str
    manifest: Manifest
    downloaded_files: int = 0
    downloaded_bytes: int = 0
    kept_files: int = 0
    kept_bytes: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"uri": self.uri, "dir": self.dest, "digest": self.manifest.digest,
                "sizeBytes": self.manifest.sizeBytes, "fileCount": self.manifest.fileCount}


class Downloader:
    def __init__(self, uri: str, dest: str, *, concurrency: Optional[int] = None,
                 endpoint_url: Optional[str] = None, part_size: Optional[int] = None,
                 manifest: Optional[Manifest] = None, write_manifest: bool = True,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> None:
        self.prefix = parse_s3_uri(uri).as_prefix()
        self.dest = dest
        self.concurrency = max(1, concurrency or int(os.environ.get("CKPT_S3_CONCURRENCY", DEFAULT_CONCURRENCY)))
        self.part_size = part_size or env_size("CKPT_S3_PART_SIZE", DEFAULT_PART_SIZE)
        self.endpoint = resolve_endpoint(endpoint_url)
        self.client = make_client(self.endpoint, max_pool_connections=self.concurrency + 4)
        self.manifest = manifest
        self.write_manifest = write_manifest
        self.log = log
        self.latch = FailureLatch()
        self.budget = ByteBudget(env_size("CKPT_S3_MAX_BUFFER", max(2 * self.concurrency * self.part_size,
                                                                   4 * self.part_size)))
        self._open_jobs: dict[int, FileJob] = {}
        self._jobs_lock = threading.Lock()
        self._count_lock = threading.Lock()

    def run(self) -> DownloadResult:
        started = time.monotonic()
        manifest = self.manifest or read_manifest(self.prefix.uri, client=self.client, endpoint_url=self.endpoint)
        for entry in manifest.files:
            try:
                safe_relpath(entry.path, f"the manifest of {self.prefix.uri}")
            except ValueError as exc:
                raise AgentError(str(exc)) from None
        os.makedirs(self.dest, exist_ok=True)
        marker = os.path.join(self.dest, MANIFEST_NAME)
        if self.write_manifest and os.path.lexists(marker):
            os.unlink(marker)  # withdrawn until every file is verified again
        self.result = result = DownloadResult(self.prefix.uri, self.dest, manifest)

        with Progress("download", manifest.sizeBytes) as self.progress:
            todo = self._keep_verified(manifest)
            self.log(f"download: {len(todo)} of {manifest.fileCount} files "
                     f"({human_bytes(sum(e.size for e in todo))}) from {self.prefix.uri} to {self.dest}; "
                     f"kept {result.kept_files} already verified")
            try:
                with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-get") as net:
                    for entry in sorted(todo, key=lambda e: -e.size):  # big files first: better overlap
                        if self.latch.failed:
                            break
                        self._submit_file(net, entry)
            finally:
                self._discard_open_jobs()
            if self.latch.failed:
                exc = self.latch.error
                raise describe_error(exc, getattr(exc, "ckpt_uri", self.prefix.uri), self.endpoint)

        if self.write_manifest:
            tmp = temp_name(marker)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(manifest.to_json())
            os.replace(tmp, marker)
        result.seconds = time.monotonic() - started
        self.log(f"download: downloaded {result.downloaded_files} files ({human_bytes(result.downloaded_bytes)}), "
                 f"kept {result.kept_files} ({human_bytes(result.kept_bytes)}) in {result.seconds:.1f}s")
        return result

    # ---- resume: keep what is already good ----
    def _keep_verified(self, manifest: Manifest) -> list[FileEntry]:
        todo: list[FileEntry] = []
        candidates: list[tuple[FileEntry, str]] = []
        for entry in manifest.files:
            path = self._final(entry)
            if os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) == entry.size:
                candidates.append((entry, path))
            else:
                todo.append(entry)
        if candidates:
            with ThreadPoolExecutor(min(4, len(candidates))) as pool:
                shas = list(pool.map(lambda c: sha256_of(c[1]), candidates))
            for (entry, path), sha in zip(candidates, shas):
                if sha == entry.sha256:
                    self.result.kept_files += 1
                    self.result.kept_bytes += entry.size
                    self.progress.add(entry.size)
                else:
                    os.unlink(path)  # a file with this name must be a good one
                    todo.append(entry)
        return todo

    def _final(self, entry: FileEntry) -> str:
        return os.path.join(self.dest, *entry.path.split("/"))

    # ---- transfer ----
    def _submit_file(self, net: ThreadPoolExecutor, entry: FileEntry) -> None:
        final = self._final(entry)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        if os.path.lexists(final) and (os.path.islink(final) or not os.path.isfile(final)):
            raise AgentError(f"{final}: exists and is not a regular file")
        nparts = max(1, -(-entry.size // self.part_size))
        job = FileJob(entry, self.prefix.child(entry.path), final, temp_name(final), nparts, self.part_size)
        if entry.size <= SMALL_FILE:
            if self.budget.acquire(entry.size, self.latch.event):
                net.submit(self._guarded, self._get_whole, job)
            return
        job.fd = os.open(job.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        with self._jobs_lock:
            self._open_jobs[id(job)] = job
        os.ftruncate(job.fd, entry.size)
        for index in range(nparts):
            size = min(self.part_size, entry.size - index * self.part_size)
            # Parts are streamed through a small per-thread buffer: the budget bounds the
            # queued parts (and so the files open at once), not memory.
            if not self.budget.acquire(size, self.latch.event):
                return
            net.submit(self._guarded, self._get_part, job, index, size)

    def _guarded(self, fn, *args) -> None:
        if self.latch.failed:
            return
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised by run()
            self.latch.fail(exc)

    def _open(self, loc: S3Location, rng: Optional[str]):
        try:
            kwargs = {"Bucket": loc.bucket, "Key": loc.key}
            if rng:
                kwargs["Range"] = rng
            return self.client.get_object(**kwargs)
        except Exception as exc:  # noqa: BLE001
            _tag(exc, loc.uri)
            raise

    def _get_whole(self, job: FileJob) -> None:
        """A small file: one GET into memory, hashed, written under its temporary name."""
        try:
            data = b""
            if job.entry.size:
                body = self._open(job.loc, None)["Body"]
                try:
                    data = body.read()
                except Exception as exc:  # noqa: BLE001
                    _tag(exc, job.loc.uri)
                    raise
            if len(data) != job.entry.size:
                raise AgentError(f"{job.entry.path}: size mismatch from {job.loc.uri}: got {len(data)} bytes, "
                                 f"the manifest says {job.entry.size}; refusing the file")
            digest = hashlib.sha256(data).hexdigest()
            self._verify(job, digest)
            with open(job.tmp, "wb") as f:
                f.write(data)
        finally:
            self.budget.release(job.entry.size)
        os.replace(job.tmp, job.final)
        self._done(job)
        self.progress.add(job.entry.size)

    def _get_part(self, job: FileJob, index: int, size: int) -> None:
        """One ranged GET streamed to its offset: socket -> reused buffer -> pwrite (-> sha256)."""
        try:
            start = index * job.part_size
            end = start + size
            rng = f"bytes={start}-{end - 1}" if job.nparts > 1 else None
            resp = self._open(job.loc, rng)
            body = resp["Body"]
            if resp.get("ContentLength", size) != size:
                body.close()
                raise AgentError(f"{job.entry.path}: {job.loc.uri} answered {resp.get('ContentLength')} bytes "
                                 f"for {size} asked at offset {start} (the object does not match its manifest)")
            buf = _buffer()
            view = memoryview(buf)
            readinto = _body_readinto(body)
            owner = False
            pos = start
            try:
                while pos < end:
                    want = min(len(buf), end - pos)
                    n = readinto(view[:want])
                    if not n:
                        raise AgentError(f"{job.entry.path}: short read from {job.loc.uri} at offset {start}: "
                                         f"{pos - start} of {size} bytes (the object does not match its "
                                         f"manifest)")
                    chunk = view[:n]
                    written = 0
                    while written < n:
                        written += os.pwrite(job.fd, chunk[written:], pos + written)
                    if owner:
                        job.hasher.update(chunk)
                        job.hash_pos = pos + n
                    else:
                        with job.lock:
                            if not job.hashing and job.hash_pos == start:
                                job.hashing = owner = True
                        if owner:  # the hash has caught up with this part: take it over
                            self._hash_from_disk(job, pos + n, view)
                    pos += n
                _finish_body(body)
            except Exception as exc:  # noqa: BLE001
                body.close()
                _tag(exc, job.loc.uri)
                raise
            self.progress.add(size)
            with job.lock:
                job.done.add(index)
                if not owner and not job.hashing and job.hash_pos // job.part_size in job.done:
                    job.hashing = owner = True
            if owner:
                self._drain_hash(job, view)
        finally:
            self.budget.release(size)

    def _hash_from_disk(self, job: FileJob, upto: int, view: memoryview) -> None:
        """Feed the hash with bytes already written (back from the page cache), up to `upto`."""
        while job.hash_pos < upto:
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
        os.close(job.fd)
        job.fd = -1
        with self._jobs_lock:
            self._open_jobs.pop(id(job), None)
        self._verify(job, job.hasher.hexdigest())
        os.replace(job.tmp, job.final)
        self._done(job)

    def _verify(self, job: FileJob, digest: str) -> None:
        if digest != job.entry.sha256:
            if os.path.lexists(job.tmp):
                os.unlink(job.tmp)
            raise AgentError(f"{job.entry.path}: sha256 mismatch for {job.loc.uri}: got {digest}, the manifest "
                             f"says {job.entry.sha256}; the object was altered or corrupted, file refused")

    def _done(self, job: FileJob) -> None:
        with self._count_lock:
            self.result.downloaded_files += 1
            self.result.downloaded_bytes += job.entry.size

    def _discard_open_jobs(self) -> None:
        """After a failure, temp files of unfinished files go (they never had a real name)."""
        for job in list(self._open_jobs.values()):
            if job.fd >= 0:
                os.close(job.fd)
                job.fd = -1
            if os.path.lexists(job.tmp):
                os.unlink(job.tmp)
        self._open_jobs.clear()


def download_prefix(uri: str, dest: str, **kwargs) -> DownloadResult:
    """Download and verify the checkpoint at the prefix `uri` into `dest`."""
    return Downloader(uri, dest, **kwargs).run()


def main(args: argparse.Namespace) -> int:
    try:
        result = download_prefix(args.uri, args.dir, concurrency=args.concurrency, endpoint_url=args.endpoint_url)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: download interrupted; rerun to resume", file=sys.stderr)
        return 130
    print(json.dumps(result.summary()), flush=True)
    return 0
