"""A tiny "cluster" beside the emulated API: PVC binder, Job controller, kubelet and garbage collector.

``LocalCluster`` talks to the API only over HTTP. It watches PVCs, Jobs and Pods (``informer.py``:
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
- ``JobController`` (batch/v1): pods from ``spec.template``; completions, parallelism, completionMode
  Indexed, backoffLimit (default 6; no backoff delay here), activeDeadlineSeconds; Job status with
  ``active``, ``terminating``, ``succeeded``, ``failed`` and the Complete / Failed conditions.
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
import copy
import datetime
import logging
import os
import secrets
import shutil
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from checkpoint_operator.local.informer import Informer, Key, WorkQueue, key_of
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
KIND_TO_RESOURCE = {
    "Pod": PODS, "PersistentVolumeClaim": CLAIMS, "Secret": "v1/secrets", "ConfigMap": "v1/configmaps", "Job": JOBS,
}


def parse_rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def random_suffix(length: int = 5) -> str:
    return "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(length))


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
            shutil.rmtree(bound[1], ignore_errors=True)

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


# --- Job controller ----------------------------------------------------------------------------------

def job_condition(job: Mapping[str, Any], condition_type: str) -> bool:
    return any(c.get("type") == condition_type and c.get("status") == "True"
               for c in job.get("status", {}).get("conditions") or [])


def job_is_finished(job: Mapping[str, Any]) -> bool:
    return job_condition(job, "Complete") or job_condition(job, "Failed")


def pod_completion_index(pod: Mapping[str, Any]) -> int | None:
    value = (meta(pod).get("annotations") or {}).get("batch.kubernetes.io/job-completion-index")
    return int(value) if value is not None else None


class JobController:
    """batch/v1 Jobs: pods from the template, retries, deadlines, status and conditions."""

    def __init__(self, api: ApiClient, jobs: Cache, pods: Cache) -> None:
        self.api = api
        self.jobs = jobs
        self.pods = pods
        self._reported: dict[str, str] = {}  # Job uid -> the last FailedCreate message posted

    async def reconcile(self, job: dict, pods: list[dict]) -> float | None:
        """Bring one Job closer to its spec; returns seconds after which to look again (a deadline)."""
        if is_deleting(job) or job_is_finished(job):
            return None
        spec, status = job.get("spec", {}), dict(job.get("status", {}))
        completions = spec.get("completions") or 1
        parallelism = spec.get("parallelism") if spec.get("parallelism") is not None else 1
        indexed = spec.get("completionMode") == "Indexed"
        terminating = [p for p in pods if is_deleting(p) and pod_phase(p) not in TERMINAL_PHASES]
        active = [p for p in pods if pod_phase(p) not in TERMINAL_PHASES and not is_deleting(p)]
        failed = [p for p in pods if pod_phase(p) == "Failed"]
        succeeded = [p for p in pods if pod_phase(p) == "Succeeded"]
        succeeded_count = len({pod_completion_index(p) for p in succeeded}) if indexed else len(succeeded)
        status.setdefault("startTime", now_rfc3339())

        finish: tuple[str, str, str] | None = None
        remaining = self._deadline_remaining(spec, status)
        if len(failed) > spec.get("backoffLimit", 6):
            finish = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif remaining is not None and remaining <= 0:
            finish = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        elif succeeded_count >= completions and not active:
            finish = ("Complete", "", "")

        if finish is not None and finish[0] == "Failed":
            for pod in active:
                await self.api.delete(PODS, meta(pod)["namespace"], meta(pod)["name"])
            terminating += active
            active = []
        elif finish is None:
            active += await self._create_missing_pods(job, active, succeeded, completions, parallelism, indexed)

        status.update(active=len(active), terminating=len(terminating), succeeded=succeeded_count, failed=len(failed))
        if indexed:
            indexes = {i for i in map(pod_completion_index, succeeded) if i is not None}
            status["completedIndexes"] = ",".join(str(i) for i in sorted(indexes))
        if finish is not None:
            condition_type, reason, message = finish
            condition = {"type": condition_type, "status": "True", "lastProbeTime": now_rfc3339(),
                         "lastTransitionTime": now_rfc3339()}
            if reason:
                condition.update(reason=reason, message=message)
            status["conditions"] = [*(status.get("conditions") or []), condition]
            if condition_type == "Complete":
                status["completionTime"] = now_rfc3339()
        if status != job.get("status", {}):
            self.jobs.observe(await self.api.patch(JOBS, meta(job)["namespace"], meta(job)["name"],
                                                   {"status": status}, subresource="status"))
        return remaining if finish is None else None

    @staticmethod
    def _deadline_remaining(spec: Mapping[str, Any], status: Mapping[str, Any]) -> float | None:
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is None:
            return None
        started = parse_rfc3339(status["startTime"])
        return deadline - (datetime.datetime.now(datetime.UTC) - started).total_seconds()

    async def _create_missing_pods(self, job: dict, active: list[dict], succeeded: list[dict],
                                   completions: int, parallelism: int, indexed: bool) -> list[dict]:
        if indexed:
            busy = {pod_completion_index(p) for p in active + succeeded}
            wanted: list[int | None] = [i for i in range(completions) if i not in busy]
        else:
            wanted = [None] * (completions - len(succeeded) - len(active))
        wanted = wanted[:max(0, parallelism - len(active))]
        created = []
        for index in wanted:
            try:
                pod = await self.api.create(PODS, meta(job)["namespace"], build_job_pod(job, index))
            except ApiError as exc:
                if exc.status == 403:  # admission refused it (Pod Security): said on the Job, tried again later
                    await self._failed_create(job, exc)
                raise
            self.pods.observe(pod)  # seen at once: the next pass never creates it twice
            created.append(pod)
        return created

    async def _failed_create(self, job: dict, exc: ApiError) -> None:
        """The Job controller's `FailedCreate` Warning event on the Job (once per message here)."""
        message = exc.body.get("message", str(exc)) if isinstance(exc.body, dict) else str(exc.body)
        text = f"Error creating: {message}"
        if self._reported.get(uid_of(job)) == text:
            return
        self._reported[uid_of(job)] = text
        now = now_rfc3339()
        involved = {"apiVersion": "batch/v1", "kind": "Job", "name": meta(job)["name"],
                    "namespace": meta(job)["namespace"], "uid": uid_of(job)}
        await self.api.create("v1/events", meta(job)["namespace"], {
            "metadata": {"generateName": f"{meta(job)['name']}."}, "involvedObject": involved, "type": "Warning",
            "reason": "FailedCreate", "message": text, "source": {"component": "job-controller"},
            "count": 1, "firstTimestamp": now, "lastTimestamp": now})


