"""Giving the memory glibc's malloc holds free back to the system, when logic/memory_trim.py says.

The operator's start-up with many objects leaves its RSS at the start-up's high-water mark: kopf
holds every listed object's handlers until all are indexed, so all of them are in flight at
once, and once they are done glibc keeps the freed pages (docs/performance.md). `malloc_trim(0)`
gives back every free page of every arena; `mallinfo2` says how much is free. Both through ctypes
from the C library the interpreter runs on; where that is not glibc (musl, macOS) there is no
`malloc_trim` and the trimmer does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from typing import Callable, Optional

from checkpoint_operator.logic.memory_trim import MIB, Memory, TrimPolicy, TrimTracker

logger = logging.getLogger(__name__)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


class Glibc:
    """glibc's malloc_trim and mallinfo2 (2.33 and later; without it, free bytes are not known)."""

    def __init__(self, libc: ctypes.CDLL):
        self._trim = libc.malloc_trim
        self._trim.argtypes, self._trim.restype = [ctypes.c_size_t], ctypes.c_int
        self._info: Optional[Callable[[], _Mallinfo2]] = None
        if hasattr(libc, "mallinfo2"):
            info = libc.mallinfo2
            info.argtypes, info.restype = [], _Mallinfo2
            self._info = info

    @classmethod
    def load(cls, libc: Optional[ctypes.CDLL] = None) -> Optional[Glibc]:
        """The running process's glibc (or `libc`'s), or None: another C library, or none to load."""
        if libc is None:
            try:
                libc = ctypes.CDLL(None)
            except OSError:
                return None
        return cls(libc) if hasattr(libc, "malloc_trim") else None

    def free_bytes(self) -> Optional[int]:
        """Bytes malloc holds free, in every arena (mallinfo2's fordblks)."""
        return None if self._info is None else int(self._info().fordblks)

    def trim(self) -> bool:
        """malloc_trim(0): True when some memory was given back."""
        return bool(self._trim(0))


class Activity:
    """A count that moves whenever the operator handles something (an index update, an event, a
    reconcile): the trimmer's sign of work. Ticked from the event loop and the reconcile threads;
    a tick lost to a race between them changes nothing (any change is work)."""

    def __init__(self) -> None:
        self.count = 0

    def tick(self) -> None:
        self.count += 1

    def __call__(self) -> int:
        return self.count


def rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _mb(value: Optional[int]) -> str:
    return "?" if value is None else f"{value / MIB:.0f}"


def start_trimmer(activity: Callable[[], int], policy: TrimPolicy,
                  libc: Optional[Glibc] = None) -> Optional[asyncio.Task[None]]:
    """Look every `policy.check_every` seconds and trim when due; None where there is no glibc.
    `activity`: a count that moves whenever the operator handles something (events, reconciles)."""
    libc = libc or Glibc.load()
    if libc is None:
        logger.info("no glibc malloc_trim here: freed memory is left to the C library")
        return None
    glibc = libc
    tracker = TrimTracker(policy)

    async def trimmer() -> None:
        while True:
            await asyncio.sleep(policy.check_every)
            try:
                memory = Memory(None, None)

                def measure() -> Memory:
                    nonlocal memory
                    memory = Memory(rss=rss_bytes(), free=glibc.free_bytes())
                    return memory
                if not tracker.look(now=time.monotonic(), activity=activity(), measure=measure):
                    continue
                started = time.process_time()
                # In a thread: the trim holds malloc's locks, not the GIL (ctypes releases it).
                await asyncio.to_thread(glibc.trim)
                cpu_ms = (time.process_time() - started) * 1000  # the process's, in that time: mostly the trim's
                after = rss_bytes()
                tracker.trimmed(now=time.monotonic(), rss=after)
                logger.info("gave freed memory back to the system: RSS %s -> %s MB (%s MB free in malloc), "
                            "%.1f ms of CPU", _mb(memory.rss), _mb(after), _mb(memory.free), cpu_ms)
            except Exception:  # noqa: BLE001 - memory is not worth stopping for; the next look tries again
                logger.exception("memory trim failed")
    return asyncio.create_task(trimmer(), name="malloc-trim")
