"""A tiny "cluster" beside the emulated API: PVC binder, Job controller, kubelet and garbage collector.

``LocalCluster`` talks to the API only over HTTP (``server.ApiClient``) and polls it (every 0.1 s by
default): each round lists PVCs, Jobs and Pods and lets each controller bring the world closer to
what they ask for. Level-based and idempotent, so a missed round changes nothing.

- ``PvcBinder``: a new PersistentVolumeClaim becomes ``Bound`` to a fresh host directory
  ``<data_dir>/volumes/<namespace>/<claim>-<uid8>``; deleting the claim deletes the directory.
  Claims get the ``kubernetes.io/pvc-protection`` finalizer: a claim that a running pod uses is
  deleted only after that pod has finished, as in Kubernetes.
- ``JobController`` (batch/v1): pods from ``spec.template``; completions, parallelism, completionMode
  Indexed, backoffLimit (default 6; no backoff delay here), activeDeadlineSeconds; Job status with
  the Complete / Failed conditions.
- ``Kubelet``: runs every pending pod's init containers in order, then its containers concurrently,
  as host processes (images are ignored; ``restartPolicy: Never`` semantics). Volumes become host
  directories; every env value, command/args element and workingDir at or under a volumeMount's
  mountPath is rewritten to the backing directory (longest mountPath first). ``readOnly`` mounts are
  NOT enforced: the processes run as the host user (often root), nothing is isolated.
  A container's log is its stdout followed by its stderr (real Kubernetes interleaves them; keeping
  stdout whole keeps a one-line JSON result of the agent parseable).
- ``GarbageCollector``: deletes Pods, Jobs and PVCs all of whose ownerReferences point to objects that
  no longer exist (or exist with another uid), as the Kubernetes garbage collector does.

A test can play the training code with ``container_runner``:
``async def runner(pod, container, env, mounts) -> int | None`` is called for every container with the
host environment and ``{mountPath: host directory}``; an int is the exit code, None runs the command.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from checkpoint_operator.local.server import ApiClient, ApiError

logger = logging.getLogger(__name__)

ContainerRunner = Callable[[dict, dict, dict, dict], Awaitable["int | None"]]

PVC_PROTECTION = "kubernetes.io/pvc-protection"
TERMINAL_PHASES = ("Succeeded", "Failed")
HOST_ENV_PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "SSL_CERT_FILE")
KIND_TO_RESOURCE = {
    "Pod": "v1/pods", "PersistentVolumeClaim": "v1/persistentvolumeclaims", "Secret": "v1/secrets",
    "ConfigMap": "v1/configmaps", "Job": "batch/v1/jobs",
}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def random_suffix(length: int = 5) -> str:
    return "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(length))


def meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    return obj.get("metadata", {})


def uid_of(obj: Mapping[str, Any]) -> str:
    return meta(obj)["uid"]


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def pod_phase(pod: Mapping[str, Any]) -> str:
    return pod.get("status", {}).get("phase") or "Pending"


def owner_uids(obj: Mapping[str, Any]) -> list[str]:
    return [ref["uid"] for ref in meta(obj).get("ownerReferences") or [] if ref.get("uid")]


def claim_names_of_pod(pod: Mapping[str, Any]) -> list[str]:
    return [volume["persistentVolumeClaim"]["claimName"] for volume in pod.get("spec", {}).get("volumes") or []
            if volume.get("persistentVolumeClaim")]


@contextlib.contextmanager
def racing_with_the_api(what: str) -> Any:
    """Skip one object for this round when it changed (409) or vanished (404) since it was listed.

    Other API errors are logged and skipped too, so one bad object cannot starve the others;
    the next round retries.
    """
    try:
        yield
    except ApiError as exc:
        if exc.status in (404, 409, 422):
            logger.debug("local cluster: %s changed meanwhile: %s", what, exc)
        else:
            logger.warning("local cluster: %s: %s", what, exc)


# --- PVC binder --------------------------------------------------------------------------------------

class PvcBinder:
    """Binds claims to host directories and deletes a directory with its claim."""

    def __init__(self, api: ApiClient, data_dir: Path) -> None:
        self.api = api
        self.volumes_dir = data_dir / "volumes"
        self._bound: dict[tuple[str, str], tuple[str, Path]] = {}  # (ns, name) -> (uid, directory)

    def directory_for(self, claim: Mapping[str, Any]) -> Path:
        return self.volumes_dir / meta(claim)["namespace"] / f"{meta(claim)['name']}-{uid_of(claim)[:8]}"

    def claim_dir(self, namespace: str, name: str) -> Path | None:
        bound = self._bound.get((namespace, name))
        return bound[1] if bound else None

    async def reconcile(self, claims: list[dict], pods: list[dict]) -> None:
        for claim in claims:
            with racing_with_the_api(f"claim {meta(claim)['name']}"):
                if is_deleting(claim):
                    await self._release_when_unused(claim, pods)
                else:
                    await self._bind(claim)
        live = {(meta(c)["namespace"], meta(c)["name"]): uid_of(c) for c in claims}
        for key, (uid, directory) in list(self._bound.items()):
            if live.get(key) != uid:
                del self._bound[key]
                shutil.rmtree(directory, ignore_errors=True)

    async def _bind(self, claim: dict) -> None:
        directory = self.directory_for(claim)
        directory.mkdir(parents=True, exist_ok=True)
        key = (meta(claim)["namespace"], meta(claim)["name"])
        self._bound[key] = (uid_of(claim), directory)
        if PVC_PROTECTION not in (meta(claim).get("finalizers") or []):
            finalizers = [*(meta(claim).get("finalizers") or []), PVC_PROTECTION]
            await self.api.patch("v1/persistentvolumeclaims", *key, {"metadata": {"finalizers": finalizers}})
        if claim.get("status", {}).get("phase") != "Bound":
            spec = claim.get("spec", {})
            await self.api.patch("v1/persistentvolumeclaims", *key, {"status": {
                "phase": "Bound", "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
                "capacity": spec.get("resources", {}).get("requests", {})}}, subresource="status")

    async def _release_when_unused(self, claim: dict, pods: list[dict]) -> None:
        namespace, name = meta(claim)["namespace"], meta(claim)["name"]
        in_use = any(meta(pod)["namespace"] == namespace and name in claim_names_of_pod(pod)
                     and pod_phase(pod) not in TERMINAL_PHASES for pod in pods)
        finalizers = meta(claim).get("finalizers") or []
        if not in_use and PVC_PROTECTION in finalizers:
            await self.api.patch("v1/persistentvolumeclaims", namespace, name, [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta(claim)["resourceVersion"]},
                {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in finalizers if f != PVC_PROTECTION]},
            ])


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

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    async def reconcile(self, jobs: list[dict], pods: list[dict]) -> None:
        for job in jobs:
            if is_deleting(job) or job_is_finished(job):
                continue
            owned = [pod for pod in pods if uid_of(job) in owner_uids(pod)]
            with racing_with_the_api(f"job {meta(job)['name']}"):
                await self._reconcile_job(job, owned)

    async def _reconcile_job(self, job: dict, pods: list[dict]) -> None:
        spec, status = job.get("spec", {}), dict(job.get("status", {}))
        completions = spec.get("completions") or 1
        parallelism = spec.get("parallelism") if spec.get("parallelism") is not None else 1
        indexed = spec.get("completionMode") == "Indexed"
        active = [p for p in pods if pod_phase(p) not in TERMINAL_PHASES and not is_deleting(p)]
        failed = [p for p in pods if pod_phase(p) == "Failed"]
        succeeded = [p for p in pods if pod_phase(p) == "Succeeded"]
        succeeded_count = len({pod_completion_index(p) for p in succeeded}) if indexed else len(succeeded)
        status.setdefault("startTime", now_rfc3339())

        finish: tuple[str, str, str] | None = None
        if len(failed) > spec.get("backoffLimit", 6):
            finish = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif self._deadline_exceeded(spec, status):
            finish = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        elif succeeded_count >= completions and not active:
            finish = ("Complete", "", "")

        if finish is not None and finish[0] == "Failed":
            for pod in active:
                await self.api.delete("v1/pods", meta(pod)["namespace"], meta(pod)["name"])
            active = []
        elif finish is None:
            active += await self._create_missing_pods(job, pods, active, succeeded, completions, parallelism, indexed)

        status.update(active=len(active), succeeded=succeeded_count, failed=len(failed))
        if indexed:
            status["completedIndexes"] = ",".join(str(i) for i in sorted({pod_completion_index(p) for p in succeeded}))
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
            await self.api.patch("batch/v1/jobs", meta(job)["namespace"], meta(job)["name"],
                                 {"status": status}, subresource="status")

    @staticmethod
    def _deadline_exceeded(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is None:
            return False
        started = parse_rfc3339(status["startTime"])
        return (datetime.datetime.now(datetime.UTC) - started).total_seconds() >= deadline

    async def _create_missing_pods(self, job: dict, pods: list[dict], active: list[dict], succeeded: list[dict],
                                   completions: int, parallelism: int, indexed: bool) -> list[dict]:
        if indexed:
            busy = {pod_completion_index(p) for p in active + succeeded}
            wanted: list[int | None] = [i for i in range(completions) if i not in busy]
        else:
            wanted = [None] * (completions - len(succeeded) - len(active))
        wanted = wanted[:max(0, parallelism - len(active))]
        created = []
        for index in wanted:
            created.append(await self.api.create("v1/pods", meta(job)["namespace"], build_job_pod(job, index)))
        return created


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


# --- kubelet -----------------------------------------------------------------------------------------

class PodWorkspace:
    """The host side of one pod: volume directories and the translation of container paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.volumes: dict[str, Path] = {}

    def mounts_of(self, container: Mapping[str, Any]) -> dict[str, Path]:
        """``{mountPath: host directory}`` of a container (subPath applied)."""
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            host = self.volumes[mount["name"]]
            if mount.get("subPath"):
                host = host / mount["subPath"]
                if not host.exists():
                    host.mkdir(parents=True)  # as the kubelet does for a missing subPath
            mounts[mount["mountPath"].rstrip("/") or "/"] = host
        return mounts


