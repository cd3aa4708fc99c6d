"""Live sealing of checkpoints assembled across workers' volumes (output.volumePerWorker with
publish: Continuous), the operator's decisions, as pure functions.

Each worker's pod runs the sealing sidecar on its own volume (`agent watch --part`): it seals that
worker's part of a directory (its files, sizes and sha256) by the rules of one volume, and says so
in its log, a `sealed` line whose `part` is the worker. The operator publishes ONE Checkpoint per
directory, the union of the parts, assembled by the union pod (`agent scan|snapshot --parts N
--only DIR --expect W=DIGEST ...`: agent/parts.py, the end-of-job snapshot's own union code), once
every worker has sealed its part:

- expected: every worker of the job (`replicas`), whether its pod runs, has ended or is still to
  run. A worker whose pod failed is restarted with its group, and its next pod writes its part:
  a union of the parts sealed so far, published, would count the step as published and never be
  assembled again (hostile9 H9-1: Ready from worker 0's part alone, `complete: false`; then the
  end-of-job union, another digest, failed it as changed after sealing). So a directory some
  worker never seals a part of (a rank that never writes that step, or its last step's part
  written in place, which its sidecar leaves writable: agent/live_sealing.py) is never published
  live: the end-of-job snapshot assembles what exists (a DCP step without a rank's shard is then
  `complete: false`, the shard named);
- a part whose sidecar says it changed after it was sealed is never assembled live: the
  directory is left to the end-of-job snapshot, and a Checkpoint published from it fails
  (volume store) or keeps the sealed copy (s3 store), as one volume's live sealing does;
- the union pod assembles only the parts sealed (`--expect`: each worker's sealed digest; a part
  with other bytes, or a part of a worker not expected, makes the directory skipped, named),
  refuses conflicts by name as the end-of-job union does, and decides format and completeness
  over the union;
- each (directory, parts) is assembled once: a refusal is not tried again until a part changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping, Optional

from checkpoint_operator.protocol.results import ScanReport

EXPECT_FLAG = "--expect"
ONLY_FLAG = "--only"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def step_key(path: str) -> tuple[int, int, str]:
    """Oldest first: by the number a directory's name ends with (step-100), then by name."""
    match = _TRAILING_NUMBER.search(path)
    return (0, int(match.group(1)), path) if match else (1, 0, path)

Parts = tuple[tuple[int, str], ...]  # (worker, the digest of its sealed part), by worker


@dataclass
class PartSeals:
    """What the workers' sidecars said, as the operator read their logs."""

    sealed: dict[int, dict[str, str]] = field(default_factory=dict)   # worker -> directory -> part digest
    changed: dict[int, set[str]] = field(default_factory=dict)        # worker -> directories changed after sealing
    removed: set[str] = field(default_factory=set)                    # directories a sidecar said it removed

    def seal(self, worker: int, path: str, digest: str) -> None:
        self.sealed.setdefault(worker, {})[path] = digest
        self.changed.get(worker, set()).discard(path)  # sealed again (a restarted sidecar): its bytes now

    def remove(self, worker: int, path: str, digest: str) -> None:
        if self.sealed.get(worker, {}).get(path) == digest:
            del self.sealed[worker][path]
            self.removed.add(path)

    def change(self, worker: int, path: str) -> None:
        self.changed.setdefault(worker, set()).add(path)

    def reopened(self, kept: Collection[str]) -> None:
        """A resume step gave back every sealed part of a directory not `kept` (H9-3,
        agent/resume_parts.py): those parts are no longer sealed, and a union of them would publish
        bytes their restarted workers may write again. Forgotten: a restarted sidecar announces again
        what it still holds sealed, and seals anew what its worker writes."""
        keep = set(kept)
        self.sealed = {w: {p: d for p, d in paths.items() if p in keep} for w, paths in self.sealed.items()}
        self.changed = {w: {p for p in paths if p in keep} for w, paths in self.changed.items()}


@dataclass(frozen=True)
class Assemble:
    path: str
    parts: Parts

    @property
    def expect(self) -> dict[int, str]:
        return dict(self.parts)


@dataclass(frozen=True)
class WaitForParts:
    path: str
    workers: tuple[int, ...]

    @property
    def message(self) -> str:
        names = ", ".join(str(w) for w in self.workers)
        return (f"{self.path}: waiting for worker {names} to seal its part (a step a worker never writes is left "
                f"to the snapshot at the end of the job)")


@dataclass(frozen=True)
class LeftToSnapshot:
    path: str
    reason: str


Decision = Assemble | WaitForParts | LeftToSnapshot


