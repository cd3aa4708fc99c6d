"""The emulated Kubernetes API of the integration tests and of local mode: kmock 0.8 plus what it lacks.

kmock's ``KubernetesEmulator`` gives the HTTP serving, the API discovery, the Status-shaped errors and
the DSL that tests use to inject responses (``emulator[kmock.action.UPDATE] << 500``). Everything it
does not do as a real API server does, or does at a cost that grows with the traffic, is replaced
here (``Emulator`` subclasses kmock's class; the one patched internal is ``_patch_namespace_paths``):

- cost: a request costs what it touches, not what was served before. Objects live in
  ``store.ObjectStore`` (by resource and namespace, as JSON, with label and owner indexes, no past
  versions); kmock's request and error records are capped at ``request_history`` each (kmock keeps
  every request, and its matching scanned them all on every request: see ``_Sight``); watches get
  their events from ``watches.WatchHub`` (fan-out by resource and namespace, one serialization per
  event); with no reaction injected, requests go straight to the emulator's handlers (``_route``);
- admission (``admission.py``): names (DNS-1123 subdomain, or label, DNS-1035, path segment by
  resource; a Job's name also fits a label value, 63 characters), ``generateName``, labels,
  annotations, finalizers; custom resources pruned, defaulted and validated against their CRD's
  structural schema and CEL rules (transition rules on update), answered 422 Invalid with the
  API server's field errors. The project's CRDs are served from ``api.crdgen`` (what
  ``checkpoint-operator crds`` writes), and a CRD created through the API is served the same way;
- metadata: ``uid``, ``creationTimestamp``, ``resourceVersion`` (one counter for the whole server,
  bumped on every change: spec, status, finalizers, deletionTimestamp, deletion), ``generation``
  (bumped only when something outside ``metadata`` and ``status`` changes);
- optimistic concurrency: a PATCH/PUT whose resulting object carries a ``metadata.resourceVersion``
  other than the current one answers 409 Conflict; DeleteOptions ``preconditions`` (uid,
  resourceVersion) likewise; create of an existing name answers 409 AlreadyExists (201 on success);
- a failed JSON-patch ``test`` operation (or any invalid patch) answers 422 Invalid, not 500;
- PUT (replace) of an object, which kmock does not serve at all;
- the ``status`` subresource: PATCH/PUT on ``.../status`` changes only ``status``; on the main
  resource ``status`` is ignored; create drops ``status`` (a Pod starts as ``phase: Pending``);
- ``labelSelector`` (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x,y)``)
  and simple ``fieldSelector`` equalities filter lists and watches; lists are sorted by namespace
  and name and carry ``kind`` (``PodList``), ``apiVersion`` and the current ``resourceVersion``;
- watches: subscribe before they replay (no event is lost in between), honour ``timeoutSeconds``;
  with a ``resourceVersion`` they resume from the last ``watches.WATCH_WINDOW`` events of their
  resource (an older one gets the real API's ``410 Expired`` ERROR event, and kopf relists), without one
  (or with ``0``) they start with the current objects as ADDED events (with ``sendInitialEvents``,
  then the initial-events-end BOOKMARK); with ``allowWatchBookmarks`` a BOOKMARK every
  ``BOOKMARK_EVERY`` seconds and one as the watch times out, as the watch cache sends them
  (``restart_watches`` ends every stream and forgets the window, as an API server restart). An
  object that starts or stops matching a watch's selector
  arrives as ADDED or DELETED, as from the API server's watch cache. A watch whose client lags
  ``watches.WATCH_QUEUE_LIMIT`` events behind is closed (the API server drops slow watchers too);
- discovery: kmock's bundled built-in resources plus every served CRD, each subresource without the
  short names, categories and singular name of its resource, as kube-apiserver lists it (``discovery.py``);
- ``GET /api/v1/namespaces`` (and ``/api/v1/namespaces/NAME``): kmock 0.8 fails to parse these paths
  (500); fixed, so kopf can run with namespace scanning; the ``default`` namespace exists;
- pod logs: ``GET .../pods/NAME/log`` answers ``text/plain``, honouring ``limitBytes``, ``tailLines``,
  ``sinceTime``/``sinceSeconds`` and ``timestamps`` as a kubelet does (local/podlogs.py: each line
  stamped as it arrives, at most 10 MiB kept, as a kubelet rotates); the log is set by the local
  kubelet with ``PUT .../pods/NAME/log`` (an extension of this emulator; ``?append=true`` adds to it,
  as a running container's output grows) or ``Emulator.set_pod_log``;
- ``pods/exec`` over websockets (``v5.channel.k8s.io``, ``v4.channel.k8s.io``), proxied to the kubelet
  of the pod's node as a real API server does (``local/podexec.py``);
- deletion: ``propagationPolicy`` (query or DeleteOptions body). ``Orphan`` strips the owner's
  ownerReferences from its dependents; ``Background`` leaves dependents to the garbage collector of
  ``cluster.LocalCluster``; ``Foreground`` adds the ``foregroundDeletion`` finalizer, so the owner
  stays (deleting) until that collector has seen its blocking dependents (``blockOwnerDeletion``)
  gone, pods until their containers have stopped, and removes the finalizer, as kube-apiserver and
  kube-controller-manager's garbage collector do.
  As in the real API, deleting a ``batch/v1`` Job without a policy orphans its pods;
- persistence for local mode: ``state_lines()`` / ``read_state()`` (JSON Lines, one object per line,
  written from the stored JSON and read one object at a time), ``export_state()`` / ``import_state()``
  (the same as JSON-ready dicts);
- ``meta.k8s.io`` Tables (``local/tables.py``): a get or a list whose Accept header asks for a Table (as
  kubectl get does) is answered with one, a CRD's ``additionalPrinterColumns`` or kube-apiserver's default
  Name and Created At; every other request gets the plain object or list;
- ``GET /_emulator/watches`` lists the open watch streams (an extension: lets a harness wait until an
  operator is watching before it creates objects).

Responses injected with kmock's DSL take precedence over the emulator's own (by kmock's priorities)
and replace them: such a request changes nothing, as when a real API server answers 429 or 500
before storage. A reaction without a payload (``emulator[...] >> sink``) only records and lets the
emulator answer. Examples: ``emulator[kmock.action.UPDATE, kmock.subresource("status")][:1] << 500``
(the next status update fails), ``emulator[kmock.action.FETCH, lambda r: r.id % 10 == 0] << 429``
(every tenth GET; ``Request.id`` is the request's serial number). A slice counts the requests its
source sees from the moment the reaction is added (kmock counted from the server's start).
kmock's ``objects`` view is not kept (its per-object histories grow with every change): read
objects through the API, ``get_object()`` or ``export_state()``.

Not emulated: the schemas of built-in resources (a Pod's spec is stored as sent, neither validated
nor pruned; on create, the restart policy and the containers' names of a Pod's or a Job's pod
spec that lists containers, and a claim's storage request, are checked as the API server does:
``admission.py``), namespace existence (objects may be created in a namespace that was never created),
admission webhooks, quotas and limit ranges, server-side apply, strategic-merge list semantics (a
strategic merge patch is a JSON merge patch: lists are replaced), field managers, a consistent
snapshot across the pages of a paged list (``limit``/``continue`` are honoured, each page in (namespace,
name) order after the token's key, but later pages read the current state), namespace termination, graceful pod deletion,
CEL ``messageExpression``, authentication and authorization.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import copy
import datetime
import itertools
import json
import re
import secrets
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Optional

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import dsl, k8s, parsing, references, rendering

from checkpoint_operator.local import admission, discovery, pod_security, tables
from checkpoint_operator.local.podlogs import ContainerLog, LogQueryError
from checkpoint_operator.local.selectors import ObjectFilter, bad_request
from checkpoint_operator.local.store import ObjectKey, ObjectStore, Stored, dumps
from checkpoint_operator.local.watches import WATCH_QUEUE_LIMIT, Change, Watcher, WatchHub, event_line

SUPPORTED_KMOCK_VERSION = "0.8"
if kmock.__version__ != SUPPORTED_KMOCK_VERSION:  # pragma: no cover
    raise ImportError(
        f"checkpoint_operator.local.emulator is written against kmock {SUPPORTED_KMOCK_VERSION} "
        f"(it subclasses and patches kmock internals); kmock {kmock.__version__} is installed. "
        f"Install kmock=={SUPPORTED_KMOCK_VERSION}.")

Resource = references.resource

PODS = Resource("", "v1", "pods")
NAMESPACES = Resource("", "v1", "namespaces")
JOBS = Resource("batch", "v1", "jobs")
NODES = Resource("", "v1", "nodes")
CLAIMS = Resource("", "v1", "persistentvolumeclaims")
VOLUMES = Resource("", "v1", "persistentvolumes")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")

ALL_VERBS = {"get", "list", "watch", "create", "patch", "update", "delete", "deletecollection"}

# Server-managed metadata that a client cannot change by PATCH or PUT.
FOREGROUND_DELETION = "foregroundDeletion"  # the finalizer of a Foreground deletion
# The kinds local mode's garbage collector (cluster.GarbageCollector) deletes for their owners.
FOREGROUND_COLLECTED = {("", "pods"), ("batch", "jobs"), ("", "persistentvolumeclaims"), ("", "services"),
                        ("jobset.x-k8s.io", "jobsets"), ("snapshot.storage.k8s.io", "volumesnapshots")}
SERVER_MANAGED_METADATA = ("uid", "creationTimestamp", "deletionTimestamp", "generation", "name", "namespace")

REQUEST_HISTORY = 256  # kmock request records (and error records) kept for assertions
LIST_CHUNK = 500  # objects per write of a long list or watch replay
BOOKMARK_EVERY = 60.0  # seconds between the bookmarks of a watch that asked for them (kube-apiserver: a minute)


# --- the one patched kmock internal ---------------------------------------------------------------

def _patch_namespace_paths() -> None:
    """Make kmock parse ``/api/v1/namespaces[/NAME[/status|finalize]]`` as the ``namespaces`` resource.

    kmock 0.8's ``parsing.parse_path`` reads ``namespaces/X`` as "namespace X" everywhere and fails
    (ValueError, answered as 500) on the bare collection path, so namespaces can be neither listed,
    watched nor created. The request parser calls ``parsing.parse_path`` through the module, so
    replacing the module attribute is enough. Idempotent.
    """
    original = parsing.parse_path
    if getattr(original, "_handles_namespaces", False):
        return

    def parse_path(path: str) -> parsing.ParsedPath:
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"]:
            rest = parts[3:]
            if len(rest) <= 1 or (len(rest) == 2 and rest[1] in ("status", "finalize")):
                return parsing.ParsedPath(
                    group="", version="v1", plural="namespaces", namespace=None,
                    name=rest[0] if rest else None, subresource=rest[1] if len(rest) == 2 else None)
        return original(path)

    parse_path._handles_namespaces = True  # type: ignore[attr-defined]
    parsing.parse_path = parse_path


_patch_namespace_paths()


# --- errors in the shape of a Kubernetes Status --------------------------------------------------

def conflict(message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=409, reason="Conflict", message=message, details=details or None)


def already_exists(message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=409, reason="AlreadyExists", message=message, details=details or None)


def forbidden(message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=403, reason="Forbidden", message=message, details=details or None)


def invalid(message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=422, reason="Invalid", message=message, details=details or None)


def not_found(message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=404, reason="NotFound", message=message, details=details or None)


def invalid_object(info: kmock.ResourceInfo, resource: Resource, name: str,
                   errors: list[admission.FieldError]) -> kmock.KubernetesError:
    """422 Invalid with one cause per field error, worded as the API server words them."""
    causes = [{"reason": e.reason, "message": e.cause_message, "field": e.field} for e in errors]
    return invalid(admission.invalid_message(info.kind or resource.plural or "", resource.group or "", name, errors),
                   name=name, group=resource.group, kind=info.kind, causes=causes)


def status_body(error: kmock.KubernetesError) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": error.status, "reason": error.reason, "message": error.message,
            "details": error.details or {}}


# --- small object helpers --------------------------------------------------------------------------

def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(length: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generateName
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Everything whose change bumps metadata.generation: all but metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


def _resource(request: rendering.Request) -> Resource:
    """The resource a request addresses (the routes below are only taken with one)."""
    if request.resource is None:
        raise kmock.KubernetesEndpointNotFoundError()
    return request.resource


def _object_key(request: rendering.Request) -> tuple[Resource, str | None, str]:
    """The object a request addresses: (resource, namespace, name)."""
    if request.name is None:
        raise kmock.KubernetesEndpointNotFoundError()
    return _resource(request), request.namespace, request.name


def _accept(request: rendering.Request) -> str | None:
    """The request's Accept header (kmock keeps the headers as sent: any case)."""
    return next((value for name, value in request.headers.items() if name.lower() == "accept"), None)


