"""Live sealing, the operator's side (spec.output.publish: Continuous; logic/live_sealing.py has the parts).

`collect` runs in the Running step of a TrainingJob, every `live_poll_interval` seconds and
once more when the Job has finished: it reads the sealing sidecar's log of each of the job's
pods (the only channel from the pod: its service account needs no permission; only pods the
Job the operator created controls), a bounded piece from where the last read ended, then

1. publishes each sealed checkpoint as a Ready Checkpoint, planned exactly as the end-of-job
   snapshot plans (logic/snapshot.py: same names, manifest fields, lineage), so the snapshot
   later finds them and creates nothing twice; on the volume store the Checkpoints become
   owners of the output volume at once (deleting the job never takes their bytes);
2. applies retention over the job's Checkpoints: the dropped ones are recorded in
   `status.live.retired`, then deleted (one in use waits for its users: the in-use protection);
3. asks the sidecars to remove the retired directories whose Checkpoint is gone (a pod
   annotation the sidecar reads from a downwardAPI file) and forgets them once removed;
4. fails a Checkpoint whose directory changed after it was sealed (volume store; on the s3
   store it keeps the sealed copy and the change is reported).

What survives an operator restart or a rotated log: the sidecar announces every sealed
checkpoint again when it starts (a retried pod), a restarted operator reads each log again from
its start (a piece per pass), and the end-of-job snapshot scans everything.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Collection, Mapping, Optional

from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.api.trainingjob import (MAX_RETIRED_LISTED, MAX_RETIRED_PATHS, MAX_RETIRED_PATHS_BYTES,
                                                 LiveStatus, RetiredCheckpoint, TrainingJob, TrainingJobHead,
                                                 TrainingJobStatus)
from checkpoint_operator.reconcile import publish, signing, workloads
from checkpoint_operator.reconcile import volume_snapshots as volume_snapshot_steps
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.status_writer import write_status
from checkpoint_operator.reconcile.objects import InvalidObject, parse
from checkpoint_operator.kube import CHECKPOINTS, PODS, TRAINING_JOBS, ApiError
from checkpoint_operator.logic import data_holds, live_sealing, workload
from checkpoint_operator.logic.conditions import now_rfc3339
from checkpoint_operator.logic.snapshot import SnapshotPlan, plan_snapshot
from checkpoint_operator.logic.volume_snapshots import TakenSnapshot
from checkpoint_operator.protocol.results import CheckpointSummary, ScanReport, SealedCheckpoint
from checkpoint_operator.logic.status import StatusChange
from checkpoint_operator.storage import MissingUpload, Store, store_for

logger = logging.getLogger("checkpoint_operator.live")


def _memory(ctx: Context, tj: TrainingJob) -> live_sealing.LiveMemory:
    return ctx.live.setdefault((tj.metadata.namespace, tj.metadata.uid), live_sealing.LiveMemory())


def forget(ctx: Context, tj: TrainingJobHead) -> None:
    """The job's sealing is over (it left Running): its memory goes (a long-running operator
    sees thousands of jobs; the snapshot takes over)."""
    ctx.live.pop((tj.metadata.namespace, tj.metadata.uid), None)


def read_events(ctx: Context, tj: TrainingJob,
                controllers: Collection[str]) -> tuple[live_sealing.LogEvents, list[str]]:
    """The events of the sidecar logs of the job's pods not acted on yet (each log read from where
    the last read ended, at most LOG_READ_BYTES a pass); and the pods still running. Only pods
    that `controllers` (reconcile/workloads.worker_controllers) control are read."""
    namespace = tj.metadata.namespace
    store = store_for(ctx.config)
    sealed_prefix = store.live_sealed_prefix(tj)
    memory = _memory(ctx, tj)
    running = []
    built = live_sealing.built_sidecars(workloads_of(ctx, tj))
    for pod in ctx.indexes.worker_pods(namespace, tj.metadata.uid, controllers):
        if pod.phase.is_live:
            running.append(pod.name)
        body = ctx.kube.cached_get(PODS, namespace, pod.name)
        if body is None:
            continue
        if live_sealing.sidecar_identity(body.get("spec") or {}) not in built:
            memory.pending.warnings.append(live_sealing.not_its_sidecar(pod.name))
            continue
        cursor = memory.cursors.get(pod.name, live_sealing.LogCursor())
        try:
            text = ctx.kube.read_log(namespace, pod.name, live_sealing.SIDECAR, limit_bytes=live_sealing.LOG_READ_BYTES,
                                     since_time=cursor.since_time(), timestamps=True)
        except ApiError:
            continue  # not started yet, or gone
        piece = live_sealing.new_lines(text, cursor, limit_bytes=live_sealing.LOG_READ_BYTES,
                                       what=f"the sealing sidecar's log of pod {pod.name}")
        memory.cursors[pod.name] = piece.cursor
        events = live_sealing.parse_log(piece.text, sealed_prefix=sealed_prefix)
        if piece.warning:
            events.warnings.append(piece.warning)
        live_sealing.merge(memory.pending, events)
    return memory.pending, running


def workloads_of(ctx: Context, tj: TrainingJob) -> list[dict[str, Any]]:
    """The Job or JobSet the operator made for this job (its templates hold the sidecar it built)."""
    obj = workloads.get(ctx, tj, tj.status.jobName or workload.job_name(tj))
    return [obj] if obj is not None else []


def collect(ctx: Context, tj: TrainingJob, controllers: Collection[str]) -> TrainingJob:
    events, running = read_events(ctx, tj, controllers)
    tj = _publish(ctx, tj, events)
    tj = _forget_removed(ctx, tj, events)
    note_not_removed(ctx, tj, events.not_removed)
    _ask_removals(ctx, tj, running)
    memory = _memory(ctx, tj)
    for warning in events.warnings:
        if ("warning", warning) not in memory.reported:
            memory.reported.add(("warning", warning))
            ctx.warn(tj, "SealingWarning", warning)
    if events.refused and ("refused-lines",) not in memory.reported:
        memory.reported.add(("refused-lines",))
        ctx.warn(tj, "SealingWarning", f"{events.refused} line(s) of the sealing sidecar's log were refused (not "
                                       f"lines of this operator's protocol version); the end-of-job snapshot finds "
                                       f"what they announced")
    _prune(ctx, tj, events)
    return tj


def _prune(ctx: Context, tj: TrainingJob, events: live_sealing.LogEvents) -> None:
    """What is acted on no longer waits in memory: published or retired seals, reported warnings."""
    done = {(c.directory, c.digest) for c in signing.own_checkpoints(ctx, tj.metadata.namespace, tj.metadata.uid)}
    done |= {(r.path, r.digest) for r in (tj.status.live.retired if tj.status.live else None) or []}
    never = set((tj.status.live.retiredPaths if tj.status.live else None) or [])  # said (NotPublishedAgain)
    events.sealed = [m for m in events.sealed if (m.path, m.digest) not in done and m.path not in never]
    waiting = {m.path for m in events.sealed}
    events.reasons = {p: r for p, r in events.reasons.items() if p in waiting}
    events.not_read_only = {p: r for p, r in events.not_read_only.items() if p in waiting}
    events.warnings = []
    events.not_removed = {}
    events.refused = 0


def note_not_removed(ctx: Context, tj: TrainingJob, not_removed: Mapping[tuple[str, str], str]) -> None:
    """Removals a sidecar could not do, counted per entry (live_sealing.removal_annotation puts them
    behind the others, and gives up on them), and said in ONE warning per pass that saw any."""
    if not not_removed:
        return
    memory = _memory(ctx, tj)
    retired = [(r.path, r.digest) for r in (tj.status.live.retired if tj.status.live else None) or []]
    memory.removal_failures = live_sealing.count_removal_failures(memory.removal_failures, not_removed, retired)
    if memory.removal_failures:
        reason = list(not_removed.values())[-1]
        ctx.warn(tj, "RemovalFailed", live_sealing.not_removed_message(memory.removal_failures, reason))


def _publish(ctx: Context, tj: TrainingJob, events: live_sealing.LogEvents) -> TrainingJob:
    namespace, uid = tj.metadata.namespace, tj.metadata.uid
    store = store_for(ctx.config)
    claim = workload.output_claim_name(tj)
    memory = _memory(ctx, tj)
    existing = signing.own_checkpoints(ctx, namespace, uid)
    known = {(c.directory, c.digest) for c in existing}
    retired = set(live_sealing.never_again(tj.status.live))  # retired, and removed since (retiredPaths)

    for path, line in events.changed.items():
        info = next((c for c in existing if c.directory == path and c.digest == line.digest), None)
        if info is not None and ("changed", path, info.digest or "") not in memory.reported:
            memory.reported.add(("changed", path, info.digest or ""))
            publish.mark_changed(ctx, tj, info, line.message or f"{path} changed after it was sealed",
                                 bytes_in_place=store.later_writes_reach_checkpoints)

    # A retired directory is never published again, whatever its bytes now (what a removal that failed in
    # part left, or a checkpoint written again under its name would take the deleted Checkpoint's name).
    again = [p for p in live_sealing.retired_found_again(((m.path, m.digest) for m in events.sealed), retired)
             if ("found-again", p) not in memory.reported]
    if again:
        memory.reported.update(("found-again", p) for p in again)
        ctx.warn(tj, "NotPublishedAgain", live_sealing.found_again_message(again))
    retired_paths = {p for p, _ in retired}
    fresh: list[CheckpointSummary] = [m for m in events.sealed if (m.path, m.digest) not in known and
                                      m.path not in retired_paths and _located(ctx, tj, store, claim, m, memory)]
    taken: dict[str, TakenSnapshot] = {}

    def plan_now() -> SnapshotPlan:
        return plan_snapshot(tj, ScanReport(checkpoints=fresh),
                             lambda n: signing.trusted_info(ctx, ctx.indexes.checkpoint(namespace, n)),
                             lambda m: store.live_location(tj, claim, m, taken.get(m.path)),
                             existing=existing, retired=retired)
    plan = plan_now()
    for conflict in plan.conflicts:  # reported once; the end-of-job snapshot waits on it
        if ("conflict", conflict.directory, conflict.name) not in memory.reported:
            memory.reported.add(("conflict", conflict.directory, conflict.name))
            ctx.warn(tj, "NameConflict", conflict.message)
    if _take_snapshots(ctx, tj, store, claim, plan, {m.path: m.digest for m in fresh}, events, taken, memory):
        plan = plan_now()  # the same decisions, now with the snapshots' locations
    for info, manifest in plan.changed:
        if ("changed", info.directory or "", info.digest or "") not in memory.reported:
            memory.reported.add(("changed", info.directory or "", info.digest or ""))
            publish.mark_changed(ctx, tj, info, f"{info.directory} was sealed again with digest {manifest.digest}",
                                 bytes_in_place=store.later_writes_reach_checkpoints)

    bodies = []
    for planned in plan.checkpoints:
        if not store.is_committed(planned.location):
            continue  # announced before its upload (or its volume snapshot) was done: published at a later pass
        body = publish.create_checkpoint(ctx, tj, planned)
        if body is not None:  # None: the name was taken meanwhile; planned again at the next pass
            bodies.append((body, planned))
    if bodies and store.keeps_output_claim:  # owned before Ready: deleting the job never takes their bytes
        publish.own_output_claim(ctx, tj, claim, [publish.checkpoint_owner(b) for b, _ in bodies], keep_job=True)
    for body, planned in bodies:  # volume snapshots: owned by the Checkpoint before it is Ready
        if planned.directory in taken:
            volume_snapshot_steps.hand_over(ctx, namespace, taken[planned.directory],
                                            [publish.checkpoint_owner(body)], tj.metadata.uid)
    created = []
    for body, planned in bodies:  # each is made Ready by its own reconcile, from the sealed data in its spec
        created.append(planned.name)
        ctx.info(body, "Sealed", f"sealed while {tj.metadata.name} runs ({events.reasons.get(planned.directory)}"
                                 f"): {planned.ready.message}")
        problem = events.not_read_only.get(planned.directory)
        if problem:
            ctx.warn(body, "NotReadOnly", problem)

    # Retention's drops, and the job's Checkpoints being deleted (their deletion waits for this record:
    # retirement_pending), so that none is published again.
    deleting = [(c.directory or "", c.digest or "") for c in existing if c.deleting and c.directory and c.digest]
    to_retire = [(c.directory or "", c.digest or "") for c in plan.retire] + \
                [(m.path, m.digest) for m in plan.dropped_manifests] + deleting
    tj = record_live(ctx, tj, sealed=len(created), retire=to_retire, deleting=deleting)
    for info in plan.retire:
        ctx.info(tj, "Retired", f"retention: deleting Checkpoint {info.name} (step {info.step})")
        ctx.kube.delete(CHECKPOINTS, namespace, info.name)
    return tj


def record_live(ctx: Context, tj: TrainingJob, *, sealed: int, retire: list[tuple[str, str]],
                deleting: Collection[tuple[str, str]] = ()) -> TrainingJob:
    """The sealed count and the retirements, in the job's status; the retired list bounded to what the
    CRD takes (logic/live_sealing.bounded_retired; `deleting`: Checkpoints still being deleted, kept)."""
    if not sealed and not retire:
        return tj
    current = tj.status.live or LiveStatus()
    listed = [(r.path, r.digest) for r in current.retired or []]
    bounded, dropped = live_sealing.bounded_retired(listed, retire, deleting, MAX_RETIRED_LISTED)
    if dropped:  # one warning per job and process: the list stays at the bound from here on
        memory = _memory(ctx, tj)
        if ("retired-bound",) not in memory.reported:
            memory.reported.add(("retired-bound",))
            ctx.warn(tj, "RetiredNotTracked", live_sealing.retired_dropped_message(dropped, MAX_RETIRED_LISTED))
    retired = [RetiredCheckpoint(path=p, digest=d) for p, d in bounded]
    left = {p for p, _ in dict.fromkeys([*listed, *retire])} - {p for p, _ in bounded}
    wanted = with_retired(ctx, tj, current, retired, left)
    if sealed:
        wanted = wanted.model_copy(update={"sealedCount": (current.sealedCount or 0) + sealed,
                                           "lastSealTime": now_rfc3339()})
    return write_status(ctx, tj, StatusChange(fields=TrainingJobStatus(live=wanted)))


def _forget_removed(ctx: Context, tj: TrainingJob, events: live_sealing.LogEvents) -> TrainingJob:
    live_status = tj.status.live
    if live_status is None or not live_status.retired or not events.removed:
        return tj
    keep = [r for r in live_status.retired if (r.path, r.digest) not in events.removed]
    if len(keep) == len(live_status.retired):
        return tj
    removed = {r.path for r in live_status.retired} - {r.path for r in keep}
    wanted = with_retired(ctx, tj, live_status, keep, removed)
    return write_status(ctx, tj, StatusChange(fields=TrainingJobStatus(live=wanted)))


def with_retired(ctx: Context, tj: TrainingJob, live_status: LiveStatus, retired: list[RetiredCheckpoint],
                 left: Collection[str]) -> LiveStatus:
    """`live_status` with `retired` as its retired list; the directories that `left` it (removed by the
    sidecar, or dropped past its bound) remembered in retiredPaths, so that a directory written again
    under one of their names is never published under the deleted Checkpoint's name, after an operator
    restart too (logic/live_sealing.remember_retired_paths bounds it; one warning when it drops)."""
    paths = live_status.retiredPaths or []
    if left:
        paths, dropped = live_sealing.remember_retired_paths(
            paths, sorted(left), max_items=MAX_RETIRED_PATHS, max_bytes=MAX_RETIRED_PATHS_BYTES)
        memory = _memory(ctx, tj)
        if dropped and ("retired-paths-bound",) not in memory.reported:
            memory.reported.add(("retired-paths-bound",))
            ctx.warn(tj, "RetiredNotTracked", live_sealing.retired_paths_dropped_message(
                dropped, MAX_RETIRED_PATHS, MAX_RETIRED_PATHS_BYTES))
    return live_status.model_copy(update={"retired": retired or None, "retiredPaths": paths or None})


def _ask_removals(ctx: Context, tj: TrainingJob, running: list[str]) -> None:
    """The retired directories whose Checkpoint is gone, to the running pods' sidecars; a directory
    another Checkpoint points into (an adopter of it, logic/data_holds.py) stays while it does."""
    retired = [(r.path, r.digest) for r in (tj.status.live.retired if tj.status.live else None) or []]
    if not running:
        return
    namespace = tj.metadata.namespace
    own = signing.own_checkpoints(ctx, namespace, tj.metadata.uid)
    still = {(c.directory, c.digest) for c in own}
    others = [p for p in ctx.indexes.pointers_on_claim(namespace, workload.output_claim_name(tj))
              if p.checkpoint not in {c.name for c in own}]
    reported = _memory(ctx, tj).reported
    for path, digest in retired:
        keeping = data_holds.holders(path, others)
        if keeping:
            still.add((path, digest))
            if ("kept", path, *keeping) not in reported:
                reported.add(("kept", path, *keeping))
                ctx.info(tj, "RetiredKept", data_holds.kept_message(path, keeping, "retention released"))
    value = live_sealing.removal_annotation(retired, still, _memory(ctx, tj).removal_failures)
    annotated = _memory(ctx, tj).annotated
    for pod in running:
        if annotated.get(pod) == value:
            continue
        try:
            ctx.kube.patch(PODS, tj.metadata.namespace, pod, {"metadata": {"annotations": {
                live_sealing.REMOVE_ANNOTATION: value}}})
            annotated[pod] = value
        except ApiError as exc:
            logger.info("could not annotate pod %s: %s", pod, exc)


RETIREMENT_RECHECK = 0.5  # seconds: a deleted Checkpoint waits this long for its job to record it retired


def retirement_pending(ctx: Context, checkpoint: Checkpoint) -> bool:
    """A Checkpoint of a running live-sealing job is about to go (its finalizer is released): its
    directory must first be recorded as retired in the job's status, so that it is never published
    again and the sidecar removes its bytes (a deletion by a user as by retention). Only the job's
    reconcile writes that status (`_publish` records its deleting Checkpoints): wake it, and wait
    while it has not. True while the deletion must wait."""
    source = checkpoint.spec.source.trainingJob
    digest = checkpoint.status.digest or (source.sealed.digest if source and source.sealed else None)
    if source is None or not digest or source.directory == ".":
        return False
    if not signing.sealed_verifies(ctx, checkpoint, source):  # not its job's: nothing of the job to retire
        return False
    body = ctx.kube.get(TRAINING_JOBS, checkpoint.metadata.namespace, source.name)
    if body is None:
        return False
    try:
        tj = parse(TrainingJob, body)
    except InvalidObject:
        return False  # a job whose spec no longer parses publishes nothing
    if tj.metadata.uid != source.uid or tj.is_finished or not tj.publishes_live:
        return False
    if (source.directory, digest) in {(r.path, r.digest) for r in (tj.status.live.retired if tj.status.live else None)
                                      or []}:
        return False
    ctx.queue.add(("TrainingJob", tj.metadata.namespace, tj.metadata.name))
    return True


def _take_snapshots(ctx: Context, tj: TrainingJob, store: Store, claim: str, plan: SnapshotPlan,
                    digests: dict[str, str], events: live_sealing.LogEvents, taken: dict[str, TakenSnapshot],
                    memory: live_sealing.LiveMemory) -> bool:
    """With volume snapshots: one of the output volume per sealed directory to publish (the
    sidecar synced the filesystem first), read until it is ready; `taken` gets the ready ones.
    Whether any is. A directory whose line does not say it was synced is left to the end-of-job
    snapshot (one warning). A snapshot being cut is read again only after the wait `take` says
    (not at every pass: a cloud snapshot may take minutes)."""
    next_look = memory.snapshot_next_look
    now = time.monotonic()
    for planned in plan.checkpoints:
        digest = digests.get(planned.directory, "")
        request = store.output_snapshot(tj, claim, f"{planned.directory}@{digest}")
        if request is None:
            return False  # this store locates sealed checkpoints without volume snapshots
        if (planned.directory, digest) not in events.synced:
            if ("unsynced", planned.directory, digest) not in memory.reported:
                memory.reported.add(("unsynced", planned.directory, digest))
                ctx.warn(tj, "SealNotSynced", f"{planned.directory}: the sealing sidecar did not report its bytes "
                                              "on the disk (syncfs); left to the snapshot at the end of the job")
            continue
        if next_look.get(request.name, 0.0) > now:
            continue
        result = volume_snapshot_steps.take(ctx, tj, request)
        if isinstance(result, TakenSnapshot):
            taken[planned.directory] = result
            next_look.pop(request.name, None)
            continue
        next_look[request.name] = now + (result.requeue_after or 0.0)
        if result.stalled and ("snapshot", result.reason) not in memory.reported:
            memory.reported.add(("snapshot", result.reason))
            ctx.warn(tj, result.reason or "VolumeSnapshotFailed", result.message)
    return bool(taken)


def retired_refusal(ctx: Context, claim: dict[str, Any], path: str) -> Optional[str]:
    """An adoption of `path` on the output claim of a running live-sealing job that overlaps a
    directory its retention released (being removed by the sidecar): why it is refused, or None.
    Retirement is recorded in the job's status before any removal is asked, and removals skip
    every directory an indexed adopter points into, so one of the two checks sees every adopter."""
    namespace = claim["metadata"].get("namespace", "")
    for owner in claim["metadata"].get("ownerReferences") or []:
        if owner.get("kind") != "TrainingJob" or not str(owner.get("apiVersion", "")).startswith("ckpt.dev/"):
            continue
        body = ctx.kube.get(TRAINING_JOBS, namespace, owner.get("name", ""))
        if body is None:
            continue
        try:
            tj = parse(TrainingJob, body)
        except InvalidObject:
            continue  # a job whose spec no longer parses publishes (and retires) nothing
        if tj.metadata.uid != owner.get("uid") or tj.is_finished or not tj.publishes_live or tj.status.live is None:
            continue
        refusal = data_holds.retired_refusal(path, tj.metadata.name, [r.path for r in tj.status.live.retired or []])
        if refusal:
            return refusal
    return None


def _located(ctx: Context, tj: TrainingJob, store: Store, claim: str, manifest: SealedCheckpoint,
             memory: live_sealing.LiveMemory) -> bool:
    """Whether the sidecar's upload of a sealed directory is one the operator accepts (under the
    job's own prefix); if not, one warning, and the directory waits for the final snapshot."""
    try:
        store.live_location(tj, claim, manifest)
        return True
    except MissingUpload as exc:
        if ("refused", manifest.path, manifest.digest) not in memory.reported:
            memory.reported.add(("refused", manifest.path, manifest.digest))
            ctx.warn(tj, "SealRefused", f"{exc}: left to the snapshot at the end of the job")
        return False
