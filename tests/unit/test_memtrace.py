"""memtrace: the opt-in tracemalloc hook of `checkpoint-operator run` (CKPT_TRACEMALLOC=DIR)."""

import json
import signal
import tracemalloc

from checkpoint_operator import memtrace


def test_off_unless_the_environment_asks():
    before = signal.getsignal(signal.SIGUSR2)
    assert memtrace.install({}) is None
    assert not tracemalloc.is_tracing() and signal.getsignal(signal.SIGUSR2) is before


def test_sigusr2_writes_a_snapshot_and_its_traced_total(tmp_path):
    before = signal.getsignal(signal.SIGUSR2)
    try:
        out = memtrace.install({"CKPT_TRACEMALLOC": str(tmp_path / "snaps"), "CKPT_TRACEMALLOC_FRAMES": "3"})
        assert out == tmp_path / "snaps" and tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 3
        kept = [bytearray(100_000)]
        signal.raise_signal(signal.SIGUSR2)
        summary = json.loads((out / "snapshot-1.json").read_text())
        assert summary["traced"] >= 100_000 and summary["peak"] >= summary["traced"]
        snapshot = tracemalloc.Snapshot.load(str(out / "snapshot-1.pickle"))
        assert any(stat.size >= 100_000 for stat in snapshot.statistics("lineno"))
        assert kept
    finally:
        tracemalloc.stop()
        signal.signal(signal.SIGUSR2, before)
