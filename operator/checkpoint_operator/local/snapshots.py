"""The local cluster's CSI snapshot controller: VolumeSnapshots of claims, and restores from them.

It does for ``snapshot.storage.k8s.io/v1`` what external-snapshotter's two controllers do (the common
``snapshot-controller`` and the driver's ``csi-snapshotter`` sidecar), for dynamic snapshots of a
claim and for the fields this project uses; the CRDs it serves are external-snapshotter's own
(``local/crds/``, copied from kubernetes-csi/external-snapshotter at commit
``afb2f0d85e00e40cda621549d56fda11ccd3558b``), so the emulated API validates every object by
their schemas and CEL rules.

A VolumeSnapshot with ``source.persistentVolumeClaimName``:

1. gets the finalizer ``snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection`` (and
   ``...volumesnapshot-bound-protection`` once bound to a content whose policy is Delete);
2. its class is ``spec.volumeSnapshotClassName``, else the default class of the claim's driver
   (annotation ``snapshot.storage.kubernetes.io/is-default-class``); a missing class, an unbound
   or missing claim, a claim being deleted or a class of another driver is an error in
   ``status.error`` with ``readyToUse: false`` and a Warning event, retried;
3. the source claim gets ``snapshot.storage.kubernetes.io/pvc-as-source-protection`` (its deletion
   waits) until no snapshot of it is still being made;
4. a VolumeSnapshotContent ``snapcontent-<snapshot uid>`` is created (``volumeSnapshotRef``,
   ``source.volumeHandle``, the class's ``driver`` and ``deletionPolicy``, the finalizer
   ``snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection``), event
   ``CreatingSnapshot``;
5. the driver's part (the sidecar): the content is annotated
   ``snapshot.storage.kubernetes.io/volumesnapshot-being-created``, the volume's directory is copied
   to ``<data>/snapshots/<content name>`` (a reflink per file where the filesystem supports it,
   else a copy: never hard links, which would let a later write to the volume reach the
   snapshot), under a temporary name renamed into place, then the content's status says
   ``snapshotHandle``, ``creationTime`` (ns), ``readyToUse: true`` and ``restoreSize`` (the volume's
   capacity in bytes) and the annotation is removed. A copy a crash cut short is made again;
6. the snapshot's status follows its content: ``boundVolumeSnapshotContentName``, ``creationTime``,
   ``readyToUse``, ``restoreSize`` (a quantity), ``error``.

Deleting a VolumeSnapshot: while a claim is being restored from it (Pending, ``dataSource`` this
snapshot) the deletion waits (event ``SnapshotDeletePending``); then its content is annotated
``...volumesnapshot-being-deleted`` and, with ``deletionPolicy: Delete``, deleted: the sidecar
removes the copy and the content's finalizer, and the snapshot's bound finalizer goes once its
content is gone. ``Retain`` keeps the content and the copy.

A copy is made when the controller gets to it (the writers of the volume are not paused): as a
CSI snapshot of a volume in use, it holds what was on the disk at that moment. What this does not
do: pre-provisioned snapshots (``source.volumeSnapshotContentName``) are bound but never created,
group snapshots, snapshot secrets, VolumeSnapshotContent deletion by a user before its snapshot.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import secrets
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from checkpoint_operator.agent import fstree
from checkpoint_operator.local.events import NORMAL, WARNING, EventRecorder
from checkpoint_operator.local.kubelet import meta
from checkpoint_operator.local.podview import clone_or_copy, remove_tree
from checkpoint_operator.local.server import ApiClient, ApiError
from checkpoint_operator.local.storage import (DEFAULT_SNAPSHOT_CLASS_ANNOTATION, SNAPSHOT_GROUP, RestoreSource,
                                               VolumeProvisioner)

logger = logging.getLogger(__name__)

SNAPSHOTS = "snapshot.storage.k8s.io/v1/volumesnapshots"
CONTENTS = "snapshot.storage.k8s.io/v1/volumesnapshotcontents"
SNAPSHOT_CLASSES = "snapshot.storage.k8s.io/v1/volumesnapshotclasses"
CLAIMS = "v1/persistentvolumeclaims"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
CRD_DIR = Path(__file__).parent / "crds"
CRD_FILES = ("snapshot.storage.k8s.io_volumesnapshotclasses.yaml", "snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
             "snapshot.storage.k8s.io_volumesnapshots.yaml")

AS_SOURCE_FINALIZER = "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection"
BOUND_FINALIZER = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection"
CONTENT_FINALIZER = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"
PVC_FINALIZER = "snapshot.storage.kubernetes.io/pvc-as-source-protection"
BEING_CREATED = "snapshot.storage.kubernetes.io/volumesnapshot-being-created"
BEING_DELETED = "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted"
COMPONENT = "snapshot-controller"


def snapshot_crds() -> list[dict[str, Any]]:
    """External-snapshotter's CRDs of VolumeSnapshotClass, VolumeSnapshotContent and VolumeSnapshot."""
    return [yaml.safe_load((CRD_DIR / name).read_text()) for name in CRD_FILES]


