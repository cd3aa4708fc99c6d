"""The node-local cache of inputs (s3 store): `agent cache-fill` and `agent cache-hold`.

A training pod on a node with the cache mounts the node's cache volume (a local PersistentVolume:
docs/node-cache.md) at ROOT. Its native sidecar `cache-hold` takes a shared lock on each input's
*use lock* and keeps it for the pod's life; its init container `cache-fill` makes sure each input is
in the cache, verified, then the training containers mount `entries/<namespace>/<hex>/data`
read-only. Everything is decided on the node, with flock(2): a lock dies with the process that holds
it, so a killed pod never leaves a wedged entry.

    ROOT/entries/<ns>/<hex>/data/       the checkpoint's files (and its manifest), as downloaded
    ROOT/entries/<ns>/<hex>/entry.json  size, file count, block size; its mtime is the last use (LRU)
    ROOT/entries/<ns>/<hex>/blocks.bin  16 bytes of sha256 per BLOCK of every file, in manifest order
    ROOT/staging/<ns>.<hex>/            a fill under way (resumed by the next fill if its pod died)
    ROOT/trash/<ns>.<hex>.<n>/          a corrupted entry set aside until no pod uses its key
    ROOT/locks/<ns>.<hex>.fill          exclusive: one download per key per node, others wait
    ROOT/locks/<ns>.<hex>.use           shared by every pod that mounts the entry; an evictor
                                        needs it exclusive (non-blocking): never evicts in-use data
    ROOT/locks/space                    exclusive while capacity is counted and entries evicted

Keys are `<namespace>/<hex>`: an entry is filled with its namespace's store credentials, and only
pods of that namespace are given its path (the cache does not share bytes across namespaces).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from checkpoint_operator.agent import fstree
from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import MAX_MANIFEST_BYTES, MANIFEST_NAME, Manifest, digest_of, parse_manifest

BLOCK = 4 * 1024 * 1024  # bytes per sampled block
BLOCK_HASH = 16          # bytes of sha256 kept per block
SAMPLE_BLOCKS = 16       # blocks re-read and checked on each use (plus every file's size)
ENTRY_FILE = "entry.json"
BLOCKS_FILE = "blocks.bin"
RESERVED_FILE = "reserved"
HOLD_WAIT_SECONDS = 60.0
FULL_RETRY_SECONDS = 2.0
KEY = re.compile(r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)/([0-9a-f]{64})$")


class CacheFull(AgentError):
    """Every entry is in use and the new one does not fit: the fill waits."""


def parse_key(key: str) -> tuple[str, str]:
    match = KEY.match(key)
    if not match:
        raise AgentError(f"--key {key!r}: expected <namespace>/<64 hex digits of the sha256 digest>")
    return match.group(1), match.group(3)


def _flat(key: str) -> str:
    namespace, hexdigest = parse_key(key)
    return f"{namespace}.{hexdigest}"


@dataclass
class Evicted:
    key: str
    size_bytes: int


@dataclass
class FillReport:
    """What one fill did: one JSON line on stdout and in the termination message (bounded)."""

    key: str
    outcome: str                 # hit | miss | refetched (a corrupted entry was replaced)
    size_bytes: int
    fetched_bytes: int = 0       # from the store by this fill
    waited_seconds: float = 0.0  # for another pod's download or for room
    problem: str = ""            # why a refetched entry was refused
    evicted: list[Evicted] = field(default_factory=list)

    def as_json(self) -> str:
        """The report as its one result line (protocol/results.py CacheFillReport, within the 4,096 bytes of a
        termination message: a few evictions named, all counted). pydantic is imported here, not by the hold."""
        from checkpoint_operator.protocol.channel import encode
        from checkpoint_operator.protocol.results import MAX_EVICTIONS_REPORTED, MAX_INT, CacheEviction, CacheFillReport
        return encode(CacheFillReport(
            cache=self.outcome, key=self.key, sizeBytes=self.size_bytes, fetchedBytes=self.fetched_bytes,
            waitedSeconds=round(self.waited_seconds, 3), problem=self.problem[:300] or None,
            evicted=[CacheEviction(key=e.key, sizeBytes=e.size_bytes) for e in self.evicted[:MAX_EVICTIONS_REPORTED]],
            evictedCount=len(self.evicted), evictedBytes=min(sum(e.size_bytes for e in self.evicted), MAX_INT)))


class _Lock:
    """A flock(2) on a file under ROOT/locks (created if missing, world-readable).

    A key's lock files are removed with its entry (`remove`, only by a holder of the exclusive lock),
    so a lock counts only when it is on the file the path names *now*: one opened before a removal
    is found stale after flock and taken again on the path's current file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _stale(self) -> bool:
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return True
        mine = os.fstat(self.fd)
        return (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino)

    def take(self, how: int, wait: bool = True) -> bool:
        while True:
            try:
                fcntl.flock(self.fd, how | (0 if wait else fcntl.LOCK_NB))
                taken = True
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                taken = False
            if not self._stale():
                return taken
            os.close(self.fd)  # the file was removed meanwhile: its lock means nothing
            self.fd = self._open()

    def remove(self) -> None:
        """Unlink the lock file; call only while holding it exclusively (nobody else holds it then,
        and whoever opened it meanwhile finds it stale)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        os.close(self.fd)  # releases the lock


class NodeCache:
    def __init__(self, root: str, capacity_bytes: int, log: Callable[[str], None] = lambda m: print(
            m, file=sys.stderr, flush=True)) -> None:
        self.root = root
        self.capacity = capacity_bytes
        self.log = log
        for sub in ("entries", "staging", "trash", "locks"):
            fstree.make_dirs(os.path.join(root, sub), mode=0o755)

    # -- paths ---------------------------------------------------------------------------------------

    def entry_dir(self, key: str) -> str:
        namespace, hexdigest = parse_key(key)
        return os.path.join(self.root, "entries", namespace, hexdigest)

    def data_dir(self, key: str) -> str:
        return os.path.join(self.entry_dir(key), "data")

    def staging_dir(self, key: str) -> str:
        return os.path.join(self.root, "staging", _flat(key))

    def lock(self, key: str, kind: str) -> _Lock:
        return _Lock(os.path.join(self.root, "locks", f"{_flat(key)}.{kind}"))

    def committed(self, key: str) -> bool:
        return os.path.isfile(os.path.join(self.entry_dir(key), ENTRY_FILE))

    # -- use -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def using(self, key: str) -> Iterator[None]:
        """A shared hold on the key: no evictor takes its entry meanwhile."""
        lock = self.lock(key, "use")
        try:
            lock.take(fcntl.LOCK_SH)
            yield
        finally:
            lock.close()

    def wait_for_hold(self, key: str, timeout: float = HOLD_WAIT_SECONDS) -> None:
        """Until some process (the pod's `cache-hold` sidecar) holds the key's use lock: the entry stays
        safe from eviction after this fill has exited."""
        lock = self.lock(key, "use")
        deadline = time.monotonic() + timeout
        try:
            while lock.take(fcntl.LOCK_EX, wait=False):
                fcntl.flock(lock.fd, fcntl.LOCK_UN)
                if time.monotonic() > deadline:
                    raise AgentError(f"cache entry {key}: no cache-hold sidecar holds it after {timeout:.0f} s "
                                     "(the pod's ckpt-cache-hold container should start before this one)")
                time.sleep(0.05)
        finally:
            lock.close()

    def touch(self, key: str) -> None:
        os.utime(os.path.join(self.entry_dir(key), ENTRY_FILE))

    # -- verification --------------------------------------------------------------------------------

    def check(self, key: str, full: bool = False, sample: int = SAMPLE_BLOCKS) -> Optional[str]:
        """Why the committed entry of `key` is not what was filled (None: it is). Always: the manifest's
        digest is the key's, and every file has its size; then `sample` random blocks against the block
        index, or (`full`) every byte against the manifest's sha256."""
        _, hexdigest = parse_key(key)
        data = self.data_dir(key)
        try:
            with open(os.path.join(data, MANIFEST_NAME), "rb") as fh:
                body = fh.read(MAX_MANIFEST_BYTES + 1)
            if len(body) > MAX_MANIFEST_BYTES:
                return f"manifest larger than {MAX_MANIFEST_BYTES} bytes"
            manifest = parse_manifest(body, "the cached manifest")
        except (OSError, AgentError, ValueError) as exc:
            return f"manifest unreadable: {exc}"
        if manifest.digest != f"sha256:{hexdigest}" or digest_of(manifest.files) != manifest.digest:
            return f"manifest digest is {manifest.digest}, not sha256:{hexdigest}"
        for entry in manifest.files:
            try:
                size = os.stat(os.path.join(data, entry.path), follow_symlinks=False).st_size
            except OSError:
                return f"{entry.path}: missing"
            if size != entry.size:
                return f"{entry.path}: {size} bytes, the manifest says {entry.size}"
        if full:
            for entry in manifest.files:
                if _sha256_file(os.path.join(data, entry.path)) != entry.sha256:
                    return f"{entry.path}: sha256 differs from the manifest"
            return None
        return self._check_sample(key, manifest, sample)

    def _check_sample(self, key: str, manifest: Manifest, sample: int) -> Optional[str]:
        # Block n of the entry is block n - ends[i-1] of file i, where ends are the files' cumulative block
        # counts: one int per file, whatever the size.
        ends = list(itertools.accumulate(_blocks_of(entry.size) for entry in manifest.files))
        total = ends[-1] if ends else 0
        try:
            index = open(os.path.join(self.entry_dir(key), BLOCKS_FILE), "rb")
        except OSError:
            return "block index missing"
        with index:
            if os.fstat(index.fileno()).st_size != total * BLOCK_HASH:
                return "block index has the wrong size"
            for number in sorted(random.sample(range(total), min(sample, total))):
                position = bisect.bisect_right(ends, number)
                entry, block = manifest.files[position], number - (ends[position - 1] if position else 0)
                index.seek(number * BLOCK_HASH)
                expected = index.read(BLOCK_HASH)
                with open(os.path.join(self.data_dir(key), entry.path), "rb") as fh:
                    fh.seek(block * BLOCK)
                    got = hashlib.sha256(fh.read(BLOCK)).digest()[:BLOCK_HASH]
                if got != expected:
                    return f"{entry.path}: block {block} (bytes {block * BLOCK}-) differs from when it was filled"
        return None

    def quarantine(self, key: str) -> None:
        """Set a corrupted entry aside (pods still using it keep their mounts); removed once unused."""
        target = os.path.join(self.root, "trash", f"{_flat(key)}.{time.time_ns()}")
        os.rename(self.entry_dir(key), target)

    # -- room ----------------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Committed entries, reservations of fills under way (or cut short) and quarantined entries."""
        total = 0
        for key in self._committed_keys():
            total += _entry_size(self.entry_dir(key))
        for flat in _listdir(os.path.join(self.root, "staging")):
            total += _reserved(os.path.join(self.root, "staging", flat))
        for name in _listdir(os.path.join(self.root, "trash")):
            total += _entry_size(os.path.join(self.root, "trash", name))
        return total

    def _committed_keys(self) -> list[str]:
        keys = []
        entries = os.path.join(self.root, "entries")
        for namespace in _listdir(entries):
            for hexdigest in _listdir(os.path.join(entries, namespace)):
                key = f"{namespace}/{hexdigest}"
                if KEY.match(key) and os.path.isfile(os.path.join(entries, namespace, hexdigest, ENTRY_FILE)):
                    keys.append(key)
        return keys

    def reserve(self, key: str, size: int) -> list[Evicted]:
        """Room for `size` bytes for `key`'s fill, evicting least recently used entries that no pod
        holds; the reservation is recorded in the staging directory. CacheFull when even that is not
        enough (every other entry in use)."""
        if size > self.capacity:
            raise AgentError(f"cache entry {key}: {size} bytes is more than the node cache's capacity "
                             f"({self.capacity} bytes)")
        space = _Lock(os.path.join(self.root, "locks", "space"))
        try:
            space.take(fcntl.LOCK_EX)
            staging = self.staging_dir(key)
            fstree.make_dirs(staging, mode=0o755)
            already = _reserved(staging)
            used = self.used_bytes() - already
            evicted: list[Evicted] = []
            if used + size > self.capacity:
                used -= self._drop_trash()
            if used + size > self.capacity:
                used -= self._drop_abandoned_fills(key)
            for candidate in self._by_last_use():
                if used + size <= self.capacity:
                    break
                if candidate == key:
                    continue
                freed = self._evict(candidate)
                if freed is not None:
                    evicted.append(Evicted(candidate, freed))
                    used -= freed
            if used + size > self.capacity:
                raise CacheFull(f"cache full: {used} of {self.capacity} bytes are entries in use; "
                                f"{key} needs {size}")
            _write_atomic(os.path.join(staging, RESERVED_FILE), str(size).encode())
            return evicted
        finally:
            space.close()

    def _by_last_use(self) -> list[str]:
        def last_use(key: str) -> float:
            try:
                return os.stat(os.path.join(self.entry_dir(key), ENTRY_FILE)).st_mtime
            except OSError:
                return 0.0
        return sorted(self._committed_keys(), key=last_use)

    def _evict(self, key: str) -> Optional[int]:
        """Remove an entry no pod holds (None: one does). Its fill lock too: never mid-check."""
        use = self.lock(key, "use")
        try:
            if not use.take(fcntl.LOCK_EX, wait=False):
                return None
            fill = self.lock(key, "fill")
            try:
                if not fill.take(fcntl.LOCK_EX, wait=False):
                    return None
                size = _entry_size(self.entry_dir(key))
                target = os.path.join(self.root, "trash", f"{_flat(key)}.evicted.{time.time_ns()}")
                os.rename(self.entry_dir(key), target)
                fstree.remove_tree(target, ignore_errors=True)
                fill.remove()
                use.remove()  # an evicted key leaves no file behind (locks/ would grow with every key)
                self.log(f"cache: evicted {key} ({size} bytes, least recently used, no pod uses it)")
                return size
            finally:
                fill.close()
        finally:
            use.close()

    def _drop_trash(self) -> int:
        """Quarantined entries whose key no pod holds any more: removed. Returns the bytes freed."""
        freed = 0
        trash = os.path.join(self.root, "trash")
        for name in _listdir(trash):
            namespace, _, rest = name.partition(".")
            hexdigest = rest.split(".", 1)[0]
            use = self.lock(f"{namespace}/{hexdigest}", "use")
            try:
                if use.take(fcntl.LOCK_EX, wait=False):
                    size = _entry_size(os.path.join(trash, name))
                    fstree.remove_tree(os.path.join(trash, name), ignore_errors=True)
                    use.remove()
                    freed += size
            finally:
                use.close()
        return freed

    def _drop_abandoned_fills(self, own: str) -> int:
        """Staging directories whose fill no process runs (its pod was killed and not retried here): their
        reservations are given back. A fill under way holds its fill lock, and is left alone."""
        freed = 0
        staging = os.path.join(self.root, "staging")
        for flat in _listdir(staging):
            namespace, _, hexdigest = flat.partition(".")
            key = f"{namespace}/{hexdigest}"
            if key == own or not KEY.match(key):
                continue
            fill = self.lock(key, "fill")
            try:
                if fill.take(fcntl.LOCK_EX, wait=False):
                    freed += _reserved(os.path.join(staging, flat))
                    fstree.remove_tree(os.path.join(staging, flat), ignore_errors=True)
                    fill.remove()
                    self.log(f"cache: removed the abandoned fill of {key} (no process fills it)")
            finally:
                fill.close()
        return freed

    # -- commit --------------------------------------------------------------------------------------

    def commit(self, key: str, manifest: Manifest) -> None:
        """The staging directory (its data verified by the download) becomes the entry, by one rename."""
        staging = self.staging_dir(key)
        _write_block_index(os.path.join(staging, "data"), manifest, os.path.join(staging, BLOCKS_FILE))
        _write_atomic(os.path.join(staging, ENTRY_FILE), json.dumps({
            "key": key, "digest": manifest.digest, "sizeBytes": manifest.sizeBytes, "fileCount": manifest.fileCount,
            "blockSize": BLOCK, "filledAt": time.time()}).encode())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(staging, RESERVED_FILE))
        fstree.make_dirs(os.path.dirname(self.entry_dir(key)), mode=0o755)
        if os.path.lexists(self.entry_dir(key)):  # not an entry (no entry.json): whatever it is, out of the way
            os.rename(self.entry_dir(key), os.path.join(self.root, "trash", f"{_flat(key)}.{time.time_ns()}"))
        os.rename(staging, self.entry_dir(key))


