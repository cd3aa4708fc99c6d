"""`agent upload DIR s3://bucket/prefix/`: upload a checkpoint, manifest last (the commit marker).

Every byte is read from disk once: each file is read in part-sized chunks that feed the sha256
and are then sent as they are (small files with one PUT, big ones as a multipart upload whose
parts travel in parallel). The sha256 of each object is stored in `x-amz-meta-sha256`, or, for
a multipart object whose hash is only known once all parts are sent, in a journal object
beside the data (keyed by the object's ETag), so that a rerun after an interruption skips
every object already uploaded with the same size and sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from checkpoint_operator.protocol.manifest import (
    MANIFEST_NAME, MAX_MANIFEST_BYTES, UPLOAD_JOURNAL_NAME, FileEntry, Manifest, digest_of, parse_manifest,
)
from checkpoint_operator.protocol.names import printable
from checkpoint_operator.agent.progress import Progress, human_bytes
from checkpoint_operator.objectstore.s3 import (
    DEFAULT_CONCURRENCY, DEFAULT_UPLOAD_PART_SIZE, AgentError, ByteBudget, FailureLatch, S3Location,
    describe_error, env_size, fast_data_path, is_not_found, is_transient, list_objects, make_client,
    parse_s3_uri, part_size_for, resolve_endpoint,
)
from checkpoint_operator.agent.tree import EntryBudget, entry_limit, locate_file, walk_checkpoint
from checkpoint_operator.protocol.errors import Refusal
from checkpoint_operator.objectstore import blobs as blobstore

# Beside the data while an upload is under way: sha256 of the multipart objects (keyed by ETag),
# which have no room for it in their metadata when it is only known after the last part, so
# that a rerun after an interruption can skip them. Removed once the manifest is committed: a
# rerun over a committed prefix takes the same facts from the manifest instead.
JOURNAL_NAME = UPLOAD_JOURNAL_NAME
READ_CHUNK = 8 * 1024 * 1024
TINY_FILE = 1024 * 1024  # up to this, a file is read into a buffer of its own size
MAX_KEY_BYTES = 1024  # S3's limit on an object key (UTF-8)


@dataclass
class LocalFile:
    rel: str
    path: str
    size: int
    expected_sha256: Optional[str] = None  # from --manifest
    sha256: Optional[str] = None  # what was read


@dataclass
class UploadResult:
    uri: str
    manifest: Optional[Manifest] = None  # the committed manifest (None until the upload commits)
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    skipped_files: int = 0
    skipped_bytes: int = 0
    seconds: float = 0.0
    # Blob layout: blobs found missing after the commit (a collection ran meanwhile) and sent again.
    repaired_files: int = 0

    def summary(self) -> dict[str, Any]:
        if self.manifest is None:
            raise AgentError(f"{self.uri}: the upload has not committed (no manifest)")
        return {"uri": self.uri, "digest": self.manifest.digest, "sizeBytes": self.manifest.sizeBytes,
                "fileCount": self.manifest.fileCount}


def collect_files(root: str) -> tuple[list[LocalFile], list[str]]:
    """The files of a checkpoint directory, exactly as `scan --single` takes them (agent/tree.py).
    Returns (files, skipped as "path: reason")."""
    if not os.path.isdir(root):
        raise AgentError(f"not a directory: {root}")
    tree = walk_checkpoint(root, EntryBudget(entry_limit(), what=root))
    files = [LocalFile(f.rel, f.open_path, f.size) for f in sorted(tree.files, key=lambda f: f.rel.encode())]
    return files, [f"{rel}: {reason}" for rel, reason in sorted(tree.skipped)]


def files_from_manifest(root: str, manifest: Manifest, follow_links: bool = False,
                        tops: Optional[Mapping[str, str]] = None) -> list[LocalFile]:
    """The files a manifest lists, located by the same rules (never through a link that
    leaves the checkpoint, nor a directory reached through a link; `follow_links`: as `cp -L`,
    for a push of the user's own directory). `tops`: a checkpoint assembled from workers' parts,
    the directory each file is in (agent/parts.py)."""
    files = []
    for entry in manifest.files:
        path, st = locate_file((tops or {}).get(entry.path, root), entry.path, follow_links=follow_links)
        if st.st_size != entry.size:
            raise AgentError(f"{path}: changed since it was scanned (size {st.st_size}, manifest says {entry.size})")
        files.append(LocalFile(entry.path, path, st.st_size, expected_sha256=entry.sha256))
    return files


class Uploader:
    def __init__(self, root: str, uri: str, *, manifest: Optional[Manifest] = None,
                 concurrency: Optional[int] = None, endpoint_url: Optional[str] = None,
                 part_size: Optional[int] = None, follow_links: bool = False,
                 on_object_done: Optional[Callable[[str], None]] = None,
                 blobs: Optional[str] = None, before_commit: Optional[Callable[[], None]] = None,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
                 tops: Optional[Mapping[str, str]] = None) -> None:
        self.root = root
        self.tops = tops  # with a manifest only: a checkpoint assembled from workers' parts
        self.prefix = parse_s3_uri(uri).as_prefix()
        if not self.prefix.key:
            raise AgentError(f"{uri}: give a prefix (s3://bucket/prefix/), not a whole bucket")
        # Content-addressed layout (objectstore/blobs.py): each file goes to <blobs><sha256>, once
        # per namespace; the manifest names the directory. None: each file under the prefix.
        self.blobs = parse_s3_uri(blobs).as_prefix() if blobs else None
        if self.blobs is not None and self.blobs.bucket != self.prefix.bucket:
            raise AgentError(f"{blobs}: blobs must be in the bucket of {uri}")
        self.before_commit = before_commit  # tests: what happens between the last blob and the commit
        self._claimed: set[str] = set()  # blobs this upload has taken care of (identical files go once)
        self._relied_on: list[LocalFile] = []  # files not sent: their blobs were there (checked after the commit)
        self._vouched: dict[str, str] = {}  # sha256 -> the checksum the store vouched with when a blob was skipped
        self.given_manifest = manifest
        self.follow_links = follow_links  # with a manifest only: the files a push scanned (plugin)
        self.concurrency = max(1, concurrency or int(os.environ.get("CKPT_S3_CONCURRENCY", DEFAULT_CONCURRENCY)))
        self.part_size = part_size or env_size("CKPT_S3_PART_SIZE", DEFAULT_UPLOAD_PART_SIZE)
        self.endpoint = resolve_endpoint(endpoint_url)
        self.client = make_client(self.endpoint, max_pool_connections=self.concurrency + 4)
        self.on_object_done = on_object_done
        self.log = log
        self.latch = FailureLatch()
        self.fast = fast_data_path(self.client)
        self.attempts = max(1, int(os.environ.get("CKPT_S3_MAX_ATTEMPTS", "10")))
        # Parts in memory: those being sent plus a few read ahead; bounded in bytes (see BufferPool).
        self.buffers = BufferPool(env_size("CKPT_S3_MAX_BUFFER", (self.concurrency + 2) * self.part_size))
        # Small files read ahead: a bound of their own, a few per connection (more only makes
        # the allocator hold more freed memory, not the upload faster).
        self.tiny_buffers = BufferPool(2 * self.concurrency * TINY_FILE)
        self.journal: dict[str, dict] = {}
        self._journal_written = False
        self._journal_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.result: UploadResult     # set by run()
        self.progress: Progress       # set by run()

    # ---- entry point ----
    def run(self) -> UploadResult:
        started = time.monotonic()
        if self.given_manifest is not None:
            files = files_from_manifest(self.root, self.given_manifest, self.follow_links, self.tops)
        else:
            files, skipped = collect_files(self.root)
            for reason in skipped:
                self.log(f"upload: skipped {reason}")
        if self.blobs is None:
            self._check_keys(files)
        remote = self._remote_inventory()
        gc_before = None
        if self.blobs is None:
            self._load_journal(remote)
        else:
            gc_before = self._gc_state()
        self._uncommit(remote)

        total = sum(f.size for f in files)
        self.result = UploadResult(uri=self.prefix.uri)
        self.log(f"upload: {len(files)} files, {human_bytes(total)} from {self.root} to {self.prefix.uri}"
                 + (f" (blobs in {self.blobs.uri})" if self.blobs is not None else ""))
        self._transfer(files, remote, total)

        # Every file was hashed on its way up (FileEntry does not check its fields: protocol/manifest.py).
        assert all(f.sha256 is not None for f in files), "a file was uploaded without its sha256"
        entries = [FileEntry(path=f.rel, size=f.size, sha256=f.sha256 or "") for f in files]
        manifest = self._build_manifest(entries)
        if self.before_commit is not None:
            self.before_commit()
        self._put_manifest(manifest)
        if gc_before is not None:
            self._confirm_blobs(files, gc_before)
        self._remove_journal(remote)
        self.result.manifest = manifest
        self.result.seconds = time.monotonic() - started
        r = self.result
        self.log(f"upload: uploaded {r.uploaded_files} files ({human_bytes(r.uploaded_bytes)}), skipped "
                 f"{r.skipped_files} files already uploaded ({human_bytes(r.skipped_bytes)}) in {r.seconds:.1f}s")
        return r

    def _transfer(self, files: list[LocalFile], remote: dict, total: int) -> None:
        # Blob layout: a reader may wait on a HEAD (a file whose sha256 is known), so as many as connections.
        readers = min(len(files), self.concurrency if self.blobs is not None else max(2, self.concurrency // 2)) or 1
        with Progress("upload", total) as self.progress, \
                ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-put") as net, \
                ThreadPoolExecutor(readers, thread_name_prefix="read") as read_pool:
            self.net = net
            futures = [read_pool.submit(self._guarded, self._upload_file, f, remote.get(self.prefix.key + f.rel))
                       for f in files]
            for fut in futures:
                fut.result()
            if self.latch.failed:
                raise self._error()
        if self.latch.failed:
            raise self._error()

    # ---- blobs: what a collection running meanwhile may have taken ----
    def _gc_state(self) -> blobstore.GcState:
        assert self.blobs is not None
        try:
            return blobstore.gc_state(self.client, self.blobs.uri)
        except Exception as exc:  # noqa: BLE001
            raise describe_error(exc, blobstore.gc_root(self.blobs.uri), self.endpoint) from exc

    def _confirm_blobs(self, files: list[LocalFile], before: blobstore.GcState) -> None:
        """After the commit: if a collection ran or runs since the upload started, wait for it to
        end, then check every blob the manifest names and send again those it took (their blobs
        were old and unreferenced when it listed them). A collection that starts later lists this
        manifest and keeps them (objectstore/blobs.py, rule 2)."""
        assert self.blobs is not None
        after = self._gc_state()
        if after.ran_since(before):
            self.log(f"upload: a collection of unused blobs ran during the upload; checking the "
                     f"{len(files)} blobs the manifest names")
            blobstore.wait_for_runs(self.client, self.blobs.uri, after)
            checked = files
        else:
            # Blobs it did not send were found by a HEAD that may be an hour old by now: one more HEAD
            # each (no bytes), so that a blob deleted meanwhile by anything but a collection (a store's
            # operator, the namespace's credentials) is sent again before the output volume, maybe the
            # only copy, is released (hostile7 B2). A bucket lifecycle rule must still not cover blobs/.
            checked = self._relied_on
        unique = list({f.sha256: f for f in checked if f.sha256}.values())
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-head") as pool:
            present = list(pool.map(self._still_vouched_for, unique))
        gone = {f.sha256 for f, there in zip(unique, present) if not there}
        missing = [f for f in unique if f.sha256 in gone]
        if not missing:
            return
        self.log(f"upload: {len(missing)} blobs were removed from the store during the upload; sending them again")
        self._claimed.clear()
        for f in missing:
            f.expected_sha256 = f.sha256
        self._transfer(missing, {}, sum(f.size for f in missing))
        self.result.repaired_files += len(missing)

    def _still_vouched_for(self, f: LocalFile) -> bool:
        """After the commit: the blob is there, of the file's size, and the store's checksum is still the
        one the skip (or the write) relied on (hostile8 B3: a blob rewritten with other bytes of the same
        size, not deleted, passed a HEAD for existence). A multipart blob's composite is compared as
        stored, with no local read: it is the one the upload saw or wrote."""
        assert self.blobs is not None and f.sha256 is not None
        head = self._blob_head(self.blobs.child(f.sha256), checksum=True)
        if head is None or head.get("ContentLength") != f.size:
            return False
        stored = str(head.get("ChecksumSHA256") or "")
        verdict = blobstore.checksum_verdict(stored, f.sha256)
        if verdict == blobstore.ChecksumVerdict.MATCHES:
            return True
        relied_on = self._vouched.get(f.sha256)
        if relied_on is not None:  # skipped on the store's word: the same word still
            return stored == relied_on
        # Written by this upload (a collection ran meanwhile): there, and of its size.
        return verdict != blobstore.ChecksumVerdict.DIFFERS

    def _stored_part_size(self, sha256: str, size: int, parts: int) -> Optional[int]:
        """The part size a multipart blob was stored with: its first part's length (one HEAD of part 1;
        the count alone does not tell, 13 MiB is 3 parts of 5 MiB or of 6). Negligible beside reading the
        local file to hash it."""
        assert self.blobs is not None
        loc = self.blobs.child(sha256)
        try:
            first = self.client.head_object(Bucket=loc.bucket, Key=loc.key, PartNumber=1)
        except Exception as exc:  # noqa: BLE001
            if is_not_found(exc):
                return None
            raise _tag(exc, loc.uri)
        if first.get("PartsCount") not in (None, parts):
            return None
        return blobstore.uniform_part_size(size, parts, int(first.get("ContentLength") or 0))

    def _blob_head(self, loc: S3Location, checksum: bool = False) -> Optional[dict]:
        try:
            if checksum:
                return self.client.head_object(Bucket=loc.bucket, Key=loc.key, ChecksumMode="ENABLED")
            return self.client.head_object(Bucket=loc.bucket, Key=loc.key)
        except Exception as exc:  # noqa: BLE001
            if is_not_found(exc):
                return None
            raise _tag(exc, loc.uri)

    def _blob_present(self, f: LocalFile, sha256: str) -> bool:
        """The blob is there and the store vouches that it holds exactly these bytes: one HEAD for its
        SHA-256 checksum, which the store computed and checked when the blob was written (we send it
        with every blob). A name alone proves nothing: anyone holding the namespace's credentials (or a
        faulty disk) can put other bytes under it, and a Checkpoint made Ready on such a blob would
        lose the only good copy when its output volume is released. A blob without a checksum, or
        with another one, is sent again (which also repairs it). Identical files of this upload go once."""
        assert self.blobs is not None
        with self._count_lock:
            if sha256 in self._claimed:
                return True
            self._claimed.add(sha256)
        head = self._blob_head(self.blobs.child(sha256), checksum=True)
        if head is None or head.get("ContentLength") != f.size:
            return False
        stored = str(head.get("ChecksumSHA256") or "")
        verdict = blobstore.checksum_verdict(stored, sha256)
        why = ("the store keeps no SHA-256 checksum for it" if verdict == blobstore.ChecksumVerdict.MISSING
               else "its stored checksum is not this file's bytes (changed behind the operator?)")
        if verdict == blobstore.ChecksumVerdict.NEEDS_PART_DIGESTS:
            # A multipart blob's checksum is the sha256 of its parts' digests: hash the local file in the
            # blob's own parts (a local read instead of sending it) and compare.
            part_size = self._stored_part_size(sha256, f.size, blobstore.composite_parts(stored) or 0)
            if part_size is None:
                verdict = blobstore.ChecksumVerdict.DIFFERS
                why = "it is stored in parts of unequal sizes, which cannot be compared without reading it"
            else:
                whole, digests = _hash_parts(f.path, part_size, self.latch)
                if whole != sha256:
                    raise AgentError(f"{f.path}: changed while uploading (sha256 {whole}, expected {sha256})")
                verdict = (blobstore.ChecksumVerdict.MATCHES if stored == blobstore.composite_checksum(digests)
                           else blobstore.ChecksumVerdict.DIFFERS)
        if verdict == blobstore.ChecksumVerdict.MATCHES:
            self._vouched[sha256] = stored  # checked again after the commit (_still_vouched_for)
            return True
        self.log(f"upload: {self.blobs.child(sha256).uri}: {why}; sending it again")
        with self._count_lock:
            self._claimed.discard(sha256)
        return False

    def _error(self) -> AgentError:
        exc = self.latch.error
        assert exc is not None
        uri = getattr(exc, "ckpt_uri", self.prefix.uri)
        return describe_error(exc, uri, self.endpoint)

    def _guarded(self, fn, *args) -> None:
        if self.latch.failed:
            return
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - remembered, re-raised by run()
            self.latch.fail(exc)

    def _check_keys(self, files: list[LocalFile]) -> None:
        for f in files:
            size = len((self.prefix.key + f.rel).encode("utf-8"))
            if size > MAX_KEY_BYTES:
                raise Refusal(f"{printable(f.rel)}: its key under {self.prefix.uri} would be {size} bytes; S3 "
                                 f"allows {MAX_KEY_BYTES} (shorten the path or the prefix); nothing uploaded")

    # ---- remote state ----
    def _remote_inventory(self) -> dict[str, dict]:
        try:
            return {o["Key"]: o for o in list_objects(self.client, self.prefix)}
        except Exception as exc:  # noqa: BLE001
            raise describe_error(exc, self.prefix.uri, self.endpoint) from exc

    def _uncommit(self, remote: dict) -> None:
        """An upload over a committed checkpoint first withdraws its manifest: while objects
        change, nothing may take the prefix for complete. What the manifest says of objects
        not modified since it was written goes into the journal, so they are not sent again."""
        key = self.prefix.key + MANIFEST_NAME
        if key in remote:
            self._journal_from_manifest(remote, remote[key])
            self.log(f"upload: {self.prefix.uri} already has a manifest; replacing it once the upload completes")
            try:
                self.client.delete_object(Bucket=self.prefix.bucket, Key=key)
            except Exception as exc:  # noqa: BLE001
                raise describe_error(exc, self.prefix.uri + MANIFEST_NAME, self.endpoint) from exc

    def _journal_from_manifest(self, remote: dict, manifest_obj: dict) -> None:
        loc = self.prefix.child(MANIFEST_NAME)
        try:
            body = self.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read(MAX_MANIFEST_BYTES + 1)
            committed = parse_manifest(body, loc.uri)
        except Exception:  # noqa: BLE001 - an unreadable old manifest only means more to upload
            return
        for entry in committed.files:
            obj = remote.get(self.prefix.key + entry.path)
            if (obj is not None and obj.get("Size") == entry.size
                    and obj.get("LastModified") and obj["LastModified"] <= manifest_obj["LastModified"]):
                self.journal.setdefault(entry.path, {"size": entry.size, "etag": obj.get("ETag", "").strip('"'),
                                                     "sha256": entry.sha256})

    def _remove_journal(self, remote: dict) -> None:
        if not self._journal_written and self.prefix.key + JOURNAL_NAME not in remote:
            return
        try:
            self.client.delete_object(Bucket=self.prefix.bucket, Key=self.prefix.key + JOURNAL_NAME)
        except Exception as exc:  # noqa: BLE001 - committed already; a leftover journal is harmless
            self.log(f"upload: could not remove {self.prefix.uri}{JOURNAL_NAME}: "
                     f"{describe_error(exc, self.prefix.uri, self.endpoint)}")

    def _load_journal(self, remote: dict) -> None:
        key = self.prefix.key + JOURNAL_NAME
        if key not in remote:
            return
        try:
            body = self.client.get_object(Bucket=self.prefix.bucket, Key=key)["Body"].read(MAX_MANIFEST_BYTES + 1)
            self.journal = json.loads(body).get("files", {})
        except (ValueError, AttributeError, RecursionError):
            self.journal = {}
        except Exception as exc:  # noqa: BLE001
            if not is_not_found(exc):
                raise describe_error(exc, self.prefix.uri + JOURNAL_NAME, self.endpoint) from exc

    def _record_in_journal(self, rel: str, size: int, etag: str, sha256: str) -> None:
        with self._journal_lock:
            self.journal[rel] = {"size": size, "etag": etag, "sha256": sha256}
            body = json.dumps({"version": 1, "files": self.journal}, sort_keys=True).encode()
            self._journal_written = True
            self.client.put_object(Bucket=self.prefix.bucket, Key=self.prefix.key + JOURNAL_NAME, Body=body,
                                   ContentType="application/json")

    def _remote_sha256(self, f: LocalFile, obj: dict) -> Optional[str]:
        etag = obj.get("ETag", "").strip('"')
        entry = self.journal.get(f.rel)
        if entry and entry.get("etag", "").strip('"') == etag and entry.get("size") == f.size:
            return entry.get("sha256")
        loc = self.prefix.child(f.rel)
        try:
            head = self.client.head_object(Bucket=loc.bucket, Key=loc.key)
        except Exception as exc:  # noqa: BLE001
            if is_not_found(exc):
                return None
            raise _tag(exc, loc.uri)
        return head.get("Metadata", {}).get("sha256")

    # ---- one file ----
    def _upload_file(self, f: LocalFile, remote_obj: Optional[dict]) -> None:
        if self.blobs is not None:
            self._upload_blob(f)
            return
        if remote_obj is not None and remote_obj.get("Size") == f.size:
            remote_sha = self._remote_sha256(f, remote_obj)
            if remote_sha:
                local_sha = f.expected_sha256 or _hash_file(f.path, self.latch)
                if local_sha == remote_sha:
                    f.sha256 = local_sha
                    self._count(skipped=f)
                    return
        if f.size <= self.part_size:
            self._put_small(f)
        else:
            self._put_multipart(f)

    def _upload_blob(self, f: LocalFile) -> None:
        """Blob layout: the key is the sha256, so it is known before the first byte is sent: small
        files are read and hashed in memory (_put_small), big ones hashed first when no manifest
        gave their sha256 (read twice; the snapshot's scan gives it), then HEAD, then sent or not."""
        assert self.blobs is not None
        known = f.expected_sha256
        if f.size <= self.part_size and known is None:
            self._put_small(f)  # hashed in memory, then HEAD in the sending thread
            return
        if f.size <= self.part_size and known is not None:
            # sha256 known (the snapshot's scan): HEAD first, the file is read only when it is sent
            if self._blob_present(f, known):
                f.sha256 = known
                self._count(skipped=f)
            else:
                with self._count_lock:
                    self._claimed.discard(known)  # _put_small claims it again, after reading
                self._put_small(f)
            return
        sha256 = f.expected_sha256 or _hash_file(f.path, self.latch)
        if self._blob_present(f, sha256):
            f.sha256 = sha256
            self._count(skipped=f)
            return
        f.expected_sha256 = sha256  # checked again as the parts are read (_check_changed)
        self._put_multipart(f)

    def _check_changed(self, f: LocalFile, digest: str, read: int) -> None:
        if read != f.size:
            raise AgentError(f"{f.path}: changed while uploading (read {read} bytes, expected {f.size})")
        if f.expected_sha256 and digest != f.expected_sha256:
            raise AgentError(f"{f.path}: changed since it was scanned (sha256 {digest}, manifest says "
                             f"{f.expected_sha256})")

    def _put_small(self, f: LocalFile) -> None:
        """A file of at most one part: read once into memory (hashed there), one PUT. Files of up
        to 1 MiB get a buffer of their own size, bigger ones a pooled part buffer; both count
        against the same memory bound."""
        if f.size <= TINY_FILE:
            buf = self.tiny_buffers.take_exact(f.size + 1, self.latch.event)
        else:
            buf = self.buffers.take(self.part_size, self.latch.event)
        if buf is None:
            return
        pool = self.tiny_buffers if f.size <= TINY_FILE else self.buffers
        try:
            view = memoryview(buf)
            with open(f.path, "rb", buffering=0) as fh:
                n = _read_full(fh, view)
                extra = fh.read(1)
            digest = hashlib.sha256(view[:n]).hexdigest()
            self._check_changed(f, digest, n + len(extra))
        except BaseException:
            pool.give(buf)
            raise
        f.sha256 = digest
        loc = self.prefix.child(f.rel) if self.blobs is None else self.blobs.child(digest)

        def put() -> None:
            try:
                if self.blobs is not None and self._blob_present(f, digest):
                    self._count(skipped=f)
                    return
                checksum = blobstore.hex_to_checksum(digest) if self.blobs is not None else None
                self._send(loc, view[:n], metadata={"sha256": digest}, checksum=checksum)
            finally:
                pool.give(buf)
            self._count(uploaded=f)
            self.progress.add(f.size)

        self.net.submit(self._guarded, put)
        # the reader moves on; completion is observed through the latch and the pool's shutdown

    def _send(self, loc: S3Location, body: memoryview, *, metadata: Optional[dict] = None,
              part: Optional[tuple[str, int]] = None, checksum: Optional[str] = None) -> str:
        """PUT of an object or a part (fast path, else botocore), retried on a transient failure
        (the body is in memory); its ETag. `checksum`: the body's SHA-256 (base64), which the store
        checks and keeps (blobs)."""
        attempt = 1
        extra: dict[str, Any] = {"ChecksumSHA256": checksum} if checksum else {}
        while True:
            try:
                if self.fast is not None:
                    return self.fast.put(loc.bucket, loc.key, body, metadata=metadata, part=part,
                                         checksum_sha256=checksum)
                if part is not None:
                    return self.client.upload_part(Bucket=loc.bucket, Key=loc.key, UploadId=part[0],
                                                   PartNumber=part[1], Body=bytes(body), **extra)["ETag"]
                return self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=bytes(body),
                                              Metadata=metadata or {}, **extra).get("ETag", "")
            except Exception as exc:  # noqa: BLE001
                # botocore retried inside already; the fast path retries here, as botocore would
                if self.fast is None or not is_transient(exc) or attempt >= self.attempts or self.latch.failed:
                    raise _tag(exc, loc.uri)
                delay = min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                self.log(f"upload: {loc.uri}: {describe_error(exc, loc.uri, self.endpoint)}; retrying in "
                         f"{delay:.1f}s (attempt {attempt + 1} of {self.attempts})")
                if self.latch.event.wait(delay):
                    raise _tag(exc, loc.uri)
                attempt += 1

    def _put_multipart(self, f: LocalFile) -> None:
        if self.blobs is not None:
            assert f.expected_sha256 is not None
            loc = self.blobs.child(f.expected_sha256)
        else:
            loc = self.prefix.child(f.rel)
        part_size = part_size_for(f.size, self.part_size)
        create_args: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key}
        if f.expected_sha256:
            create_args["Metadata"] = {"sha256": f.expected_sha256}
        if self.blobs is not None:
            create_args["ChecksumAlgorithm"] = "SHA256"  # each part's checked by the store, kept as one
        try:
            upload_id = self.client.create_multipart_upload(**create_args)["UploadId"]
        except Exception as exc:  # noqa: BLE001
            raise _tag(exc, loc.uri)
        parts: dict[int, tuple[str, Optional[str]]] = {}  # number -> (ETag, SHA-256 checksum of a blob's part)
        futures: list[Future] = []
        hasher = hashlib.sha256()
        read = 0
        completed = False
        try:
            with open(f.path, "rb", buffering=0) as fh:
                number = 0
                while True:
                    if self.latch.failed:
                        return
                    buf = self.buffers.take(part_size, self.latch.event)
                    if buf is None:
                        return
                    view = memoryview(buf)
                    try:
                        n = _read_full(fh, view)
                    except BaseException:
                        self.buffers.give(buf)
                        raise
                    if not n:
                        self.buffers.give(buf)
                        break
                    hasher.update(view[:n])
                    read += n
                    number += 1
                    futures.append(self.net.submit(self._guarded, self._put_part, loc, upload_id, number, buf, n,
                                                   parts))
            for fut in futures:
                fut.result()
            if self.latch.failed:
                return
            digest = hasher.hexdigest()
            self._check_changed(f, digest, read)
            f.sha256 = digest
            try:
                resp = self.client.complete_multipart_upload(
                    Bucket=loc.bucket, Key=loc.key, UploadId=upload_id,
                    MultipartUpload={"Parts": [_completed_part(n, *parts[n]) for n in sorted(parts)]})
            except Exception as exc:  # noqa: BLE001
                raise _tag(exc, loc.uri)
            completed = True
            if not f.expected_sha256:
                self._record_in_journal(f.rel, f.size, resp.get("ETag", "").strip('"'), digest)
            self._count(uploaded=f)
        finally:
            if not completed:
                try:
                    self.client.abort_multipart_upload(Bucket=loc.bucket, Key=loc.key, UploadId=upload_id)
                except Exception:  # noqa: BLE001 - best effort; the server may be gone
                    pass

    def _put_part(self, loc: S3Location, upload_id: str, number: int, buf: bytearray, n: int,
                  parts: dict[int, tuple[str, Optional[str]]]) -> None:
        try:
            body = memoryview(buf)[:n]
            # A blob's part carries its SHA-256 (hashed here, in the sending thread: hashlib lets go of
            # the GIL, so the parts' hashes run beside the reader's whole-file hash).
            checksum = blobstore.digest_to_checksum(hashlib.sha256(body).digest()) if self.blobs is not None else None
            parts[number] = (self._send(loc, body, part=(upload_id, number), checksum=checksum), checksum)
        finally:
            self.buffers.give(buf)
        self.progress.add(n)

    def _count(self, uploaded: Optional[LocalFile] = None, skipped: Optional[LocalFile] = None) -> None:
        with self._count_lock:
            if uploaded is not None:
                self.result.uploaded_files += 1
                self.result.uploaded_bytes += uploaded.size
            if skipped is not None:
                self.result.skipped_files += 1
                self.result.skipped_bytes += skipped.size
                self.progress.add(skipped.size)
                if self.blobs is not None:
                    self._relied_on.append(skipped)
        done = uploaded or skipped
        if self.on_object_done is not None and done is not None:
            self.on_object_done(done.rel)

    # ---- the commit marker ----
    def _build_manifest(self, entries: list[FileEntry]) -> Manifest:
        info: dict
        if self.given_manifest is not None:
            m = self.given_manifest
            info = {"format": m.format, "step": m.step, "resumable": m.resumable, "complete": m.complete,
                    "completeReason": m.completeReason}
        else:
            from checkpoint_operator.agent.scan import describe_checkpoint
            info = describe_checkpoint(self.root, [e.path for e in entries],
                                       os.path.basename(os.path.realpath(self.root)))
        if self.blobs is not None:
            info["blobs"] = blobstore.relative_ref(self.prefix.uri, self.blobs.uri)
        return Manifest(path=".", files=sorted(entries, key=lambda e: e.path.encode()),
                        sizeBytes=sum(e.size for e in entries), fileCount=len(entries),
                        digest=digest_of(entries), **info)

    def _put_manifest(self, manifest: Manifest) -> None:
        loc = self.prefix.child(MANIFEST_NAME)
        try:
            self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=manifest.to_json().encode(),
                                   ContentType="application/json")
        except Exception as exc:  # noqa: BLE001
            raise describe_error(exc, loc.uri, self.endpoint) from exc