def _raw_request(request: rendering.Request) -> aiohttp.web.BaseRequest:
    """aiohttp's request under kmock's (a streamed response is prepared on it)."""
    if request._raw_request is None:
        raise RuntimeError("a kmock request without its aiohttp request")
    return request._raw_request


def api_version_of(resource: Resource) -> str:
    return (resource.version or "") if not resource.group else f"{resource.group}/{resource.version}"


def resource_key(resource: Resource) -> str:
    """``batch/v1/jobs``, ``v1/pods``: the persisted name of a resource."""
    return f"{api_version_of(resource)}/{resource.plural or ''}"


def _parse_resource_key(key: str) -> Resource:
    parts = key.split("/")
    return Resource("", parts[0], parts[1]) if len(parts) == 2 else Resource(parts[0], parts[1], parts[2])


def crd_resource_infos(crd: Mapping[str, Any]) -> dict[Resource, kmock.ResourceInfo]:
    """The resources a CustomResourceDefinition manifest declares, one per served version."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    result = {}
    for version in spec.get("versions", []):
        if not version.get("served", True):
            continue
        result[Resource(spec["group"], version["name"], names["plural"])] = kmock.ResourceInfo(
            kind=names.get("kind"), singular=names.get("singular"),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced", verbs=ALL_VERBS,
            shortnames=set(names.get("shortNames", [])), categories=set(names.get("categories", [])),
            subresources=set(version.get("subresources", {}) or {}))
    return result


def crd_schemas(crd: Mapping[str, Any]) -> dict[Resource, admission.CustomResourceSchema]:
    """The structural schema of each served version of a CRD that declares one."""
    spec = crd.get("spec", {})
    result = {}
    for version in spec.get("versions", []):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if version.get("served", True) and schema:
            resource = Resource(spec["group"], version["name"], spec.get("names", {})["plural"])
            result[resource] = admission.CustomResourceSchema(schema)
    return result


def project_crds() -> list[dict[str, Any]]:
    """The project's CRDs as ``checkpoint-operator crds`` writes them (generated from the API models)."""
    from checkpoint_operator.api import crdgen  # the models are imported only when an emulator is built
    return [crdgen.build_crd(definition, check_bounds=False) for definition in crdgen.CRDS]


