"""Where the parts of a checkpoint assembled across workers live (output.volumePerWorker), and how
a consumer sees them as one directory.

The volume store mounts the parts side by side, read-only, with subPath, into the input's one
directory: each part is (worker i's claim, the checkpoint's directory in it, the items it
provides). An item is a file, or a whole directory when every file of the union under it comes
from that worker (Orbax's `ocdbt.process_<i>/`, a rank's own subdirectory): one mount for it. So
a DCP checkpoint of N ranks is N + 1 mounts (`.metadata` and each rank's shard), and nothing is
copied; a duplicate file (the same bytes in several workers) is mounted from the first worker
that has it. The s3 store needs none of this: the snapshot uploads the union as one checkpoint.
"""

from __future__ import annotations

from typing import Optional

from checkpoint_operator.protocol.manifest import MANIFESTS_DIR, stored_manifest_name
from checkpoint_operator.protocol.parts import grouped_items
from checkpoint_operator.protocol.results import CheckpointSummary
from checkpoint_operator.api.checkpoint import VolumeLocation
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.logic.snapshot import NotStorable
from checkpoint_operator.logic.workload import worker_claim_name

__all__ = ["grouped_items", "parts_count", "volume_parts"]


def parts_count(tj: TrainingJob) -> Optional[int]:
    """How many worker volumes the snapshot reads (None: the one shared output volume)."""
    return tj.spec.replicas if tj.output_enabled and tj.spec.output.parts_per_worker else None


def volume_parts(tj: TrainingJob, checkpoint: CheckpointSummary, layout: str) -> list[VolumeLocation]:
    """status.location.volumeParts of one checkpoint: per worker that provides files, its claim,
    the checkpoint's directory there and its items (the agent's report of the parts, agent/parts.py).
    The full manifest, when stored, is in the first part's volume. NotStorable when the report
    does not fit the job."""
    if not checkpoint.parts:
        raise NotStorable(f"{checkpoint.path!r}: the snapshot reported no workers' parts for it")
    directory = _directory_in_part(tj, checkpoint.path, layout)
    stored = f"{MANIFESTS_DIR}/{stored_manifest_name(checkpoint.digest)}" if checkpoint.manifestStored else None
    locations: list[VolumeLocation] = []
    for part in checkpoint.parts:
        if not 0 <= part.worker < tj.spec.replicas:
            raise NotStorable(f"{checkpoint.path!r}: the snapshot named worker {part.worker}, the job has "
                              f"{tj.spec.replicas}")
        if part.items is None and (len(checkpoint.parts) != 1 or directory == "."):
            raise NotStorable(f"{checkpoint.path!r}: the snapshot named no files of worker {part.worker}")
        locations.append(VolumeLocation(claimName=worker_claim_name(tj, part.worker), path=directory,
                                        items=part.items, manifest=stored if not locations else None))
    return locations


def _directory_in_part(tj: TrainingJob, path: str, layout: str) -> str:
    """The checkpoint's directory inside a worker's volume: `worker-<i>/<dir>` (per worker) or
    `<dir>` (a union) without the worker; the root files and `files` entries live at its root."""
    if tj.spec.output.perWorker:
        _, _, path = path.partition("/")
        path = path or "."
    return "." if path == "." or layout == "files" else path
