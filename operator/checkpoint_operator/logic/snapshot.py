"""From the snapshot pod's scan result to the Checkpoints to create (pure and deterministic,
so a snapshot that is run again, e.g. after an operator restart, finds the same names).

The scan result is protocol/results.py's ScanReport, read by reconcile/agent_runs.py: per
checkpoint only what its status needs (never its files)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from checkpoint_operator import API_VERSION, PROTECTION_FINALIZER
from checkpoint_operator.protocol.results import MAX_SKIPPED_REPORTED, CheckpointSummary, ScanReport, Skipped, cut
from checkpoint_operator.api.checkpoint import CheckpointPhase, CheckpointStatus, Location, SealedData
from checkpoint_operator.api.common import ObjectRef, PinnedCheckpoint
from checkpoint_operator.api.rules import MAX_METRIC, bounded_count
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.logic.inputs import CheckpointInfo
from checkpoint_operator.logic.naming import (MAX_LABEL_NAME, bounded_name, checkpoint_name,
                                             per_worker_checkpoint_name)
from checkpoint_operator.logic.quantity import format_size
from checkpoint_operator.logic.results import Wait
from checkpoint_operator.logic import retention
from checkpoint_operator.logic.status import ConditionChange, StatusChange
from checkpoint_operator.logic.workload import LABEL_MANAGED_BY, LABEL_TRAINING_JOB, LABEL_TRAINING_JOB_UID, MANAGER

SKIPPED_SHOWN = 5  # entries quoted in the one aggregated Skipped event


class NotStorable(ValueError):
    """A checkpoint the store cannot keep where it is (the volume store: more root files than a
    location mounts one by one); it is left out like a skipped entry, and the output is kept."""


def storable(scan: ScanReport, location_of: Callable[[CheckpointSummary], Location]) -> ScanReport:
    """The scan without the checkpoints the store cannot keep, each then counted as skipped
    with the store's reason (first in the list: the one a user must act on)."""
    kept: list[CheckpointSummary] = []
    refused: list[Skipped] = []
    for manifest in scan.checkpoints:
        try:
            location_of(manifest)
            kept.append(manifest)
        except NotStorable as exc:
            refused.append(Skipped(path=manifest.path, reason=cut(str(exc))))
    if not refused:
        return scan
    return scan.model_copy(update={"checkpoints": kept, "skipped": [*refused, *scan.skipped][:MAX_SKIPPED_REPORTED],
                                   "skippedCount": scan.total_skipped + len(refused)})


@dataclass
class PlannedCheckpoint:
    name: str
    directory: str
    body: dict[str, Any]   # what to create (metadata + spec)
    location: Location     # where its data is
    ready: StatusChange    # the status its own reconcile derives from the sealed data (the message of events)

    @property
    def sealed_size(self) -> int:
        fields = self.ready.fields
        return (fields.sizeBytes or 0) if isinstance(fields, CheckpointStatus) else 0


@dataclass(frozen=True)
class NameConflict:
    """The name an output directory derives is held by a Checkpoint that is not this job's
    Checkpoint of that directory: never another name (a name means the same data in every run)."""

    directory: str
    name: str
    holder: CheckpointInfo

    @property
    def message(self) -> str:
        holder = self.holder
        if holder.unsigned_claim:
            by = (f"its spec.source.trainingJob names TrainingJob {holder.producer_name} without the operator's "
                  "signature: not written by this job")
        else:
            by = (f"written by TrainingJob {holder.producer_name} (uid {holder.producer_uid}) from "
                  f"{holder.directory!r}" if holder.producer_name else "not written by this job")
        fix = ("it is being deleted" if holder.deleting else
               "delete it, or give this job another spec.output.namePrefix")
        return f"output {self.directory!r} would be Checkpoint {self.name}, which exists ({by}): {fix}"


CONFLICT_RECHECK_SECONDS = 10.0  # a conflict ends when its holder is deleted: looked at again this often


def conflicts_message(conflicts: Sequence[NameConflict]) -> str:
    shown = "; ".join(c.message for c in conflicts[:SKIPPED_SHOWN])
    more = f"; and {len(conflicts) - SKIPPED_SHOWN} more" if len(conflicts) > SKIPPED_SHOWN else ""
    return f"{shown}{more}"