def build_job_pod(job: Mapping[str, Any], index: int | None) -> dict[str, Any]:
    """The pod the Job controller creates from ``spec.template`` (with the completion index if Indexed)."""
    template = copy.deepcopy(job.get("spec", {}).get("template", {}))
    job_name, job_uid = meta(job)["name"], uid_of(job)
    pod_meta = template.get("metadata") or {}
    labels = {**(pod_meta.get("labels") or {}), "job-name": job_name, "batch.kubernetes.io/job-name": job_name,
              "controller-uid": job_uid, "batch.kubernetes.io/controller-uid": job_uid}
    annotations = dict(pod_meta.get("annotations") or {})
    spec = template.get("spec") or {}
    name = f"{job_name}-{random_suffix()}"
    if index is not None:
        name = f"{job_name}-{index}-{random_suffix()}"
        labels["batch.kubernetes.io/job-completion-index"] = str(index)
        annotations["batch.kubernetes.io/job-completion-index"] = str(index)
        for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            container["env"] = [*(container.get("env") or []), {"name": "JOB_COMPLETION_INDEX", "value": str(index)}]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": meta(job)["namespace"], "labels": labels, "annotations": annotations,
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job_uid,
                                          "controller": True, "blockOwnerDeletion": True}]},
        "spec": spec,
    }


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
                 workdir: str | os.PathLike | None = None, runtime: Any = None) -> None:
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
        self.pods = Cache(self.api, PODS, self.namespaces, self._on_pod)
        self.jobs = Cache(self.api, JOBS, self.namespaces, self._on_job)
        self.claims = Cache(self.api, CLAIMS, self.namespaces, self._on_claim)
        self.binder = PvcBinder(self.api, self.data_dir, self.claims)
        self.job_controller = JobController(self.api, self.jobs, self.pods)
        self.kubelet = Kubelet(self.api, self.data_dir, self.claim_dir, self.pods.observe, runtime=self.runtime,
                               container_runner=self.container_runner, workdir=self.workdir)
        self.gc = GarbageCollector(self.api, self._owner_cache_for)
        self.exec_server = ExecServer(self.kubelet)  # pods/exec: the emulator proxies to it (podexec.py)
        await register_node(self.api, await self.exec_server.start())
        for cache in (self.pods, self.jobs, self.claims):
            cache.start()
        await asyncio.gather(self.pods.wait_synced(), self.jobs.wait_synced(), self.claims.wait_synced())
        for pod in self.pods:  # pods an earlier kubelet left running have lost their processes
            adopted = self.kubelet.reconcile(pod, uid_of(pod), adopt=True)
            if adopted is not None:
                await adopted
        self.claim_queue = WorkQueue("claim", self._reconcile_claim)
        self.job_queue = WorkQueue("job", self._reconcile_job)
        self.pod_queue = WorkQueue("pod", self._reconcile_pod)
        self.gc_queue = WorkQueue("gc", self._collect_garbage)
        self._queues = [self.claim_queue, self.job_queue, self.pod_queue, self.gc_queue]
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
        for cache in [self.pods, self.jobs, self.claims, *self._owner_caches.values()] if self.api else []:
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
        if new is None:
            self._job_by_uid.pop(uid_of(obj), None)
        else:
            self._job_by_uid[uid_of(obj)] = key
        self._index_dependent(JOBS, old, new)
        if getattr(self, "_started", False):
            if new is not None:
                self.job_queue.add(key)
            self._owner_changed(obj, new)

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
        caches = {PODS: self.pods, JOBS: self.jobs, CLAIMS: self.claims}
        cache = caches.get(resource) or self._owner_caches.get(resource)
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

    async def _reconcile_pod(self, key: Key) -> None:
        pod = self.pods.get(key)
        if pod is not None and self.kubelet is not None:  # (the kubelet exists once the cluster started)
            pending = self.kubelet.reconcile(pod, uid_of(pod))
            if pending is not None:
                await pending

    async def _collect_garbage(self, item: tuple[str, Key]) -> None:
        resource, key = item
        cache = {PODS: self.pods, JOBS: self.jobs, CLAIMS: self.claims}[resource]
        obj = cache.get(key)
        if obj is not None:
            await self.gc.reconcile(resource, obj)

    # -- safety net -------------------------------------------------------------------------------

    def resync(self) -> None:
        """Queue every known object once (what the periodic resync does)."""
        for claim in self.claims:
            self.claim_queue.add(key_of(claim))
        for job in self.jobs:
            self.job_queue.add(key_of(job))
        for resource, cache in ((PODS, self.pods), (JOBS, self.jobs), (CLAIMS, self.claims)):
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
        for job in list(self.jobs):
            with _racing_with_the_api(f"job {meta(job)['name']}"):
                await self._reconcile_job(key_of(job))
        for pod in list(self.pods):
            with _racing_with_the_api(f"pod {meta(pod)['name']}"):
                await self._reconcile_pod(key_of(pod))
        for resource, cache in ((PODS, self.pods), (JOBS, self.jobs), (CLAIMS, self.claims)):
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
