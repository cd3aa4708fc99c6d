"""A thin, dict-based Kubernetes API client for the handlers.

Objects stay plain dicts (as kopf hands them to us) instead of the generated typed models:
the logic builds manifests as dicts, and custom resources have no typed models anyway. Every
call the operator makes goes through `Kube`, so tests/unit/test_rbac.py can hold the calls
against the chart's RBAC rules.
"""

from __future__ import annotations

import builtins
import collections
import copy
import contextlib
import json
import threading
import time
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, Callable, Optional
from urllib.parse import quote

import kubernetes

from checkpoint_operator import GROUP, VERSION


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    def path(self, namespace: Optional[str], name: Optional[str] = None, subresource: Optional[str] = None) -> str:
        """`namespace` is ignored for cluster-scoped resources (pass ""); None lists a namespaced
        resource in every namespace."""
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        in_namespace = self.namespaced and namespace is not None
        path = f"{base}/namespaces/{quote(namespace or '')}/{self.plural}" if in_namespace else f"{base}/{self.plural}"
        if name:
            path += f"/{quote(name)}"
        if subresource:
            path += f"/{subresource}"
        return path

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


CHECKPOINTS = Resource(GROUP, VERSION, "checkpoints", "Checkpoint")
TRAINING_JOBS = Resource(GROUP, VERSION, "trainingjobs", "TrainingJob")
JOBS = Resource("batch", "v1", "jobs", "Job")
JOBSETS = Resource("jobset.x-k8s.io", "v1alpha2", "jobsets", "JobSet")
SERVICES = Resource("", "v1", "services", "Service")
PODS = Resource("", "v1", "pods", "Pod")
PVCS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
EVENTS = Resource("", "v1", "events", "Event")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
PERSISTENT_VOLUMES = Resource("", "v1", "persistentvolumes", "PersistentVolume", namespaced=False)
VOLUME_SNAPSHOTS = Resource("snapshot.storage.k8s.io", "v1", "volumesnapshots", "VolumeSnapshot")
CLUSTER_CHECKPOINTS = Resource(GROUP, VERSION, "clustercheckpoints", "ClusterCheckpoint", namespaced=False)
SECRETS = Resource("", "v1", "secrets", "Secret")  # only the operator's own signing key (reconcile/signing_keys.py)


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """409: the object changed since it was read (or already exists)."""


MANAGED_BY = ("app.kubernetes.io/managed-by", "checkpoint-operator")
LIST_PAGE = 500  # objects per LIST response (kubectl's --chunk-size default)
SETTLED = {"TrainingJob": ("Succeeded", "Failed"), "Checkpoint": ("Ready", "Failed")}
CACHED_KINDS = ("TrainingJob", "Checkpoint", "Job", "JobSet", "Pod", "PersistentVolumeClaim")


