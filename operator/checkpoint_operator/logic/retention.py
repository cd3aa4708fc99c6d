"""`output.keep: N`: which scanned checkpoints become Checkpoints."""

from __future__ import annotations

from typing import Optional, TypeVar

T = TypeVar("T")


def apply_keep(entries: list[T], keep: Optional[int], step_of) -> tuple[list[T], list[T]]:
    """Keep the `keep` entries with the highest steps; entries without a step (such as the
    final model at the root) are not part of the step sequence and are always kept."""
    if keep is None:
        return list(entries), []
    with_step = sorted((e for e in entries if step_of(e) is not None), key=step_of, reverse=True)
    dropped_ids = {id(e) for e in with_step[keep:]}
    kept = [e for e in entries if id(e) not in dropped_ids]
    dropped = [e for e in entries if id(e) in dropped_ids]
    return kept, dropped
