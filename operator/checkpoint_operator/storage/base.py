"""The store interface: everything that differs between keeping checkpoints on volumes and
in object storage. Methods that build pod parts and locations are pure; the only I/O is the
s3 store's own calls to the object store (commit checks, deleting data the operator owns),
never the Kubernetes API."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

from checkpoint_operator.protocol.manifest import MANIFESTS_DIR, stored_manifest_name
from checkpoint_operator.protocol.results import CheckpointSummary
from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointStatus, Location, VolumeLocation
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint, ClusterCheckpointStatus
from checkpoint_operator.api.upload import UploadStatus
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic.agent_pods import InputVolumes
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.logic.transfers import UploadRequest
from checkpoint_operator.logic.volume_snapshots import SnapshotRequest, Taken, TakenSnapshot
from checkpoint_operator.logic.workload import worker_claim_name


# (init containers, containers, volumes) of a pod a store builds
PodParts = tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]


class MissingUpload(ValueError):
    pass


def volume_location(claim: str, path: str, manifest: CheckpointSummary, items: Optional[list[str]] = None) -> Location:
    """A location on a volume; with the path of the full manifest when the agent stored it
    beside the data (`.ckpt-manifests/` at the volume's root: protocol/manifest.py)."""
    stored = f"{MANIFESTS_DIR}/{stored_manifest_name(manifest.digest)}" if manifest.manifestStored else None
    return Location(volume=VolumeLocation(claimName=claim, path=path, items=items, manifest=stored))


@dataclass(frozen=True)
class UploadPod:
    """How a store serves a push request (reconcile/checkpoint_upload.py)."""

    pod: dict[str, Any]      # the pod to run
    target: UploadStatus     # status.upload while it runs
    location: Location       # status.location once the data is verified
    describe: str            # what it does, for the Ready condition
class ForeignLocation(ValueError):
    """A Checkpoint's recorded location lies outside its namespace's part of the store: its data
    is not deleted (the operator's own credentials reach every namespace; a status written by
    someone else must not steer them)."""


class Store(ABC):
    name: str
    keeps_output_claim: bool   # volume: the output PVC becomes the Checkpoints' storage
    import_needs_claim: bool   # volume: an import lands on a PVC of its own
    snapshot_writes_output: bool  # volume: the snapshot writes the full manifests beside the data
    # A write to a sealed directory after its sealing may reach its Checkpoint's bytes (volume: they
    # are those bytes; with volume snapshots, a snapshot cut after the write holds it), so such a
    # Checkpoint fails; s3: the sealed copy was uploaded, the Checkpoint keeps it.
    later_writes_reach_checkpoints: bool = True
    # The agents sync the filesystem they scanned or sealed (a volume snapshot of it follows).
    syncs_before_snapshots: bool = False

    def __init__(self, config: OperatorConfig):
        self.config = config

    def agent_env(self) -> list[dict[str, Any]]:
        """Environment of agent pods that talk to the store."""
        return []

    @abstractmethod
    def input_volumes(self, tj: TrainingJob, inputs: list[ResolvedInput]) -> InputVolumes: ...

    @abstractmethod
    def snapshot_command(self, tj: TrainingJob, output_dir: str) -> list[str]: ...

    @abstractmethod
    def snapshot_location(self, tj: TrainingJob, claim: str, manifest: CheckpointSummary, layout: str,
                          taken: Optional[Taken] = None) -> Location:
        """status.location of a checkpoint the snapshot found; MissingUpload when its data was not
        stored, logic.snapshot.NotStorable when it cannot be. `taken`: the volume snapshot of the
        output, or of each worker's volume (stores that keep checkpoints in volume snapshots; see
        `output_snapshot`, `output_part_snapshots`)."""

    @abstractmethod
    def import_containers(self, checkpoint: Checkpoint, max_size: int) -> PodParts:
        """(init containers, containers, volumes) of the pod that imports `checkpoint`."""

    @abstractmethod
    def import_location(self, checkpoint: Checkpoint, claim: str, manifest: CheckpointSummary,
                        taken: Optional[TakenSnapshot] = None) -> Location: ...

    @abstractmethod
    def upload_target(self, checkpoint: Checkpoint) -> UploadStatus:
        """status.upload of an upload Checkpoint waiting for a push: where the data goes."""

    @abstractmethod
    def upload_pod(self, checkpoint: Checkpoint, request: UploadRequest, max_size: int) -> UploadPod:
        """The pod that serves a push request: it takes (volume) or checks (s3) the pushed data."""

    def output_snapshot(self, tj: TrainingJob, claim: str, key: str) -> Optional[SnapshotRequest]:
        """The VolumeSnapshot of a job's output volume to take before its checkpoints are located
        there (`key`: "final", or a sealed directory's path and digest); None: this store locates
        them where they are written, or where they were uploaded."""
        return None

    def output_part_snapshots(self, tj: TrainingJob, workers: list[int], key: str) -> dict[int, SnapshotRequest]:
        """The VolumeSnapshot of each of these workers' volumes (output.volumePerWorker, perWorker),
        by worker; empty where `output_snapshot` is None."""
        requests = {w: self.output_snapshot(tj, worker_claim_name(tj, w), key) for w in workers}
        return {w: r for w, r in requests.items() if r is not None}

    def import_snapshot(self, checkpoint: Checkpoint, claim: str) -> Optional[SnapshotRequest]:
        """The VolumeSnapshot of an import's volume to take before the Checkpoint is Ready (None: none)."""
        return None

    def live_upload_prefix(self, tj: TrainingJob) -> Optional[str]:
        """The sealing sidecar's --upload-to (None: the volume is the store, nothing is uploaded)."""
        return None

    def live_sealed_prefix(self, tj: TrainingJob) -> Optional[str]:
        """Where the sealing sidecar uploads (None: it uploads nothing, the volume is the store)."""
        return None

    def live_location(self, tj: TrainingJob, claim: str, manifest: CheckpointSummary,
                      taken: Optional[TakenSnapshot] = None) -> Location:
        """status.location of a checkpoint sealed while the job runs."""
        return volume_location(claim, manifest.path, manifest)

    def is_committed(self, location: Location) -> bool:
        """Is the data at `location` complete? Checked before a Checkpoint is marked Ready."""
        return True

    def sealed_upload_refusal(self, location: Location, namespace: str, job_name: str, job_uid: str) -> Optional[str]:
        """Why a snapshot Checkpoint's sealed location (its spec) is not a committed upload of that job
        (None: it is, or the bytes are not uploaded: volumes, checked against the API)."""
        if location.s3 is not None:
            return f"the sealed location {location.s3.uri} is in object storage, but this store ({self.name}) has none"
        return None

    def delete_unused_uploads(self, tj: TrainingJob, uris: list[str]) -> list[str]:
        """Uploads of the snapshot that became no Checkpoint (dropped by retention, retired while
        the job ran): deleted, so nothing is left in the store that no object owns."""
        return []

    # --- the catalog (ClusterCheckpoints: docs/catalog.md) ------------------------------------------
    # volume: the catalog's copy is a claim of the operator's namespace and each namespace that uses an
    # entry gets a verified copy of its own (`copy_containers`); s3: one copy under the catalog prefix,
    # which every namespace's credentials read.

    @property
    def copies_per_namespace(self) -> bool:
        return self.keeps_output_claim

    @abstractmethod
    def catalog_import_containers(self, entry: ClusterCheckpoint, max_size: int) -> PodParts:
        """(init containers, containers, volumes) of the pod that imports a catalog entry (operator's namespace)."""

    @abstractmethod
    def catalog_import_location(self, entry: ClusterCheckpoint, claim: str, manifest: CheckpointSummary) -> Location: ...

    def copy_containers(self, entry: ClusterCheckpoint, claim: str, max_size: int) -> PodParts:
        """The pod parts that copy an entry into a namespace's claim (stores with copies_per_namespace)."""
        raise NotImplementedError(f"the {self.name} store reads catalog entries where they are")

    def delete_catalog_data(self, status: ClusterCheckpointStatus) -> Optional[str]:
        """Delete a deleted entry's data that the operator owns (volume: its claims go with it, by owner
        references); return where it was."""
        return None

    def delete_owned_data(self, status: CheckpointStatus, namespace: str) -> Optional[str]:
        """Delete the data of a deleted Checkpoint (of `namespace`) that the operator owns; return
        where it was. Idempotent. Volume data goes with its PVC (owner references), so nothing
        to do there."""
        return None
