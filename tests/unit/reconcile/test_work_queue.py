"""The work queue: dedup, one reconcile in flight per key, requeue-after, backoff on errors."""

import asyncio
import threading
import time

from checkpoint_operator.reconcile.work_queue import WorkQueue


async def run_until(queue: WorkQueue, predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "queue did not get there"
        await asyncio.sleep(0.01)


async def test_a_burst_of_adds_is_one_reconcile_and_never_two_at_once():
    calls, in_flight, peak = [], [0], [0]
    lock = threading.Lock()
    release = threading.Event()

    def reconcile(key):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        release.wait(5)
        calls.append(key)
        with lock:
            in_flight[0] -= 1
        return None

    queue = WorkQueue(reconcile, workers=4, base_backoff=0.01)
    queue.start()
    try:
        for _ in range(1000):
            queue.add("hot")
        await run_until(queue, lambda: in_flight[0] == 1)
        for _ in range(1000):  # added while running: exactly one more run afterwards
            queue.add("hot")
        release.set()
        await run_until(queue, lambda: len(calls) == 2 and in_flight[0] == 0)
        await asyncio.sleep(0.1)
        assert calls == ["hot", "hot"] and peak[0] == 1
    finally:
        await queue.stop()


async def test_requeue_after_and_backoff_after_errors():
    times: dict = {"wait": [], "boom": []}

    def reconcile(key):
        times[key].append(time.monotonic())
        if key == "boom" and len(times[key]) < 3:
            raise RuntimeError("transient")
        if key == "wait" and len(times[key]) < 2:
            return 0.2
        return None

    errors = []
    queue = WorkQueue(reconcile, workers=2, base_backoff=0.05, on_error=lambda key, exc: errors.append(key))
    queue.start()
    try:
        queue.add("wait")
        queue.add("boom")
        await run_until(queue, lambda: len(times["wait"]) == 2 and len(times["boom"]) == 3)
        assert times["wait"][1] - times["wait"][0] >= 0.2
        gaps = [b - a for a, b in zip(times["boom"], times["boom"][1:])]
        assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # doubled
        assert errors == ["boom", "boom"]
    finally:
        await queue.stop()


async def test_delayed_adds_keep_the_earliest_and_an_immediate_add_wins():
    seen = []
    queue = WorkQueue(lambda key: seen.append((key, time.monotonic())), workers=1, base_backoff=0.01)
    queue.start()
    try:
        start = time.monotonic()
        queue.add("k", after=0.3)
        queue.add("k", after=5.0)  # later: ignored
        await run_until(queue, lambda: seen)
        assert 0.25 <= seen[0][1] - start < 2.0
        queue.add("x", after=5.0)
        queue.add("x")               # immediate wins
        await run_until(queue, lambda: len(seen) == 2)
        assert seen[1][0] == "x" and seen[1][1] - start < 2.0
    finally:
        await queue.stop()


async def test_nothing_runs_while_it_may_not_and_what_waits_runs_once_after():
    """A standby replica (kopf's peering paused it, or has not decided yet: hostile12 H12-1/2): keys
    wait queued, deduplicated, and a delayed one too; each runs once when the replica may act."""
    calls: list[str] = []
    may = [False]
    queue = WorkQueue(lambda key: calls.append(key), workers=2, base_backoff=0.01, may_run=lambda: may[0])
    queue.start()
    try:
        for _ in range(5):
            queue.add("a")
        queue.add("b", after=0.05)
        await asyncio.sleep(0.4)
        assert calls == [] and len(queue) == 2
        may[0] = True
        await run_until(queue, lambda: sorted(calls) == ["a", "b"])
        await asyncio.sleep(0.2)
        assert sorted(calls) == ["a", "b"]
    finally:
        await queue.stop()
