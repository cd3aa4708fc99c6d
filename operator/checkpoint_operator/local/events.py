"""Events of the local cluster's controllers, posted as a real controller's event recorder posts them.

One ``v1`` Event per (object, reason, message); a repeat bumps its ``count`` and ``lastTimestamp``
instead of adding another (client-go's correlator does the same). Events about cluster-scoped
objects (a PersistentVolume, a VolumeSnapshotContent) go to the ``default`` namespace, as in a
real cluster. The recorder remembers at most ``MAX_REMEMBERED`` events (the oldest is forgotten:
its next repeat is posted as a new Event).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from checkpoint_operator.local.kubelet import meta, now_rfc3339
from checkpoint_operator.local.server import ApiClient, ApiError

logger = logging.getLogger(__name__)

EVENTS = "v1/events"
MAX_REMEMBERED = 10_000
WARNING, NORMAL = "Warning", "Normal"


class EventRecorder:
    def __init__(self, api: ApiClient, component: str) -> None:
        self.api = api
        self.component = component
        self._posted: OrderedDict[tuple[str, str, str], tuple[str, str, int]] = OrderedDict()  # -> (ns, name, count)

    async def post(self, obj: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        """Post (or count again) one event about `obj`; a failure to post is logged, never raised."""
        metadata = meta(obj)
        key = (metadata.get("uid", ""), reason, message)
        namespace = metadata.get("namespace") or "default"
        try:
            seen = self._posted.get(key)
            if seen is not None:
                ns, name, count = seen
                await self.api.patch(EVENTS, ns, name, {"count": count + 1, "lastTimestamp": now_rfc3339()})
                self._posted[key] = (ns, name, count + 1)
                self._posted.move_to_end(key)
                return
            now = now_rfc3339()
            created = await self.api.create(EVENTS, namespace, {
                "metadata": {"generateName": f"{metadata.get('name', 'object')[:200]}."},
                "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", ""),
                                   "name": metadata.get("name"), "namespace": metadata.get("namespace"),
                                   "uid": metadata.get("uid"),
                                   "resourceVersion": metadata.get("resourceVersion")},
                "reason": reason, "message": message, "type": event_type, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now, "source": {"component": self.component},
                "reportingComponent": self.component})
            self._posted[key] = (namespace, created["metadata"]["name"], 1)
            while len(self._posted) > MAX_REMEMBERED:
                self._posted.popitem(last=False)
        except ApiError as exc:
            self._posted.pop(key, None)
            logger.debug("local cluster: could not post event %s %s: %s", reason, message, exc)

    def posted(self, obj: Mapping[str, Any], reason: str) -> bool:
        """Whether an event with this reason was posted about `obj` (by this recorder)."""
        uid = meta(obj).get("uid", "")
        return any(k[0] == uid and k[1] == reason for k in self._posted)
