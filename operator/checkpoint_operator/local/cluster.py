"""A tiny "cluster" beside the emulated API: nodes, scheduler, storage, snapshot controller, Job and
JobSet controllers, a stand-in for Kueue's admission, kubelets and garbage collector.

``LocalCluster`` talks to the API only over HTTP. It watches Pods, Jobs, JobSets, Services, PVCs,
PersistentVolumes, VolumeSnapshots and their contents and classes (``informer.py``: one list + watch
each, kept in memory) and reconciles only what an event concerns: the object itself and the objects
that depend on it (a pod's event wakes its Job and the claims it mounts, and once it has finished
the pods waiting to attach its volumes; a child Job's event wakes its JobSet; a claim bound wakes
the pods waiting for it; a snapshot ready wakes the claims restored from it; an owner deleted wakes
its dependents for the garbage collector). Every controller is level-based and idempotent, reading
the current state from the caches; its own writes go into the caches at once (so it never acts
twice on a stale view), and a full resync every ``poll_interval`` seconds is the safety net for
anything missed.

- Nodes (``nodes``: ``local``, or ``local-0`` ... ``local-<N-1>``), each with its ``Kubelet``
  (``kubelet.py``: runs the pods scheduled on it with a runtime, ``runtime.py`` host processes in a
  view of the pod's mounts or ``engine.py`` containers of their images with Podman or Docker), its
  ``ExecServer`` (``podexec.py``: the kubelet's exec endpoint, which the emulator proxies
  ``pods/exec`` to) and its own directory ``<data_dir>/nodes/<node>/``.
- ``Scheduler``, ``EphemeralVolumes`` and ``AttachRules`` (``scheduler.py``): nodes for pods, the
  claims of ephemeral volumes, the multi-attach rule.
- ``VolumeProvisioner`` (``storage.py``): StorageClasses, PersistentVolumes, claims bound to host
  directories under ``<data_dir>/volumes/``, restores and clones; ``kubernetes.io/pvc-protection``.
- ``SnapshotController`` (``snapshots.py``): VolumeSnapshots as copies under ``<data_dir>/snapshots/``.
- ``JobController`` (``jobs.py``, batch/v1): pods from ``spec.template``; completions, parallelism,
  completionMode Indexed (hostnames ``<job>-<index>``), backoffLimit, activeDeadlineSeconds, suspend;
  terminal conditions only once every pod has stopped, as Kubernetes 1.31+.
- ``JobSetController`` (``jobsets.py``, jobset.x-k8s.io/v1alpha2): child Jobs, the headless Service,
  restarts (failurePolicy), successPolicy, suspend; with ``jobset=True`` (the default) the JobSet
  CRD is installed first (``jobset_crd``: a minimal one unless given, e.g. JobSet's published CRD).
- ``KueueStandIn`` (``kueue.py``): admits a suspended Job or JobSet labelled with a Kueue queue name at
  once, and can preempt it (``kueue=True``, the default); ``report`` gets a line for each.
- ``GarbageCollector``: deletes Pods, Jobs, JobSets, Services, PVCs and VolumeSnapshots all of whose
  ownerReferences point to objects that no longer exist (or exist with another uid), confirmed by a
  live read before deleting, and deleting with the resourceVersion it judged, as the Kubernetes
  garbage collector does; from one with owners left it removes the references to the gone ones.
  Owners of other kinds are watched as they are referred to. An owner deleted in the foreground
  (``propagationPolicy: Foreground``: the emulator adds the ``foregroundDeletion`` finalizer) has its
  dependents deleted first and stays, deleting, until none that blocks it (``blockOwnerDeletion``) is
  left, a terminating pod until its containers have stopped; then the collector removes the finalizer.

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
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from checkpoint_operator.local.events import EventRecorder
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
from checkpoint_operator.local.scheduler import AttachRules, EphemeralVolumes, LocalNode, Scheduler, node_labels
from checkpoint_operator.local.snapshots import CONTENTS as SNAPSHOT_CONTENTS
from checkpoint_operator.local.snapshots import SNAPSHOT_CLASSES, SNAPSHOTS as VOLUME_SNAPSHOTS
from checkpoint_operator.local.snapshots import SnapshotController, install_crds
from checkpoint_operator.local.storage import (  # noqa: F401 - PVC_PROTECTION re-exported
    DEFAULT_CLASSES, PVC_PROTECTION, VOLUMES, StorageClassModel, VolumeProvisioner,
)
from checkpoint_operator.local.runtime import host_command  # noqa: F401 - re-exported
from checkpoint_operator.local.server import ApiClient, ApiError

logger = logging.getLogger(__name__)

PODS, JOBS, CLAIMS = "v1/pods", "batch/v1/jobs", "v1/persistentvolumeclaims"
DEFAULT_RESYNC_SECONDS = 10.0
OWNER_SYNC_TIMEOUT = 5.0  # seconds the GC waits for a new owner kind's cache before asking the API
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
CLUSTER_SCOPED = {VOLUMES, SNAPSHOT_CONTENTS, SNAPSHOT_CLASSES}  # resources of the caches without a namespace
KIND_TO_RESOURCE = {
    "Pod": PODS, "PersistentVolumeClaim": CLAIMS, "Secret": "v1/secrets", "ConfigMap": "v1/configmaps", "Job": JOBS,
    "Service": SERVICES,
}


def uid_of(obj: Mapping[str, Any]) -> str:
    return meta(obj)["uid"]


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


FOREGROUND_DELETION = "foregroundDeletion"  # the finalizer a Foreground deletion puts on the owner


def deleting_dependents(obj: Mapping[str, Any] | None) -> bool:
    """Deleted with propagationPolicy Foreground and still waiting for its dependents."""
    return obj is not None and is_deleting(obj) and FOREGROUND_DELETION in (meta(obj).get("finalizers") or [])


def blocks_owner(dependent: Mapping[str, Any], owner_uid: str) -> bool:
    """The dependent's reference to that owner has blockOwnerDeletion: the owner's Foreground
    deletion waits until it is gone."""
    return any(ref.get("uid") == owner_uid and ref.get("blockOwnerDeletion")
               for ref in meta(dependent).get("ownerReferences") or [])


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




# --- garbage collector -------------------------------------------------------------------------------

class GarbageCollector:
    """Deletes dependents whose owners are all gone (Background propagation), and removes the
    references to owners that are gone from dependents that still have others, as the Kubernetes
    garbage collector does."""

    def __init__(self, api: ApiClient, owner_cache: Any, dependents_of: Any = lambda uid: []) -> None:
        self.api = api
        self.owner_cache = owner_cache  # async (resource) -> Cache | None (None: not synced)
        self.dependents_of = dependents_of  # (uid) -> [object]: the dependents the collector's graph knows

    async def reconcile(self, resource: str, obj: dict) -> None:
        refs = meta(obj).get("ownerReferences") or []
        if not refs or is_deleting(obj):
            return
        namespace = meta(obj)["namespace"]
        live: list[dict] = []
        dangling: list[dict] = []
        waiting: list[dict] = []  # owners deleted in the foreground: their dependents go first
        for ref in refs:
            owner = None
            scope = owner_namespace(ref, namespace)
            if scope is not None:  # the caches first (they are per namespace): a live owner there costs no request
                cache = await self.owner_cache(owner_resource(ref))
                owner = cache.get((namespace, ref.get("name"))) if cache is not None else None
            if owner is None or uid_of(owner) != ref.get("uid"):
                # gone from the cache: confirm with the API (a cache may lag behind)
                owner = await self.api.get(owner_resource(ref), scope, ref["name"])
            if owner is None or uid_of(owner) != ref.get("uid"):
                dangling.append(ref)
            else:
                (waiting if deleting_dependents(owner) else live).append(ref)
        if not dangling and not waiting:
            return
        if live:
            await self.api.patch(resource, namespace, meta(obj)["name"], [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta(obj)["resourceVersion"]},
                {"op": "replace", "path": "/metadata/ownerReferences", "value": live}])
            return
        # As the Kubernetes garbage collector (1.20+): conditional on the version it judged, so an
        # owner added meanwhile (an adopting Checkpoint) makes the delete fail and the object is judged again.
        # A dependent of an owner deleted in the foreground that has dependents of its own goes in the
        # foreground too (a JobSet's Job waits for its pods), as the real collector does.
        # (A pod's own dependents, its ephemeral volumes' claims, go in the background: they wait for the pod.)
        dependents = [d for d in self.dependents_of(uid_of(obj)) if uid_of(d) != uid_of(obj)] if waiting else []
        if any(deleting_dependents(d) for d in dependents):
            # A cycle (its owner waits for it, and it for a dependent that itself waits): as the real
            # collector does, its own references stop blocking first, so that the cycle unwinds.
            unblocked = [{**ref, "blockOwnerDeletion": False} if ref.get("blockOwnerDeletion") else ref
                         for ref in refs]
            obj = await self.api.patch(resource, namespace, meta(obj)["name"], [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta(obj)["resourceVersion"]},
                {"op": "replace", "path": "/metadata/ownerReferences", "value": unblocked}])
        policy = "Foreground" if waiting and resource != PODS and dependents else "Background"
        await self.api.delete(resource, namespace, meta(obj)["name"], propagation_policy=policy,
                              preconditions={"uid": uid_of(obj), "resourceVersion": meta(obj)["resourceVersion"]})

    async def finish_foreground(self, resource: str, owner: dict, dependents: list[dict]) -> None:
        """Remove the Foreground deletion's finalizer once no dependent blocks it (what is left of
        the owner then goes, or waits for its other finalizers)."""
        # An object that owns itself never blocks its own deletion.
        if not deleting_dependents(owner) or any(blocks_owner(d, uid_of(owner)) for d in dependents
                                                 if uid_of(d) != uid_of(owner)):
            return
        finalizers = [f for f in meta(owner).get("finalizers") or [] if f != FOREGROUND_DELETION]
        await self.api.patch(resource, meta(owner).get("namespace") or None, meta(owner)["name"], [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta(owner)["resourceVersion"]},
            {"op": "replace", "path": "/metadata/finalizers", "value": finalizers}])


# --- the whole cluster -------------------------------------------------------------------------------

def node_names(count: int) -> list[str]:
    """``local`` for a one-node cluster (as before nodes were counted), else ``local-0`` ... ``local-<N-1>``."""
    if count < 1:
        raise ValueError(f"a local cluster needs at least one node, not {count}")
    return ["local"] if count == 1 else [f"local-{i}" for i in range(count)]


class LocalCluster:
    """Nodes, scheduler, storage, snapshot controller, Job and JobSet controllers, the Kueue stand-in,
    kubelets and garbage collector against the API at ``api_url``.

    ``namespaces``: where to act (empty or None: everywhere). ``poll_interval``: seconds between
    full resyncs (the safety net; events drive everything else). ``runtime``: how containers run
    (default: host processes, ``runtime.ProcessRuntime``). ``nodes``: how many nodes (each with its
    kubelet, its exec endpoint and its own directory ``<data_dir>/nodes/<node>/``).
    ``storage_classes``: the StorageClasses and what their drivers can do (``storage.DEFAULT_CLASSES``).
    ``jobset``, ``jobset_crd``, ``kueue``, ``report``: JobSet and the Kueue stand-in (the module's docstring).
    Use ``async with LocalCluster(...)`` in a running loop, or ``start_in_thread()`` /
    ``stop_thread()`` from synchronous code.
    """

    def __init__(self, api_url: str, data_dir: str | os.PathLike, namespaces: Iterable[str] | None = None,
                 container_runner: ContainerRunner | None = None, *, poll_interval: float = DEFAULT_RESYNC_SECONDS,
                 workdir: str | os.PathLike | None = None, runtime: Any = None, nodes: int = 1,
                 storage_classes: Sequence[StorageClassModel] = DEFAULT_CLASSES, jobset: bool = True,
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
        self.node_names = node_names(nodes)
        self.storage_classes = {c.name: c for c in storage_classes}
        self.api: ApiClient | None = None
        self.binder: VolumeProvisioner | None = None
        self.snapshot_controller: SnapshotController | None = None
        self.kubelets: dict[str, Kubelet] = {}
        self.exec_servers: list[ExecServer] = []
        self._tasks: list[asyncio.Task] = []
        self._queues: list[WorkQueue] = []
        self._owner_caches: dict[str, Cache] = {}
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        # Indexes kept by the change handlers: who to wake for an event.
        self._pods_of_owner: dict[str, set[Key]] = defaultdict(set)  # owner uid -> pod keys
        self._dependents: dict[str, set[tuple[str, Key]]] = defaultdict(set)  # owner uid -> (resource, key)
        self._pods_of_claim: dict[Key, set[Key]] = defaultdict(set)  # claim key -> pod keys
        self._claims_of_snapshot: dict[Key, set[Key]] = defaultdict(set)  # snapshot key -> claims restored from it
        self._job_by_uid: dict[str, Key] = {}
        self._jobset_by_uid: dict[str, Key] = {}
        self._jobs_of_jobset: dict[str, set[Key]] = defaultdict(set)  # jobset uid -> child Job keys

    @property
    def kubelet(self) -> Kubelet | None:
        """The first node's kubelet (the only one of a one-node cluster)."""
        return self.kubelets.get(self.node_names[0])

    def node_dir(self, node: str) -> Path:
        """A node's own directory (node-local state: its pods' emptyDirs under ``pods/``)."""
        return self.data_dir / "nodes" / node

    def claim_dir(self, namespace: str, name: str) -> Path | None:
        """The host directory bound to a claim, or None while it is not bound."""
        return self.binder.claim_dir(namespace, name) if self.binder else None

    def _claim_dir_on(self, node_dir: Path) -> Callable[[str, str], Path | None]:
        """A kubelet's view of claims: a per-node local volume is its own node's directory."""
        def claim_dir(namespace: str, name: str) -> Path | None:
            return self.binder.claim_dir_on(node_dir, namespace, name) if self.binder else None
        return claim_dir

    def snapshot_dir(self, namespace: str, name: str) -> Path | None:
        """The copy behind a ready VolumeSnapshot, or None."""
        if self.snapshot_controller is None:
            return None
        source = self.snapshot_controller.restore_source(namespace, name)
        return None if isinstance(source, str) else source.directory

    def set_container_runner(self, runner: ContainerRunner | None) -> None:
        """Let a test play the training code from now on (see the module's docstring)."""
        self.container_runner = runner
        for kubelet in self.kubelets.values():
            kubelet.container_runner = runner

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self.api = ApiClient(self.api_url)
        await install_crds(self.api)
        if self.jobset_enabled:  # installed first, as a cluster admin installs JobSet before it is used
            with contextlib.suppress(ApiError):
                await self.api.create(CRDS, None, self.jobset_crd or minimal_crd())
        for model in self.storage_classes.values():
            for resource, body in model.manifests():
                if await self.api.get(resource, None, body["metadata"]["name"]) is None:
                    with contextlib.suppress(ApiError):
                        await self.api.create(resource, None, body)
        self.pods = Cache(self.api, PODS, self.namespaces, self._on_pod)
        self.jobs = Cache(self.api, JOBS, self.namespaces, self._on_job)
        self.claims = Cache(self.api, CLAIMS, self.namespaces, self._on_claim)
        self.services = Cache(self.api, SERVICES, self.namespaces, self._on_service)
        self.jobsets = Cache(self.api, JOBSETS, self.namespaces, self._on_jobset) if self.jobset_enabled else None
        self.volumes = Cache(self.api, VOLUMES, [], self._on_volume)
        self.volume_snapshots = Cache(self.api, VOLUME_SNAPSHOTS, self.namespaces, self._on_volume_snapshot)
        self.snapshot_contents = Cache(self.api, SNAPSHOT_CONTENTS, [], self._on_snapshot_content)
        self.snapshot_classes = Cache(self.api, SNAPSHOT_CLASSES, [], lambda old, new: None)
        self.events = EventRecorder(self.api, "local-cluster")
        self.binder = VolumeProvisioner(self.api, self.data_dir, self.claims, self.volumes, self.storage_classes,
                                        EventRecorder(self.api, "local-volume-provisioner"))
        self.snapshot_controller = SnapshotController(
            self.api, self.data_dir, self.volume_snapshots, self.snapshot_contents, self.snapshot_classes,
            self.claims, self.binder, EventRecorder(self.api, "snapshot-controller"))
        self.binder.snapshots = self.snapshot_controller
        self.job_controller = JobController(self.api, self.jobs, self.pods)
        self.jobset_controller = JobSetController(self.api, self.jobsets, self.jobs, self.services) \
            if self.jobsets is not None else None
        self.kueue = KueueStandIn(self.api, self.report, lambda resource, obj: self._own_caches()[
            resource].observe(obj)) if self.kueue_enabled else None
        nodes = [LocalNode(name, node_labels(name)) for name in self.node_names]
        self.binder.nodes = {node.name: node.labels for node in nodes}
        self.scheduler = Scheduler(self.api, nodes, self.pods, self.claims, self.binder,
                                   EventRecorder(self.api, "default-scheduler"))
        self.ephemeral = EphemeralVolumes(self.api, self.claims, EventRecorder(self.api, "ephemeral_volume"))
        self.attach_rules = AttachRules(self.binder, self._running_pods, self.pods)
        attach_events = EventRecorder(self.api, "attachdetach-controller")
        for node in nodes:
            kubelet = Kubelet(self.api, self.node_dir(node.name), self._claim_dir_on(self.node_dir(node.name)),
                              self.pods.observe,
                              runtime=self.runtime, container_runner=self.container_runner, workdir=self.workdir,
                              node_name=node.name, attach_blocked=self.attach_rules.blocking, events=attach_events)
            self.kubelets[node.name] = kubelet
            exec_server = ExecServer(kubelet)  # pods/exec: the emulator proxies to it (podexec.py)
            self.exec_servers.append(exec_server)
            await register_node(self.api, await exec_server.start(), node.name, labels=dict(node.labels))
        self.gc = GarbageCollector(self.api, self._owner_cache_for, self._dependent_objects)
        for cache in self._own_caches().values():
            cache.start()
        await asyncio.gather(*(cache.wait_synced() for cache in self._own_caches().values()))
        for pod in self.pods:  # pods an earlier kubelet left running have lost their processes
            runs_it = self.kubelets.get((pod.get("spec") or {}).get("nodeName") or "")
            adopted = runs_it.reconcile(pod, uid_of(pod), adopt=True) if runs_it is not None else None
            if adopted is not None:
                await adopted
        self.claim_queue = WorkQueue("claim", self._reconcile_claim)
        self.job_queue = WorkQueue("job", self._reconcile_job)
        self.pod_queue = WorkQueue("pod", self._reconcile_pod)
        self.gc_queue = WorkQueue("gc", self._collect_garbage)
        self.foreground_queue = WorkQueue("foreground", self._finish_foreground)
        self.jobset_queue = WorkQueue("jobset", self._reconcile_jobset)
        self.kueue_queue = WorkQueue("kueue", self._admit)
        self.snapshot_queue = WorkQueue("volumesnapshot", self._reconcile_volume_snapshot)
        self.content_queue = WorkQueue("volumesnapshotcontent", self._reconcile_snapshot_content)
        self._queues = [self.claim_queue, self.job_queue, self.pod_queue, self.gc_queue, self.foreground_queue,
                        self.jobset_queue,
                        self.kueue_queue, self.snapshot_queue, self.content_queue]
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
        for exec_server in self.exec_servers:
            await exec_server.stop()
        for kubelet in self.kubelets.values():
            await kubelet.stop()
        if self.api is not None:
            for cache in [*self._own_caches().values(), *self._owner_caches.values()]:
                await cache.stop()
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

    def _running_pods(self) -> Iterator[tuple[str, dict]]:
        for node, kubelet in self.kubelets.items():
            for pod in kubelet.running_pods():
                yield node, pod

    # -- events -> work ---------------------------------------------------------------------------

    def _on_pod(self, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        key = key_of(obj)
        claims = {(key[0], c) for c in claim_names_of_pod(obj)}
        owners = owner_uids(obj)
        self._dependent_left(old, new)
        if new is None:
            for owner in owners:
                self._pods_of_owner[owner].discard(key)
                self._dependents[owner].discard((PODS, key))
            for claim in claims:
                self._pods_of_claim[claim].discard(key)
            for kubelet in self.kubelets.values():
                kubelet.reconcile(None, uid_of(obj))
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
        if new is None or (pod_phase(new) in TERMINAL_PHASES and pod_phase(old or {}) not in TERMINAL_PHASES):
            for claim in claims:  # its volumes are detached: pods waiting to attach them on another node may start
                for waiting in self._pods_of_claim.get(claim, ()):
                    self.pod_queue.add(waiting)
        if new is None:
            self._owner_changed(obj, None)  # its ephemeral volumes' claims go with it

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
            self._owner_changed(obj, new, JOBS)

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
            self._owner_changed(obj, new, JOBSETS)

    def _on_service(self, old: dict | None, new: dict | None) -> None:
        self._index_dependent(SERVICES, old, new)

    def _on_claim(self, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        key = key_of(obj)
        self._index_dependent(CLAIMS, old, new)
        old_source, new_source = _restored_from(old), _restored_from(new)
        if old_source is not None:
            self._claims_of_snapshot[(key[0], old_source)].discard(key)
        if new_source is not None:
            self._claims_of_snapshot[(key[0], new_source)].add(key)
        if new is None and self.binder is not None:
            self.binder.forget(obj)
        if getattr(self, "_started", False):
            if new is not None:
                self.claim_queue.add(key)
                if old is None:  # a claim a pod waits for (an ephemeral volume's) is there
                    for pod in self._pods_of_claim.get(key, ()):
                        self.pod_queue.add(pod)
            snapshot = _restored_from(obj)
            if snapshot is not None:  # a restore that ends may let its snapshot's deletion go on
                self.snapshot_queue.add((key[0], snapshot))
            self._owner_changed(obj, new, CLAIMS)

    def _on_volume(self, old: dict | None, new: dict | None) -> None:
        ref = ((new or old or {}).get("spec") or {}).get("claimRef") or {}
        if ref.get("name") and getattr(self, "_started", False):
            self.claim_queue.add((ref.get("namespace", ""), ref["name"]))

    def _on_volume_snapshot(self, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        key = key_of(obj)
        self._index_dependent(VOLUME_SNAPSHOTS, old, new)
        if getattr(self, "_started", False):
            if new is not None:
                self.snapshot_queue.add(key)
                content = (new.get("status") or {}).get("boundVolumeSnapshotContentName")
                if content:
                    self.content_queue.add(("", content))
            for claim in self._claims_of_snapshot.get(key, ()):  # restores waiting for it to be ready
                self.claim_queue.add(claim)
            self._owner_changed(obj, new, VOLUME_SNAPSHOTS)

    def _on_snapshot_content(self, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        if not getattr(self, "_started", False):
            return
        if new is not None:
            self.content_queue.add(key_of(obj))
        ref = (obj.get("spec") or {}).get("volumeSnapshotRef") or {}
        if ref.get("name"):
            self.snapshot_queue.add((ref.get("namespace", ""), ref["name"]))

    def _on_owner(self, resource: str, old: dict | None, new: dict | None) -> None:
        if not getattr(self, "_started", False):
            return
        if new is None and old is not None:
            self._owner_changed(old, None)
        elif new is not None:
            self._owner_changed(new, new, resource)

    def _index_dependent(self, resource: str, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        for owner in owner_uids(old or {"metadata": {}}):
            self._dependents[owner].discard((resource, key_of(obj)))
        for owner in owner_uids(new or {"metadata": {}}):
            self._dependents[owner].add((resource, key_of(obj)))
        if new is not None and owner_uids(new) and getattr(self, "_started", False):
            self.gc_queue.add((resource, key_of(obj)))
        self._dependent_left(old, new)

    def _dependent_left(self, old: dict | None, new: dict | None) -> None:
        """A dependent is gone, or no longer holds an owner (its reference gone or no longer blocking):
        an owner deleted in the foreground may now be free to go."""
        if old is None or not getattr(self, "_started", False):
            return
        blocking_now = {ref.get("uid") for ref in meta(new).get("ownerReferences") or []
                        if ref.get("blockOwnerDeletion")} if new is not None else set()
        namespace = meta(old).get("namespace") or ""
        for ref in meta(old).get("ownerReferences") or []:
            # gone, or kept without blockOwnerDeletion: either way it no longer holds its owner
            if ref.get("uid") and ref.get("blockOwnerDeletion") and ref["uid"] not in blocking_now and ref.get("name"):
                self.foreground_queue.add((owner_resource(ref), (owner_namespace(ref, namespace) or "", ref["name"])))

    def _owner_changed(self, owner: dict, new: dict | None, resource: str | None = None) -> None:
        if new is None:  # an owner is gone: its dependents may be garbage now
            for dependent in list(self._dependents.pop(uid_of(owner), ())):
                self.gc_queue.add(dependent)
            self._pods_of_owner.pop(uid_of(owner), None)
        elif resource is not None and deleting_dependents(new):  # deleted in the foreground: dependents first
            for dependent in list(self._dependents.get(uid_of(owner), ())):
                self.gc_queue.add(dependent)
            self.foreground_queue.add((resource, key_of(new)))

    async def _owner_cache_for(self, resource: str) -> Cache | None:
        """The cache of an owner kind, watched from the first time a dependent refers to it."""
        cache = self._own_caches().get(resource) or self._owner_caches.get(resource)
        if cache is None:
            if self.api is None:
                raise RuntimeError("the local cluster has not started")
            cache = self._owner_caches[resource] = Cache(
                self.api, resource, self.namespaces, lambda old, new: self._on_owner(resource, old, new))
            cache.start()
        return cache if await cache.wait_synced(OWNER_SYNC_TIMEOUT) else None

    def _own_caches(self) -> dict[str, Cache]:
        """Every cache the cluster keeps from its start, by resource."""
        caches = [self.pods, self.jobs, self.claims, self.services, self.volumes, self.volume_snapshots,
                  self.snapshot_contents, self.snapshot_classes, *([self.jobsets] if self.jobsets is not None else [])]
        return {cache.resource: cache for cache in caches}

    def _collected_caches(self) -> dict[str, Cache]:
        """The caches of namespaced objects, the ones the garbage collector looks at."""
        return {resource: cache for resource, cache in self._own_caches().items() if resource not in CLUSTER_SCOPED}

    # -- reconcilers ------------------------------------------------------------------------------

    async def _reconcile_claim(self, key: Key) -> None:
        claim = self.claims.get(key)
        if claim is None or self.binder is None:  # (the binder exists once the cluster started)
            return
        users = [p for p in (self.pods.get(k) for k in self._pods_of_claim.get(key, ())) if p is not None]
        assert self.binder is not None
        if await self.binder.reconcile(claim, users):
            for pod in users:
                self.pod_queue.add(key_of(pod))

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
        cache = self._own_caches().get(resource)
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
        if pod is None:
            return
        await self.ephemeral.reconcile(pod)
        node = (pod.get("spec") or {}).get("nodeName")
        if not node:
            look_again = await self.scheduler.reconcile(pod, time.monotonic())
            if look_again is not None:
                self.pod_queue.add_later(key, look_again)
            return
        kubelet = self.kubelets.get(node)
        pending = kubelet.reconcile(pod, uid_of(pod)) if kubelet is not None else None
        if pending is not None:
            await pending

    async def _reconcile_volume_snapshot(self, key: Key) -> None:
        snapshot = self.volume_snapshots.get(key)
        if snapshot is not None and self.snapshot_controller is not None:
            look_again = await self.snapshot_controller.reconcile_snapshot(snapshot)
            if look_again is not None:
                self.snapshot_queue.add_later(key, look_again)

    async def _reconcile_snapshot_content(self, key: Key) -> None:
        content = self.snapshot_contents.get(key)
        if content is not None and self.snapshot_controller is not None:
            look_again = await self.snapshot_controller.reconcile_content(content)
            if look_again is not None:
                self.content_queue.add_later(key, look_again)

    async def _collect_garbage(self, item: tuple[str, Key]) -> None:
        resource, key = item
        obj = self._own_caches()[resource].get(key)
        if obj is not None:
            await self.gc.reconcile(resource, obj)

    def _dependent_objects(self, uid: str) -> list[dict]:
        """The dependents of an owner, as the caches hold them now."""
        return [obj for resource, key in list(self._dependents.get(uid, ()))
                if (obj := self._own_caches()[resource].get(key)) is not None]

    async def _finish_foreground(self, item: tuple[str, Key]) -> None:
        resource, key = item
        cache = self._own_caches().get(resource) or self._owner_caches.get(resource)
        owner = cache.get(key) if cache is not None else None
        if owner is None or not deleting_dependents(owner):
            return
        try:
            await self.gc.finish_foreground(resource, owner, self._dependent_objects(uid_of(owner)))
        except ApiError as exc:
            if exc.status not in (404, 409, 422):  # changed or gone meanwhile: its next event brings it back
                raise

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
        for snapshot in self.volume_snapshots:
            self.snapshot_queue.add(key_of(snapshot))
        for content in self.snapshot_contents:
            self.content_queue.add(key_of(content))
        for resource, cache in self._collected_caches().items():
            for obj in cache:
                if resource == PODS:
                    self.pod_queue.add(key_of(obj))
                if owner_uids(obj):
                    self.gc_queue.add((resource, key_of(obj)))
        for resource, cache in [*self._own_caches().items(), *self._owner_caches.items()]:
            for obj in cache:
                if deleting_dependents(obj):
                    self.foreground_queue.add((resource, key_of(obj)))

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
        for snapshot in list(self.volume_snapshots):
            with _racing_with_the_api(f"volumesnapshot {meta(snapshot)['name']}"):
                await self._reconcile_volume_snapshot(key_of(snapshot))
        for content in list(self.snapshot_contents):
            with _racing_with_the_api(f"volumesnapshotcontent {meta(content)['name']}"):
                await self._reconcile_snapshot_content(key_of(content))
        for resource, cache in self._collected_caches().items():
            for obj in list(cache):
                with _racing_with_the_api(f"{resource} {meta(obj)['name']}"):
                    await self._collect_garbage((resource, key_of(obj)))
        for resource, cache in [*self._own_caches().items(), *self._owner_caches.items()]:
            for obj in list(cache):
                if deleting_dependents(obj):
                    with _racing_with_the_api(f"{resource} {meta(obj)['name']}"):
                        await self._finish_foreground((resource, key_of(obj)))


def _restored_from(claim: Mapping[str, Any] | None) -> str | None:
    """The VolumeSnapshot a claim is restored from, if any."""
    source = ((claim or {}).get("spec") or {}).get("dataSource") or {}
    if source.get("kind") == "VolumeSnapshot" and source.get("apiGroup") == "snapshot.storage.k8s.io":
        return source.get("name")
    return None


@contextlib.contextmanager
def _racing_with_the_api(what: str) -> Iterator[None]:
    """A full pass skips an object that changed (409) or vanished (404) meanwhile."""
    try:
        yield
    except ApiError as exc:
        if exc.status not in (404, 409, 422):
            logger.warning("local cluster: %s: %s", what, exc)
