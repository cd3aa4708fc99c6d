"""Content-addressed storage on the s3 store: each file stored once per namespace, under its sha256.

Layout (docs/storage.md, "Blobs"):
- `<prefix>/<ns>/blobs/sha256/<hex>`: a file's bytes, named by their sha256 (one object per
  distinct content in the namespace, shared by every Checkpoint that holds that content);
- `<prefix>/<ns>/<owner>-<uid8>/.../.checkpoint-manifest.json`: a checkpoint's manifest, whose
  `blobs` field is the blob directory relative to the checkpoint's prefix (`../blobs/sha256/`).
  A manifest without that field is the older layout: each file under the prefix at its path.
  Readers take both.
- `<prefix>/<ns>/blobs/gc/`: the collector's markers (`running-<id>` while one runs, `done`
  after each run), which an upload looks at after its commit (below).

Collection (`collect`): on a Checkpoint's deletion the operator deletes the blobs of the
namespace that no committed manifest names and that are older than a grace period. Uploads in
flight are safe by two rules:
1. young blobs are never collected (LastModified within `grace` of the collector's own start, in
   the server's clock): an upload that wrote a blob and has not committed yet keeps it;
2. an upload that relied on blobs (skipped as present, or written) checks, after committing its
   manifest, whether a collection ran or is running since it started (the `gc/` markers): if so
   it waits for the running ones to end, then checks that every blob its manifest names is there,
   uploads again those that are not, and only then reports the checkpoint. A collection that
   starts after the commit lists the manifest and keeps its blobs; one that started before it is
   seen by the check. This is the registries' mark-and-sweep with a young-blob window
   (distribution's GC, Harbor's and zot's delay), with the repair step replacing their lock or
   read-only mode, which object storage has no primitive for.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import posixpath
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, Manifest

BLOBS_DIRECTORY = "blobs"
BLOB_ALGORITHM = "sha256"
GC_DIRECTORY = "gc"
GC_DONE = "done"
GC_RUNNING = "running-"
# A blob younger than this is never collected (an upload in flight may have just written it).
DEFAULT_GRACE_SECONDS = 3600.0
# A running marker older than this is a collector that died: nobody waits on it.
STALE_RUN_SECONDS = 3600.0
# So a collector older than this deletes nothing more (the next collection does): uploads judge a
# marker's age by their own clock against the store's, which SigV4 lets differ by 15 minutes, and a
# collector still deleting once uploads take it for dead would delete blobs they just relied on.
MAX_RUN_SECONDS = STALE_RUN_SECONDS / 2
# A multipart upload of a blob begun this long ago is abandoned (its uploader died): aborted.
ABANDONED_MULTIPART_SECONDS = 86400.0
# How long an upload waits for a running collection to end before it fails (it is retried).
WAIT_FOR_RUN_SECONDS = 600.0


def grace_seconds() -> float:
    return float(os.environ.get("CKPT_S3_BLOB_GRACE_SECONDS", DEFAULT_GRACE_SECONDS))


def blob_root_of(owner_prefix: str) -> str:
    """The blob directory for the data of `owner_prefix` (`s3://b/p/<ns>/<owner>-<uid8>/`): beside
    it, `s3://b/p/<ns>/blobs/sha256/`, so blobs stay under the namespace's prefix (its
    credentials' scope) and are shared by everything of that namespace."""
    if not owner_prefix.startswith("s3://"):
        raise AgentError(f"not an S3 URI: {owner_prefix!r}")
    bucket, _, key = owner_prefix[len("s3://"):].partition("/")
    key = key.rstrip("/")
    if not bucket or not key:
        raise AgentError(f"{owner_prefix}: blobs need a prefix with a parent (s3://bucket/[prefix/]owner/)")
    parent = posixpath.dirname(key)
    return f"s3://{bucket}/" + (parent + "/" if parent else "") + f"{BLOBS_DIRECTORY}/{BLOB_ALGORITHM}/"


def namespace_of_blob_root(blob_root: str) -> str:
    """`s3://b/p/<ns>/` from `s3://b/p/<ns>/blobs/sha256/`."""
    suffix = f"{BLOBS_DIRECTORY}/{BLOB_ALGORITHM}/"
    if not blob_root.endswith(suffix):
        raise AgentError(f"{blob_root}: not a blob directory (…/{suffix})")
    return blob_root[: -len(suffix)]


