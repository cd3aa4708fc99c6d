"""No credential a test hands the code appears in anything the code writes (issue 23 item 8).

`credential_watch` (a fixture, defined in tests/conftest.py; a module opts in with
`pytestmark = pytest.mark.usefixtures("credential_watch")`) records, while a test runs:
- every output of the agent run in the test's process (tests/agentrun.py) and of `kubectl ckpt`
  (tests/integration/plugin_helpers.py);
- every log line of the process (the operator runs in a thread of it: kopf's and our loggers);
- with the emulated API: every pod log ever written (agent pods are deleted once their result is
  read, so their logs are taken as they are written) and, at the end, every object it holds
  (statuses, conditions, Events, pod specs) but Secrets, whose data is where credentials belong.
It then fails the test naming where each registered credential (`SECRETS`, and whatever a test
adds with `register`) was found. The test servers' credentials are registered here; a test that
makes up its own (a token, a password) registers it.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import urllib.parse
from typing import Iterable

from azurite import KEY as AZURITE_KEY
from ftpserver import PASSWORD as FTP_PASSWORD
from s3server import SECRET_KEY as S3_SECRET_KEY

SECRETS: set[str] = {S3_SECRET_KEY, FTP_PASSWORD, AZURITE_KEY}
MAX_TEXTS = 20_000  # what one test may record (each text whole): a bound, not an expectation


def register(*secrets: str) -> None:
    """Credentials a test makes up and hands to the code (a token, a password), for every test
    from then on: make them unmistakable (not a word that may occur in a name or a message)."""
    SECRETS.update(s for s in secrets if s)


def forms(secret: str) -> set[str]:
    """How a credential may appear in text: as is, percent-encoded, base64 of it (not the
    `user:password` pairs: base64 of a Secret's value is where it belongs, and Secrets are
    not looked at)."""
    return {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}


class Witness:
    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def saw(self, where: str, text: str) -> None:
        if not text:
            return
        with self._lock:
            if len(self.texts) < MAX_TEXTS:
                self.texts.append((where, text))

    def leaks(self, secrets: Iterable[str]) -> list[str]:
        found = []
        for secret in secrets:
            for form in forms(secret):
                for where, text in self.texts:
                    at = text.find(form)
                    if at >= 0:
                        excerpt = text[max(0, at - 80):at + len(form) + 40].replace("\n", "\\n")
                        found.append(f"{where}: {form!r} in ...{excerpt}...")
        return found


class _Recorder(logging.Handler):
    def __init__(self, witness: Witness) -> None:
        super().__init__(level=logging.DEBUG)
        self.witness = witness

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.witness.saw(f"log {record.name}", record.getMessage())
        except Exception:  # noqa: BLE001 - a log call with bad arguments is not ours to judge
            pass


# The witness of the running test (None between tests): agentrun.py and plugin_helpers.py report to it.
current: Witness | None = None


def saw(where: str, text: str) -> None:
    if current is not None:
        current.saw(where, text)


def start() -> tuple[Witness, logging.Handler]:
    global current
    current = Witness()
    handler = _Recorder(current)
    root = logging.getLogger()
    root.addHandler(handler)
    return current, handler


def stop(handler: logging.Handler) -> None:
    global current
    logging.getLogger().removeHandler(handler)
    current = None


def watch_emulator(witness: Witness, emulator) -> None:
    """Record every text written to a pod's log from now on (the emulator's `on_pod_log`)."""
    emulator.on_pod_log = lambda namespace, name, container, text: witness.saw(
        f"pod log {namespace}/{name} {container}".strip(), text)


def emulator_objects(witness: Witness, state: dict) -> None:
    for entry in state.get("objects", []):
        obj = entry.get("object") or {}
        if obj.get("kind") == "Secret" or str(entry.get("resource", "")).endswith("/secrets"):
            continue
        meta = obj.get("metadata") or {}
        witness.saw(f"{obj.get('kind', entry.get('resource'))} {meta.get('namespace', '')}/{meta.get('name', '')}",
                    json.dumps(obj))
    for log in state.get("podLogs", []):
        witness.saw(f"pod log {log['namespace']}/{log['name']}", log["text"])


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
