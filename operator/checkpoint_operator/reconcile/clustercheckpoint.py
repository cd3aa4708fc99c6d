"""ClusterCheckpoint (a catalog entry): protect it, import it once in the operator's namespace, keep
usedBy visible, and delete it only when no live TrainingJob of any namespace uses it.

The import is a Checkpoint's import (the same agent pod, built by the store) with another home: the
pod and, on the volume store, its claim live in the catalog namespace and are owned by the entry.
That namespace may not be watched (a namespaced install): the import is looked at again every
CATALOG_POLL seconds while it runs, whatever events say.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from checkpoint_operator import PROTECTION_FINALIZER, metrics
from checkpoint_operator.api.checkpoint import CheckpointPhase
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint, ClusterCheckpointHead, ClusterCheckpointStatus
from checkpoint_operator.api.common import PodPhase
from checkpoint_operator.api.trainingjob import TrainingJobPhase
from checkpoint_operator.kube import CLUSTER_CHECKPOINTS, PVCS, TRAINING_JOBS, ApiError, Conflict
from checkpoint_operator.logic import catalog, import_sources, limits
from checkpoint_operator.logic.protection import uses_selector
from checkpoint_operator.logic.results import Done, Fail, Result, Wait
from checkpoint_operator.api.sources import SourceStatus
from checkpoint_operator.logic.snapshot import ready_change
from checkpoint_operator.logic.status import StatusChange, fail_change
from checkpoint_operator.logic.workload import foreign_claim_message, owned_by
from checkpoint_operator.reconcile import agent_runs, status_writer, volumes
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.objects import InvalidObject, parse, parse_head
from checkpoint_operator.reconcile.status_writer import write_status
from checkpoint_operator.storage import ForeignLocation, MissingUpload, store_for
from checkpoint_operator.protocol import channel
from checkpoint_operator.protocol.results import ImportReport, Provenance, ScanReport

# The catalog's import pod (its owner the ClusterCheckpoint: trusted by that ownerReference, its UID
# not recorded yet).
IMPORT = agent_runs.AgentTask("import", "agentPodUid", (ScanReport,))
CATALOG_POLL = 2.0  # seconds: the import pod's namespace may be one the operator does not watch
# ready_change's fields that a catalog entry does not have (it is imported, never produced by a job).
NOT_OF_AN_ENTRY = ("parents", "producedBy")


AGAIN = -1.0  # a pass that changed the object's metadata (its finalizer): the next one reads it again


def reconcile(ctx: Context, name: str) -> Optional[float]:
    for _ in range(3):
        body = ctx.kube.get(CLUSTER_CHECKPOINTS, "", name)
        if body is None:
            return None
        with status_writer.status_pass(ctx, "ClusterCheckpoint", "", name):  # its one status write
            outcome = _pass(ctx, body)
        if outcome != AGAIN:
            return outcome
    return 0.0


def _pass(ctx: Context, body: dict[str, Any]) -> Optional[float]:
    try:
        entry = parse(ClusterCheckpoint, body)
    except InvalidObject as invalid:
        head = parse_head(ClusterCheckpointHead, invalid.body)
        if head.metadata.deleting:
            return guard_deletion(ctx, head)
        if not head.phase.is_settled:
            record(ctx, head, Fail("InvalidSpec", invalid.message()))
        return None
    if entry.metadata.deleting:
        return guard_deletion(ctx, entry)
    if not entry.metadata.has_finalizer(PROTECTION_FINALIZER):
        _add_finalizer(ctx, entry)
        return AGAIN
    if entry.phase.is_settled:
        sync_used_by(ctx, entry)
        return None
    return record(ctx, entry, import_entry(ctx, entry))


def record(ctx: Context, entry: ClusterCheckpointHead, result: Result) -> Optional[float]:
    return status_writer.record(ctx, entry, result, lambda fail: fail_change(CheckpointPhase.FAILED, fail))[1]


def _add_finalizer(ctx: Context, entry: ClusterCheckpoint) -> None:
    meta = entry.metadata
    try:
        ctx.wrote(ctx.kube.patch(CLUSTER_CHECKPOINTS, "", meta.name, {"metadata": {
            "finalizers": [*(meta.finalizers or []), PROTECTION_FINALIZER], "resourceVersion": meta.resourceVersion}}))
    except Conflict:
        pass  # re-read and try again


def sync_used_by(ctx: Context, entry: ClusterCheckpoint) -> None:
    wanted = catalog.used_by_status(ctx.indexes.users_of_cluster_checkpoint(entry.metadata.uid, entry.metadata.name))
    if (entry.status.usedBy or [], entry.status.usedByCount or 0) != ([], wanted.usedByCount):
        write_status(ctx, entry, StatusChange(fields=wanted))


# --- the import, in the catalog namespace ------------------------------------------------------------

def import_entry(ctx: Context, entry: ClusterCheckpoint) -> Result:
    store = store_for(ctx.config)
    namespace = ctx.config.catalog_namespace
    source = import_sources.import_spec_of(entry.spec.source)
    limit = limits.import_limit(ctx.config.max_checkpoint_bytes, None, entry.spec.maxSize)
    claim = catalog.catalog_claim_name(entry)
    try:
        if store.import_needs_claim:
            found = ctx.kube.ensure(PVCS, namespace, catalog.build_catalog_claim(entry, ctx.config, namespace))
            if not owned_by(found, entry.metadata.uid):  # never mount a claim that is not the entry's
                return Wait("ClaimNotOwned", foreign_claim_message(claim, entry.kind, entry.metadata.name,
                                                                   entry.metadata.uid), requeue_after=volumes.CLAIM_RECHECK)
        pod = catalog.build_import_pod(entry, ctx.config, namespace, store.catalog_import_containers(entry, limit))
        describe = f"importing {source.uri} in namespace {namespace}"
        started = StatusChange(phase=CheckpointPhase.IMPORTING, reason="Importing", message=describe, event="Normal")
        run = agent_runs.follow(ctx, entry, pod, IMPORT, started)
    except ApiError as exc:  # the catalog namespace is missing, or the operator may not act there
        return Wait("CatalogNamespaceUnusable", f"importing {source.uri} in namespace {namespace} (the catalog "
                                                f"namespace): {exc}", requeue_after=30.0)
    if isinstance(run, agent_runs.Waiting):
        if run.started:
            return Wait(requeue_after=CATALOG_POLL)
        if run.conflict:
            return Wait("NameConflict", run.conflict, requeue_after=5.0)
        if run.problem:
            return Wait(run.problem.reason, f"{describe}: {run.problem.message}",
                        requeue_after=run.retry_after or CATALOG_POLL)
        problem = volumes.unbound_claim(ctx, namespace, claim) \
            if store.import_needs_claim and run.phase == PodPhase.PENDING else None
        if problem:
            return Wait(problem.reason, f"{describe}: {problem.message}", requeue_after=volumes.CLAIM_RECHECK)
        return Wait(requeue_after=CATALOG_POLL)
    if isinstance(run, agent_runs.PodFailed):
        agent_runs.finish(ctx, pod)
        return Fail("ImportFailed", f"{describe}: {run.message}")
    assert run.result is not None
    return _record_import(ctx, entry, pod, run.result, claim, describe)


def _record_import(ctx: Context, entry: ClusterCheckpoint, pod: dict[str, Any], scan: ScanReport, claim: str,
                   describe: str) -> Result:
    store = store_for(ctx.config)

    def agent_runs_finish() -> None:  # only once the result is recorded (a crash before reruns the pod)
        agent_runs.finish(ctx, pod)
    if len(scan.checkpoints) != 1:
        agent_runs_finish()
        return Fail("ImportFailed", f"{describe}: no files found")
    manifest = scan.checkpoints[0]
    try:
        location = store.catalog_import_location(entry, claim, manifest)
        if not store.is_committed(location):
            raise MissingUpload("the upload into the store did not complete (no manifest)")
    except MissingUpload as exc:
        agent_runs_finish()
        return Fail("ImportFailed", f"{describe}: {exc}")
    reported: Optional[Provenance]
    try:
        reported = agent_runs.read_result(ctx, pod, (ImportReport,), "import").provenance
    except (channel.ResultError, ApiError):
        reported = None
    provenance = import_sources.source_status(import_sources.import_spec_of(entry.spec.source), reported)
    if isinstance(provenance, str):
        agent_runs_finish()
        return Fail("ImportFailed", f"{describe}: {provenance}")
    metrics.TRANSFERRED_BYTES.labels("import").inc(manifest.sizeBytes)
    change = ready_change(manifest, location, owned=True)
    write_status(ctx, entry, dataclasses.replace(change, fields=entry_fields(change, provenance, entry.spec.license)))
    agent_runs_finish()
    return Done()


def entry_fields(change: StatusChange, provenance: SourceStatus, license: Optional[str]) -> ClusterCheckpointStatus:
    """A Checkpoint's Ready fields as a catalog entry's (no parents nor producer: it is imported, never produced
    by a job), with what was fetched and the license it is used under."""
    ready = change.fields.model_dump(exclude_unset=True) if change.fields is not None else {}
    kept = {k: v for k, v in ready.items() if k in ClusterCheckpointStatus.model_fields and k not in NOT_OF_AN_ENTRY}
    return ClusterCheckpointStatus.model_validate({**kept, "source": provenance.model_dump(exclude_none=True),
                                                   "license": license})


# --- deletion: the in-use protection, across namespaces --------------------------------------------

def blocking_users(training_jobs: list[dict[str, Any]], entry: str) -> list[tuple[str, str]]:
    """(namespace, name) of the listed TrainingJobs that have not finished and whose spec names the
    entry: the label alone, which a tenant may put on any job, holds nothing (hostile3 F8)."""
    users = []
    for body in training_jobs:
        meta, status = body.get("metadata", {}), body.get("status") or {}
        refs = (body.get("spec") or {}).get("checkpoints") or []
        if not any(isinstance(ref, dict) and ref.get("clusterCheckpoint") == entry for ref in refs):
            continue
        try:
            finished = TrainingJobPhase(status.get("phase") or "Pending").is_finished
        except ValueError:
            finished = False
        if not finished:
            users.append((meta.get("namespace", ""), meta.get("name", "")))
    return sorted(users)


def live_users(ctx: Context, uid: str) -> list[dict[str, Any]]:
    """A live LIST of the TrainingJobs labelled as users: of every namespace, or of each watched one
    (a namespaced install may not list across namespaces)."""
    if not ctx.namespaces:
        return ctx.kube.list_live(TRAINING_JOBS, None, uses_selector(uid))
    return [job for namespace in ctx.namespaces
            for job in ctx.kube.list_live(TRAINING_JOBS, namespace, uses_selector(uid))]


def guard_deletion(ctx: Context, entry: ClusterCheckpointHead) -> Optional[float]:
    """The same protection as a Checkpoint's (logic/protection.py), with a cluster-wide LIST."""
    meta = entry.metadata
    if not meta.has_finalizer(PROTECTION_FINALIZER):
        return None
    users = blocking_users(live_users(ctx, meta.uid), meta.name)
    if users:
        first_time = entry.ready_reason() != "DeletionBlocked"
        message = catalog.deletion_blocked_message(users)
        if first_time or entry.status.message != message:  # who blocks it: for administrators only
            ctx.warn(entry, "DeletionBlocked", catalog.deletion_blocked_by(users))
        write_status(ctx, entry, StatusChange(
            reason="DeletionBlocked", message=message, ready=entry.phase == CheckpointPhase.READY))
        if first_time:
            metrics.BLOCKED_DELETIONS.inc()
        return None
    try:
        deleted = store_for(ctx.config).delete_catalog_data(entry.status)
    except ForeignLocation as exc:
        ctx.warn(entry, "DataNotDeleted", str(exc))
    else:
        if deleted:
            ctx.info(entry, "DataDeleted", f"deleted {deleted}")
    # Its claims (the catalog's copy, each namespace's copy) and pods are owned by it: the garbage collector
    # deletes them once it is gone.
    remaining = [f for f in meta.finalizers or [] if f != PROTECTION_FINALIZER]
    try:
        ctx.kube.patch(CLUSTER_CHECKPOINTS, "", meta.name, {"metadata": {
            "finalizers": remaining, "resourceVersion": meta.resourceVersion}})
    except Conflict:
        return 0.0
    return None
