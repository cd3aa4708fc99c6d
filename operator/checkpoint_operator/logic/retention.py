"""Which of a job's checkpoints to keep: `output.keep` and `output.retention` (pure).

One decision for both moments it is taken: as each checkpoint seals (publish: Continuous), over
the job's Ready Checkpoints, and at the end-of-job snapshot, over those plus what the snapshot
found. A checkpoint is kept when any rule keeps it:
- keepLatest N (`keep: N` is its short form): the N highest steps;
- keepEvery K: every step that is a multiple of K;
- keepBest {metric, mode, count}: the `count` best by that metric (only checkpoints that record it
  compete);
- always: the newest (highest step), the ones `select: latest` and `latestResumable` would pick
  (the newest found complete, or not checked when none was: a newest that is incomplete never
  costs the job the checkpoint it can resume from), checkpoints without a step, the root's files
  (directory ".", the final model, even when a step was read from them), and Checkpoints
  labelled `ckpt.dev/keep=true` (exempt, as Cerebras' SaveCheckpointState checkpoints are from
  KeepN).
Without any rule, everything is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, TypeVar

from checkpoint_operator.api.trainingjob import OutputSpec
from checkpoint_operator.logic.naming import ROOT_DIRECTORY

KEEP_LABEL = "ckpt.dev/keep"

T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    keep_latest: Optional[int] = None
    keep_every: Optional[int] = None
    best_metric: Optional[str] = None
    best_mode: str = "min"
    best_count: int = 1

    @property
    def keeps_all(self) -> bool:
        return self.keep_latest is None and self.keep_every is None and self.best_metric is None

    @classmethod
    def of(cls, output: OutputSpec) -> "Policy":
        """From an api.trainingjob.OutputSpec."""
        retention = output.retention
        latest = output.keep if output.keep is not None else (retention.keepLatest if retention else None)
        if retention is None:
            return cls(keep_latest=latest)
        best = retention.keepBest
        return cls(keep_latest=latest, keep_every=retention.keepEvery,
                   best_metric=best.metric if best else None, best_mode=best.mode if best else "min",
                   best_count=best.count if best else 1)


@dataclass(frozen=True)
class Entry:
    """What the decision needs of one checkpoint."""

    key: str                                   # the output directory (unique per job)
    step: Optional[int]
    metrics: Optional[Mapping[str, float]] = None
    exempt: bool = False                       # labelled ckpt.dev/keep=true
    order: str = ""                            # creation time or name: ties between equal steps
    complete: Optional[bool] = None            # status.complete: None is "not checked"
    resumable: bool = False


def best_of(entries: Sequence[Entry], metric: str, mode: str, count: int) -> list[Entry]:
    values = {e.key: value for e in entries if e.metrics and isinstance(value := e.metrics.get(metric), (int, float))}
    scored = [e for e in entries if e.key in values]
    sign = 1 if mode == "min" else -1
    # Ties: the later step wins (it is the one training went on from).
    scored.sort(key=lambda e: (sign * values[e.key], -(e.step or 0), e.key))
    return scored[:count]


def decide(entries: Sequence[Entry], policy: Policy) -> tuple[list[Entry], list[Entry]]:
    """(kept, dropped), each in the order given."""
    if policy.keeps_all:
        return list(entries), []
    # The root's files (the final model) are always kept and never compete, even with a step read
    # from them: they are not one of the steps of the run.
    stepped = [(e.step, e) for e in entries if e.step is not None and e.key != ROOT_DIRECTORY]
    with_step = [e for _, e in sorted(stepped, key=lambda pair: (pair[0], pair[1].order, pair[1].key), reverse=True)]
    kept = {e.key for e in entries if e.step is None or e.exempt or e.key == ROOT_DIRECTORY}
    if with_step:
        kept.add(with_step[0].key)
    for pool in (with_step, [e for e in with_step if e.resumable]):
        selectable = [e for e in pool if e.complete is True] or [e for e in pool if e.complete is None]
        if selectable:
            kept.add(selectable[0].key)  # what select: latest / latestResumable picks (the pool is newest first)
    if policy.keep_latest is not None:
        kept |= {e.key for e in with_step[:policy.keep_latest]}
    if policy.keep_every is not None:
        kept |= {e.key for e in with_step if e.step is not None and e.step % policy.keep_every == 0}
    if policy.best_metric is not None:
        kept |= {e.key for e in best_of(with_step, policy.best_metric, policy.best_mode, policy.best_count)}
    return [e for e in entries if e.key in kept], [e for e in entries if e.key not in kept]


def apply_keep(entries: list[T], keep: Optional[int], step_of: Callable[[T], Optional[int]]) -> tuple[list[T], list[T]]:
    """`output.keep` alone, on any entries (kept for callers of the first version)."""
    wrapped = [Entry(str(i), step_of(e)) for i, e in enumerate(entries)]
    kept, _ = decide(wrapped, Policy(keep_latest=keep))
    kept_ids = {int(e.key) for e in kept}
    return [e for i, e in enumerate(entries) if i in kept_ids], [e for i, e in enumerate(entries) if i not in kept_ids]
