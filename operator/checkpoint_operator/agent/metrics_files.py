"""The few numbers a checkpoint says about itself (for `retention.keepBest` and `select: best`).

Read from what frameworks already write, through the bounded readers of safe_read (no file is
loaded whole past their caps):
- `metrics.json` at the checkpoint's root, a flat JSON object of names to numbers (the
  documented way for any framework: `{"eval_loss": 0.41, "accuracy": 0.88}`), wins;
- else a Transformers `trainer_state.json`: the `log_history` entries logged at the
  checkpoint's `global_step` (the training loss, the evaluation's `eval_*` values) and
  `best_metric`.
At most MAX_METRICS names (sorted, the first ones), each a short name, each value a finite number
(NaN, Infinity and numbers beyond MAX_METRIC are ignored, with a note on the checkpoint).
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional

from checkpoint_operator.agent import metadata as md
from checkpoint_operator.agent.safe_read import CheckpointFiles, Unreadable, is_too_big, quoted

METRICS_FILE = "metrics.json"
MAX_METRICS = 16
MAX_METRIC = 1e300  # a finite float the status (JSON, then the API server's float64) carries as is
METRIC_NAME = re.compile(r"^[A-Za-z0-9_.\-/]{1,63}$")


def _numbers(values: dict[str, Any], into: dict[str, float], files: CheckpointFiles, rel: str) -> None:
    for key, value in values.items():
        if not (isinstance(key, str) and METRIC_NAME.match(key)):
            continue
        if is_too_big(value) or (isinstance(value, float) and not math.isfinite(value)):
            files.note(rel, f"metric {quoted(key)}: {quoted(value, 24)} is not a finite number in range")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= MAX_METRIC:
            into[key] = float(value)


def _bounded(found: dict[str, float]) -> Optional[dict[str, float]]:
    if not found:
        return None
    return {k: found[k] for k in sorted(found)[:MAX_METRICS]}


def checkpoint_metrics(files: CheckpointFiles) -> Optional[dict[str, float]]:
    """The checkpoint's metrics, or None when it records none. A file that cannot be read safely,
    or a value that is not a finite number in range, is ignored and noted on `files`."""
    if files.has(METRICS_FILE):
        try:
            data = files.json(METRICS_FILE)
        except Unreadable:
            data = None
        if isinstance(data, dict):
            found: dict[str, float] = {}
            _numbers(data, found, files, METRICS_FILE)
            return _bounded(found)
        if data is not None:
            files.note(METRICS_FILE, "not a JSON object: ignored")
    if not files.has(md.TRAINER_STATE):
        return None
    try:
        state = files.json(md.TRAINER_STATE)
    except Unreadable:
        return None
    if not isinstance(state, dict):
        return None
    found = {}
    step = state.get("global_step")
    history = state.get("log_history")
    if isinstance(history, list) and isinstance(step, int):
        for entry in history:
            if isinstance(entry, dict) and entry.get("step") == step:
                _numbers({k: v for k, v in entry.items() if k not in ("step", "epoch")}, found, files,
                         md.TRAINER_STATE)
    _numbers({"best_metric": state.get("best_metric")}, found, files, md.TRAINER_STATE)
    return _bounded(found)
