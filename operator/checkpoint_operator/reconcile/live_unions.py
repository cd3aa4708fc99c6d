"""Live sealing with a volume per worker (output.volumePerWorker, publish: Continuous), the
operator's side; logic/live_unions.py has the decisions.

`collect` runs where one volume's live sealing runs (reconcile/live_sealing.py collect, every
`live_poll_interval` while the job runs, and once more when it has ended): it reads each worker's
sealing sidecar log (a bounded piece from where the last read ended, as one volume's), takes each
sealed line as the part of the worker its pod's sidecar is (never the line), and when every worker
of the job has sealed its part of a directory (whether its pod runs or not), runs the union pod for that
directory: the end-of-job snapshot pod's shape and union code, restricted to that directory and to
the parts sealed (`--only DIR --expect W=DIGEST`). Its result is published as the end-of-job
snapshot publishes (logic/snapshot.py plan_snapshot, the store's snapshot location: the same
Checkpoint name, location and digest), so the end-of-job snapshot finds the Checkpoint and creates
nothing twice. One union pod at a time per job, the oldest step first.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Collection, Optional

from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.kube import CHECKPOINTS, PODS, ApiError
from checkpoint_operator.api.trainingjob import TrainingJobStatus
from checkpoint_operator.logic import data_holds, group_resume, live_sealing, live_unions, workload
from checkpoint_operator.logic.status import StatusChange
from checkpoint_operator.reconcile.status_writer import write_status
from checkpoint_operator.logic.agent_pods import AGENT_OUTPUT_MOUNT
from checkpoint_operator.logic.inputs import CheckpointInfo
from checkpoint_operator.logic.snapshot import plan_snapshot, storable
from checkpoint_operator.protocol.results import ScanReport
from checkpoint_operator.reconcile import agent_runs, publish, signing
from checkpoint_operator.reconcile import live_sealing as live_sealing_steps
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.storage import MissingUpload, Store, store_for

logger = logging.getLogger("checkpoint_operator.live")

UNION = agent_runs.AgentTask("union", "unionPodUid", (ScanReport,))


def _memory(ctx: Context, tj: TrainingJob) -> live_sealing.LiveMemory:
    return ctx.live.setdefault((tj.metadata.namespace, tj.metadata.uid), live_sealing.LiveMemory())


def _once(memory: live_sealing.LiveMemory, key: tuple[Optional[str], ...]) -> bool:
    if key in memory.reported:
        return False
    memory.reported.add(key)
    return True


def read_parts(ctx: Context, tj: TrainingJob, controllers: Collection[str]) -> dict[int, str]:
    """The workers' sidecar lines not read yet, into the job's memory; the workers whose pod runs
    (worker -> its pod)."""
    namespace, workers = tj.metadata.namespace, tj.spec.replicas
    memory = _memory(ctx, tj)
    running: dict[int, str] = {}
    # Whose part a pod's lines are: the worker of the template whose sidecar it runs (the operator's),
    # never the pod's own labels or owner references, which its creator wrote (hostile8 F1, F4).
    built = live_sealing.built_sidecar_workers(live_sealing_steps.workloads_of(ctx, tj))
    for found in ctx.indexes.worker_pods(namespace, tj.metadata.uid, controllers):
        body = ctx.kube.cached_get(PODS, namespace, found.name)
        if body is None:
            continue
        identity = live_sealing.sidecar_identity(body.get("spec") or {})
        if identity not in built:
            memory.pending.warnings.append(live_sealing.not_its_sidecar(found.name))
            continue
        pod = replace(found, index=built[identity])
        if pod.phase.is_live and pod.index is not None:
            running[pod.index] = pod.name
        cursor = memory.cursors.get(pod.name, live_sealing.LogCursor())
        try:
            text = ctx.kube.read_log(namespace, pod.name, live_sealing.SIDECAR, limit_bytes=live_sealing.LOG_READ_BYTES,
                                     since_time=cursor.since_time(), timestamps=True)
        except ApiError:
            continue  # not started yet, or gone
        piece = live_sealing.new_lines(text, cursor, limit_bytes=live_sealing.LOG_READ_BYTES,
                                       what=f"the sealing sidecar's log of pod {pod.name}")
        memory.cursors[pod.name] = piece.cursor
        events = live_sealing.parse_log(piece.text)
        for sealed in events.sealed:
            problem = live_unions.part_line_problem(pod.index, sealed.part, workers)
            if problem is not None:
                if _once(memory, ("part-refused", pod.name, sealed.path)):
                    ctx.warn(tj, "SealRefused", f"pod {pod.name}: a sealed line for {sealed.path} is not taken as a "
                                                f"part ({problem}); left to the snapshot at the end of the job")
                continue
            assert pod.index is not None
            memory.parts.seal(pod.index, sealed.path, sealed.digest)
        if pod.index is not None and 0 <= pod.index < workers:
            for path in events.changed:
                memory.parts.change(pod.index, path)
            for path, digest in events.removed:  # retention: this worker's part is gone from its volume
                memory.parts.remove(pod.index, path, digest)
        memory.pending.warnings += events.warnings + ([piece.warning] if piece.warning else [])
        memory.pending.not_removed.update(events.not_removed)
    return running


def collect(ctx: Context, tj: TrainingJob, controllers: Collection[str]) -> TrainingJob:
    running = read_parts(ctx, tj, controllers)
    memory = _memory(ctx, tj)
    namespace = tj.metadata.namespace
    store = store_for(ctx.config)
    for warning in memory.pending.warnings:
        if _once(memory, ("warning", warning)):
            ctx.warn(tj, "SealingWarning", warning)
    memory.pending.warnings = []
    existing = signing.own_checkpoints(ctx, namespace, tj.metadata.uid)
    retired = [(r.path, r.digest) for r in (tj.status.live.retired if tj.status.live else None) or []]
    # The job's Checkpoints being deleted (by a user or retention) are recorded retired first: their
    # deletion waits for it (live_sealing.retirement_pending), and they are never published again.
    deleting = [(c.directory, c.digest) for c in existing if c.deleting and c.directory and c.digest
                and (c.directory, c.digest) not in retired]
    if deleting:
        tj = live_sealing_steps.record_live(ctx, tj, sealed=0, retire=deleting, deleting=deleting)
        retired += deleting
    tj = _forget_removed(ctx, tj, existing, memory)
    _note_not_removed(ctx, tj, memory)
    _ask_removals(ctx, tj, running, existing, memory)
    _report_changed(ctx, tj, store, existing, memory)
    # (and the directories removed since their union was retired: never published again, retiredPaths)
    published = {c.directory for c in existing if c.directory} | {p for p, _ in retired} | \
        set((tj.status.live.retiredPaths if tj.status.live else None) or [])
    decisions = live_unions.decide(tj.spec.replicas, memory.parts, published, memory.tried)
    for decision in decisions:
        if isinstance(decision, live_unions.LeftToSnapshot) and _once(memory, ("left", decision.path, decision.reason)):
            ctx.warn(tj, "SealRefused", f"{decision.path}: {decision.reason}; not assembled while the job runs (the "
                                        f"snapshot at the end of the job judges it)")
        elif isinstance(decision, live_unions.WaitForParts):
            logger.debug("TrainingJob %s/%s: %s", namespace, tj.metadata.name, decision.message)

    pod = ctx.kube.cache.get("Pod", namespace, workload.union_pod_name(tj))
    if pod is not None and (pod.get("metadata") or {}).get("deletionTimestamp"):
        return tj  # the last one's result was used: going (its end wakes the job)
    if pod is None:
        # None while a resume step runs: it gives back the parts of directories not published, and
        # knows only of the union pod there was when it started (group_resume.kept_sealed).
        resuming = ctx.kube.cache.get("Pod", namespace, workload.resume_pod_name(tj)) is not None
        union = live_unions.next_union(decisions) if running and not resuming else None
        if union is None:
            return tj
        command = store.snapshot_command(tj, AGENT_OUTPUT_MOUNT) + live_unions.union_args(union)
        pod = workload.build_union_pod(tj, command, store.agent_env(), ctx.config,
                                       read_only=not store.snapshot_writes_output)
    run = agent_runs.follow(ctx, tj, pod, UNION)
    if isinstance(run, agent_runs.Waiting):
        return tj
    key = live_unions.union_of_command(_command(pod))
    if key is not None:
        memory.tried.add(key)
    if isinstance(run, agent_runs.PodFailed):
        if _once(memory, ("union-failed", *(key or ("?",)))):
            ctx.warn(tj, "SealRefused", f"{key[0] if key else 'a directory'}: the pod that assembles the workers' "
                                        f"parts failed ({run.message}); left to the snapshot at the end of the job")
    elif run.result is not None and key is not None:
        tj = _publish(ctx, tj, store, run.result, key, existing, retired)
    agent_runs.finish(ctx, pod)
    return tj


def _forget_removed(ctx: Context, tj: TrainingJob, existing: list[CheckpointInfo],
                    memory: live_sealing.LiveMemory) -> TrainingJob:
    """Retired unions whose Checkpoint is gone and whose parts every worker removed: forgotten."""
    live_status = tj.status.live
    if live_status is None or not live_status.retired:
        return tj
    there = {(c.directory, c.digest) for c in existing}
    keep = [r for r in live_status.retired if (r.path, r.digest) in there or
            not live_unions.removed_everywhere(r.path, memory.parts)]
    if len(keep) == len(live_status.retired):
        return tj
    removed = {r.path for r in live_status.retired} - {r.path for r in keep}
    wanted = live_sealing_steps.with_retired(ctx, tj, live_status, keep, removed)
    return write_status(ctx, tj, StatusChange(fields=TrainingJobStatus(live=wanted)))


def _note_not_removed(ctx: Context, tj: TrainingJob, memory: live_sealing.LiveMemory) -> None:
    """Parts a worker's sidecar could not remove, counted by (directory, part digest) while their union
    is retired (live_sealing.removal_annotation puts them behind the others), in ONE warning per pass."""
    not_removed, memory.pending.not_removed = memory.pending.not_removed, {}
    if not not_removed:
        return
    paths = {r.path for r in (tj.status.live.retired if tj.status.live else None) or []}
    parts = [(p, d) for sealed in memory.parts.sealed.values() for p, d in sealed.items() if p in paths]
    memory.removal_failures = live_sealing.count_removal_failures(memory.removal_failures, not_removed, parts)
    if memory.removal_failures:
        ctx.warn(tj, "RemovalFailed", live_sealing.not_removed_message(memory.removal_failures,
                                                                       list(not_removed.values())[-1]))


def _ask_removals(ctx: Context, tj: TrainingJob, running: dict[int, str], existing: list[CheckpointInfo],
                  memory: live_sealing.LiveMemory) -> None:
    """Each running worker's sidecar is asked to remove its parts of the retired unions whose
    Checkpoint is gone (by the digest of its part); a directory another Checkpoint points into (an
    adopter of it, logic/data_holds.py) stays while it does."""
    retired = [(r.path, r.digest) for r in (tj.status.live.retired if tj.status.live else None) or []]
    namespace = tj.metadata.namespace
    own = {c.name for c in existing}
    kept = {(c.directory or "", c.digest or "") for c in existing}
    for worker, pod in running.items():
        claim = workload.worker_claim_name(tj, worker)
        others = [p for p in ctx.indexes.pointers_on_claim(namespace, claim) if p.checkpoint not in own]
        held = kept | {(p, d) for p, d in retired if data_holds.holders(p, others)}
        value = live_sealing.removal_annotation(live_unions.part_removals(worker, memory.parts, retired, held), [],
                                                memory.removal_failures)
        if memory.annotated.get(pod) == value:
            continue
        try:
            ctx.kube.patch(PODS, namespace, pod, {"metadata": {"annotations": {live_sealing.REMOVE_ANNOTATION: value}}})
            memory.annotated[pod] = value
        except ApiError as exc:
            logger.info("could not annotate pod %s: %s", pod, exc)


def _command(pod: dict[str, Any]) -> list[str]:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return [str(a) for a in (containers[0].get("command") or []) + (containers[0].get("args") or [])]


def _report_changed(ctx: Context, tj: TrainingJob, store: Store, existing: list[CheckpointInfo],
                    memory: live_sealing.LiveMemory) -> None:
    """A worker's part of a published union changed after it was sealed: the Checkpoint's bytes are
    no longer its digest (volume store: it fails; s3 store: it keeps the sealed copy, reported)."""
    for worker, paths in memory.parts.changed.items():
        for path in paths:
            info = next((c for c in existing if c.directory == path), None)
            if info is None or not _once(memory, ("changed", path, info.digest or "")):
                continue
            publish.mark_changed(ctx, tj, info, f"{path}: worker {worker}'s part changed after it was sealed",
                                 bytes_in_place=store.later_writes_reach_checkpoints)


def _publish(ctx: Context, tj: TrainingJob, store: Store, report: ScanReport, key: tuple[str, live_unions.Parts],
             existing: list[CheckpointInfo], retired: list[tuple[str, str]]) -> TrainingJob:
    """The union pod's checkpoint (or why it made none), published as the end-of-job snapshot would."""
    namespace, path = tj.metadata.namespace, key[0]
    memory = _memory(ctx, tj)
    claim, layout = workload.output_claim_name(tj), tj.spec.output.layout
    for skipped in report.skipped:
        if skipped.path == path and _once(memory, ("union-skipped", path, skipped.reason)):
            ctx.warn(tj, "SealRefused", f"{path}: {skipped.reason}; not published while the job runs (the snapshot "
                                        f"at the end of the job judges it again)")
    try:
        scan = storable(report, lambda m: store.snapshot_location(tj, claim, m, layout))
        plan = plan_snapshot(tj, scan, lambda n: signing.trusted_info(ctx, ctx.indexes.checkpoint(namespace, n)),
                             lambda m: store.snapshot_location(tj, claim, m, layout), existing=existing,
                             retired=retired)
    except MissingUpload as exc:
        if _once(memory, ("refused", path)):
            ctx.warn(tj, "SealRefused", f"{exc}: left to the snapshot at the end of the job")
        return tj
    for conflict in plan.conflicts:
        if _once(memory, ("conflict", conflict.directory, conflict.name)):
            ctx.warn(tj, "NameConflict", conflict.message)
    bodies = []
    for planned in plan.checkpoints:
        if not store.is_committed(planned.location):
            continue
        memory.creating(planned.directory)  # before the create: the resume step keeps it sealed
        body = publish.create_checkpoint(ctx, tj, planned)
        memory.created(planned.directory, body)
        if body is not None:
            bodies.append((body, planned))
    if bodies and store.keeps_output_claim:  # every worker's volume: a union reads from any of them
        owners = [publish.checkpoint_owner(b) for b, _ in bodies]
        for each in workload.output_claim_names(tj):
            publish.own_output_claim(ctx, tj, each, owners, keep_job=True)
    workers = ", ".join(str(w) for w, _ in key[1])
    for body, planned in bodies:
        ctx.info(body, "Sealed", f"assembled while {tj.metadata.name} runs from the sealed parts of worker {workers}: "
                                 f"{planned.ready.message}")
    to_retire = [(c.directory or "", c.digest or "") for c in plan.retire] + \
                [(m.path, m.digest) for m in plan.dropped_manifests]
    tj = live_sealing_steps.record_live(ctx, tj, sealed=len(bodies), retire=to_retire)
    for info in plan.retire:
        ctx.info(tj, "Retired", f"retention: deleting Checkpoint {info.name} (step {info.step})")
        ctx.kube.delete(CHECKPOINTS, namespace, info.name)
    return tj


