"""The plugin's connection to a cluster: the kubeconfig (kubectl's rules: --kubeconfig, else
$KUBECONFIG, else ~/.kube/config; --context; the context's namespace unless -n), API calls
whose failures become one line naming the object, and exec sessions over the websocket
channel protocol (v5.channel.k8s.io, so stdin can be closed; v4 works for what needs no EOF).
"""

from __future__ import annotations

import json
import os
import select
import time
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, Callable, Optional

import kubernetes
import urllib3
import yaml

from checkpoint_operator.agent.errors import one_line, yaml_problem
from checkpoint_operator.api.rules import is_dns1123
from checkpoint_operator.kube import CHECKPOINTS, PODS, ApiError, Kube, Resource

STDIN, STDOUT, STDERR, ERROR, CLOSE = 0, 1, 2, 3, 255
SEND_CHUNK = 256 * 1024
STDERR_KEPT = 64 * 1024
POLL = 0.5
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class PluginError(Exception):
    """A failure the user sees as one line (exit code 1)."""


def check_name(kind: str, name: str) -> str:
    if not is_dns1123(name):
        raise PluginError(f"{kind} name {name!r} is not valid: it must be a lowercase DNS-1123 name (a-z, 0-9, '-' "
                          f"and '.', starting and ending with a letter or digit, at most 253 characters)")
    return name


@dataclass
class Cluster:
    api_client: kubernetes.client.ApiClient
    namespace: str
    server: str

    @property
    def api(self) -> Kube:
        return Kube(self.api_client)

    def call(self, what: str, fn: Callable[[], Any], served: str = "checkpoints.ckpt.dev") -> Any:
        """Run one API call; its failure becomes a PluginError naming `what` (`served`: the resource a 404
        without an object says is missing)."""
        try:
            return fn()
        except ApiError as exc:
            if exc.status == 404 and "the server could not find the requested resource" in exc.message.lower():
                raise PluginError(f"{what}: the API server at {self.server} does not serve {served}: "
                                  f"install the CRDs (kubectl apply -f crds/)") from None
            raise PluginError(f"{what}: {exc.status} {exc.reason}: {exc.message}".replace(":  ", ": ")) from None
        except kubernetes.client.ApiException as exc:
            try:
                message = json.loads(exc.body or "{}").get("message") or exc.reason
            except ValueError:
                message = exc.reason
            raise PluginError(f"{what}: {exc.status}: {message}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise PluginError(f"{what}: cannot reach the API server at {self.server} ({_root_cause(exc)})") from None

    def each(self, what: str, resource: Resource, namespace: Optional[str], label_selector: Optional[str] = None,
             served: str = "checkpoints.ckpt.dev") -> Iterator[dict[str, Any]]:
        """The objects of a LIST, read page by page (Kube.pages): a caller that keeps only what it shows
        of each holds one page at a time, whatever the size of the collection. Failures as `call`."""
        pages = self.api.pages(resource, namespace, label_selector)
        while True:
            page = self.call(what, lambda: next(pages, None), served)
            if page is None:
                return
            yield from page

    def get_checkpoint(self, name: str) -> dict:
        check_name("Checkpoint", name)
        body = self.call(f"get Checkpoint {name}", lambda: self.api.get(CHECKPOINTS, self.namespace, name))
        if body is None:
            self.check_namespace()
            raise PluginError(f'Checkpoint "{name}" not found in namespace {self.namespace}')
        return body

    def check_namespace(self) -> None:
        """A namespace that does not exist is an error (a LIST there answers an empty list)."""
        check_name("namespace", self.namespace)
        try:
            kubernetes.client.CoreV1Api(self.api_client).read_namespace(self.namespace, _request_timeout=30)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                raise PluginError(f"namespace {self.namespace!r} not found") from None
            # 403: the user may not read namespaces; the request itself will tell
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise PluginError(f"cannot reach the API server at {self.server} ({_root_cause(exc)})") from None

    def get_pod(self, name: str) -> Optional[dict]:
        return self.call(f"get pod {name}", lambda: self.api.get(PODS, self.namespace, name))

    def annotate(self, name: str, annotations: dict) -> dict:
        return self.call(f"annotate Checkpoint {name}", lambda: self.api.patch(
            CHECKPOINTS, self.namespace, name, {"metadata": {"annotations": annotations}}))

    def exec(self, pod: str, container: str, command: list[str], *, stdin: bool) -> "ExecSession":
        return ExecSession(self, pod, container, command, stdin=stdin)


def _root_cause(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc).split(": ", 1)[-1][:200]


def connect(kubeconfig: Optional[str] = None, context: Optional[str] = None,
            namespace: Optional[str] = None) -> Cluster:
    """A client for the cluster of the kubeconfig (as kubectl finds it), or in-cluster config
    when there is no kubeconfig and the plugin runs in a pod."""
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    in_cluster = not kubeconfig and not os.path.exists(path.split(os.pathsep)[0]) and \
        os.environ.get("KUBERNETES_SERVICE_HOST")
    try:
        if in_cluster:
            config = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=config)
            api_client = kubernetes.client.ApiClient(config)
            with open(IN_CLUSTER_NAMESPACE) as f:
                default_namespace = f.read().strip()
        else:
            api_client = kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context,
                                                                  persist_config=False)
            contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
            chosen = next((c for c in contexts if c["name"] == context), active) if context else active
            default_namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    except yaml.YAMLError as exc:
        raise PluginError(f"cannot load the kubeconfig {kubeconfig or path}: {yaml_problem(exc)}") from None
    except (TypeError, AttributeError):  # YAML, but not a mapping: the client digs into it without checking
        raise PluginError(f"cannot load the kubeconfig {kubeconfig or path}: not a kubeconfig (a YAML mapping with "
                          "clusters, contexts and users)") from None
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        raise PluginError(f"cannot load the kubeconfig {kubeconfig or path}: {one_line(str(exc))}") from None
    cluster = Cluster(api_client, namespace or default_namespace, api_client.configuration.host)
    check_name("namespace", cluster.namespace)
    return cluster


