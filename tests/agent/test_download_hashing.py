"""How `agent download` moves and hashes a big file's bytes (SeaweedFS on 127.0.0.1): written to
the page cache in small writes, hashed in order whatever order the parts land in, and any
corrupted byte refused by name wherever in the file it is."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from test_upload_download import local_digest

from checkpoint_operator.agent import download
from checkpoint_operator.agent.download import Downloader
from checkpoint_operator.agent.upload import upload_dir

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
