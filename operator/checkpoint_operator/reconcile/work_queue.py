"""A keyed, deduplicating work queue with one reconcile in flight per key (as controller-runtime's).

Why a queue on top of kopf, and not kopf daemons woken by an asyncio.Event per object: kopf
serialises the handlers of one object but cannot wake object A from an event of object B (a
Checkpoint becoming Ready must wake the jobs waiting for it; a job finishing must wake a
blocked deletion), and a daemon per object holds a task and a thread for each of 10,000
Checkpoints that have nothing to do. Here the operator's informer watches and keeps the indexes
(reconcile/informer.py), kopf peers and posts nothing but its own errors; each event only `add`s keys. The queue:

- deduplicates: a key already waiting is not added twice (a burst of 1,000 events on one hot
  Checkpoint is one reconcile), and a key added while it is being reconciled runs once more
  afterwards (never two at once);
- delays: `add(key, after=s)` (requeue-after, debouncing); the earliest due time wins;
- backs off per key after an error (reconcile_interval, doubled up to 60 s, reset on success);
- runs the synchronous reconcilers in a bounded thread pool (`workers`);
- runs nothing while `may_run()` says no (a standby replica: kopf's peering paused it, or has not
  decided yet): keys wait queued, deduplicated as ever, and run once it may.
A slow resync (resync_interval, minutes) re-adds every unfinished object: the safety net for a
lost event, not the way work gets done.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import time
from typing import Callable, Generic, Hashable, Iterable, Optional, TypeVar

logger = logging.getLogger("checkpoint_operator.queue")
MAX_BACKOFF = 60.0
MAY_RUN_POLL = 0.1  # seconds between looks at may_run() while the replica may not act
MAY_RUN_SAY_AFTER = 30.0  # seconds of waiting before it is logged (once per wait)

Key = TypeVar("Key", bound=Hashable)  # the operator's: (kind, namespace, name)


class WorkQueue(Generic[Key]):
    def __init__(self, reconcile: Callable[[Key], Optional[float]], *, workers: int, base_backoff: float,
                 on_error: Optional[Callable[[Key, BaseException], None]] = None,
                 may_run: Callable[[], bool] = lambda: True):
        """`reconcile(key)` returns requeue-after seconds, or None; none runs while `may_run()` is False."""
        self._reconcile, self._workers, self._base_backoff = reconcile, workers, base_backoff
        self._may_run = may_run
        self._on_error = on_error
        self._ready: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()       # in _ready, not yet taken
        self._running: set[Key] = set()      # being reconciled
        self._again: set[Key] = set()        # added while running: run once more afterwards
        self._due: dict[Key, float] = {}     # key -> earliest due time of a delayed add
        self._timers: list[tuple[float, int, Key]] = []  # heap of (due, seq, key)
        self._seq = 0
        self._failures: dict[Key, int] = {}
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="reconcile")
        self._tasks: list[asyncio.Task[None]] = []
        self.reconciles = 0

    # --- adding (from the loop or from any thread) ---------------------------------------
    def add(self, key: Key, after: float = 0.0) -> None:
        if self._in_loop():
            self._add(key, after)
        else:
            self._loop.call_soon_threadsafe(self._add, key, after)

    def add_all(self, keys: Iterable[Key], after: float = 0.0) -> None:
        for key in keys:
            self.add(key, after)

    def _in_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _add(self, key: Key, after: float) -> None:
        if after > 0:
            due = time.monotonic() + after
            if key in self._queued or self._due.get(key, float("inf")) <= due:
                return
            self._due[key] = due
            self._seq += 1
            heapq.heappush(self._timers, (due, self._seq, key))
            self._wake.set()
            return
        self._due.pop(key, None)
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    # --- running ----------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"reconcile-worker-{i}")
                       for i in range(self._workers)]
        self._tasks.append(asyncio.create_task(self._timer(), name="reconcile-timers"))

    async def stop(self, timeout: float = 10.0) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __len__(self) -> int:
        return len(self._queued) + len(self._due)

    async def _timer(self) -> None:
        while True:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                due, _, key = heapq.heappop(self._timers)
                if self._due.get(key) == due:
                    self._add(key, 0.0)
            self._wake.clear()
            timeout = self._timers[0][0] - now if self._timers else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def _until_it_may_run(self) -> None:
        waited, said = 0.0, False
        while not self._may_run():
            await asyncio.sleep(MAY_RUN_POLL)
            waited += MAY_RUN_POLL
            if waited >= MAY_RUN_SAY_AFTER and not said:
                said = True
                logger.info("reconciles wait: this replica may not act (kopf's peering has it paused, or has "
                            "not decided yet; %d keys queued)", len(self))

    async def _worker(self) -> None:
        while True:
            key = await self._ready.get()
            await self._until_it_may_run()  # the key stays queued meanwhile: an add does not repeat it
            self._queued.discard(key)
            self._running.add(key)
            requeue: Optional[float] = None
            logger.debug("reconcile %s", key)
            try:
                requeue = await self._loop.run_in_executor(self._pool, self._reconcile, key)
                logger.debug("reconciled %s -> %s", key, requeue)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - one object's error never stops the queue
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                requeue = min(MAX_BACKOFF, self._base_backoff * 2 ** (failures - 1))
                if self._on_error:
                    self._on_error(key, exc)
                logger.error("reconcile of %s failed (attempt %d, retrying in %.1f s)", key, failures, requeue,
                             exc_info=exc)
            finally:
                self.reconciles += 1
                self._running.discard(key)
            if key in self._again:
                self._again.discard(key)
                self._add(key, 0.0)
            elif requeue is not None:
                self._add(key, max(requeue, 0.001))
