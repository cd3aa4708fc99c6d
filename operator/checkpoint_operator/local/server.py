"""Run the emulated API and the kopf operator outside pytest, each in its own thread and event loop.

Used by local mode (``checkpoint-operator local run``) and by the integration-test fixtures.

kmock's pytest plugin starts its emulator as ``async with Emulator() as kmock, kmock.Server(kmock)``.
``EmulatorServer`` does the same first half (entering the handler, which starts kmock's background
machinery and makes it answer errors as Kubernetes Status objects) but serves it with aiohttp's own
``ServerRunner`` instead of ``kmock.Server``: that one also installs a process-wide interceptor of
aiohttp's DNS resolver, which is not needed for a client given a plain ``http://127.0.0.1:PORT``
URL and raises when two servers in different threads stop out of order.

kopf runs in its own thread and loop: ``kopf.operator()`` cancels every other task of its loop when
it exits, and in pytest-asyncio's loop it hangs at teardown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import logging
import os
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web

from checkpoint_operator.local.emulator import Emulator

logger = logging.getLogger(__name__)

T = TypeVar("T")

STATE_FILE_NAME = "api-objects.jsonl"  # JSON Lines: a header, then one object per line
OLD_STATE_FILE_NAME = "api-objects.json"  # format 1 (one JSON document), still read
SAVE_INTERVAL = 0.5  # seconds between saves of a changed state in local mode, at least
SAVE_SHARE = 0.05  # and at most this share of the time is spent saving (a large state is saved less often)
LOG_PIECE = 256 * 1024  # characters of a log per PUT (at most 4 bytes each: under the 1 MiB body limit)


class EmulatorServer:
    """The emulator served over HTTP on 127.0.0.1 (a free port unless ``port`` is given).

    ``state_dir``: when given, objects are loaded from ``<state_dir>/api-objects.jsonl`` at start and
    saved there (atomically) shortly after every change and at stop, so the next local run sees them.
    """

    def __init__(self, emulator: Emulator | None = None, *, state_dir: str | os.PathLike | None = None,
                 port: int = 0) -> None:
        self.emulator = emulator if emulator is not None else Emulator()
        self.state_file = Path(state_dir) / STATE_FILE_NAME if state_dir is not None else None
        self._port = port
        self._url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._dirty = False

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self._url is None:
            raise RuntimeError("the emulator server is not running")
        return self._url

    def start(self, timeout: float = 10) -> str:
        """Start serving in a daemon thread; return the base URL."""
        if self._thread is not None:
            raise RuntimeError("the emulator server can be started only once")
        if self.state_file is not None:
            for path in (self.state_file, self.state_file.with_name(OLD_STATE_FILE_NAME)):
                if path.exists():
                    with path.open("rb") as lines:
                        self.emulator.read_state(lines)
                    break
        if self.state_file is not None:
            self.emulator.on_change = self._mark_dirty
        self._thread = threading.Thread(target=self._thread_main, name="k8s-emulator", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the emulator server did not start: {self._error!r}")
        return self.url

    def stop(self, timeout: float = 10) -> None:
        """Stop serving (open watch streams are cut), save the state, join the thread."""
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the emulator server did not stop in time")
        self._thread = None

    def call(self, fn: Callable[[], T], timeout: float = 10) -> T:
        """Run ``fn()`` in the server's event loop (the safe way to read or change emulator state)."""
        assert self._loop is not None
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def __enter__(self) -> "EmulatorServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- in the server thread ---------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            logger.exception("the emulated Kubernetes API failed")
        finally:
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with self.emulator:
            runner = aiohttp.web.ServerRunner(
                aiohttp.web.Server(self.emulator, handler_cancellation=True), shutdown_timeout=0.5)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", self._port)
            await site.start()
            host, port = runner.addresses[0][:2]
            self._url = f"http://{host}:{port}"
            saver = asyncio.create_task(self._save_changes())
            self._started.set()
            try:
                await self._stopping.wait()
            finally:
                saver.cancel()
                await runner.cleanup()
                self._save_state()

    def _mark_dirty(self) -> None:
        self._dirty = True

    async def _save_changes(self) -> None:
        """Save a changed state, every SAVE_INTERVAL or less often: saving takes at most SAVE_SHARE of the time."""
        pause = SAVE_INTERVAL
        while True:
            await asyncio.sleep(pause)
            if self._dirty:
                started = time.monotonic()
                self._save_state()
                pause = max(SAVE_INTERVAL, (time.monotonic() - started) / SAVE_SHARE)

    def _save_state(self) -> None:
        if self.state_file is None:
            return
        self._dirty = False
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_suffix(".jsonl.partial")
        with partial.open("wb") as out:
            out.writelines(self.emulator.state_lines())
        partial.replace(self.state_file)
        self.state_file.with_name(OLD_STATE_FILE_NAME).unlink(missing_ok=True)


