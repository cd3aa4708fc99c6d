"""The volume store (default): checkpoints stay on the volumes they were written to.

`VolumeStore`: a snapshot freezes checkpoints where the job wrote them. Checkpoints point at
(claim, path); inputs mount that claim read-only with subPath; the output PVC's owner references
move from the job to its Checkpoints, so Kubernetes deletes it with the last of them. Nothing but
a StorageClass is needed; a ReadWriteMany class serves consumers on every node, a ReadWriteOnce
one (block storage) only on the node the volume is attached to (docs/storage.md).

`SnapshotVolumeStore` (storage.volume.snapshotClassName): checkpoints are kept in CSI
VolumeSnapshots of the volumes they were written to, and each consumer pod gets a volume restored
from one, so ReadWriteOnce block storage serves consumers on any node (logic/volume_snapshots.py
has the whole design). The output volume is released once its checkpoints are in snapshots.
"""

from __future__ import annotations

import posixpath
from typing import Any, Optional

from checkpoint_operator.protocol.manifest import MANIFEST_NAME, MANIFESTS_DIR
from checkpoint_operator.protocol.results import MAX_ITEMS, CheckpointSummary
from checkpoint_operator.api.checkpoint import Checkpoint, Location, VolumeLocation
from checkpoint_operator.logic.parts import parts_count, volume_parts
from checkpoint_operator.api.upload import UploadStatus
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.logic import agent_commands, volume_snapshots
from checkpoint_operator.logic.agent_pods import INPUT_VOLUME_PREFIX, InputVolumes, agent_container
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint
from checkpoint_operator.logic.catalog import catalog_claim_name
from checkpoint_operator.logic.import_sources import ImportSpec, import_spec, import_spec_of, pinned_source
from checkpoint_operator.logic.snapshot import NotStorable
from checkpoint_operator.logic.transfers import UploadRequest, build_receiver_pod
from checkpoint_operator.logic.volume_snapshots import SnapshotRequest, Taken, TakenParts, TakenSnapshot
from checkpoint_operator.logic.workload import (IMPORT_DIR, checkpoint_labels, import_claim_name, import_data_dir,
                                                output_storage_class, owner_reference, training_job_labels)
from checkpoint_operator.storage.base import MissingUpload, PodParts, Store, UploadPod, volume_location


