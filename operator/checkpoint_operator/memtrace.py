"""An opt-in memory trace of the operator process, for finding what it keeps (off by default).

`CKPT_TRACEMALLOC=DIR` in `checkpoint-operator run`'s environment starts tracemalloc (with
`CKPT_TRACEMALLOC_FRAMES` frames per allocation, default 10) before the operator starts, and each
SIGUSR2 writes `DIR/snapshot-N.pickle` (a `tracemalloc.Snapshot`) and then `DIR/snapshot-N.json`
(`{"traced": bytes, "peak": bytes}`, the traced total when it was taken). Compare two with
`tracemalloc.Snapshot.load(a).compare_to(Snapshot.load(b), "traceback")`. tracemalloc slows the
process (about twice the CPU) and its own bookkeeping adds to the RSS: measure RSS without it.
`bench/scale.py --memory N --trace DIR` uses it (docs/performance.md).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Mapping, Optional

ENV = "CKPT_TRACEMALLOC"
FRAMES_ENV = "CKPT_TRACEMALLOC_FRAMES"


def install(environ: Mapping[str, str] = os.environ) -> Optional[Path]:
    """Start tracing and the SIGUSR2 dump when the environment asks for it; the directory, or None."""
    directory = environ.get(ENV)
    if not directory:
        return None
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(int(environ.get(FRAMES_ENV, "10")))
    numbers = itertools.count(1)

    def dump(signum: int, frame: Optional[FrameType]) -> None:
        dump_snapshot(out, next(numbers))

    signal.signal(signal.SIGUSR2, dump)
    return out


def dump_snapshot(out: Path, number: int) -> Path:
    """Write snapshot-NUMBER.pickle, then snapshot-NUMBER.json (its presence says both are complete)."""
    traced, peak = tracemalloc.get_traced_memory()
    tracemalloc.take_snapshot().dump(str(out / f"snapshot-{number}.pickle"))
    summary = out / f"snapshot-{number}.json"
    summary.with_suffix(".tmp").write_text(json.dumps({"traced": traced, "peak": peak}))
    summary.with_suffix(".tmp").rename(summary)
    return summary
