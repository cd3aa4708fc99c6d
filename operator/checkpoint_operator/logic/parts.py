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

from checkpoint_operator.agent.manifest import Manifest
from checkpoint_operator.api.checkpoint import VolumeLocation
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.logic.workload import worker_claim_name


def parts_count(tj: TrainingJob) -> Optional[int]:
    """How many worker volumes the snapshot reads (None: the one shared output volume)."""
    return tj.spec.replicas if tj.output_enabled and tj.spec.output.parts_per_worker else None


def grouped_items(files: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """(item, worker) covering `files` ((path, worker) each): a directory whose files all come
    from one worker is one item, else its entries are looked at one level down."""
    groups: dict[str, list[tuple[str, int]]] = {}
    direct: dict[str, int] = {}
    for path, worker in files:
        head, _, rest = path.partition("/")
        if rest:
            groups.setdefault(head, []).append((rest, worker))
        else:
            direct[head] = worker
    items = [(name, worker) for name, worker in direct.items()]
    for head, inside in groups.items():
        workers = {w for _, w in inside}
        if len(workers) == 1 and head not in direct:
            items.append((head, inside[0][1]))
        else:
            items += [(f"{head}/{rel}", w) for rel, w in grouped_items(inside)]
    return sorted(items, key=lambda i: i[0].encode())


def volume_parts(tj: TrainingJob, manifest: Manifest, layout: str, sources: list[int]) -> list[VolumeLocation]:
    """status.location.volumeParts of one checkpoint: per worker that provides files, its claim,
    the checkpoint's directory there and its items. `sources`: the worker of each manifest file
    (the agent's report, agent/parts.py), in the manifest's order."""
    if len(sources) != len(manifest.files):
        raise ValueError(f"{manifest.path!r}: the snapshot reported the workers of {len(sources)} files, "
                         f"the manifest lists {len(manifest.files)}")
    directory = _directory_in_part(tj, manifest.path, layout)
    by_worker: dict[int, list[str]] = {}
    for item, worker in grouped_items([(f.path, w) for f, w in zip(manifest.files, sources)]):
        by_worker.setdefault(worker, []).append(item)
    parts = []
    for worker in sorted(by_worker):
        if not 0 <= worker < tj.spec.replicas:
            raise ValueError(f"{manifest.path!r}: the snapshot named worker {worker}, the job has "
                             f"{tj.spec.replicas}")
        whole = len(by_worker) == 1 and directory != "." and layout != "files"
        parts.append(VolumeLocation(claimName=worker_claim_name(tj, worker), path=directory,
                                    items=None if whole else by_worker[worker]))
    return parts


def _directory_in_part(tj: TrainingJob, path: str, layout: str) -> str:
    """The checkpoint's directory inside a worker's volume: `worker-<i>/<dir>` (per worker) or
    `<dir>` (a union) without the worker; the root files and `files` entries live at its root."""
    if tj.spec.output.perWorker:
        _, _, path = path.partition("/")
        path = path or "."
    return "." if path == "." or layout == "files" else path