@attrs.define(kw_only=True)
class OpenWatch:
    resource: str
    namespace: str | None
    user_agent: str




# --- matching kmock's reactions without scanning past requests -------------------------------------

class _Sight:
    """Whether the current request passes through each view of kmock's DSL, decided for this request alone.

    kmock 0.8 decides ``request in view`` by iterating every request the view ever saw (all requests of
    the server, filtered) and comparing identities, so each request costs more than the one before.
    Every view type but slices can answer for one request: a filter by its criteria, a group by its
    members, a priority or a root by its source. A slice depends on the request's position among the
    requests its source saw; the emulator counts those per slice (``Emulator._slice_counts``). Any other
    view (a reaction or a stream used as a source) is asked kmock's way, over the capped history.
    """

    def __init__(self, root: "Emulator", request: rendering.Request) -> None:
        self.root = root
        self.request = request
        self.memo: dict[int, bool] = {}

    def __call__(self, view: dsl.View) -> bool:
        key = id(view)
        if key not in self.memo:
            self.memo[key] = self._decide(view)
        return self.memo[key]

    def _decide(self, view: dsl.View) -> bool:
        match view:
            case dsl.Root():
                return view is self.root
            case dsl.Filter():
                return self(view._source) and bool(view.criteria(self.request))
            case dsl.OrGroup():
                return any(self(source) for source in view._sources)
            case dsl.AndGroup():
                return all(self(source) for source in view._sources)
            case dsl.Exclusion():
                return self(view._source) and not any(self(excluded) for excluded in view._exclusions)
            case dsl.Slicer():
                if not self(view._source):
                    return False
                position = self.root._slice_counts.get(id(view), 0)
                self.root._slice_counts[id(view)] = position + 1
                return position in range(position + 1)[view.s]
            case dsl.Priority():
                return self(view._source)
        return any(seen is self.request for seen in view)  # kmock's way, over the capped records


def _slicers(view: dsl.View) -> Iterable[dsl.Slicer]:
    return view._walk(dsl.Slicer)


# --- the emulator ----------------------------------------------------------------------------------