def conflict_wait(conflicts: Sequence[NameConflict]) -> Optional[Wait]:
    """The end-of-job snapshot waits, creating nothing, while a name it derives is held by
    another object: Stalled unless every holder is already being deleted."""
    if not conflicts:
        return None
    return Wait("NameConflict", conflicts_message(conflicts), requeue_after=CONFLICT_RECHECK_SECONDS,
                stalled=not all(c.holder.deleting for c in conflicts))


@dataclass
class SnapshotPlan:
    checkpoints: list[PlannedCheckpoint]
    dropped: list[str]  # directories left out by output.keep / output.retention
    skipped: list[Skipped]
    retire: list[CheckpointInfo] = field(default_factory=list)   # this job's Checkpoints retention now drops
    changed: list[tuple[CheckpointInfo, CheckpointSummary]] = field(default_factory=list)  # bytes not its digest
    dropped_manifests: list[CheckpointSummary] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)      # directories retention retired before: not made again
    missing: list[CheckpointInfo] = field(default_factory=list)  # this job's Ready ones whose directory went away
    conflicts: list[NameConflict] = field(default_factory=list)  # not planned: their name is someone else's


def missing_message(directory: str, skipped: Sequence[Skipped]) -> str:
    """Why a sealed directory the end-of-job scan did not find as a checkpoint is no longer its
    bytes: what the scan said of it (unreadable, a file it refused), else that it is gone."""
    said = next((s for s in skipped if s.path == directory or s.path.startswith(directory + "/")), None)
    if said is not None:
        return f"{directory} changed after it was sealed: {said.path}: {said.reason}"
    return f"{directory} was removed after it was sealed (or its files can no longer be found)"


def _entry(key: str, step: Optional[int], metrics: Optional[Iterable[tuple[str, float]] | Mapping[str, float]],
           exempt: bool = False, order: str = "", complete: Optional[bool] = None,
           resumable: Optional[bool] = False) -> retention.Entry:
    return retention.Entry(key, step, dict(metrics) if metrics else None, exempt, order, complete, bool(resumable))


def plan_snapshot(tj: TrainingJob, scan: ScanReport, lookup: Callable[[str], Optional[CheckpointInfo]],
                  location_of: Callable[[CheckpointSummary], Location], *, existing: Sequence[CheckpointInfo] = (),
                  retired: Iterable[tuple[str, str]] = ()) -> SnapshotPlan:
    """`lookup(name)`: the Checkpoint of that name in the job's namespace (from the index), so
    only the candidate names are looked at, never the whole namespace. `location_of(manifest)`
    gives an entry's status.location (the store decides).

    `existing`: the job's own Checkpoints (live sealing made them while it ran): a directory that
    has one keeps its name (so nothing is ever created twice, whatever else appears beside it),
    one whose bytes are no longer its digest is `changed`, and retention decides over them and
    the new entries together (`retire`: the existing ones it now drops). `retired`: (directory,
    digest) of Checkpoints retention deleted, and directories whose Checkpoint is being
    deleted: never made again, whatever their bytes now (what a removal that failed in part left,
    or a directory written again under a retired name: never published under the deleted one's name)."""
    meta, output = tj.metadata, tj.spec.output
    prefix = output.namePrefix or meta.name
    by_directory = {c.directory: c for c in existing if c.directory is not None}
    gone_directories = {p for p, _ in retired} | {c.directory for c in existing if c.deleting}
    new: list[CheckpointSummary] = []
    changed: list[tuple[CheckpointInfo, CheckpointSummary]] = []
    not_again: list[str] = []
    for manifest in scan.checkpoints:
        if manifest.path in gone_directories:
            not_again.append(manifest.path)
            continue
        mine = by_directory.get(manifest.path)
        if mine is not None and mine.digest and mine.digest != manifest.digest:
            changed.append((mine, manifest))
            continue
        new.append(manifest)

    # Retention over the job's usable Checkpoints and the new entries together; a directory found
    # again that has its Checkpoint already keeps that Checkpoint's label (ckpt.dev/keep) and age.
    candidates: dict[str, retention.Entry] = {}
    for m in new:
        mine = by_directory.get(m.path)
        candidates[m.path] = _entry(m.path, m.step, m.metrics, mine.exempt if mine else False,
                                    mine.created if mine else "", m.complete, m.resumable)
    for c in existing:
        if c.is_usable and c.directory is not None and c.directory not in candidates:
            candidates[c.directory] = _entry(c.directory, c.step, c.metrics, c.exempt, c.created, c.complete,
                                             c.resumable)
    _, dropped = retention.decide(list(candidates.values()), retention.Policy.of(output))
    dropped_keys = {e.key for e in dropped}
    kept_new = [m for m in new if m.path not in dropped_keys]
    retire = [c for c in existing if c.is_usable and c.directory in dropped_keys]

    names, conflicts = _names(meta.uid, prefix, [m.path for m in kept_new], by_directory, lookup,
                              per_worker=bool(output.perWorker),
                              files=output.layout == "files")
    planned = []
    for manifest in kept_new:
        if manifest.path not in names:
            continue  # its name is held by another object (conflicts)
        name = names[manifest.path]
        location = location_of(manifest)
        # What the Checkpoint's own reconcile makes it Ready from (the job never writes its status).
        sealed = sealed_data(manifest, location, list(tj.status.inputs or []))
        body = {"apiVersion": API_VERSION, "kind": "Checkpoint",
                # Born with the finalizer: protected before any job can see it Ready.
                "metadata": {"name": name, "namespace": meta.namespace, "finalizers": [PROTECTION_FINALIZER],
                             "labels": {LABEL_MANAGED_BY: MANAGER,
                                        LABEL_TRAINING_JOB: bounded_name(meta.name, MAX_LABEL_NAME),
                                        LABEL_TRAINING_JOB_UID: meta.uid}},
                "spec": {"source": {"trainingJob": {"name": meta.name, "uid": meta.uid,
                                                    "directory": manifest.path, "sealed": sealed.to_wire()}}}}
        planned.append(PlannedCheckpoint(name, manifest.path, body, location,
                                         sealed_ready_change(sealed, owned=True,
                                                             produced_by=ObjectRef(name=meta.name, uid=meta.uid),
                                                             event=None)))
    dropped_new = [m for m in new if m.path in dropped_keys]
    scanned = {m.path for m in scan.checkpoints}
    missing = [c for c in existing if c.is_usable and c.directory not in scanned]
    return SnapshotPlan(planned, [m.path for m in dropped_new], scan.skipped, retire=retire, changed=changed,
                        dropped_manifests=dropped_new, gone=not_again, missing=missing, conflicts=conflicts)


