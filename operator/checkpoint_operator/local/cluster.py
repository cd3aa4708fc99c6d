"""A tiny "cluster" beside the emulated API: PVC binder, Job and JobSet controllers, a stand-in for
Kueue's admission, kubelet and garbage collector.

``LocalCluster`` talks to the API only over HTTP. It watches PVCs, Jobs, JobSets, Services and Pods (``informer.py``:
one list + watch each, kept in memory) and reconciles only what an event concerns: the object
itself and the objects that depend on it (a pod's event wakes its Job and the claims it mounts; a
claim bound wakes the pods waiting for it; an owner deleted wakes its dependents for the garbage
collector). Every controller is level-based and idempotent, reading the current state from the
caches; its own writes go into the caches at once (so it never acts twice on a stale view), and a
full resync every ``poll_interval`` seconds is the safety net for anything missed.

- ``PvcBinder``: a new PersistentVolumeClaim becomes ``Bound`` to a fresh host directory
  ``<data_dir>/volumes/<namespace>/<claim>-<uid8>`` (mode 0777, as local-path provisioners make
  them); deleting the claim deletes the directory. Claims get the ``kubernetes.io/pvc-protection``
  finalizer: a claim that a running pod uses is deleted only after that pod has finished.
- ``JobController`` (``jobs.py``, batch/v1): pods from ``spec.template``; completions, parallelism,
  completionMode Indexed (hostnames ``<job>-<index>``), backoffLimit, activeDeadlineSeconds, suspend;
  terminal conditions only once every pod has stopped, as Kubernetes 1.31+.
- ``JobSetController`` (``jobsets.py``, jobset.x-k8s.io/v1alpha2): child Jobs, the headless Service,
  restarts (failurePolicy), successPolicy, suspend; with ``jobset=True`` (the default) the JobSet
  CRD is installed first (``jobset_crd``: a minimal one unless given, e.g. JobSet's published CRD).
- ``KueueStandIn`` (``kueue.py``): admits a suspended Job or JobSet labelled with a Kueue queue name at
  once, and can preempt it (``kueue=True``, the default); ``report`` gets a line for each.
- ``Kubelet`` (``kubelet.py``): runs pods with a runtime (``runtime.py``: host processes in a view
  of the pod's mounts; ``engine.py``: containers of their images with Podman or Docker).
- ``ExecServer`` (``podexec.py``): the kubelet's exec endpoint, registered as the node ``local``; the
  emulator proxies ``pods/exec`` to it.
- ``GarbageCollector``: deletes Pods, Jobs and PVCs all of whose ownerReferences point to objects
  that no longer exist (or exist with another uid), confirmed by a live read before deleting, and
  deleting with the resourceVersion it judged, as the Kubernetes garbage collector does. Owners of
  other kinds are watched as they are referred to.

A test can play the training code with ``container_runner``:
``async def runner(pod, container, env, mounts) -> int | None`` is called for every container with the
host environment (paths in the container's view) and ``{mountPath: host directory}``; an int is the
exit code, ``(exit code, reason)`` also sets the terminated state's reason (``(137, "OOMKilled")``),
None runs the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from checkpoint_operator.agent import fstree
from checkpoint_operator.local.informer import Informer, Key, WorkQueue, key_of
from checkpoint_operator.local.jobs import (  # noqa: F401 - re-exported for callers of the old module
    JobController, build_job_pod, job_condition, job_is_finished, parse_rfc3339, pod_completion_index, random_suffix,
)
from checkpoint_operator.local.jobsets import JOBSETS, SERVICES, JobSetController, minimal_crd
from checkpoint_operator.local.kueue import KueueStandIn
from checkpoint_operator.local.kubelet import (  # noqa: F401 - re-exported for callers of the old module
    TERMINAL_PHASES, ContainerRunner, Kubelet, claim_names_of_pod, expand_variables, meta, now_rfc3339, pod_phase,
)
from checkpoint_operator.local.podexec import ExecServer, register_node
from checkpoint_operator.local.runtime import host_command  # noqa: F401 - re-exported
from checkpoint_operator.local.server import ApiClient, ApiError

logger = logging.getLogger(__name__)

PODS, JOBS, CLAIMS = "v1/pods", "batch/v1/jobs", "v1/persistentvolumeclaims"
PVC_PROTECTION = "kubernetes.io/pvc-protection"
DEFAULT_RESYNC_SECONDS = 10.0
OWNER_SYNC_TIMEOUT = 5.0  # seconds the GC waits for a new owner kind's cache before asking the API
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
KIND_TO_RESOURCE = {
    "Pod": PODS, "PersistentVolumeClaim": CLAIMS, "Secret": "v1/secrets", "ConfigMap": "v1/configmaps", "Job": JOBS,
    "Service": SERVICES,
}


def uid_of(obj: Mapping[str, Any]) -> str:
    return meta(obj)["uid"]


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def owner_uids(obj: Mapping[str, Any]) -> list[str]:
    return [ref["uid"] for ref in meta(obj).get("ownerReferences") or [] if ref.get("uid")]


# Owner kinds without a namespace: a namespaced dependent may name one (a catalog entry owns each
# namespace's copy), and it is looked up without the dependent's namespace.
CLUSTER_SCOPED_KINDS = {"ClusterCheckpoint", "Namespace", "Node", "PersistentVolume"}


def owner_namespace(ref: Mapping[str, Any], namespace: str) -> str | None:
    return None if ref.get("kind") in CLUSTER_SCOPED_KINDS else namespace


def owner_resource(ref: Mapping[str, Any]) -> str:
    """``batch/v1/jobs`` for an ownerReference to a Job; CRD kinds: ``group/version/<kind>s``."""
    if ref.get("kind") in KIND_TO_RESOURCE and ref.get("apiVersion") in ("v1", "batch/v1"):
        return KIND_TO_RESOURCE[ref["kind"]]
    return f"{ref['apiVersion']}/{ref['kind'].lower()}s"


class Cache:
    """One resource in every watched namespace (an informer each), looked up by (namespace, name)."""

    def __init__(self, api: ApiClient, resource: str, namespaces: list[str], on_change: Any) -> None:
        self.resource = resource
        watched: list[str | None] = [*namespaces] or [None]  # None: every namespace
        self.informers = {ns: Informer(api, resource, ns, on_change) for ns in watched}

    def start(self) -> None:
        for informer in self.informers.values():
            informer.start()

    async def stop(self) -> None:
        for informer in self.informers.values():
            await informer.stop()

    async def wait_synced(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in self.informers.values())), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _informer(self, namespace: str) -> Informer | None:
        return self.informers.get(namespace) or self.informers.get(None)

    def get(self, key: Key) -> dict | None:
        informer = self._informer(key[0])
        return informer.get(*key) if informer else None

    def observe(self, obj: dict | None) -> None:
        if obj and meta(obj).get("name"):
            informer = self._informer(meta(obj).get("namespace") or "")
            if informer is not None:
                informer.observe(obj)

    def __iter__(self) -> Iterator[dict]:
        for informer in self.informers.values():
            yield from informer


# --- PVC binder --------------------------------------------------------------------------------------

class PvcBinder:
    """Binds claims to host directories and deletes a directory with its claim."""

    def __init__(self, api: ApiClient, data_dir: Path, claims: Cache) -> None:
        self.api = api
        self.volumes_dir = data_dir / "volumes"
        self.claims = claims
        self._bound: dict[Key, tuple[str, Path]] = {}  # (ns, name) -> (uid, directory)

    def directory_for(self, claim: Mapping[str, Any]) -> Path:
        # A file name has at most 255 bytes and a claim's name up to 253: the name is cut (the uid
        # keeps the directory unique), else a long name fails every bind (issue 8.10).
        return self.volumes_dir / meta(claim)["namespace"] / f"{meta(claim)['name'][:200]}-{uid_of(claim)[:8]}"

    def claim_dir(self, namespace: str, name: str) -> Path | None:
        bound = self._bound.get((namespace, name))
        return bound[1] if bound else None

    async def reconcile(self, claim: dict, users: Iterable[dict]) -> bool:
        """Bind a claim or release a deleted one; True when it just became usable."""
        if is_deleting(claim):
            await self._release_when_unused(claim, users)
            return False
        return await self._bind(claim)

    def forget(self, claim: Mapping[str, Any]) -> None:
        """The claim is gone from the API: so is its directory."""
        key = (meta(claim)["namespace"], meta(claim)["name"])
        bound = self._bound.get(key)
        if bound and bound[0] == uid_of(claim):
            del self._bound[key]
            fstree.remove_tree(str(bound[1]), ignore_errors=True, make_writable=True)

    async def _bind(self, claim: dict) -> bool:
        key = (meta(claim)["namespace"], meta(claim)["name"])
        newly = self._bound.get(key, ("",))[0] != uid_of(claim)
        if newly:
            directory = self.directory_for(claim)
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o777)  # any container user may write, as on a local-path volume
            self._bound[key] = (uid_of(claim), directory)
        if PVC_PROTECTION not in (meta(claim).get("finalizers") or []):
            finalizers = [*(meta(claim).get("finalizers") or []), PVC_PROTECTION]
            self.claims.observe(await self.api.patch(CLAIMS, *key, {"metadata": {"finalizers": finalizers}}))
        if claim.get("status", {}).get("phase") != "Bound":
            spec = claim.get("spec", {})
            self.claims.observe(await self.api.patch(CLAIMS, *key, {"status": {
                "phase": "Bound", "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
                "capacity": spec.get("resources", {}).get("requests", {})}}, subresource="status"))
        return newly

    async def _release_when_unused(self, claim: dict, users: Iterable[dict]) -> None:
        in_use = any(pod_phase(pod) not in TERMINAL_PHASES for pod in users)
        finalizers = meta(claim).get("finalizers") or []
        if not in_use and PVC_PROTECTION in finalizers:
            namespace, name = meta(claim)["namespace"], meta(claim)["name"]
            answer = await self.api.patch(CLAIMS, namespace, name, [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta(claim)["resourceVersion"]},
                {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in finalizers if f != PVC_PROTECTION]},
            ])
            self.claims.observe(answer)


# --- garbage collector -------------------------------------------------------------------------------

class GarbageCollector:
    """Deletes dependents whose owners are all gone (Background propagation)."""

    def __init__(self, api: ApiClient, owner_cache: Any) -> None:
        self.api = api
        self.owner_cache = owner_cache  # async (resource) -> Cache | None (None: not synced)

    async def reconcile(self, resource: str, obj: dict) -> None:
        refs = meta(obj).get("ownerReferences") or []
        if not refs or is_deleting(obj):
            return
        namespace = meta(obj)["namespace"]
        for ref in refs:  # the caches first: a live owner there ends it without a request
            if owner_namespace(ref, namespace) is None:
                continue  # the caches are per namespace: asked below
            cache = await self.owner_cache(owner_resource(ref))
            owner = cache.get((namespace, ref.get("name"))) if cache is not None else None
            if owner is not None and uid_of(owner) == ref.get("uid"):
                return
        for ref in refs:  # gone from the caches: confirm with the API (a cache may lag behind)
            owner = await self.api.get(owner_resource(ref), owner_namespace(ref, namespace), ref["name"])
            if owner is not None and uid_of(owner) == ref.get("uid"):
                return
        # As the Kubernetes garbage collector (1.20+): conditional on the version it judged, so an
        # owner added meanwhile (an adopting Checkpoint) makes the delete fail and the object is judged again.
        await self.api.delete(resource, namespace, meta(obj)["name"],
                              preconditions={"uid": uid_of(obj), "resourceVersion": meta(obj)["resourceVersion"]})


# --- the whole cluster -------------------------------------------------------------------------------

class LocalCluster:
    """Binder, Job controller, kubelet and garbage collector against the API at ``api_url``.

    ``namespaces``: where to act (empty or None: everywhere). ``poll_interval``: seconds between
    full resyncs (the safety net; events drive everything else). ``runtime``: how containers run
    (default: host processes, ``runtime.ProcessRuntime``). Use ``async with LocalCluster(...)``
    in a running loop, or ``start_in_thread()`` / ``stop_thread()`` from synchronous code.
    """

    def __init__(self, api_url: str, data_dir: str | os.PathLike, namespaces: Iterable[str] | None = None,
                 container_runner: ContainerRunner | None = None, *, poll_interval: float = DEFAULT_RESYNC_SECONDS,
                 workdir: str | os.PathLike | None = None, runtime: Any = None, jobset: bool = True,
                 jobset_crd: dict | None = None, kueue: bool = True,
                 report: Callable[[str], None] | None = None) -> None:
        self.jobset_enabled, self.jobset_crd, self.kueue_enabled = jobset, jobset_crd, kueue
        self.report = report
        self.workdir = Path(workdir) if workdir is not None else None
        self.api_url = api_url
        self.data_dir = Path(data_dir)
        self.namespaces = list(namespaces or [])
        self.container_runner = container_runner
        self.poll_interval = poll_interval
        self.runtime = runtime
        self.api: ApiClient | None = None
        self.binder: PvcBinder | None = None
        self.kubelet: Kubelet | None = None
        self._tasks: list[asyncio.Task] = []
        self._queues: list[WorkQueue] = []
        self._owner_caches: dict[str, Cache] = {}
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        # Indexes kept by the change handlers: who to wake for an event.
        self._pods_of_owner: dict[str, set[Key]] = defaultdict(set)  # owner uid -> pod keys
        self._dependents: dict[str, set[tuple[str, Key]]] = defaultdict(set)  # owner uid -> (resource, key)
        self._pods_of_claim: dict[Key, set[Key]] = defaultdict(set)  # claim key -> pod keys
        self._job_by_uid: dict[str, Key] = {}
        self._jobset_by_uid: dict[str, Key] = {}
        self._jobs_of_jobset: dict[str, set[Key]] = defaultdict(set)  # jobset uid -> child Job keys

    def _own_caches(self) -> list[Cache]:
        caches = [self.pods, self.jobs, self.claims, self.services]
        return caches + ([self.jobsets] if self.jobsets is not None else [])

    def _caches_by_resource(self) -> dict[str, Cache]:
        return {cache.resource: cache for cache in self._own_caches()}

    def claim_dir(self, namespace: str, name: str) -> Path | None:
        """The host directory bound to a claim, or None while it is not bound."""
        return self.binder.claim_dir(namespace, name) if self.binder else None

    def set_container_runner(self, runner: ContainerRunner | None) -> None:
        """Let a test play the training code from now on (see the module's docstring)."""
        self.container_runner = runner
        if self.kubelet is not None:
            self.kubelet.container_runner = runner

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self.api = ApiClient(self.api_url)
        if self.jobset_enabled:  # installed first, as a cluster admin installs JobSet before it is used
            with contextlib.suppress(ApiError):
                await self.api.create(CRDS, None, self.jobset_crd or minimal_crd())
        self.pods = Cache(self.api, PODS, self.namespaces, self._on_pod)
        self.jobs = Cache(self.api, JOBS, self.namespaces, self._on_job)
        self.claims = Cache(self.api, CLAIMS, self.namespaces, self._on_claim)
        self.services = Cache(self.api, SERVICES, self.namespaces, self._on_service)
        self.jobsets = Cache(self.api, JOBSETS, self.namespaces, self._on_jobset) if self.jobset_enabled else None
        self.binder = PvcBinder(self.api, self.data_dir, self.claims)
        self.job_controller = JobController(self.api, self.jobs, self.pods)
        self.jobset_controller = JobSetController(self.api, self.jobsets, self.jobs, self.services) \
            if self.jobsets is not None else None
        self.kueue = KueueStandIn(self.api, self.report, lambda resource, obj: self._caches_by_resource()[
            resource].observe(obj)) if self.kueue_enabled else None
        self.kubelet = Kubelet(self.api, self.data_dir, self.claim_dir, self.pods.observe, runtime=self.runtime,
                               container_runner=self.container_runner, workdir=self.workdir)
        self.gc = GarbageCollector(self.api, self._owner_cache_for)
        self.exec_server = ExecServer(self.kubelet)  # pods/exec: the emulator proxies to it (podexec.py)
        await register_node(self.api, await self.exec_server.start())
        for cache in self._own_caches():
            cache.start()
        await asyncio.gather(*(cache.wait_synced() for cache in self._own_caches()))
        for pod in self.pods:  # pods an earlier kubelet left running have lost their processes
            adopted = self.kubelet.reconcile(pod, uid_of(pod), adopt=True)
            if adopted is not None:
                await adopted
        self.claim_queue = WorkQueue("claim", self._reconcile_claim)
        self.job_queue = WorkQueue("job", self._reconcile_job)
        self.pod_queue = WorkQueue("pod", self._reconcile_pod)
        self.gc_queue = WorkQueue("gc", self._collect_garbage)
        self.jobset_queue = WorkQueue("jobset", self._reconcile_jobset)
        self.kueue_queue = WorkQueue("kueue", self._admit)
        self._queues = [self.claim_queue, self.job_queue, self.pod_queue, self.gc_queue, self.jobset_queue,
                        self.kueue_queue]
        self._started = True
        self._tasks.append(asyncio.create_task(self._resync_forever(), name="local cluster resync"))
        self.resync()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for queue in self._queues:
            await queue.stop()
        if getattr(self, "exec_server", None) is not None:
            await self.exec_server.stop()
        if self.kubelet is not None:
            await self.kubelet.stop()
        for cache in [*self._own_caches(), *self._owner_caches.values()] if self.api else []:
            await cache.stop()
        if self.api is not None:
            await self.api.close()

    async def __aenter__(self) -> "LocalCluster":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start_in_thread(self) -> None:
        """Run in a daemon thread with its own event loop (local mode)."""
        started = threading.Event()

        def thread_main() -> None:
            self._thread_loop = asyncio.new_event_loop()
            self._thread_loop.run_until_complete(self.start())
            started.set()
            self._thread_loop.run_forever()
            self._thread_loop.run_until_complete(self.stop())
            self._thread_loop.close()

        self._thread = threading.Thread(target=thread_main, name="local-cluster", daemon=True)
        self._thread.start()
        started.wait(30)

    def stop_thread(self, timeout: float = 30) -> None:
        if self._thread is not None and self._thread_loop is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join(timeout)
            self._thread = None

    # -- events -> work ---------------------------------------------------------------------------

    def _on_pod(self, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        key = key_of(obj)
        claims = {(key[0], c) for c in claim_names_of_pod(obj)}
        owners = owner_uids(obj)
        if new is None:
            for owner in owners:
                self._pods_of_owner[owner].discard(key)
                self._dependents[owner].discard((PODS, key))
            for claim in claims:
                self._pods_of_claim[claim].discard(key)
            if self.kubelet is not None:
                self.kubelet.reconcile(None, uid_of(obj))
        else:
            for owner in owners:
                self._pods_of_owner[owner].add(key)
                self._dependents[owner].add((PODS, key))
            for claim in claims:
                self._pods_of_claim[claim].add(key)
        if not getattr(self, "_started", False):
            return
        if new is not None:
            self.pod_queue.add(key)
            if owners:
                self.gc_queue.add((PODS, key))
        for owner in owners:
            if owner in self._job_by_uid:
                self.job_queue.add(self._job_by_uid[owner])
        for claim in claims:
            self.claim_queue.add(claim)

    def _on_job(self, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        key = key_of(obj)
        jobset_owners = [ref["uid"] for ref in meta(obj).get("ownerReferences") or [] if ref.get("kind") == "JobSet"]
        if new is None:
            self._job_by_uid.pop(uid_of(obj), None)
            for owner in jobset_owners:
                self._jobs_of_jobset[owner].discard(key)
        else:
            self._job_by_uid[uid_of(obj)] = key
            for owner in jobset_owners:
                self._jobs_of_jobset[owner].add(key)
        self._index_dependent(JOBS, old, new)
        if getattr(self, "_started", False):
            if new is not None:
                self.job_queue.add(key)
                self.kueue_queue.add((JOBS, key))
            for owner in jobset_owners:  # a child Job changed (or went): its JobSet looks again
                if owner in self._jobset_by_uid:
                    self.jobset_queue.add(self._jobset_by_uid[owner])
            self._owner_changed(obj, new)

    def _on_jobset(self, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        key = key_of(obj)
        if new is None:
            self._jobset_by_uid.pop(uid_of(obj), None)
        else:
            self._jobset_by_uid[uid_of(obj)] = key
        self._index_dependent(JOBSETS, old, new)
        if getattr(self, "_started", False):
            if new is not None:
                self.jobset_queue.add(key)
                self.kueue_queue.add((JOBSETS, key))
            self._owner_changed(obj, new)

    def _on_service(self, old: dict | None, new: dict | None) -> None:
        self._index_dependent(SERVICES, old, new)

    def _on_claim(self, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        self._index_dependent(CLAIMS, old, new)
        if new is None and self.binder is not None:
            self.binder.forget(obj)
        if getattr(self, "_started", False):
            if new is not None:
                self.claim_queue.add(key_of(obj))
            self._owner_changed(obj, new)

    def _on_owner(self, old: dict | None, new: dict | None) -> None:
        if new is None and old is not None and getattr(self, "_started", False):
            self._owner_changed(old, None)

    def _index_dependent(self, resource: str, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        for owner in owner_uids(old or {"metadata": {}}):
            self._dependents[owner].discard((resource, key_of(obj)))
        for owner in owner_uids(new or {"metadata": {}}):
            self._dependents[owner].add((resource, key_of(obj)))
        if new is not None and owner_uids(new) and getattr(self, "_started", False):
            self.gc_queue.add((resource, key_of(obj)))

    def _owner_changed(self, owner: dict, new: dict | None) -> None:
        if new is None:  # an owner is gone: its dependents may be garbage now
            for dependent in list(self._dependents.pop(uid_of(owner), ())):
                self.gc_queue.add(dependent)
            self._pods_of_owner.pop(uid_of(owner), None)

    async def _owner_cache_for(self, resource: str) -> Cache | None:
        """The cache of an owner kind, watched from the first time a dependent refers to it."""
        cache = self._caches_by_resource().get(resource) or self._owner_caches.get(resource)
        if cache is None:
            if self.api is None:
                raise RuntimeError("the local cluster has not started")
            cache = self._owner_caches[resource] = Cache(self.api, resource, self.namespaces, self._on_owner)
            cache.start()
        return cache if await cache.wait_synced(OWNER_SYNC_TIMEOUT) else None

    # -- reconcilers ------------------------------------------------------------------------------

    async def _reconcile_claim(self, key: Key) -> None:
        claim = self.claims.get(key)
        if claim is None or self.binder is None:  # (the binder exists once the cluster started)
            return
        users = [p for p in (self.pods.get(k) for k in self._pods_of_claim.get(key, ())) if p is not None]
        if await self.binder.reconcile(claim, users):
            for pod_key in users:
                self.pod_queue.add(key_of(pod_key))

    async def _reconcile_job(self, key: Key) -> None:
        job = self.jobs.get(key)
        if job is None:
            return
        pods = [p for p in (self.pods.get(k) for k in self._pods_of_owner.get(uid_of(job), ())) if p is not None]
        pods = [p for p in pods if uid_of(job) in owner_uids(p)]
        look_again = await self.job_controller.reconcile(job, pods)
        if look_again is not None:
            self.job_queue.add_later(key, max(0.05, look_again))

    async def _reconcile_jobset(self, key: Key) -> None:
        if self.jobsets is None or self.jobset_controller is None:
            return
        js = self.jobsets.get(key)
        if js is None:
            return
        children = [j for j in (self.jobs.get(k) for k in self._jobs_of_jobset.get(uid_of(js), ())) if j is not None]
        await self.jobset_controller.reconcile(js, [j for j in children if uid_of(js) in owner_uids(j)])

    async def _admit(self, item: tuple[str, Key]) -> None:
        resource, key = item
        cache = self._caches_by_resource().get(resource)
        obj = cache.get(key) if cache is not None else None
        if obj is not None and self.kueue is not None:
            look_again = await self.kueue.reconcile(resource, obj)
            if look_again is not None:
                self.kueue_queue.add_later(item, max(0.05, look_again))

    async def preempt(self, resource: str, namespace: str, name: str, hold: float = 1.0) -> None:
        """As Kueue's preemption: suspend the workload now, admit it again after `hold` seconds
        (resource: ``batch/v1/jobs`` or ``jobset.x-k8s.io/v1alpha2/jobsets``)."""
        assert self.kueue is not None, "the Kueue stand-in is off (kueue=False)"
        await self.kueue.preempt(resource, namespace, name, hold)
        self.kueue_queue.add_later((resource, (namespace, name)), hold)

    def hold(self, resource: str, namespace: str, name: str, seconds: float) -> None:
        """As a queue without quota for `seconds`: the workload of that name (one that exists, or the
        next one created) stays suspended until then, and is admitted after."""
        assert self.kueue is not None, "the Kueue stand-in is off (kueue=False)"
        self.kueue.hold(resource, namespace, name, seconds)
        self.kueue_queue.add_later((resource, (namespace, name)), seconds)

    async def _reconcile_pod(self, key: Key) -> None:
        pod = self.pods.get(key)
        if pod is not None and self.kubelet is not None:  # (the kubelet exists once the cluster started)
            pending = self.kubelet.reconcile(pod, uid_of(pod))
            if pending is not None:
                await pending

    async def _collect_garbage(self, item: tuple[str, Key]) -> None:
        resource, key = item
        obj = self._caches_by_resource()[resource].get(key)
        if obj is not None:
            await self.gc.reconcile(resource, obj)

    # -- safety net -------------------------------------------------------------------------------

    def resync(self) -> None:
        """Queue every known object once (what the periodic resync does)."""
        for claim in self.claims:
            self.claim_queue.add(key_of(claim))
        for job in self.jobs:
            self.job_queue.add(key_of(job))
            self.kueue_queue.add((JOBS, key_of(job)))
        for jobset in self.jobsets or []:
            self.jobset_queue.add(key_of(jobset))
            self.kueue_queue.add((JOBSETS, key_of(jobset)))
        for resource, cache in self._caches_by_resource().items():
            for obj in cache:
                if resource == PODS:
                    self.pod_queue.add(key_of(obj))
                if owner_uids(obj):
                    self.gc_queue.add((resource, key_of(obj)))

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self.resync()

    async def reconcile_once(self) -> None:
        """One full pass of every controller over every known object, in this task."""
        for claim in list(self.claims):
            with _racing_with_the_api(f"claim {meta(claim)['name']}"):
                await self._reconcile_claim(key_of(claim))
        for jobset in list(self.jobsets or []):
            with _racing_with_the_api(f"jobset {meta(jobset)['name']}"):
                await self._reconcile_jobset(key_of(jobset))
        for job in list(self.jobs):
            with _racing_with_the_api(f"job {meta(job)['name']}"):
                await self._reconcile_job(key_of(job))
        for pod in list(self.pods):
            with _racing_with_the_api(f"pod {meta(pod)['name']}"):
                await self._reconcile_pod(key_of(pod))
        for resource, cache in self._caches_by_resource().items():
            for obj in list(cache):
                with _racing_with_the_api(f"{resource} {meta(obj)['name']}"):
                    await self._collect_garbage((resource, key_of(obj)))


@contextlib.contextmanager
def _racing_with_the_api(what: str) -> Iterator[None]:
    """A full pass skips an object that changed (409) or vanished (404) meanwhile."""
    try:
        yield
    except ApiError as exc:
        if exc.status not in (404, 409, 422):
            logger.warning("local cluster: %s: %s", what, exc)
