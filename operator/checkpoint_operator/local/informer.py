"""Watch-backed caches of API objects and a work queue: what makes the local cluster react.

``Informer`` keeps one resource (in one namespace, or everywhere) in memory the way client-go's
reflector does: LIST, replace the cache (objects missing from the list count as deleted), then
WATCH from the list's resourceVersion until the stream ends or fails, and start over. A server
that ignores ``resourceVersion`` on a watch (kmock 0.8 replays the current objects as ADDED
events) is fine: a replayed object whose resourceVersion is already cached changes nothing.
Every change calls ``on_change(old, new)`` (``new`` is None for a deletion) from the event loop.

``WorkQueue`` runs an async handler for keys: a key added while queued is queued once; a key
added while its handler runs runs again afterwards (never twice at the same time); a handler
that raises is retried after a backoff. Controllers stay level-based: a handler reads the
current object from a cache, so coalesced or repeated keys are harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from typing import Any

import aiohttp

from checkpoint_operator.local.server import ApiClient, ApiError, resource_path

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
ChangeHandler = Callable[["dict | None", "dict | None"], None]
WATCH_TIMEOUT_SECONDS = 300  # a watch stream is renewed (relist + watch) this often at the latest
RELIST_BACKOFF = (0.1, 0.5, 2.0)  # seconds after a failed list/watch, growing


def key_of(obj: dict) -> Key:
    return obj["metadata"].get("namespace") or "", obj["metadata"]["name"]


def _rv(obj: dict | None) -> int | None:
    """The resourceVersion as a number where it is one (the emulator's and etcd's are)."""
    text = (obj or {}).get("metadata", {}).get("resourceVersion")
    return int(text) if isinstance(text, str) and text.isdigit() else None


def is_newer(candidate: dict, current: dict | None) -> bool:
    """Whether ``candidate`` is a later state than ``current`` (unknown: assume it is)."""
    new, old = _rv(candidate), _rv(current)
    if current is None or new is None or old is None:
        return True
    return new > old


class Informer:
    """A cache of one resource kept current by list + watch."""

    def __init__(self, api: ApiClient, resource: str, namespace: str | None, on_change: ChangeHandler) -> None:
        self.api = api
        self.resource = resource
        self.namespace = namespace
        self.on_change = on_change
        self.objects: dict[Key, dict] = {}
        self.synced = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"informer {self.resource} {self.namespace or '*'}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def get(self, namespace: str, name: str) -> dict | None:
        return self.objects.get((namespace, name))

    def __iter__(self) -> Iterator[dict]:
        return iter(list(self.objects.values()))

    def observe(self, obj: dict | None) -> None:
        """Take an object the API just returned (a write's answer) if it is newer than the cache:
        a controller's next decision then already sees its own last write. An answer with a
        deletionTimestamp and no finalizer left is the object the write removed (the API deletes it
        then): taken as its deletion, never put back into the cache after the watch's DELETED event."""
        if obj and obj.get("metadata", {}).get("name"):
            meta = obj["metadata"]
            removed = bool(meta.get("deletionTimestamp")) and not meta.get("finalizers")
            self._apply("DELETED" if removed else "MODIFIED", obj)

    def forget(self, namespace: str, name: str) -> None:
        """The object was deleted for good (a DELETE answered 404 or removed it)."""
        old = self.objects.pop((namespace, name), None)
        if old is not None:
            self.on_change(old, None)

    # -- list + watch -----------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                resource_version = await self._relist()
                failures = 0
                await self._watch(resource_version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: relist after a pause
                logger.debug("local cluster: watch of %s failed: %s", self.resource, exc)
                await asyncio.sleep(RELIST_BACKOFF[min(failures, len(RELIST_BACKOFF) - 1)])
                failures += 1

    async def _relist(self) -> str | None:
        body = await self.api.request("GET", resource_path(self.resource, self.namespace))
        listed = {key_of(obj): obj for obj in body.get("items") or []}
        for key in [k for k in self.objects if k not in listed]:
            self.on_change(self.objects.pop(key), None)
        for obj in listed.values():
            self._apply("ADDED", obj)
        self.synced.set()
        return (body.get("metadata") or {}).get("resourceVersion")

    async def _watch(self, resource_version: str | None) -> None:
        params = {"watch": "true", "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS), "allowWatchBookmarks": "true"}
        if resource_version:
            params["resourceVersion"] = resource_version
        url = self.api.base_url + resource_path(self.resource, self.namespace)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url, params=params) as response:
            if response.status >= 400:
                raise ApiError(response.status, await response.text(), "GET", url)
            async for event in _json_lines(response.content):
                if event.get("type") == "ERROR":  # e.g. 410 Gone: the version is too old; relist
                    raise ApiError(event["object"].get("code", 500), event["object"], "WATCH", url)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply(event["type"], event["object"])

    def _apply(self, event_type: str, obj: dict) -> None:
        key = key_of(obj)
        current = self.objects.get(key)
        if event_type == "DELETED":
            if current is not None and current["metadata"].get("uid") == obj["metadata"].get("uid"):
                del self.objects[key]
                self.on_change(current, None)
            return
        same_object = current is not None and current["metadata"].get("uid") == obj["metadata"].get("uid")
        if same_object and not is_newer(obj, current):
            return  # a replay, or an event older than a write we already observed
        self.objects[key] = obj
        if current is not None and not same_object:
            self.on_change(current, None)  # deleted and re-created under the same name
            current = None
        self.on_change(current, obj)


async def _json_lines(stream: aiohttp.StreamReader) -> AsyncIterator[dict]:
    """The events of a watch stream, one JSON object a line (lines of any length)."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)


class WorkQueue:
    """Keys to reconcile, handled by ``workers`` tasks; see the module's docstring."""

    def __init__(self, name: str, handler: Callable[[Any], Awaitable[None]], *, workers: int = 4,
                 retry_delays: tuple[float, ...] = (0.2, 1.0, 5.0)) -> None:
        self.name = name
        self.handler = handler
        self.retry_delays = retry_delays
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._queued: set[Hashable] = set()
        self._running: set[Hashable] = set()
        self._again: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._tasks = [asyncio.create_task(self._work(), name=f"{name} worker {i}") for i in range(workers)]

    def add(self, key: Hashable) -> None:
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_later(self, key: Hashable, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, key)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._running.add(key)
            try:
                await self.handler(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried with a backoff; one key cannot stop the rest
                failures = self._failures.get(key, 0)
                self._failures[key] = failures + 1
                delay = self.retry_delays[min(failures, len(self.retry_delays) - 1)]
                log = logger.debug if isinstance(exc, ApiError) and exc.status in (404, 409, 422) else logger.warning
                log("local cluster: %s %s failed (retry in %.1f s): %s", self.name, key, delay, exc,
                    exc_info=not isinstance(exc, ApiError))
                self.add_later(key, delay)
            finally:
                self._running.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.add(key)
