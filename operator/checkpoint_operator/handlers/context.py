"""What every handler needs: the API client, the settings, and a way to record events."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import kopf

from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.kube import Kube

logger = logging.getLogger("checkpoint_operator")


@dataclass
class Context:
    kube: Kube
    config: OperatorConfig

    def event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on `obj` (through kopf's poster) and a log line."""
        log = logger.warning if type_ == "Warning" else logger.info
        meta = obj.get("metadata", {})
        log("%s %s/%s: %s: %s", obj.get("kind"), meta.get("namespace"), meta.get("name"), reason, message)
        try:
            kopf.event(obj, type=type_, reason=reason, message=message[:1024])
        except LookupError:  # outside kopf's context (unit tests, tools): the log line is enough
            pass

    def warn(self, obj: dict, reason: str, message: str) -> None:
        self.event(obj, "Warning", reason, message)

    def info(self, obj: dict, reason: str, message: str) -> None:
        self.event(obj, "Normal", reason, message)
