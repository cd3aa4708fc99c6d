"""How much parsing one checkpoint's checks may do: a budget of steps (pickle opcodes, msgpack
objects, GGUF entries, tar members, zip entries), so a checkpoint crafted to be slow to read
costs a bounded time, in proportion to its size as its hashing does.

Each step is a few microseconds of Python; reading a byte to hash it, a nanosecond. A budget of
MIN_STEPS (a few seconds at worst), or one step per BYTES_PER_STEP bytes of the checkpoint when
that is more, keeps the checks within a small multiple of the hashing for any content, while a
real checkpoint (tens of opcodes per tensor) never comes near it.
"""

from __future__ import annotations

from typing import Optional

MIN_STEPS = 2_000_000
BYTES_PER_STEP = 16
# Objects the parsed metadata of one checkpoint may keep in memory at once (its pickles, kept for
# the rules that read them): an object is 50-100 bytes, so about 150 MB at worst, whatever the
# checkpoint's size. A real torch DCP `.metadata` builds about 50 objects per tensor entry.
MAX_HELD_OBJECTS = 2_000_000


class OverBudget(Exception):
    """The checkpoint's checks used their budget: what is left is not checked."""


class WorkBudget:
    def __init__(self, limit: int, held_limit: Optional[int] = None) -> None:
        self.limit = limit
        self.used = 0
        self.held_limit = MAX_HELD_OBJECTS if held_limit is None else held_limit
        self.held = 0

    @classmethod
    def for_bytes(cls, total_bytes: int) -> "WorkBudget":
        return cls(max(MIN_STEPS, total_bytes // BYTES_PER_STEP))

    def spend(self, steps: int = 1) -> None:
        self.used += steps
        if self.used > self.limit:
            raise OverBudget(f"the checks of this checkpoint reached their work limit ({self.limit} steps)")

    def hold(self, objects: int) -> None:
        """`objects` built by a parse that is kept (a cached pickle): counted against the memory
        bound; OverBudget past it (the caller drops what it built)."""
        self.check_hold(objects)
        self.held += objects

    def check_hold(self, objects: int) -> None:
        """OverBudget when holding `objects` more would pass the memory bound (asked while parsing)."""
        if self.held + objects > self.held_limit:
            raise OverBudget(f"the parsed metadata of this checkpoint reached its memory bound ({self.held_limit} "
                             "objects)")

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @classmethod
    def unlimited(cls) -> "WorkBudget":
        """For callers that check one file on their own (tools, tests): the per-file caps still hold."""
        return cls(2**62)
