"""Storage of the local cluster: StorageClasses, PersistentVolumes, and the provisioner that binds claims.

What it emulates of a cluster's storage, for the fields the operator and its tests use:

- ``StorageClassModel``: a StorageClass (provisioner, ``volumeBindingMode``, the default-class
  annotation) and what its CSI driver can do: the access modes it supports (a claim asking for
  another is refused with ``ProvisioningFailed``, as EBS refuses ``ReadOnlyMany``) and whether its
  volumes are attached to a node (``attachRequired`` of the CSIDriver: block devices are; a shared
  filesystem is not). The cluster creates the StorageClass, CSIDriver and VolumeSnapshotClass
  objects of its models in the API. ``DEFAULT_CLASSES``: ``standard`` (the default: a shared
  filesystem such as EFS, Filestore, Azure Files or NFS: every access mode, no attachment,
  Immediate binding), ``block`` (a block device as the default classes of EKS, GKE and AKS:
  ``ReadWriteOnce``/``ReadWriteOncePod`` only, attached to one node, WaitForFirstConsumer, volume
  snapshots through the ``block-snapshots`` VolumeSnapshotClass) and ``block-multireader`` (the
  same driver with ``ReadOnlyMany`` too, as GCE persistent disks).
- ``VolumeProvisioner``: a new claim of a class is provisioned as a host directory
  ``<data>/volumes/<namespace>/<claim>-<uid8>`` (mode 0777, as local-path provisioners make
  them) and a PersistentVolume ``pvc-<claim uid>`` (``csi.volumeHandle``: that directory), then
  bound (``spec.volumeName``, ``status.phase: Bound``). With WaitForFirstConsumer it waits for the
  scheduler's ``volume.kubernetes.io/selected-node`` annotation (event ``WaitForFirstConsumer``).
  A ``dataSource`` VolumeSnapshot is restored from the snapshot's copy once the snapshot is
  ``readyToUse`` (the csi-provisioner's checks: the snapshot exists, is ready, not being deleted,
  of the class's driver, and the claim asks for at least its ``restoreSize``); a ``dataSource``
  PersistentVolumeClaim is a clone of that claim's directory. A claim naming a PersistentVolume
  (``spec.volumeName``) is bound to it (a static PV: ``spec.local.path`` or ``spec.hostPath.path``,
  with its ``nodeAffinity``, which the scheduler honours). Claims get the
  ``kubernetes.io/pvc-protection`` finalizer: a claim a running pod uses is deleted once that
  pod has finished; then a provisioned volume is deleted with its directory (reclaim policy
  Delete), a static one is ``Released`` and its directory kept (Retain).

Restored and cloned directories are copies (reflinks where the filesystem supports them, see
``podview.clone_or_copy``), made under a temporary name and renamed into place, so a copy cut
short by a crash is never bound: the claim stays Pending and the copy is made again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from checkpoint_operator.agent import fstree
from checkpoint_operator.api.common import parse_quantity
from checkpoint_operator.local.events import NORMAL, WARNING, EventRecorder
from checkpoint_operator.local.kubelet import TERMINAL_PHASES, meta, pod_phase
from checkpoint_operator.local.node_selection import volume_fits_node
from checkpoint_operator.local.podview import clone_or_copy, remove_tree
from checkpoint_operator.local.server import ApiClient, ApiError

logger = logging.getLogger(__name__)

CLAIMS, VOLUMES = "v1/persistentvolumeclaims", "v1/persistentvolumes"
STORAGE_CLASSES, CSI_DRIVERS = "storage.k8s.io/v1/storageclasses", "storage.k8s.io/v1/csidrivers"
SNAPSHOT_CLASSES = "snapshot.storage.k8s.io/v1/volumesnapshotclasses"
RWO, ROX, RWX, RWOP = "ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"
ALL_ACCESS_MODES = (RWO, ROX, RWX, RWOP)
IMMEDIATE, WAIT_FOR_FIRST_CONSUMER = "Immediate", "WaitForFirstConsumer"
PVC_PROTECTION = "kubernetes.io/pvc-protection"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
DEFAULT_SNAPSHOT_CLASS_ANNOTATION = "snapshot.storage.kubernetes.io/is-default-class"
PROVISIONER_ANNOTATION = "volume.kubernetes.io/storage-provisioner"
BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
COMPONENT = "local-volume-provisioner"


@dataclass(frozen=True)
class StorageClassModel:
    """A StorageClass and what its CSI driver can do (see the module's docstring)."""

    name: str
    provisioner: str
    binding_mode: str = IMMEDIATE
    access_modes: tuple[str, ...] = ALL_ACCESS_MODES
    attach_required: bool = False
    default: bool = False
    snapshot_class: str | None = None  # the VolumeSnapshotClass of its driver (deletionPolicy Delete)

    def manifests(self) -> list[tuple[str, dict[str, Any]]]:
        """The objects a cluster with this class has: (resource, body)."""
        annotations = {DEFAULT_CLASS_ANNOTATION: "true"} if self.default else {}
        objects: list[tuple[str, dict[str, Any]]] = [
            (STORAGE_CLASSES, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                               "metadata": {"name": self.name, "annotations": annotations},
                               "provisioner": self.provisioner, "reclaimPolicy": "Delete",
                               "volumeBindingMode": self.binding_mode, "allowVolumeExpansion": False}),
            (CSI_DRIVERS, {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
                           "metadata": {"name": self.provisioner},
                           "spec": {"attachRequired": self.attach_required, "podInfoOnMount": False,
                                    "volumeLifecycleModes": ["Persistent"]}})]
        if self.snapshot_class:
            objects.append((SNAPSHOT_CLASSES, {
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                "metadata": {"name": self.snapshot_class, "annotations": {DEFAULT_SNAPSHOT_CLASS_ANNOTATION: "true"}},
                "driver": self.provisioner, "deletionPolicy": "Delete"}))
        return objects


