"""What the plugin prints, from Checkpoint objects (pure functions; tests/unit/plugin/test_views.py).

- `ls`: one row per Checkpoint, kubectl's table style; `-o wide` adds columns.
- `lineage`: from one LIST of the namespace, the parents of a Checkpoint (status.parents, the
  inputs of the job that wrote it, recursively) and its descendants (the Checkpoints whose
  parents name its uid, recursively), as two trees with digests. Visited uids end a branch,
  so a malformed history cannot loop; depth and breadth are bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Optional

import pydantic

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointHead, CheckpointStatus
from checkpoint_operator.api.common import PinnedCheckpoint
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint, ClusterCheckpointHead

MAX_DEPTH = 64
MAX_CHILDREN_SHOWN = 200
USED_BY_SHOWN = 2


def age(created: Optional[str], now: Optional[datetime] = None) -> str:
    """45s, 12m, 3h, 6d, 2y (kubectl's short form)."""
    if not created:
        return "<unknown>"
    then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - then).total_seconds()))
    for unit, size, below in (("s", 1, 60), ("m", 60, 3600), ("h", 3600, 86400), ("d", 86400, 365 * 86400)):
        if seconds < below:
            return f"{seconds // size}{unit}"
    return f"{seconds // (365 * 86400)}y"


def short_digest(digest: Optional[str]) -> str:
    return digest[:19] if digest else "-"


def read_checkpoint(body: Mapping[str, Any]) -> CheckpointHead:
    """A Checkpoint as the API returned it, read with this version's models: fields it does not
    know (a newer operator's) are ignored; a spec it cannot read leaves the head (metadata and
    status), and a status it cannot read the metadata (shown as Pending)."""
    try:
        return Checkpoint.model_validate(body, extra="ignore")
    except pydantic.ValidationError:
        pass
    try:
        return CheckpointHead.model_validate({k: v for k, v in body.items() if k != "spec"}, extra="ignore")
    except pydantic.ValidationError:
        return CheckpointHead.model_validate({"metadata": body.get("metadata") or {}}, extra="ignore")


def producer(checkpoint: CheckpointHead) -> str:
    """Who made it: `tj/NAME` for a snapshot, else the source kind (s3, http, upload, ...)."""
    source = checkpoint.spec.source if isinstance(checkpoint, Checkpoint) else None
    made_by = checkpoint.status.producedBy
    job = (made_by.name if made_by else None) or (source.trainingJob.name if source and source.trainingJob else None)
    if job:
        return f"tj/{job}"
    return source.kind if source else "-"


def used_by(status: CheckpointStatus) -> str:
    names = [u.name for u in status.usedBy or []]
    count = max(status.usedByCount or 0, len(names))
    if not count:
        return "-"
    shown = ",".join(names[:USED_BY_SHOWN])
    more = count - min(len(names), USED_BY_SHOWN)
    return f"{shown}+{more}" if shown and more else shown or str(count)


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def verified(status: CheckpointStatus) -> str:
    condition = next((c for c in status.conditions or [] if c.type == "Verified"), None)
    return condition.status if condition is not None and condition.status != "Unknown" else "-"


def ls_headers(*, wide: bool = False, namespaces: bool = False) -> list[str]:
    headers = ["NAME", "PHASE", "FORMAT", "STEP", "SIZE", "USED-BY", "PRODUCER", "AGE"]
    if wide:
        headers += ["COMPLETE", "RESUMABLE", "FILES", "VERIFIED", "DIGEST"]
    return ["NAMESPACE", *headers] if namespaces else headers


def ls_row(checkpoint: CheckpointHead, *, wide: bool = False, namespaces: bool = False,
           now: Optional[datetime] = None) -> list[str]:
    """One Checkpoint's row of `ls` (what is kept of it while the list is paged)."""
    meta, status = checkpoint.metadata, checkpoint.status
    row = [meta.name, str(checkpoint.phase), _text(status.format), _text(status.step), _text(status.size),
           used_by(status), producer(checkpoint), age(meta.creationTimestamp, now)]
    if wide:
        row += [_text(status.complete), _text(status.resumable), _text(status.fileCount), verified(status),
                _text(status.digest)]
    return [meta.namespace, *row] if namespaces else row


def ls_table(items: list[CheckpointHead], *, wide: bool = False, namespaces: bool = False,
             now: Optional[datetime] = None) -> str:
    rows = [ls_row(c, wide=wide, namespaces=namespaces, now=now)
            for c in sorted(items, key=lambda c: (c.metadata.namespace, c.metadata.name))]
    return table(ls_headers(wide=wide, namespaces=namespaces), rows)


