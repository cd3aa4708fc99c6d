"""From the snapshot pod's scan result to the Checkpoints to create (pure and deterministic,
so a snapshot that is run again, e.g. after an operator restart, finds the same names)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Optional

from checkpoint_operator import API_VERSION, PROTECTION_FINALIZER
from checkpoint_operator.agent.manifest import Manifest
from checkpoint_operator.api.checkpoint import CheckpointPhase
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.logic.inputs import CheckpointInfo
from checkpoint_operator.logic.naming import MAX_LABEL_NAME, assign_checkpoint_names, bounded_name, checkpoint_name
from checkpoint_operator.logic.quantity import format_size
from checkpoint_operator.logic.retention import apply_keep
from checkpoint_operator.logic.status import ConditionChange, StatusChange
from checkpoint_operator.logic.workload import LABEL_MANAGED_BY, LABEL_TRAINING_JOB, LABEL_TRAINING_JOB_UID, MANAGER

SKIPPED_SHOWN = 5  # entries quoted in the one aggregated Skipped event


class ScanOutputError(ValueError):
    pass


@dataclass
class ScanResult:
    checkpoints: list[Manifest]
    skipped: list[dict]
    uploads: dict[str, str] = field(default_factory=dict)  # s3 store: directory -> uri of its committed upload
    skipped_count: Optional[int] = None                   # the agent may report more than it lists

    @property
    def total_skipped(self) -> int:
        return max(self.skipped_count or 0, len(self.skipped))


@dataclass
class PlannedCheckpoint:
    name: str
    directory: str
    body: dict             # what to create (metadata + spec)
    ready: StatusChange    # what to write into its status once created


@dataclass
class SnapshotPlan:
    checkpoints: list[PlannedCheckpoint]
    dropped: list[str]  # directories left out by output.keep
    skipped: list[dict]


def parse_scan_output(log: str) -> ScanResult:
    """The agent prints its result as one JSON line on stdout; anything else in the log is ignored."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "checkpoints" in data:
            return ScanResult(checkpoints=[Manifest.model_validate(c) for c in data["checkpoints"]],
                              skipped=list(data.get("skipped", [])), uploads=dict(data.get("uploads", {})),
                              skipped_count=data.get("skippedCount"))
    raise ScanOutputError("the snapshot pod's log holds no scan result (a JSON line with 'checkpoints')")


def is_produced_by(checkpoint: dict, job_uid: str, directory: str) -> bool:
    source = checkpoint.get("spec", {}).get("source", {}).get("trainingJob") or {}
    return source.get("uid") == job_uid and source.get("directory") == directory


def candidate_names(prefix: str, directories: list[str], files: bool = False) -> set[str]:
    """Every name the plan could give these directories (plain and hashed forms)."""
    return {checkpoint_name(prefix, d, force_hash=h, is_file=files) for d in directories for h in (False, True)}


def plan_snapshot(tj: TrainingJob, scan: ScanResult, lookup: Callable[[str], Optional[CheckpointInfo]],
                  location_of: Callable[[Manifest], dict]) -> SnapshotPlan:
    """`lookup(name)`: the Checkpoint of that name in the job's namespace (from the index), so
    only the candidate names are looked at, never the whole namespace. `location_of(manifest)`
    gives an entry's status.location (the store decides)."""
    meta, output = tj.metadata, tj.spec.output
    kept, dropped = apply_keep(scan.checkpoints, output.keep, lambda m: m.step)
    prefix = output.namePrefix or meta.name

    directories = [m.path for m in kept]
    taken_by_others = set()
    files = output.layout == "files"  # file entries are named without their extension
    for name in candidate_names(prefix, directories, files):
        found = lookup(name)
        if found is not None and not (found.producer_uid == meta.uid and found.directory in directories):
            taken_by_others.add(name)
    names = assign_checkpoint_names(prefix, directories, taken_by_others, files=files)

    planned = []
    for manifest in kept:
        name = names[manifest.path]
        body = {"apiVersion": API_VERSION, "kind": "Checkpoint",
                # Born with the finalizer: protected before any job can see it Ready.
                "metadata": {"name": name, "namespace": meta.namespace, "finalizers": [PROTECTION_FINALIZER],
                             "labels": {LABEL_MANAGED_BY: MANAGER,
                                        LABEL_TRAINING_JOB: bounded_name(meta.name, MAX_LABEL_NAME),
                                        LABEL_TRAINING_JOB_UID: meta.uid}},
                "spec": {"source": {"trainingJob": {"name": meta.name, "uid": meta.uid,
                                                    "directory": manifest.path}}}}
        parents = [p.to_wire() for p in tj.status.inputs or []]
        planned.append(PlannedCheckpoint(name, manifest.path, body,
                                         ready_change(manifest, location_of(manifest), owned=True,
                                                      produced_by={"name": meta.name, "uid": meta.uid},
                                                      parents=parents, event=None)))
    return SnapshotPlan(planned, [m.path for m in dropped], scan.skipped)


def completeness(manifest: Manifest) -> tuple[bool, str]:
    """Contract 2: the manifest's verdict (absent: no rule for this format, so complete)."""
    complete = getattr(manifest, "complete", None)
    reason = getattr(manifest, "completeReason", None)
    if complete is None:
        return True, reason or f"no completeness rule for format {manifest.format}"
    return bool(complete), reason or ("complete" if complete else "incomplete")


def ready_change(manifest: Manifest, location: dict, *, owned: bool, produced_by: Optional[dict] = None,
                 parents: Optional[list] = None, event: Optional[str] = "Normal") -> StatusChange:
    """The status of a Checkpoint whose data is stored and verified: Ready, with the manifest's
    totals, digest, format, step, and the Complete condition (contract 2)."""
    complete, complete_reason = completeness(manifest)
    message = (f"{manifest.fileCount} files, {format_size(manifest.sizeBytes)}, digest {manifest.digest}"
               + ("" if complete else f"; incomplete: {complete_reason}"))
    fields = {"location": location, "owned": owned, "sizeBytes": manifest.sizeBytes,
              "size": format_size(manifest.sizeBytes), "fileCount": manifest.fileCount, "digest": manifest.digest,
              "format": manifest.format, "resumable": manifest.resumable, "complete": complete,
              "parents": parents or [], "step": manifest.step, "producedBy": produced_by}
    return StatusChange(phase=CheckpointPhase.READY.value, reason="Ready", message=message, ready=True, event=event,
                        fields=fields, conditions=(ConditionChange("Complete", "True" if complete else "False",
                                                                   "Complete" if complete else "Incomplete",
                                                                   complete_reason),))


def skipped_message(skipped: list[dict], total: Optional[int] = None) -> str:
    """One line for all skipped entries: the count and the first few paths with their reasons."""
    total = max(total or 0, len(skipped))
    shown = "; ".join(f"{s.get('path')!r}: {s.get('reason')}" for s in skipped[:SKIPPED_SHOWN])
    more = f"; and {total - SKIPPED_SHOWN} more" if total > SKIPPED_SHOWN else ""
    return f"{total} output entr{'y' if total == 1 else 'ies'} skipped: {shown}{more}"


def not_stored(scan: ScanResult, created: int) -> Optional[str]:
    """What of the output was not stored as Checkpoints (None: everything that was there).
    `keep` drops are the user's choice and do not count."""
    if scan.total_skipped:
        return skipped_message(scan.skipped, scan.skipped_count)
    if created == 0 and scan.checkpoints:
        return "no checkpoint was created from a non-empty output"
    return None
