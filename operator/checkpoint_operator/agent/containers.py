"""Container directories of step checkpoints: `checkpoints/checkpoint_0..2/` is three checkpoints.

Accelerate's `ProjectConfiguration(automatic_checkpoint_naming=True)` saves into
`<project>/checkpoints/checkpoint_<N>/`; an Orbax `CheckpointManager` on a subdirectory writes
`<dir>/<step>/`. Such a top-level directory is not one checkpoint but a shelf of them. It is
a container when all of this holds (a pure function of its entries):
  - its own name carries no step (`step-100/` with `0/`, `1/` inside stays one checkpoint);
  - it holds no file (hidden names aside): a file beside the step directories, such as
    DeepSpeed's `latest` or Megatron's `latest_checkpointed_iteration.txt`, says the whole
    directory is what its framework loads, so it stays one checkpoint;
  - every subdirectory that is not hidden and not marked unfinished (`*.tmp`,
    `*.orbax-checkpoint-tmp-*`) carries a step in its name (`checkpoint_0`, `step-5`, `100`),
    and there is at least one; nothing else (no symlink, no special file) is inside.
Each step subdirectory is then its own checkpoint, with path `<dir>/<child>`; hidden and
unfinished children are skipped with a reason, as at the top level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from checkpoint_operator.agent import formats

HIDDEN = "hidden name"


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "dir", "file" or "other" (symlink, fifo, socket, device), as listed, links not followed


@dataclass(frozen=True)
class Split:
    checkpoints: list[str]          # child directories that are step checkpoints
    skipped: list[tuple[str, str]]  # (child, reason)


def split_container(name: str, entries: Iterable[Entry]) -> Optional[Split]:
    """The step checkpoints of the directory `name` with these entries, or None when it is not
    a container (it is then one checkpoint, as before). Stops reading `entries` at the first
    that rules it out."""
    if formats.step_from_name(name) is not None:
        return None
    checkpoints, skipped, unfinished = [], [], 0
    for entry in entries:
        if entry.name.startswith("."):
            skipped.append((entry.name, HIDDEN))  # .DS_Store: no reason to stay whole
            continue
        if entry.kind != "dir":
            return None
        marker = formats.unfinished_marker(entry.name)
        if marker:
            skipped.append((entry.name, f"name marks an unfinished write ({marker!r})"))
            unfinished += 1
        elif formats.step_from_name(entry.name) is not None:
            checkpoints.append(entry.name)
        else:
            return None
    if not checkpoints and not unfinished:
        return None
    return Split(sorted(checkpoints, key=_name_key), sorted(skipped, key=lambda s: _name_key(s[0])))


def _name_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")
