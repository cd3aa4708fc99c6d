"""Pushes, pulls and verifications: the requests (annotations), the pods that serve them and
how their results read (pure; reconcile/checkpoint_upload.py and reconcile/annotation_requests.py apply them).

A request is an annotation whose value names it (a timestamp, made unique by the plugin). The
pod that serves it carries that value (`ckpt.dev/request`), so a result is matched to its
request, and the operator removes the annotation only if it still holds that value (a JSON
patch `test`): a newer request made meanwhile is served next, never dropped.

- upload (spec.source.upload): `ckpt.dev/upload-requested` with `ckpt.dev/upload-digest`. On
  the volume store a receiver pod on the Checkpoint's own PVC waits for the push (agent receive);
  on the s3 store the data is already under status.upload.uri and a pod verifies it there.
- verify: `ckpt.dev/verify-requested` on a Ready Checkpoint: a pod re-reads the data where it
  lives (agent verify); the result becomes the condition Verified.
- pull: `ckpt.dev/pull-requested` on a Ready Checkpoint of the volume store: a pod mounts its
  data read-only and holds while `kubectl ckpt pull` streams it out (agent pack, by exec).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from checkpoint_operator.protocol.results import TransferReport
from checkpoint_operator.api.checkpoint import Checkpoint, Location, VolumeLocation
from checkpoint_operator.api.common import parse_quantity
from checkpoint_operator.api.upload import (DIGEST_PATTERN, PULL_REQUEST_ANNOTATION, UPLOAD_DIGEST_ANNOTATION,
                                            UPLOAD_REQUEST_ANNOTATION, VERIFY_REQUEST_ANNOTATION, UploadStatus)
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import agent_commands, volume_snapshots
from checkpoint_operator.logic.agent_pods import AGENT_DATA_MOUNT, agent_container, agent_pod
from checkpoint_operator.logic.naming import MAX_LABEL_NAME, agent_pod_name, bounded_name
from checkpoint_operator.logic.quantity import format_size
from checkpoint_operator.logic.status import ConditionChange
from checkpoint_operator.logic.workload import (IMPORT_SIZE_ANNOTATION, LABEL_CHECKPOINT, LABEL_COMPONENT,
                                                LABEL_MANAGED_BY, MANAGER, checkpoint_labels, import_claim_name,
                                                import_data_dir, owner_reference)

REQUEST_ANNOTATION = "ckpt.dev/request"      # on a serving pod: the request it serves
UPLOAD_DIR = import_data_dir()               # where a push lands on the volume store (status.location path "data")
PULL_WORK_DIR = "/checkpoint-work"           # a pull pod's emptyDir, where agent hold sees the pulls
MANIFEST_MOUNT = "/checkpoint-manifest.json"  # volume store: the checkpoint's stored manifest, mounted alone
IDLE_SECONDS = 900.0                         # a receiver or pull pod without activity this long ends
COMPONENTS = {"upload": "upload", "verify": "verify", "pull": "pull"}
SERVED_WHEN_READY = (VERIFY_REQUEST_ANNOTATION, PULL_REQUEST_ANNOTATION)
MAX_PROBLEMS_SHOWN = 3


def upload_pod_name(checkpoint_name: str) -> str:
    return agent_pod_name(checkpoint_name, "upload")


def verify_pod_name(checkpoint_name: str) -> str:
    return agent_pod_name(checkpoint_name, "verify")


def pull_pod_name(checkpoint_name: str) -> str:
    return agent_pod_name(checkpoint_name, "pull")


def has_ready_request(annotations: Optional[dict[str, Any]]) -> bool:
    """A request a Ready Checkpoint serves (its events must wake it)."""
    return any((annotations or {}).get(key) for key in SERVED_WHEN_READY)


# --- upload ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UploadRequest:
    value: str                      # the request annotation's value
    digest: str                     # what the pushed data must have
    size_bytes: Optional[int] = None  # declared by the push (the volume's size): sizes the pod's deadline


def upload_request(checkpoint: Checkpoint) -> Union[UploadRequest, str, None]:
    """None: no push requested; a str: why the request cannot be served (names the annotation)."""
    meta = checkpoint.metadata
    value = meta.annotation(UPLOAD_REQUEST_ANNOTATION)
    if not value:
        return None
    digest = meta.annotation(UPLOAD_DIGEST_ANNOTATION) or ""
    if not re.fullmatch(DIGEST_PATTERN, digest):
        shown = f"is {digest!r}" if digest else "is missing"
        return (f"annotation {UPLOAD_DIGEST_ANNOTATION} {shown}: it must hold the digest of the data to push "
                f"(sha256:<64 lower-case hex digits>; kubectl ckpt push sets it)")
    size = meta.annotation(IMPORT_SIZE_ANNOTATION)
    try:
        size_bytes = parse_quantity(size) if size else None
    except ValueError as exc:
        return f"annotation {IMPORT_SIZE_ANNOTATION}: {exc} (kubectl ckpt push sets it to the data's size)"
    return UploadRequest(value, digest, size_bytes)


def waiting_message(checkpoint: Checkpoint, target: UploadStatus) -> str:
    """How to push into `target` (status.upload)."""
    meta = checkpoint.metadata
    message = f"waiting for data: run kubectl ckpt push DIR --name {meta.name} -n {meta.namespace}"
    if target.uri:  # object storage: the data may also be uploaded there directly
        message += (f" (or upload it with its manifest to {target.uri} and set the annotation "
                    f"{UPLOAD_REQUEST_ANNOTATION})")
    return message


def build_receiver_pod(checkpoint: Checkpoint, config: OperatorConfig, request: UploadRequest,
                       max_size: int, sync: bool = False) -> dict[str, Any]:
    """volume store: the pod a push streams into (agent unpack by exec); it checks what arrived.
    `sync`: it syncs the filesystem after the check (a volume snapshot of the data follows)."""
    mount = [{"name": "data", "mountPath": AGENT_DATA_MOUNT}]
    command = agent_commands.receive(UPLOAD_DIR, digest=request.digest, idle=IDLE_SECONDS, max_size=max_size,
                                     sync=sync)
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": import_claim_name(checkpoint)}}]
    return _serving_pod(checkpoint, config, "upload", upload_pod_name(checkpoint.metadata.name), request.value,
                        [agent_container("receive", command, config, mounts=mount)], volumes,
                        size_bytes=request.size_bytes)


def build_upload_check_pod(checkpoint: Checkpoint, config: OperatorConfig, request: UploadRequest, uri: str,
                           env: list[dict[str, Any]], max_size: int) -> dict[str, Any]:
    """s3 store: the pod that verifies the pushed objects against their manifest, in place."""
    command = agent_commands.verify(uri, digest=request.digest, max_size=max_size)
    return _serving_pod(checkpoint, config, "upload", upload_pod_name(checkpoint.metadata.name), request.value,
                        [agent_container("verify", command, config, mounts=[], env=env)], [],
                        size_bytes=request.size_bytes)


# --- verify and pull -----------------------------------------------------------------------------------

def location_volumes(location: Location, *, read_only: bool = True, restore_access_mode: str = "ReadWriteOnce",
                     labels: Optional[dict[str, str]] = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) that show a volume location's files at AGENT_DATA_MOUNT, and only them
    (the root files of an output, listed as items, are mounted one by one), and a volume's stored
    manifest, alone, at MANIFEST_MOUNT (it lives outside the checkpoint's directory). A location in
    a volume snapshot is a volume of the pod's own restored from it (logic/volume_snapshots.py),
    with `labels`; it names no stored manifest (the agent then reads the data alone). A checkpoint
    assembled across workers (logic/parts.py): its parts side by side in that one directory, from
    the workers' claims or from a volume restored from each worker's snapshot."""
    volumes: list[dict[str, Any]]
    shown: list[tuple[str, str, Optional[list[str]]]]  # (volume, path in it, items)
    manifest: Optional[tuple[str, str]] = None  # (volume, path in it)
    if location.snapshots:  # one snapshot, or one per worker's part: each a volume restored from it
        restored: dict[str, str] = {}
        volumes, shown = [], []
        for snapshot in location.snapshots:
            if snapshot.volumeSnapshotName not in restored:
                restored[snapshot.volumeSnapshotName] = "data" if not restored else f"data-{len(restored)}"
                volumes.append(volume_snapshots.restored_volume(restored[snapshot.volumeSnapshotName], snapshot,
                                                                restore_access_mode, labels or {}))
            shown.append((restored[snapshot.volumeSnapshotName], snapshot.path, snapshot.items))
    elif location.volumeParts or location.volume is not None:
        claims: dict[str, str] = {}
        volumes, shown = [], []
        for volume in location.volumeParts or ([location.volume] if location.volume is not None else []):
            if volume.claimName not in claims:
                claims[volume.claimName] = "data" if not claims else f"data-{len(claims)}"
                volumes.append({"name": claims[volume.claimName],
                                "persistentVolumeClaim": {"claimName": volume.claimName, "readOnly": read_only}})
            shown.append((claims[volume.claimName], volume.path, volume.items))
            if volume.manifest and manifest is None:
                manifest = (claims[volume.claimName], volume.manifest)
    else:
        raise ValueError("the location is neither on a volume nor in a volume snapshot")
    mounts = []
    for name, where, items in shown:
        sub_path = posixpath.normpath(where.lstrip("/") or ".")
        rels: list[Optional[str]] = [*items] if items else [None]
        for rel in rels:
            path = sub_path if rel is None else posixpath.normpath(posixpath.join(sub_path, rel))
            mount = {"name": name, "readOnly": read_only,
                     "mountPath": AGENT_DATA_MOUNT if rel is None else posixpath.join(AGENT_DATA_MOUNT, rel)}
            if path != ".":
                mount["subPath"] = path
            mounts.append(mount)
    if manifest:
        mounts.append({"name": manifest[0], "readOnly": True, "mountPath": MANIFEST_MOUNT,
                       "subPath": posixpath.normpath(manifest[1])})
    return volumes, mounts