def _names(uid: str, prefix: str, directories: list[str], by_directory: Mapping[str, CheckpointInfo],
           lookup: Callable[[str], Optional[CheckpointInfo]], files: bool, per_worker: bool = False
           ) -> tuple[dict[str, str], list[NameConflict]]:
    """The existing name of each directory that has a Checkpoint of this job (one an earlier
    operator version named keeps its name), the derived name (logic/naming.py) of the others;
    a derived name held by anything but this job's Checkpoint of that directory is a conflict."""
    names = {d: by_directory[d].name for d in directories if d in by_directory}
    taken = {c.name: c for c in by_directory.values()}
    conflicts = []
    for directory in sorted(d for d in directories if d not in names):
        name = per_worker_checkpoint_name(prefix, directory, is_file=files) if per_worker else \
            checkpoint_name(prefix, directory, is_file=files)
        holder = taken.get(name) or lookup(name)
        if holder is not None and not (holder.producer_uid == uid and holder.directory == directory):
            conflicts.append(NameConflict(directory, name, holder))
            continue
        names[directory] = name
        taken[name] = holder or CheckpointInfo(name=name, uid="", phase=CheckpointPhase.PENDING, producer_uid=uid,
                                               directory=directory)
    return names, conflicts


@dataclass(frozen=True)
class Completeness:
    """Contract 2, as the status shows it: `complete` (True, False, or None: not checked) and the
    Complete condition's status, reason and message."""

    complete: Optional[bool]
    reason: str

    @property
    def condition(self) -> ConditionChange:
        status, word = ("Unknown", "NotChecked") if self.complete is None else \
            ("True", "Complete") if self.complete else ("False", "Incomplete")
        return ConditionChange("Complete", status, word, self.reason)


def completeness(manifest: CheckpointSummary) -> Completeness:
    """The manifest's verdict as it is: true, false, or None (nothing could be checked: never
    counted as complete), with its reason."""
    complete = manifest.complete
    reason = manifest.completeReason
    if complete is None:
        return Completeness(None, reason or f"not checked: no completeness check applies (format {manifest.format})")
    return Completeness(bool(complete), reason or ("complete" if complete else "incomplete"))