@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator behaving closely enough to a real API server for this operator."""

    # kmock records every request and every error for assertions; only the newest ones are kept.
    request_history: int = REQUEST_HISTORY
    watch_queue_limit: int = WATCH_QUEUE_LIMIT
    # Called (without arguments, in the server's loop) after every change; local mode saves state.
    on_change: Callable[[], None] | None = None

    requests_served: int = attrs.field(default=0, init=False)
    store: ObjectStore = attrs.field(factory=ObjectStore, init=False)
    watches: WatchHub = attrs.field(factory=WatchHub, init=False)
    _schemas: dict[Resource, admission.CustomResourceSchema] = attrs.field(factory=dict, init=False)
    _resource_versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _current_rv: int = attrs.field(default=0, init=False)
    _pod_logs: dict[tuple[str, str], dict[str, ContainerLog]] = attrs.field(factory=dict, init=False)
    # Sees every text written to a pod's log: (namespace, pod, container, text) (tests/credentials.py watches them).
    on_pod_log: Optional[Callable[[str, str, str, str], None]] = attrs.field(default=None, init=False)
    _own_reactions: dict[int, Callable[[rendering.Request], Any]] = attrs.field(factory=dict, init=False)
    _slice_counts: dict[int, int] = attrs.field(factory=dict, init=False)
    _builtin_crds: set[str] = attrs.field(factory=set, init=False)
    _reactions_signature: tuple[int, ...] = attrs.field(default=(), init=False)
    _reactions_cache: Any = attrs.field(default=None, init=False)
    _builtin_signature: tuple[int, ...] = attrs.field(default=(), init=False)
    _builtin_order: list[dsl.Reaction] = attrs.field(factory=list, init=False)
    _by_action: dict[Any, Callable[[rendering.Request], Any]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock's KubernetesEmulator registered its fallbacks for these actions, bound to the methods
        # overridden below; the emulator answers them itself, without kmock's payload rendering.
        own = {"_serve_list", "_serve_watch", "_serve_fetch", "_serve_create", "_serve_update", "_serve_delete"}
        for payload in self._payloads:
            method = payload.response.payload
            if getattr(method, "__self__", None) is self and getattr(method, "__name__", "") in own:
                self._own_reactions[id(payload)] = method
        self._own(self.fallback[kmock.method.PUT], self._serve_update)
        self._own((self.fallback ** 1)[PODS, kmock.subresource("log")], self._serve_pod_log)
        self._own((self.fallback ** 1)[PODS, kmock.subresource("exec")], self._serve_exec)
        self._own((self.fallback ** 1)[re.compile(r"/_emulator/.*")], self._serve_extension)
        with warnings.catch_warnings():  # kmock 0.8 reads its bundle with a deprecated importlib call
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        for crd in project_crds():
            self._builtin_crds.add(crd["metadata"]["name"])
            self._store_new(CRDS, crd)
        self._store_new(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        self._by_action = {kmock.action.LIST: self._serve_list, kmock.action.WATCH: self._serve_watch,
                           kmock.action.FETCH: self._serve_fetch, kmock.action.CREATE: self._serve_create,
                           kmock.action.UPDATE: self._serve_update, kmock.action.DELETE: self._serve_delete}
        self._builtin_order = self._reactions()[0]
        self._builtin_signature = self._reactions_signature

    def _own(self, view: dsl.View, handler: Callable[[rendering.Request], Any]) -> None:
        reaction = view << handler
        self._own_reactions[id(reaction)] = handler

    # -- request entry point ----------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """kmock's entry point, with capped request and error records."""
        await raw_request.read()
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            request = await rendering.Request._parse(raw_request, id=self.requests_served)
            self.requests_served += 1
            self._cap(self._requests)
            self._requests.append(request)
            try:
                return await self._handle(request)
            except rendering.StreamingError as exc:  # a DSL stream failed after it started
                raw_response = exc.args[0]
                raise exc.__cause__ or exc
        except Exception as exc:  # noqa: BLE001 - answered as a Status, as kmock does
            if isinstance(exc, RecursionError):  # the body's decoding or its merge patch: one line
                exc = bad_request("the request body is nested too deeply for the local API server to read "
                                  "(no Kubernetes object nests this deep)")
            if self._errors:
                self._cap(self._errors[-1])
                self._errors[-1].append(exc)
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(exc)
            await self._stream_error(exc, raw_response)
            await raw_response.write_eof()
            return raw_response

    def _cap(self, records: list[Any]) -> None:
        """Make room for one more record: at 2 x ``request_history``, drop all but the newest ``request_history``.

        Amortized, the cost per request is constant.
        """
        if len(records) >= 2 * self.request_history:
            del records[:len(records) - self.request_history]

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Find the reaction for the request as kmock does (by priority), deciding each match for this request only."""
        payloads, slicers = self._reactions()
        if not slicers and payloads is self._builtin_order:
            own = self._route(request)  # only the emulator's own reactions: the same answer, found directly
            if own is not None:
                return await own(request)
        sight = _Sight(self, request)
        for slicer in slicers:  # slices count every request their source sees, matched or not
            sight(slicer)
        for payload in payloads:
            if payload._disabled.is_set() or not sight(payload._source):
                continue
            own = self._own_reactions.get(id(payload))
            if own is not None:
                return await own(request)
            self._cap(payload._requests)  # kmock's reaction appends the request it serves
            try:
                return await payload(request)
            except rendering.ReactionMismatchError:  # depleted, or a catcher without a payload
                payload._disabled.set()
            except NotImplementedError:
                pass
        raise NotImplementedError("no reaction matches the request")

    def _reactions(self) -> tuple[list[dsl.Reaction], list[dsl.Slicer]]:
        """The reactions in kmock's order (by priority, highest first, sub-priorities padded; then by age),
        and the slices among their sources; recomputed only when reactions were added or replaced."""
        signature = tuple(map(id, self._payloads))
        if signature != self._reactions_signature:
            priorities = [payload.priorities for payload in self._payloads]
            width = max((len(p) for p in priorities), default=0)
            keys = [tuple(-p for p in priority) + (0,) * (width - len(priority)) for priority in priorities]
            order = [self._payloads[i] for i in sorted(range(len(keys)), key=keys.__getitem__)]
            if signature == self._builtin_signature:
                order = self._builtin_order
            self._reactions_signature = signature
            self._reactions_cache = (order, [s for payload in order for s in _slicers(payload._source)])
        return self._reactions_cache

    def _route(self, request: rendering.Request) -> Callable[[rendering.Request], Any] | None:
        """The handler kmock's matching picks among the emulator's own reactions, without matching.

        None: let the matching decide (discovery and other requests the emulator leaves to kmock).
        tests/local/test_emulator.py checks that both agree.
        """
        if request.url.path.startswith("/_emulator/"):
            return self._serve_extension
        resource = request.resource
        if resource is None or resource.plural is None:
            return None
        if resource == PODS and request.subresource == "log":
            return self._serve_pod_log
        if resource == PODS and request.subresource == "exec":
            return self._serve_exec
        if request.method == kmock.method.PUT:
            return self._serve_update
        return self._by_action.get(request.action)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesError):
            return aiohttp.web.json_response(status_body(exc), status=exc.status)
        return await super()._render_error(exc)

    # -- writes -----------------------------------------------------------------------------------

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _serve_create(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if not isinstance(request.data, Mapping):
            raise bad_request("the body must be a JSON object")
        resource = _resource(request)
        info = self._info(resource)
        obj = json.loads(request.body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        namespace = (request.namespace or meta.get("namespace") or "default") if info.namespaced else None
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid_object(info, resource, "", [admission.FieldError(
                    "metadata.name", "Required value", "name or generateName is required")])
            meta["name"] = admission.generate_name(meta["generateName"], random_suffix())
        name = meta["name"]
        if not isinstance(name, str):
            raise bad_request("metadata.name must be a string")
        errors = admission.name_problems(resource.plural or "", resource.group or "", name) + \
            admission.metadata_problems(meta)
        if resource == CRDS:
            errors += self._crd_problems(obj)
        if not errors:
            errors += admission.builtin_problems(resource.plural or "", resource.group or "", obj)
        schema = self._schemas.get(resource)
        if "status" in info.subresources:
            obj.pop("status", None)
        if schema is not None and not errors:
            errors += schema.admit(obj, None)
        if errors:
            raise invalid_object(info, resource, name, errors)
        if resource == PODS:
            self._admit_pod_security(obj, namespace or "default", name)
        key = (resource, namespace, name)
        if self.store.get(key) is not None:
            raise already_exists(f'{resource.plural} "{name}" already exists',
                                 name=name, group=resource.group, kind=resource.plural)
        stored = self._store_new(resource, obj, namespace=namespace)
        self._changed()
        return self._json(stored.raw, status=201)

    def _admit_pod_security(self, pod: Mapping[str, Any], namespace: str, name: str) -> None:
        """Pod Security admission: the level the namespace's enforce label names (local/pod_security.py)."""
        stored = self.store.get((NAMESPACES, None, namespace))
        labels = ((stored.load().get("metadata") or {}).get("labels") or {}) if stored is not None else {}
        level = pod_security.enforced_level(labels)
        found = pod_security.violations(level, pod) if level else []
        if found:
            raise forbidden(f'pods "{name}" is forbidden: {pod_security.forbidden_message(level or "", found)}',
                            name=name, kind="pods")

    def _store_new(self, resource: Resource, obj: dict[str, Any], *, namespace: str | None = None) -> Stored:
        info = self._info(resource)
        obj.setdefault("apiVersion", api_version_of(resource))
        obj.setdefault("kind", info.kind)
        meta = obj["metadata"]
        if info.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1,
                    resourceVersion=self._next_rv())
        meta.pop("deletionTimestamp", None)
        if "status" in info.subresources:
            obj.pop("status", None)
        if resource in (PODS, CLAIMS, VOLUMES):  # the API server's defaults
            obj["status"] = {"phase": "Pending"}
        key = (resource, meta.get("namespace"), meta["name"])
        stored = self.store.put(key, obj)
        if resource == CRDS:
            self._register_crd(obj)
        self.watches.publish(Change(self._current_rv, key, "ADDED", stored, None))
        return stored

    def _register_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve the resources of a CRD (again, after a change), validated by its schema."""
        self._unregister_crd(crd, keep_objects=True)
        for crd_resource, crd_info in crd_resource_infos(crd).items():
            self.resources[crd_resource] = crd_info
        self._schemas.update(crd_schemas(crd))

    def _unregister_crd(self, crd: Mapping[str, Any], keep_objects: bool = False) -> None:
        spec = crd.get("spec", {})
        plural = spec.get("names", {}).get("plural")
        for resource in [r for r in self.resources if r.group == spec.get("group") and r.plural == plural]:
            del self.resources[resource]
            self._schemas.pop(resource, None)
            if not keep_objects:  # deleting a CRD deletes its objects, as in the real API
                for key, _ in self.store.select(resource, None):
                    self.store.remove(key)

    @staticmethod
    def _crd_problems(crd: Mapping[str, Any]) -> list[admission.FieldError]:
        """What the API server refuses in a CRD here: CEL rules that do not compile."""
        errors = []
        for index, version in enumerate(crd.get("spec", {}).get("versions", []) or []):
            schema = (version.get("schema") or {}).get("openAPIV3Schema") or {}
            for path, rule in admission.iter_rules(schema):
                try:
                    admission.compile_rule(rule["rule"])
                except ValueError as exc:
                    errors.append(admission.FieldError(
                        f"spec.versions[{index}].schema.openAPIV3Schema{path}.x-kubernetes-validations",
                        "Invalid value", f"compilation failed: {exc}", rule["rule"]))
        return errors

    async def _serve_update(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if resource is None or request.name is None:
            raise kmock.KubernetesEndpointNotFoundError()
        info = self._info(resource)
        key = (resource, request.namespace, request.name)
        stored = self.store.get(key)
        if stored is None:
            raise self._object_not_found(key)
        if request.subresource not in (None, "status"):
            raise kmock.KubernetesError(status=405, reason="MethodNotAllowed",
                                        message=f"the subresource {request.subresource!r} cannot be changed here")
        current = stored.load()
        requested = self._requested_object(request, stored)
        self._check_resource_version(key, current, (requested.get("metadata") or {}).get("resourceVersion"))
        # A merge patch of the status alone (the kubelet's, the controllers', the operator's): the patched
        # copy of the stored object is already the new object, nothing else of it changed.
        status_only = (request.subresource == "status" and request.method != kmock.method.PUT
                       and isinstance(request.data, Mapping) and set(request.data) <= {"status"})
        new = requested if status_only else self._merge_by_subresource(resource, stored, requested,
                                                                       request.subresource, current)
        errors = [] if request.subresource == "status" else admission.metadata_problems(new["metadata"])
        if resource == CRDS:
            errors += self._crd_problems(new)
        schema = self._schemas.get(resource)
        if schema is not None and not errors:
            errors += schema.admit(new, current)
        if errors:
            raise invalid_object(info, resource, request.name, errors)
        return self._json(self._store_change(key, current, new))

    @staticmethod
    def _requested_object(request: rendering.Request, stored: Stored) -> dict[str, Any]:
        """The object the client asks for: the body of a PUT, or (a copy of) the stored object, patched."""
        if request.method == kmock.method.PUT:
            if not isinstance(request.data, Mapping):
                raise bad_request("the body must be a JSON object")
            return json.loads(request.body)
        try:
            if isinstance(request.data, list):
                return jsonpatch.apply_patch(stored.load(), request.data, in_place=True)
            if isinstance(request.data, Mapping):
                return _merge_patch(stored.load(), request.data)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise invalid(f"the server rejected our request due to an error in our request: {exc}")
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, ValueError, TypeError) as exc:
            raise invalid(f"the patch cannot be applied: {exc}")
        raise bad_request("the patch must be a JSON object or list")

    @staticmethod
    def _check_resource_version(key: ObjectKey, current: Mapping[str, Any], requested_rv: Any) -> None:
        current_rv = current["metadata"]["resourceVersion"]
        if requested_rv not in (None, "") and str(requested_rv) != current_rv:
            resource, _, name = key
            raise conflict(
                f'Operation cannot be fulfilled on {resource.plural} "{name}": the object has been modified; '
                f"please apply your changes to the latest version and try again",
                name=name, group=resource.group, kind=resource.plural)

    def _merge_by_subresource(self, resource: Resource, stored: Stored, requested: dict[str, Any],
                              subresource: str | None, current: Mapping[str, Any]) -> dict[str, Any]:
        """The new object: the requested one, with what the request may not change taken from the stored one.

        ``current``: the stored object, parsed, only read here. What goes into the new object comes from a
        fresh parse of ``stored`` (admission prunes and defaults the new object in place), made only when
        something of the stored object is kept: on a main-resource update of a kind without a status
        subresource, nothing (the server-managed metadata are strings), so no second parse.
        """
        if subresource == "status":
            current = stored.load()
            if "status" in requested:
                current["status"] = requested["status"]
            else:
                current.pop("status", None)
            return current
        new = requested
        if not isinstance(new.get("metadata"), dict):
            new["metadata"] = {}
        if "status" in self._info(resource).subresources:
            if "status" in current:
                new["status"] = stored.load()["status"]
            else:
                new.pop("status", None)
        new_meta = new["metadata"]
        for field in SERVER_MANAGED_METADATA:
            if field in current["metadata"]:
                new_meta[field] = current["metadata"][field]
            else:
                new_meta.pop(field, None)
        new.setdefault("apiVersion", current.get("apiVersion"))
        new.setdefault("kind", current.get("kind"))
        return new

    def _store_change(self, key: ObjectKey, current: dict[str, Any], new: dict[str, Any]) -> bytes:
        """Store ``new`` in place of ``current`` (or delete it: deletionTimestamp and no finalizers); its JSON."""
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if new == current:
            return dumps(new)  # a no-op update keeps its resourceVersion, as in the real API
        if _spec_part(new) != _spec_part(current):
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(key, new)  # the update that removes the last finalizer is the deletion
            self._changed()
            return dumps(new)
        old = self.store.get(key)
        stored = self.store.put(key, new)
        if key[0] == CRDS:
            self._register_crd(new)
        self.watches.publish(Change(self._current_rv, key, "MODIFIED", stored, old))
        self._changed()
        return stored.raw

    # -- delete -----------------------------------------------------------------------------------

    async def _serve_delete(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        key = _object_key(request)
        resource = key[0]
        stored = self.store.get(key)
        if stored is None:
            raise self._object_not_found(key)
        current = stored.load()
        options = dict(request.data) if isinstance(request.data, Mapping) else {}
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") and preconditions["uid"] != current["metadata"]["uid"]:
            raise conflict(f'Precondition failed: UID in precondition: {preconditions["uid"]}, '
                           f'UID in object meta: {current["metadata"]["uid"]}', name=request.name)
        self._check_resource_version(key, current, preconditions.get("resourceVersion"))
        policy = request.params.get("propagationPolicy") or options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is not None:
            policy = "Orphan" if options["orphanDependents"] else "Background"
        if policy is None and resource == JOBS:
            policy = "Orphan"  # the real API's default for batch/v1 Jobs (kubectl sends Background)

        finalizers = list(current["metadata"].get("finalizers") or [])
        if policy == "Foreground" and FOREGROUND_DELETION not in finalizers and self._blocked_by_dependents(current):
            # As kube-apiserver: the owner stays, deleting, until the garbage collector has seen its
            # blocking dependents gone and removes this finalizer (cluster.LocalCluster's collector).
            finalizers.append(FOREGROUND_DELETION)
        if current["metadata"].get("deletionTimestamp"):
            if finalizers == (current["metadata"].get("finalizers") or []):
                return self._json(stored.raw)
            new = stored.load()
            new["metadata"]["finalizers"] = finalizers
            return self._json(self._store_change(key, current, new))
        if finalizers:
            new = stored.load()
            new["metadata"]["finalizers"] = finalizers
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = _grace_period(resource, current, options, request.params)
            return self._json(self._store_change(key, current, new))
        current["metadata"]["resourceVersion"] = self._next_rv()
        self._remove(key, current)
        if policy == "Orphan":
            self._orphan_dependents(current)
        self._changed()
        return self._json(dumps(current))

    def _remove(self, key: ObjectKey, last: dict[str, Any]) -> None:
        """Remove an object; ``last`` is its final state (with the resourceVersion of the deletion)."""
        if self.store.remove(key) is None:
            return
        if key[0] == PODS:
            self._pod_logs.pop((key[1] or "", key[2]), None)
        if key[0] == CRDS:
            self._unregister_crd(last)
        self.watches.publish(Change(self._current_rv, key, "DELETED", None, Stored.of(last)))

    def _blocked_by_dependents(self, owner: Mapping[str, Any]) -> bool:
        """Has dependents whose reference blocks its deletion, of a kind local mode's garbage collector
        collects. (kube-apiserver adds the finalizer in every case and its collector, which knows every
        kind, removes it at once where nothing blocks; here an owner nothing blocks is deleted at once,
        so that one with dependents local mode does not collect cannot wait forever.)"""
        uid = owner["metadata"]["uid"]
        for key in self.store.owned_by(uid):
            if (key[0].group, key[0].plural) not in FOREGROUND_COLLECTED:
                continue
            stored = self.store.get(key)
            refs = stored.load()["metadata"].get("ownerReferences") or [] if stored is not None else []
            if any(ref.get("uid") == uid and ref.get("blockOwnerDeletion") for ref in refs):
                return True
        return False

    def _orphan_dependents(self, owner: Mapping[str, Any]) -> None:
        owner_uid = owner["metadata"]["uid"]
        for key in self.store.owned_by(owner_uid):
            stored = self.store.get(key)
            if stored is None:
                continue
            obj, new = stored.load(), stored.load()
            refs = obj["metadata"].get("ownerReferences") or []
            new["metadata"]["ownerReferences"] = [ref for ref in refs if ref.get("uid") != owner_uid]
            if not new["metadata"]["ownerReferences"]:
                del new["metadata"]["ownerReferences"]
            self._store_change(key, obj, new)

    # -- discovery -------------------------------------------------------------------------------------

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        """/api/v1 says its groupVersion is "v1", as kube-apiserver does: kmock said "/v1", and client-go's
        discovery (GetAPIGroupResources) looks a version's resources up by that string, so kubectl found
        no core resources and took `pods` for metrics.k8s.io's PodMetrics (`kubectl get pods` listed none,
        `kubectl exec` answered NotFound). Its entries as kube-apiserver states them: ``discovery.py``."""
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and str(payload.get("groupVersion", "")).startswith("/"):
            payload["groupVersion"] = payload["groupVersion"][1:]
        return discovery.api_resource_list(payload) if isinstance(payload, dict) else payload

    # -- tables: what `kubectl get` asks for (local/tables.py) -------------------------------------------

    def _table(self, request: rendering.Request, resource: Resource, objects: list[Stored],
               list_meta: Mapping[str, Any]) -> aiohttp.web.Response:
        """A get or a list answered as the meta.k8s.io Table the Accept header asks for, with the CRD's
        printer columns (kube-apiserver's default table for any other resource)."""
        version = tables.table_version(_accept(request)) or "v1"
        crd = self.store.get((CRDS, None, f"{resource.plural}.{resource.group}")) if resource.group else None
        columns = tables.printer_columns(crd.load() if crd is not None else None, resource.version)
        try:
            table = tables.build_table([stored.load() for stored in objects], columns=columns, list_meta=list_meta,
                                       version=version,
                                       include_object=request.params.get("includeObject") or "Metadata")
        except ValueError as exc:
            raise bad_request(str(exc))
        return aiohttp.web.Response(body=dumps(table), status=200,
                                    headers={"Content-Type": f"application/json;as=Table;v={version};g=meta.k8s.io"})

    # -- reading: fetch, list, watch ---------------------------------------------------------------------

    async def _serve_fetch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        key = _object_key(request)
        self._info(key[0])
        stored = self.store.get(key)
        if stored is None:
            raise self._object_not_found(key)
        if tables.table_version(_accept(request)):
            meta = stored.load()["metadata"]
            return self._table(request, key[0], [stored], {"resourceVersion": meta.get("resourceVersion", "")})
        return self._json(stored.raw)

    async def _serve_list(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        resource = _resource(request)
        info = self._info(resource)
        selected = ObjectFilter.from_request(request)
        found = self.store.select(resource, request.namespace, selected.selection())
        found.sort(key=lambda item: (item[0][1] or "", item[0][2]))
        page = list_page(request.params.get("limit"), request.params.get("continue"), self._current_rv,
                         [(key[1] or "", key[2]) for key, _ in found])
        list_meta: dict[str, Any] = {"resourceVersion": str(page.resource_version)}
        if page.next_token:
            list_meta.update({"continue": page.next_token, "remainingItemCount": len(found) - page.end})
        if tables.table_version(_accept(request)):
            return self._table(request, resource, [stored for _, stored in found[page.start:page.end]], list_meta)
        head = dumps({"apiVersion": api_version_of(resource), "kind": f"{info.kind}List", "metadata": list_meta})
        raws = [stored.raw for _, stored in found[page.start:page.end]]
        opening, closing = head[:-1] + b',"items":[', b"]}"
        if len(raws) <= LIST_CHUNK:
            return self._json(opening + b",".join(raws) + closing)
        # A long list goes out in chunks: no copy of all its JSON is ever made (the objects are shared).
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(opening) + sum(map(len, raws)) + len(raws) - 1 + len(closing)
        await response.prepare(_raw_request(request))
        await response.write(opening)
        for start in range(0, len(raws), LIST_CHUNK):
            await response.write((b"," if start else b"") + b",".join(raws[start:start + LIST_CHUNK]))
        await response.write(closing)
        await response.write_eof()
        return response

    # kmock's _serve_watch yields payloads; this one streams the response itself (no per-event copy)
    async def _serve_watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:  # type: ignore[override]
        resource = _resource(request)
        info = self._info(resource)
        selected = ObjectFilter.from_request(request)
        timeout = float(request.params["timeoutSeconds"]) if request.params.get("timeoutSeconds") else None
        since = request.params.get("resourceVersion") or "0"
        try:
            since_rv = int(since)
        except ValueError:
            raise bad_request(f"invalid resourceVersion {since!r}")
        watcher = Watcher(resource=resource, filter=selected, user_agent=request.headers.get("User-Agent", ""),
                          limit=self.watch_queue_limit)
        # Subscribe, then take the replay in the same step of the loop: no event can fall in between.
        self.watches.open(watcher)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            if since_rv and not self.watches.resumable(resource, since_rv):
                first = [event_line("ERROR", dumps(status_body(kmock.KubernetesError(
                    status=410, reason="Expired",
                    message=f"too old resource version: {since_rv} ({self._current_rv})"))))]
                timeout = 0  # the stream ends after the error, as the API server ends it
            elif since_rv:
                first = self.watches.since(watcher, since_rv)
            else:
                found = self.store.select(resource, request.namespace, selected.selection())
                found.sort(key=lambda item: (item[0][1] or "", item[0][2]))
                first = [event_line("ADDED", stored.raw) for _, stored in found]
                if request.params.get("sendInitialEvents") == "true":
                    first.append(event_line("BOOKMARK", dumps({
                        "kind": info.kind, "apiVersion": api_version_of(resource), "metadata": {
                            "resourceVersion": str(self._current_rv),
                            "annotations": {"k8s.io/initial-events-end": "true"}}})))
            await response.prepare(_raw_request(request))
            for start in range(0, len(first), LIST_CHUNK):
                await response.write(b"".join(first[start:start + LIST_CHUNK]))
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            bookmarks = request.params.get("allowWatchBookmarks") == "true" and timeout != 0
            next_bookmark = loop.time() + BOOKMARK_EVERY
            while True:
                now = loop.time()
                remaining = None if deadline is None else deadline - now
                if remaining is not None and remaining <= 0:
                    break
                if bookmarks and now >= next_bookmark:
                    await response.write(self._bookmark(info.kind, resource))
                    next_bookmark = now + BOOKMARK_EVERY
                wait = remaining
                if bookmarks:
                    wait = next_bookmark - now if remaining is None else min(next_bookmark - now, remaining)
                events = await watcher.next_events(wait)
                if events is None:
                    if watcher.overflowed:
                        break
                    continue  # a bookmark or the deadline is due
                await response.write(b"".join(events))
            if bookmarks and not watcher.overflowed:
                # As the API server's watch cache: a bookmark just before a watch times out, so its
                # client resumes from the current resourceVersion (not one fallen out of the window).
                await response.write(self._bookmark(info.kind, resource))
            await response.write_eof()
            return response
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):  # the client went away
            return response
        finally:
            self.watches.close(watcher)

    def _bookmark(self, kind: str | None, resource: Resource) -> bytes:
        """A BOOKMARK at the current resourceVersion: every change up to it that the watch selects has
        been queued to it (publish is synchronous) and written (its queue was empty when this is called)."""
        return event_line("BOOKMARK", dumps({"kind": kind, "apiVersion": api_version_of(resource),
                                             "metadata": {"resourceVersion": str(self._current_rv)}}))

    def restart_watches(self) -> int:
        """An API server restart as its watch clients see it (an extension, for tests): every open
        watch stream ends, and the watch cache starts again at the current resourceVersion (a watch
        resumed from an older one gets 410 Expired and its client relists). In the server's loop
        (``EmulatorServer.call``); returns how many streams ended."""
        watchers = self.watches.all()
        for watcher in watchers:
            watcher.end()
        self.watches.forget(self._current_rv)
        return len(watchers)

    @property
    def open_watches(self) -> list[OpenWatch]:
        return [OpenWatch(resource=resource_key(w.resource), namespace=w.namespace, user_agent=w.user_agent)
                for w in self.watches.all()]

    @staticmethod
    def _json(body: bytes, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=body, status=status, content_type="application/json")

    # -- pod logs ---------------------------------------------------------------------------------

    async def _serve_pod_log(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        _, namespace, name = key = _object_key(request)
        stored = self.store.get(key)
        if stored is None:
            raise self._object_not_found(key)
        container = request.params.get("container") or _default_container(stored.load())
        namespace = namespace or ""
        if request.method == kmock.method.PUT:
            if request.params.get("append") == "true":  # a running container's new output (the local kubelet)
                self._container_log(namespace, name, container).append(request.text)
                self._saw_log(namespace, name, container, request.text)
            else:
                self.set_pod_log(namespace, name, request.text, container=container)
            return aiohttp.web.Response(status=204)
        log = self._pod_logs.get((namespace, name), {}).get(container or "")
        try:
            body = log.read(request.params) if log is not None else ""
        except LogQueryError as exc:
            return self._json(dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest",
                                     "message": str(exc), "code": 400}), status=400)
        return aiohttp.web.Response(text=body, content_type="text/plain")

    def _container_log(self, namespace: str, name: str, container: Optional[str]) -> ContainerLog:
        return self._pod_logs.setdefault((namespace, name), {}).setdefault(container or "", ContainerLog())

    def set_pod_log(self, namespace: str, name: str, text: str, container: str | None = None) -> None:
        """Replace the log of one container of a pod (what ``GET .../pods/NAME/log`` serves).

        Without ``container``: the pod's first container, as ``kubectl logs POD`` picks by default.
        """
        stored = self.store.get((PODS, namespace, name))
        if stored is None:
            return  # the pod is gone (or never was): its log goes with it
        container = container or _default_container(stored.load()) or ""
        self._container_log(namespace, name, container).replace(text)
        self._saw_log(namespace, name, container, text)

    def _saw_log(self, namespace: str, name: str, container: Optional[str], text: str) -> None:
        if self.on_pod_log is not None:
            self.on_pod_log(namespace, name, container or "", text)

    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        stored = self.store.get((PODS, namespace, name))
        container = container or (_default_container(stored.load()) if stored else None) or ""
        log = self._pod_logs.get((namespace, name), {}).get(container)
        return log.text if log is not None else ""

    async def _serve_exec(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """``pods/exec``: proxied to the kubelet of the pod's node (local/podexec.py)."""
        from checkpoint_operator.local.podexec import proxy_exec
        return await proxy_exec(self, request)

    def nodes(self) -> list[dict[str, Any]]:
        """Every Node (small: what pods/exec looks its kubelet up in)."""
        return [stored.load() for _, stored in self.store.select(NODES, None)]

    # -- extensions -------------------------------------------------------------------------------

    async def _serve_extension(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.url.path == "/_emulator/watches":
            return aiohttp.web.json_response({"watches": [attrs.asdict(watch) for watch in self.open_watches]})
        return aiohttp.web.json_response({"message": f"unknown emulator extension {request.url.path}"}, status=404)

    def get_object(self, resource: str | Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A copy of a live object (``resource`` as ``v1/pods`` or a kmock resource), for tests and tools."""
        parsed = _parse_resource_key(resource) if isinstance(resource, str) else resource
        stored = self.store.get((parsed, namespace, name))
        return None if stored is None else stored.load()

    def forget_old_requests(self, keep: int | None = None) -> None:
        """Cap kmock's request and error records now (they are capped on every request anyway)."""
        keep = self.request_history if keep is None else keep
        records: list[list[Any]] = [self._requests, *(p._requests for p in self._payloads), *self._errors]
        for kept in records:
            del kept[:-keep or len(kept)]

    # -- persistence ------------------------------------------------------------------------------

    STATE_FORMAT = 2  # JSON Lines: a header line, then one line per object

    def export_state(self) -> dict[str, Any]:
        """Every live object and pod log, JSON-ready. Call it in the emulator's event loop."""
        header, *objects = (json.loads(line) for line in self.state_lines())
        return {**header, "objects": objects}

    def state_lines(self) -> Iterator[bytes]:
        """The state as JSON Lines (what local mode saves): a header with the resourceVersion and the pod
        logs, then each object as stored (not serialized again), so saving holds no second copy."""
        yield dumps({"format": self.STATE_FORMAT, "resourceVersion": self._current_rv, "podLogs": [
            {"namespace": ns, "name": name, "container": container, "text": log.text}
            for (ns, name), logs in self._pod_logs.items() for container, log in logs.items()]}) + b"\n"
        for (resource, _, name), stored in self.store.items():
            if not (resource == CRDS and name in self._builtin_crds):  # those are always this version's
                yield b'{"resource":' + dumps(resource_key(resource)) + b',"object":' + stored.raw + b"}\n"

    def read_state(self, lines: Iterable[bytes]) -> None:
        """Load what ``state_lines`` wrote, one object at a time (or a format-1 file: one JSON document)."""
        lines = iter(lines)
        first = next(lines, b"")
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != self.STATE_FORMAT:
            self.import_state(json.loads(first + b"".join(lines)))
            return
        self.import_state({**header, "objects": (json.loads(line) for line in lines if line.strip())})

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Load what ``export_state`` produced, before the server serves requests (no admission)."""
        for key, info in state.get("resources", {}).items():  # format 1: CRD resources listed apart
            self.resources[_parse_resource_key(key)] = kmock.ResourceInfo(**info)
        for entry in state.get("objects", []):
            resource = _parse_resource_key(entry["resource"])
            obj = entry["object"]
            meta = obj["metadata"]
            if resource == CRDS and meta["name"] in self._builtin_crds:
                continue  # the project's CRDs are always the ones of this version
            self.store.put((resource, meta.get("namespace"), meta["name"]), obj)
            if resource == CRDS:
                self._register_crd(obj)
        for log in state.get("podLogs", []):  # restamped as of now (a saved state keeps the text only)
            self._container_log(log["namespace"], log["name"], log.get("container", "")).replace(log["text"])
        rv = int(state.get("resourceVersion", 0))
        self._current_rv = max(self._current_rv, rv)
        self._resource_versions = itertools.count(self._current_rv + 1)
        self.watches.floor = self._current_rv  # watches from before the restart relist

    # -- internals --------------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._current_rv = next(self._resource_versions)
        return str(self._current_rv)

    def _info(self, resource: Resource) -> kmock.ResourceInfo:
        # The ResourcesArray's dict itself: its __contains__ parses keys with slow Protocol checks.
        info = self.resources._resources.get(resource)
        if info is None:
            raise kmock.KubernetesResourceNotFoundError()
        if info.kind is None:
            info.kind = (resource.plural or "").capitalize()
        return info

    def _get_resources(self) -> list[Resource]:
        # KubernetesEmulator adds the resources of every stored object (a scan of all objects): skipped.
        return k8s.KubernetesScaffold._get_resources(self)

    @staticmethod
    def _object_not_found(key: ObjectKey) -> kmock.KubernetesError:
        resource, _, name = key
        return not_found(f'{resource.plural} "{name}" not found', name=name, group=resource.group,
                         kind=resource.plural)

    @property
    def objects(self) -> Any:  # kmock's view of every object and its history: not kept here
        raise AttributeError("Emulator keeps no kmock object histories: use get_object() or export_state()")


@attrs.frozen
class ListPage:
    """Which of a list's sorted items one response holds, and the token of the next page (None: the last)."""

    start: int
    end: int
    resource_version: int
    next_token: Optional[str]


def list_page(limit: Optional[str], token: Optional[str], current_rv: int,
              keys: list[tuple[str, str]]) -> ListPage:
    """``limit``/``continue`` as kube-apiserver reads them: a page of at most ``limit`` items (none or 0:
    all) after the token's key, and a token naming the last one (base64 JSON, opaque to clients). A
    token that does not parse is a 400, as there."""
    try:
        size = int(limit) if limit else 0
    except ValueError:
        raise bad_request(f"invalid limit {limit!r}: an integer is allowed")
    if size < 0:
        raise bad_request(f"invalid limit {size}: must be 0 or more")
    start, rv = 0, current_rv
    if token:
        try:
            decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
            rv, after = int(decoded["rv"]), (str(decoded["start"][0]), str(decoded["start"][1]))
        except (ValueError, TypeError, KeyError, IndexError, binascii.Error):
            raise bad_request("continue key is not valid: it is the metadata.continue of a previous page")
        start = bisect.bisect_right(keys, after)
    end = len(keys) if not size else min(len(keys), start + size)
    next_token = None
    if end < len(keys):
        next_token = base64.urlsafe_b64encode(json.dumps({"rv": rv, "start": list(keys[end - 1])}).encode()).decode()
    return ListPage(start, end, rv, next_token)


def _grace_period(resource: Resource, obj: Mapping[str, Any], options: Mapping[str, Any],
                  params: Mapping[str, str]) -> int:
    """deletionGracePeriodSeconds as the API server sets it: for a pod, the request's gracePeriodSeconds or
    the pod's terminationGracePeriodSeconds (30 by default); 0 for anything else."""
    if resource != PODS:
        return 0
    asked = options.get("gracePeriodSeconds", params.get("gracePeriodSeconds"))
    if asked is not None:
        return int(asked)
    return int(obj.get("spec", {}).get("terminationGracePeriodSeconds", 30))


def _default_container(pod: Mapping[str, Any]) -> str | None:
    containers = pod.get("spec", {}).get("containers") or []
    return containers[0].get("name") if containers else None


def _merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch, applied to ``target`` in place (None removes a key; lists and scalars replace)."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping):
            target[key] = _merge_patch(target[key] if isinstance(target.get(key), dict) else {}, value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def dumps_state(state: Mapping[str, Any]) -> str:
    return json.dumps(state, indent=1, sort_keys=True)
