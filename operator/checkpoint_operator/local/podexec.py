"""`pods/exec` for the local cluster: the Kubernetes websocket exec protocol, end to end.

As in a real cluster, the API server does not run anything itself: the emulator's
``GET .../pods/NAME/exec`` checks the pod and the container, finds the node that runs the pod
(``spec.nodeName``, else the only node) and its kubelet's endpoint
(``status.daemonEndpoints.kubeletEndpoint.Port`` at the node's ``InternalIP``), and proxies the
websocket to the kubelet's ``/exec/NAMESPACE/POD/CONTAINER``. The local kubelet's
``ExecServer`` runs the command in the running container's view (the process runtime: the
container's environment and mounts, its paths translated; a container engine: ``podman exec``)
and speaks the channel protocol (``v5.channel.k8s.io``, ``v4.channel.k8s.io``): every message
starts with a channel byte, 0 stdin, 1 stdout, 2 stderr, 3 the final Status (JSON), 4 resize
(ignored: no tty); in v5, ``[255, N]`` closes channel N (stdin: the command sees EOF). Clients:
``kubectl exec``, and the ``kubernetes`` client's ``stream()``.

``LocalCluster`` starts an ``ExecServer`` beside its kubelet and registers the node ``local``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
from multidict import CIMultiDict

from checkpoint_operator.local.podview import PodView
from checkpoint_operator.logic import exec_fence
from checkpoint_operator.local.runtime import HOST_ENV_PASSED, host_command

logger = logging.getLogger(__name__)

V5_PROTOCOL = "v5.channel.k8s.io"
V4_PROTOCOL = "v4.channel.k8s.io"
PROTOCOLS = (V5_PROTOCOL, V4_PROTOCOL)  # the server's preference
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
MAX_MESSAGE = 16 * 1024 * 1024
READ_CHUNK = 256 * 1024
NODE_NAME = "local"
ERROR_HEADER = "X-Local-Kubelet-Error"  # the kubelet's refusal, relayed by the emulator as a Status
KILL_GRACE = 2.0
ALIVE_POLL = 0.5


class ExecError(Exception):
    """An exec that cannot start: `status` is the HTTP status, `message` what a Status says."""

    def __init__(self, status: int, message: str, reason: str = "BadRequest") -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


def status_body(status: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": status}


def exit_status(argv: list[str], code: int) -> dict:
    """What the error channel carries when the command ends (as a real kubelet words it)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: error executing command {argv}, exit code {code}",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def parse_bool(value: str | None) -> bool:
    """Go's strconv.ParseBool, as the API server reads exec's flags."""
    return (value or "").lower() in ("1", "t", "true")


def requested_protocols(headers: Mapping[str, str]) -> list[str]:
    return [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]


# --- the kubelet's side ----------------------------------------------------------------------------

