"""What every handler needs: the API client, the settings, the indexes, the work queue, and a
way to record events.

Events are posted through the API client, not kopf's poster: reconciles run in the operator's
own work queue (reconcile/work_queue.py), outside kopf's per-object handler context that
`kopf.event()` needs. One POST per change of reason or message (never one per pass).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.kube import EVENTS, ApiError, Kube
from checkpoint_operator.logic.conditions import now_rfc3339

logger = logging.getLogger("checkpoint_operator")
COMPONENT = "checkpoint-operator"
MAX_EVENT_MESSAGE = 1024


@dataclass
class Context:
    kube: Kube
    config: OperatorConfig
    indexes: Any = None   # handlers.indexes.Indexes once kopf has started
    queue: Any = None     # handlers.queue.WorkQueue once kopf has started
    # (namespace, name) of a TrainingJob -> the Checkpoint uids its previous event showed it
    # using: a job that drops its uses label still wakes those Checkpoints (reconcile/wakeups.py)
    last_uses: dict = field(default_factory=dict)
    # (kind, namespace, name) -> resourceVersion of our own last write of that object: its
    # watch event needs no reconcile of the object itself (the writer acted on it already)
    own_writes: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    # The namespaces the operator serves (empty: every namespace): a ClusterCheckpoint's users are listed there.
    namespaces: list = field(default_factory=list)

    def event(self, obj: Any, type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on `obj` (an api model or a body) and a log line."""
        ref = _reference(obj)
        log = logger.warning if type_ == "Warning" else logger.info
        log("%s %s/%s: %s: %s", ref["kind"], ref["namespace"], ref["name"], reason, message)
        now = now_rfc3339()
        # A cluster-scoped object's Events go to the catalog namespace (the operator's): `kubectl describe`
        # finds them in any namespace, and the operator writes nothing in a namespace it does not serve.
        namespace = ref["namespace"] or self.config.catalog_namespace
        body = {"metadata": {"generateName": f"{ref['name'][:200]}.", "namespace": namespace},
                "involvedObject": {k: v for k, v in ref.items() if v or k != "namespace"},  # none: cluster-scoped
                "type": type_, "reason": reason, "message": message[:MAX_EVENT_MESSAGE],
                "source": {"component": COMPONENT}, "reportingComponent": COMPONENT, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now}
        try:
            self.kube.create(EVENTS, namespace, body)
        except (ApiError, OSError) as exc:  # an event is a courtesy: never fail a reconcile for it
            logger.warning("could not post event %s on %s/%s: %s", reason, ref["namespace"], ref["name"], exc)

    def wrote(self, body: Optional[dict]) -> None:
        """Remember that `body` (as an API write returned it) is our own doing."""
        meta = (body or {}).get("metadata") or {}
        if body and meta.get("resourceVersion"):
            self.own_writes[(body.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))] = \
                meta["resourceVersion"]

    def warn(self, obj: Any, reason: str, message: str) -> None:
        self.event(obj, "Warning", reason, message)

    def info(self, obj: Any, reason: str, message: str) -> None:
        self.event(obj, "Normal", reason, message)


def _reference(obj: Any) -> dict:
    if hasattr(obj, "metadata") and not isinstance(obj, dict):
        meta: Optional[Any] = obj.metadata
        return {"apiVersion": obj.apiVersion, "kind": obj.kind, "name": meta.name, "namespace": meta.namespace,
                "uid": meta.uid}
    meta = obj.get("metadata", {})
    return {"apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""), "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""), "uid": meta.get("uid", "")}