def decide(workers: int, seals: PartSeals, published: Collection[str],
           tried: Collection[tuple[str, Parts]]) -> list[Decision]:
    """What to do with each directory a worker sealed a part of, in step order (the oldest first):
    assembled once each of the `workers` has sealed its part, whatever its pod's state (see
    above). `published`: directories with a Checkpoint of the job (or retired); `tried`: unions
    assembled already (published or refused)."""
    paths = {p for w in range(workers) for p in seals.sealed.get(w, {})}
    decisions: list[Decision] = []
    for path in sorted(paths - set(published), key=step_key):
        if path.startswith("-"):  # `--only -x` parses as a flag (and admission refuses it): not run
            decisions.append(LeftToSnapshot(path, "its name starts with '-', which the union pod's `--only` "
                                                  "cannot take"))
            continue
        changed = [w for w in range(workers) if path in seals.changed.get(w, set())]
        if changed:
            decisions.append(LeftToSnapshot(path, f"worker {changed[0]}'s part changed after it was sealed"))
            continue
        holding = {w: seals.sealed[w][path] for w in range(workers) if path in seals.sealed.get(w, {})}
        waiting = tuple(w for w in range(workers) if w not in holding)
        if waiting:
            decisions.append(WaitForParts(path, waiting))
            continue
        parts: Parts = tuple(sorted(holding.items()))
        if (path, parts) not in tried:
            decisions.append(Assemble(path, parts))
    return decisions


def next_union(decisions: Iterable[Decision]) -> Optional[Assemble]:
    """The union to assemble now (one pod at a time per job): the oldest step ready."""
    return next((d for d in decisions if isinstance(d, Assemble)), None)


def union_args(union: Assemble) -> list[str]:
    """The flags that restrict the union pod's scan to one directory and its sealed parts."""
    return [ONLY_FLAG, union.path, *[a for w, d in union.parts for a in (EXPECT_FLAG, f"{w}={d}")]]


def union_of_command(command: Iterable[str]) -> Optional[tuple[str, Parts]]:
    """The (directory, parts) a union pod's command assembles (from the pod this operator built:
    what it was for survives an operator restart); None for another command."""
    args = list(command)
    path: Optional[str] = None
    parts: list[tuple[int, str]] = []
    for flag, value in zip(args, args[1:]):
        if flag == ONLY_FLAG:
            path = value
        elif flag == EXPECT_FLAG:
            worker, _, digest = value.partition("=")
            if not worker.isdigit() or not _DIGEST.match(digest):
                return None
            parts.append((int(worker), digest))
    return (path, tuple(sorted(parts))) if path else None


def part_line_problem(pod_worker: Optional[int], line_part: Optional[int], workers: int) -> Optional[str]:
    """Why a sealed line of a worker's sidecar is not taken as that worker's part: the pod's label
    (set by the operator) decides whose volume it is, never the line."""
    if pod_worker is None or not 0 <= pod_worker < workers:
        return "its pod has no worker index of this job"
    if line_part != pod_worker:
        return f"it names part {line_part}, its pod is worker {pod_worker}'s"
    return None


def part_removals(worker: int, seals: PartSeals, retired: Iterable[tuple[str, str]],
                  kept: Collection[tuple[str, str]]) -> list[tuple[str, str]]:
    """What worker `worker`'s sidecar is asked to remove: its part of each retired union whose
    Checkpoint is gone (`kept`: (directory, union digest) of those still there, or held by another
    Checkpoint), named by the digest of its part (the sidecar removes a directory only if it still
    holds those bytes: never another worker's, never a part sealed anew since)."""
    mine = seals.sealed.get(worker, {})
    return [(path, mine[path]) for path, digest in retired if (path, digest) not in kept and path in mine]


def removed_everywhere(path: str, seals: PartSeals) -> bool:
    """Every worker that sealed a part of `path` said it removed it (and one did): its retirement
    can be forgotten, nothing of it is left to publish again."""
    return path in seals.removed and not any(path in paths for paths in seals.sealed.values())


def without_retired(scan: ScanReport, retired: Iterable[tuple[str, str]]) -> ScanReport:
    """The end-of-job snapshot's result without the directories retired while the job ran, whatever
    their digest now: a retired union's parts are removed by each worker's sidecar on its own, so
    what is left at the end may be some workers' parts only (another digest), never a checkpoint
    to publish again."""
    paths = {p for p, _ in retired}
    if not paths:
        return scan
    return scan.model_copy(update={"checkpoints": [c for c in scan.checkpoints if c.path not in paths]})


def published_paths(directories: Iterable[Optional[str]], retired: Mapping[str, str] | Iterable[str]) -> set[str]:
    return {d for d in directories if d} | set(retired)
