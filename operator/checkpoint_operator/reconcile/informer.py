"""The operator's own informer for every kind it watches: the custom resources (TrainingJobs,
Checkpoints, ClusterCheckpoints: their indexes, reconcile/indexes.py `ObjectIndex`) and the child
kinds it only watches to wake work (pods, batch Jobs, JobSets, PersistentVolumeClaims). kopf
watches none of them; it peers, serves the probes, and runs start-up and clean-up (main.py).

Why not kopf: kopf's per-event machinery (per-object queue workers and batching, cause detection,
memories, handler kwargs, invocation) cost 0.6-1 ms of CPU per watch event, most of the operator's
CPU per TrainingJob lifecycle (docs/performance.md, "The control plane's own cost per
lifecycle"), for handlers that only feed the indexes, the object cache and the wake-ups; and at
start-up kopf held every listed object in flight at once until all were indexed (the RSS
high-water mark with 10,000 Checkpoints). Here an event costs a json.loads and the callback, and a
LIST is applied page by page.

One `Reflector` per (resource, namespace) does what client-go's reflector does:

- LIST in pages (limit/continue), then WATCH from the list's resourceVersion with
  allowWatchBookmarks and a server timeout; a stream that ends is resumed from the last
  resourceVersion seen (an event's or a bookmark's);
- 410 Gone (an ERROR event, or the status of a LIST or WATCH) relists, after the same backoff
  as a failure (a server that answers every watch with 410 gets no LIST storm); after a relist the objects
  that vanished meanwhile are handed on as DELETED (`relist_changes`), so no index or cache keeps
  ghosts (kopf's relist did not: an object deleted in a watch outage stayed in its indexes); an
  object listed again unchanged is not handed on again, unless asked (`Reflector.relist`: every
  object again, as kopf's streams did when its peering resumed the replica);
- any other failure backs off (`Backoff`: doubling to a cap, reset by a watch that worked); a
  resource the API does not serve (a JobSet CRD, or one of the operator's own, not installed: 404) is retried every
  `ABSENT_RETRY` seconds without a log line per attempt, as kopf does; the objects known of it
  (its CRD removed while the watch was down) are handed on as DELETED.
- a target whose LIST fails (a 403: a Role missing in one namespace) holds no other: it counts as
  not listed (`Informer.unsynced`: what failed, with its HTTP status), start-up waits for it only
  `STARTUP_WAIT` seconds, and the reconciles of its namespace wait until it lists (main.py).

Each reflector runs in a thread of its own with the kubernetes client (`_preload_content` off:
the response is read as it streams, one json.loads per line), with the operator's credentials
(the Kube client's configuration: token refresh included) in a connection pool of its own (a
stream holds its connection for minutes). Every event is handed on under one lock, whatever its
kind: the callback sees one event at a time, in each object's order, as kopf's loop did.
"""

from __future__ import annotations

import copy
import json
from http import HTTPStatus
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import kubernetes

from checkpoint_operator.kube import ApiError, Kube, Resource

logger = logging.getLogger("checkpoint_operator.informer")

LIST_CHUNK = 500            # objects per LIST page (kopf's chunk_size was the same)
WATCH_TIMEOUT = 300         # seconds: the server ends a watch after this; it is resumed at once
READ_SLACK = 30             # seconds past the server timeout before a silent stream counts as dead
CONNECT_TIMEOUT = 10.0
STARTUP_WAIT = 30.0         # seconds start-up waits for a target whose first LIST keeps failing
QUICK_END = 1.0            # seconds: a watch ended sooner without an event backs off before the next
RETRY_CAP = 30.0            # seconds: the longest pause between retries (client-go's)
MAX_HELD = 10_000           # objects whose wake-up is held (one slim entry each); past it: wake all instead
ABSENT_CONFIRM = 5.0        # seconds before a 404 of a kind with known objects is asked again
ABSENT_RETRY = 60.0         # seconds between LISTs of a resource the API does not serve (kopf: 60 s)
USER_AGENT = "checkpoint-operator-informer"

ObjKey = tuple[str, str]  # (namespace, name)
Handler = Callable[[str, dict[str, Any]], None]  # (event type, body): ADDED, MODIFIED, DELETED