def open_watches(server_url: str) -> list[dict[str, Any]]:
    """The watch streams open on an ``Emulator`` (its ``/_emulator/watches`` extension)."""
    with urllib.request.urlopen(f"{server_url}/_emulator/watches", timeout=5) as response:
        return json.loads(response.read())["watches"]


# --- kopf in its own thread --------------------------------------------------------------------------

# The API server of the kopf run in the current thread; read by the login handler (kopf copies the
# context into its tasks), so one registry can serve several successive or parallel runs.
_LOCAL_API_URL: contextvars.ContextVar[str] = contextvars.ContextVar("checkpoint_operator_local_api_url")
_REGISTRIES_WITH_LOGIN: "weakref.WeakSet[Any]" = weakref.WeakSet()
LOGIN_HANDLER_ID = "checkpoint-operator-local-api"


def _ensure_local_login(registry: Any) -> None:
    """Give ``registry`` (once) a login handler that connects to this run's emulator.

    With any login handler registered, kopf does not fall back to its default ones, which would read
    the user's kubeconfig and could reach a real cluster from local mode.
    """
    import kopf

    if registry in _REGISTRIES_WITH_LOGIN:
        return

    async def login_to_local_api(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=_LOCAL_API_URL.get(), insecure=True)

    kopf.on.login(registry=registry, id=LOGIN_HANDLER_ID)(login_to_local_api)
    _REGISTRIES_WITH_LOGIN.add(registry)


class KopfHandle:
    """A kopf operator running in its own thread; ``stop()`` ends it."""

    def __init__(self, thread: threading.Thread, stop_flag: threading.Event) -> None:
        self.thread = thread
        self._stop_flag = stop_flag
        self.error: BaseException | None = None

    def stop(self, timeout: float = 15) -> None:
        self._stop_flag.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError("the kopf operator did not stop in time")
        if self.error is not None:
            raise RuntimeError("the kopf operator failed") from self.error

    def __enter__(self) -> "KopfHandle":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_kopf_in_thread(registry: Any, settings: Any, namespaces: Collection[str], server_url: str, *,
                       memo: Any = None, ready_timeout: float = 30, settle: float = 0.3) -> KopfHandle:
    """Run ``kopf.operator(registry, settings)`` against ``server_url``, return once it watches.

    ``namespaces`` empty means cluster-wide. Returns after kopf reported readiness and its watch
    streams on the emulator have been open and unchanged for ``settle`` seconds.
    """
    import kopf

    _ensure_local_login(registry)
    stop_flag, ready_flag = threading.Event(), threading.Event()
    handle: KopfHandle

    def thread_main() -> None:
        _LOCAL_API_URL.set(server_url)
        try:
            asyncio.run(kopf.operator(
                registry=registry, settings=settings, standalone=True,
                namespaces=list(namespaces), clusterwide=not namespaces,
                stop_flag=stop_flag, ready_flag=ready_flag, memo=memo))
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            handle.error = exc
            logger.exception("the kopf operator failed")
        finally:
            ready_flag.set()

    thread = threading.Thread(target=thread_main, name="kopf-operator", daemon=True)
    handle = KopfHandle(thread, stop_flag)
    thread.start()
    if not ready_flag.wait(ready_timeout) or handle.error is not None:
        handle.stop()
        raise RuntimeError("the kopf operator did not become ready")
    _wait_for_kopf_watches(server_url, ready_timeout, settle)
    return handle


# Whose watch streams mean the operator watches: kopf's, and the operator's own informer's (every
# kind of the checkpoint operator: reconcile/informer.py; kopf then watches none).
WATCHING_AGENTS = ("kopf/", "checkpoint-operator-informer")