def finite_metrics(metrics: Optional[Mapping[str, float]]) -> Optional[dict[str, float]]:
    """The metrics a status can hold: finite floats within Metric's range, at most 16 (a manifest
    from anywhere may carry NaN, which the API server's JSON refuses)."""
    if not metrics:
        return None
    kept = {k: float(v) for k, v in sorted(metrics.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= MAX_METRIC}
    return dict(list(kept.items())[:16]) or None


MAX_REASON = 4096  # a completeness reason kept in a Checkpoint's spec (the agent's own is short)


def sealed_data(manifest: CheckpointSummary, location: Location,
                parents: Optional[list[PinnedCheckpoint]] = None) -> SealedData:
    """What a status shows of stored, verified data, from its manifest: every number one the
    schema accepts (an integer beyond int64 is left out, metrics are finite)."""
    verdict = completeness(manifest)
    return SealedData(digest=manifest.digest, sizeBytes=bounded_count(manifest.sizeBytes),
                      fileCount=bounded_count(manifest.fileCount), format=manifest.format,
                      step=bounded_count(manifest.step), resumable=manifest.resumable, complete=verdict.complete,
                      completeReason=verdict.reason[:MAX_REASON], metrics=finite_metrics(manifest.metrics),
                      location=location, parents=parents or None)


def ready_change(manifest: CheckpointSummary, location: Location, *, owned: bool,
                 produced_by: Optional[ObjectRef] = None, parents: Optional[list[PinnedCheckpoint]] = None,
                 event: Optional[str] = "Normal") -> StatusChange:
    """The status of a Checkpoint whose data is stored and verified: Ready, with the manifest's
    totals, digest, format, step, and the Complete condition (contract 2)."""
    return sealed_ready_change(sealed_data(manifest, location, parents), owned=owned, produced_by=produced_by,
                               event=event)


def sealed_ready_change(sealed: SealedData, *, owned: bool, produced_by: Optional[ObjectRef] = None,
                        event: Optional[str] = "Normal") -> StatusChange:
    """Ready from the sealed data (a snapshot Checkpoint's spec.source.trainingJob.sealed, or an
    import's manifest): the totals, digest, format, step, lineage and the Complete condition."""
    verdict = Completeness(sealed.complete, sealed.completeReason or "")
    size, files = sealed.sizeBytes, sealed.fileCount
    shown = format_size(size) if size is not None else "size unknown"
    message = f"{files if files is not None else 'unknown'} files, {shown}, digest {sealed.digest}"
    if verdict.complete is False:
        message += f"; incomplete: {verdict.reason}"
    elif verdict.complete is None:
        message += f"; {verdict.reason}" if verdict.reason.startswith("not checked") else \
            f"; not checked: {verdict.reason}"
    fields = CheckpointStatus(
        location=sealed.location, owned=owned, sizeBytes=size, size=format_size(size) if size is not None else None,
        fileCount=files, digest=sealed.digest, format=sealed.format, resumable=sealed.resumable,
        complete=verdict.complete, parents=sealed.parents or [], step=sealed.step, producedBy=produced_by,
        metrics=sealed.metrics)
    return StatusChange(phase=CheckpointPhase.READY.value, reason="Ready", message=message, ready=True, event=event,
                        fields=fields, conditions=(verdict.condition,))


def skipped_message(skipped: Sequence[Skipped], total: Optional[int] = None) -> str:
    """One line for all skipped entries: the count and the first few paths with their reasons."""
    total = max(total or 0, len(skipped))
    shown = "; ".join(f"{s.path!r}: {s.reason}" for s in skipped[:SKIPPED_SHOWN])
    more = f"; and {total - SKIPPED_SHOWN} more" if total > SKIPPED_SHOWN else ""
    return f"{total} output entr{'y' if total == 1 else 'ies'} skipped: {shown}{more}"


def not_stored(scan: ScanReport, created: int) -> Optional[str]:
    """What of the output was not stored as Checkpoints (None: everything that was there).
    `keep` drops are the user's choice and do not count."""
    if scan.total_skipped:
        return skipped_message(scan.skipped, scan.skippedCount)
    if created == 0 and scan.checkpoints:
        return "no checkpoint was created from a non-empty output"
    return None