class ExecServer:
    """The local kubelet's exec endpoint on 127.0.0.1 (a free port)."""

    def __init__(self, kubelet: Any) -> None:
        self.kubelet = kubelet
        self.port = 0
        self._runner: aiohttp.web.AppRunner | None = None

    async def start(self) -> int:
        app = aiohttp.web.Application()
        app.router.add_get("/exec/{namespace}/{pod}/{container}", self._exec)
        self._runner = aiohttp.web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _exec(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        namespace, pod, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        argv = request.query.getall("command", [])
        want_stdin = parse_bool(request.query.get("stdin"))
        try:
            if parse_bool(request.query.get("tty")):
                raise ExecError(400, "the local kubelet runs commands without a tty (tty=false)")
            if not argv:
                raise ExecError(400, "you must specify at least one command for the container")
            process, alive = await start_exec(self.kubelet, namespace, pod, container, argv, want_stdin)
        except ExecError as exc:
            return aiohttp.web.json_response(status_body(exc.status, exc.reason, exc.message), status=exc.status,
                                             headers={ERROR_HEADER: exc.message})
        ws = aiohttp.web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        try:
            await _serve_session(ws, process, argv, alive)
        finally:
            _kill(process)
        return ws


async def start_exec(kubelet: Any, namespace: str, pod_name: str, container: str, argv: list[str],
                     want_stdin: bool) -> tuple[asyncio.subprocess.Process, Any]:
    """Start `argv` in the running container; (the process, a callable: is the container still running?)."""
    worker = next((w for w in list(kubelet.workers.values())
                   if w.pod["metadata"]["namespace"] == namespace and w.pod["metadata"]["name"] == pod_name
                   and not w.task.done()), None)
    if worker is None:
        raise ExecError(404, f'pod "{pod_name}" is not running on this node', "NotFound")
    running = worker.processes.get(container)
    run = getattr(worker, "runs", {}).get(container)
    if running is None or run is None:
        raise ExecError(400, f'container "{container}" in pod "{pod_name}" is not running')

    def alive() -> bool:
        return worker.processes.get(container) is running and not worker.task.done()

    engine_name = getattr(running, "container_name", None)
    stdin = asyncio.subprocess.PIPE if want_stdin else asyncio.subprocess.DEVNULL
    try:
        if engine_name is not None:  # a container of its image: the engine runs the command in it
            engine = running.runtime.engine
            command = engine.command("exec", *(["--interactive"] if want_stdin else []), engine_name, *argv)
            process = await asyncio.create_subprocess_exec(*command, env=engine.env, stdin=stdin,
                                                           stdout=asyncio.subprocess.PIPE,
                                                           stderr=asyncio.subprocess.PIPE, start_new_session=True)
        else:
            view = PodView(run.pod_dir / "views" / run.name, run.mounts)  # laid out when the container started
            env = {key: os.environ[key] for key in HOST_ENV_PASSED if key in os.environ}
            env.update({key: view.translate(value) for key, value in run.env.items()})
            translated = [view.translate(arg) for arg in argv]
            cwd = Path(view.translate(run.working_dir)) if run.working_dir else \
                (kubelet.workdir or run.pod_dir)
            process = await asyncio.create_subprocess_exec(
                *host_command(translated), env=env, cwd=str(cwd), stdin=stdin, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise ExecError(500, f"cannot run {argv[0]!r} in container {container!r}: {exc.strerror or exc}",
                        "InternalError") from None
    return process, alive


async def _serve_session(ws: aiohttp.web.WebSocketResponse, process: asyncio.subprocess.Process, argv: list[str],
                         alive: Any) -> None:
    """Pump the channels until the command ends (its Status on channel 3), the client goes away,
    or the container stops (the command is killed with it, as in a pod)."""
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    if stdout is None or stderr is None:  # started with PIPEs: said for the type checker
        raise RuntimeError("exec: the command was started without its output pipes")

    async def client_to_stdin() -> None:
        stdin_open = stdin is not None
        async for msg in ws:
            if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                continue
            data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            if not data:
                continue
            channel, payload = data[0], data[1:]
            if channel == STDIN and stdin_open and stdin is not None and payload:
                try:
                    stdin.write(payload)
                    await stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    stdin_open = False  # the command closed its stdin: the rest is dropped, as a pipe does
            elif channel == CLOSE and payload[:1] == bytes([STDIN]) and stdin_open and stdin is not None:
                stdin_open = False
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    stdin.close()

    async def output_to_client(stream: asyncio.StreamReader, channel: int) -> None:
        while chunk := await stream.read(READ_CHUNK):
            await ws.send_bytes(bytes([channel]) + chunk)

    async def container_stopped() -> None:
        while alive():
            await asyncio.sleep(ALIVE_POLL)

    reader = asyncio.create_task(client_to_stdin())
    outputs = asyncio.gather(output_to_client(stdout, STDOUT), output_to_client(stderr, STDERR))
    exited = asyncio.create_task(process.wait())
    stopped = asyncio.create_task(container_stopped())
    try:
        await asyncio.wait({reader, exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            await _terminate(process, exited)
        _signal(process, signal.SIGKILL)  # what it left running would hold its output open: it ends with it
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            await outputs
            await ws.send_bytes(bytes([ERROR]) + json.dumps(exit_status(argv, _exit_code(process))).encode())
    finally:
        for task in (reader, stopped):
            task.cancel()
        outputs.cancel()
        await ws.close()


async def _terminate(process: asyncio.subprocess.Process, exited: asyncio.Task) -> None:
    _signal(process, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(exited), KILL_GRACE)
    except asyncio.TimeoutError:
        _kill(process)
        await exited


def _signal(process: asyncio.subprocess.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        _signal(process, signal.SIGKILL)


def _exit_code(process: asyncio.subprocess.Process) -> int:
    code = process.returncode or 0
    return 128 - code if code < 0 else code


async def register_node(api: Any, port: int, name: str = NODE_NAME, labels: dict | None = None) -> None:
    """The node of a local kubelet, with its exec endpoint (what the emulator proxies to)."""
    labels = labels or {"kubernetes.io/hostname": name}
    body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
    if await api.get("v1/nodes", None, name) is None:
        await api.create("v1/nodes", None, body)
    else:
        await api.patch("v1/nodes", None, name, {"metadata": {"labels": labels}})
    await api.patch("v1/nodes", None, name, {"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}, subresource="status")


# --- the API server's side (the emulator) --------------------------------------------------------------

async def proxy_exec(emulator: Any, request: Any) -> aiohttp.web.StreamResponse:
    """``GET .../pods/NAME/exec`` on the emulator: check, then proxy the websocket to the kubelet."""
    raw = request._raw_request  # kmock keeps the aiohttp request: the upgrade needs it
    try:
        _admit(request.name, raw.query.getall("command", []), raw.query.get("container", ""))
        pod, container = _exec_target(emulator, request)
        if raw.headers.get("Upgrade", "").lower() != "websocket":
            raise ExecError(400, "Upgrade request required: exec speaks the websocket protocol "
                                 f"({', '.join(PROTOCOLS)})")
        url = _kubelet_url(emulator, pod, container)
    except ExecError as exc:
        return aiohttp.web.json_response(status_body(exc.status, exc.reason, exc.message), status=exc.status)
    query = [(k, v) for k, v in raw.query.items() if k != "container"]
    async with aiohttp.ClientSession() as session:
        try:
            upstream = await session.ws_connect(url, params=query, protocols=requested_protocols(raw.headers),
                                                max_msg_size=MAX_MESSAGE)
        except aiohttp.WSServerHandshakeError as exc:
            message = CIMultiDict(exc.headers or ()).get(ERROR_HEADER) or f"the kubelet refused the exec ({exc.status})"
            reason = "NotFound" if exc.status == 404 else "BadRequest"
            return aiohttp.web.json_response(status_body(exc.status, reason, message), status=exc.status)
        except aiohttp.ClientError as exc:
            return aiohttp.web.json_response(status_body(502, "ServiceUnavailable", f"error dialing backend: {exc}"),
                                             status=502)
        async with upstream:
            ws = aiohttp.web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (),
                                               max_msg_size=MAX_MESSAGE)
            await ws.prepare(raw)
            await _relay(ws, upstream)
    return ws


def _admit(pod_name: str, command: list[str], container: str) -> None:
    """The chart's exec fence, on by default (logic/exec_fence.py): admission runs before the pod is
    looked up, as for a real CONNECT (whose PodExecOptions names the container as the request did)."""
    why = exec_fence.refusal(pod_name, "exec", command, container)
    if why is not None:
        raise ExecError(403, f"ValidatingAdmissionPolicy '{exec_fence.POLICY_NAME}' with binding "
                             f"'{exec_fence.POLICY_NAME}' denied request: {why}", "Forbidden")


def _exec_target(emulator: Any, request: Any) -> tuple[dict, str]:
    pod = emulator.get_object("v1/pods", request.namespace, request.name)
    if pod is None:
        raise ExecError(404, f'pods "{request.name}" not found', "NotFound")
    spec = pod.get("spec", {})
    names = [c["name"] for c in spec.get("containers") or []]
    container = request.params.get("container")
    if not container:
        if len(names) != 1:
            raise ExecError(400, f"a container name must be specified for pod {request.name}, choose one of: {names}")
        container = names[0]
    if container not in names + [c["name"] for c in spec.get("initContainers") or []]:
        raise ExecError(400, f"container {container} is not valid for pod {request.name}")
    phase = pod.get("status", {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        raise ExecError(400, f"cannot exec into a container in a completed pod; current phase is {phase}")
    return pod, container


def _kubelet_url(emulator: Any, pod: dict, container: str) -> str:
    node_name = pod.get("spec", {}).get("nodeName")
    nodes = emulator.nodes()
    node = next((n for n in nodes if n["metadata"]["name"] == node_name), None) if node_name else \
        (nodes[0] if len(nodes) == 1 else None)
    status = (node or {}).get("status", {})
    port = status.get("daemonEndpoints", {}).get("kubeletEndpoint", {}).get("Port")
    address = next((a["address"] for a in status.get("addresses") or [] if a.get("type") == "InternalIP"), None)
    if not (port and address):
        raise ExecError(400, f'pod "{pod["metadata"]["name"]}" does not have a host assigned (no node with a kubelet '
                             f'endpoint runs it)')
    meta = pod["metadata"]
    return f"http://{address}:{port}/exec/{meta['namespace']}/{meta['name']}/{container}"


async def _relay(client: aiohttp.web.WebSocketResponse, kubelet: aiohttp.ClientWebSocketResponse) -> None:
    async def pump(source: Any, target: Any) -> None:
        async for msg in source:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await target.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await target.send_str(msg.data)

    up = asyncio.create_task(pump(client, kubelet))
    down = asyncio.create_task(pump(kubelet, client))
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down.done():  # the command ended: everything it said has been relayed
            await client.close()
        else:  # the client went away: so does the command
            await kubelet.close()
            await asyncio.wait({down}, timeout=KILL_GRACE + 1)
    finally:
        for task in (up, down):
            task.cancel()
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            await client.close()