def stored_manifest(located: Union[Location, VolumeLocation, None]) -> Optional[str]:
    """Where a volume location's pod sees its stored manifest (None: none is stored); a location
    in workers' parts has it in one of them (location_volumes mounts it)."""
    if isinstance(located, Location):
        volumes = located.volumeParts or ([located.volume] if located.volume is not None else [])
        return MANIFEST_MOUNT if any(v.manifest for v in volumes) else None
    return MANIFEST_MOUNT if located is not None and located.manifest else None


def build_verify_pod(checkpoint: Checkpoint, config: OperatorConfig, value: str,
                     s3_env: list[dict[str, Any]]) -> dict[str, Any]:
    """Re-reads the data where it lives: the store's objects, or the volume mounted read-only."""
    status = checkpoint.status
    location = status.location or Location()
    if location.s3 is not None:
        container = agent_container("verify", agent_commands.verify(location.s3.uri, digest=status.digest),
                                    config, mounts=[], env=s3_env)
        volumes: list[dict[str, Any]] = []
    else:
        located = _located(checkpoint)
        volumes, mounts = location_volumes(located, restore_access_mode=config.volume_restore_access_mode,
                                           labels=checkpoint_labels(checkpoint, "verify"))
        container = agent_container("verify", agent_commands.verify(AGENT_DATA_MOUNT, digest=status.digest,
                                                                    manifest=stored_manifest(located)),
                                    config, mounts=mounts)
    return _serving_pod(checkpoint, config, "verify", verify_pod_name(checkpoint.metadata.name), value, [container],
                        volumes, size_bytes=status.sizeBytes)