# -- fill ------------------------------------------------------------------------------------------

def fill(cache: NodeCache, key: str, uri: str, size: int, *, full_check: bool = False, wait_for_hold: bool = True,
         endpoint_url: Optional[str] = None, full_retry: float = FULL_RETRY_SECONDS,
         deadline: Optional[float] = None) -> FillReport:
    """Make `key` a verified entry of the cache (see the module's docstring)."""
    from checkpoint_operator.agent.download import download_prefix

    _, hexdigest = parse_key(key)
    digest = f"sha256:{hexdigest}"
    if wait_for_hold:
        cache.wait_for_hold(key)
    started = time.monotonic()
    with cache.using(key):
        fill_lock = cache.lock(key, "fill")
        try:
            if not fill_lock.take(fcntl.LOCK_EX, wait=False):
                cache.log(f"cache: {key} is being filled by another pod on this node; waiting for it")
                fill_lock.take(fcntl.LOCK_EX)
            waited = time.monotonic() - started
            problem = ""
            if cache.committed(key):
                problem = cache.check(key, full=full_check) or ""
                if not problem:
                    cache.touch(key)
                    return FillReport(key, "hit", _entry_size(cache.entry_dir(key)), waited_seconds=waited)
                cache.log(f"cache: entry {key} is corrupted ({problem}); set aside and fetched again")
                cache.quarantine(key)
            reserving = time.monotonic()
            evicted = _reserve_waiting(cache, key, size, full_retry, deadline)
            waited += time.monotonic() - reserving
            result = download_prefix(uri, os.path.join(cache.staging_dir(key), "data"), digest=digest,
                                     endpoint_url=endpoint_url)
            cache.commit(key, result.manifest)
            cache.touch(key)
            return FillReport(key, "refetched" if problem else "miss", result.manifest.sizeBytes,
                              fetched_bytes=result.fetched_bytes, waited_seconds=waited, problem=problem,
                              evicted=evicted)
        finally:
            fill_lock.close()