class VolumeStore(Store):
    name = "volume"
    keeps_output_claim = True
    import_needs_claim = True
    snapshot_writes_output = True  # the full manifests, in .ckpt-manifests/ at the output's root

    def input_volumes(self, tj: TrainingJob, inputs: list[ResolvedInput]) -> InputVolumes:
        """Each input read-only, with subPath at <inputDir>/<name>; one volume per claim, or per
        snapshot (a volume of each pod's own, restored from it: logic/volume_snapshots.py)."""
        volumes: dict[str, dict[str, Any]] = {}
        mounts: list[dict[str, Any]] = []
        for item in inputs:
            location = item.location
            parts: list[tuple[str, Optional[str], str, Optional[list[str]]]]  # (key, claim, path, items)
            if location.volumeParts:  # a checkpoint assembled across workers: its parts side by side
                parts = [(f"claim/{p.claimName}", p.claimName, p.path, p.items) for p in location.volumeParts]
            elif location.snapshots:  # one snapshot, or one per worker's part (mounted side by side)
                parts = []
                for source in location.snapshots:
                    key = f"snapshot/{source.volumeSnapshotName}"
                    if key not in volumes:
                        volumes[key] = volume_snapshots.restored_volume(
                            f"{INPUT_VOLUME_PREFIX}{len(volumes)}", source, self.config.volume_restore_access_mode,
                            training_job_labels(tj, volume_snapshots.COMPONENT_RESTORED))
                    parts.append((key, None, source.path, source.items))
            elif location.volume is not None:
                volume = location.volume
                parts = [(f"claim/{volume.claimName}", volume.claimName, volume.path, volume.items)]
            else:
                raise ValueError(f"input {item.name} is neither on a volume nor in a volume snapshot "
                                 "(status.location has neither)")
            base = posixpath.join(tj.spec.inputDir, item.mount_name)
            for key, claim, path, items in parts:
                if claim is not None:
                    volumes.setdefault(key, {"name": f"{INPUT_VOLUME_PREFIX}{len(volumes)}",
                                             "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
                volume_name = volumes[key]["name"]
                sub_path = posixpath.normpath(path.lstrip("/") or ".")
                rels: list[Optional[str]] = [*items] if items else [None]
                for rel in rels:  # items: only these files (e.g. the root files)
                    full = sub_path if rel is None else posixpath.join(sub_path, rel)
                    mounts.append({"name": volume_name, "readOnly": True,
                                   "mountPath": base if rel is None else posixpath.join(base, rel),
                                   "subPath": "" if full == "." else posixpath.normpath(full)})
        return InputVolumes(volumes=list(volumes.values()), mounts=mounts)

    def snapshot_command(self, tj: TrainingJob, output_dir: str) -> list[str]:
        """The scan of the output, its manifests written beside the data (never into a checkpoint;
        with a volume per worker, in each worker's volume: agent/parts.py)."""
        output = tj.spec.output
        parts = parts_count(tj)
        return agent_commands.scan(output_dir, layout=output.layout, result=True,
                                   manifests_dir=posixpath.join(output_dir, MANIFESTS_DIR),
                                   sync=self.syncs_before_snapshots, parts=parts, per_worker=bool(output.perWorker))

    def snapshot_location(self, tj: TrainingJob, claim: str, manifest: CheckpointSummary, layout: str,
                          taken: Optional[Taken] = None) -> Location:
        """Where the checkpoint lies on the output claim (see `output_place`), or on its workers'
        claims side by side (a volume per worker: logic/parts.py)."""
        if manifest.parts is not None or parts_count(tj):  # none reported for such a job: NotStorable there
            return Location(volumeParts=volume_parts(tj, manifest, layout))
        path, items = output_place(manifest, layout)
        return volume_location(claim, path, manifest, items=items)

    def import_containers(self, checkpoint: Checkpoint, max_size: int) -> PodParts:
        return self._import_parts(import_spec(checkpoint), import_claim_name(checkpoint), max_size)

    # --- the catalog (ClusterCheckpoints) --------------------------------------------------------

    def catalog_import_containers(self, entry: ClusterCheckpoint, max_size: int) -> PodParts:
        """The catalog's copy, on a claim of the operator's namespace (the digest every use is checked against)."""
        return self._import_parts(import_spec_of(entry.spec.source), catalog_claim_name(entry), max_size)

    def catalog_import_location(self, entry: ClusterCheckpoint, claim: str, manifest: CheckpointSummary) -> Location:
        return volume_location(claim, IMPORT_DIR, manifest)

    def copy_containers(self, entry: ClusterCheckpoint, claim: str, max_size: int) -> PodParts:
        """A namespace's copy: a claim cannot be mounted from another namespace, so the source is fetched
        again at the commit the catalog's import recorded, and the scan's digest must equal the entry's."""
        source = pinned_source(entry.spec.source, (entry.status.source.resolvedRevision
                                                   if entry.status.source else None))
        return self._import_parts(import_spec_of(source), claim, max_size)

    def _import_parts(self, source: ImportSpec, claim: str, max_size: int) -> PodParts:
        data_dir = import_data_dir()
        mount = [{"name": "data", "mountPath": posixpath.dirname(data_dir)}]
        # The claim is the Checkpoint's own: only an earlier import (a pod deleted unread) wrote there.
        fetch = agent_commands.import_(source.uri, data_dir, max_size=max_size, source_args=source.args,
                                       replace_earlier=True)
        scan = agent_commands.scan(data_dir, single=True, sync=self.syncs_before_snapshots)
        # Import onto the Checkpoint's own PVC, then scan it: one container. Every argument is
        # passed to the script (never written into it: a glob or a URL is not shell text), so
        # every runtime can rewrite the paths: $0 is DEST, "$@" the import's arguments. The
        # manifest goes beside DEST (.ckpt-manifests/ at the claim's root).
        sync = " --sync" if self.syncs_before_snapshots else ""  # a fixed word of ours
        script = (f'{" ".join(fetch[:3])} "$@" && {" ".join(scan[:3])} "$0" --single --result '
                  f'--manifests-dir "${{0%/*}}/{MANIFESTS_DIR}"{sync}')
        container = agent_container("import", ["sh", "-c", script, data_dir, *fetch[3:]], self.config,
                                    mounts=mount + source.mounts, env=source.env)
        volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}, *source.volumes]
        return [], [container], volumes

    def import_location(self, checkpoint: Checkpoint, claim: str, manifest: CheckpointSummary,
                        taken: Optional[TakenSnapshot] = None) -> Location:
        return volume_location(claim, IMPORT_DIR, manifest)

    def upload_target(self, checkpoint: Checkpoint) -> UploadStatus:
        return UploadStatus(store="volume", claimName=import_claim_name(checkpoint))

    def upload_pod(self, checkpoint: Checkpoint, request: UploadRequest, max_size: int) -> UploadPod:
        """A receiver pod on the Checkpoint's own PVC takes the pushed stream and checks it (and
        syncs its filesystem when a volume snapshot of it follows); the push's own manifest stays
        beside the data it describes (agent unpack writes it there)."""
        pod = build_receiver_pod(checkpoint, self.config, request, max_size, sync=self.syncs_before_snapshots)
        name = pod["metadata"]["name"]
        claim = import_claim_name(checkpoint)
        location = Location(volume=VolumeLocation(claimName=claim, path=IMPORT_DIR,
                                                  manifest=f"{IMPORT_DIR}/{MANIFEST_NAME}"))
        return UploadPod(pod, UploadStatus(store="volume", claimName=claim, pod=name),
                         location, f"pod {name} is ready to receive the push")