BLOCK_DRIVER = "block.csi.local.ckpt.dev"
NO_PROVISIONER = "kubernetes.io/no-provisioner"  # static volumes only: claims bind to PersistentVolumes made by hand
DEFAULT_CLASSES = (
    StorageClassModel("standard", "shared.csi.local.ckpt.dev", default=True),
    StorageClassModel("block", BLOCK_DRIVER, WAIT_FOR_FIRST_CONSUMER, (RWO, RWOP), attach_required=True,
                      snapshot_class="block-snapshots"),
    StorageClassModel("block-multireader", BLOCK_DRIVER, WAIT_FOR_FIRST_CONSUMER, (RWO, ROX, RWOP),
                      attach_required=True, snapshot_class="block-snapshots"),
    # Local PersistentVolumes (a node's own disk, as KServe's LocalModelCache uses them): made by
    # hand with spec.local.path and node affinity; a claim binds to a free one on its pod's node.
    StorageClassModel("local-storage", NO_PROVISIONER, WAIT_FOR_FIRST_CONSUMER, (RWO, RWOP)),
)


@dataclass(frozen=True)
class BoundVolume:
    """What the kubelet, the scheduler and the attach rules need of a claim's volume."""

    claim_uid: str
    pv: str
    directory: Path
    access_modes: tuple[str, ...]
    attach_required: bool
    driver: str = ""
    capacity_bytes: int = 0
    node_affinity: Mapping[str, Any] | None = None
    # A local volume whose node affinity takes a class of nodes, not one node by name (a node cache, as
    # KServe's LocalModelCache lays it out): each node mounts its own disk at the path, so its directory
    # is per node (<node>/local-volumes/<path>), whatever the number of nodes.
    per_node: bool = False

    def directory_on(self, node_dir: Path) -> Path:
        """The volume's directory as the kubelet of the node whose own directory is `node_dir` mounts it."""
        if not self.per_node:
            return self.directory
        directory = node_dir / "local-volumes" / str(self.directory).lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)  # a real local volume needs it made (docs/node-cache.md)
        return directory

    @property
    def multi_node(self) -> bool:
        """Whether pods on several nodes may use it at once (the attach/detach controller's rule:
        a volume that is not attached, or whose PV allows ReadOnlyMany or ReadWriteMany)."""
        return not self.attach_required or any(m in (ROX, RWX) for m in self.access_modes)


@dataclass(frozen=True)
class RestoreSource:
    """A snapshot's copy as the provisioner restores it."""

    directory: Path
    restore_size: int
    driver: str


class SnapshotSource(Protocol):
    def restore_source(self, namespace: str, name: str) -> RestoreSource | str:
        """The copy behind a VolumeSnapshot, or why it cannot be restored from (yet)."""


