"""The local kubelet: runs each pod's containers with a runtime and reports them as a kubelet does.

A pod, once its claims are bound: volumes become host directories under ``<data>/pods/<uid>/``
(emptyDir, Secret and ConfigMap keys as files; PVCs are the binder's directories), then

1. init containers in order; a native sidecar (an init container with ``restartPolicy: Always``)
   is started and left running (restarted if it exits) and the next one starts once its process
   runs;
2. the regular containers, concurrently; the pod is Running;
3. when every regular container has exited, the sidecars are stopped (SIGTERM, then SIGKILL after
   the grace period), in reverse order; their exit codes do not count;
4. the phase: Succeeded when every regular container exited 0, else Failed (``restartPolicy:
   Never`` semantics, which is what Jobs of this operator use).

Deleting a running pod terminates it gracefully: SIGTERM to every regular container, then, once
they have exited, to the native sidecars (last started first), as the kubelet orders it since
Kubernetes 1.29; SIGKILL to whatever still runs after ``terminationGracePeriodSeconds`` (default
30). A downwardAPI volume (``metadata.annotations``, ``labels``, ``name``, ``namespace``, ``uid``)
is written before the containers start and rewritten when the pod's metadata changes, as a
kubelet refreshes it. A native sidecar's log is served while it runs (other containers' logs
when they end). The emulated API deletes a pod at once, so the
kubelet holds a finalizer (``LOCAL_KUBELET_FINALIZER``) while a pod runs: a deleted running pod
stays visible with its deletionTimestamp (terminating) until its containers have stopped.

A container's log is its stdout and stderr interleaved as written (one pipe for both, as a
kubelet merges the two streams into one log), so the agent's result line, written last, is the
log's last line; the emulated API keeps and serves it as a kubelet does (local/podlogs.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoint_operator.agent import fstree
from checkpoint_operator.local.podview import Mount, normalise_mount_path, remove_tree
from checkpoint_operator.local.runtime import (
    ContainerProcess, ContainerRun, HostProcess, ProcessRuntime, Security, StartError, expand_variables,
    host_command_for,
)
from checkpoint_operator.local.server import ApiClient, ApiError

logger = logging.getLogger(__name__)

ContainerRunner = Callable[..., Awaitable["int | tuple[int, str] | None"]]

LOCAL_KUBELET_FINALIZER = "local.ckpt.dev/kubelet"
TERMINAL_PHASES = ("Succeeded", "Failed")
DEFAULT_GRACE_SECONDS = 30
SIDECAR_RESTART_DELAYS = (0.1, 1.0, 5.0)
KILL_WAIT_SECONDS = 30.0  # for killed sidecars' loops to end (a container being created when killed)
READ_ONLY_VOLUME_KINDS = ("secret", "configMap", "downwardAPI", "projected")


TERMINATION_MESSAGE_LIMIT = 4096  # bytes of a container's termination message the kubelet keeps


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    return obj.get("metadata", {})


def pod_phase(pod: Mapping[str, Any]) -> str:
    return pod.get("status", {}).get("phase") or "Pending"


def is_sidecar(container: Mapping[str, Any]) -> bool:
    return container.get("restartPolicy") == "Always"


def grace_seconds(pod: Mapping[str, Any]) -> float:
    value = meta(pod).get("deletionGracePeriodSeconds")
    if value is None:
        value = pod.get("spec", {}).get("terminationGracePeriodSeconds")
    return float(DEFAULT_GRACE_SECONDS if value is None else value)


@dataclass(frozen=True)
class PodClaim:
    volume: str
    claim: str
    ephemeral: bool


def pod_claims(pod: Mapping[str, Any]) -> list[PodClaim]:
    """The claims a pod's volumes use: persistentVolumeClaim volumes, and ``<pod>-<volume>`` for
    each ephemeral volume (the claim the ephemeral volume controller creates for it)."""
    claims = []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if volume.get("persistentVolumeClaim"):
            claims.append(PodClaim(volume["name"], volume["persistentVolumeClaim"]["claimName"], False))
        elif volume.get("ephemeral"):
            claims.append(PodClaim(volume["name"], f"{meta(pod)['name']}-{volume['name']}", True))
    return claims


def claim_names_of_pod(pod: Mapping[str, Any]) -> list[str]:
    return [item.claim for item in pod_claims(pod)]


def pod_field(pod: Mapping[str, Any], path: str) -> str:
    """The value of a ``fieldRef.fieldPath``: metadata.name, metadata.labels['x'], status.podIP, ..."""
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return (meta(pod).get(match[1]) or {}).get(match[2], "")
    if path in ("status.podIP", "status.hostIP"):
        return "127.0.0.1"
    if path == "spec.nodeName":
        return (pod.get("spec") or {}).get("nodeName") or ""
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


def terminated_status(container: Mapping[str, Any], exit_code: int, started: str, restarts: int = 0,
                      reason: str | None = None) -> dict:
    reason = reason or ("Completed" if exit_code == 0 else "Error")
    return {"name": container["name"], "image": container.get("image", ""), "ready": False,
            "restartCount": restarts, "started": False, "state": {"terminated": {
                "exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": now_rfc3339()}}}


def running_status(container: Mapping[str, Any], restarts: int = 0) -> dict[str, Any]:
    return {"name": container["name"], "image": container.get("image", ""), "ready": True,
            "restartCount": restarts, "started": True, "state": {"running": {"startedAt": now_rfc3339()}}}


def waiting_status(container: Mapping[str, Any], reason: str, message: str = "") -> dict[str, Any]:
    state: dict[str, Any] = {"reason": reason}
    if message:
        state["message"] = message
    return {"name": container["name"], "image": container.get("image", ""), "ready": False,
            "restartCount": 0, "started": False, "state": {"waiting": state}}


def image_id(image: str) -> str:
    """The image's id as a runtime reports it (``sha256:<hex>``). Local mode pulls no image (the process
    runtime runs host commands; an engine runs its local images): the id is derived from the image
    reference, the same for every container of that image."""
    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


def with_runtime_ids(status: dict[str, Any], pod_uid: str, runtime: str) -> dict[str, Any]:
    """`status` with what a kubelet reports of each container (hostile5 F4: without them the official
    client could not read pods): ``imageID`` always (empty until the container was created),
    ``containerID`` ``<runtime>://<64 hex>`` once it was, one per run (name and restart count), also in
    its terminated state."""
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            state = container.get("state") or {}
            created = "running" in state or "terminated" in state
            container.setdefault("imageID", image_id(container.get("image", "")) if created else "")
            if created:
                run = f"{pod_uid}/{container.get('name')}/{container.get('restartCount', 0)}"
                container.setdefault("containerID", f"{runtime}://{hashlib.sha256(run.encode()).hexdigest()}")
                if "terminated" in state:
                    state["terminated"].setdefault("containerID", container["containerID"])
    return status


class PodWorker:
    """Runs one pod from start to a terminal phase, or terminates it when asked."""

    def __init__(self, kubelet: "Kubelet", pod: dict) -> None:
        self.kubelet = kubelet
        self.pod = pod
        self.pod_dir = kubelet.pods_dir / meta(pod)["uid"]
        self.volumes: dict[str, Path] = {}
        self.read_only_volumes: set[str] = set()
        self.processes: dict[str, ContainerProcess] = {}
        self.runs: dict[str, ContainerRun] = {}  # by container name: what an exec runs beside it (podexec.py)
        self.terminating = False  # the pod was deleted
        self.sidecars_stopping = False  # the regular containers are done
        self.sidecar_names = {c["name"] for c in pod.get("spec", {}).get("initContainers") or [] if is_sidecar(c)}
        self.downward: dict[str, list[dict]] = {}  # downwardAPI volume name -> its items
        self.live_volumes: set[str] = set()
        self.init_statuses: list[dict] = []
        self.sidecar_tasks: list[asyncio.Task] = []  # each native sidecar's keep-running loop
        self.killed = False  # the kubelet is stopping: every container is killed, none starts again
        self.task = asyncio.create_task(self._run(), name=f"pod {meta(pod)['name']}")

    @property
    def api(self) -> ApiClient:
        return self.kubelet.api

    def terminate(self, grace: float) -> None:
        """SIGTERM to every container but the sidecars now (they are stopped once the others have
        exited: see _run), SIGKILL after ``grace`` seconds; start nothing new."""
        if self.terminating:
            return
        self.terminating = True
        for name, process in list(self.processes.items()):
            if name not in self.sidecar_names:
                process.send_signal(signal.SIGTERM)
        asyncio.get_running_loop().call_later(grace, self._kill_all)

    def refresh(self, pod: dict) -> None:
        """The pod changed in the API: rewrite its downwardAPI volumes if what they show changed."""
        if not self.downward or meta(pod).get("uid") != meta(self.pod).get("uid"):
            return
        self.pod = {**self.pod, "metadata": pod.get("metadata", {})}
        for name, items in self.downward.items():
            write_downward_files(self.volumes[name], self.pod, items)

    def _kill_all(self) -> None:
        for process in list(self.processes.values()):
            process.send_signal(signal.SIGKILL)

    async def _kill_for_good(self) -> None:
        """Kill every container and let no sidecar start again (the kubelet stops, or the pod's run
        failed): a sidecar's loop restarted it after the kill, and the new container outlived local mode
        (hostile7 L1: SIGTERM of `local run --serve` left a Continuous job's ckpt-live running). Waits for
        the sidecar loops to end, so nothing is left running when this returns."""
        self.killed = self.sidecars_stopping = True
        self._kill_all()
        if self.sidecar_tasks:
            await asyncio.wait(self.sidecar_tasks, timeout=KILL_WAIT_SECONDS)

    async def _run(self) -> None:
        try:
            await self._add_finalizer()
            await self._prepare_volumes()
            spec = self.pod.get("spec", {})
            start = {"startTime": now_rfc3339(), "hostIP": "127.0.0.1", "podIP": "127.0.0.1"}
            init_containers = spec.get("initContainers") or []
            if init_containers:
                await self._patch_status({"phase": "Pending", **start})
            sidecars: list[asyncio.Task] = []
            for container in init_containers:
                if self.terminating:
                    break
                if is_sidecar(container):
                    sidecars.append(await self._start_sidecar(container))
                    continue
                status = await self._run_to_end(container)
                self.init_statuses.append(status)
                if status["state"].get("terminated", {}).get("exitCode") != 0:
                    await self._stop_sidecars(sidecars)
                    await self._finish("Failed", init=True, failed_start=status)
                    return
            containers = spec.get("containers") or []
            if self.terminating:
                await self._stop_sidecars(sidecars)
                await self._finish("Failed", statuses=[waiting_status(c, "PodInitializing") for c in containers])
                return
            # Running once every container's process runs (or could not start), as a kubelet reports
            # it: an exec or a log read that follows "Running" finds the container there.
            started = [asyncio.Event() for _ in containers]
            runs = [asyncio.ensure_future(self._run_to_end(c, on_start=e.set)) for c, e in zip(containers, started)]
            try:
                await asyncio.wait([asyncio.ensure_future(_either(e, r)) for e, r in zip(started, runs)])
                await self._patch_status({"phase": "Running", **start, "initContainerStatuses": self._init_report(),
                                          "containerStatuses": [running_status(c) for c in containers]})
            except BaseException:
                for run in runs:
                    run.cancel()
                raise
            statuses = await asyncio.gather(*runs)
            await self._stop_sidecars(sidecars)
            succeeded = all(s["state"].get("terminated", {}).get("exitCode") == 0 for s in statuses)
            await self._finish("Succeeded" if succeeded else "Failed", statuses=list(statuses))
        except asyncio.CancelledError:
            await self._kill_for_good()
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the harness fails the pod, visibly
            logger.exception("local kubelet: pod %s failed to run", meta(self.pod)["name"])
            await self._kill_for_good()
            with contextlib.suppress(Exception):
                await self._patch_status({"phase": "Failed", "reason": "KubeletError", "message": str(exc)})
                await self._remove_finalizer()

    def _init_report(self) -> list[dict] | None:
        return list(self.init_statuses) or None

    async def _finish(self, phase: str, *, statuses: list[dict] | None = None, init: bool = False,
                      failed_start: dict | None = None) -> None:
        status: dict[str, Any] = {"phase": phase, "initContainerStatuses": self._init_report()}
        if statuses is not None:
            status["containerStatuses"] = statuses
        waiting = [s for s in [*(statuses or []), *([failed_start] if failed_start else [])]
                   if s["state"].get("waiting")]
        if waiting:  # a container that could not even be created: say why on the pod
            status["reason"] = waiting[0]["state"]["waiting"]["reason"]
            status["message"] = waiting[0]["state"]["waiting"].get("message", "")
        elif self.terminating:
            status["reason"], status["message"] = "Terminated", "the pod was deleted"
        await self._patch_status(status)
        await self._remove_finalizer()

    # -- containers -------------------------------------------------------------------------------

    async def _run_to_end(self, container: dict, restarts: int = 0,
                          on_start: Callable[[], None] | None = None) -> dict[str, Any]:
        """Run one container to its end; its status (terminated, or waiting when it could not start).
        `on_start`: called once its process runs."""
        if self.terminating:
            return waiting_status(container, "PodInitializing")
        run = await self._container_run(container)
        self.runs[container["name"]] = run
        started = now_rfc3339()
        runner = self.kubelet.container_runner
        if runner is not None:
            command = await host_command_for(run, self.kubelet.workdir)
            mounts = {m.path: str(m.source) for m in run.mounts}
            if on_start is not None and not is_sidecar(container):
                # A stand-in plays the container from here on (or hands it to the runtime at once).
                # A sidecar counts as started only once its process runs: the containers after it
                # wait for that, and a sidecar whose process came after the others had ended
                # would miss its SIGTERM and be killed at the end of the grace period.
                on_start()
            played = await runner(self.pod, container, command.env, mounts)
            if isinstance(played, tuple):  # (exit code, reason): e.g. (137, "OOMKilled")
                return terminated_status(container, played[0], started, restarts, reason=played[1])
            if played is not None:
                return terminated_status(container, played, started, restarts)
        try:
            process = await self.kubelet.runtime.start(run)
        except StartError as exc:
            await self._write_log(container, f"local kubelet: {exc.message}\n")
            return waiting_status(container, exc.reason, exc.message)
        self.processes[container["name"]] = process
        if self.killed:  # started while everything was being killed
            process.send_signal(signal.SIGKILL)
        if on_start is not None:
            on_start()
        if self.terminating and container["name"] not in self.sidecar_names:  # deleted while it was being created
            process.send_signal(signal.SIGTERM)
        if self.sidecars_stopping and is_sidecar(container):  # the others ended while it was being created
            process.send_signal(signal.SIGTERM)
        follower = None
        if is_sidecar(container) and isinstance(process, HostProcess):  # its output is followed as it runs
            follower = LogFollower(self, container)
            process.on_stdout = follower.feed
        try:
            exit_code, log = await process.wait()
        finally:
            self.processes.pop(container["name"], None)
        if follower is not None:
            await follower.close()  # its lines are in the log already, stamped as they came: only the rest
            if follower.pending:
                await self._write_log(container, follower.pending.decode(errors="replace"), append=True)
        else:
            await self._write_log(container, log)
        status = terminated_status(container, exit_code, started, restarts)
        message = self._termination_message(container)
        if message:
            status["state"]["terminated"]["message"] = message
        return status

    async def _start_sidecar(self, container: dict) -> asyncio.Task:
        """Start a native sidecar and keep it running (restarted with a backoff) until stopped."""
        index = len(self.init_statuses)
        self.init_statuses.append(running_status(container))
        started = asyncio.Event()

        async def keep_running() -> None:
            restarts = 0
            try:
                while not (self.terminating or self.sidecars_stopping):
                    status = await self._run_to_end(container, restarts, on_start=started.set)
                    started.set()  # it ran (or could not start): the next container goes on either way
                    self.init_statuses[index] = status
                    if self.terminating or self.sidecars_stopping or status["state"].get("waiting"):
                        return
                    await asyncio.sleep(SIDECAR_RESTART_DELAYS[min(restarts, len(SIDECAR_RESTART_DELAYS) - 1)])
                    restarts += 1
                    self.init_statuses[index] = running_status(container, restarts)
            finally:
                started.set()

        task = asyncio.create_task(keep_running(), name=f"sidecar {container['name']}")
        self.sidecar_tasks.append(task)
        # As the kubelet orders it: the next container starts once the sidecar's process runs
        # (a sidecar without a startupProbe is "started" then).
        await started.wait()
        return task

    async def _stop_sidecars(self, sidecars: list[asyncio.Task]) -> None:
        if not sidecars:
            return
        self.sidecars_stopping = True  # nothing restarts from here
        specs = [c for c in self.pod.get("spec", {}).get("initContainers") or [] if is_sidecar(c)]
        for container in reversed(specs):  # the last started stops first
            if container["name"] in self.processes:
                self.processes[container["name"]].send_signal(signal.SIGTERM)
        kill = asyncio.get_running_loop().call_later(grace_seconds(self.pod), self._kill_all)
        await asyncio.gather(*sidecars, return_exceptions=True)
        kill.cancel()

    def _termination_message_file(self, container: dict) -> Path | None:
        """The host file behind a container's terminationMessagePath (only when its spec names one: the
        process runtime mounts nothing the container did not ask for), emptied for this run."""
        if not container.get("terminationMessagePath"):
            return None
        path = self.pod_dir / "termination" / container["name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return path

    def _termination_message(self, container: dict) -> str:
        """What the container wrote there: at most 4,096 bytes, as the kubelet keeps."""
        path = self.pod_dir / "termination" / container["name"]
        if not container.get("terminationMessagePath") or not path.is_file():
            return ""
        with open(path, "rb") as fh:
            return fh.read(TERMINATION_MESSAGE_LIMIT).decode("utf-8", "replace")

    async def _container_run(self, container: dict) -> ContainerRun:
        env = await self._container_env(container)
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        mounts = []
        for mount in container.get("volumeMounts") or []:
            source = self.volumes[mount["name"]]
            if mount.get("subPath"):
                source = source / mount["subPath"]
                if not source.exists():
                    fstree.make_dirs(str(source))  # as the kubelet does for a missing subPath
            read_only = bool(mount.get("readOnly")) or mount["name"] in self.read_only_volumes
            mounts.append(Mount(normalise_mount_path(mount["mountPath"]), source, read_only,
                                live=mount["name"] in self.live_volumes))
        message = self._termination_message_file(container)
        if message is not None:
            mounts.append(Mount(normalise_mount_path(container["terminationMessagePath"]), message, False))
        return ContainerRun(pod=self.pod, container=container, argv=argv, env=env, mounts=mounts,
                            pod_dir=self.pod_dir, security=Security.of(self.pod, container))

    # -- volumes and env --------------------------------------------------------------------------

    async def _prepare_volumes(self) -> None:
        namespace = meta(self.pod)["namespace"]
        claims = {item.volume: item.claim for item in pod_claims(self.pod)}
        for volume in self.pod.get("spec", {}).get("volumes") or []:
            name = volume["name"]
            if volume.get("persistentVolumeClaim") or volume.get("ephemeral"):
                claim = claims[name]
                directory = self.kubelet.claim_dir(namespace, claim)
                if directory is None:  # bound when the pod started; released since
                    raise RuntimeError(f"volume {name}: PersistentVolumeClaim {claim} is not bound")
                self.volumes[name] = directory
                if (volume.get("persistentVolumeClaim") or {}).get("readOnly"):
                    self.read_only_volumes.add(name)
            elif volume.get("hostPath"):
                self.volumes[name] = Path(volume["hostPath"]["path"])
            elif volume.get("downwardAPI"):
                directory = self.pod_dir / "volumes" / name
                directory.mkdir(parents=True, exist_ok=True)
                self.volumes[name] = directory
                self.read_only_volumes.add(name)
                self.live_volumes.add(name)
                self.downward[name] = volume["downwardAPI"].get("items") or []
                write_downward_files(directory, self.pod, self.downward[name])
            else:
                directory = self.pod_dir / "volumes" / name
                directory.mkdir(parents=True, exist_ok=True)
                directory.chmod(0o777)  # as a kubelet makes an emptyDir: any container user may write
                self.volumes[name] = directory
                if any(volume.get(kind) for kind in READ_ONLY_VOLUME_KINDS):
                    self.read_only_volumes.add(name)
                if volume.get("secret"):
                    await self._write_keys(directory, "v1/secrets", namespace, volume["secret"].get("secretName"))
                elif volume.get("configMap"):
                    await self._write_keys(directory, "v1/configmaps", namespace, volume["configMap"].get("name"))

    async def _write_keys(self, directory: Path, resource: str, namespace: str, name: str | None) -> None:
        obj = await self.api.get(resource, namespace, name) if name else None
        for key, value in decoded_data(obj or {}).items():
            (directory / key).write_bytes(value)

    async def _container_env(self, container: dict) -> dict[str, str]:
        # As a container runtime sets it: the pod's hostname (spec.hostname: an Indexed Job's <job>-<index>).
        env = {"HOSTNAME": self.pod.get("spec", {}).get("hostname") or meta(self.pod)["name"]}
        namespace = meta(self.pod)["namespace"]
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef") or source.get("configMapRef") or {}
            resource = "v1/secrets" if source.get("secretRef") else "v1/configmaps"
            obj = await self.api.get(resource, namespace, ref.get("name") or "") or {}
            env.update({source.get("prefix", "") + k: v.decode() for k, v in decoded_data(obj).items()})
        for var in container.get("env") or []:
            value = await self._env_value(var)
            if value is not None:
                env[var["name"]] = expand_variables(value, env)
        return env

    async def _env_value(self, var: Mapping[str, Any]) -> str | None:
        if "valueFrom" not in var:
            return var.get("value", "")
        source = var["valueFrom"]
        if "fieldRef" in source:
            return pod_field(self.pod, source["fieldRef"]["fieldPath"])
        for ref_name, resource in (("secretKeyRef", "v1/secrets"), ("configMapKeyRef", "v1/configmaps")):
            if ref_name in source:
                ref = source[ref_name]
                obj = await self.api.get(resource, meta(self.pod)["namespace"], ref["name"]) or {}
                value = decoded_data(obj).get(ref["key"])
                if value is None and not ref.get("optional"):
                    raise RuntimeError(f"{resource} {ref['name']!r} has no key {ref['key']!r}")
                return value.decode() if value is not None else None
        return None

    # -- API --------------------------------------------------------------------------------------

    async def _write_log(self, container: dict, log: str, append: bool = False) -> None:
        with contextlib.suppress(ApiError):
            await self.api.write_log(meta(self.pod)["namespace"], meta(self.pod)["name"], container["name"], log,
                                     append=append)

    async def _patch_status(self, status: dict) -> None:
        with_runtime_ids(status, meta(self.pod)["uid"], self.kubelet.runtime_name)
        with contextlib.suppress(ApiError):  # a deleted pod has no status to report
            self.kubelet.observe(await self.api.patch(
                "v1/pods", meta(self.pod)["namespace"], meta(self.pod)["name"], {"status": status},
                subresource="status"))

    async def _add_finalizer(self) -> None:
        finalizers = meta(self.pod).get("finalizers") or []
        if LOCAL_KUBELET_FINALIZER not in finalizers:
            self.kubelet.observe(await self.api.patch("v1/pods", meta(self.pod)["namespace"], meta(self.pod)["name"], [
                {"op": "test", "path": "/metadata/uid", "value": meta(self.pod)["uid"]},
                {"op": "add", "path": "/metadata/finalizers", "value": [*finalizers, LOCAL_KUBELET_FINALIZER]}]))

    async def _remove_finalizer(self) -> None:
        await self.kubelet.remove_finalizer(meta(self.pod)["namespace"], meta(self.pod)["name"], meta(self.pod)["uid"])


async def _either(event: asyncio.Event, run: "asyncio.Future[Any]") -> None:
    """Until the container's process runs, or its run is over (it could not start)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([waiter, run], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