def kept_sealed(ctx: Context, tj: TrainingJob) -> list[str]:
    """The directories whose sealed parts a resume step leaves sealed (logic/group_resume.kept_sealed):
    the job's Checkpoints, its retired unions, what this operator is publishing, and the union pod's."""
    namespace = tj.metadata.namespace
    existing = signing.own_checkpoints(ctx, namespace, tj.metadata.uid)
    retired = [r.path for r in (tj.status.live.retired if tj.status.live else None) or []]
    pod = ctx.kube.cache.get("Pod", namespace, workload.union_pod_name(tj))
    key = live_unions.union_of_command(_command(pod)) if pod is not None else None
    return group_resume.kept_sealed([c.directory for c in existing], retired, _memory(ctx, tj).publishing,
                                    key[0] if key else None)


def reopened(ctx: Context, tj: TrainingJob, kept: Collection[str]) -> None:
    """The resume step has run: the workers' parts of directories not `kept` are sealed no more."""
    _memory(ctx, tj).parts.reopened(kept)


def stop(ctx: Context, tj: TrainingJob) -> None:
    """The job left Running: a union pod still at work is not needed (the end-of-job snapshot
    assembles every directory); its result is never read."""
    name = workload.union_pod_name(tj)
    if ctx.kube.cache.get("Pod", tj.metadata.namespace, name) is not None:
        try:
            ctx.kube.delete(PODS, tj.metadata.namespace, name)
        except ApiError as exc:
            logger.info("could not delete pod %s: %s", name, exc)
