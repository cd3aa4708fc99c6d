"""ftp://host[:port]/path/file and ftps://host[:port]/path/file: one file (archives are extracted).

With the standard library's ftplib, in binary mode and passive mode. ftps:// is explicit FTPS
(AUTH TLS on the control connection, then PROT P: the data connection is encrypted too), with
the server's certificate verified against the system's CAs or --ca-file: never unverified.
(Implicit FTPS, the older form on port 990, is not supported.) The login is anonymous unless
the Secret mounted at CKPT_SOURCE_SECRET_DIR holds username and password. The size comes from
SIZE before the transfer (refused past the limit unread); the transfer is bounded as it runs.
"""

from __future__ import annotations

import ftplib
import os
import socket
import ssl
import urllib.parse

from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.agent.redact import quoted
from checkpoint_operator.agent.progress import Progress
from checkpoint_operator.agent.urls import parse_url, shown
from checkpoint_operator.agent.sources.base import (
    Fetched, Limits, Options, Source, file_name, over_limit, read_secret_dir, ssl_context,
)

FTP_TIMEOUT = 60


class _Stop(Exception):
    pass


class FtpSource(Source):
    def __init__(self, uri: str, options: Options) -> None:
        self.uri = uri
        parts = parse_url(uri, "the import source")  # one line, never a parser's exception
        self.label = shown(uri)
        self.tls = parts.scheme == "ftps"
        if not parts.hostname:
            raise AgentError(f"{self.label}: no host (expected ftp://host/path/file or ftps://host/path/file)")
        self.port = parts.port or 21
        self.host = parts.hostname
        self.path = urllib.parse.unquote(parts.path)
        if not self.path or self.path.endswith("/"):
            raise AgentError(f"{self.label}: give a file (an archive for a tree); FTP directories are not imported")
        self.name = file_name(uri, self.path)
        self.ca_file = options.ca_file

    def _connect(self) -> ftplib.FTP:
        login = read_secret_dir(self.uri) or ("anonymous", "anonymous@")
        try:
            ftp: ftplib.FTP
            if self.tls:  # AUTH TLS before the login, then a protected data channel (PROT P)
                secure = ftplib.FTP_TLS(context=ssl_context(self.ca_file, self.uri), timeout=FTP_TIMEOUT)
                secure.connect(self.host, self.port)
                secure.auth()
                secure.login(login[0] or "anonymous", login[1])
                secure.prot_p()
                ftp = secure
            else:
                ftp = ftplib.FTP(timeout=FTP_TIMEOUT)
                ftp.connect(self.host, self.port)
                ftp.login(login[0] or "anonymous", login[1])
            ftp.voidcmd("TYPE I")
            return ftp
        except ssl.SSLCertVerificationError as exc:
            raise AgentError(f"{self.label}: the server's certificate is not trusted ({exc.verify_message}): give its "
                             f"CA (caConfigMap, --ca-file)") from None
        except ftplib.error_perm as exc:
            code = str(exc)[:3]
            if code == "530":
                raise AgentError(f"{self.label}: login refused by the server (530): "
                                 + ("check username/password in the Secret" if login[0] != "anonymous"
                                    else "it needs a login (a Secret with username and password: secretRef)")) from None
            if code in ("534", "504", "502", "500") and self.tls:
                raise AgentError(f"{self.label}: the server does not offer FTPS (AUTH TLS refused: {_line(exc)})") from None
            raise AgentError(f"{self.label}: the server refused: {_line(exc)}") from None
        except (OSError, EOFError, ftplib.Error) as exc:
            raise AgentError(f"{self.label}: cannot connect to {self.host}:{self.port}: {_line(exc)}") from None

    def fetch(self, tree: str, downloads: str, limits: Limits) -> Fetched:
        ftp = self._connect()
        target = os.path.join(downloads, self.name)
        written = 0
        try:
            try:
                size = ftp.size(self.path)
            except ftplib.error_perm as exc:
                if str(exc)[:3] == "550":
                    raise AgentError(f"{self.label}: no such file on the server (550)") from None
                size = None  # SIZE not supported: bounded while the bytes move
            if size is not None and size > limits.max_size:
                raise over_limit(self.label, size, limits, " (its SIZE)")
            with Progress("import", size or 0) as progress, open(target, "wb") as out:
                def write(chunk: bytes) -> None:
                    nonlocal written
                    written += len(chunk)
                    if written > limits.max_size:
                        raise _Stop()
                    out.write(chunk)
                    progress.add(len(chunk))
                try:
                    ftp.retrbinary(f"RETR {self.path}", write, blocksize=1024 * 1024)
                except _Stop:
                    raise AgentError(f"{self.label}: larger than the size limit of {limits.max_size} (see --max-size): "
                                     f"stopped reading after {written} bytes") from None
        except ftplib.error_perm as exc:
            if str(exc)[:3] == "550":
                raise AgentError(f"{self.label}: no such file or not readable (550)") from None
            raise AgentError(f"{self.label}: the server refused: {_line(exc)}") from None
        except (ssl.SSLError, OSError, EOFError, ftplib.Error) as exc:
            if isinstance(exc, AgentError):
                raise
            raise AgentError(f"{self.label}: transfer failed after {written} bytes: {_line(exc)}") from None
        finally:
            try:
                ftp.close()
            except (OSError, socket.error):
                pass
        if size is not None and written != size:
            raise AgentError(f"{self.label}: connection closed after {written} of {size} bytes")
        return Fetched(provenance={"uri": self.uri}, file=target, name=self.name)


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return quoted(text.splitlines()[-1] if text else type(exc).__name__)


SOURCE = FtpSource