def _wait_for_kopf_watches(server_url: str, timeout: float, settle: float) -> None:
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        current = sorted((w["resource"], w["namespace"] or "") for w in open_watches(server_url)
                         if w["user_agent"].startswith(WATCHING_AGENTS))
        if current != seen:
            seen, stable_since = current, time.monotonic()
        elif current and time.monotonic() - stable_since >= settle:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the operator opened no watch stream on {server_url} within {timeout} s")


# --- a small client of the API ------------------------------------------------------------------------

class ApiError(Exception):
    """A non-2xx answer of the API; ``status`` is the HTTP status, ``body`` the Status object (or text)."""

    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        reason = body.get("reason") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else str(body)[:200]
        super().__init__(f"{method} {path}: {status} {reason or ''} {message or ''}".strip())
        self.status = status
        self.body = body
        self.reason = reason


def resource_path(resource: str, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    """``resource_path("batch/v1/jobs", "ns", "j")`` -> ``/apis/batch/v1/namespaces/ns/jobs/j``.

    ``resource`` is ``[group/]version/plural``: ``v1/pods``, ``batch/v1/jobs``, ``ckpt.dev/v1alpha1/checkpoints``.
    """
    *api_version, plural = resource.split("/")
    path = "/api/v1" if api_version == ["v1"] else "/apis/" + "/".join(api_version)
    if namespace is not None:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{name}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


class ApiClient:
    """A small asyncio client of a Kubernetes API (aiohttp); enough for the local cluster and tests.

    Create and use it inside one event loop; ``await client.close()`` (or ``async with``) at the end.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "ApiClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                      content_type: str = "application/json", text: str | None = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        data = text.encode() if text is not None else (json.dumps(json_body).encode() if json_body is not None else None)
        headers = {"Content-Type": "text/plain" if text is not None else content_type}
        async with self._session.request(method, self.base_url + path, data=data, params=params,
                                         headers=headers) as response:
            raw = await response.read()
            is_json = response.content_type == "application/json"
            body = json.loads(raw) if is_json and raw else raw.decode(errors="replace")
            if response.status >= 400:
                raise ApiError(response.status, body, method, path)
            return body

    async def get(self, resource: str, namespace: str | None, name: str) -> dict | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", resource_path(resource, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, resource: str, namespace: str | None = None, *, label_selector: str | None = None) -> list[dict]:
        params = {"labelSelector": label_selector} if label_selector else None
        return (await self.request("GET", resource_path(resource, namespace), params=params))["items"]

    async def create(self, resource: str, namespace: str | None, body: dict) -> dict:
        return await self.request("POST", resource_path(resource, namespace), json_body=body)

    async def patch(self, resource: str, namespace: str | None, name: str, body: Any, *,
                    subresource: str | None = None) -> dict:
        """A JSON merge patch (a dict body) or a JSON patch (a list body)."""
        content_type = "application/json-patch+json" if isinstance(body, list) else "application/merge-patch+json"
        return await self.request("PATCH", resource_path(resource, namespace, name, subresource),
                                  json_body=body, content_type=content_type)

    async def replace(self, resource: str, namespace: str | None, name: str, body: dict, *,
                      subresource: str | None = None) -> dict:
        return await self.request("PUT", resource_path(resource, namespace, name, subresource), json_body=body)

    async def delete(self, resource: str, namespace: str | None, name: str, *,
                     propagation_policy: str | None = "Background", preconditions: dict | None = None) -> dict | None:
        """Delete; None when the object was already gone."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if preconditions:
            options["preconditions"] = preconditions
        try:
            return await self.request("DELETE", resource_path(resource, namespace, name), json_body=options)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def read_log(self, namespace: str, name: str, container: str | None = None) -> str:
        params = {"container": container} if container else None
        return await self.request("GET", resource_path("v1/pods", namespace, name, "log"), params=params)

    async def write_log(self, namespace: str, name: str, container: str, text: str, append: bool = False) -> None:
        """Set (or extend) a container's log (an extension of the emulator, used by the local kubelet),
        in pieces of at most LOG_PIECE characters (a request body past 1 MiB is refused by the server)."""
        path = resource_path("v1/pods", namespace, name, "log")
        pieces = [text[i:i + LOG_PIECE] for i in range(0, len(text), LOG_PIECE)] or [""]
        for index, piece in enumerate(pieces):
            params = {"container": container, **({"append": "true"} if append or index else {})}
            await self.request("PUT", path, params=params, text=piece)
