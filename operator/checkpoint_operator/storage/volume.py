"""The volume store (default): a snapshot freezes checkpoints where the job wrote them.

Checkpoints point at (claim, path); inputs mount that claim read-only with subPath; the
output PVC's owner references move from the job to its Checkpoints, so Kubernetes deletes
it with the last of them. Nothing but a StorageClass is needed."""

from __future__ import annotations

import posixpath
from typing import Any, Optional

from checkpoint_operator.agent.manifest import Manifest
from checkpoint_operator.api.checkpoint import Checkpoint, Location, VolumeLocation
from checkpoint_operator.api.upload import UploadStatus
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.logic import agent_commands
from checkpoint_operator.logic.agent_pods import INPUT_VOLUME_PREFIX, InputVolumes, agent_container
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint
from checkpoint_operator.logic.catalog import catalog_claim_name
from checkpoint_operator.logic.import_sources import ImportSpec, import_spec, import_spec_of, pinned_source
from checkpoint_operator.logic.workload import IMPORT_DIR, import_claim_name, import_data_dir
from checkpoint_operator.logic.transfers import UploadRequest, build_receiver_pod
from checkpoint_operator.storage.base import PodParts, Store, UploadPod


class VolumeStore(Store):
    name = "volume"
    keeps_output_claim = True
    import_needs_claim = True

    def input_volumes(self, tj: TrainingJob, inputs: list[ResolvedInput]) -> InputVolumes:
        """Each input's PVC, read-only, with subPath at <inputDir>/<name>; one volume per claim."""
        volumes: dict[str, dict[str, Any]] = {}
        mounts = []
        for item in inputs:
            location = item.location.volume
            if location is None:
                raise ValueError(f"input {item.name} is not on a volume (status.location has no volume)")
            claim = location.claimName
            volume_name = volumes.setdefault(claim, {
                "name": f"{INPUT_VOLUME_PREFIX}{len(volumes)}",
                "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})["name"]
            base = posixpath.join(tj.spec.inputDir, item.mount_name)
            sub_path = posixpath.normpath(location.path.lstrip("/") or ".")
            items: list[Optional[str]] = [*location.items] if location.items else [None]
            for rel in items:  # items: only these files (e.g. the root files)
                path = sub_path if rel is None else posixpath.join(sub_path, rel)
                mounts.append({"name": volume_name, "readOnly": True,
                               "mountPath": base if rel is None else posixpath.join(base, rel),
                               "subPath": "" if path == "." else posixpath.normpath(path)})
        return InputVolumes(volumes=list(volumes.values()), mounts=mounts)

    def snapshot_command(self, tj: TrainingJob, output_dir: str) -> list[str]:
        return agent_commands.scan(output_dir, layout=tj.spec.output.layout)

    def snapshot_location(self, tj: TrainingJob, claim: str, manifest: Manifest, layout: str,
                          uploads: dict[str, str]) -> Location:
        """The root files (and, in the `files` layout, each file) share their directory with
        other checkpoints, so only their own files are listed as items (mounted one by one)."""
        if manifest.path == "." or layout == "files":
            return Location(volume=VolumeLocation(claimName=claim, path=".", items=[f.path for f in manifest.files]))
        return Location(volume=VolumeLocation(claimName=claim, path=manifest.path))

    def import_containers(self, checkpoint: Checkpoint, max_size: int) -> PodParts:
        return self._import_parts(import_spec(checkpoint), import_claim_name(checkpoint), max_size)

    # --- the catalog (ClusterCheckpoints) --------------------------------------------------------

    def catalog_import_containers(self, entry: ClusterCheckpoint, max_size: int) -> PodParts:
        """The catalog's copy, on a claim of the operator's namespace (the digest every use is checked against)."""
        return self._import_parts(import_spec_of(entry.spec.source), catalog_claim_name(entry), max_size)

    def catalog_import_location(self, entry: ClusterCheckpoint, claim: str, uploads: dict[str, str]) -> Location:
        return Location(volume=VolumeLocation(claimName=claim, path=IMPORT_DIR))

    def copy_containers(self, entry: ClusterCheckpoint, claim: str, max_size: int) -> PodParts:
        """A namespace's copy: a claim cannot be mounted from another namespace, so the source is fetched
        again at the commit the catalog's import recorded, and the scan's digest must equal the entry's."""
        source = pinned_source(entry.spec.source, (entry.status.source.resolvedRevision
                                                   if entry.status.source else None))
        return self._import_parts(import_spec_of(source), claim, max_size)

    def _import_parts(self, source: ImportSpec, claim: str, max_size: int) -> PodParts:
        data_dir = import_data_dir()
        mount = [{"name": "data", "mountPath": posixpath.dirname(data_dir)}]
        fetch = agent_commands.import_(source.uri, data_dir, max_size=max_size, source_args=source.args)
        scan = agent_commands.scan(data_dir, single=True)
        # Import onto the Checkpoint's own PVC, then scan it: one container. Every argument is
        # passed to the script (never written into it: a glob or a URL is not shell text), so
        # every runtime can rewrite the paths: $0 is DEST, "$@" the import's arguments.
        script = f'{" ".join(fetch[:3])} "$@" && {" ".join(scan[:3])} "$0" --single --json'
        container = agent_container("import", ["sh", "-c", script, data_dir, *fetch[3:]], self.config,
                                    mounts=mount + source.mounts, env=source.env)
        volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}, *source.volumes]
        return [], [container], volumes

    def import_location(self, checkpoint: Checkpoint, claim: str, uploads: dict[str, str]) -> Location:
        return Location(volume=VolumeLocation(claimName=claim, path=IMPORT_DIR))

    def upload_target(self, checkpoint: Checkpoint) -> UploadStatus:
        return UploadStatus(store="volume", claimName=import_claim_name(checkpoint))

    def upload_pod(self, checkpoint: Checkpoint, request: UploadRequest, max_size: int) -> UploadPod:
        """A receiver pod on the Checkpoint's own PVC takes the pushed stream and checks it."""
        pod = build_receiver_pod(checkpoint, self.config, request, max_size)
        name = pod["metadata"]["name"]
        return UploadPod(pod, UploadStatus(store="volume", claimName=import_claim_name(checkpoint), pod=name),
                         self.import_location(checkpoint, import_claim_name(checkpoint), {}),
                         f"pod {name} is ready to receive the push")