def gc_root(blob_root: str) -> str:
    return namespace_of_blob_root(blob_root) + f"{BLOBS_DIRECTORY}/{GC_DIRECTORY}/"


def relative_ref(checkpoint_prefix: str, blob_root: str) -> str:
    """What a manifest stores in `blobs`: the blob directory relative to the checkpoint's prefix."""
    cb, _, ckey = checkpoint_prefix[len("s3://"):].partition("/")
    bb, _, bkey = blob_root[len("s3://"):].partition("/")
    if cb != bb:
        raise AgentError(f"{blob_root}: blobs must be in the bucket of {checkpoint_prefix}")
    return posixpath.relpath(bkey.rstrip("/") or ".", ckey.rstrip("/") or ".") + "/"


def resolve_ref(checkpoint_prefix: str, ref: str) -> str:
    """The blob directory a manifest's `blobs` names, as a URI; refused when it leaves the bucket
    (keys are normalised: some servers map keys onto file paths, where `..` would mean a parent)."""
    bucket, _, key = checkpoint_prefix[len("s3://"):].partition("/")
    if ref.startswith("/") or "\\" in ref or not ref.endswith("/"):
        raise AgentError(f"manifest at {checkpoint_prefix}: blobs {ref!r} is not a relative directory")
    joined = posixpath.normpath(posixpath.join(key.rstrip("/") or ".", ref))
    if joined == ".." or joined.startswith("../") or joined == ".":
        raise AgentError(f"manifest at {checkpoint_prefix}: blobs {ref!r} leaves the bucket")
    return f"s3://{bucket}/{joined}/"


# ---- trusting a blob that is already there ---------------------------------------------------------
# A blob is written with its SHA-256 checksum (x-amz-checksum-sha256), which the store checks against
# the bytes it receives and keeps: for one PUT the blob's own sha256 (its name), for a multipart
# upload the sha256 of its parts' digests, suffixed `-<parts>` (S3's composite checksum). An upload
# skips a blob only when that stored checksum is its name's (or, multipart, its local parts').

class ChecksumVerdict(enum.Enum):
    MATCHES = "matches"
    DIFFERS = "differs"
    MISSING = "missing"                       # the store keeps none (an older blob, or a store without checksums)
    NEEDS_PART_DIGESTS = "needs part digests"  # a composite of as many parts as the local layout: compare those


def hex_to_checksum(sha256_hex: str) -> str:
    return digest_to_checksum(bytes.fromhex(sha256_hex))