class ObjectCache:
    """The latest known body of the objects the reconciles read most, as the watch streams and the
    operator's own writes returned them (controller-runtime's informer cache): such a read costs no
    request. Kept while they have work ahead: a TrainingJob not finished, a Checkpoint not settled
    (or either being deleted), and the Jobs, JobSets, pods and claims the operator made (labelled
    managed-by); anything else is read live. The newest version wins (resourceVersions compared as
    numbers when both are, as etcd's revisions are). A stale read is harmless by construction: every
    write a decision depends on is conditional on the version it was decided on (a 409 reads live),
    and a watch event updates the cache before it wakes the object that depends on it.

    Only where a watch keeps it fresh: a write's response is kept only for a kind and namespace a
    watch stream has shown an event of. Elsewhere (a namespaced install's catalog namespace, one
    the operator does not watch, or one whose watch has not started) nothing would ever update it:
    such objects are read live, always (a pod kept as Pending forever held its owner forever)."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._watched: set[tuple[str, str]] = set()  # (kind, namespace) a watch stream has shown an event of
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._bodies)

    def observe(self, body: Optional[dict[str, Any]], deleted: bool = False, *, from_watch: bool = False) -> None:
        """A watch event's object (`from_watch`), or what a write or a live read returned."""
        if not body or body.get("kind") not in CACHED_KINDS:
            return
        meta = body.get("metadata") or {}
        key = (str(body.get("kind")), meta.get("namespace") or "", meta.get("name") or "")
        with self._lock:
            if from_watch:
                self._watched.add(key[:2])
            elif key[:2] not in self._watched:
                return  # no watch would ever tell of its changes
            if not deleted and not from_watch and _going(body):
                return  # not stored; what the watch told stays (`_going`)
            if deleted or not _worth_keeping(body):
                self._bodies.pop(key, None)
                return
            known = self._bodies.get(key)
            if known is None or not _older(meta.get("resourceVersion"), known) or \
                    (known.get("metadata") or {}).get("uid") != meta.get("uid"):
                self._bodies[key] = body

    def drop(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._bodies.pop((kind, namespace, name), None)

    def knows(self, kind: str, namespace: str, name: str) -> bool:
        """Whether it holds the object (no copy made)."""
        with self._lock:
            return (kind, namespace, name) in self._bodies

    def get(self, kind: str, namespace: str, name: str) -> Optional[dict[str, Any]]:
        """A copy of the body (the caller may change it), or None: not known here (read it live)."""
        with self._lock:
            body = self._bodies.get((kind, namespace, name))
        return copy.deepcopy(body) if body is not None else None


def _going(body: dict[str, Any]) -> bool:
    """Being deleted with no finalizer left: the API server removes it (at once, or a pod after its
    grace period). The response to the write that removed the last finalizer (the Checkpoint's
    protection) often comes back after the DELETED event was handled: kept, it stayed forever, about
    500 bytes of every lifecycle (docs/performance.md "Memory over many job lifecycles"). A watch
    event of such an object is kept (a pod in its grace period still exists; its DELETED drops it,
    and it keeps an older write's response from being taken for the pod: hostile13 H13-2)."""
    meta = body.get("metadata") or {}
    return bool(meta.get("deletionTimestamp")) and not meta.get("finalizers")


def _worth_keeping(body: dict[str, Any]) -> bool:
    kind, meta = body.get("kind"), body.get("metadata") or {}
    if kind in SETTLED:
        return bool(meta.get("deletionTimestamp")) or (body.get("status") or {}).get("phase") not in SETTLED[kind]
    return (meta.get("labels") or {}).get(MANAGED_BY[0]) == MANAGED_BY[1]


def _older(version: Optional[str], known: dict[str, Any]) -> bool:
    have = (known.get("metadata") or {}).get("resourceVersion")
    return bool(version and have and version.isdigit() and have.isdigit() and int(version) < int(have))


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient):
        self.api = api_client
        # Requests sent, by verb, and by verb and what they touch: main.py exports them as metrics
        # (bench/scale.py counts them, and says per lifecycle what each is for).
        self.requests: collections.Counter[str] = collections.Counter()
        self.requests_by_target: collections.Counter[tuple[str, str]] = collections.Counter()
        self.cache = ObjectCache()  # fed by main.py's watch handlers and by the writes below
        self._count_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> "Kube":
        """For the local emulator and tests: plain HTTP, no credentials."""
        config = kubernetes.client.Configuration(host=url)
        config.verify_ssl = False
        return cls(kubernetes.client.ApiClient(config))

    @classmethod
    def from_environment(cls) -> "Kube":
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        client = kubernetes.client.ApiClient()
        throttle_token_refresh(client.configuration)
        return cls(client)

    # --- transport ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, query: Optional[dict[str, Any]] = None,
              content_type: str = "application/json", raw: bool = False, max_bytes: Optional[int] = None) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        query_params = [(k, v) for k, v in (query or {}).items() if v is not None]
        method, url, headers, body, _ = self.api.param_serialize(
            method=method, resource_path=path, query_params=query_params, header_params=headers,
            body=body, auth_settings=["BearerToken"])
        with self._count_lock:
            self.requests[method] += 1
            self.requests_by_target[(method, request_target(path))] += 1
        try:
            response = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=30)
            data = _read_capped(response, max_bytes) if max_bytes is not None else response.read()
        except kubernetes.client.ApiException as exc:  # some transports raise instead of returning
            raise _error(exc.status, exc.body or "") from None
        text = data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
        if response.status >= 400:
            raise _error(response.status, text)
        if raw:
            return text
        return json.loads(text) if text else {}

    # --- verbs ---------------------------------------------------------------------------------

    def get(self, resource: Resource, namespace: str, name: str) -> Optional[dict[str, Any]]:
        try:
            return self._observed(self._call("GET", resource.path(namespace, name)))
        except NotFound:
            self.cache.drop(resource.kind, namespace, name)
            return None

    def cached_get(self, resource: Resource, namespace: str, name: str) -> Optional[dict[str, Any]]:
        """The object as the cache knows it (ObjectCache), else read live. Not for the reads a
        guarantee stands on (an input at start, the in-use protection): those are live."""
        return self.cache.get(resource.kind, namespace, name) or self.get(resource, namespace, name)

    def cached(self, resource: Resource, namespace: str, name: str) -> bool:
        """Whether the cache knows the object (it exists, as far as the watch and our writes tell): no request."""
        return self.cache.get(resource.kind, namespace, name) is not None

    def _observed(self, body: Any) -> Any:
        if isinstance(body, dict):
            self.cache.observe(body)
        return body

    def list(self, resource: Resource, namespace: Optional[str], label_selector: Optional[str] = None,
             field_selector: Optional[str] = None) -> builtins.list[dict[str, Any]]:
        """Every object, read in pages (`pages`): no one response holds a whole large collection."""
        return [item for page in self.pages(resource, namespace, label_selector, field_selector) for item in page]

    def pages(self, resource: Resource, namespace: Optional[str], label_selector: Optional[str] = None,
              field_selector: Optional[str] = None, limit: Optional[int] = None) -> Iterator[builtins.list[dict[str, Any]]]:
        """A LIST in pages of at most `limit` objects (limit + continue, as kubectl's --chunk-size 500):
        a caller that keeps only what it needs of each page holds one page at a time. A token that
        expired between pages (410) is raised, as kubectl does."""
        token: Optional[str] = None
        while True:
            query = {"labelSelector": label_selector, "fieldSelector": field_selector, "limit": str(limit or LIST_PAGE),
                     "continue": token}
            answer = self._call("GET", resource.path(namespace), query=query)
            yield answer.get("items") or []
            token = (answer.get("metadata") or {}).get("continue") or None
            if not token:
                return

    def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": resource.api_version, "kind": resource.kind, **body}
        return self._observed(self._call("POST", resource.path(namespace), body))

    def ensure(self, resource: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the object, or return the existing one of that name (idempotent creates)."""
        try:
            return self.create(resource, namespace, body)
        except Conflict:
            return self.get(resource, namespace, body["metadata"]["name"]) or {}

    def patch(self, resource: Resource, namespace: str, name: str, patch: dict[str, Any],
              subresource: Optional[str] = None) -> dict[str, Any]:
        """A JSON merge patch. Put metadata.resourceVersion in it to make it conditional (409 on change)."""
        return self._observed(self._call("PATCH", resource.path(namespace, name, subresource), patch,
                                         content_type="application/merge-patch+json"))

    def patch_json(self, resource: Resource, namespace: str, name: str,
                   operations: builtins.list[dict[str, Any]]) -> dict[str, Any]:
        """A JSON patch (RFC 6902): its `test` operations make it conditional (422, nothing changed)."""
        return self._observed(self._call("PATCH", resource.path(namespace, name), operations,
                                         content_type="application/json-patch+json"))

    def patch_status(self, resource: Resource, namespace: str, name: str, status: dict[str, Any],
                     resource_version: Optional[str] = None) -> dict[str, Any]:
        patch: dict[str, Any] = {"status": status}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        return self.patch(resource, namespace, name, patch, subresource="status")

    def delete(self, resource: Resource, namespace: str, name: str, propagation: str = "Background",
               resource_version: Optional[str] = None, uid: Optional[str] = None) -> bool:
        """Delete; False when it was already gone (deletes are idempotent). Preconditions make it
        conditional, a Conflict otherwise: `resource_version` (the object changed since it was
        read), `uid` (another object of the same name)."""
        options: dict = {"propagationPolicy": propagation}
        preconditions = {k: v for k, v in (("resourceVersion", resource_version), ("uid", uid)) if v is not None}
        if preconditions:
            options["preconditions"] = preconditions
        # Going or gone: read live from now on (a refused DELETE raises, and the object stays known).
        try:
            self._call("DELETE", resource.path(namespace, name), options)
        except NotFound:
            self.cache.drop(resource.kind, namespace, name)
            return False
        self.cache.drop(resource.kind, namespace, name)
        return True

    def serves(self, resource: Resource) -> bool:
        """Discovery: whether the API server serves `resource` (a CRD that is installed). Every
        authenticated client may read discovery (Kubernetes' system:discovery role)."""
        base = f"/apis/{resource.group}/{resource.version}" if resource.group else f"/api/{resource.version}"
        try:
            document = self._call("GET", base)
        except NotFound:
            return False
        return any(r.get("name") == resource.plural for r in document.get("resources") or [])

    def read_log(self, namespace: str, pod: str, container: Optional[str] = None, *, limit_bytes: int,
                 tail_lines: Optional[int] = None, since_time: Optional[str] = None, timestamps: bool = False) -> str:
        """A bounded read of a container's log (a tenant controls what its pods print): at most
        `limit_bytes` (the kubelet cuts there, mid-line), of the last `tail_lines` lines and/or
        from `since_time` (RFC 3339; the API server passes it on in whole seconds), each line
        prefixed with its RFC 3339 timestamp when `timestamps`."""
        if limit_bytes < 1:
            raise ValueError("a log read needs a byte limit of at least 1")
        query = {"container": container, "limitBytes": str(limit_bytes),
                 "tailLines": str(tail_lines) if tail_lines is not None else None, "sinceTime": since_time,
                 "timestamps": "true" if timestamps else None}
        # A server that ignored limitBytes would still get no more than the bound into memory.
        return self._call("GET", PODS.path(namespace, pod, "log"), query=query, raw=True, max_bytes=limit_bytes)

    def list_live(self, resource: Resource, namespace: Optional[str],
                  label_selector: str) -> builtins.list[dict[str, Any]]:
        """A LIST served from etcd, never from a watch cache (resourceVersion unset = a quorum
        read on a real API server): what the in-use protection decides on. `namespace` None: every
        namespace (a ClusterCheckpoint's users)."""
        return self.list(resource, namespace, label_selector=label_selector)


TOKEN_REFRESH_EVERY = 10.0  # seconds


def throttle_token_refresh(configuration: kubernetes.client.Configuration,
                           clock: Callable[[], float] = time.monotonic) -> None:
    """kubernetes' config loaders (in-cluster and kubeconfig) install a hook that runs before every
    request: it checks the token's expiry and sets host, CA and token again, and setting the host
    reads the proxy environment (3-5% of the operator's CPU in bench/scale.py). Run it at most every
    TOKEN_REFRESH_EVERY seconds: the loaders refresh a token well before it expires (in-cluster a
    minute after reading it, a kubeconfig's five minutes before its expiry)."""
    hook = configuration.refresh_api_key_hook
    if hook is None:
        return
    last = float("-inf")

    def refresh(config: kubernetes.client.Configuration) -> None:
        nonlocal hook, last
        now = clock()
        if now - last >= TOKEN_REFRESH_EVERY:
            last = now
            hook(config)
            # The loader's hook installs itself again as it runs: keep this one in front of it.
            if config.refresh_api_key_hook is not refresh and config.refresh_api_key_hook is not None:
                hook = config.refresh_api_key_hook
            config.refresh_api_key_hook = refresh
    configuration.refresh_api_key_hook = refresh


def request_target(path: str) -> str:
    """What a request touches, without names: `trainingjobs/status`, `pods/log`, `checkpoints` (one
    object), `events (collection)` (a create or a list), `apis/ckpt.dev/v1alpha1` (discovery)."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    if not rest:
        return "/".join(parts)
    plural = rest[0]
    if len(rest) == 1:
        return f"{plural} (collection)"
    return f"{plural}/{rest[2]}" if len(rest) > 2 else plural
def _read_capped(response: Any, max_bytes: int) -> bytes | str:
    """At most `max_bytes` of the response body; a connection with more left is closed, not reused."""
    raw = getattr(response, "response", None)
    if raw is None or not hasattr(raw, "read"):  # a transport that buffered the body already
        data = response.read()
        return data[:max_bytes] if isinstance(data, (bytes, str)) else data
    data = raw.read(max_bytes + 1)
    if len(data) > max_bytes:
        raw.close()
        return data[:max_bytes]
    with contextlib.suppress(Exception):
        raw.release_conn()
    return data


def _error(status: int, text: str) -> ApiError:
    try:
        payload = json.loads(text)
        reason, message = payload.get("reason", ""), payload.get("message", text)
    except (ValueError, AttributeError):
        reason, message = "", text
    cls = NotFound if status == 404 else Conflict if status == 409 else ApiError
    return cls(status, reason, message)
