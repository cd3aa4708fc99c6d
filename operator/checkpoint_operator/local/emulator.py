"""The emulated Kubernetes API of the integration tests and of local mode: kmock 0.8 plus what it lacks.

kmock's ``KubernetesEmulator`` keeps objects in memory and serves list/watch/get/create/patch/delete
with watch streams, finalizers and deletionTimestamp. It does not behave like a real API server in the
ways this operator depends on; every adaptation lives in this module (``Emulator`` subclasses kmock's
class, the one patched internal is ``_patch_namespace_paths`` below):

- metadata: ``uid``, ``creationTimestamp``, ``resourceVersion`` (one counter for the whole server,
  bumped on every change: spec, status, finalizers, deletionTimestamp, deletion), ``generation``
  (bumped only when something outside ``metadata`` and ``status`` changes); ``generateName``;
- optimistic concurrency: a PATCH/PUT whose resulting object carries a ``metadata.resourceVersion``
  other than the current one answers 409 Conflict; DeleteOptions ``preconditions`` (uid,
  resourceVersion) likewise; create of an existing name answers 409 AlreadyExists;
- a failed JSON-patch ``test`` operation (or any invalid patch) answers 422 Invalid, not 500;
- PUT (replace) of an object, which kmock does not serve at all;
- the ``status`` subresource: PATCH/PUT on ``.../status`` changes only ``status``; on the main
  resource ``status`` is ignored; create drops ``status`` (a Pod starts as ``phase: Pending``);
- ``labelSelector`` (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x,y)``)
  and simple ``fieldSelector`` equalities filter lists and watches;
- lists carry ``kind`` (``PodList``), ``apiVersion`` and the current ``metadata.resourceVersion``;
- watches subscribe before they replay the existing objects (kmock 0.8 replays first, so an event
  emitted in between was lost) and honour ``timeoutSeconds``;
- discovery: kmock's bundled built-in resources plus the project's CRDs (``checkpoints``,
  ``trainingjobs`` in ``ckpt.dev/v1alpha1``); a CustomResourceDefinition created through the API
  registers its resource too;
- ``GET /api/v1/namespaces`` (and ``/api/v1/namespaces/NAME``): kmock 0.8 fails to parse these paths
  (500); fixed, so kopf can run with namespace scanning; the ``default`` namespace exists;
- pod logs: ``GET .../pods/NAME/log`` answers ``text/plain``; the log is set by the local kubelet with
  ``PUT .../pods/NAME/log`` (an extension of this emulator; ``?append=true`` adds to it, as a
  running container's output grows) or ``Emulator.set_pod_log``; ``sinceTime``/``timestamps``
  are not implemented (the whole log is served, which readers of the real API must accept);
- deletion: ``propagationPolicy`` (query or DeleteOptions body). ``Orphan`` strips the owner's
  ownerReferences from its dependents; ``Background`` and ``Foreground`` both leave dependents to
  the garbage collector of ``cluster.LocalCluster`` (Foreground does not block the owner here).
  As in the real API, deleting a ``batch/v1`` Job without a policy orphans its pods;
- persistence for local mode: ``export_state()`` / ``import_state()`` (JSON-ready dicts);
- ``GET /_emulator/watches`` lists the open watch streams (an extension: lets a harness wait until an
  operator is watching before it creates objects).

Not emulated: admission (validation, defaults, CEL rules), server-side apply, strategic-merge list
semantics (a strategic merge patch is a JSON merge patch: lists are replaced), field managers,
namespace termination, graceful pod deletion, watch bookmarks and ``resourceVersion`` resumption
(every watch starts with the current objects as ADDED events, as after a relist).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import re
import secrets
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import apps, parsing, references

from checkpoint_operator import GROUP, VERSION

SUPPORTED_KMOCK_VERSION = "0.8"
if kmock.__version__ != SUPPORTED_KMOCK_VERSION:  # pragma: no cover
    raise ImportError(
        f"checkpoint_operator.local.emulator is written against kmock {SUPPORTED_KMOCK_VERSION} "
        f"(it subclasses and patches kmock internals); kmock {kmock.__version__} is installed. "
        f"Install kmock=={SUPPORTED_KMOCK_VERSION}.")

Resource = references.resource
ObjectKey = tuple[Resource, "str | None", str]

PODS = Resource("", "v1", "pods")
NAMESPACES = Resource("", "v1", "namespaces")
JOBS = Resource("batch", "v1", "jobs")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")

ALL_VERBS = {"get", "list", "watch", "create", "patch", "update", "delete", "deletecollection"}

PROJECT_RESOURCES: dict[str, kmock.ResourceInfo] = {
    f"{GROUP}/{VERSION}/checkpoints": kmock.ResourceInfo(
        kind="Checkpoint", singular="checkpoint", namespaced=True, verbs=ALL_VERBS,
        shortnames={"ckpt", "ckpts"}, categories={"ml"}, subresources={"status"}),
    f"{GROUP}/{VERSION}/trainingjobs": kmock.ResourceInfo(
        kind="TrainingJob", singular="trainingjob", namespaced=True, verbs=ALL_VERBS,
        shortnames={"tj"}, categories={"ml"}, subresources={"status"}),
}

# Server-managed metadata that a client cannot change by PATCH or PUT.
SERVER_MANAGED_METADATA = ("uid", "creationTimestamp", "deletionTimestamp", "generation", "name", "namespace")


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


def invalid(message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=422, reason="Invalid", message=message, details=details or None)


def not_found(message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=404, reason="NotFound", message=message, details=details or None)


# --- selectors -------------------------------------------------------------------------------------

_SELECTOR_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<value>\([^)]*\)|[A-Za-z0-9_.-]*))?\s*$")


@attrs.frozen
class SelectorTerm:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.operator:
            case "exists":
                return present
            case "!exists":
                return not present
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
        raise AssertionError(self.operator)


def _split_selector(text: str) -> list[str]:
    """Split on commas outside parentheses: ``a in (x,y),b`` -> ``["a in (x,y)", "b"]``."""
    terms, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term for term in terms if term.strip()]


def parse_label_selector(text: str) -> list[SelectorTerm]:
    """Parse a ``labelSelector`` query value; an invalid one raises 400 as the real API does."""
    terms = []
    for raw in _split_selector(text):
        match = _SELECTOR_TERM.match(raw)
        if not match or (match["neg"] and match["op"]):
            raise kmock.KubernetesError(status=400, reason="BadRequest",
                                        message=f"unable to parse requirement: {raw!r}")
        op = (match["op"] or "").strip()
        if not op:
            terms.append(SelectorTerm(match["key"], "!exists" if match["neg"] else "exists"))
            continue
        value = match["value"] or ""
        values = frozenset(v.strip() for v in value.strip("()").split(",")) if value.startswith("(") else {value}
        terms.append(SelectorTerm(match["key"], {"==": "="}.get(op, op), frozenset(values)))
    return terms


def _field_value(obj: Mapping[str, Any], dotted: str) -> str | None:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return None if value is None else str(value)


def parse_field_selector(text: str) -> list[Callable[[Mapping[str, Any]], bool]]:
    """``metadata.name=x,status.phase!=Running``: equality and inequality on dotted paths only."""
    checks = []
    for raw in _split_selector(text):
        key, op, value = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$", raw).groups()  # type: ignore[union-attr]
        if op == "!=":
            checks.append(lambda obj, k=key, v=value: _field_value(obj, k) != v)
        else:
            checks.append(lambda obj, k=key, v=value: _field_value(obj, k) == v)
    return checks


@attrs.frozen
class ObjectFilter:
    """What a list or watch request asks for: namespace, name, label and field selectors."""
    namespace: str | None = None
    name: str | None = None
    labels: tuple[SelectorTerm, ...] = ()
    fields: tuple[Callable[[Mapping[str, Any]], bool], ...] = ()

    @classmethod
    def from_request(cls, request: kmock.Request) -> "ObjectFilter":
        return cls(
            namespace=request.namespace, name=request.name,
            labels=tuple(parse_label_selector(request.params.get("labelSelector", ""))),
            fields=tuple(parse_field_selector(request.params.get("fieldSelector", ""))))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        labels = meta.get("labels") or {}
        return all(term.matches(labels) for term in self.labels) and all(check(obj) for check in self.fields)


# --- small object helpers --------------------------------------------------------------------------

def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(length: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generateName
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Everything whose change bumps metadata.generation: all but metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


def api_version_of(resource: Resource) -> str:
    return resource.version if not resource.group else f"{resource.group}/{resource.version}"


def resource_key(resource: Resource) -> str:
    """``batch/v1/jobs``, ``v1/pods``: the persisted name of a resource."""
    return f"{api_version_of(resource)}/{resource.plural}"


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


@attrs.define(kw_only=True)
class OpenWatch:
    resource: str
    namespace: str | None
    user_agent: str


# --- the emulator ----------------------------------------------------------------------------------

@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator behaving closely enough to a real API server for this operator."""

    _resource_versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _current_rv: int = attrs.field(default=0, init=False)
    _pod_logs: dict[tuple[str, str, str], str] = attrs.field(factory=dict, init=False)
    _responses: dict[int, dict[str, Any]] = attrs.field(factory=dict, init=False)  # by id(request)
    open_watches: list[OpenWatch] = attrs.field(factory=list, init=False)
    # Called (without arguments, in the server's loop) after every change; local mode saves state.
    on_change: Callable[[], None] | None = None

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_replace
        with warnings.catch_warnings():  # kmock 0.8 reads its bundle with a deprecated importlib call
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        for key, info in PROJECT_RESOURCES.items():
            self.resources[key] = info
        self._store_new(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})

    # -- request entry point ----------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.url.path.startswith("/_emulator/"):
            return self._serve_extension(request)
        if request.resource == PODS and request.subresource == "log":
            return self._serve_pod_log(request)
        if request.resource is not None and self._changes_state(request):
            async with self._lock:
                self._responses[id(request)] = await self._apply_change(request)
            if self.on_change is not None:
                self.on_change()
        # Skip KubernetesEmulator._handle (its state changes are replaced above); keep kmock's
        # reactions and fallbacks, so tests can still inject responses with kmock's DSL.
        return await apps.RawHandler._handle(self, request)

    @staticmethod
    def _changes_state(request: kmock.Request) -> bool:
        if request.action in (kmock.action.CREATE, kmock.action.DELETE, kmock.action.UPDATE):
            return request.action == kmock.action.CREATE or request.name is not None
        return request.method == kmock.method.PUT and request.name is not None

    async def _apply_change(self, request: kmock.Request) -> dict[str, Any]:
        if request.action == kmock.action.CREATE:
            return await self._create(request)
        if request.action == kmock.action.DELETE:
            return await self._delete(request)
        return await self._update(request)

    # -- create -----------------------------------------------------------------------------------

    async def _create(self, request: kmock.Request) -> dict[str, Any]:
        if not isinstance(request.data, Mapping):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="the body must be a JSON object")
        resource = request.resource
        info = self._info(resource)
        obj = copy.deepcopy(dict(request.data))
        meta = obj.setdefault("metadata", {})
        namespace = (request.namespace or meta.get("namespace") or "default") if info.namespaced else None
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(f"{info.kind}: metadata.name or metadata.generateName is required")
            meta["name"] = meta["generateName"] + random_suffix()
        key = (resource, namespace, meta["name"])
        if self._live(key) is not None:
            raise already_exists(f'{resource.plural} "{meta["name"]}" already exists',
                                 name=meta["name"], group=resource.group, kind=resource.plural)
        obj = self._store_new(resource, obj, namespace=namespace)
        await self._publish(resource, "ADDED", obj)
        if resource == CRDS:
            for crd_resource, crd_info in crd_resource_infos(obj).items():
                self.resources[crd_resource] = crd_info
        return obj

    def _store_new(self, resource: Resource, obj: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
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
        if resource == PODS:
            obj["status"] = {"phase": "Pending"}
        key = (resource, meta.get("namespace"), meta["name"])
        if key in self._objects:
            self._objects[key].history.append(obj)
        else:
            self._objects[key] = obj
        return copy.deepcopy(obj)

    # -- update (PATCH, PUT) ------------------------------------------------------------------------

    async def _update(self, request: kmock.Request) -> dict[str, Any]:
        resource = request.resource
        key = (resource, request.namespace, request.name)
        current = self._live(key)
        if current is None:
            raise self._object_not_found(key)
        if request.subresource not in (None, "status"):
            raise kmock.KubernetesError(status=405, reason="MethodNotAllowed",
                                        message=f"the subresource {request.subresource!r} cannot be changed here")
        requested = self._requested_object(request, current)
        self._check_resource_version(key, current, requested.get("metadata", {}).get("resourceVersion"))
        new = self._merge_by_subresource(resource, current, requested, request.subresource)
        return await self._store_change(key, current, new)

    @staticmethod
    def _requested_object(request: kmock.Request, current: dict[str, Any]) -> dict[str, Any]:
        """The object the client asks for: the body of a PUT, or the current object with the patch applied."""
        if request.method == kmock.method.PUT:
            if not isinstance(request.data, Mapping):
                raise kmock.KubernetesError(status=400, reason="BadRequest", message="the body must be a JSON object")
            return copy.deepcopy(dict(request.data))
        try:
            if isinstance(request.data, list):
                return jsonpatch.apply_patch(current, request.data, in_place=False)
            if isinstance(request.data, Mapping):
                return _merge_patch(current, request.data)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise invalid(f"the server rejected our request due to an error in our request: {exc}")
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, ValueError, TypeError) as exc:
            raise invalid(f"the patch cannot be applied: {exc}")
        raise kmock.KubernetesError(status=400, reason="BadRequest", message="the patch must be a JSON object or list")

    @staticmethod
    def _check_resource_version(key: ObjectKey, current: Mapping[str, Any], requested_rv: Any) -> None:
        current_rv = current["metadata"]["resourceVersion"]
        if requested_rv not in (None, "") and str(requested_rv) != current_rv:
            resource, _, name = key
            raise conflict(
                f'Operation cannot be fulfilled on {resource.plural} "{name}": the object has been modified; '
                f"please apply your changes to the latest version and try again",
                name=name, group=resource.group, kind=resource.plural)

    def _merge_by_subresource(self, resource: Resource, current: dict[str, Any], requested: dict[str, Any],
                              subresource: str | None) -> dict[str, Any]:
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in requested:
                new["status"] = requested["status"]
            else:
                new.pop("status", None)
            return new
        new = copy.deepcopy(requested)
        if "status" in self._info(resource).subresources:
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        new_meta = new.setdefault("metadata", {})
        for field in SERVER_MANAGED_METADATA:
            if field in current["metadata"]:
                new_meta[field] = current["metadata"][field]
            else:
                new_meta.pop(field, None)
        new.setdefault("apiVersion", current.get("apiVersion"))
        new.setdefault("kind", current.get("kind"))
        return new

    async def _store_change(self, key: ObjectKey, current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if new == current:
            return copy.deepcopy(current)  # a no-op update keeps its resourceVersion, as in the real API
        if _spec_part(new) != _spec_part(current):
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[key].history.append(new)
        await self._publish(key[0], "MODIFIED", new)
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._remove(key, new)
        return copy.deepcopy(new)

    # -- delete -----------------------------------------------------------------------------------

    async def _delete(self, request: kmock.Request) -> dict[str, Any]:
        resource = request.resource
        key = (resource, request.namespace, request.name)
        current = self._live(key)
        if current is None:
            raise self._object_not_found(key)
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

        if current["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(current)
        if current["metadata"].get("finalizers"):
            new = copy.deepcopy(current)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            return await self._store_change(key, current, new)
        new = copy.deepcopy(current)
        new["metadata"]["resourceVersion"] = self._next_rv()
        await self._remove(key, new)
        if policy == "Orphan":
            await self._orphan_dependents(current)
        return new

    async def _remove(self, key: ObjectKey, last: dict[str, Any]) -> None:
        self._objects[key].delete()
        if key[0] == PODS:
            for log_key in [k for k in self._pod_logs if k[:2] == (key[1], key[2])]:
                del self._pod_logs[log_key]
        await self._publish(key[0], "DELETED", last)

    async def _orphan_dependents(self, owner: Mapping[str, Any]) -> None:
        owner_uid = owner["metadata"]["uid"]
        for key, obj in list(self._live_objects()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == owner_uid for ref in refs):
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = [ref for ref in refs if ref.get("uid") != owner_uid] or None
                if new["metadata"]["ownerReferences"] is None:
                    del new["metadata"]["ownerReferences"]
                await self._store_change(key, obj, new)

    # -- reading: fetch, list, watch ---------------------------------------------------------------------

    async def _serve_fetch(self, request: kmock.Request) -> dict[str, Any]:
        obj = self._live((request.resource, request.namespace, request.name))
        if obj is None:
            raise self._object_not_found((request.resource, request.namespace, request.name))
        return copy.deepcopy(obj)

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        info = self._info(request.resource)
        selected = ObjectFilter.from_request(request)
        async with self._lock:
            items = [copy.deepcopy(obj) for (resource, _, _), obj in self._live_objects()
                     if resource == request.resource and selected.matches(obj)]
            list_rv = str(self._current_rv)
        return {"apiVersion": api_version_of(request.resource), "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": list_rv}, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        yield b""  # send the headers now: a quiet stream must still open
        self._info(request.resource)
        selected = ObjectFilter.from_request(request)
        timeout = float(request.params["timeoutSeconds"]) if request.params.get("timeoutSeconds") else None
        bus = self._buses[request.resource]
        async with self._lock:
            # Subscribe first, then replay: no event can fall between the replay and the stream.
            mark = await bus.mark()
            existing = [copy.deepcopy(obj) for (resource, _, _), obj in self._live_objects()
                        if resource == request.resource and selected.matches(obj)]
        watch = OpenWatch(resource=resource_key(request.resource), namespace=request.namespace,
                          user_agent=request.headers.get("User-Agent", ""))
        self.open_watches.append(watch)
        try:
            for obj in existing:
                yield {"type": "ADDED", "object": obj}
            deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
            events = aiter(bus.stream(since=mark))
            while True:
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(anext(events), remaining)
                except asyncio.TimeoutError:
                    return
                if selected.matches(event["object"]):
                    yield event
        finally:
            self.open_watches.remove(watch)
            await bus.unmark(mark)

    async def _serve_create(self, request: kmock.Request) -> dict[str, Any]:
        return self._responses.pop(id(request))

    async def _serve_update(self, request: kmock.Request) -> dict[str, Any]:
        return self._responses.pop(id(request))

    async def _serve_delete(self, request: kmock.Request) -> dict[str, Any]:
        return self._responses.pop(id(request))

    async def _serve_replace(self, request: kmock.Request) -> dict[str, Any]:
        if id(request) not in self._responses:
            raise kmock.KubernetesEndpointNotFoundError()
        return self._responses.pop(id(request))

    # -- pod logs ---------------------------------------------------------------------------------

    def _serve_pod_log(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        key = (PODS, request.namespace, request.name)
        pod = self._live(key)
        if pod is None:
            return aiohttp.web.json_response(self._status_body(self._object_not_found(key)), status=404)
        container = request.params.get("container") or _default_container(pod)
        if request.method == kmock.method.PUT:
            if request.params.get("append") == "true":  # a running container's new output (the local kubelet)
                text = self.pod_log(request.namespace, request.name, container) + request.text
            else:
                text = request.text
            self.set_pod_log(request.namespace, request.name, text, container=container)
            return aiohttp.web.Response(status=204)
        return aiohttp.web.Response(text=self.pod_log(request.namespace, request.name, container),
                                    content_type="text/plain")

    def set_pod_log(self, namespace: str, name: str, text: str, container: str | None = None) -> None:
        """Replace the log of one container of a pod (what ``GET .../pods/NAME/log`` serves).

        Without ``container``: the pod's first container, as ``kubectl logs POD`` picks by default.
        """
        pod = self._live((PODS, namespace, name))
        container = container or (_default_container(pod) if pod else None) or ""
        self._pod_logs[(namespace, name, container)] = text

    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        pod = self._live((PODS, namespace, name))
        container = container or (_default_container(pod) if pod else None) or ""
        return self._pod_logs.get((namespace, name, container), "")

    # -- extensions -------------------------------------------------------------------------------

    def _serve_extension(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.url.path == "/_emulator/watches":
            return aiohttp.web.json_response({"watches": [attrs.asdict(watch) for watch in self.open_watches]})
        return aiohttp.web.json_response({"message": f"unknown emulator extension {request.url.path}"}, status=404)

    # -- housekeeping -----------------------------------------------------------------------------

    def forget_old_requests(self, keep: int = 5000) -> None:
        """Trim kmock's request records and accumulated errors (they grow forever in a long local run).

        kmock records every request (for assertions) and every error response (with its traceback).
        Only the newest ``keep`` of each stay once there are twice as many. Call it in the server's loop.
        """
        if len(self._requests) > 2 * keep:
            del self._requests[:-keep]
            for payload in self._payloads:
                del payload._requests[:-keep]
        if self._errors and len(self._errors[-1]) > 2 * keep:
            del self._errors[-1][:-keep]

    # -- persistence ------------------------------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """Every live object and pod log, JSON-ready. Call it in the emulator's event loop."""
        objects = [{"resource": resource_key(resource), "object": copy.deepcopy(obj)}
                   for (resource, _, _), obj in self._live_objects()]
        crds = {resource_key(resource): attrs.asdict(self.resources[resource])
                for resource in self.resources if resource.group == GROUP or self._is_crd_resource(resource)}
        return {
            "format": 1,
            "resourceVersion": self._current_rv,
            "resources": {key: {k: sorted(v) if isinstance(v, set) else v for k, v in info.items()}
                          for key, info in crds.items()},
            "objects": objects,
            "podLogs": [{"namespace": ns, "name": name, "container": container, "text": text}
                        for (ns, name, container), text in self._pod_logs.items()],
        }

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Load what ``export_state`` produced, before the server serves requests."""
        for key, info in state.get("resources", {}).items():
            self.resources[_parse_resource_key(key)] = kmock.ResourceInfo(**info)
        for entry in state.get("objects", []):
            resource = _parse_resource_key(entry["resource"])
            obj = entry["object"]
            meta = obj["metadata"]
            self._objects[(resource, meta.get("namespace"), meta["name"])] = obj
        for log in state.get("podLogs", []):
            self._pod_logs[(log["namespace"], log["name"], log.get("container", ""))] = log["text"]
        rv = int(state.get("resourceVersion", 0))
        self._current_rv = max(self._current_rv, rv)
        self._resource_versions = itertools.count(self._current_rv + 1)

    def _is_crd_resource(self, resource: Resource) -> bool:
        return any(resource in crd_resource_infos(obj) for (res, _, _), obj in self._live_objects() if res == CRDS)

    # -- internals --------------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._current_rv = next(self._resource_versions)
        return str(self._current_rv)

    def _info(self, resource: Resource | None) -> kmock.ResourceInfo:
        if resource is None or resource not in self.resources:
            raise kmock.KubernetesResourceNotFoundError()
        info = self.resources[resource]
        if info.kind is None:
            info.kind = (resource.plural or "").capitalize()
        return info

    def _live(self, key: ObjectKey) -> dict[str, Any] | None:
        if key not in self._objects or self._objects[key].deleted:
            return None
        return self._objects[key].raw

    def _live_objects(self) -> list[tuple[ObjectKey, dict[str, Any]]]:
        return [(key, obj.raw) for key, obj in self._objects.items() if not obj.deleted]

    @staticmethod
    def _object_not_found(key: ObjectKey) -> kmock.KubernetesError:
        resource, _, name = key
        return not_found(f'{resource.plural} "{name}" not found', name=name, group=resource.group,
                         kind=resource.plural)

    @staticmethod
    def _status_body(error: kmock.KubernetesError) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": error.status, "reason": error.reason, "message": error.message,
                "details": error.details or {}}

    async def _publish(self, resource: Resource, event_type: str, obj: Mapping[str, Any]) -> None:
        await self._buses[resource].put({"type": event_type, "object": copy.deepcopy(dict(obj))})


def _default_container(pod: Mapping[str, Any]) -> str | None:
    containers = pod.get("spec", {}).get("containers") or []
    return containers[0].get("name") if containers else None


def _merge_patch(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch (None removes a key; lists and scalars replace)."""
    result = copy.deepcopy(dict(current))
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merge_patch(result[key], value)
        elif isinstance(value, Mapping):
            result[key] = _merge_patch({}, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def dumps_state(state: Mapping[str, Any]) -> str:
    return json.dumps(state, indent=1, sort_keys=True)