def output_place(manifest: CheckpointSummary, layout: str) -> tuple[str, Optional[list[str]]]:
    """(directory, items) of a checkpoint of the output: the root files (and, in the `files`
    layout, each file) share their directory with other checkpoints, so only their own files are
    listed as items (mounted one by one, at most MAX_ITEMS: else NotStorable)."""
    if layout == "files":
        return ".", [manifest.path]
    if manifest.path == ".":
        if manifest.items is None:
            raise NotStorable(f"{manifest.fileCount} files at the root of the output: a volume location mounts "
                              f"root files one by one, at most {MAX_ITEMS}; write them into a directory")
        return ".", manifest.items
    return manifest.path, None


class SnapshotVolumeStore(VolumeStore):
    """The volume store with a VolumeSnapshotClass (see the module's docstring). The full manifests
    are written beside the data as on the volume store, so they are in the snapshots too; a
    snapshot location does not name them (verify and pull then read the data alone)."""

    keeps_output_claim = False
    syncs_before_snapshots = True

    @property
    def copies_per_namespace(self) -> bool:
        """Catalog entries are copied into each namespace as on the plain volume store: the catalog's
        own copy is a claim of the operator's namespace, which no other namespace can mount (the
        copies are claims, not snapshots: on a ReadWriteOnce class they are read on one node at a time)."""
        return True

    @property
    def snapshot_class(self) -> str:
        assert self.config.volume_snapshot_class
        return self.config.volume_snapshot_class

    def output_snapshot(self, tj: TrainingJob, claim: str, key: str) -> Optional[SnapshotRequest]:
        return volume_snapshots.build_volume_snapshot(
            tj.metadata.namespace, claim, key, self.snapshot_class,
            training_job_labels(tj, volume_snapshots.COMPONENT_OUTPUT), owner_reference(tj),
            output_storage_class(tj, self.config))

    def import_snapshot(self, checkpoint: Checkpoint, claim: str) -> Optional[SnapshotRequest]:
        return volume_snapshots.build_volume_snapshot(
            checkpoint.metadata.namespace, claim, "import", self.snapshot_class,
            checkpoint_labels(checkpoint, volume_snapshots.COMPONENT_IMPORT),
            owner_reference(checkpoint), self.config.default_storage_class)

    @staticmethod
    def _in_snapshot(taken: Optional[Taken], path: str, items: Optional[list[str]] = None) -> Location:
        if taken is None:
            return Location()  # not located yet: is_committed says so, and nothing is made Ready with it
        if not isinstance(taken, TakenSnapshot):
            raise MissingUpload(f"{path!r} is on one volume, but the snapshots taken are of workers' volumes")
        return volume_snapshots.snapshot_location(taken, path, items)

    def snapshot_location(self, tj: TrainingJob, claim: str, manifest: CheckpointSummary, layout: str,
                          taken: Optional[Taken] = None) -> Location:
        """In the output's snapshot; with a volume per worker, each part in the snapshot of its
        worker's volume (logic/parts.py gives the parts, NotStorable before any snapshot is taken)."""
        if manifest.parts is not None or parts_count(tj):
            parts = volume_parts(tj, manifest, layout)
            if taken is None:
                return Location()
            if not isinstance(taken, TakenParts):
                raise MissingUpload(f"{manifest.path!r} is assembled across workers' volumes, but the snapshot "
                                    "taken is of one volume")
            try:
                return volume_snapshots.snapshot_parts_location(
                    [(p.worker, part) for p, part in zip(manifest.parts or [], parts)], taken)
            except volume_snapshots.SnapshotNotReady as exc:
                raise MissingUpload(f"{manifest.path!r}: {exc}") from exc
        path, items = output_place(manifest, layout)  # NotStorable before any snapshot is taken
        return self._in_snapshot(taken, path, items)

    def live_location(self, tj: TrainingJob, claim: str, manifest: CheckpointSummary,
                      taken: Optional[TakenSnapshot] = None) -> Location:
        return self._in_snapshot(taken, manifest.path)

    def import_location(self, checkpoint: Checkpoint, claim: str, manifest: CheckpointSummary,
                        taken: Optional[TakenSnapshot] = None) -> Location:
        if taken is None:
            raise MissingUpload("the import's volume snapshot is not taken yet")
        return self._in_snapshot(taken, IMPORT_DIR)

    def is_committed(self, location: Location) -> bool:
        """Only a location in ready snapshots: a checkpoint whose snapshot is not taken yet waits."""
        return bool(location.snapshots)
