"""Structured logs: plain text for humans, one JSON object per line for log pipelines."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                                 "level": record.levelname.lower(), "logger": record.name,
                                 "message": record.getMessage()}
        for key in ("k8s_ref", "k8s_skip"):
            if hasattr(record, key) and key == "k8s_ref":
                ref = getattr(record, key) or {}
                entry["object"] = {k: ref.get(k) for k in ("kind", "namespace", "name") if ref.get(k)}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kopf logs "Handler ... succeeded" for every event it hands us (they only queue keys): a
    # line per watch event of every object is noise, and CPU at thousands of objects.
    logging.getLogger("kopf.objects").setLevel(max(level, logging.WARNING))
