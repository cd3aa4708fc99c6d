"""The node-local input cache (agent/node_cache.py) on real files against SeaweedFS: a miss then hits,
concurrent first pods downloading once, a downloader killed mid-fill, corrupted entries, least
recently used eviction that never takes an entry a pod holds, a full cache whose entries are all in use."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.agent.manifest import MANIFEST_NAME
from checkpoint_operator.agent.node_cache import BLOCK, CacheFull, NodeCache, fill, hold
from checkpoint_operator.agent.upload import upload_dir

MiB = 1024 * 1024
NS = "team-a"


def stored(s3, tmp_path: Path, name: str, files: dict[str, bytes]) -> tuple[str, str, int]:
    """(uri, key, size) of a checkpoint uploaded to the store."""
    root = tmp_path / "src" / name
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    uri = s3.uri(f"{name}/")
    result = upload_dir(str(root), uri)
    digest = result.manifest.digest
    return uri, f"{NS}/{digest.removeprefix('sha256:')}", result.manifest.sizeBytes


def cache_at(tmp_path: Path, capacity: int = 1 << 40) -> NodeCache:
    return NodeCache(str(tmp_path / "node-cache"), capacity, log=lambda m: None)


def fill_cli(cache: NodeCache, uri: str, key: str, size: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "checkpoint_operator", "agent", "cache-fill", uri, cache.root,
                             "--key", key, "--size", str(size), "--capacity", str(cache.capacity), "--no-hold",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_miss_downloads_and_later_uses_are_hits_read_from_the_node(s3, tmp_path):
    uri, key, size = stored(s3, tmp_path, "a", {"model.safetensors": os.urandom(3 * MiB), "config.json": b"{}"})
    cache = cache_at(tmp_path)
    first = fill(cache, key, uri, size, wait_for_hold=False)
    assert (first.outcome, first.fetched_bytes) == ("miss", size)
    data = Path(cache.data_dir(key))
    assert (data / "config.json").read_bytes() == b"{}" and (data / MANIFEST_NAME).is_file()
    second = fill(cache, key, uri, size, wait_for_hold=False)
    assert (second.outcome, second.fetched_bytes, second.size_bytes) == ("hit", 0, size)
    assert json.loads(second.as_json())["cache"] == "hit"


def test_concurrent_first_pods_on_one_node_download_once(s3, tmp_path):
    uri, key, size = stored(s3, tmp_path, "b", {"w.bin": os.urandom(12 * MiB)})
    cache = cache_at(tmp_path)
    procs = [fill_cli(cache, uri, key, size) for _ in range(3)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["cache"] for r in reports) == ["hit", "hit", "miss"]
    assert sum(r["fetchedBytes"] for r in reports) == size


def test_a_downloader_killed_mid_fill_wedges_nothing(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_S3_CONCURRENCY", "1")
    uri, key, size = stored(s3, tmp_path, "c", {f"shard-{i}.bin": os.urandom(8 * MiB) for i in range(6)})
    cache = cache_at(tmp_path)
    proc = fill_cli(cache, uri, key, size)
    staging = Path(cache.staging_dir(key)) / "data"
    deadline = time.monotonic() + 60
    while not (staging.is_dir() and any(p.name.startswith("shard-") for p in staging.iterdir())):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the fill never started writing"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # its locks die with it
    proc.wait()
    assert not cache.committed(key)
    report = fill(cache, key, uri, size, wait_for_hold=False)
    assert report.outcome == "miss" and report.fetched_bytes < size  # resumed what the killed one had verified
    assert cache.check(key, full=True) is None


def test_a_corrupted_entry_is_detected_and_fetched_again(s3, tmp_path):
    uri, key, size = stored(s3, tmp_path, "d", {"model.bin": os.urandom(2 * BLOCK + 5), "tok.json": b"x" * 100})
    cache = cache_at(tmp_path)
    fill(cache, key, uri, size, wait_for_hold=False)
    target = Path(cache.data_dir(key)) / "model.bin"
    target.chmod(0o644)
    with open(target, "r+b") as fh:  # a flipped byte in the last block (3 blocks: a sample of 16 sees them all)
        fh.seek(2 * BLOCK + 2)
        byte = fh.read(1)
        fh.seek(2 * BLOCK + 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert "block 2" in (cache.check(key) or "")
    report = fill(cache, key, uri, size, wait_for_hold=False)
    assert report.outcome == "refetched" and "block 2" in report.problem and report.fetched_bytes == size
    assert cache.check(key, full=True) is None
    # A truncated file is caught by its size.
    os.truncate(Path(cache.data_dir(key)) / "tok.json", 10)
    assert "tok.json: 10 bytes" in (cache.check(key) or "")


def test_full_verification_catches_what_a_sample_may_miss(s3, tmp_path):
    uri, key, size = stored(s3, tmp_path, "e", {"big.bin": os.urandom(40 * BLOCK)})
    cache = cache_at(tmp_path)
    fill(cache, key, uri, size, wait_for_hold=False)
    with open(Path(cache.data_dir(key)) / "big.bin", "r+b") as fh:
        fh.seek(7 * BLOCK + 3)
        fh.write(b"\0\1\2")
    assert cache.check(key, full=True) == "big.bin: sha256 differs from the manifest"
    assert cache.check(key, sample=0) is None  # sizes alone cannot see it
    report = fill(cache, key, uri, size, full_check=True, wait_for_hold=False)
    assert report.outcome == "refetched"


def test_least_recently_used_eviction_never_takes_an_entry_in_use(s3, tmp_path):
    blobs = {name: stored(s3, tmp_path, name, {"w.bin": os.urandom(2 * MiB)}) for name in ("e1", "e2", "e3")}
    size = blobs["e1"][2]
    cache = cache_at(tmp_path, capacity=2 * size + 1000)
    uri1, key1, _ = blobs["e1"]
    uri2, key2, _ = blobs["e2"]
    uri3, key3, _ = blobs["e3"]
    fill(cache, key1, uri1, size, wait_for_hold=False)
    fill(cache, key2, uri2, size, wait_for_hold=False)
    os.utime(Path(cache.entry_dir(key2)) / "entry.json", (1, 1))  # e2 is the least recently used...
    with cache.using(key2):  # ...but a pod runs on it: e1 goes instead
        report = fill(cache, key3, uri3, size, wait_for_hold=False)
    assert [e.key for e in report.evicted] == [key1]
    assert cache.committed(key2) and cache.committed(key3) and not cache.committed(key1)
    report = fill(cache, key1, uri1, size, wait_for_hold=False)  # now nothing holds e2: the oldest goes
    assert [e.key for e in report.evicted] == [key2] and report.outcome == "miss"
    assert cache.used_bytes() <= cache.capacity
    # An evicted key leaves no lock file behind (locks/ held one file per key ever cached before).
    locks = sorted(os.listdir(Path(cache.root) / "locks"))
    assert not [name for name in locks if key2.replace("/", ".") in name], locks


def test_a_lock_opened_before_its_file_was_removed_is_taken_again_on_the_current_file(tmp_path):
    """The removal protocol: only a holder of the exclusive lock unlinks a lock file, and a process that
    opened the old file before (and gets its flock after) must not count as holding the lock."""
    import fcntl
    cache = cache_at(tmp_path)
    key = f"{NS}/{'ab' * 32}"
    evictor, late = cache.lock(key, "use"), cache.lock(key, "use")  # both open the same file
    try:
        assert evictor.take(fcntl.LOCK_EX, wait=False)
        evictor.remove()
        evictor.close()
        assert late.take(fcntl.LOCK_SH)  # got the old file's lock, found it stale, took the new file's
        current = os.stat(late.path)
        assert (os.fstat(late.fd).st_ino, os.fstat(late.fd).st_dev) == (current.st_ino, current.st_dev)
        other = cache.lock(key, "use")
        try:  # so an evictor now sees the holder
            assert not other.take(fcntl.LOCK_EX, wait=False)
        finally:
            other.close()
    finally:
        late.close()


def test_a_full_cache_with_every_entry_in_use_makes_the_new_pod_wait(s3, tmp_path):
    (uri1, key1, size), (uri2, key2, _) = (stored(s3, tmp_path, n, {"w.bin": os.urandom(MiB)}) for n in ("f1", "f2"))
    cache = cache_at(tmp_path, capacity=size + 10)
    fill(cache, key1, uri1, size, wait_for_hold=False)
    with cache.using(key1):
        with pytest.raises(CacheFull, match="entries in use"):
            fill(cache, key2, uri2, size, wait_for_hold=False, full_retry=0.01, deadline=time.monotonic() + 0.2)
    released = threading.Event()

    def pod_on_key1() -> None:
        with cache.using(key1):
            released.wait(10)
    runner = threading.Thread(target=pod_on_key1)
    runner.start()
    time.sleep(0.1)
    timer = threading.Timer(0.3, released.set)
    timer.start()
    report = fill(cache, key2, uri2, size, wait_for_hold=False, full_retry=0.05)  # waits, then evicts key1
    runner.join()
    assert report.outcome == "miss" and [e.key for e in report.evicted] == [key1]


def test_an_input_larger_than_the_cache_is_refused_with_one_line(s3, tmp_path):
    uri, key, size = stored(s3, tmp_path, "g", {"w.bin": os.urandom(MiB)})
    with pytest.raises(AgentError, match="more than the node cache's capacity"):
        fill(cache_at(tmp_path, capacity=size - 1), key, uri, size, wait_for_hold=False)


def test_the_fill_waits_for_the_hold_and_the_hold_keeps_the_entry(s3, tmp_path):
    uri, key, size = stored(s3, tmp_path, "h", {"w.bin": os.urandom(MiB)})
    cache = cache_at(tmp_path, capacity=size + 10)
    with pytest.raises(AgentError, match="no cache-hold sidecar holds it"):
        cache.wait_for_hold(key, timeout=0.2)
    stop = threading.Event()
    holder = threading.Thread(target=hold, args=(cache, [key], stop.is_set, 0.01))
    holder.start()
    try:
        report = fill(cache, key, uri, size)
        assert report.outcome == "miss"
        assert cache._evict(key) is None  # held by the (running) pod
    finally:
        stop.set()
        holder.join()
    assert cache._evict(key) == size


@pytest.mark.parametrize("key", ["team-a/abc", "Team/" + "a" * 64, "a/b/" + "a" * 64, "../" + "a" * 64])
def test_keys_outside_the_rule_are_refused(tmp_path, key):
    with pytest.raises(AgentError, match="--key"):
        cache_at(tmp_path).entry_dir(key)


def test_an_abandoned_fill_gives_its_reservation_back_when_room_is_needed(s3, tmp_path):
    uri, key, size = stored(s3, tmp_path, "i", {"w.bin": os.urandom(MiB)})
    cache = cache_at(tmp_path, capacity=size + 10)
    abandoned = "team-b/" + "d" * 64  # a filler killed before it committed, its pod never retried on this node
    cache.reserve(abandoned, size)
    (Path(cache.staging_dir(abandoned)) / "data").mkdir()
    with cache.using(abandoned):  # a pod holding the key does not keep a fill no process runs
        report = fill(cache, key, uri, size, wait_for_hold=False, full_retry=0.01, deadline=time.monotonic() + 5)
    assert report.outcome == "miss" and not Path(cache.staging_dir(abandoned)).exists()
    # A fill under way (its fill lock held) keeps its reservation: the new one waits instead.
    uri2, key2, _ = stored(s3, tmp_path, "j", {"w.bin": os.urandom(MiB)})
    cache.reserve(abandoned, size)
    filling = cache.lock(abandoned, "fill")
    filling.take(__import__("fcntl").LOCK_EX)
    try:
        with cache.using(key):
            with pytest.raises(CacheFull):
                fill(cache, key2, uri2, size, wait_for_hold=False, full_retry=0.01, deadline=time.monotonic() + 0.1)
    finally:
        filling.close()
    assert Path(cache.staging_dir(abandoned)).exists()


def test_samples_reach_every_file_of_a_many_file_entry_and_a_stray_directory_is_set_aside(s3, tmp_path):
    files = {f"shard-{i:02d}.bin": os.urandom(1000 + i) for i in range(40)}
    uri, key, size = stored(s3, tmp_path, "k", files)
    cache = cache_at(tmp_path)
    Path(cache.data_dir(key)).mkdir(parents=True)  # an entry directory without entry.json (not committed)
    (Path(cache.data_dir(key)) / "junk").write_text("x")
    assert fill(cache, key, uri, size, wait_for_hold=False).outcome == "miss"
    assert not (Path(cache.data_dir(key)) / "junk").exists()
    with open(Path(cache.data_dir(key)) / "shard-39.bin", "r+b") as fh:  # the last block of the entry
        fh.write(b"\0\0")
    assert cache.check(key, sample=40) == "shard-39.bin: block 0 (bytes 0-) differs from when it was filled"
    assert cache.check(key, sample=39) in (None, "shard-39.bin: block 0 (bytes 0-) differs from when it was filled")