def translate_path(value: str, mounts: Mapping[str, Path]) -> str:
    """A container path at or under a mountPath becomes the host path (longest mountPath wins).

    ``--flag=/mount/x`` is translated after the ``=`` too.
    """
    if "=" in value and not value.startswith("/"):
        prefix, _, rest = value.partition("=")
        return f"{prefix}={translate_path(rest, mounts)}" if rest.startswith("/") else value
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(mounts[mount_path]) + value[len(mount_path):]
    return value


def expand_variables(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` references; ``$$`` escapes; unknown references stay as they are."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def host_command(argv: list[str]) -> list[str]:
    """``python``/``python3`` -> this interpreter; ``checkpoint-operator`` -> this package's CLI."""
    if not argv:
        return argv
    program = os.path.basename(argv[0])
    if program in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    if program == "checkpoint-operator":
        return [sys.executable, "-m", "checkpoint_operator", *argv[1:]]
    return argv


class Kubelet:
    """Runs pending pods as host processes and reports their status and logs."""

    def __init__(self, api: ApiClient, binder: PvcBinder, data_dir: Path,
                 container_runner: ContainerRunner | None = None, workdir: Path | None = None) -> None:
        self.api = api
        self.binder = binder
        self.pods_dir = data_dir / "pods"
        self.container_runner = container_runner
        self.workdir = workdir  # of containers without workingDir (default: the pod's own directory)
        self._running: dict[str, asyncio.Task] = {}  # pod uid -> task
        self._adopted_existing = False

    async def reconcile(self, pods: list[dict]) -> None:
        live_uids = {uid_of(pod) for pod in pods if not is_deleting(pod)}
        for uid, task in list(self._running.items()):
            if uid not in live_uids:
                task.cancel()  # the pod was deleted: stop its processes
            if task.done():
                del self._running[uid]
        for pod in pods:
            uid = uid_of(pod)
            if uid in self._running or is_deleting(pod):
                continue
            if pod_phase(pod) == "Pending" and not pod.get("status", {}).get("startTime"):
                self._running[uid] = asyncio.create_task(self._run_pod(pod), name=f"pod {meta(pod)['name']}")
            elif not self._adopted_existing and pod_phase(pod) not in TERMINAL_PHASES:
                # Left running by an earlier kubelet (an earlier local run): its processes are gone.
                await self._patch_status(pod, {"phase": "Failed", "reason": "NodeLost",
                                               "message": "the local kubelet restarted while the pod ran"})
        self._adopted_existing = True

    async def stop(self) -> None:
        for task in self._running.values():
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        self._running.clear()

    async def _run_pod(self, pod: dict) -> None:
        try:
            await self._wait_for_claims(pod)
            workspace = await self._prepare_volumes(pod)
            await self._patch_status(pod, {"phase": "Pending", "startTime": now_rfc3339(),
                                           "hostIP": "127.0.0.1", "podIP": "127.0.0.1"})
            spec = pod.get("spec", {})
            init_statuses = []
            for container in spec.get("initContainers") or []:
                init_statuses.append(await self._run_container(pod, container, workspace))
                if init_statuses[-1]["state"]["terminated"]["exitCode"] != 0:
                    await self._patch_status(pod, {"phase": "Failed", "initContainerStatuses": init_statuses})
                    return
            containers = spec.get("containers") or []
            await self._patch_status(pod, {"phase": "Running", "initContainerStatuses": init_statuses or None,
                                           "containerStatuses": [running_status(c) for c in containers]})
            statuses = await asyncio.gather(*(self._run_container(pod, c, workspace) for c in containers))
            succeeded = all(s["state"]["terminated"]["exitCode"] == 0 for s in statuses)
            await self._patch_status(pod, {"phase": "Succeeded" if succeeded else "Failed",
                                           "containerStatuses": list(statuses)})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the harness fails the pod, visibly
            logger.exception("local kubelet: pod %s failed to run", meta(pod)["name"])
            with contextlib.suppress(Exception):
                await self._patch_status(pod, {"phase": "Failed", "reason": "KubeletError", "message": str(exc)})

    async def _wait_for_claims(self, pod: dict) -> None:
        while True:
            if all(self.binder.claim_dir(meta(pod)["namespace"], claim) for claim in claim_names_of_pod(pod)):
                return
            await asyncio.sleep(0.05)

    async def _prepare_volumes(self, pod: dict) -> PodWorkspace:
        workspace = PodWorkspace(self.pods_dir / uid_of(pod))
        namespace = meta(pod)["namespace"]
        for volume in pod.get("spec", {}).get("volumes") or []:
            name = volume["name"]
            if volume.get("persistentVolumeClaim"):
                workspace.volumes[name] = self.binder.claim_dir(namespace, volume["persistentVolumeClaim"]["claimName"])
            elif volume.get("hostPath"):
                workspace.volumes[name] = Path(volume["hostPath"]["path"])
            else:
                directory = workspace.root / "volumes" / name
                directory.mkdir(parents=True, exist_ok=True)
                workspace.volumes[name] = directory
                if volume.get("secret"):
                    await self._write_keys(directory, "v1/secrets", namespace, volume["secret"].get("secretName"))
                elif volume.get("configMap"):
                    await self._write_keys(directory, "v1/configmaps", namespace, volume["configMap"].get("name"))
        return workspace

    async def _write_keys(self, directory: Path, resource: str, namespace: str, name: str | None) -> None:
        obj = await self.api.get(resource, namespace, name) if name else None
        for key, value in decoded_data(obj or {}).items():
            (directory / key).write_bytes(value)

    async def _container_env(self, pod: dict, container: dict, mounts: Mapping[str, Path]) -> dict[str, str]:
        env = {key: os.environ[key] for key in HOST_ENV_PASSED if key in os.environ}
        env["HOSTNAME"] = meta(pod)["name"]
        namespace = meta(pod)["namespace"]
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef") or source.get("configMapRef") or {}
            resource = "v1/secrets" if source.get("secretRef") else "v1/configmaps"
            obj = await self.api.get(resource, namespace, ref.get("name")) or {}
            env.update({source.get("prefix", "") + k: v.decode() for k, v in decoded_data(obj).items()})
        for var in container.get("env") or []:
            value = await self._env_value(pod, var)
            if value is not None:
                env[var["name"]] = translate_path(expand_variables(value, env), mounts)
        return env

    async def _env_value(self, pod: dict, var: Mapping[str, Any]) -> str | None:
        if "valueFrom" not in var:
            return var.get("value", "")
        source = var["valueFrom"]
        if "fieldRef" in source:
            return pod_field(pod, source["fieldRef"]["fieldPath"])
        for ref_name, resource in (("secretKeyRef", "v1/secrets"), ("configMapKeyRef", "v1/configmaps")):
            if ref_name in source:
                ref = source[ref_name]
                obj = await self.api.get(resource, meta(pod)["namespace"], ref["name"]) or {}
                value = decoded_data(obj).get(ref["key"])
                if value is None and not ref.get("optional"):
                    raise RuntimeError(f"{resource} {ref['name']!r} has no key {ref['key']!r}")
                return value.decode() if value is not None else None
        return None

    async def _run_container(self, pod: dict, container: dict, workspace: PodWorkspace) -> dict[str, Any]:
        mounts = workspace.mounts_of(container)
        env = await self._container_env(pod, container, mounts)
        started = now_rfc3339()
        exit_code: int | None = None
        stdout = stderr = b""
        if self.container_runner is not None:
            exit_code = await self.container_runner(pod, container, env, {k: str(v) for k, v in mounts.items()})
        if exit_code is None:
            argv = [translate_path(expand_variables(arg, env), mounts)
                    for arg in [*(container.get("command") or []), *(container.get("args") or [])]]
            workdir = translate_path(container["workingDir"], mounts) if container.get("workingDir") else None
            exit_code, stdout, stderr = await run_process(host_command(argv), env, workdir or self.workdir or workspace.root)
        log = stdout.decode(errors="replace") + stderr.decode(errors="replace")
        with contextlib.suppress(ApiError):
            await self.api.write_log(meta(pod)["namespace"], meta(pod)["name"], container["name"], log)
        return {"name": container["name"], "image": container.get("image", ""), "ready": False,
                "restartCount": 0, "state": {"terminated": {
                    "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                    "startedAt": started, "finishedAt": now_rfc3339()}}}

    async def _patch_status(self, pod: dict, status: dict) -> None:
        with contextlib.suppress(ApiError):  # a deleted pod has no status to report
            await self.api.patch("v1/pods", meta(pod)["namespace"], meta(pod)["name"],
                                 {"status": status}, subresource="status")


def running_status(container: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": container["name"], "image": container.get("image", ""), "ready": True, "restartCount": 0,
            "started": True, "state": {"running": {"startedAt": now_rfc3339()}}}


def pod_field(pod: Mapping[str, Any], path: str) -> str:
    """The value of a ``fieldRef.fieldPath``: metadata.name, metadata.labels['x'], status.podIP, ..."""
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return (meta(pod).get(match[1]) or {}).get(match[2], "")
    if path in ("status.podIP", "status.hostIP"):
        return "127.0.0.1"
    if path == "spec.nodeName":
        return "local"
    value: Any = pod
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, Mapping) else ""
    return str(value)


def decoded_data(obj: Mapping[str, Any]) -> dict[str, bytes]:
    """The keys of a Secret (base64 ``data`` and ``stringData``) or a ConfigMap, as bytes."""
    if obj.get("kind") == "Secret":
        values = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    else:
        values = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    values.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
    return values


async def run_process(argv: list[str], env: Mapping[str, str], cwd: Path | str) -> tuple[int, bytes, bytes]:
    """Run a command to its end; a cancelled run kills the whole process group."""
    if not argv:
        return 127, b"", b"local kubelet: the container has no command (images are not run locally)\n"
    Path(cwd).mkdir(parents=True, exist_ok=True)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, env=dict(env), cwd=str(cwd), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        return 127, b"", f"local kubelet: cannot run {argv[0]!r}: {exc}\n".encode()
    try:
        stdout, stderr = await process.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(process.wait())
        raise
    return process.returncode or 0, stdout, stderr


# --- garbage collector -------------------------------------------------------------------------------

class GarbageCollector:
    """Deletes dependents whose owners are all gone (Background propagation)."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    async def reconcile(self, dependents: Iterable[tuple[str, dict]]) -> None:
        owner_exists: dict[tuple, bool] = {}
        for resource, obj in dependents:
            refs = meta(obj).get("ownerReferences") or []
            if not refs or is_deleting(obj):
                continue
            with racing_with_the_api(f"{resource} {meta(obj)['name']}"):
                alive = [await self._owner_exists(meta(obj)["namespace"], ref, owner_exists) for ref in refs]
                if not any(alive):
                    await self.api.delete(resource, meta(obj)["namespace"], meta(obj)["name"],
                                          preconditions={"uid": uid_of(obj)})

    async def _owner_exists(self, namespace: str, ref: Mapping[str, Any], cache: dict[tuple, bool]) -> bool:
        key = (namespace, ref.get("apiVersion"), ref.get("kind"), ref.get("name"), ref.get("uid"))
        if key not in cache:
            owner = await self.api.get(owner_resource(ref), namespace, ref["name"])
            cache[key] = owner is not None and uid_of(owner) == ref.get("uid")
        return cache[key]


def owner_resource(ref: Mapping[str, Any]) -> str:
    """``batch/v1/jobs`` for an ownerReference to a Job; CRD kinds: ``group/version/<kind>s``."""
    if ref.get("kind") in KIND_TO_RESOURCE and ref.get("apiVersion") in ("v1", "batch/v1"):
        return KIND_TO_RESOURCE[ref["kind"]]
    return f"{ref['apiVersion']}/{ref['kind'].lower()}s"


# --- the whole cluster -------------------------------------------------------------------------------

class LocalCluster:
    """Binder, Job controller, kubelet and garbage collector against the API at ``api_url``.

    ``namespaces``: where to act (empty or None: everywhere). Use ``async with LocalCluster(...)``
    in a running loop, or ``start_in_thread()`` / ``stop_thread()`` from synchronous code.
    """

    def __init__(self, api_url: str, data_dir: str | os.PathLike, namespaces: Iterable[str] | None = None,
                 container_runner: ContainerRunner | None = None, *, poll_interval: float = 0.1,
                 workdir: str | os.PathLike | None = None) -> None:
        self.workdir = Path(workdir) if workdir is not None else None
        self.api_url = api_url
        self.data_dir = Path(data_dir)
        self.namespaces = list(namespaces or [])
        self.container_runner = container_runner
        self.poll_interval = poll_interval
        self.api: ApiClient | None = None
        self.binder: PvcBinder | None = None
        self._task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    def claim_dir(self, namespace: str, name: str) -> Path | None:
        """The host directory bound to a claim, or None while it is not bound."""
        return self.binder.claim_dir(namespace, name) if self.binder else None

    def set_container_runner(self, runner: ContainerRunner | None) -> None:
        """Let a test play the training code from now on (see the module's docstring)."""
        self.container_runner = runner
        if getattr(self, "kubelet", None) is not None:
            self.kubelet.container_runner = runner

    async def start(self) -> None:
        self.api = ApiClient(self.api_url)
        self.binder = PvcBinder(self.api, self.data_dir)
        self.jobs = JobController(self.api)
        self.kubelet = Kubelet(self.api, self.binder, self.data_dir, self.container_runner, self.workdir)
        self.gc = GarbageCollector(self.api)
        self._task = asyncio.create_task(self._loop(), name="local cluster")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.kubelet.stop()
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
        started.wait(10)

    def stop_thread(self, timeout: float = 10) -> None:
        if self._thread is not None and self._thread_loop is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join(timeout)
            self._thread = None

    async def reconcile_once(self) -> None:
        """One round of every controller (what the loop does every ``poll_interval``)."""
        claims = await self._list("v1/persistentvolumeclaims")
        jobs = await self._list("batch/v1/jobs")
        pods = await self._list("v1/pods")
        await self.binder.reconcile(claims, pods)
        await self.jobs.reconcile(jobs, pods)
        await self.kubelet.reconcile(pods)
        await self.gc.reconcile([*(("v1/pods", p) for p in pods), *(("batch/v1/jobs", j) for j in jobs),
                                 *(("v1/persistentvolumeclaims", c) for c in claims)])

    async def _loop(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failed round is retried on the next one
                logger.exception("local cluster: a reconciliation round failed")
            await asyncio.sleep(self.poll_interval)

    async def _list(self, resource: str) -> list[dict]:
        if not self.namespaces:
            return await self.api.list(resource)
        return [obj for namespace in self.namespaces for obj in await self.api.list(resource, namespace)]
