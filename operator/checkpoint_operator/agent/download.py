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

from checkpoint_operator.agent.manifest import MANIFEST_NAME, FileEntry, Manifest
from checkpoint_operator.agent.progress import Progress, human_bytes
from checkpoint_operator.agent.s3 import (
    DEFAULT_CONCURRENCY, DEFAULT_PART_SIZE, AgentError, ByteBudget, FailureLatch, S3Location,
    describe_error, env_size, make_client, parse_s3_uri, read_manifest, resolve_endpoint, safe_relpath,
)

READ_CHUNK = 8 * 1024 * 1024


def temp_name(final_path: str) -> str:
    head, tail = os.path.split(final_path)
    return os.path.join(head, f".{tail}.ckpt-download")


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class FileJob:
    """One file being downloaded: parts land at their offsets, the hash follows in order."""

    entry: FileEntry
    loc: S3Location
    final: str
    tmp: str
    nparts: int
    part_size: int
    fd: int = -1
    next_hash: int = 0
    pending: dict = field(default_factory=dict)  # part index -> bytes, arrived but not hashed yet
    hashing: bool = False
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    received: int = 0
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
        if nparts == 1:
            if self.budget.acquire(entry.size, self.latch.event):
                net.submit(self._guarded, self._get_whole, job)
            return
        job.fd = os.open(job.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        os.ftruncate(job.fd, entry.size)
        with self._jobs_lock:
            self._open_jobs[id(job)] = job
        for index in range(nparts):
            size = min(self.part_size, entry.size - index * self.part_size)
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

    def _get(self, loc: S3Location, rng: Optional[str]) -> bytes:
        try:
            kwargs = {"Bucket": loc.bucket, "Key": loc.key}
            if rng:
                kwargs["Range"] = rng
            return self.client.get_object(**kwargs)["Body"].read()
        except Exception as exc:  # noqa: BLE001
            try:
                exc.ckpt_uri = loc.uri  # type: ignore[attr-defined]
            except AttributeError:
                pass
            raise

    def _get_whole(self, job: FileJob) -> None:
        try:
            data = self._get(job.loc, None) if job.entry.size else b""
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

    def _get_part(self, job: FileJob, index: int, size: int) -> None:
        released = False
        try:
            start = index * job.part_size
            data = self._get(job.loc, f"bytes={start}-{start + size - 1}")
            if len(data) != size:
                raise AgentError(f"{job.entry.path}: short read from {job.loc.uri} at offset {start}: "
                                 f"{len(data)} of {size} bytes (the object does not match its manifest)")
            written = 0
            view = memoryview(data)
            while written < size:
                written += os.pwrite(job.fd, view[written:], start + written)
            self.progress.add(size)
            released = self._feed_hash(job, index, data)
        finally:
            if not released:
                self.budget.release(size)

    def _feed_hash(self, job: FileJob, index: int, data: bytes) -> bool:
        """Hash the parts in order; whichever thread brings the next one does the hashing."""
        with job.lock:
            job.pending[index] = data
            if job.hashing:
                return True  # the budget is released by the hashing thread
            job.hashing = True
        while True:
            with job.lock:
                part = job.pending.pop(job.next_hash, None)
                if part is None:
                    job.hashing = False
                    finished = job.next_hash == job.nparts
                    break
                job.next_hash += 1
            job.hasher.update(part)
            self.budget.release(len(part))
        if finished:
            self._finish_multipart(job)
        return True

    def _finish_multipart(self, job: FileJob) -> None:
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
        if job.nparts == 1:
            self.progress.add(job.entry.size)

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
