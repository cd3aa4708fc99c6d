"""When the operator hands the memory its allocator holds free back to the system (issue 22 item 4).

A burst of work (the start-up's list of 10,000 Checkpoints, all in flight at once while kopf
indexes them; a relist after a lost watch) frees much of what it allocated once it is over, but
glibc's malloc keeps the freed pages: the process's RSS stays near the burst's high-water mark.
`malloc_trim(0)` returns the free pages to the system (malloc.py). It costs a walk of the
allocator's free chunks and one `madvise` per free run of pages (5.5 ms for 32 MB, after the
start-up with 10,000 Checkpoints), and a page given back costs a page fault when it is used
again, so a trim happens only when it is worth it:

- once work is over: nothing handled for `quiet` seconds (kopf's per-object workers outlive
  their last event by its `idle_timeout`, 5 s, before they exit and free what they hold); under
  work that never pauses, after `max_wait` of it anyway;
- when enough is free in malloc (`min_free`; not known where glibc has no `mallinfo2`) and the
  RSS grew by as much since the last trim (what a trim gave back and is still free is not worth
  another);
- not more often than every `min_interval`.

Between bursts a look compares two counts: memory is read only once work is over. Pure: the
caller looks every `check_every` seconds with the clock and a count of what the operator
handled, and trims when `look` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

MIB = 1024 * 1024


@dataclass(frozen=True)
class TrimPolicy:
    check_every: float = 1.0  # seconds between looks
    quiet: float = 10.0  # seconds without anything handled after which work is over
    min_free: int = 16 * MIB  # bytes free in malloc, and of RSS growth since the last trim, worth a trim
    min_interval: float = 30.0  # seconds from one trim to the next, at least
    max_wait: float = 600.0  # seconds of work without a pause after which a trim is considered anyway


@dataclass(frozen=True)
class Memory:
    rss: Optional[int]  # the process's resident bytes (None: not known)
    free: Optional[int]  # bytes malloc holds free (None: not known)


def trim_due(policy: TrimPolicy, memory: Memory, rss_after_last_trim: Optional[int]) -> bool:
    """Is a trim worth it, with this much memory free and the RSS it left last time (None: no trim yet)?"""
    if memory.free is not None and memory.free < policy.min_free:
        return False
    if rss_after_last_trim is not None and memory.rss is not None:
        return memory.rss - rss_after_last_trim >= policy.min_free
    return True


@dataclass
class TrimTracker:
    """What the trimmer remembers between looks."""

    policy: TrimPolicy = field(default_factory=TrimPolicy)
    activity: Optional[int] = None  # the count of things handled, at the last look
    changed: float = 0.0  # when that count last moved
    work_since: Optional[float] = None  # when work not yet followed by a decision began (None: none)
    last_trim: Optional[float] = None
    rss_after_trim: Optional[int] = None

    def look(self, *, now: float, activity: int, measure: Callable[[], Memory]) -> bool:
        """Trim now? `activity` moves whenever the operator handles something; `measure` is
        called only when a trim may be due."""
        if activity != self.activity:
            self.activity, self.changed = activity, now
            if self.work_since is None:
                self.work_since = now
        if self.work_since is None:
            return False  # nothing handled since the last decision: nothing freed since
        over = now - self.changed >= self.policy.quiet
        if not over and now - self.work_since < self.policy.max_wait:
            return False
        if self.last_trim is not None and now - self.last_trim < self.policy.min_interval:
            return False  # the work stays pending: decided at a later look
        self.work_since = None
        return trim_due(self.policy, measure(), self.rss_after_trim)

    def trimmed(self, *, now: float, rss: Optional[int]) -> None:
        self.last_trim, self.rss_after_trim = now, rss