def _completed_part(number: int, etag: str, checksum: Optional[str]) -> dict[str, Any]:
    part: dict[str, Any] = {"PartNumber": number, "ETag": etag}
    if checksum:
        part["ChecksumSHA256"] = checksum
    return part


def _hash_parts(path: str, part_size: int, latch: FailureLatch) -> tuple[str, list[bytes]]:
    """One read of a file: its sha256 (hex) and the sha256 digest of each part of `part_size` bytes."""
    whole, digests = hashlib.sha256(), []
    with open(path, "rb", buffering=0) as fh:
        while not latch.failed:
            part, left = hashlib.sha256(), part_size
            while left:
                chunk = fh.read(min(READ_CHUNK, left))
                if not chunk:
                    break
                whole.update(chunk)
                part.update(chunk)
                left -= len(chunk)
            if left == part_size:
                break
            digests.append(part.digest())
            if left:
                break
    return whole.hexdigest(), digests


def _tag(exc: BaseException, uri: str) -> BaseException:
    """Remember which object a low-level failure was about, for the one-line message."""
    try:
        exc.ckpt_uri = uri  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return exc


def _read_full(fh, view: memoryview) -> int:
    """Fill `view` from the file (short only at its end); the byte count."""
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got


class BufferPool:
    """Part buffers reused from file to file, at most `limit` bytes of them taken at once: the
    memory of an upload is this bound, whatever the size of the checkpoint. (Fresh buffers per
    part would also cost a page fault per 4 KiB each time.) A request larger than the whole
    limit is let through alone (ByteBudget), so a file with huge parts still goes."""

    def __init__(self, limit: int) -> None:
        self.budget = ByteBudget(limit)
        self._free: dict[int, list[bytearray]] = {}
        self._sizes: set[int] = set()  # the part size whose buffers are kept for reuse
        self._lock = threading.Lock()

    def take(self, size: int, cancelled: threading.Event) -> Optional[bytearray]:
        if not self.budget.acquire(size, cancelled):
            return None
        with self._lock:
            free = self._free.get(size)
            if free:
                return free.pop()
            for other in [s for s in self._free if s != size]:
                del self._free[other]  # another part size now: let those go
            self._sizes = {size}
        return bytearray(size)

    def take_exact(self, size: int, cancelled: threading.Event) -> Optional[bytearray]:
        """A buffer of exactly `size` bytes, counted against the limit but not kept for reuse."""
        if not self.budget.acquire(size, cancelled):
            return None
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        if len(buf) in self._sizes:
            with self._lock:
                self._free.setdefault(len(buf), []).append(buf)
        self.budget.release(len(buf))


