"""Watch streams of the emulated API: each change reaches only the watches of its resource and namespace.

``WatchHub.publish`` costs one selector check per interested watch (those of the object's resource in its
namespace, and the cluster-wide ones) and one serialization, whatever the number of objects or of watches
elsewhere. Events are queued per watch (``Watcher``); a watch whose client lags ``limit`` events behind is
closed, as the API server drops slow watchers (the client relists). The last ``window`` changes of each
resource are kept, so a watch can resume from a resourceVersion (``since``), as from the API server's
watch cache; an older one is answered 410 Expired by the emulator.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import attrs
from kmock._internal import references

from checkpoint_operator.local.store import ObjectKey, Stored

Resource = references.resource

WATCH_WINDOW = 4096        # events per resource a watch can resume from (by resourceVersion)
WATCH_QUEUE_LIMIT = 10_000  # events a watch client may lag behind before its watch is closed


def event_line(event_type: str, raw: bytes) -> bytes:
    """One line of a watch stream, around an object's stored JSON."""
    return b'{"type":"' + event_type.encode() + b'","object":' + raw + b"}\n"


@attrs.define(eq=False)
class Watcher:
    """One open watch stream: what it asks for and the events waiting to be sent to it."""

    resource: Resource
    filter: Any  # selectors.ObjectFilter
    user_agent: str
    limit: int
    pending: collections.deque[bytes] = attrs.field(factory=collections.deque)
    wakeup: asyncio.Event = attrs.field(factory=asyncio.Event)
    overflowed: bool = False

    @property
    def namespace(self) -> str | None:
        return self.filter.namespace

    def offer(self, event: bytes) -> None:
        if self.overflowed:
            return
        if len(self.pending) >= self.limit:
            self.overflowed = True  # the stream ends; the client relists, as after a dropped watch
            self.pending.clear()
        else:
            self.pending.append(event)
        self.wakeup.set()

    def end(self) -> None:
        """End the stream (its server went away): as an overflow, without the events."""
        self.overflowed = True
        self.pending.clear()
        self.wakeup.set()

    async def next_events(self, timeout: float | None) -> list[bytes] | None:
        """Every pending event (at least one), or None when the watch must end (timeout, overflow)."""
        while not self.pending and not self.overflowed:
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                return None
        if self.overflowed:
            return None
        events = list(self.pending)
        self.pending.clear()
        return events


@attrs.frozen
class Change:
    """One change of one object, as watches see it (and as the resumption window keeps it)."""
    rv: int
    key: ObjectKey
    type: str  # ADDED, MODIFIED, DELETED
    new: Stored | None  # None for DELETED
    old: Stored | None  # None for ADDED


class WatchHub:
    """Fans each change out to the watches of its resource and namespace (and the cluster-wide ones).

    A change costs one check per interested watch and one serialization, whatever the number of objects
    or of watches on other resources and namespaces. The last ``window`` changes of each resource are
    kept so that a watch can resume from a resourceVersion.
    """

    def __init__(self, window: int = WATCH_WINDOW) -> None:
        self._watchers: dict[tuple[Resource, str | None], set[Watcher]] = collections.defaultdict(set)
        self._recent: dict[Resource, collections.deque[Change]] = {}
        self._forgotten: dict[Resource, int] = {}  # newest rv that fell out of the window, per resource
        self.floor = 0  # resourceVersions up to this one cannot be resumed from (before a restart)
        self.window = window

    def open(self, watcher: Watcher) -> None:
        self._watchers[(watcher.resource, watcher.namespace)].add(watcher)

    def close(self, watcher: Watcher) -> None:
        key = (watcher.resource, watcher.namespace)
        self._watchers[key].discard(watcher)
        if not self._watchers[key]:
            del self._watchers[key]

    def all(self) -> list[Watcher]:
        return [watcher for watchers in self._watchers.values() for watcher in watchers]

    def publish(self, change: Change) -> None:
        resource, namespace, _ = change.key
        recent = self._recent.setdefault(resource, collections.deque())
        recent.append(change)
        if len(recent) > self.window:
            self._forgotten[resource] = recent.popleft().rv
        for watcher in (*self._watchers.get((resource, namespace), ()), *self._watchers.get((resource, None), ())):
            event = self.event_for(watcher, change)
            if event is not None:
                watcher.offer(event)

    def forget(self, rv: int) -> None:
        """Start again at ``rv`` (a restarted API server's watch cache): nothing older can be resumed from."""
        self._recent.clear()
        self._forgotten.clear()
        self.floor = rv

    def resumable(self, resource: Resource, rv: int) -> bool:
        return rv >= max(self._forgotten.get(resource, 0), self.floor)

    def since(self, watcher: Watcher, rv: int) -> list[bytes]:
        """The events of the window after ``rv`` that ``watcher`` would have seen."""
        events = []
        for change in self._recent.get(watcher.resource, ()):
            if change.rv > rv:
                event = self.event_for(watcher, change)
                if event is not None:
                    events.append(event)
        return events

    @staticmethod
    def event_for(watcher: Watcher, change: Change) -> bytes | None:
        """The event a watch sees: an object entering its selection is ADDED, one leaving it DELETED."""
        now = change.new is not None and watcher.filter.matches_stored(change.key, change.new)
        before = change.old is not None and watcher.filter.matches_stored(change.key, change.old)
        if now:
            return event_line("MODIFIED" if before else "ADDED", change.new.raw)  # type: ignore[union-attr]
        if before:
            return event_line("DELETED", change.old.raw)  # type: ignore[union-attr]
        return None