class Gone(Exception):
    """410: the resourceVersion (or a LIST's continue token) is too old: relist."""


@dataclass(frozen=True)
class Target:
    """What one reflector keeps: a resource, in one namespace (None: every namespace)."""

    resource: Resource
    namespace: Optional[str]
    label_selector: Optional[str] = None
    optional: bool = False  # a CRD that may be absent: 404 is retried slowly and quietly


def targets(resources: Iterable[tuple[Resource, Optional[str], bool]], namespaces: Iterable[str]) -> list[Target]:
    """One target per (resource, namespace) as `kopf.operator(clusterwide=..., namespaces=...)` watched
    them: every namespace when none are listed."""
    spaces: list[Optional[str]] = list(dict.fromkeys(namespaces)) or [None]
    return [Target(resource, namespace, selector, optional) for resource, selector, optional in resources
            for namespace in (spaces if resource.namespaced else [None])]  # cluster-scoped: one target


# --- pure pieces --------------------------------------------------------------------------------

def decode(line: bytes) -> Optional[tuple[str, dict[str, Any]]]:
    """One line of a watch stream: (type, object), or None for a blank line. An ERROR event with
    code 410 raises Gone; another ERROR raises ApiError."""
    if not line.strip():
        return None
    event = json.loads(line)
    kind, obj = event.get("type"), event.get("object") or {}
    if kind == "ERROR":
        code = int(obj.get("code") or 0)
        if code == 410:
            raise Gone(obj.get("message") or "")
        raise ApiError(code, str(obj.get("reason") or ""), str(obj.get("message") or ""))
    return str(kind), obj


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Whole lines from a stream read in chunks of any size (a line may span chunks)."""
    rest = b""
    for chunk in chunks:
        if not chunk:
            continue
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest.strip():
        yield rest


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a reflector remembers of an object (to hand on its DELETED after a relist): its kind and
    the metadata the handlers read (owners, labels), not its spec or status; of a TrainingJob also the
    uids of the inputs its status pins (a finished job's deletion wakes those Checkpoints from them:
    reconcile/wakeups.py; hostile12 H12-3), a few per job (the CRD bounds them)."""
    meta = body.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences")
            if k in meta}
    out: dict[str, Any] = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept}
    if body.get("kind") == "TrainingJob":
        status = body.get("status")
        inputs = status.get("inputs") if isinstance(status, dict) else None
        pins = [{"uid": p["uid"]} for p in inputs or [] if isinstance(p, dict) and isinstance(p.get("uid"), str)]
        if pins:
            out["status"] = {"inputs": pins}
    return out


HELD_LABELS = ("ckpt.dev/", "app.kubernetes.io/managed-by")  # the labels a wake-up reads


