"""The operator's signing keys (logic/signatures.py says what they sign and why): a Secret in the
operator's own namespace, made by the operator on its first start when missing (32 random bytes),
read once per process and again when a signature does not verify (a rotation), at most once per
REFRESH_SECONDS: no request per lifecycle. The key never leaves the process: nothing logs it,
nothing else reads it (RBAC: get on that one Secret by name).

Rotation: the Secret's `key` signs; `previous` (optional) still verifies. Move `key` to `previous`,
write a new `key`, and restart the operator (or wait for a failed verification to reload it):
nothing is re-signed; what was signed with a key that is in neither field stops verifying (a
Pending snapshot Checkpoint then fails, naming its spec.source.trainingJob.sealed; Ready ones
keep their status, written by the operator when it verified).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from typing import Any, Optional

from checkpoint_operator.config import SIGNING_KEY_SECRET
from checkpoint_operator.kube import SECRETS, Conflict, Kube
from checkpoint_operator.logic.signatures import MIN_KEY_BYTES

logger = logging.getLogger("checkpoint_operator.signing")
KEY_FIELD, PREVIOUS_FIELD = "key", "previous"
REFRESH_SECONDS = 60.0  # a signature that does not verify reads the Secret again at most this often


class SigningKeyError(Exception):
    """The Secret cannot be read or is not a usable key: nothing is signed or trusted until it is."""


class SigningKeys:
    """The keys, loaded lazily (the first reconcile that signs or verifies) and shared by every worker thread."""

    def __init__(self, keys: tuple[bytes, ...] = ()) -> None:
        """`keys`: given (tests, tools), the Secret is never read."""
        self._lock = threading.Lock()
        self._keys = keys
        self._loaded_at: Optional[float] = time.monotonic() if keys else None
        self._fixed = bool(keys)

    def signing_key(self, kube: Kube, namespace: str) -> bytes:
        return self.keys(kube, namespace)[0]

    def keys(self, kube: Kube, namespace: str) -> tuple[bytes, ...]:
        """The newest first (it signs); every one verifies."""
        with self._lock:
            if not self._keys:
                self._load(kube, namespace)
            return self._keys

    def reload(self, kube: Kube, namespace: str, now: Optional[float] = None) -> bool:
        """Read the Secret again after a failed verification (rate-limited); whether the keys changed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._fixed:
                return False
            if self._loaded_at is not None and now - self._loaded_at < REFRESH_SECONDS:
                return False
            before = self._keys
            self._load(kube, namespace, now)
            return self._keys != before

    def _load(self, kube: Kube, namespace: str, now: Optional[float] = None) -> None:
        body = kube.get(SECRETS, namespace, SIGNING_KEY_SECRET)
        if body is None:
            body = _create(kube, namespace)
        self._keys = keys_of(body, namespace)
        self._loaded_at = time.monotonic() if now is None else now


def _create(kube: Kube, namespace: str) -> dict[str, Any]:
    key = base64.b64encode(os.urandom(MIN_KEY_BYTES)).decode()
    body = {"metadata": {"name": SIGNING_KEY_SECRET, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "checkpoint-operator"}},
            "type": "Opaque", "data": {KEY_FIELD: key}}
    try:
        created = kube.create(SECRETS, namespace, body)
        logger.info("created the signing key Secret %s/%s", namespace, SIGNING_KEY_SECRET)
        return created
    except Conflict:  # another replica made it first: theirs
        found = kube.get(SECRETS, namespace, SIGNING_KEY_SECRET)
        if found is None:
            raise SigningKeyError(f"Secret {namespace}/{SIGNING_KEY_SECRET} was deleted while being made")
        return found


def keys_of(body: dict[str, Any], namespace: str) -> tuple[bytes, ...]:
    data = body.get("data") or {}
    keys = []
    for field in (KEY_FIELD, PREVIOUS_FIELD):
        if field not in data:
            continue
        try:
            key = base64.b64decode(str(data[field]), validate=True)
        except ValueError:
            raise SigningKeyError(f"Secret {namespace}/{SIGNING_KEY_SECRET}: data.{field} is not base64") from None
        if len(key) < MIN_KEY_BYTES:
            raise SigningKeyError(f"Secret {namespace}/{SIGNING_KEY_SECRET}: data.{field} holds {len(key)} bytes; "
                                  f"a key has at least {MIN_KEY_BYTES} (random)")
        keys.append(key)
    if not keys or KEY_FIELD not in data:
        raise SigningKeyError(f"Secret {namespace}/{SIGNING_KEY_SECRET} has no data.{KEY_FIELD} (at least "
                              f"{MIN_KEY_BYTES} random bytes, base64)")
    return tuple(keys)
