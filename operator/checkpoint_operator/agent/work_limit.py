"""How much parsing one checkpoint's checks may do: a budget of steps (pickle opcodes, msgpack
objects, GGUF entries, tar members, zip entries), so a checkpoint crafted to be slow to read
costs a bounded time, in proportion to its size as its hashing does.

Each step is a few microseconds of Python; reading a byte to hash it, a nanosecond. A budget of
MIN_STEPS (a few seconds at worst), or one step per BYTES_PER_STEP bytes of the checkpoint when
that is more, keeps the checks within a small multiple of the hashing for any content, while a
real checkpoint (tens of opcodes per tensor) never comes near it.
"""

from __future__ import annotations

MIN_STEPS = 2_000_000
BYTES_PER_STEP = 16


class OverBudget(Exception):
    """The checkpoint's checks used their budget: what is left is not checked."""


class WorkBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @classmethod
    def for_bytes(cls, total_bytes: int) -> "WorkBudget":
        return cls(max(MIN_STEPS, total_bytes // BYTES_PER_STEP))

    def spend(self, steps: int = 1) -> None:
        self.used += steps
        if self.used > self.limit:
            raise OverBudget(f"the checks of this checkpoint reached their work limit ({self.limit} steps)")

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @classmethod
    def unlimited(cls) -> "WorkBudget":
        """For callers that check one file on their own (tools, tests): the per-file caps still hold."""
        return cls(2**62)
