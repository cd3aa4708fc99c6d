"""A small web server on 127.0.0.1 for the import tests: the files of a directory, plus the
misbehaviours a source may meet (a redirect loop, a redirect to file://).

`web` (function-scoped) yields a `Web` with `root` (the directory served) and `url(rel)`."""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Web:
    root: Path
    port: int

    def url(self, rel: str) -> str:
        return f"http://127.0.0.1:{self.port}/{rel}"


def _handler(root: Path):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.startswith("/loop/"):  # each answer sends the client to the next: never ends
                n = int(self.path.rsplit("/", 1)[-1].split(".")[0] or 0)
                self._redirect(f"/loop/{n + 1}.tar")
            elif self.path.startswith("/to-file/"):
                self._redirect("file:///etc/passwd")
            else:
                super().do_GET()

        def _redirect(self, where: str) -> None:
            self.send_response(302)
            self.send_header("Location", where)
            self.send_header("Content-Length", "0")
            self.end_headers()
    return Handler


@pytest.fixture
def web(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(root))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield Web(root, server.server_address[1])
    server.shutdown()
    server.server_close()