def _downward_value(pod: Mapping[str, Any], field_path: str) -> str:
    match = re.fullmatch(r"metadata\.(labels|annotations)", field_path)
    if match:  # as the kubelet formats a map: key="value" lines, sorted, values quoted (Go's %q)
        values = meta(pod).get(match[1]) or {}
        return "".join(f"{k}={json.dumps(str(v), ensure_ascii=False)}\n" for k, v in sorted(values.items()))
    return pod_field(pod, field_path)


def write_downward_files(directory: Path, pod: Mapping[str, Any], items: list[dict]) -> None:
    """Each item's file, replaced atomically and only when its content changed."""
    for item in items:
        field_path = (item.get("fieldRef") or {}).get("fieldPath")
        if not field_path or not item.get("path"):
            continue
        target = directory / item["path"]
        text = _downward_value(pod, field_path)
        if target.exists() and target.read_text() == text:
            continue
        fstree.make_dirs(str(target.parent))
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)


class LogFollower:
    """Appends a running container's output to its log in the API, a batch at a time."""

    def __init__(self, worker: "PodWorker", container: dict) -> None:
        self.worker, self.container = worker, container
        self.pending = b""
        self.task: asyncio.Task | None = None

    def feed(self, data: bytes) -> None:
        self.pending += data
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self.pending:
            cut = self.pending.rfind(b"\n") + 1  # whole lines only: a reader never sees half a JSON line
            if not cut:
                return
            text, self.pending = self.pending[:cut], self.pending[cut:]
            await self.worker._write_log(self.container, text.decode(errors="replace"), append=True)

    async def close(self) -> None:
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task


