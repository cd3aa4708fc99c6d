"""From the snapshot pod's scan result to the Checkpoints to create (pure and deterministic,
so a snapshot that is run again, e.g. after an operator restart, finds the same names)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from checkpoint_operator import API_VERSION, PROTECTION_FINALIZER
from checkpoint_operator.agent.manifest import Manifest
from checkpoint_operator.logic.conditions import kstatus_conditions, set_condition
from checkpoint_operator.logic.naming import MAX_LABEL_NAME, assign_checkpoint_names, bounded_name
from checkpoint_operator.logic.quantity import format_size
from checkpoint_operator.logic.retention import apply_keep
from checkpoint_operator.logic.workload import LABEL_MANAGED_BY, LABEL_TRAINING_JOB, LABEL_TRAINING_JOB_UID, MANAGER


class ScanOutputError(ValueError):
    pass


@dataclass
class ScanResult:
    checkpoints: list[Manifest]
    skipped: list[dict]
    uploads: dict[str, str] = field(default_factory=dict)  # s3 store: directory -> uri of its committed upload


@dataclass
class PlannedCheckpoint:
    name: str
    directory: str
    body: dict          # what to create (metadata + spec)
    status: dict        # what to write into its status once created


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
                              skipped=list(data.get("skipped", [])), uploads=dict(data.get("uploads", {})))
    raise ScanOutputError("the snapshot pod's log holds no scan result (a JSON line with 'checkpoints')")


def is_produced_by(checkpoint: dict, job_uid: str, directory: str) -> bool:
    source = checkpoint.get("spec", {}).get("source", {}).get("trainingJob") or {}
    return source.get("uid") == job_uid and source.get("directory") == directory


def plan_snapshot(tj: dict, scan: ScanResult, existing: list[dict], location_of, now: str) -> SnapshotPlan:
    """`location_of(manifest)` gives the status.location of an entry (the store decides)."""
    meta, spec, status = tj["metadata"], tj["spec"], tj.get("status", {})
    output = spec.get("output", {})
    kept, dropped = apply_keep(scan.checkpoints, output.get("keep"), lambda m: m.step)
    prefix = output.get("namePrefix") or meta["name"]

    directories = [m.path for m in kept]
    ours = {c["metadata"]["name"] for c in existing if any(is_produced_by(c, meta["uid"], d) for d in directories)}
    taken_by_others = {c["metadata"]["name"] for c in existing} - ours
    names = assign_checkpoint_names(prefix, directories, taken_by_others, files=output.get("layout") == "files")

    planned = []
    for manifest in kept:
        name = names[manifest.path]
        body = {"apiVersion": API_VERSION, "kind": "Checkpoint",
                # Born with the finalizer: protected before any job can see it Ready.
                "metadata": {"name": name, "namespace": meta["namespace"], "finalizers": [PROTECTION_FINALIZER],
                             "labels": {LABEL_MANAGED_BY: MANAGER,
                                        LABEL_TRAINING_JOB: bounded_name(meta["name"], MAX_LABEL_NAME),
                                        LABEL_TRAINING_JOB_UID: meta["uid"]}},
                "spec": {"source": {"trainingJob": {"name": meta["name"], "uid": meta["uid"],
                                                    "directory": manifest.path}}}}
        planned.append(PlannedCheckpoint(name, manifest.path, body,
                                         ready_status(manifest, location_of(manifest), owned=True,
                                                      produced_by={"name": meta["name"], "uid": meta["uid"]},
                                                      parents=status.get("inputs") or [], now=now)))
    return SnapshotPlan(planned, [m.path for m in dropped], scan.skipped)


def completeness_condition(manifest: Manifest) -> tuple[str, str, str]:
    """(status, reason, message) of the `Complete` condition, from the manifest's verdict."""
    if manifest.complete is None:
        return "Unknown", "NoRule", f"no completeness rule for format {manifest.format}"
    if manifest.complete:
        return "True", "Complete", manifest.completeReason or "complete"
    return "False", "Incomplete", manifest.completeReason or "incomplete"


def ready_status(manifest: Manifest, location: dict, *, owned: bool, now: str,
                 produced_by: Optional[dict] = None, parents: Optional[list] = None,
                 conditions: Optional[list] = None, generation: int = 1) -> dict:
    status = {
        "phase": "Ready", "message": f"{manifest.fileCount} files, {format_size(manifest.sizeBytes)}",
        "location": location, "owned": owned,
        "sizeBytes": manifest.sizeBytes, "size": format_size(manifest.sizeBytes), "fileCount": manifest.fileCount,
        "digest": manifest.digest, "format": manifest.format, "resumable": manifest.resumable,
        "parents": parents or [], "observedGeneration": generation,
        "conditions": kstatus_conditions(conditions, ready=True, reason="Ready",
                                         message=f"{manifest.fileCount} files, digest {manifest.digest}",
                                         generation=generation, now=now),
    }
    if manifest.step is not None:
        status["step"] = manifest.step
    # Complete (contract 2): kept and Ready even when False (weights can be salvaged), but
    # `select: latest` skips it; the condition carries the one-line reason.
    complete, reason, message = completeness_condition(manifest)
    if manifest.complete is not None:
        status["complete"] = manifest.complete
    if manifest.complete is False:
        status["message"] += f"; incomplete: {message}"
    status["conditions"] = set_condition(status["conditions"], "Complete", complete, reason, message, generation, now)
    if produced_by:
        status["producedBy"] = produced_by
    return status
