"""Damage that leaves a file's outer structure whole: what the framework's own reader refuses,
the scan calls incomplete, naming the file and the part that is wrong.

Each good case comes from the framework's writer (torch.save, save_pretrained, Orbax); each bad
case is the same output damaged inside: a torch zip whose central directory is whole but whose
members are missing, short or cut; a sharded save_pretrained killed after some shards; a shard
of another model under the index's name; an Orbax item that lost an array or a chunk. Every bad
case is first shown to be refused by the real reader, so the test asserts what a user would hit.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

from frameworks_support import agent_scan


def _refused(load: Callable[[], object]) -> bool:
    try:
        load()
    except Exception:  # noqa: BLE001 - any failure of the real reader is a refusal
        return True
    return False


# --- torch.save zips whose members are damaged ------------------------------------------------

def _rewritten(src: Path, dest: Path, change: Callable[[str, bytes], Optional[bytes]]) -> None:
    """`src`'s zip rewritten member by member (None drops a member): the central directory is
    written anew, so it is whole whatever happened to the members."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)


def _cut_before_central_directory(src: Path, dest: Path, k: int) -> None:
    """`src` with the last k bytes before its central directory removed and the directory's
    offsets moved to match: a zip whose last member is cut but whose end records agree."""
    b = bytearray(src.read_bytes())
    eocd, locator = b.rfind(b"PK\x05\x06"), b.rfind(b"PK\x06\x07")
    z64 = struct.unpack_from("<Q", b, locator + 8)[0]
    cd_offset = struct.unpack_from("<Q", b, z64 + 48)[0]
    out = b[:cd_offset - k] + b[cd_offset:]
    struct.pack_into("<Q", out, z64 - k + 48, cd_offset - k)
    struct.pack_into("<Q", out, locator - k + 8, z64 - k)
    if struct.unpack_from("<I", out, eocd - k + 16)[0] != 0xFFFFFFFF:
        struct.pack_into("<I", out, eocd - k + 16, cd_offset - k)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(bytes(out))


def test_torch_zips_with_whole_directories_and_damaged_members(tmp_path):
    out = tmp_path / "out"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    good = out / "whole" / "model.pt"
    good.parent.mkdir(parents=True)
    torch.save(model.state_dict(), good)
    storage = "model/data/0"  # the first weight's storage
    cases: dict[str, Callable[[Path], None]] = {
        "rewritten": lambda d: _rewritten(good, d, lambda n, b: b),
        "no-storage": lambda d: _rewritten(good, d, lambda n, b: None if n == storage else b),
        "short-storage": lambda d: _rewritten(good, d, lambda n, b: b[:4] if n == storage else b),
        "empty-storage": lambda d: _rewritten(good, d, lambda n, b: b"" if n == storage else b),
        "no-data-pkl": lambda d: _rewritten(good, d, lambda n, b: None if n.endswith("data.pkl") else b),
        "garbage-data-pkl": lambda d: _rewritten(good, d, lambda n, b: b"garbage" if n.endswith("data.pkl") else b),
        "last-member-cut": lambda d: _cut_before_central_directory(good, d, 40),
    }
    for name, make in cases.items():
        make(out / name / "model.pt")
    assert not _refused(lambda: torch.load(out / "rewritten" / "model.pt"))
    for name in cases:
        if name != "rewritten":
            assert _refused(lambda: torch.load(out / name / "model.pt")), name

    found = agent_scan(out)
    for name in ("whole", "rewritten"):
        assert found[name]["complete"] is True, found[name]["completeReason"]
    expected = {
        "no-storage": "member model/data/0 is missing",
        "short-storage": "member model/data/0 holds 4 bytes, model/data.pkl says",
        "empty-storage": "member model/data/0 holds 0 bytes",
        "no-data-pkl": "no <archive>/data.pkl member",
        "garbage-data-pkl": "member model/data.pkl: not a readable pickle",
        "last-member-cut": "entry model/.data/serialization_id: its 40 bytes of data end at",
    }
    for name, why in expected.items():
        m = found[name]
        assert m["complete"] is False, (name, m["completeReason"])
        assert m["completeReason"].startswith(f"model.pt: {why}"), (name, m["completeReason"])