def read_catalog_entry(body: Mapping[str, Any]) -> ClusterCheckpointHead:
    """A ClusterCheckpoint as the API returned it, read as tolerantly as `read_checkpoint`."""
    try:
        return ClusterCheckpoint.model_validate(body, extra="ignore")
    except pydantic.ValidationError:
        pass
    try:
        return ClusterCheckpointHead.model_validate({k: v for k, v in body.items() if k != "spec"}, extra="ignore")
    except pydantic.ValidationError:
        return ClusterCheckpointHead.model_validate({"metadata": body.get("metadata") or {}}, extra="ignore")


def as_catalog_row(body: Mapping[str, Any]) -> CheckpointHead:
    """A ClusterCheckpoint as a row of `ls -A`: no namespace of its own (shown as the catalog's), its source
    kind as producer, its users named with their namespaces."""
    status = dict(body.get("status") or {})
    status["usedBy"] = [{"name": f"{u.get('namespace', '?')}/{u.get('name', '?')}", "uid": u.get("uid", "")}
                        for u in status.get("usedBy") or [] if isinstance(u, Mapping)]
    status.pop("license", None)
    row = {"metadata": {**(body.get("metadata") or {}), "namespace": "(catalog)"}, "status": status}
    spec = body.get("spec")
    source = spec.get("source") if isinstance(spec, Mapping) else None
    if source is not None:
        row["spec"] = {"source": source}
    return read_checkpoint(row)


def catalog_table(items: Iterable[ClusterCheckpointHead], *, wide: bool = False,
                  now: Optional[datetime] = None) -> str:
    """`ls --catalog`: what every namespace may use as {clusterCheckpoint: NAME}, with its license and source."""
    headers = ["NAME", "PHASE", "FORMAT", "SIZE", "USED-BY", "LICENSE", "SOURCE", "AGE"]
    if wide:
        headers += ["FILES", "COMMIT", "DIGEST"]
    rows = []
    for entry in sorted(items, key=lambda e: e.metadata.name):
        meta, status = entry.metadata, entry.status
        source = status.source
        kind = entry.spec.source.kind if isinstance(entry, ClusterCheckpoint) else None
        row = [meta.name, str(entry.phase), _text(status.format), _text(status.size),
               _text(status.usedByCount or None), _text(status.license),
               _text((source.uri if source else None) or kind), age(meta.creationTimestamp, now)]
        if wide:
            commit = (source.resolvedRevision if source else None) or ""
            row += [_text(status.fileCount), _text(commit[:12] or None), _text(status.digest)]
        rows.append(row)
    return table(headers, rows)


def table(headers: list[str], rows: list[list[str]]) -> str:
    cells = [headers, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)


# --- lineage ---------------------------------------------------------------------------------------

@dataclass
class Node:
    name: str
    uid: str
    digest: Optional[str]
    phase: Optional[str] = None
    step: Optional[int] = None
    producer: Optional[str] = None
    gone: bool = False            # a parent that no longer exists (its pinned name and digest remain)
    repeated: bool = False        # already shown above in this tree: not expanded again
    truncated: int = 0            # children left out (breadth or depth bound)
    children: list["Node"] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "uid": self.uid, "digest": self.digest, "phase": self.phase,
                               "step": self.step, "producer": self.producer,
                               "children": [c.to_json() for c in self.children]}
        if self.gone:
            out["gone"] = True
        if self.repeated:
            out["repeated"] = True
        if self.truncated:
            out["truncated"] = self.truncated
        return out


@dataclass
class Lineage:
    root: Node
    parents: list[Node]
    descendants: list[Node]

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": {k: v for k, v in self.root.to_json().items() if k != "children"},
                "parents": [p.to_json() for p in self.parents],
                "descendants": [d.to_json() for d in self.descendants]}


@dataclass(frozen=True, slots=True)
class LineageItem:
    """What a lineage follows and shows of one Checkpoint: what `lineage` keeps of each Checkpoint of the
    namespace while the list is paged (a parsed Checkpoint is ~10 KiB of Python objects; this, ~0.3)."""

    name: str
    uid: str
    digest: Optional[str]
    phase: str
    step: Optional[int]
    producer: str
    parents: tuple[PinnedCheckpoint, ...]


