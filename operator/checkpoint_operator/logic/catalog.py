"""The catalog of shared checkpoints (ClusterCheckpoints): names, the objects built for an entry, and the
decisions about its copies and its users (pure; reconcile/clustercheckpoint.py and
reconcile/catalog_copies.py apply them, docs/catalog.md explains the design).

- The entry is imported once, by an agent pod in the operator's namespace (the catalog namespace):
  a cluster-scoped object has no namespace of its own, no tenant's Secret is needed (a public source,
  or a Secret of the operator's namespace), and no tenant can touch that pod or its claim.
- s3 store: the data lands under `<prefix>/_catalog/`, which every namespace's credentials read and
  none writes; a job's download reads it with its namespace's credentials, pinned to the digest.
- volume store: the catalog's copy is a claim of the operator's namespace. A pod cannot mount a claim
  of another namespace, so each namespace that uses the entry gets a copy of its own, made once on
  first use by an import pod in that namespace (the source again, at the commit the entry recorded)
  and verified: its digest must equal the entry's. The copy's claim is owned by the entry, so it goes
  when the entry is deleted (which waits until no job of any namespace uses it).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from checkpoint_operator import API_VERSION
from checkpoint_operator.api.checkpoint import Location, VolumeLocation
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint, ClusterCheckpointStatus
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic.agent_pods import agent_pod
from checkpoint_operator.logic.naming import MAX_LABEL_NAME, bounded_name, child_name
from checkpoint_operator.logic.import_sources import import_spec_of
from checkpoint_operator.logic.workload import (IMPORT_DIR, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGER,
                                                SOURCE_SECRET_ANNOTATION)

CATALOG_DIRECTORY = "_catalog"   # under the store's prefix: no namespace is named so (no '_' in a namespace)
LABEL_CLUSTER_CHECKPOINT = "ckpt.dev/clustercheckpoint"
LABEL_CLUSTER_CHECKPOINT_UID = "ckpt.dev/clustercheckpoint-uid"
# On a namespace's copy: the digest its copy pod found, equal to the entry's (written once verified).
COPIED_DIGEST_ANNOTATION = "ckpt.dev/copied-digest"
# On a namespace's copy: the UID of the copy pod the operator created (only its result is read).
COPY_POD_ANNOTATION = "ckpt.dev/copy-pod-uid"
IMPORT_SIZE_ANNOTATION = "ckpt.dev/volume-size"  # as on a Checkpoint: the size of the catalog's claim
COPY_MARGIN = 64 * 1024 * 1024
# (init containers, containers, volumes) of an agent pod, as a store builds them (storage/base.py PodParts).
PodParts = tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]


def _base(entry: ClusterCheckpoint) -> str:
    return bounded_name(f"catalog-{entry.metadata.name}-{entry.metadata.uid[:5]}", 200)


def catalog_claim_name(entry: ClusterCheckpoint) -> str:
    """The catalog's copy (volume store), in the operator's namespace."""
    return child_name(_base(entry), "data")


def import_pod_name(entry: ClusterCheckpoint) -> str:
    return child_name(_base(entry), "import")


def copy_claim_name(entry: ClusterCheckpoint) -> str:
    """A namespace's copy (volume store): one per namespace, whatever the number of jobs there."""
    return child_name(_base(entry), "copy")


def copy_pod_name(entry: ClusterCheckpoint) -> str:
    return child_name(_base(entry), "copy")


def owner_reference(entry: ClusterCheckpoint) -> dict[str, Any]:
    """A namespaced object may be owned by a cluster-scoped one: it is garbage-collected with the entry."""
    return {"apiVersion": entry.apiVersion or API_VERSION, "kind": entry.kind, "name": entry.metadata.name,
            "uid": entry.metadata.uid, "controller": True, "blockOwnerDeletion": True}


def labels(entry: ClusterCheckpoint, component: str) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: component,
            LABEL_CLUSTER_CHECKPOINT: bounded_name(entry.metadata.name, MAX_LABEL_NAME),
            LABEL_CLUSTER_CHECKPOINT_UID: entry.metadata.uid}


def _metadata(entry: ClusterCheckpoint, name: str, namespace: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(entry, component),
            "ownerReferences": [owner_reference(entry)]}