def digest_to_checksum(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def composite_checksum(part_digests: list[bytes]) -> str:
    """S3's checksum of a multipart object: sha256 over the parts' digests, `-<number of parts>`."""
    return f"{digest_to_checksum(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"


def checksum_verdict(stored: str, sha256_hex: str) -> ChecksumVerdict:
    """What a blob's stored checksum says of the file it would stand for. A multipart blob's
    (NEEDS_PART_DIGESTS) is compared by hashing the local file in the blob's parts (composite_parts)."""
    if not stored:
        return ChecksumVerdict.MISSING
    whole, dash, _ = stored.partition("-")
    if not dash:
        return ChecksumVerdict.MATCHES if whole == hex_to_checksum(sha256_hex) else ChecksumVerdict.DIFFERS
    return ChecksumVerdict.NEEDS_PART_DIGESTS if composite_parts(stored) else ChecksumVerdict.DIFFERS


def composite_parts(stored: str) -> Optional[int]:
    """The number of parts a composite checksum (`<base64>-<parts>`) was made of; None if it is not one."""
    _, dash, count = stored.partition("-")
    return int(count) if dash and count.isdigit() and 0 < int(count) <= 10000 else None


def uniform_part_size(size: int, parts: int, first_part: int) -> Optional[int]:
    """The part size of a blob stored in `parts` parts whose first is `first_part` bytes, when every part
    but the last has that size (as every S3 client cuts them); None when no such layout gives `size`."""
    if first_part <= 0 or parts <= 0:
        return None
    return first_part if -(-size // first_part) == parts and (parts == 1 or first_part < size) else None


def blob_key(blob_root_key: str, sha256: str) -> str:
    return blob_root_key + sha256


def manifest_blob_root(checkpoint_prefix: str, manifest: Manifest) -> Optional[str]:
    """The blob directory of a manifest in the blob layout, None for the older layout."""
    return resolve_ref(checkpoint_prefix, manifest.blobs) if manifest.blobs else None


def object_uri(checkpoint_prefix: str, manifest: Manifest, path: str, sha256: str) -> str:
    """Where a file of this manifest is stored: its blob, or (older layout) its path under the prefix."""
    root = manifest_blob_root(checkpoint_prefix, manifest)
    if root is not None:
        return root + sha256
    prefix = checkpoint_prefix if checkpoint_prefix.endswith("/") else checkpoint_prefix + "/"
    return prefix + path


# ---- collection ----------------------------------------------------------------------------------

@dataclass
class Collection:
    """What one collection did, and the requests it made (the cost of a Checkpoint's deletion)."""
    blob_root: str
    manifests: int = 0
    referenced: int = 0
    blobs: int = 0
    deleted: list[str] = field(default_factory=list)
    kept_young: int = 0
    requests: int = 0
    problems: list[str] = field(default_factory=list)


def _listing(client: Any, bucket: str, prefix: str, counter: list[int]) -> Iterable[dict]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        counter[0] += 1
        yield from page.get("Contents", [])


# A manifest's blob names and blob directory, found in its JSON text as it streams by: the operator
# never parses a whole manifest (up to 512 MiB) into objects. Inside a JSON string every quote is
# escaped, so these match only keys (a name in a path cannot fake one); a forged manifest can only
# make more blobs count as referenced (kept), which is the safe side.
_SHA256_KEY = re.compile(rb'"sha256"\s{0,16}:\s{0,16}"([0-9a-f]{64})"')
_BLOBS_KEY = re.compile(rb'"blobs"\s{0,16}:\s{0,16}"([^"\\]{1,1024})"')
_CHUNK = 1 << 20
_OVERLAP = 2048  # longer than any match: a key cut by a chunk's end is found in the next


def manifest_refs(body: Any) -> tuple[Optional[str], set[bytes], bool]:
    """(the `blobs` field, the sha256 of its files as 32 bytes each, whether it looked whole) from a
    manifest's streamed body (`read(n)`), in memory bounded by a chunk whatever its size."""
    refs: set[bytes] = set()
    blobs_ref: Optional[str] = None
    tail = b""
    first = last = b""
    while True:
        chunk = body.read(_CHUNK)
        if not chunk:
            break
        if not first:
            first = chunk.lstrip()[:1]
        window = tail + chunk
        for match in _SHA256_KEY.finditer(window):
            refs.add(bytes.fromhex(match.group(1).decode()))
        if blobs_ref is None:
            found = _BLOBS_KEY.search(window)
            if found:
                blobs_ref = found.group(1).decode("utf-8", "replace")
        tail = window[-_OVERLAP:]
        last = window.rstrip()[-1:] or last
    return blobs_ref, refs, first == b"{" and last == b"}"


def released_blobs(client: Any, checkpoint_prefix: str) -> set[bytes]:
    """The blobs the manifest at this prefix names (before it is deleted), for `collect(released=)`;
    empty when there is none or it cannot be read (they then wait for the grace period)."""
    from checkpoint_operator.objectstore.s3 import parse_s3_uri
    loc = parse_s3_uri(checkpoint_prefix).as_prefix().child(MANIFEST_NAME)
    try:
        stream = client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
        try:
            ref, refs, whole = manifest_refs(stream)
        finally:
            stream.close()
    except Exception:  # noqa: BLE001 - gone already, or unreadable: nothing released early
        return set()
    return refs if whole and ref else set()


def collect(client: Any, namespace_prefix: str, *, grace: Optional[float] = None,
            released: Iterable[bytes] = (),
            before_delete: Optional[Callable[[list[str]], None]] = None) -> Collection:
    """Delete the blobs under `namespace_prefix` that no committed manifest of that namespace names
    and that are older than `grace` seconds (server clock: the collector's own marker's time).

    Every manifest under the namespace's prefix counts, whichever object it belongs to (a Checkpoint,
    a sealed copy, an upload not yet a Checkpoint): a blob is only ever deleted when nothing
    committed could need it. A manifest that cannot be read keeps every blob (nothing is deleted):
    never the only copy of data. `released`: the blobs of the manifest just deleted, collected
    whatever their age when nothing else names them (an upload in flight that skipped one as present
    sends it again after its commit: rule 2), so a deletion frees its space at once. Memory: 32 bytes (and a set's overhead, ~100 bytes in all) per
    distinct referenced blob of the namespace, and one 1 MiB chunk of a manifest at a time.
    `before_delete` is for tests (the interleaving of an upload)."""
    from checkpoint_operator.objectstore.s3 import parse_s3_uri
    ns = parse_s3_uri(namespace_prefix).as_prefix()
    blob_root = ns.child(f"{BLOBS_DIRECTORY}/{BLOB_ALGORITHM}/")
    gc = ns.child(f"{BLOBS_DIRECTORY}/{GC_DIRECTORY}/")
    grace = grace_seconds() if grace is None else grace
    released = set(released)
    result = Collection(blob_root.uri)
    counter = [0]
    run_key = gc.key + GC_RUNNING + uuid.uuid4().hex
    begun = time.monotonic()  # before the marker exists: the run is never older than this says
    # 1. The run's marker, first: an upload that commits from now on sees it (rule 2). Its time is
    #    the server's "now", against which blobs are young or not.
    client.put_object(Bucket=ns.bucket, Key=run_key, Body=b"")
    counter[0] += 1
    started = client.head_object(Bucket=ns.bucket, Key=run_key)["LastModified"].timestamp()
    counter[0] += 1
    deleting = False
    try:
        # 2. Every committed manifest of the namespace (listed after the marker), and the blobs it names.
        referenced: set[bytes] = set()
        readable = True
        for obj in _listing(client, ns.bucket, ns.key, counter):
            key = obj["Key"]
            if not key.endswith("/" + MANIFEST_NAME) or key.startswith(blob_root.key):
                continue
            prefix_uri = f"s3://{ns.bucket}/{key[: -len(MANIFEST_NAME)]}"
            counter[0] += 1
            try:
                stream = client.get_object(Bucket=ns.bucket, Key=key)["Body"]
                try:
                    blobs_ref, refs, whole = manifest_refs(stream)
                finally:
                    stream.close()
            except Exception as exc:  # noqa: BLE001 - one unreadable manifest stops the deletion, not the caller
                result.problems.append(f"s3://{ns.bucket}/{key}: {exc}; no blob deleted")
                readable = False
                continue
            if not whole:
                result.problems.append(f"s3://{ns.bucket}/{key}: not JSON (cut short?); no blob deleted")
                readable = False
                continue
            result.manifests += 1
            if blobs_ref is None:
                continue  # the older layout: its files live under its prefix and go with it
            try:
                root = resolve_ref(prefix_uri, blobs_ref)
            except AgentError as exc:
                result.problems.append(str(exc))
                continue
            if root != blob_root.uri:
                continue  # names blobs elsewhere: not this namespace's to keep or to delete
            referenced |= refs
        result.referenced = len(referenced)
        if not readable:
            return result
        # 3. The blobs, listed after the manifests: the unreferenced ones older than the grace period.
        doomed = []
        for obj in _listing(client, ns.bucket, blob_root.key, counter):
            name = obj["Key"][len(blob_root.key):]
            result.blobs += 1
            try:
                digest = bytes.fromhex(name)
            except ValueError:
                digest = b""  # not a blob's name: nothing names it
            if digest in referenced:
                continue
            if digest not in released and obj["LastModified"].timestamp() > started - grace:
                result.kept_young += 1
                continue
            doomed.append(obj["Key"])
        if before_delete is not None:
            before_delete(doomed)
        deleted: list[str] = []
        for start in range(0, len(doomed), 1000):
            if time.monotonic() - begun > MAX_RUN_SECONDS:
                result.problems.append(f"the collection ran longer than {MAX_RUN_SECONDS:.0f} s (uploads would take "
                                       f"it for dead): {len(doomed) - start} unused blobs left for the next one")
                break
            batch = doomed[start:start + 1000]
            deleting = True
            deleted += batch
            resp = client.delete_objects(Bucket=ns.bucket, Delete={"Objects": [{"Key": k} for k in batch],
                                                                   "Quiet": True})
            counter[0] += 1
            for err in resp.get("Errors", []):
                if err.get("Code") != "NoSuchKey":
                    result.problems.append(f"could not delete s3://{ns.bucket}/{err.get('Key')}: {err.get('Code')}")
        result.deleted = [f"s3://{ns.bucket}/{k}" for k in deleted]
        _abort_abandoned_multipart(client, ns.bucket, blob_root.key, started, counter)
        if _drop_stale_runs(client, ns.bucket, gc.key, started, counter):
            deleting = True  # the dead collectors' deletions: this run's `done` stands for them
    finally:
        # 4. Mark the run done (a new body each time: an upload compares it), then drop the marker; the
        #    `done` goes first and also after a failure once deletions began, so no upload misses them.
        #    A collector killed before this leaves its running marker: once stale, uploads count it
        #    as a run (they check their blobs) and the next collection removes it.
        try:
            if deleting:
                client.put_object(Bucket=ns.bucket, Key=gc.key + GC_DONE, Body=uuid.uuid4().hex.encode())
                counter[0] += 1
            client.delete_object(Bucket=ns.bucket, Key=run_key)
            counter[0] += 1
        except Exception:  # noqa: BLE001 - a marker left behind goes stale: see above
            pass
        result.requests = counter[0]
    return result


def _drop_stale_runs(client: Any, bucket: str, gc_key: str, now: float, counter: list[int]) -> int:
    """Running markers of collectors that died (older than STALE_RUN_SECONDS), removed: this run's
    `done` (written next) stands for them. How many."""
    dropped = 0
    for obj in _listing(client, bucket, gc_key + GC_RUNNING, counter):
        if now - obj["LastModified"].timestamp() > STALE_RUN_SECONDS:
            client.delete_object(Bucket=bucket, Key=obj["Key"])
            counter[0] += 1
            dropped += 1
    return dropped


def _abort_abandoned_multipart(client: Any, bucket: str, prefix: str, now: float, counter: list[int]) -> None:
    """Multipart uploads of blobs begun more than a day ago: an upload that died (its parts are
    stored and billed until aborted). A live one of that age fails and is retried."""
    try:
        paginator = client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            counter[0] += 1
            for upload in page.get("Uploads", []):
                if now - upload["Initiated"].timestamp() > ABANDONED_MULTIPART_SECONDS:
                    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    counter[0] += 1
    except Exception:  # noqa: BLE001 - a server without the listing: the parts stay, as before blobs
        pass


# ---- the upload's side -----------------------------------------------------------------------------

@dataclass(frozen=True)
class GcState:
    done: Optional[str]          # ETag of the `done` marker (None: no collection ever ran)
    running: tuple[str, ...]     # keys of running collections (not stale)
    now: float                   # the time of the listing
    stale: tuple[str, ...] = ()  # running markers of collectors that died: each counts as a run that happened

    def ran_since(self, before: "GcState") -> bool:
        """Did a collection run (or may one have) since `before` was taken?"""
        return self.done != before.done or bool(self.running) or bool(self.stale)


def gc_state(client: Any, blob_root_uri: str, server_now: Optional[float] = None) -> GcState:
    """The collector's markers beside this blob directory: one listing."""
    from checkpoint_operator.objectstore.s3 import parse_s3_uri
    loc = parse_s3_uri(gc_root(blob_root_uri))
    done: Optional[str] = None
    running: list[tuple[str, float]] = []
    for obj in _listing(client, loc.bucket, loc.key, [0]):
        name = obj["Key"][len(loc.key):]
        if name == GC_DONE:
            done = str(obj.get("ETag", "")).strip('"') + "@" + str(obj["LastModified"].timestamp())
        elif name.startswith(GC_RUNNING):
            running.append((obj["Key"], obj["LastModified"].timestamp()))
    now = server_now if server_now is not None else time.time()
    live = tuple(k for k, t in running if now - t < STALE_RUN_SECONDS)
    stale = tuple(k for k, t in running if now - t >= STALE_RUN_SECONDS)
    return GcState(done, live, now, stale)


def wait_for_runs(client: Any, blob_root_uri: str, state: GcState, *, poll: float = 0.5,
                  timeout: float = WAIT_FOR_RUN_SECONDS, server_now: Optional[float] = None) -> None:
    """Wait until none of the collections running in `state` is running any more."""
    deadline = time.monotonic() + timeout
    waiting = set(state.running)
    while waiting:
        current = gc_state(client, blob_root_uri, server_now)
        waiting &= set(current.running)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise AgentError(f"{gc_root(blob_root_uri)}: a collection of unused blobs is still running after "
                             f"{timeout:.0f}s; the upload is not reported (rerun it)")
        time.sleep(poll)