def held(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a held wake-up keeps of an object (Holding): its kind, name, owners and the operator's
    own labels: not its spec, status, annotations or managedFields (the cache and the pod index had
    the whole body at once). An unrelated claim is a few hundred bytes, not kilobytes."""
    meta = body.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp") if k in meta}
    owners = [{k: ref[k] for k in ("apiVersion", "kind", "name", "uid", "controller") if k in ref}
              for ref in meta.get("ownerReferences") or [] if isinstance(ref, dict)]
    if owners:
        kept["ownerReferences"] = owners
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k.startswith(HELD_LABELS)}
    if labels:
        kept["labels"] = labels
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept}


def key_of(body: Mapping[str, Any]) -> ObjKey:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def version_of(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")


def relist_changes(known: Mapping[ObjKey, Mapping[str, Any]],
                   listed: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """What a LIST changes against what was known: ADDED for a new object, MODIFIED for one whose
    resourceVersion moved (or another object under the same name), nothing for one unchanged, and
    DELETED (with what was known of it) for every known object the list no longer has."""
    seen: set[ObjKey] = set()
    for body in listed:
        seen.add(key_of(body))
        change = listed_change(known.get(key_of(body)), body)
        if change is not None:
            yield change, body
    for before in vanished(known, seen):
        yield "DELETED", before


def listed_change(before: Optional[Mapping[str, Any]], body: Mapping[str, Any]) -> Optional[str]:
    """What one listed object is against what was known of it: ADDED, MODIFIED or None (unchanged)."""
    if before is None:
        return "ADDED"
    if version_of(before) != version_of(body) or \
            (before.get("metadata") or {}).get("uid") != (body.get("metadata") or {}).get("uid"):
        return "MODIFIED"
    return None


def vanished(known: Mapping[ObjKey, Mapping[str, Any]], seen: Iterable[ObjKey]) -> list[Mapping[str, Any]]:
    """What was known of every object a LIST (all its pages) no longer has."""
    listed = seen if isinstance(seen, (set, frozenset)) else set(seen)
    return [before for key, before in list(known.items()) if key not in listed]


@dataclass
class Backoff:
    """Seconds to wait after the n-th failure in a row: doubling from `base` to `cap`, with jitter."""

    base: float = 0.8  # client-go's reflector: 800 ms doubling to 30 s
    cap: float = 30.0
    failures: int = 0

    def next(self, jitter: Callable[[], float] = random.random) -> float:
        delay = min(self.cap, self.base * 2 ** self.failures)
        self.failures += 1
        return float(delay * (0.5 + 0.5 * jitter()))

    def reset(self) -> None:
        self.failures = 0


# --- the reflector --------------------------------------------------------------------------------

class Reflector:
    """LIST then WATCH one target, forever (until `stop`), handing every change to `handler`."""

    def __init__(self, api: kubernetes.client.ApiClient, target: Target, handler: Handler, lock: threading.Lock,
                 on_synced: Callable[[], None], *, on_list_failed: Callable[[], None] = lambda: None, watch_timeout: int = WATCH_TIMEOUT,
                 absent_retry: float = ABSENT_RETRY) -> None:
        self.api, self.target, self.handler, self.lock = api, target, handler, lock
        self.on_synced, self.on_list_failed = on_synced, on_list_failed
        self.watch_timeout, self.absent_retry = watch_timeout, absent_retry
        self.known: dict[ObjKey, dict[str, Any]] = {}
        self.version = ""  # the resourceVersion to resume a watch from ("": relist)
        self.synced = False
        self.error: Optional[str] = None  # why the last LIST failed (None: it did not)
        self.lists = self.watches = self.events = 0  # for tests and the bench
        self._stop = threading.Event()
        self._replay = threading.Event()  # `relist`: the next LIST hands on every object, unchanged too
        self._streamed = 0  # events the current watch brought (a 410 after some: the watch worked)
        self.absent_in_a_row = 0  # 404s of an optional kind in a row
        self._response: Any = None
        self.backoff = Backoff(cap=RETRY_CAP)
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"informer-{target.resource.plural}-{target.namespace or 'all'}")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            _abort(response)

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def relist(self) -> None:
        """End the current watch and LIST again, handing on every listed object (as MODIFIED when
        unchanged): what kopf's streams did as its peering resumed them (Holding)."""
        self._replay.set()
        response = self._response
        if response is not None:
            _abort(response)

    # --- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            listing = not self.version
            self._streamed = 0
            started = time.monotonic()
            try:
                if self._replay.is_set() and not listing:  # asked to relist (`relist`)
                    self.version = ""
                    continue
                if listing:
                    self._list()
                    listing = False  # what fails from here is the watch, not the LIST
                started = time.monotonic()
                if self._watch() or time.monotonic() - started >= QUICK_END:
                    self.backoff.reset()
                    self._worked()
                elif not self._replay.is_set():  # a stream that ends at once, again and again: not a busy loop
                    self._stop.wait(self.backoff.next())
            except Gone:
                if self._streamed or time.monotonic() - started >= QUICK_END:
                    self.backoff.reset()  # a watch that worked, then expired
                delay = self.backoff.next()
                logger.debug("%s: resourceVersion %s expired: relisting in %.1f s", self._name, self.version, delay)
                self.version = ""
                self._stop.wait(delay)
            except ApiError as exc:
                if exc.status == 404 and self.target.optional:
                    self._absent()
                    continue
                self._fail(exc, listing)
            except Exception as exc:  # noqa: BLE001 - a broken stream or connection: resume after a pause
                self._fail(exc, listing)

    def _absent(self) -> None:
        """An optional kind the API does not serve (now): nothing of it exists, so whatever was
        known of it (its CRD removed while the watch was down) is handed on as DELETED, once a
        second 404 in a row confirms it (one may be an API server or a CRD not ready yet: handing on
        every JobSet as deleted would make their jobs take their workloads for gone)."""
        self.absent_in_a_row += 1
        if self.known and self.absent_in_a_row < 2:
            self.version = ""
            self._stop.wait(ABSENT_CONFIRM)
            return
        with self.lock:
            for body in list(self.known.values()):
                self._apply("DELETED", dict(body))
        self._worked()
        if not self.synced:  # nothing of it exists: as good as listed
            self._mark_synced()
        self.version = ""
        self._stop.wait(self.absent_retry)

    def _fail(self, exc: BaseException, listing: bool = False) -> None:
        if self._stop.is_set():
            return
        if self._replay.is_set() and not listing:  # the watch `relist` ended: no failure, no pause
            self.version = ""
            return
        delay = self.backoff.next()
        if listing:
            self.error = list_error(self.target, exc)
            logger.warning("%s; %s; retrying in %.1f s", self.error,
                           "its namespace's reconciles wait for it" if not self.synced else "the cache keeps the last "
                           "listed objects", delay)
            self.on_list_failed()
        else:
            # A watch that fails after a good LIST (a Role that allows list but not watch, an API
            # server gone): the cache keeps the last objects; said in /healthz and the gauge too.
            self.error = list_error(self.target, exc, verb="watch")
            logger.warning("%s; the cache keeps the last listed objects; retrying in %.1f s", self.error, delay)
            self.on_list_failed()
        self._stop.wait(delay)

    def _worked(self) -> None:
        """A LIST or watch that worked after a failure: the target is healthy again."""
        if self.error is not None:
            self.error = None
            self.on_list_failed()  # (the informer's on_change: the gauge and /healthz follow)

    @property
    def _name(self) -> str:
        return f"{self.target.resource.plural} in {self.target.namespace or 'every namespace'}"

    def _request(self, query: dict[str, Optional[str]], read_timeout: float) -> Any:
        headers = {"Accept": "application/json"}
        params = [(k, v) for k, v in query.items() if v is not None]
        method, url, headers, _, _ = self.api.param_serialize(
            method="GET", resource_path=self.target.resource.path(self.target.namespace), query_params=params,
            header_params=headers, auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(method, url, header_params=headers,
                                         _request_timeout=(CONNECT_TIMEOUT, read_timeout))
        except kubernetes.client.ApiException as exc:
            raise _status_error(exc.status, exc.body or "") from None
        if response.status >= 400:
            raise _status_error(response.status, _body(response).decode(errors="replace"))
        return response

    def _list(self) -> None:
        """Each page is handed on as it arrives (ADDED or MODIFIED against what was known); only the
        keys seen are kept across pages, to hand on as DELETED what the whole list no longer has:
        the peak is one page of objects, not the whole kind."""
        seen: set[ObjKey] = set()
        token: Optional[str] = None
        version = ""
        replay = self._replay.is_set()
        self._replay.clear()
        while True:
            if self._stop.is_set():  # stopping: no page more (a LIST's response is not abortable)
                return
            query = {"labelSelector": self.target.label_selector, "limit": str(LIST_CHUNK), "continue": token}
            answer = json.loads(_body(self._request(query, 60)) or b"{}")
            meta = answer.get("metadata") or {}
            version = version or str(meta.get("resourceVersion") or "")  # the snapshot's: the first page's
            token = meta.get("continue") or None
            items = answer.pop("items", None) or []
            del answer
            with self.lock:
                for item in items:
                    # A LIST's items carry no kind (the API server names it once, for the list).
                    item.setdefault("apiVersion", self.target.resource.api_version)
                    item.setdefault("kind", self.target.resource.kind)
                    key = key_of(item)
                    seen.add(key)
                    change = listed_change(self.known.get(key), item) or ("MODIFIED" if replay else None)
                    if change is not None:
                        self._apply(change, item)
            del items
            if not token:
                break
        self.lists += 1
        self._worked()
        self.absent_in_a_row = 0
        with self.lock:
            for before in vanished(self.known, seen):
                self._apply("DELETED", dict(before))
        self.version = version
        if not self.synced:
            self._mark_synced()

    def _mark_synced(self) -> None:
        self.synced = True
        self.on_synced()

    def _watch(self) -> int:
        """Stream from self.version until the server ends the watch; how many events it brought."""
        query = {"watch": "true", "labelSelector": self.target.label_selector, "resourceVersion": self.version,
                 "allowWatchBookmarks": "true", "timeoutSeconds": str(self.watch_timeout)}
        response = self._request(query, self.watch_timeout + READ_SLACK)
        self._response = response
        self.watches += 1
        seen = 0
        ended = False
        try:
            # A relist asked for while the LIST before this watch ran (its abort found no watch to end):
            # relist now, not when this watch ends in WATCH_TIMEOUT (hostile12 H12-4).
            if self._stop.is_set() or self._replay.is_set():
                return seen
            for line in split_lines(_chunks(response)):
                decoded = decode(line)  # an ERROR line raises: it is not a watch that worked
                if decoded is None:
                    continue
                seen += 1
                self._streamed = seen
                event_type, body = decoded
                if event_type == "BOOKMARK":
                    self.version = version_of(body) or self.version
                    continue
                if event_type not in ("ADDED", "MODIFIED", "DELETED"):
                    continue
                with self.lock:
                    self._apply(event_type, body)
                self.version = version_of(body) or self.version
            ended = True
        finally:
            self._response = None
            if ended:  # read to its end: the connection can serve the next watch
                _release(response)
            else:  # left mid-stream (410, an error, stop): never reused with bytes left in it
                _abort(response)
        return seen

    def _apply(self, event_type: str, body: dict[str, Any]) -> None:
        """Under the lock: remember the object (or forget it) and hand the event on."""
        key = key_of(body)
        if event_type == "DELETED":
            self.known.pop(key, None)
        else:
            self.known[key] = slim(body)
        self.events += 1
        try:
            self.handler(event_type, body)
        except Exception:  # noqa: BLE001 - one event's handler never stops the stream
            logger.exception("%s: handling %s of %s/%s failed", self._name, event_type, *key)


def list_error(target: Target, exc: BaseException, verb: str = "list") -> str:
    """One line naming what cannot be listed (or watched) and why: resource, namespace, HTTP status, message."""
    where = f"in namespace {target.namespace}" if target.namespace else "in every namespace"
    if isinstance(exc, ApiError):
        reason = exc.reason or _phrase(exc.status)
        why = f"HTTP {exc.status} {reason}: {exc.message or '(no message)'}".replace("\n", " ")
    else:
        why = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return f"cannot {verb} {target.resource.plural} {where}: {why}"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def unsynced_namespaces(targets: Iterable[tuple[Target, bool]]) -> Optional[set[str]]:
    """The namespaces whose objects are not all listed yet, from (target, synced) pairs; None when a
    target of every namespace is not (then no namespace is)."""
    spaces: set[str] = set()
    for target, synced in targets:
        if synced:
            continue
        if target.namespace is None:
            return None
        spaces.add(target.namespace)
    return spaces


def namespace_listed(unsynced: Optional[set[str]], namespace: str) -> bool:
    """Whether every object of the namespace ("" for a cluster-scoped object) has been listed."""
    if unsynced is None:
        return False
    return not namespace or namespace not in unsynced


def _body(response: Any) -> bytes:
    data = response.read()
    return data.encode() if isinstance(data, str) else bytes(data or b"")


def _chunks(response: Any) -> Iterator[bytes]:
    raw = getattr(response, "response", None)
    if raw is None:  # a transport that buffered the whole body
        yield response.read()
        return
    while True:
        chunk = raw.read1(65536) if hasattr(raw, "read1") else raw.read(65536)
        if not chunk:
            return
        yield chunk


def _release(response: Any) -> None:
    raw = getattr(response, "response", None)
    if raw is not None:
        try:
            raw.release_conn()
        except Exception:  # noqa: BLE001 - a connection already gone
            pass


def _abort(response: Any) -> None:
    """End a stream another thread is reading (its read returns or fails at once)."""
    raw = getattr(response, "response", None)
    for close in (getattr(raw, "shutdown", None), getattr(raw, "close", None)):
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - already closed
                pass


def _status_error(status: int, text: str) -> Exception:
    if status == 410:
        return Gone(text)
    try:
        payload = json.loads(text)
        reason, message = payload.get("reason", ""), payload.get("message", text)
    except (ValueError, AttributeError):
        reason, message = "", text
    return ApiError(status, str(reason), str(message))


# --- the informer ---------------------------------------------------------------------------------

POOL_SLACK = 2  # connections beyond one per target (a LIST while a stream of the same target closes)


class Informer:
    """The reflectors of every target, one lock between their handlers, and `synced` once every
    target's first LIST has been handed on (an absent optional resource counts as listed)."""

    def __init__(self, kube: Kube, targets: Iterable[Target], handler: Handler, **reflector_options: Any) -> None:
        # The operator's credentials and TLS settings (kube.Kube.from_environment), a pool of its own
        # with a connection per target: each holds a watch open, so a pool of the default size (5 per
        # CPU) overflowed with 7 kinds in two namespaces, and urllib3 warned at every stream's end.
        targets = list(targets)
        configuration = copy.copy(kube.api.configuration)
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0,
                                                    len(targets) + POOL_SLACK)
        self.api = kubernetes.client.ApiClient(configuration)
        self.api.user_agent = USER_AGENT
        self.lock = threading.Lock()
        self._synced = threading.Event()
        self._pending_sync = 0
        self._sync_lock = threading.Lock()
        self._settled = threading.Event()  # every target listed or failed its LIST once
        self.on_change: Callable[[], None] = lambda: None  # a target synced or failed (metrics)
        self.reflectors = [Reflector(self.api, target, handler, self.lock, self._one_synced,
                                     on_list_failed=self._one_failed, **reflector_options)
                           for target in targets]
        self._pending_sync = len(self.reflectors)
        if not self.reflectors:
            self._synced.set()
            self._settled.set()

    def _one_synced(self) -> None:
        with self._sync_lock:
            self._pending_sync -= 1
            if self._pending_sync <= 0:
                self._synced.set()
        self._check_settled()

    def _one_failed(self) -> None:
        self._check_settled()

    def _check_settled(self) -> None:
        if all(r.synced or r.error for r in self.reflectors):
            self._settled.set()
        try:
            self.on_change()
        except Exception:  # noqa: BLE001 - a metric never stops a reflector
            logger.exception("informer: on_change failed")

    def wait_settled(self, timeout: Optional[float] = None) -> bool:
        """Every target has listed, or failed its first LIST (it goes on retrying)."""
        return self._settled.wait(timeout)

    def unsynced(self) -> list[tuple[Target, str]]:
        """The targets not listed yet, each with why (its last LIST's failure, or "not listed yet"),
        and those listed once whose LIST or watch fails now (their cache keeps the last objects)."""
        return [(r.target, r.error or f"{r.target.resource.plural} in "
                 f"{r.target.namespace or 'every namespace'}: not listed yet")
                for r in self.reflectors if not r.synced or r.error]

    def unsynced_namespaces(self) -> Optional[set[str]]:
        return unsynced_namespaces((r.target, r.synced) for r in self.reflectors)

    def namespace_listed(self, namespace: str) -> bool:
        if self.synced:
            return True
        return namespace_listed(self.unsynced_namespaces(), namespace)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: Optional[float] = None) -> bool:
        return self._synced.wait(timeout)

    def start(self) -> None:
        for reflector in self.reflectors:
            reflector.start()

    def relist(self, kinds: Iterable[str]) -> None:
        """Every target of these kinds LISTs again and hands on every object (Reflector.relist)."""
        wanted = set(kinds)
        for reflector in self.reflectors:
            if reflector.target.resource.kind in wanted:
                reflector.relist()

    def stop(self, timeout: float = 5.0) -> None:
        for reflector in self.reflectors:
            reflector.stop()
        deadline = time.monotonic() + timeout
        for reflector in self.reflectors:
            reflector.join(max(0.0, deadline - time.monotonic()))

    @property
    def events(self) -> int:
        return sum(r.events for r in self.reflectors)