def _claim(entry: ClusterCheckpoint, config: OperatorConfig, name: str, namespace: str, size: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if config.default_storage_class:
        spec["storageClassName"] = config.default_storage_class
    return {"metadata": _metadata(entry, name, namespace, "import"), "spec": spec}


def build_catalog_claim(entry: ClusterCheckpoint, config: OperatorConfig, namespace: str) -> dict[str, Any]:
    size = entry.metadata.annotation(IMPORT_SIZE_ANNOTATION) or config.default_output_size
    return _claim(entry, config, catalog_claim_name(entry), namespace, size)


def copy_size(entry: ClusterCheckpoint, config: OperatorConfig) -> str:
    """The entry's size and a margin (bytes), else the catalog claim's size."""
    if entry.status.sizeBytes is None:
        return entry.metadata.annotation(IMPORT_SIZE_ANNOTATION) or config.default_output_size
    return str(int(entry.status.sizeBytes * 1.1) + COPY_MARGIN)


def build_copy_claim(entry: ClusterCheckpoint, config: OperatorConfig, namespace: str) -> dict[str, Any]:
    return _claim(entry, config, copy_claim_name(entry), namespace, copy_size(entry, config))


def build_import_pod(entry: ClusterCheckpoint, config: OperatorConfig, namespace: str,
                     parts: PodParts) -> dict[str, Any]:
    init_containers, containers, volumes = parts
    metadata = _metadata(entry, import_pod_name(entry), namespace, "import")
    secret = import_spec_of(entry.spec.source).secret
    if secret:  # the admission policy holds every Secret reference of the pod to this one
        metadata["annotations"] = {SOURCE_SECRET_ANNOTATION: secret}
    return agent_pod(metadata, config, containers, volumes, init_containers)


def build_copy_pod(entry: ClusterCheckpoint, config: OperatorConfig, namespace: str,
                   parts: PodParts) -> dict[str, Any]:
    init_containers, containers, volumes = parts
    return agent_pod(_metadata(entry, copy_pod_name(entry), namespace, "import"), config, containers, volumes,
                     init_containers, size_bytes=entry.status.sizeBytes)


def copy_location(claim: str) -> Location:
    return Location(volume=VolumeLocation(claimName=claim, path=IMPORT_DIR))


def copy_is_verified(claim: Optional[Mapping[str, Any]], entry: ClusterCheckpoint) -> bool:
    """The namespace's copy holds the entry's data: made for this entry (owner uid) and its digest checked."""
    if claim is None or entry.status.digest is None:
        return False
    meta = claim.get("metadata") or {}
    owned = any(o.get("uid") == entry.metadata.uid for o in meta.get("ownerReferences") or [])
    return owned and (meta.get("annotations") or {}).get(COPIED_DIGEST_ANNOTATION) == entry.status.digest


def copy_discardable(claim: Optional[Mapping[str, Any]], entry: ClusterCheckpoint) -> bool:
    """A namespace's copy that did not verify may be deleted (hostile3 F4: kept, its bytes made every
    later copy into it fail): the entry is its only owner (a Checkpoint that adopted a path of it
    owns it too: then it stays), it carries no verified digest, and it is not already going."""
    if claim is None:
        return False
    meta = claim.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    return (bool(owners) and all(o.get("uid") == entry.metadata.uid for o in owners)
            and COPIED_DIGEST_ANNOTATION not in (meta.get("annotations") or {})
            and not meta.get("deletionTimestamp"))


def copy_refusal(entry: ClusterCheckpoint) -> Optional[str]:
    """Why no namespace can get a copy of this entry on the volume store, or None."""
    if entry.spec.source.needs_secret:
        return (f"ClusterCheckpoint {entry.metadata.name}: its source needs a Secret of the operator's namespace, "
                "which a copy made in another namespace cannot read; on the volume store such an entry can be "
                "used only where a volume snapshot class is configured, or with the s3 store (docs/catalog.md)")
    return None


def copy_mismatch(entry: ClusterCheckpoint, digest: str) -> str:
    return (f"the copy of ClusterCheckpoint {entry.metadata.name} has digest {digest}, not the entry's "
            f"{entry.status.digest}: the source changed since it was imported (re-import it as a new entry)")


# --- users, of every namespace --------------------------------------------------------------------

def used_by_status(users: Iterable[tuple[str, str, str]]) -> ClusterCheckpointStatus:
    """status.usedByCount from (namespace, name, uid) of the live users. The entry is readable by every
    authenticated identity, so its status names no job nor namespace (hostile3 F7): `usedBy` is
    removed (an earlier version listed them there); who uses it goes where only administrators read."""
    return ClusterCheckpointStatus(usedBy=None, usedByCount=len(set(users)))


def deletion_blocked_message(users: list[tuple[str, str]]) -> str:
    """The entry's status message while its deletion waits: counts only (every tenant reads it)."""
    namespaces = len({ns for ns, _ in users})
    return (f"deletion waits: in use by {len(set(users))} TrainingJob(s) in {namespaces} namespace(s); it "
            f"completes by itself when they finish (the Events of the operator's namespace name them)")


def deletion_blocked_by(users: list[tuple[str, str]]) -> str:
    """The same, naming the jobs: an Event in the operator's namespace, which only administrators read."""
    names = [f"{ns}/{name}" for ns, name in sorted(set(users))]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"deletion waits: in use by TrainingJob(s) {shown}; it completes by itself when they finish"