def for_lineage(checkpoint: CheckpointHead) -> LineageItem:
    meta, status = checkpoint.metadata, checkpoint.status
    return LineageItem(meta.name, meta.uid, status.digest, str(checkpoint.phase), status.step, producer(checkpoint),
                       tuple(status.parents or ()))


def _node(item: LineageItem) -> Node:
    return Node(item.name, item.uid, item.digest, item.phase, item.step, item.producer)


def build_lineage(items: Iterable[CheckpointHead | LineageItem], name: str,
                  entries: Iterable[ClusterCheckpointHead] = ()) -> Optional[Lineage]:
    """The lineage of `name` among `items` (one namespace's Checkpoints); None if it is not there. A parent
    that is a catalog entry is found among `entries` (the ClusterCheckpoints): a root of the tree."""
    by_uid = {i.uid: i for i in (c if isinstance(c, LineageItem) else for_lineage(c) for c in items)}
    catalog = {e.metadata.uid: e for e in entries}
    root = next((c for c in by_uid.values() if c.name == name), None)
    if root is None:
        return None
    children: dict[str, list[LineageItem]] = {}
    for checkpoint in by_uid.values():
        for parent in checkpoint.parents:
            children.setdefault(parent.uid, []).append(checkpoint)

    # Each Checkpoint is expanded once per tree (later occurrences say "shown above"): per path, a
    # ladder of jobs taking two inputs each doubled the tree with every layer (2^layers lines).
    expanded: set[str] = set()

    def up(checkpoint: LineageItem, depth: int) -> list[Node]:
        nodes = []
        for pinned in checkpoint.parents:
            uid = pinned.uid
            if pinned.kind == "ClusterCheckpoint":
                entry = catalog.get(uid)
                if entry is None:
                    nodes.append(Node(pinned.name, uid, pinned.digest, gone=True, producer="catalog"))
                else:
                    status = entry.status
                    nodes.append(Node(entry.metadata.name, uid, status.digest, str(entry.phase), status.step,
                                      "catalog"))
                continue
            found = by_uid.get(uid)
            if found is None:
                nodes.append(Node(pinned.name, uid, pinned.digest, gone=True))
                continue
            node = _node(found)
            if uid in expanded or depth >= MAX_DEPTH:
                node.repeated, node.truncated = uid in expanded, 0 if uid in expanded else 1
            else:
                expanded.add(uid)
                node.children = up(found, depth + 1)
            nodes.append(node)
        return nodes

    shown: set[str] = set()

    def down(uid: str, depth: int) -> list[Node]:
        kids = sorted(children.get(uid, []), key=lambda c: c.name)
        nodes = []
        for kid in kids[:MAX_CHILDREN_SHOWN]:
            node = _node(kid)
            if node.uid in shown or depth >= MAX_DEPTH:
                node.repeated = node.uid in shown
            else:
                shown.add(node.uid)
                node.children = down(node.uid, depth + 1)
            nodes.append(node)
        if len(kids) > MAX_CHILDREN_SHOWN:
            nodes[-1].truncated = len(kids) - MAX_CHILDREN_SHOWN
        return nodes

    root_uid = root.uid
    shown.add(root_uid)
    expanded.add(root_uid)
    return Lineage(_node(root), up(root, 0), down(root_uid, 0))


def describe_node(node: Node) -> str:
    if node.gone:
        return f"{node.name}  (deleted; pinned {short_digest(node.digest)})"
    parts = [node.name, node.phase or "-", short_digest(node.digest)]
    if node.step is not None:
        parts.append(f"step {node.step}")
    if node.producer:
        parts.append(node.producer)
    text = "  ".join(parts)
    if node.repeated:
        text += "  (shown above)"
    return text


def render_tree(nodes: list[Node], prefix: str = "") -> list[str]:
    lines = []
    for i, node in enumerate(nodes):
        last = i == len(nodes) - 1
        lines.append(f"{prefix}{'└── ' if last else '├── '}{describe_node(node)}")
        lines += render_tree(node.children, prefix + ("    " if last else "│   "))
        if node.truncated:
            lines.append(f"{prefix}{'    ' if last else '│   '}… {node.truncated} more")
    return lines


def render_lineage(lineage: Lineage) -> str:
    lines = [describe_node(lineage.root)]
    lines.append("parents (the inputs of the job that wrote it, and theirs):")
    lines += render_tree(lineage.parents) or ["    (none: imported, pushed or trained from scratch)"]
    lines.append("descendants (written by jobs that used it):")
    lines += render_tree(lineage.descendants) or ["    (none)"]
    return "\n".join(lines)