async def install_crds(api: ApiClient) -> None:
    """Create the snapshot CRDs in the API unless they are there (as installing external-snapshotter does)."""
    for crd in snapshot_crds():
        if await api.get(CRDS, None, crd["metadata"]["name"]) is None:
            try:
                await api.create(CRDS, None, crd)
            except ApiError as exc:
                if exc.status != 409:
                    raise


def binary_quantity(size: int) -> str:
    """A byte count as resource.NewQuantity(size, BinarySI) prints it (10737418240 -> 10Gi)."""
    for suffix, factor in (("Ei", 2 ** 60), ("Pi", 2 ** 50), ("Ti", 2 ** 40), ("Gi", 2 ** 30), ("Mi", 2 ** 20),
                           ("Ki", 2 ** 10)):
        if size and size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)


def _rfc3339(nanoseconds: int) -> str:
    moment = datetime.datetime.fromtimestamp(nanoseconds / 1e9, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def content_name_for(snapshot: Mapping[str, Any]) -> str:
    """utils.GetDynamicSnapshotContentNameForSnapshot."""
    return f"snapcontent-{meta(snapshot)['uid']}"


def is_ready(snapshot: Mapping[str, Any] | None) -> bool:
    return bool(((snapshot or {}).get("status") or {}).get("readyToUse"))


class SnapshotController:
    def __init__(self, api: ApiClient, data_dir: Path, snapshots: Any, contents: Any, classes: Any, claims: Any,
                 provisioner: VolumeProvisioner, events: EventRecorder) -> None:
        self.api = api
        self.snapshots_dir = data_dir / "snapshots"
        self.snapshots = snapshots
        self.contents = contents
        self.classes = classes
        self.claims = claims
        self.provisioner = provisioner
        self.events = events

    # -- what the provisioner restores ----------------------------------------------------------------

    def restore_source(self, namespace: str, name: str) -> RestoreSource | str:
        snapshot = self.snapshots.get((namespace, name))
        if snapshot is None:
            return f'error getting snapshot {name} from api server: volumesnapshots.snapshot.storage.k8s.io "{name}" not found'
        if meta(snapshot).get("deletionTimestamp"):
            return f"snapshot {name} is currently being deleted"
        status = snapshot.get("status") or {}
        content = self.contents.get(("", status.get("boundVolumeSnapshotContentName") or ""))
        if content is None:
            return f"snapshot {name} not bound"
        if not status.get("readyToUse") or not (content.get("status") or {}).get("readyToUse"):
            return f"snapshot {name} is not Ready"
        return RestoreSource(self.snapshots_dir / meta(content)["name"],
                             int((content.get("status") or {}).get("restoreSize") or 0),
                             (content.get("spec") or {}).get("driver", ""))

    def copy_dir(self, content_name: str) -> Path:
        return self.snapshots_dir / content_name

    # -- VolumeSnapshot (the common controller) --------------------------------------------------------

    async def reconcile_snapshot(self, snapshot: dict[str, Any]) -> float | None:
        await self._release_source_claim(snapshot, skip_this=bool(meta(snapshot).get("deletionTimestamp")))
        if meta(snapshot).get("deletionTimestamp"):
            return await self._delete_snapshot(snapshot)
        source = (snapshot.get("spec") or {}).get("source") or {}
        if source.get("volumeSnapshotContentName"):
            return await self._sync_status(snapshot, self.contents.get(("", source["volumeSnapshotContentName"])))
        content = self.contents.get(("", content_name_for(snapshot)))
        snapshot = await self._add_finalizers(snapshot, content)
        if content is None:
            content_or_error = await self._create_content(snapshot)
            if isinstance(content_or_error, str):
                await self._error(snapshot, "SnapshotContentCreationFailed",
                                  f"Failed to create snapshot content with error {content_or_error}")
                return 5.0
            content = content_or_error
        return await self._sync_status(snapshot, content)

    async def _add_finalizers(self, snapshot: dict[str, Any], content: dict[str, Any] | None) -> dict[str, Any]:
        finalizers = list(meta(snapshot).get("finalizers") or [])
        wanted = [AS_SOURCE_FINALIZER]
        if content is not None and (content.get("spec") or {}).get("deletionPolicy") == "Delete":
            wanted.append(BOUND_FINALIZER)
        missing = [f for f in wanted if f not in finalizers]
        if not missing:
            return snapshot
        return await self._patch(SNAPSHOTS, snapshot, [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta(snapshot)["resourceVersion"]},
            {"op": "add" if "finalizers" not in meta(snapshot) else "replace", "path": "/metadata/finalizers",
             "value": finalizers + missing}])

    def _class_for(self, snapshot: Mapping[str, Any], driver: str) -> dict[str, Any] | str:
        name = (snapshot.get("spec") or {}).get("volumeSnapshotClassName")
        if name:
            found = self.classes.get(("", name))
            if found is None:
                return f'volumesnapshotclass.snapshot.storage.k8s.io "{name}" not found'
            if found.get("driver") != driver:
                return f"VolumeSnapshotClass {name} is of driver {found.get('driver')}, the volume of {driver}"
            return found
        defaults = [c for c in self.classes if c.get("driver") == driver and
                    (meta(c).get("annotations") or {}).get(DEFAULT_SNAPSHOT_CLASS_ANNOTATION) == "true"]
        if len(defaults) != 1:
            return (f"cannot find default snapshot class for driver {driver}" if not defaults else
                    f"{len(defaults)} default snapshot classes were found for driver {driver}")
        return defaults[0]

    async def _create_content(self, snapshot: dict[str, Any]) -> dict[str, Any] | str:
        namespace = meta(snapshot)["namespace"]
        claim_name = snapshot["spec"]["source"]["persistentVolumeClaimName"]
        claim = self.claims.get((namespace, claim_name))
        if claim is None:
            return f'failed to get input parameters to create snapshot {meta(snapshot)["name"]}: ' \
                   f'persistentvolumeclaim "{claim_name}" not found'
        volume = self.provisioner.volume_of(namespace, claim_name)
        if volume is None:
            return f"the PVC {claim_name} is not yet bound to a PV, will not attempt to take a snapshot"
        snapshot_class = self._class_for(snapshot, volume.driver)
        if isinstance(snapshot_class, str):
            return f'failed to get input parameters to create snapshot {meta(snapshot)["name"]}: "{snapshot_class}"'
        if PVC_FINALIZER not in (meta(claim).get("finalizers") or []):
            if meta(claim).get("deletionTimestamp"):
                return "cannot add finalizer on claim because it is being deleted"
            self.claims.observe(await self.api.patch(CLAIMS, namespace, claim_name, [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta(claim)["resourceVersion"]},
                {"op": "replace", "path": "/metadata/finalizers",
                 "value": [*(meta(claim).get("finalizers") or []), PVC_FINALIZER]}]))
        body = {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                "metadata": {"name": content_name_for(snapshot), "finalizers": [CONTENT_FINALIZER]},
                "spec": {"volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                               "name": meta(snapshot)["name"], "namespace": namespace,
                                               "uid": meta(snapshot)["uid"],
                                               "resourceVersion": meta(snapshot)["resourceVersion"]},
                         "source": {"volumeHandle": self._volume_handle(volume.directory)},
                         "volumeSnapshotClassName": meta(snapshot_class)["name"],
                         "deletionPolicy": snapshot_class.get("deletionPolicy", "Delete"),
                         "driver": snapshot_class["driver"]}}
        try:
            content: dict[str, Any] | None = await self.api.create(CONTENTS, None, body)
        except ApiError as exc:
            if exc.status != 409:
                return str(exc)
            content = await self.api.get(CONTENTS, None, content_name_for(snapshot))
        if content is None:
            return "the VolumeSnapshotContent went away while it was created"
        self.contents.observe(content)
        await self.events.post(snapshot, NORMAL, "CreatingSnapshot",
                               f"Waiting for a snapshot {namespace}/{meta(snapshot)['name']} to be created by the "
                               "CSI driver.")
        return content

    def _volume_handle(self, directory: Path) -> str:
        try:
            return str(directory.relative_to(self.provisioner.volumes_dir))
        except ValueError:
            return str(directory)  # a static volume: its own path

    def _volume_directory(self, handle: str) -> Path:
        path = Path(handle)
        return path if path.is_absolute() else self.provisioner.volumes_dir / handle

    async def _sync_status(self, snapshot: dict[str, Any], content: dict[str, Any] | None) -> float | None:
        if content is None:
            await self._error(snapshot, "SnapshotContentMissing", "VolumeSnapshotContent is missing")
            return 5.0
        content_status = content.get("status") or {}
        status: dict[str, Any] = {"boundVolumeSnapshotContentName": meta(content)["name"],
                                  "readyToUse": bool(content_status.get("readyToUse"))}
        if content_status.get("creationTime"):
            status["creationTime"] = _rfc3339(int(content_status["creationTime"]))
        if content_status.get("restoreSize") is not None:
            status["restoreSize"] = binary_quantity(int(content_status["restoreSize"]))
        if content_status.get("error"):
            status["error"] = content_status["error"]
        current = snapshot.get("status") or {}
        if any(current.get(k) != v for k, v in status.items()) or (status["readyToUse"] and current.get("error")):
            if status["readyToUse"]:
                status["error"] = None
            snapshot = await self._patch(SNAPSHOTS, snapshot, {"status": status}, status=True)
            if status["readyToUse"] and not current.get("readyToUse"):
                await self.events.post(snapshot, NORMAL, "SnapshotReady",
                                       f"Snapshot {meta(snapshot)['namespace']}/{meta(snapshot)['name']} is ready to use.")
                await self._release_source_claim(snapshot, skip_this=False)
            elif content_status.get("snapshotHandle") and not current.get("creationTime"):
                await self.events.post(snapshot, NORMAL, "SnapshotCreated",
                                       f"Snapshot {meta(snapshot)['namespace']}/{meta(snapshot)['name']} was "
                                       "successfully created by the CSI driver.")
        if (content.get("spec") or {}).get("deletionPolicy") == "Delete" and \
                BOUND_FINALIZER not in (meta(snapshot).get("finalizers") or []):
            await self._add_finalizers(snapshot, content)
        return None

    async def _error(self, snapshot: dict[str, Any], reason: str, message: str) -> None:
        current = (snapshot.get("status") or {}).get("error") or {}
        if current.get("message") != message:
            await self._patch(SNAPSHOTS, snapshot, {"status": {"readyToUse": False, "error": {
                "message": message, "time": _rfc3339(time.time_ns())}}}, status=True)
        await self.events.post(snapshot, WARNING, reason, message)

    async def _release_source_claim(self, snapshot: Mapping[str, Any], *, skip_this: bool) -> None:
        """checkandRemovePVCFinalizer: the source claim's finalizer goes once no snapshot of it is still being made."""
        claim_name = ((snapshot.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName")
        if not claim_name:
            return
        namespace = meta(snapshot)["namespace"]
        claim = self.claims.get((namespace, claim_name))
        if claim is None or PVC_FINALIZER not in (meta(claim).get("finalizers") or []):
            return
        for other in self.snapshots:
            if meta(other)["namespace"] != namespace or (skip_this and meta(other)["uid"] == meta(snapshot)["uid"]):
                continue
            if ((other.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName") == claim_name and \
                    not is_ready(other) and not meta(other).get("deletionTimestamp"):
                return
        self.claims.observe(await self.api.patch(CLAIMS, namespace, claim_name, [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta(claim)["resourceVersion"]},
            {"op": "replace", "path": "/metadata/finalizers",
             "value": [f for f in meta(claim)["finalizers"] if f != PVC_FINALIZER]}]))

    async def _delete_snapshot(self, snapshot: dict[str, Any]) -> float | None:
        finalizers = meta(snapshot).get("finalizers") or []
        if AS_SOURCE_FINALIZER not in finalizers and BOUND_FINALIZER not in finalizers:
            return None
        name = (snapshot.get("status") or {}).get("boundVolumeSnapshotContentName") or content_name_for(snapshot)
        content = self.contents.get(("", name))
        if content is not None and ((content.get("spec") or {}).get("volumeSnapshotRef") or {}).get("uid") != \
                meta(snapshot)["uid"]:
            content = None
        if content is not None and self._being_restored(snapshot):
            await self.events.post(snapshot, WARNING, "SnapshotDeletePending", "Snapshot is being used to restore a PVC")
            return 2.0
        delete_content = content is not None and (content.get("spec") or {}).get("deletionPolicy") == "Delete"
        if content is not None:
            if BEING_DELETED not in (meta(content).get("annotations") or {}):
                content = await self._patch(CONTENTS, content, {"metadata": {"annotations": {BEING_DELETED: "yes"}}})
            if delete_content and not meta(content).get("deletionTimestamp"):
                await self.api.delete(CONTENTS, None, meta(content)["name"])
        keep = [BOUND_FINALIZER] if delete_content else []
        remaining = [f for f in finalizers if f not in (AS_SOURCE_FINALIZER, BOUND_FINALIZER) or f in keep]
        if remaining != finalizers:
            await self._patch(SNAPSHOTS, snapshot, [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta(snapshot)["resourceVersion"]},
                {"op": "replace", "path": "/metadata/finalizers", "value": remaining}])
        return None  # the content's deletion wakes it (then the bound finalizer goes)

    def _being_restored(self, snapshot: Mapping[str, Any]) -> bool:
        """isVolumeBeingCreatedFromSnapshot: a Pending claim of its namespace restores from it."""
        for claim in self.claims:
            if meta(claim)["namespace"] != meta(snapshot)["namespace"]:
                continue
            source = (claim.get("spec") or {}).get("dataSource") or {}
            if source.get("kind") == "VolumeSnapshot" and source.get("apiGroup") == SNAPSHOT_GROUP and \
                    source.get("name") == meta(snapshot)["name"] and \
                    (claim.get("status") or {}).get("phase", "Pending") == "Pending":
                return True
        return False

    # -- VolumeSnapshotContent (the driver's sidecar) ----------------------------------------------

    async def reconcile_content(self, content: dict[str, Any]) -> float | None:
        annotations = meta(content).get("annotations") or {}
        if meta(content).get("deletionTimestamp"):
            if BEING_CREATED in annotations or BEING_DELETED not in annotations:
                return None  # a creation is under way, or its snapshot has not let it go
            status = content.get("status") or {}
            if (content.get("spec") or {}).get("deletionPolicy") == "Delete" and status.get("snapshotHandle"):
                await asyncio.to_thread(remove_tree, self.copy_dir(meta(content)["name"]))
                content = await self._patch(CONTENTS, content, {"status": {
                    "snapshotHandle": None, "readyToUse": None, "creationTime": None, "restoreSize": None}},
                    status=True)
            finalizers = meta(content).get("finalizers") or []
            if CONTENT_FINALIZER in finalizers:
                await self._patch(CONTENTS, content, {"metadata": {"finalizers": [
                    f for f in finalizers if f != CONTENT_FINALIZER] or None}})
            return None
        source = (content.get("spec") or {}).get("source") or {}
        status = content.get("status") or {}
        if source.get("volumeHandle") and not status.get("snapshotHandle"):
            return await self._create_snapshot(content)
        return None

    async def _create_snapshot(self, content: dict[str, Any]) -> float | None:
        name = meta(content)["name"]
        content = await self._patch(CONTENTS, content, {"metadata": {"annotations": {BEING_CREATED: "yes"}}})
        source = self._volume_directory(content["spec"]["source"]["volumeHandle"])
        if not source.is_dir():
            await self._patch(CONTENTS, content, {"status": {"readyToUse": False, "error": {
                "message": f"failed to take snapshot of the volume {source.name}: the volume does not exist",
                "time": _rfc3339(time.time_ns())}}}, status=True)
            return 5.0
        created = time.time_ns()
        await asyncio.to_thread(_copy_volume, source, self.copy_dir(name))
        ref = content["spec"].get("volumeSnapshotRef") or {}
        snapshot = self.snapshots.get((ref.get("namespace", ""), ref.get("name", "")))
        claim_name = (((snapshot or {}).get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName")
        volume = self.provisioner.volume_of(ref.get("namespace", ""), claim_name) if claim_name else None
        size = volume.capacity_bytes if volume is not None and volume.capacity_bytes else _tree_bytes(source)
        content = await self._patch(CONTENTS, content, {"status": {
            "snapshotHandle": f"local-snapshot-{name.removeprefix('snapcontent-')}", "readyToUse": True,
            "creationTime": created, "restoreSize": size, "error": None}}, status=True)
        await self._patch(CONTENTS, content, {"metadata": {"annotations": {BEING_CREATED: None}}})
        return None

    async def _patch(self, resource: str, obj: dict[str, Any], patch: Any, status: bool = False) -> dict[str, Any]:
        namespace = meta(obj).get("namespace")
        answer = await self.api.patch(resource, namespace, meta(obj)["name"], patch,
                                      subresource="status" if status else None)
        cache = self.snapshots if resource == SNAPSHOTS else self.contents
        cache.observe(answer)
        return answer


def _copy_volume(source: Path, target: Path) -> None:
    """The snapshot's copy, put in place by one rename (a leftover of a cut-short copy is removed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.partial-*"):
        remove_tree(leftover)
    if target.exists():
        remove_tree(target)
    partial = target.with_name(f".{target.name}.partial-{secrets.token_hex(4)}")
    fstree.copy_tree(str(source), str(partial), copy_function=clone_or_copy)  # at any depth
    partial.rename(target)


def _tree_bytes(root: Path) -> int:
    """The bytes of the regular files under `root`, at any depth (Path.rglob recurses per level)."""
    total = 0
    for directory, _, others in fstree.walk(str(root)):
        for name in others:
            st = os.lstat(os.path.join(directory, name))
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total