def _reserve_waiting(cache: NodeCache, key: str, size: int, retry: float, deadline: Optional[float]) -> list[Evicted]:
    """A full cache whose entries are all in use: the fill waits for one to be released (the pod stays
    in its init container, saying so once in its log), never downloads beside the cache."""
    said = False
    while True:
        try:
            return cache.reserve(key, size)
        except CacheFull as exc:
            if deadline is not None and time.monotonic() > deadline:
                raise
            if not said:
                cache.log(f"cache: {exc}; waiting for a pod to release an entry")
                said = True
            time.sleep(retry)


def hold(cache: NodeCache, keys: list[str], stop: Callable[[], bool], poll: float = 0.5) -> None:
    """Hold the use lock of every key until `stop()` (SIGTERM): the pod's entries are not evicted."""
    locks = []
    try:
        for key in keys:
            lock = cache.lock(key, "use")
            locks.append(lock)
            lock.take(fcntl.LOCK_SH)
        print(json.dumps({"holding": keys}), flush=True)
        while not stop():
            time.sleep(poll)
    finally:
        for lock in locks:
            lock.close()


# -- helpers ---------------------------------------------------------------------------------------

def _blocks_of(size: int) -> int:
    return max(1, -(-size // BLOCK))


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _write_block_index(data: str, manifest: Manifest, target: str) -> None:
    with open(target + ".tmp", "wb") as out:
        for entry in manifest.files:
            with open(os.path.join(data, entry.path), "rb") as fh:
                for _ in range(_blocks_of(entry.size)):
                    out.write(hashlib.sha256(fh.read(BLOCK)).digest()[:BLOCK_HASH])
    os.rename(target + ".tmp", target)


def _write_atomic(path: str, body: bytes) -> None:
    with open(path + ".tmp", "wb") as fh:
        fh.write(body)
    os.rename(path + ".tmp", path)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _entry_size(path: str) -> int:
    try:
        with open(os.path.join(path, ENTRY_FILE), "rb") as fh:
            return int(json.loads(fh.read(4096))["sizeBytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return _du(path)


def _reserved(staging: str) -> int:
    try:
        with open(os.path.join(staging, RESERVED_FILE), "rb") as fh:
            return int(fh.read(32))
    except (OSError, ValueError):
        return _du(staging)


def _du(path: str) -> int:
    total = 0
    for top, _, files in fstree.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(top, name), follow_symlinks=False).st_size
    return total


# -- commands --------------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    if args.agent_command == "cache-hold":
        cache = NodeCache(args.root, capacity_bytes=0)
        for key in args.key:
            parse_key(key)
        hold(cache, args.key, stop=args.stop.is_set)
        return 0
    from checkpoint_operator.objectstore.s3 import parse_size
    cache = NodeCache(args.root, capacity_bytes=parse_size(args.capacity))
    deadline = time.monotonic() + args.wait_seconds if args.wait_seconds else None
    report = fill(cache, args.key, args.uri, int(args.size), full_check=args.verify == "full",
                  wait_for_hold=not args.no_hold, endpoint_url=args.endpoint_url, deadline=deadline)
    line = report.as_json()
    print(line, flush=True)
    if args.result_file:
        with contextlib.suppress(OSError):  # the kubelet's termination message; the log has it too
            with open(args.result_file, "w") as fh:
                fh.write(line)
    return 0
