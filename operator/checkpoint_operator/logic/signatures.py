"""The operator's own word, signed (pure): what one of its reconciles hands to another through
fields a namespace user may also write.

Each kind's reconcile is the only writer of its status, so a TrainingJob's reconcile tells a
Checkpoint's reconcile what it sealed (spec.source.trainingJob.sealed), that it changed after
sealing (the ckpt.dev/changed-after-sealing annotation), and where it is cached (ckpt.dev/cached-on)
through the Checkpoint's spec and annotations. Anyone with `create`/`patch` on Checkpoints may
write those too, so the receiving reconcile acts on them only when they carry an HMAC-SHA256 made
with a key only the operator holds (a Secret in its own namespace: reconcile/signing.py).

What is signed is a canonical encoding (JSON, sorted keys, no spaces) of a purpose and the fields
that bind the word to one object: namespace, Checkpoint name, the producing job's uid and directory
(a summary copied to another name, job or directory no longer verifies), and the value itself.
Annotations, written on an existing object, also bind its uid (a replay on a namesake fails).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

SIGNATURE_VERSION = "v1"
SEALED = "sealed"                                 # a snapshot Checkpoint's spec.source.trainingJob (its sealed summary)
CHANGED_AFTER_SEALING = "changed-after-sealing"   # a job's request that its Checkpoint fail
CACHED_ON = "cached-on"                           # the jobs' request for a Checkpoint's status.cachedOn
MIN_KEY_BYTES = 32
MAX_SIGNATURE = 3 + 64                            # "v1:" + hex SHA-256


def canonical(purpose: str, fields: Mapping[str, Any]) -> bytes:
    """One encoding per content: field order (of `fields` and of every mapping in it) is irrelevant,
    and so is how a number is spelled (2.0 and 2: a JSON round trip through the API server may
    write a whole float as an integer)."""
    return json.dumps(_plain({"purpose": purpose, **fields}), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def message_digest(purpose: str, fields: Mapping[str, Any]) -> str:
    """The SHA-256 of the canonical encoding (hex): what is signed; pure, so the indexes keep it
    beside each Checkpoint and check its signature without the key."""
    return hashlib.sha256(canonical(purpose, fields)).hexdigest()


def sign_digest(key: bytes, digest: str) -> str:
    return f"{SIGNATURE_VERSION}:" + hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


def verify_digest(keys: Sequence[bytes], digest: str, signature: Optional[str]) -> bool:
    """Whether `signature` is one of `keys`' (constant-time compare; an absent or malformed one is not)."""
    if not signature or len(signature) > MAX_SIGNATURE or not digest:
        return False
    return any(hmac.compare_digest(sign_digest(key, digest), signature) for key in keys)


def sign(key: bytes, purpose: str, fields: Mapping[str, Any]) -> str:
    return sign_digest(key, message_digest(purpose, fields))


def verify(keys: Sequence[bytes], purpose: str, fields: Mapping[str, Any], signature: Optional[str]) -> bool:
    return verify_digest(keys, message_digest(purpose, fields), signature)


def sealed_fields(namespace: str, name: str, job_name: str, job_uid: str, directory: str,
                  sealed: Mapping[str, Any]) -> dict[str, Any]:
    """What a snapshot Checkpoint's signature binds: its place and name, its job, its directory
    and the whole sealed summary (digest, size, step, completeness, parents, location) as on the wire."""
    return {"namespace": namespace, "name": name, "job": job_name, "jobUID": job_uid, "directory": directory,
            "sealed": dict(sealed)}


def annotation_fields(namespace: str, name: str, uid: str, value: str) -> dict[str, Any]:
    """What an annotation's signature binds: the object (its uid too: it exists when annotated) and the value."""
    return {"namespace": namespace, "name": name, "uid": uid, "value": value}


@dataclass(frozen=True)
class SignedAnnotation:
    """An annotation the operator writes for itself, and the one beside it that holds its signature."""

    key: str
    purpose: str

    @property
    def signature_key(self) -> str:
        return f"{self.key}-signature"

    def signed(self, key: bytes, namespace: str, name: str, uid: str, value: str) -> dict[str, str]:
        """The two annotations to write (in one patch)."""
        return {self.key: value,
                self.signature_key: sign(key, self.purpose, annotation_fields(namespace, name, uid, value))}

    def trusted_value(self, keys: Sequence[bytes], annotations: Mapping[str, str], namespace: str, name: str,
                      uid: str) -> Optional[str]:
        """The annotation's value when the operator wrote it for this object; None when absent or not
        signed with one of `keys` (anyone may write an annotation: then it is ignored)."""
        value = annotations.get(self.key)
        if value is None:
            return None
        fields = annotation_fields(namespace, name, uid, value)
        return value if verify(keys, self.purpose, fields, annotations.get(self.signature_key)) else None


CHANGED_REQUEST = SignedAnnotation("ckpt.dev/changed-after-sealing", CHANGED_AFTER_SEALING)
CACHED_ON_REQUEST = SignedAnnotation("ckpt.dev/cached-on", CACHED_ON)


def sign_snapshot_body(key: bytes, body: Mapping[str, Any]) -> dict[str, Any]:
    """A snapshot Checkpoint's body (as logic/snapshot.py plans it) with spec.source.trainingJob.signature set."""
    meta = body["metadata"]
    source = dict(body["spec"]["source"]["trainingJob"])
    source.pop("signature", None)
    source["signature"] = sign(key, SEALED, sealed_fields(meta["namespace"], meta["name"], source["name"],
                                                          source["uid"], source["directory"], source["sealed"]))
    return {**body, "spec": {**body["spec"], "source": {**body["spec"]["source"], "trainingJob": source}}}