class Kubelet:
    """Starts a worker per pod it sees pending, terminates deleted ones, cleans up after them."""

    def __init__(self, api: ApiClient, data_dir: Path, claim_dir: Callable[[str, str], Path | None],
                 observe: Callable[[dict], None], *, runtime: Any = None,
                 container_runner: ContainerRunner | None = None, workdir: Path | None = None,
                 node_name: str = "local", attach_blocked: Callable[[dict, str], str | None] | None = None,
                 events: Any = None) -> None:
        """`data_dir`: this node's own directory (its pods' volumes live under ``pods/``).
        `attach_blocked(pod, node)`: why a volume of the pod cannot be attached to this node
        now (the attach/detach controller's multi-attach rule), or None."""
        self.api = api
        self.node_name = node_name
        self.node_dir = data_dir
        self.pods_dir = data_dir / "pods"
        self.claim_dir = claim_dir
        self.attach_blocked = attach_blocked
        self.events = events
        self._attach_waits: dict[str, str] = {}  # pod uid -> the Multi-Attach message it waits on
        self.observe = observe  # hands the API's answers to the pod cache
        self.runtime = runtime if runtime is not None else ProcessRuntime(workdir)
        self.container_runner = container_runner
        self.workdir = workdir  # of host processes without workingDir (default: the pod's own directory)
        self.workers: dict[str, PodWorker] = {}  # pod uid -> worker
        self._finished: set[str] = set()  # uids whose worker ended: never started again

    def reconcile(self, pod: dict | None, uid: str, *, adopt: bool = False) -> Awaitable[None] | None:
        """Act on the current state of one pod (None: it is gone from the API)."""
        worker = self.workers.get(uid)
        if pod is None:
            self.workers.pop(uid, None)
            self._finished.discard(uid)
            self._attach_waits.pop(uid, None)
            if worker is not None:
                worker.task.cancel()  # gone without a graceful deletion: stop at once
                worker.task.add_done_callback(lambda _: remove_tree(self.pods_dir / uid))
            else:
                remove_tree(self.pods_dir / uid)
            return None
        if worker is not None and worker.task.done():
            del self.workers[uid]
            self._finished.add(uid)
            worker = None
        if worker is not None:
            worker.refresh(pod)
        if meta(pod).get("deletionTimestamp"):
            if worker is not None:
                worker.terminate(grace_seconds(pod))
            elif LOCAL_KUBELET_FINALIZER in (meta(pod).get("finalizers") or []):
                return self.remove_finalizer(meta(pod)["namespace"], meta(pod)["name"], uid)
            return None
        if worker is not None or uid in self._finished or pod_phase(pod) in TERMINAL_PHASES:
            return None
        if pod.get("status", {}).get("startTime") or LOCAL_KUBELET_FINALIZER in (meta(pod).get("finalizers") or []):
            if adopt:  # started by an earlier kubelet (an earlier local run): its processes are gone
                return self._node_lost(pod)
            return None
        if (pod.get("spec") or {}).get("nodeName") != self.node_name:
            return None  # not scheduled here (yet)
        if all(self.claim_dir(meta(pod)["namespace"], claim) for claim in claim_names_of_pod(pod)):
            blocked = self.attach_blocked(pod, self.node_name) if self.attach_blocked is not None else None
            if blocked is not None:
                return self._wait_for_attach(pod, blocked)
            self._attach_waits.pop(uid, None)
            self.workers[uid] = PodWorker(self, pod)
            self.workers[uid].task.add_done_callback(lambda _: self._finished.add(uid))
        return None

    def running_pods(self) -> list[dict]:
        """The pods this kubelet has started and whose worker has not ended."""
        return [w.pod for w in self.workers.values() if not w.task.done()]

    async def _wait_for_attach(self, pod: dict, message: str) -> None:
        """A volume is attached to another node: the pod waits in ContainerCreating with the attach/detach
        controller's FailedAttachVolume event (once per message)."""
        uid = meta(pod)["uid"]
        if self._attach_waits.get(uid) == message:
            return
        self._attach_waits[uid] = message
        if self.events is not None:
            await self.events.post(pod, "Warning", "FailedAttachVolume", message)
        spec = pod.get("spec") or {}
        status: dict[str, Any] = {"phase": "Pending", "hostIP": "127.0.0.1", "containerStatuses": [
            waiting_status(c, "PodInitializing" if spec.get("initContainers") else "ContainerCreating")
            for c in spec.get("containers") or []]}
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [waiting_status(c, "PodInitializing") for c in spec["initContainers"]]
        with_runtime_ids(status, uid, self.runtime_name)
        with contextlib.suppress(ApiError):
            self.observe(await self.api.patch("v1/pods", meta(pod)["namespace"], meta(pod)["name"], {"status": status},
                                              subresource="status"))

    @property
    def runtime_name(self) -> str:
        """What containerIDs start with (``process://``, ``podman://``, ``docker://``)."""
        return str(getattr(self.runtime, "name", "process"))

    async def _node_lost(self, pod: dict) -> None:
        self._finished.add(meta(pod)["uid"])
        with contextlib.suppress(ApiError):
            self.observe(await self.api.patch("v1/pods", meta(pod)["namespace"], meta(pod)["name"], {"status": {
                "phase": "Failed", "reason": "NodeLost", "message": "the local kubelet restarted while the pod ran"}},
                subresource="status"))
        await self.remove_finalizer(meta(pod)["namespace"], meta(pod)["name"], meta(pod)["uid"])

    async def remove_finalizer(self, namespace: str, name: str, uid: str) -> None:
        """Drop the kubelet's finalizer (a deleted pod is then removed by the API)."""
        for _ in range(5):
            pod = await self.api.get("v1/pods", namespace, name)
            if pod is None or meta(pod)["uid"] != uid:
                return
            finalizers = meta(pod).get("finalizers") or []
            if LOCAL_KUBELET_FINALIZER not in finalizers:
                return
            try:
                answer = await self.api.patch("v1/pods", namespace, name, [
                    {"op": "test", "path": "/metadata/resourceVersion", "value": meta(pod)["resourceVersion"]},
                    {"op": "replace", "path": "/metadata/finalizers",
                     "value": [f for f in finalizers if f != LOCAL_KUBELET_FINALIZER]}])
                if answer and answer.get("metadata", {}).get("name"):
                    self.observe(answer)
                return
            except ApiError as exc:
                if exc.status == 404:
                    return
                if exc.status not in (409, 422):
                    raise

    async def stop(self) -> None:
        for worker in self.workers.values():
            worker.task.cancel()
        await asyncio.gather(*(w.task for w in self.workers.values()), return_exceptions=True)
        self.workers.clear()
        close = getattr(self.runtime, "close", None)
        if close is not None:
            await close()
