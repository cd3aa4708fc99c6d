"""Checkpoint: protect it, adopt or import its data, keep usedBy visible, and delete it only
when no live TrainingJob uses it (logic/protection.py has the design and its race argument).

Checkpoints made by a snapshot are created by their TrainingJob with the sealed data in their
spec, and made Ready here (reconcile/sealed_checkpoints.py); the ones users create point at a
volume path (scanned in place) or at s3/http (imported): reconcile/checkpoint_import.py. Only
this reconcile writes a Checkpoint's status, once per pass (reconcile/status_writer.py).
"""

from __future__ import annotations

from typing import Any, Optional

from checkpoint_operator import PROTECTION_FINALIZER
from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointHead, CheckpointPhase
from checkpoint_operator.reconcile import annotation_requests, checkpoint_import, live_sealing, sealed_checkpoints
from checkpoint_operator.reconcile import node_cache as node_cache_steps
from checkpoint_operator.reconcile import volume_snapshots as volume_snapshot_steps
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.objects import InvalidObject, parse, parse_head
from checkpoint_operator.reconcile import status_writer
from checkpoint_operator.reconcile.status_writer import write_status
from checkpoint_operator.kube import CHECKPOINTS, TRAINING_JOBS, Conflict
from checkpoint_operator.logic import data_holds
from checkpoint_operator.logic.protection import (blocking_users, deletion_blocked_message, used_by_status,
                                                  uses_selector)
from checkpoint_operator.logic.results import Fail, Result
from checkpoint_operator.logic.status import StatusChange, fail_change
from checkpoint_operator.storage import ForeignLocation, store_for
from checkpoint_operator import metrics


AGAIN = -1.0  # a pass that changed the object (its finalizer, its snapshot's state): the next one reads it again


def reconcile(ctx: Context, namespace: str, name: str) -> Optional[float]:
    for attempt in range(3):  # the first read from the cache; after a change of ours, live
        body = ctx.kube.cached_get(CHECKPOINTS, namespace, name) if attempt == 0 else \
            ctx.kube.get(CHECKPOINTS, namespace, name)
        if body is None:
            return None
        with status_writer.status_pass(ctx, "Checkpoint", namespace, name):  # its one status write
            outcome = _pass(ctx, body)
        if outcome != AGAIN:
            return outcome
    return 0.0


def _pass(ctx: Context, body: dict[str, Any]) -> Optional[float]:
    try:
        checkpoint = parse(Checkpoint, body)
    except InvalidObject as invalid:
        head = parse_head(CheckpointHead, invalid.body)
        if head.metadata.deleting:
            return guard_deletion(ctx, head)
        if not head.phase.is_settled:
            record(ctx, head, Fail("InvalidSpec", invalid.message()))
        return None
    if checkpoint.metadata.deleting:
        return guard_deletion(ctx, checkpoint)
    if not checkpoint.metadata.has_finalizer(PROTECTION_FINALIZER):
        _add_finalizer(ctx, checkpoint)
        return AGAIN
    if sealed_checkpoints.changed_after_sealing(ctx, checkpoint):  # its job asks: the bytes in place changed
        return None
    if checkpoint.phase.is_settled:
        if volume_snapshot_steps.check_checkpoint(ctx, checkpoint):
            return AGAIN  # its status changed (its snapshot's state): the next pass reads it as written
        sync_used_by(ctx, checkpoint)
        node_cache_steps.sync_cached_on(ctx, checkpoint)  # as the jobs that read it asked
        return annotation_requests.serve(ctx, checkpoint)  # verify and pull requests (reconcile/annotation_requests.py)
    return record(ctx, checkpoint, checkpoint_import.step(ctx, checkpoint))


def record(ctx: Context, checkpoint: CheckpointHead, result: Result) -> Optional[float]:
    return status_writer.record(ctx, checkpoint, result, lambda fail: fail_change(CheckpointPhase.FAILED, fail))[1]


def _add_finalizer(ctx: Context, checkpoint: Checkpoint) -> None:
    """User-created Checkpoints get the protection before anything can use them (jobs refuse an
    input without it). Conditional: a merge patch replaces the whole list."""
    meta = checkpoint.metadata
    try:
        ctx.wrote(ctx.kube.patch(CHECKPOINTS, meta.namespace, meta.name, {"metadata": {
            "finalizers": [*(meta.finalizers or []), PROTECTION_FINALIZER], "resourceVersion": meta.resourceVersion}}))
    except Conflict:
        pass  # re-read and try again


def sync_used_by(ctx: Context, checkpoint: Checkpoint) -> None:
    """status.usedBy/usedByCount from the index, written only when they change (informational)."""
    meta = checkpoint.metadata
    wanted = used_by_status(ctx.indexes.users_of(meta.namespace, meta.uid))
    if (checkpoint.status.usedBy or [], checkpoint.status.usedByCount or 0) != (wanted.usedBy, wanted.usedByCount):
        write_status(ctx, checkpoint, StatusChange(fields=wanted))


# --- deletion: the in-use protection finalizer ---------------------------------------------------

def guard_deletion(ctx: Context, checkpoint: CheckpointHead) -> Optional[float]:
    """A live LIST of the jobs labelled as users decides; their events wake this again. Needs
    no spec (a Checkpoint whose spec no longer parses is deleted all the same)."""
    meta = checkpoint.metadata
    if not meta.has_finalizer(PROTECTION_FINALIZER):
        return None
    users = blocking_users(ctx.kube.list_live(TRAINING_JOBS, meta.namespace, uses_selector(meta.uid)))
    if users:
        first_time = checkpoint.ready_reason() != "DeletionBlocked"
        write_status(ctx, checkpoint, StatusChange(
            reason="DeletionBlocked", message=deletion_blocked_message(users),
            ready=checkpoint.phase == CheckpointPhase.READY, event="Warning"))
        if first_time:  # one deletion, however many times it is checked
            metrics.BLOCKED_DELETIONS.inc()
        return None
    # A running job sealed it: it must not publish it again (its job records it retired first).
    if isinstance(checkpoint, Checkpoint) and live_sealing.retirement_pending(ctx, checkpoint):
        return live_sealing.RETIREMENT_RECHECK
    _delete_owned_data(ctx, checkpoint)
    remaining = [f for f in meta.finalizers or [] if f != PROTECTION_FINALIZER]
    try:
        ctx.kube.patch(CHECKPOINTS, meta.namespace, meta.name, {"metadata": {
            "finalizers": remaining, "resourceVersion": meta.resourceVersion}})
    except Conflict:
        return 0.0  # changed meanwhile: decide again on a fresh read
    return None


def _delete_owned_data(ctx: Context, checkpoint: CheckpointHead) -> None:
    """The store's bytes of an owned Checkpoint, unless another Checkpoint's location points into
    them (logic/data_holds.py): then they stay, and say so."""
    meta, status = checkpoint.metadata, checkpoint.status
    uri = (status.location.s3.uri if status.location and status.location.s3 else None) \
        or (status.upload.uri if status.upload else None)
    keeping = data_holds.holders(uri, ctx.indexes.pointers_in_store(meta.namespace), s3=True, exclude=meta.name) \
        if status.owned and uri else []
    if keeping and uri:
        ctx.warn(checkpoint, "DataKept", data_holds.kept_message(uri, keeping, "deleting this Checkpoint releases"))
        return
    try:
        deleted = store_for(ctx.config).delete_owned_data(status, meta.namespace)
    except ForeignLocation as exc:
        ctx.warn(checkpoint, "DataNotDeleted", str(exc))
    else:
        if deleted:
            ctx.info(checkpoint, "DataDeleted", f"deleted {deleted}")
