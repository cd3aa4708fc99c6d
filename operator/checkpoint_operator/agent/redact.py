"""No credential the agent holds leaves it in a line it writes.

What the agent prints on stderr (its one `error:` line, retries, progress) reaches the pod's log,
and from there the Checkpoint's status and Events. Servers may echo what they were sent: an FTP
server's reply to PASS, an S3 or Azure error that quotes the request (a SAS token's `sig=`), a
Git or Hub answer. Rather than trust each message, every agent command writes stderr through
`RedactingStream`, which replaces each credential of the environment (and its percent-encoded
form) with `***`. A credential shorter than MIN_SECRET characters is not looked for: it would
mangle ordinary words, and such a credential protects nothing.

Masking must come before anything that changes the text: a reply escaped for one line (a
backslash doubled, a tab as `\x09`) or cut to a length no longer holds the credential as it was
sent (hostile1 D10). So text from outside is quoted through `quoted` (mask, then escape, then
cut), and the stream also masks the escaped forms of each credential (as `printable`, JSON and
Python's repr write them), for text escaped elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.parse
from typing import Iterator, Mapping, Optional, TextIO

from checkpoint_operator.agent.names import printable

MIN_SECRET = 4
MASK = "***"
# Environment variables that hold a credential (the operator fills them from a source's Secret).
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                    "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING")
# Files of a mounted Secret directory that hold a credential.
SECRET_FILES = {"CKPT_SOURCE_SECRET_DIR": ("password",),
                "CKPT_S3_SECRET_DIR": ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
MAX_SECRET_FILE = 64 * 1024


def _connection_string_parts(value: str) -> list[str]:
    """The secret parts of an Azure connection string (AccountKey, SharedAccessSignature and its sig)."""
    parts = []
    for item in value.split(";"):
        key, _, secret = item.partition("=")
        if key.strip() in ("AccountKey", "SharedAccessSignature"):
            parts.append(secret)
            parts += _sas_signature(secret)
    return parts


def _sas_signature(token: str) -> list[str]:
    """The `sig` of a SAS token: what servers echo when they quote a request URL."""
    values = urllib.parse.parse_qs(token.lstrip("?")).get("sig", [])
    return values + [urllib.parse.quote(v, safe="") for v in values]


def known_secrets(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """The credentials of this process's environment, longest first (a secret that holds
    another is masked whole)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    found: set[str] = set()
    for name in SECRET_VARIABLES:
        value = env.get(name)
        if not value:
            continue
        found.add(value)
        if name == "AZURE_STORAGE_CONNECTION_STRING":
            found.update(_connection_string_parts(value))
        if name == "AZURE_STORAGE_SAS_TOKEN":
            found.update(_sas_signature(value))
    for variable, files in SECRET_FILES.items():
        directory = env.get(variable)
        if not directory:
            continue
        for name in files:
            try:
                with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
                    value = f.read(MAX_SECRET_FILE).strip("\r\n")
            except OSError:
                continue
            found.add(value)
    variants = set()
    for secret in found:
        variants.update(_written_forms(secret))
    return sorted((s for s in variants if len(s) >= MIN_SECRET), key=len, reverse=True)


def _written_forms(secret: str) -> set[str]:
    """The ways a message may carry `secret`: as it is, percent-encoded, and escaped for one line
    (agent/names.printable, JSON, Python's repr)."""
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret), printable(secret),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret)[1:-1],
             secret.encode("unicode_escape").decode("ascii")}
    return {f for f in forms if f}


def quoted(text: str, limit: int = 300, secrets: Optional[list[str]] = None) -> str:
    """Text from outside the agent (a server's reply, an exception's message) for a one-line error:
    the environment's credentials masked first, then what would break a line escaped, then cut to
    `limit` characters (a cut then only ever shortens a mask, never a credential)."""
    text = printable(redact(text, known_secrets() if secrets is None else secrets))
    return text if len(text) <= limit else text[:limit] + "..."


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingStream:
    """A text stream that writes through to `inner` with every secret masked. Writes are masked
    whole, so a secret is found when it is written in one piece (every message of the agent is
    one write of a whole line)."""

    def __init__(self, inner: TextIO, secrets: list[str]) -> None:
        self.inner = inner
        self.secrets = secrets

    def write(self, text: str) -> int:
        self.inner.write(redact(text, self.secrets))
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.inner, "isatty", lambda: False)())

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@contextlib.contextmanager
def redacted_stderr() -> Iterator[None]:
    """sys.stderr masks the environment's credentials while the block runs."""
    secrets = known_secrets()
    if not secrets:
        yield
        return
    saved = sys.stderr
    sys.stderr = RedactingStream(saved, secrets)
    try:
        yield
    finally:
        sys.stderr = saved