def _hash_file(path: str, latch: FailureLatch) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def upload_dir(root: str, uri: str, **kwargs) -> UploadResult:
    """Upload the checkpoint in `root` to the prefix `uri`; the manifest is written last."""
    return Uploader(root, uri, **kwargs).run()


def load_manifest_file(path: str) -> Manifest:
    """The manifest in a file written by `scan --json` (the whole output of one checkpoint, or
    one manifest), checked like any manifest (names rule, totals) before anything is opened."""
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise AgentError(f"cannot read manifest {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise AgentError(f"invalid manifest at {path}: not JSON ({exc})") from None
    except RecursionError:  # the JSON decoder recurses once per level of nesting
        raise AgentError(f"invalid manifest at {path}: nested too deeply to be a manifest") from None
    if isinstance(data, list):
        if len(data) != 1:
            raise AgentError(f"{path}: holds {len(data)} manifests; give the one of this checkpoint")
        data = data[0]
    if isinstance(data, dict) and "checkpoints" in data and "files" not in data:
        cps = data["checkpoints"]
        if not isinstance(cps, list) or len(cps) != 1:
            raise AgentError(f"{path}: holds {len(cps) if isinstance(cps, list) else 'no list of'} checkpoints; "
                             f"give the manifest of one")
        data = cps[0]
    return parse_manifest(data, path)


def main(args: argparse.Namespace) -> int:
    try:
        manifest = load_manifest_file(args.manifest) if args.manifest else None
        result = upload_dir(args.dir, args.uri, manifest=manifest, concurrency=args.concurrency,
                            endpoint_url=args.endpoint_url, blobs=getattr(args, "blobs", None))
    except KeyboardInterrupt:
        print("error: upload interrupted; no manifest written, rerun to resume", file=sys.stderr)
        return 130
    print(json.dumps(result.summary()), flush=True)
    return 0