def build_pull_pod(checkpoint: Checkpoint, config: OperatorConfig, value: str) -> dict[str, Any]:
    """volume store: mounts the data read-only and holds while pulls stream it out."""
    volumes, mounts = location_volumes(_located(checkpoint), restore_access_mode=config.volume_restore_access_mode,
                                       labels=checkpoint_labels(checkpoint, "pull"))
    volumes.append({"name": "work", "emptyDir": {"sizeLimit": "16Mi"}})
    mounts.append({"name": "work", "mountPath": PULL_WORK_DIR})
    container = agent_container("hold", agent_commands.hold(PULL_WORK_DIR, idle=IDLE_SECONDS), config, mounts=mounts)
    return _serving_pod(checkpoint, config, "pull", pull_pod_name(checkpoint.metadata.name), value, [container],
                        volumes, size_bytes=checkpoint.status.sizeBytes)


def _located(checkpoint: Checkpoint) -> Location:
    """The Checkpoint's location on a volume (or its workers' volumes) or in a volume snapshot."""
    location = checkpoint.status.location
    if location is None or not location.on_volumes:
        raise ValueError(f"Checkpoint {checkpoint.metadata.name} has no volume location")
    return location


def pull_command(volume: Union[Location, VolumeLocation, None] = None, digest: Optional[str] = None) -> list[str]:
    """What `kubectl ckpt pull` runs in the pull pod (`digest`: the Checkpoint's recorded one; its
    stored manifest goes first when it has that digest)."""
    return agent_commands.pack(AGENT_DATA_MOUNT, session_dir=PULL_WORK_DIR, digest=digest,
                               manifest=stored_manifest(volume))