class ExecSession:
    """One `pods/exec` websocket: stdin in, stdout as a byte stream, stderr kept (its end), and
    the command's exit code from the Status on the error channel."""

    def __init__(self, cluster: Cluster, pod: str, container: str, command: list[str], *, stdin: bool) -> None:
        from kubernetes.stream import ws_client
        from websocket import WebSocketBadStatusException
        self.pod = pod
        query = [("command", c) for c in command] + [
            ("container", container), ("stdin", "true" if stdin else "false"), ("stdout", "true"),
            ("stderr", "true"), ("tty", "false")]
        api = cluster.api_client
        _, url, headers, _, _ = api.param_serialize(
            method="GET", resource_path=f"/api/v1/namespaces/{cluster.namespace}/pods/{pod}/exec",
            query_params=query, header_params={}, auth_settings=["BearerToken"])
        try:
            self.sock = ws_client.create_websocket(api.configuration, ws_client.get_websocket_url(url), headers)
        except WebSocketBadStatusException as exc:
            raise PluginError(f"exec in pod {pod}: {_status_message(exc)}") from None
        except (OSError, Exception) as exc:  # noqa: BLE001 - websocket-client raises its own types
            raise PluginError(f"exec in pod {pod}: cannot connect to {cluster.server} ({exc})") from None
        self.protocol = getattr(self.sock, "subprotocol", None) or ""
        self.stderr = b""
        self.status: Optional[dict] = None
        self.closed = False
        self._stdout = bytearray()

    # --- stdin ---
    def write(self, data: bytes) -> int:
        view = memoryview(data)
        for start in range(0, len(view), SEND_CHUNK):
            self._send(bytes([STDIN]) + bytes(view[start:start + SEND_CHUNK]))
        self._drain_incoming()
        return len(view)

    def close_stdin(self) -> None:
        if self.protocol == "v5.channel.k8s.io":
            self._send(bytes([CLOSE, STDIN]))

    def _send(self, frame: bytes) -> None:
        from websocket import WebSocketConnectionClosedException
        if self.closed:
            raise BrokenPipeError(f"pod {self.pod}: the command ended")
        try:
            self.sock.send_binary(frame)
        except (WebSocketConnectionClosedException, OSError):
            self._read_until_closed()
            raise BrokenPipeError(f"pod {self.pod}: the command ended") from None

    def _drain_incoming(self) -> None:
        """Take what the command said meanwhile, so that it never blocks writing to us."""
        while not self.closed and select.select([self.sock.sock], [], [], 0)[0]:
            self._receive_one()

    # --- stdout ---
    def read(self, n: int = -1) -> bytes:
        while not self.closed and (n < 0 or len(self._stdout) < n):
            self._receive_one()
        if n < 0 or n >= len(self._stdout):
            data, self._stdout = bytes(self._stdout), bytearray()
        else:
            data, self._stdout = bytes(self._stdout[:n]), self._stdout[n:]
        return data

    def _receive_one(self) -> None:
        from websocket import ABNF, WebSocketConnectionClosedException
        try:
            opcode, frame = self.sock.recv_data_frame(True)
        except (WebSocketConnectionClosedException, OSError):
            self.closed = True
            return
        if opcode == ABNF.OPCODE_CLOSE:
            self.closed = True
            return
        data = frame.data if isinstance(frame.data, bytes) else frame.data.encode()
        if not data:
            return
        channel, payload = data[0], data[1:]
        if channel == STDOUT:
            self._stdout += payload
        elif channel == STDERR:
            self.stderr = (self.stderr + payload)[-STDERR_KEPT:]
        elif channel == ERROR:
            try:
                self.status = json.loads(payload)
            except (ValueError, RecursionError):
                self.status = {"status": "Failure", "message": payload.decode(errors="replace")}

    def _read_until_closed(self) -> None:
        while not self.closed:
            self._receive_one()

    def finish(self, timeout: float = 60) -> int:
        """Wait for the command's end; its exit code (stdout not read by then is discarded)."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            if select.select([self.sock.sock], [], [], POLL)[0]:
                self._receive_one()
                self._stdout.clear()
        self.close()
        return self.exit_code

    @property
    def exit_code(self) -> int:
        status = self.status or {}
        if status.get("status") == "Success":
            return 0
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                try:
                    return int(cause.get("message"))
                except (TypeError, ValueError):
                    pass
        return 1

    def last_error(self) -> str:
        """The command's own last `error:` line (the agent's way to fail), else the Status."""
        lines = [line.strip() for line in self.stderr.decode(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        if errors or lines:
            return (errors or lines)[-1]
        return (self.status or {}).get("message") or "the connection ended without a result"

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except Exception:  # noqa: BLE001 - closing a broken socket
            pass


def _status_message(exc: Any) -> str:
    body = getattr(exc, "resp_body", None)
    try:
        payload = json.loads(body) if body else {}
        message = payload.get("message")
    except (ValueError, AttributeError):
        message = None
    return f"{getattr(exc, 'status_code', '?')}: {message or exc}"
