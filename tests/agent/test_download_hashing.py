"""How `agent download` moves and hashes a big file's bytes (SeaweedFS on 127.0.0.1): written to
the page cache in small writes, hashed in order whatever order the parts land in, and any
corrupted byte refused by name wherever in the file it is."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from test_upload_download import local_digest

from checkpoint_operator.agent import download
from checkpoint_operator.agent.download import Downloader, temp_name
from checkpoint_operator.agent.upload import upload_dir
from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import MANIFEST_NAME

MiB = 1024 * 1024


def test_every_write_into_the_page_cache_is_at_most_a_write_piece(s3, tmp_path, monkeypatch):
    # Bigger writes get large page-cache folios: on a VM with free page reporting, each first
    # touch of them is a host fault (WRITE_PIECE's comment). Small files are written so too.
    src = tmp_path / "src"
    src.mkdir()
    (src / "shard.bin").write_bytes(os.urandom(12 * MiB + 5))  # 3 parts of 5 MiB, the last short
    (src / "small.bin").write_bytes(os.urandom(700_000))  # one GET into memory
    uri = s3.uri("pieces/")
    digest = upload_dir(str(src), uri).manifest.digest
    sizes: list[int] = []
    real = os.pwrite

    def recording(fd: int, data, offset: int) -> int:
        sizes.append(len(data))
        return real(fd, data, offset)

    monkeypatch.setattr(download.os, "pwrite", recording)
    Downloader(uri, str(tmp_path / "dst"), concurrency=3, digest=digest).run()
    assert local_digest(tmp_path / "dst") == digest
    assert sum(sizes) == 12 * MiB + 5 + 700_000
    assert max(sizes) == download.WRITE_PIECE <= 32 * 1024


# ---- the hash follows the parts in file order, whatever order they land in ----

PART = 5 * MiB  # the tests' part size (tests/s3server.py sets CKPT_S3_PART_SIZE)


def _shard(tmp_path: Path, s3, name: str, parts: int = 3) -> tuple[str, str, bytes]:
    src = tmp_path / f"src-{name}"
    src.mkdir()
    data = os.urandom(parts * PART - 7)  # the last part short
    (src / "shard.bin").write_bytes(data)
    (src / "config.json").write_text("{}")
    uri = s3.uri(f"{name}/")
    return uri, upload_dir(str(src), uri).manifest.digest, data


def _corrupt(s3, uri: str, data: bytes, offset: int) -> None:
    bad = bytearray(data)
    bad[offset] ^= 0x01  # same size, one bit
    prefix = uri[len(f"s3://{s3.bucket}/"):]
    s3.client().put_object(Bucket=s3.bucket, Key=prefix + "shard.bin", Body=bytes(bad))


class _Counters:
    def __init__(self) -> None:
        self.read_back = 0  # bytes hashed back from the file
        self.lock = threading.Lock()


def _run(uri: str, dst: Path, monkeypatch, *, digest: str | None = None, first_part_last: bool = False,
         cut_part: int | None = None, concurrency: int = 3) -> tuple[Downloader, _Counters]:
    """Download with the reads back from the file counted; `first_part_last`: part 0's GET waits
    until every other part is on disk (all of them land before the hash can start); `cut_part`:
    that part's first body ends half-way (retried from where it stopped)."""
    counters = _Counters()
    real_preadv = os.preadv

    def counting_preadv(fd: int, buffers, offset: int) -> int:
        n = real_preadv(fd, buffers, offset)
        with counters.lock:
            counters.read_back += n
        return n

    monkeypatch.setattr(download.os, "preadv", counting_preadv)
    others_done = threading.Event()
    done: set[int] = set()

    def on_part_done(path: str, index: int) -> None:
        done.add(index)
        if done >= {1, 2}:
            others_done.set()

    dl = Downloader(uri, str(dst), concurrency=concurrency, digest=digest, on_part_done=on_part_done)
    real_open = dl._open
    cut = [cut_part]

    def opening(loc, rng):
        if first_part_last and rng and rng.startswith("bytes=0-"):
            assert others_done.wait(60)
        body = real_open(loc, rng)
        if cut[0] is not None and rng and rng.startswith(f"bytes={cut[0] * PART}-"):
            cut[0] = None
            return _CutShort(body, PART // 2)
        return body

    monkeypatch.setattr(dl, "_open", opening)
    dl.run()
    return dl, counters


class _CutShort:
    """A body whose connection ends after `left` bytes."""

    def __init__(self, body, left: int) -> None:
        self.body, self.left, self.content_length = body, left, body.content_length

    def readinto(self, view: memoryview) -> int:
        if self.left <= 0:
            return 0
        n = self.body.readinto(view[:min(len(view), self.left)])
        self.left -= n
        return n

    def finish(self) -> None:
        self.body.finish()

    def close(self) -> None:
        self.body.close()


def test_parts_that_land_before_the_hash_reaches_them_are_hashed_back_once(s3, tmp_path, monkeypatch):
    uri, digest, _ = _shard(tmp_path, s3, "ahead")
    _, counters = _run(uri, tmp_path / "dst", monkeypatch, digest=digest, first_part_last=True)
    assert local_digest(tmp_path / "dst") == digest
    # parts 1 and 2 landed first: read back from the file once each; part 0 hashed as it arrived
    assert counters.read_back == 2 * PART - 7


def test_a_body_cut_short_ahead_of_the_hash_is_resumed_and_the_file_verifies(s3, tmp_path, monkeypatch):
    uri, digest, _ = _shard(tmp_path, s3, "cut")
    dl, counters = _run(uri, tmp_path / "dst", monkeypatch, digest=digest, first_part_last=True, cut_part=1)
    assert dl.result.retries == 1
    assert local_digest(tmp_path / "dst") == digest
    assert counters.read_back == 2 * PART - 7  # nothing hashed twice across the retry


@pytest.mark.parametrize("where", [
    "part 0, hashed as it arrives",
    "part 2, landed first, hashed back from the file",
    "the last byte",
])
def test_a_corrupted_byte_is_refused_by_name_wherever_it_is_hashed(s3, tmp_path, monkeypatch, where):
    uri, digest, data = _shard(tmp_path, s3, "bad" + str(abs(hash(where)) % 1000))
    offset = {"part 0": 123, "part 2": 2 * PART + 4567, "the last byte": len(data) - 1}[where.split(",")[0]]
    _corrupt(s3, uri, data, offset)
    dst = tmp_path / "dst"
    with pytest.raises(AgentError) as err:
        _run(uri, dst, monkeypatch, digest=digest, first_part_last=True)
    message = str(err.value)
    assert "shard.bin" in message and "sha256 mismatch" in message, message
    assert not (dst / "shard.bin").exists()
    assert not os.path.exists(temp_name(str(dst / "shard.bin")))  # bad bytes are not kept for a resume
    assert not (dst / MANIFEST_NAME).exists()
