"""A real FTP/FTPS server for the tests: pyftpdlib on 127.0.0.1 (control and passive data ports).

    from ftpserver import ftp_server  # noqa: F401  (fixture)

`ftp_server` yields an `FtpServer` with `root` (files served to anonymous users and to the user
`USER`/`PASSWORD`), `url(rel)`, `ftps_url(rel)` and `ca` (the CA that signed the FTPS server's
certificate: explicit FTPS, AUTH TLS with TLS required on control and data connections), and
`echo_url(rel)`: a server that refuses every login with a reply quoting the password it was
sent (550, not 530: a server's own words, which the agent must not copy out).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "ckpt"
PASSWORD = "ftp-secret-0123"


@dataclass
class FtpServer:
    root: Path
    port: int
    tls_port: int
    ca: object
    echo_port: int = 0

    def url(self, rel: str) -> str:
        return f"ftp://127.0.0.1:{self.port}/{rel}"

    def ftps_url(self, rel: str) -> str:
        return f"ftps://127.0.0.1:{self.tls_port}/{rel}"

    def echo_url(self, rel: str) -> str:
        return f"ftp://127.0.0.1:{self.echo_port}/{rel}"


def _serve(handler_class, authorizer, **attrs):
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import ThreadedFTPServer

    handler = type("Handler", (handler_class,), {"authorizer": authorizer, "passive_ports": None,
                                                 "permit_foreign_addresses": False, "banner": "ckpt test ftp",
                                                 "auth_failed_timeout": 0,
                                                 **attrs})
    # An IOLoop, a lock and an exit event of its own: pyftpdlib's are shared by every server of
    # the process (a singleton and class attributes), so one server's close would stop the next.
    server_class = type("Server", (ThreadedFTPServer,), {"_lock": threading.Lock(), "_exit": threading.Event()})
    server = server_class(("127.0.0.1", 0), handler, ioloop=IOLoop())
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.05, "blocking": True}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def ftp_server(tmp_path):
    import logging

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler

    from tlscerts import make_ca

    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    root = tmp_path / "ftp-root"
    root.mkdir()
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(str(root))
    authorizer.add_user(USER, PASSWORD, str(root), perm="elr")
    ca = make_ca(tmp_path / "ftp-tls")
    plain, plain_thread = _serve(FTPHandler, authorizer)
    tls_authorizer = DummyAuthorizer()
    tls_authorizer.add_user(USER, PASSWORD, str(root), perm="elr")
    tls, tls_thread = _serve(TLS_FTPHandler, tls_authorizer, certfile=str(ca.cert_file), keyfile=str(ca.key_file),
                             tls_control_required=True, tls_data_required=True)

    def echo_pass(self, line: str) -> None:
        self.respond(f"550 Login of {self.username} refused: password {line} is not accepted here")
    echo, echo_thread = _serve(FTPHandler, authorizer, ftp_PASS=echo_pass)
    yield FtpServer(root, plain.address[1], tls.address[1], ca, echo.address[1])
    for server in (plain, tls, echo):
        server.close_all()