def request_bytes(claim: Mapping[str, Any]) -> int:
    requested = ((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}
    return parse_quantity(str(requested.get("storage") or "0"))


def claim_access_modes(claim: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple((claim.get("spec") or {}).get("accessModes") or [RWO])


@dataclass
class VolumeProvisioner:
    """Provisions and binds claims (see the module's docstring); ``reconcile`` is level-based."""

    api: ApiClient
    data_dir: Path
    claims: Any            # Cache of PersistentVolumeClaims
    volumes: Any           # Cache of PersistentVolumes
    classes: Mapping[str, StorageClassModel]
    events: EventRecorder
    snapshots: SnapshotSource | None = None
    nodes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # node name -> its labels
    _bound: dict[tuple[str, str], BoundVolume] = field(default_factory=dict)

    @property
    def volumes_dir(self) -> Path:
        return self.data_dir / "volumes"

    def directory_for(self, claim: Mapping[str, Any]) -> Path:
        # A file name has at most 255 bytes and a claim's name up to 253: the name is cut (the uid
        # keeps the directory unique), else a long name fails every bind (issue 8.10).
        return self.volumes_dir / meta(claim)["namespace"] / f"{meta(claim)['name'][:200]}-{meta(claim)['uid'][:8]}"

    def claim_dir(self, namespace: str, name: str) -> Path | None:
        bound = self._bound.get((namespace, name))
        return bound.directory if bound else None

    def claim_dir_on(self, node_dir: Path, namespace: str, name: str) -> Path | None:
        """The claim's directory as a node's kubelet mounts it (a per-node local volume: that node's own)."""
        bound = self._bound.get((namespace, name))
        return bound.directory_on(node_dir) if bound else None

    def volume_of(self, namespace: str, name: str) -> BoundVolume | None:
        return self._bound.get((namespace, name))

    def free_volume_for(self, claim: Mapping[str, Any], model: StorageClassModel,
                        node: tuple[str, Mapping[str, str]] | None) -> dict[str, Any] | None:
        """A static PersistentVolume of the claim's class that no claim holds, large enough, with its
        access modes, and (`node`: (name, labels)) whose node affinity allows that node."""
        wanted, modes = request_bytes(claim), set(claim_access_modes(claim))
        for pv in sorted(self.volumes, key=lambda v: meta(v)["name"]):
            spec = pv.get("spec") or {}
            ref = spec.get("claimRef") or {}
            if spec.get("storageClassName", "") != model.name or meta(pv).get("deletionTimestamp"):
                continue
            if ref and not (ref.get("name") == meta(claim)["name"] and ref.get("namespace") == meta(claim)["namespace"]):
                continue
            if (pv.get("status") or {}).get("phase") in ("Released", "Failed"):
                continue
            if parse_quantity(str((spec.get("capacity") or {}).get("storage") or "0")) < wanted:
                continue
            if not modes <= set(spec.get("accessModes") or ()):
                continue
            if node is not None and not volume_fits_node(spec.get("nodeAffinity"), node[1], node[0]):
                continue
            return pv
        return None

    def node_labels(self, node: str) -> Mapping[str, str]:
        return self.nodes.get(node, {"kubernetes.io/hostname": node})

    def default_class(self) -> str | None:
        return next((c.name for c in self.classes.values() if c.default), None)

    def class_of(self, claim: Mapping[str, Any]) -> str | None:
        """The claim's class: its storageClassName, else (unset) the default class; "" means none."""
        spec = claim.get("spec") or {}
        return spec["storageClassName"] if "storageClassName" in spec else self.default_class()

    # -- reconcile --------------------------------------------------------------------------------

    async def reconcile(self, claim: dict[str, Any], users: Iterable[dict[str, Any]]) -> bool:
        """Bind a claim or release a deleted one; True when it just became usable."""
        if meta(claim).get("deletionTimestamp"):
            await self._release_when_unused(claim, users)
            return False
        key = (meta(claim)["namespace"], meta(claim)["name"])
        bound = self._bound.get(key)
        if bound is not None and bound.claim_uid == meta(claim)["uid"]:
            return False
        if PVC_PROTECTION not in (meta(claim).get("finalizers") or []):
            finalizers = [*(meta(claim).get("finalizers") or []), PVC_PROTECTION]
            claim = await self._patch_claim(claim, {"metadata": {"finalizers": finalizers}})
        if (claim.get("status") or {}).get("phase") == "Bound" and (claim.get("spec") or {}).get("volumeName"):
            return self._adopt(claim)  # bound before this provisioner started (local mode restarted)
        if (claim.get("spec") or {}).get("volumeName"):
            return await self._bind_static(claim)
        return await self._provision(claim)

    def _adopt(self, claim: dict[str, Any]) -> bool:
        pv = self.volumes.get(("", claim["spec"]["volumeName"]))
        if pv is None:
            return False  # its volume is not in the cache yet: the volume's event brings it back
        self._remember(claim, pv)
        return True

    async def _provision(self, claim: dict[str, Any]) -> bool:
        class_name = self.class_of(claim)
        if not class_name:
            await self.events.post(claim, NORMAL, "FailedBinding",
                                   "no persistent volumes available for this claim and no storage class is set")
            return False
        model = self.classes.get(class_name)
        if model is None:
            await self.events.post(claim, WARNING, "ProvisioningFailed",
                                   f'storageclass.storage.k8s.io "{class_name}" not found')
            return False
        modes = claim_access_modes(claim)
        unsupported = [m for m in modes if m not in model.access_modes]
        if unsupported:
            await self.events.post(claim, WARNING, "ProvisioningFailed", (
                f'failed to provision volume with StorageClass "{model.name}": rpc error: code = InvalidArgument '
                f"desc = Volume capabilities not supported: access mode {', '.join(unsupported)}; "
                f"{model.provisioner} supports {', '.join(model.access_modes)}"))
            return False
        annotations = meta(claim).get("annotations") or {}
        if model.binding_mode == WAIT_FOR_FIRST_CONSUMER and not annotations.get(SELECTED_NODE):
            await self.events.post(claim, NORMAL, "WaitForFirstConsumer",
                                   "waiting for first consumer to be created before binding")
            return False
        if model.provisioner == NO_PROVISIONER:  # the PV controller binds it to a free static volume
            node = annotations.get(SELECTED_NODE)
            free = self.free_volume_for(claim, model, None if node is None else (node, self.node_labels(node)))
            if free is None:
                await self.events.post(claim, NORMAL, "FailedBinding",
                                       f'no persistent volumes of StorageClass "{model.name}" available for this claim')
                return False
            claim = await self._patch_claim(claim, {"spec": {"volumeName": meta(free)["name"]}})
            return await self._bind_static(claim)
        source = await self._data_source(claim, model)
        if isinstance(source, str):
            await self.events.post(claim, WARNING, "ProvisioningFailed",
                                   f'failed to provision volume with StorageClass "{model.name}": {source}')
            return False
        namespace, name = meta(claim)["namespace"], meta(claim)["name"]
        await self.events.post(claim, NORMAL, "Provisioning",
                               f'External provisioner is provisioning volume for claim "{namespace}/{name}"')
        directory = self.directory_for(claim)
        await asyncio.to_thread(_make_volume_directory, directory, source)
        pv = await self._create_volume(claim, model, directory)
        claim = await self._patch_claim(claim, {"metadata": {"annotations": {BIND_COMPLETED: "yes",
                                                                             PROVISIONER_ANNOTATION: model.provisioner}},
                                                "spec": {"volumeName": meta(pv)["name"]}})
        await self._publish_bound(claim, pv, {
            "phase": "Bound", "accessModes": list(modes), "capacity": {"storage": _capacity(claim)}})
        await self.events.post(claim, NORMAL, "ProvisioningSucceeded", f"Successfully provisioned volume {meta(pv)['name']}")
        return True

    async def _data_source(self, claim: dict[str, Any], model: StorageClassModel) -> Path | None | str:
        """The directory to copy into the new volume (None: an empty volume), or why not yet."""
        spec = claim.get("spec") or {}
        source = spec.get("dataSourceRef") or spec.get("dataSource")
        if not source:
            return None
        kind, source_name = source.get("kind"), source.get("name", "")
        namespace = meta(claim)["namespace"]
        if kind == "PersistentVolumeClaim" and not source.get("apiGroup"):
            volume = self._bound.get((namespace, source_name))
            if volume is None:
                return f'error getting handle for DataSource Type PersistentVolumeClaim by Name {source_name}: ' \
                       f'claim "{source_name}" is not bound'
            if volume.driver != model.provisioner:
                return f"the source claim {source_name} is of driver {volume.driver}, not {model.provisioner}"
            return volume.directory
        if kind == "VolumeSnapshot" and source.get("apiGroup") == SNAPSHOT_GROUP:
            if self.snapshots is None:
                return "volume snapshots are not installed in this cluster"
            restore = self.snapshots.restore_source(namespace, source_name)
            if isinstance(restore, str):
                return f"error getting handle for DataSource Type VolumeSnapshot by Name {source_name}: {restore}"
            if restore.driver != model.provisioner:
                return (f"the source snapshot {source_name} was taken by driver {restore.driver}; "
                        f"StorageClass {model.name} provisions with {model.provisioner}")
            if request_bytes(claim) < restore.restore_size:
                return (f"requested volume size {request_bytes(claim)} is less than the size {restore.restore_size} "
                        f"for the source snapshot {source_name}")
            return restore.directory
        return f"data source {source.get('apiGroup') or 'core'}/{kind} is not supported by {model.provisioner}"

    async def _create_volume(self, claim: dict[str, Any], model: StorageClassModel, directory: Path) -> dict[str, Any]:
        name = f"pvc-{meta(claim)['uid']}"
        existing = self.volumes.get(("", name))
        if existing is not None:
            return existing
        body = {"apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": name, "annotations": {PROVISIONED_BY: model.provisioner},
                             "finalizers": ["kubernetes.io/pv-protection"]},
                "spec": {"capacity": {"storage": _capacity(claim)}, "accessModes": list(claim_access_modes(claim)),
                         "persistentVolumeReclaimPolicy": "Delete", "storageClassName": model.name,
                         "volumeMode": "Filesystem",
                         "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                      "namespace": meta(claim)["namespace"], "name": meta(claim)["name"],
                                      "uid": meta(claim)["uid"]},
                         "csi": {"driver": model.provisioner, "fsType": "ext4",
                                 "volumeHandle": str(directory.relative_to(self.volumes_dir))}}}
        try:
            await self.api.create(VOLUMES, None, body)
        except ApiError as exc:  # created by an earlier pass (a crash between the create and the bind)
            if exc.status != 409:
                raise
        answer = await self.api.patch(VOLUMES, None, name, {"status": {"phase": "Bound"}}, subresource="status")
        self.volumes.observe(answer)
        return answer

    async def _bind_static(self, claim: dict[str, Any]) -> bool:
        """A claim that names its PersistentVolume: bound to it when the volume is there and free."""
        name = claim["spec"]["volumeName"]
        pv = self.volumes.get(("", name))
        if pv is None:
            await self.events.post(claim, WARNING, "FailedBinding", f'volume "{name}" not found')
            return False
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        if ref and (ref.get("namespace"), ref.get("name")) != (meta(claim)["namespace"], meta(claim)["name"]):
            await self.events.post(claim, WARNING, "FailedBinding",
                                   f'volume "{name}" already bound to a different claim.')
            return False
        if not ref or ref.get("uid") != meta(claim)["uid"]:
            pv = await self.api.patch(VOLUMES, None, name, {"spec": {"claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta(claim)["namespace"],
                "name": meta(claim)["name"], "uid": meta(claim)["uid"]}}})
        self.volumes.observe(await self.api.patch(VOLUMES, None, name, {"status": {"phase": "Bound"}},
                                                  subresource="status"))
        modes = list(pv["spec"].get("accessModes") or claim_access_modes(claim))
        claim = await self._patch_claim(claim, {"metadata": {"annotations": {BIND_COMPLETED: "yes"}}})
        await self._publish_bound(claim, pv, {"phase": "Bound", "accessModes": modes,
                                              "capacity": pv["spec"].get("capacity") or {}})
        return True

    async def _publish_bound(self, claim: dict[str, Any], pv: Mapping[str, Any], status: dict[str, Any]) -> None:
        """Write the claim's Bound status, its directory known first: whoever sees Bound in the API
        (a kubelet, a test, a user of --serve) finds the directory too. A failed write forgets it
        again, so the next pass binds anew."""
        self._remember(claim, pv)
        try:
            await self._patch_claim(claim, {"status": status}, status=True)
        except BaseException:
            self._bound.pop((meta(claim)["namespace"], meta(claim)["name"]), None)
            raise

    def _remember(self, claim: Mapping[str, Any], pv: Mapping[str, Any]) -> None:
        spec = pv.get("spec") or {}
        csi = spec.get("csi") or {}
        model = self.classes.get(spec.get("storageClassName") or "")
        host = spec.get("local") or spec.get("hostPath")
        per_node = False
        if host:
            directory = Path(host["path"])
            per_node = bool(spec.get("local")) and not _one_named_node(spec.get("nodeAffinity"))
        else:
            directory = self.volumes_dir / csi.get("volumeHandle", "")
        if not per_node:
            directory.mkdir(parents=True, exist_ok=True)
        capacity = parse_quantity(str((spec.get("capacity") or {}).get("storage") or "0"))
        self._bound[(meta(claim)["namespace"], meta(claim)["name"])] = BoundVolume(
            meta(claim)["uid"], meta(pv)["name"], directory, tuple(spec.get("accessModes") or ()),
            model.attach_required if model else False, csi.get("driver", model.provisioner if model else ""),
            capacity, spec.get("nodeAffinity"), per_node)

    async def _patch_claim(self, claim: dict[str, Any], patch: dict[str, Any], status: bool = False) -> dict[str, Any]:
        answer = await self.api.patch(CLAIMS, meta(claim)["namespace"], meta(claim)["name"], patch,
                                      subresource="status" if status else None)
        self.claims.observe(answer)
        return answer

    async def _release_when_unused(self, claim: dict[str, Any], users: Iterable[dict[str, Any]]) -> None:
        in_use = any(pod_phase(pod) not in TERMINAL_PHASES for pod in users)
        finalizers = meta(claim).get("finalizers") or []
        if not in_use and PVC_PROTECTION in finalizers:
            answer = await self.api.patch(CLAIMS, meta(claim)["namespace"], meta(claim)["name"], [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta(claim)["resourceVersion"]},
                {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in finalizers if f != PVC_PROTECTION]},
            ])
            self.claims.observe(answer)

    # -- deletion ---------------------------------------------------------------------------------

    def forget(self, claim: Mapping[str, Any]) -> None:
        """The claim is gone from the API: a provisioned volume goes with its directory (reclaim
        policy Delete); a static one is Released and its directory kept."""
        key = (meta(claim)["namespace"], meta(claim)["name"])
        bound = self._bound.get(key)
        if bound is None or bound.claim_uid != meta(claim)["uid"]:
            return
        del self._bound[key]
        pv = self.volumes.get(("", bound.pv))
        if pv is not None and (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") != "Delete":
            asyncio.get_running_loop().create_task(self._release_static(bound.pv))
            return
        remove_tree(bound.directory)
        asyncio.get_running_loop().create_task(self._delete_volume(bound.pv))

    async def _delete_volume(self, name: str) -> None:
        try:
            pv = await self.api.get(VOLUMES, None, name)
            if pv is not None and "kubernetes.io/pv-protection" in (meta(pv).get("finalizers") or []):
                await self.api.patch(VOLUMES, None, name, {"metadata": {"finalizers": [
                    f for f in meta(pv)["finalizers"] if f != "kubernetes.io/pv-protection"]}})
            await self.api.delete(VOLUMES, None, name)
        except Exception as exc:  # noqa: BLE001 - the volume object stays; its directory is gone already
            logger.warning("local cluster: could not delete PersistentVolume %s: %s", name, exc)

    async def _release_static(self, name: str) -> None:
        try:
            self.volumes.observe(await self.api.patch(VOLUMES, None, name, {"status": {"phase": "Released"}},
                                                      subresource="status"))
        except Exception as exc:  # noqa: BLE001
            logger.warning("local cluster: could not release PersistentVolume %s: %s", name, exc)


def _one_named_node(affinity: Mapping[str, Any] | None) -> bool:
    """A local volume's node affinity names one node by hostname (a disk of that node, whose path local mode
    takes on the host, as it always did); otherwise (a class of nodes: a node cache) each node has its own."""
    terms = ((affinity or {}).get("required") or {}).get("nodeSelectorTerms") or []
    if len(terms) != 1:
        return False
    expressions = terms[0].get("matchExpressions") or []
    return any(e.get("key") == "kubernetes.io/hostname" and e.get("operator") == "In" and len(e.get("values") or []) == 1
               for e in expressions)


def _capacity(claim: Mapping[str, Any]) -> str:
    requested = ((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}
    return str(requested.get("storage") or "1Gi")


def _make_volume_directory(directory: Path, source: Path | None) -> None:
    """The volume's directory: empty, or a copy of `source`, put in place by one rename."""
    if directory.exists():
        if source is None:
            return
        remove_tree(directory)  # a restore an earlier run did not finish binding: made again
    directory.parent.mkdir(parents=True, exist_ok=True)
    if source is None:
        directory.mkdir()
    else:
        for leftover in directory.parent.glob(f".{directory.name}.partial-*"):  # a copy a crash cut short
            remove_tree(leftover)
        partial = directory.with_name(f".{directory.name}.partial-{secrets.token_hex(4)}")
        fstree.copy_tree(str(source), str(partial), copy_function=clone_or_copy)  # at any depth
        partial.rename(directory)
    directory.chmod(0o777)  # any container user may write, as on a local-path volume