class Holding:
    """Every wake-up (the custom resources' and the child kinds'), held while the replica must not act
    on them: before start-up is over (`ready`) and while kopf's peering has it `paused`.

    The informer updates the indexes and the cache from every event at once, whatever the state
    here (a read never misses an object listed or changed); only what an event wakes waits.

    - Start-up. The queue does not run until the first LISTs of every kind are applied (main.py
      start_queue), as kopf called no handler before all its indexes were filled. The custom
      resources' wake-ups (`replayed` kinds) go on at once: they only add keys to a queue that does
      not run yet, and each object's own event adds it after the objects it reads are indexed or
      is woken by theirs (reconcile/wakeups.py, fact 3). A child's wake-up is held: what is held is
      the latest event of each object with `held(body)` only (kind, name, owners, the operator's
      labels): on a standby replica every claim of the cluster passes here, so its whole body is
      not kept; `deliver_held` reads the rest from the cache. `release` (once `ready`, not paused)
      hands them on.
    - Paused (kopf's peering froze the replica: a peer of higher priority runs). Nothing is
      woken: a child's event is held as above, a custom resource's DELETED too (whole: deletions
      are few; its wake-ups read its producer, its uses), and any other custom resource's event only
      marks that a replay is due: `release` then has the informer LIST the custom resources again
      and hand on every object (`on_replay`: Reflector.relist), the whole body of each, as kopf's
      streams did when its peering resumed them, without keeping 10,000 bodies meanwhile.
    """

    def __init__(self, deliver: Handler, lock: threading.Lock, paused: Callable[[], bool] = lambda: False,
                 deliver_held: Optional[Handler] = None, on_overflow: Callable[[], None] = lambda: None,
                 limit: int = MAX_HELD, replayed: Iterable[str] = (), on_replay: Callable[[], None] = lambda: None,
                 ready: bool = True) -> None:
        self.deliver, self.lock, self.paused = deliver, lock, paused
        self.deliver_held = deliver_held or deliver  # a held event's body is `held(body)`, not the whole
        # Past `limit` objects (a standby replica under claim churn holds for as long as it stands
        # by) nothing more is kept: the release wakes everything unfinished instead (`on_overflow`).
        self.on_overflow, self.limit = on_overflow, limit
        self.replayed, self.on_replay = frozenset(replayed), on_replay
        self.ready = ready  # start-up is over (main.py sets it once the first LISTs are applied)
        self.overflowed = False
        self.replay_due = False
        self.open = False
        self.held: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}

    def offer(self, event_type: str, body: dict[str, Any]) -> None:
        """Under the informer's lock."""
        if self.open and self.paused():
            self.open = False
        if self.open:
            self.deliver(event_type, body)
            return
        kind = str(body.get("kind") or "")
        if kind in self.replayed:
            if not self.paused():  # start-up: the queue does not run yet
                self.deliver(event_type, body)
                return
            if event_type != "DELETED":
                self.replay_due = True
                return
        if self.overflowed:
            return
        key = (kind, *key_of(body))
        if key not in self.held and len(self.held) >= self.limit:
            self.overflowed = True
            self.held.clear()
            return
        # A custom resource's held event is its DELETED: few, and kept whole (its wake-ups read its producer).
        self.held[key] = (event_type, body if kind in self.replayed else held(body))

    def release(self) -> bool:
        """Hand on what was held and let every later event through, unless start-up is not over
        or the replica is paused; whether it is open now."""
        if self.open:
            return True
        with self.lock:
            if self.open:
                return True
            if not self.ready or self.paused():
                return False
            held, self.held = self.held, {}
            overflowed, self.overflowed = self.overflowed, False
            replay, self.replay_due = self.replay_due, False
            self.open = True
            if overflowed:
                try:
                    self.on_overflow()
                except Exception:  # noqa: BLE001 - the resync is the safety net then
                    logger.exception("waking every unfinished object after the held wake-ups overflowed failed")
            for event_type, body in held.values():
                try:
                    self.deliver_held(event_type, body)
                except Exception:  # noqa: BLE001 - as a live event's handler
                    logger.exception("handling a held %s failed", event_type)
            if replay:
                try:
                    self.on_replay()
                except Exception:  # noqa: BLE001 - the resync is the safety net then
                    logger.exception("relisting the custom resources after a pause failed")
            return True
