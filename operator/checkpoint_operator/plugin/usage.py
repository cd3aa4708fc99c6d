"""`kubectl ckpt du`: bytes stored against bytes referenced, per namespace (pure; the command gathers).

- referenced: the sum of the Ready Checkpoints' sizes in the namespace (what the Checkpoints say they are);
- stored: what the store holds for the namespace, measured at the store, never derived from the
  Checkpoints: on the s3 store the total size of the objects under the namespace's prefix (a listing:
  data, manifests, sealed copies, uploads not yet a Checkpoint); on volumes the capacity of the claims
  that hold its Checkpoints (and its copies of catalog entries): a claim's allocation is what it costs.

So when files are stored once per namespace and shared by several Checkpoints (content-addressed blobs),
stored falls below referenced by itself and SAVED says by how much: nothing here assumes one copy per
Checkpoint. The catalog (ClusterCheckpoints) is a row of its own (`--catalog`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

from checkpoint_operator.api.common import parse_quantity
from checkpoint_operator.logic.quantity import format_size

CATALOG_ROW = "(catalog)"
OBJECT_DIRECTORY = re.compile(r".+-[0-9a-f]{8}")  # <name>-<uid8>: a Checkpoint's or a TrainingJob's directory


@dataclass
class Usage:
    namespace: str
    checkpoints: int = 0
    referenced: int = 0
    stored_s3: Optional[int] = None        # bytes under the namespace's prefix (None: not listed)
    s3_objects: Optional[int] = None
    s3_prefixes: list[str] = field(default_factory=list)
    claim_bytes: Optional[int] = None      # capacity of the claims holding its Checkpoints (None: none)
    claims: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unmeasured: bool = False               # a claim or prefix it holds could not be measured: STORED unknown

    @property
    def stored(self) -> Optional[int]:
        if self.unmeasured:
            return None  # a part missing would make STORED smaller and SAVED larger than they are (hostile3 F3)
        parts = [p for p in (self.stored_s3, self.claim_bytes) if p is not None]
        return sum(parts) if parts else None

    @property
    def saved(self) -> Optional[int]:
        """Bytes referenced but not stored again (shared); negative: stored beyond what is referenced
        (manifests, uploads not yet a Checkpoint, a claim's free space)."""
        return None if self.stored is None else self.referenced - self.stored

    def to_json(self) -> dict:
        return {"namespace": self.namespace, "checkpoints": self.checkpoints, "referencedBytes": self.referenced,
                "storedBytes": self.stored, "savedBytes": self.saved,
                "s3": None if self.stored_s3 is None else {"bytes": self.stored_s3, "objects": self.s3_objects,
                                                           "prefixes": self.s3_prefixes},
                "volumes": None if self.claim_bytes is None else {"bytes": self.claim_bytes, "claims": self.claims},
                "problems": self.problems}


def namespace_prefix(uri: str, namespace: str) -> Optional[str]:
    """`s3://bucket/prefix/<namespace>/` from a Checkpoint's location under it (None: not under one). What
    the store puts directly under a namespace's prefix is named `<name>-<uid8>` (storage/s3.py prefix_for),
    so the namespace segment followed by such a name ends it: a store prefix or a sub-path that happens to
    be named like the namespace is not taken for it. Without such a segment, the first one named so."""
    if not uri.startswith("s3://"):
        return None
    bucket, _, key = uri[len("s3://"):].partition("/")
    parts = key.split("/")
    at = [i for i, part in enumerate(parts[:-1]) if part == namespace]
    if not at:
        return None
    end = next((i for i in at if i + 2 < len(parts) and OBJECT_DIRECTORY.fullmatch(parts[i + 1])), at[0])
    return f"s3://{bucket}/" + "/".join(parts[:end + 1]) + "/"


def catalog_prefix(uri: str) -> Optional[str]:
    """`s3://bucket/prefix/_catalog/` from a catalog entry's location."""
    return namespace_prefix(uri, "_catalog")


def claim_capacity(claim: dict) -> Optional[int]:
    """status.capacity.storage (what was allocated), else the request."""
    raw = ((claim.get("status") or {}).get("capacity") or {}).get("storage") or \
        (((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
    try:
        return parse_quantity(str(raw)) if raw else None
    except ValueError:
        return None


@dataclass
class ClaimIndex:
    """The claims listed, indexed once (hostile3 F10: rebuilt per namespace, `du -A` was quadratic)."""

    by_namespace: dict[tuple[str, str], dict] = field(default_factory=dict)
    catalog: dict[str, dict] = field(default_factory=dict)  # claims of catalog entries, any namespace, by name

    @classmethod
    def of(cls, claims: Iterable[dict], catalog_claims: Iterable[dict] = ()) -> "ClaimIndex":
        index = cls()
        for claim in claims:
            meta = claim.get("metadata") or {}
            index.by_namespace[(meta.get("namespace") or "", meta.get("name") or "")] = claim
        for claim in catalog_claims:
            meta = claim.get("metadata") or {}
            index.catalog.setdefault(meta.get("name") or "", claim)
        return index


def attach_copies(rows: dict[str, Usage], claims: Iterable[dict], label: str, all_namespaces: bool) -> None:
    """A namespace's copies of catalog entries (claims labelled `label`, not the catalog's own) count as
    stored by it; with `all_namespaces` a namespace holding only copies gets a row of its own."""
    catalog_row = rows.get(CATALOG_ROW)
    catalog_own = set(catalog_row.claims) if catalog_row else set()
    for claim in claims:
        meta = claim.get("metadata") or {}
        name, namespace = meta.get("name") or "", meta.get("namespace") or ""
        if label not in (meta.get("labels") or {}) or name in catalog_own:
            continue
        row = rows.get(namespace)
        if row is None:
            if not all_namespaces:
                continue
            row = rows[namespace] = Usage(namespace)
        if name not in row.claims:
            row.claims.append(name)


def measure_claims(row: Usage, index: ClaimIndex) -> None:
    """The capacity of the claims `row` holds: a namespace's in that namespace, the catalog's wherever the
    catalog namespace is (found by name among the catalog's claims). One that cannot be measured makes
    STORED unknown ("-"), never 0."""
    if not row.claims or row.unmeasured:  # the claims could not even be listed: said once already
        return
    total = 0
    for name in row.claims:
        claim = index.catalog.get(name) if row.namespace == CATALOG_ROW else index.by_namespace.get((row.namespace,
                                                                                                     name))
        capacity = claim_capacity(claim) if claim else None
        if capacity is None:
            row.problems.append(f"PersistentVolumeClaim {name}: "
                                f"{'not found (or not readable)' if claim is None else 'no capacity'}")
            row.unmeasured = True
            continue
        total += capacity
    row.claim_bytes = total


def referenced(checkpoints: Iterable[dict]) -> dict[str, Usage]:
    """Per namespace: the Ready Checkpoints, their total size, and where their data is (prefixes, claims)."""
    found: dict[str, Usage] = {}
    for body in checkpoints:
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        namespace = meta.get("namespace") or CATALOG_ROW
        usage = found.setdefault(namespace, Usage(namespace))
        if status.get("phase") != "Ready":
            continue
        usage.checkpoints += 1
        usage.referenced += int(status.get("sizeBytes") or 0)
        location = status.get("location") or {}
        uri = (location.get("s3") or {}).get("uri")
        if uri:
            prefix = catalog_prefix(uri) if namespace == CATALOG_ROW else namespace_prefix(uri, namespace)
            if prefix and prefix not in usage.s3_prefixes:
                usage.s3_prefixes.append(prefix)
        parts = [location.get("volume") or {}, *(location.get("volumeParts") or [])]  # parts: one per worker
        for claim in (part.get("claimName") for part in parts if isinstance(part, dict)):
            if claim and claim not in usage.claims:
                usage.claims.append(claim)
    return found


def du_table(rows: list[Usage]) -> str:
    from checkpoint_operator.plugin.views import table

    def size(value: Optional[int]) -> str:
        return "-" if value is None else format_size(value)

    def saved(usage: Usage) -> str:
        # Only what sharing saves; stored above referenced (manifests, uploads in flight, a claim's free space)
        # shows in STORED itself (-o json has the signed figure).
        if not usage.saved or usage.saved < 0:
            return "-"
        return format_size(usage.saved) + (f" ({usage.saved * 100 // usage.referenced}%)" if usage.referenced else "")

    def where(usage: Usage) -> str:
        parts = [*usage.s3_prefixes, *(f"{len(usage.claims)} claim{'s' if len(usage.claims) != 1 else ''}",)
                 ] if usage.claims else list(usage.s3_prefixes)
        return ", ".join(parts) or "-"
    body = [[u.namespace, str(u.checkpoints), size(u.referenced), size(u.stored), saved(u), where(u)] for u in rows]
    return table(["NAMESPACE", "CHECKPOINTS", "REFERENCED", "STORED", "SAVED", "WHERE"], body)
