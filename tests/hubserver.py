"""Hugging Face Hub servers for the tests, on 127.0.0.1 only.

    (registered for the whole run by tests/conftest.py: ask for `olah_hub` or `mini_hub` by name)

- `olah_hub` (session-scoped): **olah** (PyPI), a self-hosted Hub mirror, in offline mode serving
  local Git repositories from its `mirrors-path` (models/<org>/<name>), its upstream pointed at a
  closed loopback port so it never reaches out. A real, independent implementation of the Hub
  API that huggingface_hub talks to: `add_repo(repo_id, files)` makes a repository and returns its
  commit. It does not do what the tests below need to show, so:
- `mini_hub`: a minimal Hub of our own, implementing exactly the calls the agent makes (revision
  info, the recursive tree with sizes, blob ids and LFS sha256, file resolve with ETag and
  X-Repo-Commit) plus what olah cannot show: private repositories behind a token (401 as the
  Hub answers it), 404 RevisionNotFound, LFS files redirected to a CDN on *another origin* that
  records every header it receives (the token must never arrive there), and misbehaviours (a
  file served with other bytes, or more bytes than listed).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from gitserver import git
from processes import die_with_parent
from required import unavailable

# huggingface_hub reads HF_HOME (where a login's token file is) once, when it is first imported:
# point it at an empty directory before any test imports it, so that no token of the machine's
# user is ever picked up (the agent runs in the test process, see agentrun.py).
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="ckpt-hf-home-")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


# --- olah --------------------------------------------------------------------------------------

@dataclass
class OlahHub:
    port: int
    mirrors: Path
    proc: subprocess.Popen
    workdir: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> str:
        """A model repository served by the mirror; returns its commit (on branch main)."""
        path = self.mirrors / "models" / repo_id
        path.mkdir(parents=True)
        git("init", "--quiet", "-b", "main", str(path))
        for rel, data in files.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(data)
        git("add", "-A", cwd=path)
        git("commit", "--quiet", "-m", "upload", cwd=path)
        return git("rev-parse", "HEAD", cwd=path)


def _olah_cli() -> Optional[str]:
    beside = Path(sys.executable).parent / "olah-cli"
    return str(beside) if beside.exists() else shutil.which("olah-cli")


@pytest.fixture(scope="session")
def olah_hub():
    cli = _olah_cli()
    if cli is None:
        unavailable("olah (pip install olah, in the dev extra) is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="ckpt-olah-"))
    mirrors = workdir / "mirrors"
    (mirrors / "models").mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket() as s:  # a closed port: olah's "upstream", so that it can never reach out
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    config = workdir / "olah.toml"
    config.write_text(f"""[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{workdir / 'repos'}"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
mirrors-path = ["{mirrors}"]
hf-scheme = "http"
hf-netloc = "127.0.0.1:{closed}"
hf-lfs-netloc = "127.0.0.1:{closed}"

[accessibility]
offline = true
""")
    log = open(workdir / "olah.log", "ab")
    proc = subprocess.Popen([cli, "--config", str(config)], cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            preexec_fn=die_with_parent())
    log.close()
    hub = OlahHub(port, mirrors, proc, workdir)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{hub.endpoint}/api/models/none/none/revision/main", timeout=2)
        except urllib.error.HTTPError:
            break  # it answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"olah did not start; see {workdir / 'olah.log'}")
            time.sleep(0.2)
    yield hub
    os.killpg(proc.pid, 9)
    proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)


# --- the minimal Hub ---------------------------------------------------------------------------

def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class MiniRepo:
    files: dict[str, bytes]
    lfs: set[str]
    commit: str
    branches: dict[str, str]
    token: Optional[str] = None  # private: this token is required


@dataclass
class MiniHub:
    repos: dict[str, MiniRepo] = field(default_factory=dict)
    hub_port: int = 0
    cdn_port: int = 0
    requests: list = field(default_factory=list)  # (role, method, path, Authorization header)
    tamper: dict = field(default_factory=dict)  # path -> bytes served instead
    no_oid: set = field(default_factory=set)    # paths the tree listing gives without a hash (a lax mirror)
    redirect_api: bool = False  # send the API calls to the CDN origin (a token must not follow)
    slow: float = 0.0  # seconds between 16 KiB pieces of a file's body (a slow link)
    servers: list = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self.cdn_port}"

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, lfs: tuple[str, ...] = (),
                 token: Optional[str] = None, branch: str = "main") -> str:
        commit = hashlib.sha1(json.dumps(sorted((k, blob_id(v)) for k, v in files.items())).encode()).hexdigest()
        self.repos[repo_id] = MiniRepo(dict(files), set(lfs), commit, {branch: commit}, token)
        return commit

    def seen_by(self, role: str) -> list:
        return [r for r in self.requests if r[0] == role]


class _MiniHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: MiniHub
    role: str

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _send(self, status: int, body: bytes = b"", headers: Optional[dict] = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if not self.hub.slow or len(body) < 65536:
            self.wfile.write(body)
            return
        for at in range(0, len(body), 16384):
            self.wfile.write(body[at:at + 16384])
            self.wfile.flush()
            time.sleep(self.hub.slow)

    def _json(self, status: int, payload, headers: Optional[dict] = None, head: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}, head)

    def _route(self, head: bool) -> None:
        hub = self.hub
        hub.requests.append((self.role, self.command, self.path, self.headers.get("Authorization")))
        path = urllib.parse.urlsplit(self.path).path
        if self.role == "cdn" and path.startswith("/cdn/"):
            sha = path.rsplit("/", 1)[-1]
            for repo in hub.repos.values():
                for rel, data in repo.files.items():
                    if hashlib.sha256(data).hexdigest() == sha:
                        self._send(200, hub.tamper.get(rel, data), {"Content-Type": "application/octet-stream"}, head)
                        return
            self._send(404, b"no such object", head=head)
            return
        if path.startswith("/api/") and hub.redirect_api and self.role == "hub":
            self._send(307, b"", {"Location": hub.cdn + self.path}, head)
            return
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo_id, action, rev = "/".join(parts[2:4]), parts[4], parts[5]
            repo = self._repo(repo_id, head)
            if repo is None:
                return
            commit = repo.branches.get(rev, rev if rev == repo.commit else None)
            if commit is None:
                self._json(404, {"error": f"Invalid rev id: {rev}"},
                           {"X-Error-Code": "RevisionNotFound", "X-Error-Message": f"Invalid rev id: {rev}"}, head)
                return
            if action == "revision":
                self._json(200, {"id": repo_id, "sha": commit, "private": repo.token is not None,
                                 "siblings": [{"rfilename": p} for p in sorted(repo.files)]}, head=head)
                return
            if action == "tree":
                items = []
                for rel, data in sorted(repo.files.items()):
                    item = {"type": "file", "oid": "" if rel in hub.no_oid else blob_id(data), "size": len(data),
                            "path": rel}
                    if rel in repo.lfs:
                        item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
                    items.append(item)
                self._json(200, items, head=head)
                return
        if len(parts) >= 5 and parts[2] == "resolve" and self.role == "hub":
            repo_id, rev, rel = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            repo = self._repo(repo_id, head)
            if repo is None:
                return
            commit = repo.branches.get(rev, rev if rev == repo.commit else None)
            if commit is None or rel not in repo.files:
                self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"}, head)
                return
            data = repo.files[rel]
            if rel in repo.lfs:
                sha = hashlib.sha256(data).hexdigest()
                self._send(302, b"", {"Location": f"{hub.cdn}/cdn/{sha}", "X-Repo-Commit": commit,
                                      "ETag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                                      "X-Linked-Etag": f'"{sha}"'}, head)
                return
            self._send(200, hub.tamper.get(rel, data), {"X-Repo-Commit": commit, "ETag": f'"{blob_id(data)}"',
                                                        "Content-Type": "application/octet-stream"}, head)
            return
        self._send(404, b"not found", head=head)

    def _repo(self, repo_id: str, head: bool) -> Optional[MiniRepo]:
        repo = self.hub.repos.get(repo_id)
        auth = self.headers.get("Authorization")
        if repo is not None and repo.token is not None and auth != f"Bearer {repo.token}":
            if auth:  # as the Hub answers a token it does not know
                self._json(401, {"error": "Invalid credentials in Authorization header"},
                           {"X-Error-Message": "Invalid credentials in Authorization header"}, head)
                return None
            repo = None  # a private repository is "not found" to anonymous callers
        if repo is None:
            self._json(401, {"error": "Repository not found"},
                       {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, head)
        return repo


def start_mini_hub() -> MiniHub:
    hub = MiniHub()
    for role in ("hub", "cdn"):
        handler = type(f"Mini{role}", (_MiniHandler,), {"hub": hub, "role": role})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.handle_error = lambda request, address: None  # a client that hangs up is no error here
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        hub.servers.append(server)
        setattr(hub, f"{role}_port", server.server_address[1])
    return hub


@pytest.fixture
def mini_hub(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    hub = start_mini_hub()
    yield hub
    for server in hub.servers:
        server.shutdown()
        server.server_close()