def push_command(max_size: Optional[int], name: Optional[str]) -> list[str]:
    """What `kubectl ckpt push` runs in the receiver pod (stdin: the tar stream)."""
    return agent_commands.unpack(UPLOAD_DIR, max_size=max_size, name=name)


def inventory_command() -> list[str]:
    """What a push runs first in the receiver pod: what an interrupted push left there (every
    file, as JSON: the plugin sends only the others)."""
    return agent_commands.scan(UPLOAD_DIR, single=True, result=False)


def _serving_pod(checkpoint: Checkpoint, config: OperatorConfig, component: str, name: str, request: str,
                 containers: list[dict[str, Any]], volumes: list[dict[str, Any]], *,
                 size_bytes: Optional[int]) -> dict[str, Any]:
    meta = checkpoint.metadata
    metadata = {"name": name, "namespace": meta.namespace, "annotations": {REQUEST_ANNOTATION: request},
                "labels": {LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: COMPONENTS[component],
                           LABEL_CHECKPOINT: bounded_name(meta.name, MAX_LABEL_NAME)},
                "ownerReferences": [owner_reference(checkpoint)]}
    return agent_pod(metadata, config, containers, volumes, size_bytes=size_bytes)


def served_request(pod: dict[str, Any]) -> Optional[str]:
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(REQUEST_ANNOTATION)


# --- results ---------------------------------------------------------------------------------------

def verified_condition(result: TransferReport, where: str) -> ConditionChange:
    if result.verified and result.checkpoint is not None:
        m = result.checkpoint
        return ConditionChange("Verified", "True", "Verified",
                               f"all {m.fileCount} files ({format_size(m.sizeBytes)}) read again at {where} match "
                               f"the manifest, digest {m.digest}")
    count = result.problemCount or len(result.problems)
    return ConditionChange("Verified", "False", "DataMismatch",
                           f"{count} problem{'s' if count != 1 else ''} at {where}: "
                           f"{result.problems_text(MAX_PROBLEMS_SHOWN)}")


def verifying_condition(where: str, request: str) -> ConditionChange:
    return ConditionChange("Verified", "Unknown", "Verifying", f"reading every file again at {where} (request {request})")


def verify_error_condition(message: str) -> ConditionChange:
    return ConditionChange("Verified", "Unknown", "VerifyError", message)


def describe_location(location: Optional[Location]) -> str:
    if location is not None and location.s3 is not None:
        return location.s3.uri
    if location is not None and location.snapshot is not None:
        return f"VolumeSnapshot {location.snapshot.volumeSnapshotName}:{location.snapshot.path}"
    if location is not None and location.snapshotParts:
        snapshot = location.snapshotParts[0]
        return f"{len(location.snapshotParts)} VolumeSnapshots ({snapshot.volumeSnapshotName}:{snapshot.path}, ...)"
    if location is not None and location.volumeParts:
        first = location.volumeParts[0]
        return f"{len(location.volumeParts)} volumes ({first.claimName}:{first.path}, ...)"
    volume = location.volume if location is not None else None
    return f"volume {volume.claimName}:{volume.path}" if volume is not None else "volume None:."
