"""Real Git servers for the tests, on 127.0.0.1 only: `git http-backend` (smart HTTP, the protocol
of GitHub, GitLab and the Hub) behind a small HTTP front that adds Basic authentication and a
Git LFS batch endpoint, and `git daemon` (git://).

    from gitserver import git_http, git_daemon  # noqa: F401  (fixtures)

`git_http` yields a `GitHttp`: `add_repo(name, files, lfs_files=...)` makes a bare repository
(served with uploadpack.allowAnySHA1InWant, as GitHub does) and returns its commit; `url(name)`;
`require_login(user, password)`; `requests` lists (method, path, authorization) of every request.
The LFS objects live in the front's own store (no git-lfs needed to build a repository: the
pointers are committed as git-lfs writes them); `git lfs fetch` talks to it through the batch API.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from processes import die_with_parent

GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e", "GIT_TERMINAL_PROMPT": "0"}


def git(*args: str, cwd: Optional[Path] = None) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")}, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


def make_repo(root: Path, name: str, files: dict[str, bytes], *, lfs_files: Optional[dict[str, bytes]] = None,
              lfs_store: Optional[Path] = None, links: Optional[dict[str, str]] = None, branch: str = "main",
              tag: Optional[str] = None, history: Optional[list[dict[str, bytes]]] = None) -> str:
    """A bare repository root/<name>.git whose `branch` holds `files` (plus LFS pointers for
    `lfs_files`, whose content goes to `lfs_store`, and symlinks `links`); `history`: earlier
    commits' files. Returns the commit id of the branch."""
    work = Path(tempfile.mkdtemp(prefix="ckpt-gitwork-"))
    try:
        git("init", "--quiet", "-b", branch, str(work))
        for earlier in history or []:
            _write(work, earlier)
            git("add", "-A", cwd=work)
            git("commit", "--quiet", "-m", "earlier", cwd=work)
            for rel in earlier:
                (work / rel).unlink()
        _write(work, files)
        for rel, data in (lfs_files or {}).items():
            assert lfs_store is not None
            (lfs_store / hashlib.sha256(data).hexdigest()).write_bytes(data)
            _write(work, {rel: lfs_pointer(data)})
        for rel, target in (links or {}).items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, work / rel)
        git("add", "-A", cwd=work)
        git("commit", "--quiet", "--allow-empty", "-m", "checkpoint", cwd=work)
        if tag:
            git("tag", tag, cwd=work)
        bare = root / f"{name}.git"
        git("clone", "--quiet", "--bare", str(work), str(bare))
        git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
        git("config", "http.receivepack", "false", cwd=bare)
        return git("rev-parse", branch, cwd=bare)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write(work: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@dataclass
class GitHttp:
    root: Path
    lfs_store: Path
    port: int = 0
    login: Optional[tuple[str, str]] = None
    pack_delay: float = 0.0  # seconds the server waits before answering a fetch (a slow server)
    requests: list = field(default_factory=list)
    server: Optional[http.server.ThreadingHTTPServer] = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}.git"

    def add_repo(self, name: str, files: dict[str, bytes], **kwargs) -> str:
        return make_repo(self.root, name, files, lfs_store=self.lfs_store, **kwargs)

    def require_login(self, user: str, password: str) -> None:
        self.login = (user, password)


class _Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: GitHttp

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        state = self.state
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        state.requests.append((self.command, self.path, self.headers.get("Authorization")))
        if state.login is not None:
            expected = "Basic " + base64.b64encode(f"{state.login[0]}:{state.login[1]}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                self._send(401, b"unauthorized\n", {"WWW-Authenticate": 'Basic realm="git"'})
                return
        path, _, query = self.path.partition("?")
        if path.endswith("/info/lfs/objects/batch"):
            self._lfs_batch(body)
        elif path.startswith("/lfs-objects/"):
            data_path = state.lfs_store / path.rsplit("/", 1)[-1]
            if data_path.is_file():
                self._send(200, data_path.read_bytes(), {"Content-Type": "application/octet-stream"})
            else:
                self._send(404, b"no such object\n")
        else:
            self._cgi(path, query, body)

    def _lfs_batch(self, body: bytes) -> None:
        request = json.loads(body or b"{}")
        objects = []
        # As LFS servers do, the download action carries the authorization it needs itself.
        action_headers = {"Authorization": self.headers["Authorization"]} if self.headers.get("Authorization") else {}
        for obj in request.get("objects", []):
            if (self.state.lfs_store / obj["oid"]).is_file():
                objects.append({**obj, "actions": {"download": {
                    "href": f"{self.state.base}/lfs-objects/{obj['oid']}", "header": action_headers}}})
            else:
                objects.append({**obj, "error": {"code": 404, "message": "object not found"}})
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def _cgi(self, path: str, query: str, body: bytes) -> None:
        if path.endswith("/git-upload-pack") and self.state.pack_delay:
            time.sleep(self.state.pack_delay)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")}, **GIT_ENV,
               "GIT_PROJECT_ROOT": str(self.state.root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path,
               "QUERY_STRING": query, "REQUEST_METHOD": self.command, "REMOTE_ADDR": "127.0.0.1",
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1"}
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        self._send(status, payload, headers)

    def _send(self, status: int, payload: bytes, headers: Optional[dict] = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def start_git_http(root: Path) -> GitHttp:
    lfs_store = root / ".lfs-store"
    lfs_store.mkdir(parents=True, exist_ok=True)
    state = GitHttp(root, lfs_store)
    handler = type("Front", (_Front,), {"state": state})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # a client that hangs up is no error here
    state.server, state.port = server, server.server_address[1]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return state


@pytest.fixture
def git_http(tmp_path):
    state = start_git_http(tmp_path / "git-http")
    yield state
    state.server.shutdown()
    state.server.server_close()


@dataclass
class GitDaemon:
    root: Path
    port: int
    proc: subprocess.Popen

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}.git"

    def add_repo(self, name: str, files: dict[str, bytes], **kwargs) -> str:
        return make_repo(self.root, name, files, **kwargs)


@pytest.fixture
def git_daemon(tmp_path):
    root = tmp_path / "git-daemon"
    root.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")}, **GIT_ENV}
    # git-daemon itself, not `git daemon` (a wrapper whose child outlived it: every run left two
    # daemons behind), in a group of its own that the teardown ends whole.
    daemon = os.path.join(subprocess.run(["git", "--exec-path"], capture_output=True, text=True,
                                         check=True).stdout.strip(), "git-daemon")
    proc = subprocess.Popen([daemon, "--listen=127.0.0.1", f"--port={port}", f"--base-path={root}",
                             "--export-all", "--reuseaddr", "--informative-errors", "--enable=upload-pack", str(root)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=die_with_parent())
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError("git daemon did not start")
            time.sleep(0.05)
    yield GitDaemon(root, port, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
