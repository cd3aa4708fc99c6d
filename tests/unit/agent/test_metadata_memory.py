"""The memory of parsing a checkpoint's pickles is bounded whatever they hold: each pickle builds
at most safe_pickle.MAX_OBJECTS objects, the parses a checkpoint keeps hold at most
work_limit.MAX_HELD_OBJECTS together, and a parse that fails keeps nothing (its frames are not
kept as the cached error's context). Measured with tracemalloc, on crafted DCP `.metadata`
files whose one-byte opcodes each build a 64-byte dict."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from checkpoint_operator.agent import formats, safe_pickle, work_limit
from checkpoint_operator.agent.safe_read import list_files
from formats_files import dcp_metadata_bytes, write


def dicts_pickle(n: int) -> bytes:
    """A list of n empty dicts: n bytes of opcodes, n objects."""
    return b"\x80\x04](" + b"}" * n + b"e."


def checkpoint_of_metadata(root: Path, pickles: list[bytes]) -> Path:
    root.mkdir()
    for i, data in enumerate(pickles):
        write(root / f"d{i}" / ".metadata", data)
        write(root / f"d{i}" / "__0_0.distcp", b"\0" * 16)
    return root


def describe(root: Path):
    return formats.describe_checkpoint(root, list_files(root), root.name)


def peak_bytes(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_pickle_beyond_the_object_cap_is_not_read_and_its_parse_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_pickle, "MAX_OBJECTS", 100_000)
    root = checkpoint_of_metadata(tmp_path / "step-2", [dicts_pickle(600_000)])
    result = []
    peak = peak_bytes(lambda: result.append(describe(root)))
    d = result[0]
    assert d.complete is None, d.completeReason  # beyond a cap: not checked, neither whole nor broken
    assert d.completeReason == "not checked: d0/.metadata: builds more than 100000 objects: not read"
    assert peak < 100_000 * 250, peak  # 600,000 dicts would be over 40 MB


def test_failed_parses_are_not_kept_and_kept_parses_share_one_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_pickle, "MAX_OBJECTS", 100_000)
    monkeypatch.setattr(work_limit, "MAX_HELD_OBJECTS", 150_000)
    # Files each beyond the per-pickle cap: each failed parse is dropped, so the peak is one parse's.
    root = checkpoint_of_metadata(tmp_path / "step-3", [dicts_pickle(120_000)] * 4)
    peak = peak_bytes(lambda: [describe(root)])
    assert peak < 100_000 * 250 + 5_000_000, peak  # one parse, and the bytes of a few files, at most

    # Metadata that parses (each ~70,000 objects) but that together pass the checkpoint's memory bound.
    many = dcp_metadata_bytes([f"k{i}" for i in range(10_000)], [("__0_0.distcp", 0, 1)])
    root = checkpoint_of_metadata(tmp_path / "step-4", [many] * 3)
    d = describe(root)
    assert d.complete is None, d.completeReason
    assert "reached its memory bound (150000 objects)" in d.completeReason
    one = checkpoint_of_metadata(tmp_path / "step-5", [many])
    assert describe(one).complete is True


def test_one_huge_tuple_as_the_key_of_every_entry_is_kept_once_under_stand_in_keys():
    """A tuple of n items memoized once and used as the key of n entries: checking (and hashing)
    the key per entry made the parse quadratic (a 36 KB data.pkl took 9 s); a key of more than
    MAX_KEY_ITEMS items is now a stand-in, so each entry costs the same whatever n."""
    n = 20_000
    key = b"(" + b"K\x01" * n + b"t\x94"  # a tuple of n ones, memoized as 0
    body = b"}(" + (b"h\x00K\x02") * n + b"u"  # {memo[0]: 2} n times
    result = safe_pickle.loads(b"\x80\x04" + key + b"0" + body + b".")
    assert len(result) == n
    assert all(isinstance(k, safe_pickle.Opaque) and k.what == "key" for k in result)
    small = safe_pickle.loads(b"\x80\x04}(" + b"(K\x01K\x02t" * 1 + b"K\x03u.")
    assert small == {(1, 2): 3}
    at_cap = safe_pickle.loads(b"\x80\x04}((" + b"K\x01" * safe_pickle.MAX_KEY_ITEMS + b"tK\x03u.")
    assert list(at_cap) == [(1,) * safe_pickle.MAX_KEY_ITEMS]
