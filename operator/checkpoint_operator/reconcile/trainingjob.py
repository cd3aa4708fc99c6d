"""TrainingJob: Pending -> Running -> Snapshotting -> Succeeded | Failed.

`reconcile` is level-triggered and idempotent: it reads the object, runs the step of its phase
and records the step's result (logic/results.py). The decisions are in logic/trainingjob_flow.py
and logic/inputs.py; here they are applied. Every object created has a deterministic name, so
running a step twice (say, after an operator restart) creates nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Optional

from checkpoint_operator.api.common import PodPhase
from checkpoint_operator import PROTECTION_FINALIZER
from checkpoint_operator.api.checkpoint import CheckpointHead, CheckpointPhase
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpointHead
from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobHead, TrainingJobPhase, TrainingJobStatus
from checkpoint_operator.reconcile import node_cache as node_cache_steps
from checkpoint_operator.reconcile import live_unions
from checkpoint_operator.reconcile import (agent_runs, catalog_copies, claim_holds, live_sealing, publish,
                                           template_claims, volumes, workloads)
from checkpoint_operator.reconcile import volume_snapshots as volume_snapshot_steps
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.objects import InvalidObject, parse, parse_head
from checkpoint_operator.reconcile import signing, status_writer
from checkpoint_operator.reconcile.status_writer import write_status
from checkpoint_operator.kube import CHECKPOINTS, CLUSTER_CHECKPOINTS, PODS, PVCS, TRAINING_JOBS, ApiError, Conflict
from checkpoint_operator.logic import engines, group_resume, kueue, rendezvous, replays, workers
from checkpoint_operator.logic import trainingjob_flow as flow
from checkpoint_operator.logic import volume_snapshots, workload
from checkpoint_operator.logic import live_unions as live_unions_logic
from checkpoint_operator.logic import live_sealing as live_sealing_logic
from checkpoint_operator.logic.agent_pods import AGENT_OUTPUT_MOUNT, downloaded_input, last_error_line, pod_failure
from checkpoint_operator.logic.conditions import now_rfc3339, seconds_since
from checkpoint_operator.logic.inputs import (Candidate, CheckpointInfo, InputWait, ResolvedInput, check_live_input,
                                              input_on_other_store, resolve_inputs)
from checkpoint_operator.logic.protection import label_patch, used_uids
from checkpoint_operator.logic.results import Advance, Done, Fail, Result, Wait
from checkpoint_operator.logic.snapshot import (PlannedCheckpoint, SnapshotPlan, conflict_wait, missing_message,
                                                not_stored,
                                                plan_snapshot, skipped_message, storable)
from checkpoint_operator.logic.parts import parts_count
from checkpoint_operator.logic.volume_snapshots import Taken
from checkpoint_operator.protocol.results import ResumeReport, ScanReport
from checkpoint_operator.logic.status import StatusChange
from checkpoint_operator.storage import MissingUpload, Store, store_for
from checkpoint_operator import metrics

logger = logging.getLogger("checkpoint_operator.trainingjob")
RETRY_SOON = 5.0  # seconds: waits on things whose end brings no event of ours (a namesake's GC)
PUBLISH_RECHECK = 2.0  # seconds: its Checkpoints' Ready events wake the job; this bounds a missed one


MAX_PASSES = 6  # one reconcile may take a job through several phases, one status write each


def reconcile(ctx: Context, namespace: str, name: str) -> Optional[float]:
    """Passes until one ends without `Advance`; returns when to look again without an event (None:
    an event will tell). Each pass reads the object (the first with a GET, the next ones from what
    the previous pass's status write returned), runs one step and writes its status once."""
    body = ctx.kube.cached_get(TRAINING_JOBS, namespace, name)
    for _ in range(MAX_PASSES):
        if body is None:
            return None
        with status_writer.status_pass(ctx, "TrainingJob", namespace, name) as current:
            outcome = _pass(ctx, body)
        if not isinstance(outcome, Advance):
            return outcome
        body = current.written or ctx.kube.cached_get(TRAINING_JOBS, namespace, name)
    return 0.0


def _pass(ctx: Context, body: dict[str, Any]) -> "Optional[float] | Advance":
    try:
        tj = parse(TrainingJob, body)
    except InvalidObject as invalid:
        _refuse_invalid(ctx, invalid)
        return None
    if tj.metadata.deleting:
        return _deleting(ctx, tj)
    if tj.is_finished:
        return _finished(ctx, tj)
    result = STEPS[tj.phase](ctx, tj)
    if isinstance(result, Advance):
        return result
    return record(ctx, tj, result)


def record(ctx: Context, tj: TrainingJob, result: Result) -> Optional[float]:
    logger.debug("TrainingJob %s/%s at %s (%s): %s", tj.metadata.namespace, tj.metadata.name,
                 tj.metadata.resourceVersion, tj.phase, result)
    tj, requeue = status_writer.record(ctx, tj, result, lambda fail: flow.fail_change(fail, now_rfc3339()))
    if isinstance(result, Fail):
        _release_inputs(ctx, tj)
    return requeue


def _refuse_invalid(ctx: Context, invalid: InvalidObject) -> None:
    tj = parse_head(TrainingJobHead, invalid.body)
    if not tj.is_finished and not tj.metadata.deleting:
        write_status(ctx, tj, flow.fail_change(Fail("InvalidSpec", invalid.message()), now_rfc3339()))


# --- Pending: resolve, claim, check live, create ----------------------------------------------------

def start(ctx: Context, tj: TrainingJob) -> Result:
    # A wait may be decided on the index alone: the event that ends it wakes this job again,
    # after the informer has put it in the index (reconcile/wakeups.py). Starting is decided live, below.
    resolution = resolve_inputs(tj, ctx.indexes)
    logger.debug("TrainingJob %s/%s: inputs from the index: %s", tj.metadata.namespace, tj.metadata.name, resolution)
    if resolution.waits:
        # Hold nothing while waiting, so a waiting job never keeps an input from being deleted.
        _release_inputs(ctx, tj)
        return flow.input_wait(resolution.waits)
    if tj.status.inputs is not None:
        resumed = _adopt_started_job(ctx, tj)
        if resumed is not None:
            return resumed

    # Record the use on the job itself first, then read each input live (logic/protection.py).
    tj = _set_uses_labels(ctx, tj, [c.uid for c in resolution.candidates])
    checked, bodies = _check_live(ctx, tj, resolution.candidates)
    waits = [c for c in checked if isinstance(c, InputWait)]
    if waits:
        _release_inputs(ctx, tj)
        return flow.input_wait(waits)
    copied = _namespace_copies(ctx, tj, [c for c in checked if isinstance(c, ResolvedInput)], bodies)
    if not isinstance(copied, list):
        return copied
    inputs = copied
    pins = [i.pinned() for i in inputs]
    if inputs and tj.status.inputs != pins:
        # Pinned before any pod exists (the pass ends: its write is durable before the next pass
        # creates the workload): a restart finds the same inputs, downloads check these digests.
        write_status(ctx, tj, StatusChange(fields=TrainingJobStatus(inputs=pins, inputCount=len(inputs))))
        return Advance()
    return _create_workload(ctx, tj, inputs)


def _check_live(ctx: Context, tj: TrainingJob, candidates: list[Candidate]
                ) -> tuple[list[ResolvedInput | InputWait], list[Optional[dict[str, Any]]]]:
    """Each input read live (a Checkpoint, or a catalog entry) and checked; and the bodies read."""
    bodies = [ctx.kube.get(CLUSTER_CHECKPOINTS, "", c.name) if c.cluster else
              ctx.kube.get(CHECKPOINTS, tj.metadata.namespace, c.name) for c in candidates]
    live = [_input_head(c.cluster, b) for c, b in zip(candidates, bodies)]
    checked = [check_live_input(c, checkpoint) for c, checkpoint in zip(candidates, live)]
    logger.debug("TrainingJob %s/%s: inputs read live at %s: %s", tj.metadata.namespace, tj.metadata.name,
                 [c.metadata.resourceVersion if c else None for c in live], checked)
    return checked, bodies


def _namespace_copies(ctx: Context, tj: TrainingJob, inputs: list[ResolvedInput],
                      bodies: list[Optional[dict[str, Any]]]) -> "list[ResolvedInput] | Result":
    """A catalog entry on the volume store: the namespace's own verified copy (made once; the job holds the
    entry meanwhile, its uses label stays, so the entry cannot go while it is copied). `inputs` are every
    input resolved, in the order of `bodies`."""
    copied = [catalog_copies.namespace_copy(ctx, tj, body or {}, i) if i.cluster else i
              for i, body in zip(inputs, bodies)]
    stopped = next((c for c in copied if isinstance(c, (Fail, Wait))), None)
    if stopped is not None:
        return stopped
    copying = [c for c in copied if isinstance(c, InputWait)]
    if copying:
        return flow.input_wait(copying)
    return [c for c in copied if isinstance(c, ResolvedInput)]


def _input_head(cluster: bool, body: Optional[dict[str, Any]]) -> Optional[CheckpointHead | ClusterCheckpointHead]:
    """An input's metadata and status as read live (a Checkpoint, or a catalog entry)."""
    if body is None:
        return None
    return parse_head(ClusterCheckpointHead, body) if cluster else parse_head(CheckpointHead, body)


def _create_workload(ctx: Context, tj: TrainingJob, inputs: list[ResolvedInput]) -> Result:
    refused = template_claims.refused(ctx, tj)
    if refused:
        return Fail("ManagedClaim", refused)
    if tj.output_enabled:
        squatted = next(filter(None, (template_claims.squatted(ctx, tj.metadata.namespace, claim)
                                      for claim in workload.output_claim_names(tj))), None)
        if squatted:
            return Wait("ClaimNamedByTrainingJob", squatted, requeue_after=template_claims.SQUAT_RECHECK)
    made = _make_workload(ctx, tj, inputs, attempt=0, deadline=None)
    if not isinstance(made, _Made):
        return made
    write_status(ctx, tj, flow.running_change(made.name, [i.name for i in inputs],
                                              workload.output_claim_names(tj)[0] if tj.output_enabled else None,
                                              now_rfc3339(), made.publish, pinned=tj.status.inputs is not None,
                                              kind=made.kind, queue=kueue.queue_name(tj.metadata.labels),
                                              rendezvous=made.rendezvous, job_uid=made.uid)
                 .with_fields(made.restored_fields()))
    return Advance()


@dataclass(frozen=True)
class _Made:
    """A workload created (or found, after a crash): what the status records of it."""

    name: str
    kind: str
    publish: Optional[str]
    rendezvous: Optional[str]
    uid: Optional[str]  # status.jobUid: only pods it controls are the job's workers
    restored: int  # volumes of each pod restored from snapshots (its inputs)

    def restored_fields(self) -> TrainingJobStatus:
        return TrainingJobStatus(restoredInputs=self.restored) if self.restored else TrainingJobStatus()


def _make_workload(ctx: Context, tj: TrainingJob, inputs: list[ResolvedInput], attempt: int,
                   deadline: Optional[int]) -> "_Made | Result":
    """Create the output volume, the rendezvous Service and the Job or JobSet of `attempt`."""
    if not workloads.engine_installed(ctx, tj):
        return Wait("EngineNotInstalled", "spec.engine is JobSet, but this cluster does not serve "
                                          "jobset.x-k8s.io/v1alpha2 JobSets: install JobSet "
                                          "(https://jobset.sigs.k8s.io), or use engine: Job; the job starts once "
                                          "it is installed", requeue_after=ctx.config.engine_check_interval,
                    stalled=True)
    store = store_for(ctx.config)
    elsewhere = input_on_other_store(inputs, store.name)
    if elsewhere:
        return Fail("InputOnOtherStore", elsewhere)
    publish_mode = flow.publish_mode(tj, ctx.config.default_publish)
    if tj.output_enabled and tj.spec.output.parts_per_worker and store.syncs_before_snapshots \
            and tj.spec.output.publish is None:  # the operator's default: live unions are not taken in snapshots yet
        publish_mode = "OnCompletion"
    if tj.output_enabled and tj.spec.output.parts_per_worker and store.syncs_before_snapshots \
            and publish_mode == "Continuous":  # the end-of-job snapshot takes one per worker volume
        return Fail("InvalidSpec", "spec.output.publish Continuous with volumePerWorker or perWorker is not supported "
                                   "yet with volume snapshots (the operator's storage.volume.snapshotClassName): use "
                                   "publish: OnCompletion (each worker's volume is snapshotted at the end of the job), "
                                   "the volume store without snapshots, or the s3 store")
    at = workloads.rendezvous_for(ctx, tj) if rendezvous.is_distributed(tj) else None
    try:
        sidecar = workload.build_live_sidecar(tj, ctx.config, store.live_upload_prefix(tj), store.agent_env(),
                                              sync=store.syncs_before_snapshots) \
            if publish_mode == "Continuous" else None
        staged = store.input_volumes(tj, inputs)
        built = workload.build_workload(tj, inputs, staged, sidecar, rendezvous_at=at, attempt=attempt,
                                        deadline=deadline)
    except (workload.InvalidSpec, volume_snapshots.SnapshotNotReady) as exc:
        return Fail("InvalidSpec", str(exc))
    for warning in built.warnings:
        ctx.warn(tj, "EnvOverridden", warning)
    namespace = tj.metadata.namespace
    try:
        if tj.output_enabled:
            for claim in workload.build_output_claims(tj, ctx.config):
                _ensure_owned(tj, ctx.kube.ensure(PVCS, namespace, claim))
        if node_cache_steps.uses_cache(staged.volumes):
            node_cache_steps.ensure_cache_claim(ctx, namespace)
        if rendezvous.needs_service(tj):
            _ensure_owned(tj, workloads.ensure_service(ctx, tj))
        made = _ensure_owned(tj, workloads.ensure(ctx, tj, built.job))
    except NameConflict as exc:  # usually an earlier run's Job that garbage collection is removing
        return Wait("NameConflict", str(exc), requeue_after=RETRY_SOON)
    except ApiError as exc:
        if exc.status in (400, 422):
            return Fail("InvalidSpec", f"the API server refused the {built.job['kind']} or its volume: {exc.message}")
        return Wait("CreateRefused", f"creating the {built.job['kind']} or its volume failed: {exc}",
                    requeue_after=RETRY_SOON)
    # The pods of a workload with inputs restored from snapshots are deleted when it is over
    # (_release_restored_inputs): the status counts those volumes.
    return _Made(built.job["metadata"]["name"], built.job["kind"], publish_mode, at.endpoint if at else None,
                 made["metadata"].get("uid"), workload.restored_input_volumes(staged.volumes))


def _adopt_started_job(ctx: Context, tj: TrainingJob) -> Optional[Result]:
    """After a crash between creating the Job and recording it: the Job runs on the pinned
    inputs (whose labels are still set), so go on with it instead of resolving again."""
    job = workloads.get(ctx, tj, workload.job_name(tj))
    if job is None or not _owns(tj, job):
        return None
    names = [p.name for p in tj.status.inputs or []]
    queued = kueue.queue_name(tj.metadata.labels) if engines.engine_of(tj).read(job).suspended else None
    change = flow.running_change(job["metadata"]["name"], names,
                                 workload.output_claim_names(tj)[0] if tj.output_enabled else None,
                                 now_rfc3339(), flow.publish_mode_of_job(job), kind=job.get("kind", "Job"), queue=queued,
                                 job_uid=job["metadata"].get("uid"))
    restored = workload.restored_input_volumes(workload.workload_pod_spec(job).get("volumes") or [])
    if restored:  # as _create_workload records it: its pods are released when the workload is over
        change = change.with_fields(TrainingJobStatus(restoredInputs=restored))
    write_status(ctx, tj, change)
    return Advance()


class NameConflict(Exception):
    pass


def _owns(tj: TrainingJob, obj: dict[str, Any]) -> bool:
    return any(o.get("uid") == tj.metadata.uid for o in obj.get("metadata", {}).get("ownerReferences") or [])


def _ensure_owned(tj: TrainingJob, obj: dict[str, Any]) -> dict[str, Any]:
    """An object found under the name we would use must be this job's, not a namesake's (an
    earlier TrainingJob of the same name, or the user's own)."""
    if not _owns(tj, obj):
        raise NameConflict(f"{obj.get('kind')} {obj['metadata']['name']} exists and does not belong to this "
                           f"TrainingJob (uid {tj.metadata.uid}); waiting for it to go (an earlier run's objects "
                           f"are garbage-collected), or delete it or rename the TrainingJob")
    return obj


def _set_uses_labels(ctx: Context, tj: TrainingJob, uids: list[str]) -> TrainingJob:
    patch = label_patch(tj.metadata.labels, uids)
    if not patch:
        return tj
    body = ctx.kube.patch(TRAINING_JOBS, tj.metadata.namespace, tj.metadata.name, {"metadata": {"labels": patch}})
    ctx.wrote(body)
    return status_writer.with_staged(parse(TrainingJob, body))


def _release_inputs(ctx: Context, tj: TrainingJob) -> TrainingJob:
    """Drop the uses labels and (while Pending) the pins: the job no longer holds its inputs."""
    tj = _set_uses_labels(ctx, tj, [])
    if tj.phase == TrainingJobPhase.PENDING and tj.status.inputs is not None:
        tj = write_status(ctx, tj, StatusChange(fields=TrainingJobStatus(inputs=None, inputCount=None)))
    return tj


# --- Running: wait for the Job ----------------------------------------------------------------------

def follow_job(ctx: Context, tj: TrainingJob) -> Result:
    """Running or Queued: follow the workload to its end. A group restart, a preemption and an
    admission are steps on the way (logic/trainingjob_flow.py decides each)."""
    engine = engines.engine_of(tj)
    name = tj.status.jobName or workload.job_name(tj)
    obj = workloads.get(ctx, tj, name)
    if obj is not None and not _owns(tj, obj):
        obj = None  # a namesake: this job's workload is gone
    if obj is not None and obj["metadata"].get("uid") != tj.status.jobUid:
        # Created by this job (its controller is it) but not recorded: an operator that stopped
        # between creating it (a first start or a group restart) and the status write, or one that
        # did not record UIDs. Its pods are the workers from now on.
        tj = write_status(ctx, tj, flow.adopted_workload_change(tj, engine.read(obj), obj["metadata"].get("uid"),
                                                                kueue.queue_name(tj.metadata.labels)))
    state = engine.read(obj) if obj is not None else None
    controllers = workloads.worker_controllers(ctx, tj)
    if tj.publishes_live:  # also once the Job is over: the sidecars' last lines
        tj = live_unions.collect(ctx, tj, controllers) if tj.spec.output.parts_per_worker else \
            live_sealing.collect(ctx, tj, controllers)
    pods = ctx.indexes.worker_pods(tj.metadata.namespace, tj.metadata.uid, controllers)
    if ctx.config.cache_enabled:
        node_cache_steps.record_fills(ctx, tj, pods)
    if state is not None:
        change = flow.worker_failure_change(tj, state, pods)
        if change is not None:
            tj = write_status(ctx, tj, change)

    if engines.operator_restarts(tj) and (state is None or state.attempt < flow.attempt_of(tj)):
        return _next_attempt(ctx, tj, name, obj, state)
    if state is None:
        return _finish(ctx, tj, False, "failed: " + flow.job_failure_message(None))

    change = flow.suspension_change(tj, state, kueue.queue_name(tj.metadata.labels), now_rfc3339())
    if change is not None:
        tj = write_status(ctx, tj, change)
        if engines.resumes_parts(tj) and state.attempt < flow.attempt_of(tj):
            return Advance()  # preempted: made again after the resume step (_next_attempt)
    if state.suspended:
        return Wait(requeue_after=ctx.config.live_poll_interval if tj.publishes_live else None)
    change = flow.engine_restarts_change(tj, state, engine.max_restarts(tj))
    if change is not None:
        tj = write_status(ctx, tj, change)

    if state.outcome is None:
        return _running(ctx, tj, pods, state, obj)
    stopping = workers.live(pods)
    if stopping:  # the workload is over, some worker still stops: nothing may write the output then
        return flow.stopping_wait(stopping)
    if not state.outcome and engines.operator_restarts(tj):
        change = flow.restart_change(tj, state, engine.max_restarts(tj),
                                     flow.deadline_left(tj, datetime.now(timezone.utc)))
        if change is not None:  # recorded before the attempt's Job goes: the next pass removes it
            write_status(ctx, tj, change)
            ctx.warn(tj, "GroupRestart", change.message)
            return Advance()
    if state.outcome:
        return _finish(ctx, tj, True, "succeeded")
    failure = flow.job_failure_message(obj)
    if flow.is_group(tj):
        outcome = flow.group_outcome(tj, state, failure)
        if tj.status.workerFailure is None or tj.status.workerFailure.attempt != state.attempt:
            outcome = "; ".join([outcome, *_pod_failures(ctx, tj)])
    else:
        outcome = "; ".join([failure, *_pod_failures(ctx, tj)])
    return _finish(ctx, tj, False, outcome)


def _running(ctx: Context, tj: TrainingJob, pods: list[workers.WorkerPod], state: engines.WorkloadState,
             obj: Optional[dict[str, Any]]) -> Result:
    problems = [p.problem for p in pods if p.problem]
    kind = state.kind
    awaiting_pods = not pods and not state.suspended
    # Admission may refuse them: only the Job's Events say so. A Job created a moment ago has its
    # pods coming (their events wake the job): its Events are read once it has had the time.
    if awaiting_pods and volumes.is_young(obj):
        return replace(flow.running_wait(tj, [], kind), requeue_after=volumes.PODS_GRACE)
    if awaiting_pods and obj is not None:
        refused = volumes.refused_pods(ctx, tj.metadata.namespace, engines.engine_of(tj).pod_job_names(obj))
        if refused is not None:
            return replace(flow.running_wait(tj, [refused], kind), requeue_after=volumes.PODS_RECHECK)
    pending = [p for p in pods if p.phase == PodPhase.PENDING]
    if pending and all(flow.may_wait_on_a_volume(p) for p in problems):
        claims = [tj.status.outputClaim or workload.output_claim_name(tj)] if tj.output_enabled else []
        # A volume restored from a snapshot (one per pod) may not be provisioned either (its
        # snapshot deleted, too small a claim): its own Events say why. Only the first pending pod's.
        if tj.status.restoredInputs:
            claims += workload.restored_input_claims(obj, pending[0].name)
        for claim_name in claims:
            try:
                claim = volumes.unbound_claim(ctx, tj.metadata.namespace, claim_name, young=True)
            except volumes.Young:  # being bound (its event wakes the job), else looked at again then
                return replace(flow.running_wait(tj, problems, kind), requeue_after=volumes.PODS_GRACE)
            if claim is not None:  # the claim's own reason says more than the scheduler's
                return replace(flow.running_wait(tj, [claim], kind), requeue_after=volumes.CLAIM_RECHECK)
    recheck = volumes.PODS_RECHECK
    if pending and not problems:  # scheduled, its volumes bound, and still not started: attached?
        grace = flow.attach_grace_left(pending[0], datetime.now(timezone.utc))
        if grace > 0:  # most pods start before it is over: their Events are not read (a LIST)
            recheck = min(recheck, grace)
        else:
            attach = volumes.attach_wait(ctx, tj.metadata.namespace, pending[0].name)
            if attach is not None:
                return replace(flow.running_wait(tj, [attach], kind), requeue_after=volumes.CLAIM_RECHECK)
    wait = flow.running_wait(tj, problems, kind)
    # The sidecars' logs bring no event: read again after the poll interval.
    if tj.publishes_live:
        return replace(wait, requeue_after=ctx.config.live_poll_interval)
    # Nor does a refused pod (an Event of the Job only), nor a failed attach (an Event of the pod):
    # looked for again while there is none.
    return replace(wait, requeue_after=recheck) if awaiting_pods or pending else wait


def _next_attempt(ctx: Context, tj: TrainingJob, name: str, obj: Optional[dict[str, Any]],
                  state: Optional[engines.WorkloadState]) -> Result:
    """The operator's group restart (engine Job, several pods): remove the failed attempt's Job
    (its workers have all stopped), then create the next one under the same name. Its deletion is
    an event of the Job watch, which brings the job back here."""
    if obj is not None and state is not None:
        # Its user may resume (or suspend) it while it goes: the next one is made as they want it then.
        change = flow.replaced_suspension_change(tj, state.kind, state.name, bool((obj.get("spec") or {}).get("suspend")),
                                                 kueue.queue_name(tj.metadata.labels))
        if change is not None:
            tj = write_status(ctx, tj, change)
        if not state.deleting:
            workloads.delete_attempt(ctx, tj, name, obj["metadata"]["uid"])
        return Wait()
    attempt = flow.attempt_of(tj)
    if engines.resumes_parts(tj):
        if group_resume.needs_resume_step(tj, attempt):
            return _resume_step(ctx, tj, attempt)
        _delete_resume_pod(ctx, tj)
    inputs = _inputs_again(ctx, tj)
    if not isinstance(inputs, list):
        return inputs
    left = flow.deadline_left(tj, datetime.now(timezone.utc))
    made = _make_workload(ctx, tj, inputs, attempt=attempt, deadline=max(1, int(left)) if left is not None else None)
    if not isinstance(made, _Made):
        return made
    write_status(ctx, tj, flow.attempt_started_change(tj, made.kind, made.name, made.rendezvous,
                                                      kueue.queue_name(tj.metadata.labels), made.uid)
                 .with_fields(made.restored_fields()))
    ctx.info(tj, "GroupStarted", f"{workers.attempt_name(attempt)}: {made.kind} {made.name} created again")
    return Wait()


RESUME = agent_runs.AgentTask("resume", "resumePodUid", (ResumeReport,))


def _resume_step(ctx: Context, tj: TrainingJob, attempt: int) -> Result:
    """Between two attempts of a group with a volume per worker (every worker stopped, the failed
    attempt's JobSet gone): one agent pod copies the latest checkpoint complete over the workers'
    volumes into each (logic/group_resume.py); its result is recorded before the next attempt starts,
    whose workers then resume from it. A failed pod is said, and the attempt starts from what was there."""
    # The parts of directories with no Checkpoint get their write bits back (H9-3): what is kept sealed
    # is read as the pod is built (while it runs no union pod starts: live_unions.collect).
    kept = live_unions.kept_sealed(ctx, tj) if tj.publishes_live else []
    pod = workload.build_resume_pod(tj, ctx.config, published=kept)
    run = agent_runs.follow(ctx, tj, pod, RESUME)
    if isinstance(run, agent_runs.Waiting):
        return agent_runs.wait_for(run, reason=None, message="", current_reason=tj.ready_reason(),
                                   problem_prefix=f"resume pod {pod['metadata']['name']}")
    if isinstance(run, agent_runs.PodFailed):
        change = group_resume.resume_failed_change(tj, attempt, run.message)
    else:
        assert run.result is not None
        change = group_resume.resumed_change(tj, attempt, run.result)
    if tj.publishes_live and not group_resume.gives_back(kept):  # --keep-sealed: nothing was given back
        ctx.warn(tj, "PartsKeptSealed", group_resume.kept_sealed_message(len(kept)))
    elif tj.publishes_live:  # what it gave back (or may have, if it failed) is not a sealed part any more
        live_unions.reopened(ctx, tj, live_unions.kept_sealed(ctx, tj))
    write_status(ctx, tj, change)
    agent_runs.finish(ctx, pod)  # the result is recorded first (finish commits the pass's status)
    return Advance()


def _delete_resume_pod(ctx: Context, tj: TrainingJob) -> None:
    """A resume pod whose result is recorded but which was not deleted (the operator stopped in between):
    gone before the next one, so an earlier attempt's result is never read again for a later one."""
    name = workload.resume_pod_name(tj)
    if ctx.kube.cached(PODS, tj.metadata.namespace, name):
        ctx.kube.delete(PODS, tj.metadata.namespace, name)


def _inputs_again(ctx: Context, tj: TrainingJob) -> "list[ResolvedInput] | Result":
    """The pinned inputs, read live again as at the start (a catalog entry: the namespace's copy), for
    the pods of a restarted group (they are still held by this job's uses labels, so they exist)."""
    resolution = resolve_inputs(tj, ctx.indexes)
    if resolution.waits:
        return flow.input_wait(resolution.waits)
    checked, bodies = _check_live(ctx, tj, resolution.candidates)
    waits = [c for c in checked if isinstance(c, InputWait)]
    if waits:
        return flow.input_wait(waits)
    return _namespace_copies(ctx, tj, [c for c in checked if isinstance(c, ResolvedInput)], bodies)


def _finish(ctx: Context, tj: TrainingJob, succeeded: bool, outcome: str) -> Result:
    """The workload's outcome, recorded before anything of it goes: the next pass (the snapshot,
    or `_finished`) releases its inputs and deletes the pods that hold restored volumes."""
    change, _ = flow.after_job(tj, succeeded, outcome, now_rfc3339(), workload.snapshot_pod_name(tj))
    write_status(ctx, tj, change)
    live_sealing.forget(ctx, tj)  # the sidecars' last lines were read above
    if tj.publishes_live and tj.spec.output.parts_per_worker:
        live_unions.stop(ctx, tj)
    return Advance()


def _release_restored_inputs(ctx: Context, tj: TrainingJob) -> TrainingJob:
    """The job's pods are over: the pods that hold volumes restored from snapshots are deleted,
    and their volumes with them (each is owned by its pod: a generic ephemeral volume). Their
    outcome is recorded already; their logs go with them."""
    if not tj.status.restoredInputs:
        return tj
    # Only the pods of the workload the operator recorded (status.jobUid): one that merely carries
    # the job's label is not deleted on its word.
    pods = ctx.indexes.worker_pods(tj.metadata.namespace, tj.metadata.uid, workloads.worker_controllers(ctx, tj))
    for pod in pods:
        ctx.kube.delete(PODS, tj.metadata.namespace, pod.name)
    if pods:
        ctx.info(tj, "InputsReleased", f"deleted {len(pods)} finished pod(s) and the {tj.status.restoredInputs} "
                                       "volume(s) each restored from snapshots for its inputs")
    return write_status(ctx, tj, StatusChange(fields=TrainingJobStatus(restoredInputs=None)))


def _pod_failures(ctx: Context, tj: TrainingJob) -> list[str]:
    """Why the failed training pods failed: the inputs whose download was refused, with the
    agent's own line, else what the pods say (OOMKilled, Evicted, an exit code). One GET and at
    most one log read per failed pod, once, when the Job has failed."""
    namespace, names = tj.metadata.namespace, [p.name for p in tj.status.inputs or []]
    found: dict[str, str] = {}
    others: list[str] = []
    for state in ctx.indexes.worker_pods(namespace, tj.metadata.uid, workloads.worker_controllers(ctx, tj)):
        pod = ctx.kube.get(PODS, namespace, state.name) if state.phase == PodPhase.FAILED else None
        if pod is None:
            continue
        failure = pod_failure(pod, "training")
        name = downloaded_input(failure.container, names)
        if name is None:
            others.append(failure.message)
        if name is None or name in found:
            continue
        try:
            line = last_error_line(ctx.kube.read_log(namespace, state.name, failure.container,
                                                     tail_lines=agent_runs.FAILURE_LOG_LINES,
                                                     limit_bytes=agent_runs.FAILURE_LOG_BYTES))
        except ApiError:
            line = ""
        found[name] = flow.input_download_failure(name, line or failure.message)
    return list(found.values()) or flow.worker_failures(others)


# --- Snapshotting: scan the output, create Checkpoints -------------------------------------------------

SNAPSHOT = agent_runs.AgentTask("snapshot", "snapshotPodUid", (ScanReport,))


def snapshot(ctx: Context, tj: TrainingJob) -> Result:
    store = store_for(ctx.config)
    tj = _release_restored_inputs(ctx, tj)  # the outcome was recorded by the pass before (_finish)
    backoff = flow.snapshot_wait(tj.status.snapshotRetryAt, datetime.now(timezone.utc))
    if backoff is not None:  # after a failed attempt (SnapshotRetry said when)
        left = ctx.kube.get(PODS, tj.metadata.namespace, workload.snapshot_pod_name(tj))
        # The failed pod, still being deleted, was counted: never read again (it was counted twice).
        if left is None or (left.get("metadata") or {}).get("uid") == tj.status.snapshotPodUid:
            return Wait(requeue_after=backoff)
    pod = workload.build_snapshot_pod(tj, store.snapshot_command(tj, AGENT_OUTPUT_MOUNT), store.agent_env(),
                                      ctx.config, read_only=not store.snapshot_writes_output)
    run = agent_runs.follow(ctx, tj, pod, SNAPSHOT)
    if isinstance(run, agent_runs.Waiting):  # status.snapshotPod was written with the Snapshotting phase
        return agent_runs.wait_for(run, reason="Snapshotting", message=tj.status.message or "",
                                   current_reason=tj.ready_reason())
    if isinstance(run, agent_runs.PodFailed):
        return _snapshot_pod_failed(ctx, tj, pod, run.message, run.refused)
    assert run.result is not None
    return _store_snapshot(ctx, tj, pod, run.result, run.ended)


def _snapshot_pod_failed(ctx: Context, tj: TrainingJob, pod: dict[str, Any], message: str, refused: bool) -> Result:
    attempts = (tj.status.snapshotAttempts or 0) + 1
    agent_runs.finish(ctx, pod)
    failed = flow.snapshot_retry(attempts, message, refused)
    if failed is not None:
        return failed  # the output volume stays (s3 store: nothing was stored from it)
    retry_at, delay = flow.snapshot_retry_at(attempts, datetime.now(timezone.utc))
    ctx.warn(tj, "SnapshotRetry", f"attempt {attempts}: {message}; retrying in {delay:g} s")
    write_status(ctx, tj, StatusChange(fields=TrainingJobStatus(snapshotAttempts=attempts, snapshotRetryAt=retry_at)))
    return Wait(requeue_after=delay)


def _store_snapshot(ctx: Context, tj: TrainingJob, pod: dict[str, Any], scan: ScanReport, ended: str) -> Result:
    """The snapshot pod succeeded: its checkpoints become Ready Checkpoints, in this order (a
    crash at any step repeats it and the ones after it, never an earlier one's effect twice)."""
    store, claim = store_for(ctx.config), workload.output_claim_name(tj)
    if tj.publishes_live:  # a retired directory is never published again, whatever its bytes now
        retired_now = live_sealing_logic.never_again(tj.status.live)  # retired, and removed since (retiredPaths)
        again = live_sealing_logic.retired_found_again(((m.path, m.digest) for m in scan.checkpoints), retired_now)
        if again:
            ctx.warn(tj, "NotPublishedAgain", live_sealing_logic.found_again_message(again))
        if tj.spec.output.parts_per_worker:
            scan = live_unions_logic.without_retired(scan, retired_now)
        # (one volume: plan_snapshot passes them over by path, as `gone`: their uploads are deleted as unused)
    if scan.manifestsProblem:  # the checkpoints stand; verify and pull read their files again instead
        ctx.warn(tj, "ManifestsNotStored", scan.manifestsProblem)
    # Checked against the store only where it was uploaded; with volume snapshots the snapshot
    # is taken below (the checkpoints are located in it once it is ready).
    committed = store.output_snapshot(tj, claim, FINAL_SNAPSHOT) is None
    existing = signing.own_checkpoints(ctx, tj.metadata.namespace, tj.metadata.uid)
    # Not what a Checkpoint of the job holds already (checked when it was made) nor what retention
    # retired (its data may be gone by now, rightly).
    retired = set(live_sealing_logic.never_again(tj.status.live))
    stored = _storable_and_committed(tj, store, claim, scan, check_committed=committed,
                                     skip=retired | {(c.directory, c.digest) for c in existing})
    if isinstance(stored, str):
        agent_runs.finish(ctx, pod)
        return Fail("SnapshotFailed", f"pod {pod['metadata']['name']}: {stored}")
    scan = stored
    located = _locate_output(ctx, tj, store, claim, pod, scan, existing)
    if not isinstance(located, tuple):
        return located
    plan, taken = located
    unpublished = {p.name for p in plan.checkpoints if _unpublished(ctx, tj.metadata.namespace, p.name)}
    created = _create_checkpoints(ctx, tj, plan)
    if created is None:
        return Wait("NameConflict", "a Checkpoint name was taken meanwhile; planning again", requeue_after=0.5)
    _report_changed_since_sealing(ctx, tj, plan, store)
    retained = not_stored(scan, len(created) + len(plan.dropped) + len(plan.gone)) or \
        _changed_not_stored(plan, store.keeps_output_claim)
    # The Checkpoints own the data before any of them is Ready: deleting the job from here on
    # can no longer take the volume (or its snapshot) away from under them.
    if taken is not None:
        in_snapshot = [(publish.checkpoint_owner(b), p.location) for b, p in zip(created, plan.checkpoints)
                       if p.name in unpublished]
        volume_snapshot_steps.hand_over_all(ctx, tj.metadata.namespace, taken, in_snapshot, tj.metadata.uid)
    _hand_over_output_claim(ctx, tj, store, claim, created + _still_owning(ctx, tj, plan, scan, existing),
                            keep=retained is not None)
    # Each is made Ready by its own reconcile, from the sealed data in its spec, now that it holds its
    # bytes; the job is Succeeded only then (a finished job's outputs are usable to whoever reads them).
    # Until then it waits quietly: their Ready events wake it (wakeups.checkpoint_event); the pod and
    # its result stay (agent_runs keeps the parsed result: the log is read once). Bounded: one that never
    # becomes Ready fails the job, named (flow.publish_wait).
    namespace = tj.metadata.namespace
    not_ready = [(p.name, "Pending") for p in plan.checkpoints if _unpublished(ctx, namespace, p.name)]  # made or found
    if store.later_writes_reach_checkpoints:
        not_ready += [(info.name, "changed after sealing, not Failed yet") for info, _ in plan.changed
                      if _not_failed_yet(ctx, namespace, info.name)]
    if not_ready:
        since = flow.publish_wait_since(ended, [b["metadata"].get("creationTimestamp") for b in created], STARTED)
        waited = flow.publish_wait(not_ready, since, datetime.now(timezone.utc), PUBLISH_RECHECK,
                                   ctx.config.publish_timeout)
        if isinstance(waited, Fail):
            agent_runs.finish(ctx, pod)
        return waited
    published = list(zip(created, plan.checkpoints))
    _retire(ctx, tj, plan)
    _delete_unused_uploads(ctx, tj, store, plan, scan)
    _delete_unused_snapshots(ctx, tj, store, claim)
    _report_snapshot(ctx, tj, plan, scan, [(b, p) for b, p in published if p.name not in {e.name for e in existing}])
    _observe_snapshot(ctx, tj, [p for _, p in published])
    kept = [p.name for _, p in published if p.name not in {r.name for r in plan.retire}]
    tj = write_status(ctx, tj, flow.snapshot_done(tj, kept, now_rfc3339(), retained, claim, scan.total_skipped))
    # Only once the result is recorded (`finish` writes the pass's status first): a retry before
    # this point reads the pod's result again (on the s3 store the output volume is gone: a new
    # snapshot pod could never run).
    agent_runs.finish(ctx, pod)
    if retained:
        ctx.warn(tj, flow.OUTPUT_RETAINED, f"volume {claim} is kept: {retained}")
    _release_inputs(ctx, tj)
    return Done()


STARTED = now_rfc3339()  # this process's start: a wait for Checkpoints counts from no earlier (publish_wait_since)
FINAL_SNAPSHOT = "final"  # the key of the end-of-job volume snapshot (logic/volume_snapshots.py)


def _not_failed_yet(ctx: Context, namespace: str, name: str) -> bool:
    """A Checkpoint the job asked to fail (changed after sealing) that its reconcile has not failed yet."""
    info = ctx.indexes.checkpoint(namespace, name)
    return info is not None and not info.deleting and info.phase != CheckpointPhase.FAILED


def _unpublished(ctx: Context, namespace: str, name: str) -> bool:
    """A planned Checkpoint that does not exist yet, or is not Ready yet: its location is to be written."""
    info = ctx.indexes.checkpoint(namespace, name)
    return info is None or info.phase == CheckpointPhase.PENDING


def _locate_output(ctx: Context, tj: TrainingJob, store: Store, claim: str, pod: dict[str, Any], scan: ScanReport,
                   existing: list[CheckpointInfo]) -> tuple[SnapshotPlan, Optional[Taken]] | Result:
    """The plan, with the location of each checkpoint to publish: where it was uploaded (checked
    before), or (with volume snapshots) in the output's snapshot, or in the snapshots of the workers'
    volumes that hold its parts (a volume per worker), taken once the scan said the bytes are on the disk."""
    request = store.output_snapshot(tj, claim, FINAL_SNAPSHOT)
    plan = _plan(ctx, tj, store, claim, scan, existing, None)
    conflict = conflict_wait(plan.conflicts)
    if conflict is not None:  # nothing is created under another name (nor snapshotted): the data waits on the volume
        return conflict
    if request is None:
        return plan, None
    if not any(_unpublished(ctx, tj.metadata.namespace, p.name) for p in plan.checkpoints):
        return plan, None  # (all published at an earlier pass, in their snapshots)
    if not volume_snapshots.is_synced(scan.synced):
        agent_runs.finish(ctx, pod)
        return Fail("SnapshotFailed", f"pod {pod['metadata']['name']} did not report the output volume's "
                                      "filesystem synced (syncfs): no volume snapshot is taken of bytes that "
                                      "may not be on the disk")
    taken: "Taken | Wait"
    if parts_count(tj):  # a volume per worker: each worker volume that holds a part of one to publish
        unpublished = {p.directory for p in plan.checkpoints if _unpublished(ctx, tj.metadata.namespace, p.name)}
        workers = sorted({part.worker for m in scan.checkpoints if m.path in unpublished for part in m.parts or []})
        taken = volume_snapshot_steps.take_parts(ctx, tj, store.output_part_snapshots(tj, workers, FINAL_SNAPSHOT))
    else:
        taken = volume_snapshot_steps.take(ctx, tj, request)
    if isinstance(taken, Wait):
        return taken
    return _plan(ctx, tj, store, claim, scan, existing, taken), taken


def _storable_and_committed(tj: TrainingJob, store: Store, claim: str, scan: ScanReport, *,
                            check_committed: bool = True,
                            skip: Optional[set[tuple[Optional[str], Optional[str]]]] = None) -> ScanReport | str:
    """The scan without the checkpoints the store cannot keep (counted as skipped); with
    `check_committed`, every other checkpoint (but the (directory, digest) in `skip`) must have
    reached the store, committed: else what did not."""
    layout = tj.spec.output.layout
    # Retired by live retention: no Checkpoint is made of them, and their sealed copy may be deleted
    # between the snapshot pod's look and this one (the pod then reported a prefix now gone).
    # (By path: whatever its bytes now, a retired directory is never published again.)
    retired = {p for p, _ in live_sealing_logic.never_again(tj.status.live)}
    try:
        scan = storable(scan, lambda m: store.snapshot_location(tj, claim, m, layout))
        for manifest in scan.checkpoints if check_committed else []:
            if manifest.path in retired or (manifest.path, manifest.digest) in (skip or set()):
                continue
            if not store.is_committed(store.snapshot_location(tj, claim, manifest, layout)):
                return f"{manifest.path!r} has no manifest in the store: the upload did not complete"
    except MissingUpload as exc:
        return str(exc)
    return scan


def _plan(ctx: Context, tj: TrainingJob, store: Store, claim: str, scan: ScanReport,
          existing: list[CheckpointInfo], taken: Optional[Taken]) -> SnapshotPlan:
    namespace, layout = tj.metadata.namespace, tj.spec.output.layout
    retired = live_sealing_logic.never_again(tj.status.live)  # retired, and removed since (retiredPaths)
    return plan_snapshot(tj, scan, lambda n: signing.trusted_info(ctx, ctx.indexes.checkpoint(namespace, n)),
                         lambda m: store.snapshot_location(tj, claim, m, layout, taken),
                         existing=existing, retired=retired)


def _create_checkpoints(ctx: Context, tj: TrainingJob, plan: SnapshotPlan) -> Optional[list[dict[str, Any]]]:
    """The planned Checkpoints, created (or found from an earlier pass); None when a name was
    taken meanwhile by another object (the plan is made again)."""
    found = [publish.create_checkpoint(ctx, tj, planned) for planned in plan.checkpoints]
    created = [c for c in found if c is not None]
    return created if len(created) == len(found) else None


def _report_changed_since_sealing(ctx: Context, tj: TrainingJob, plan: SnapshotPlan, store: Store) -> None:
    """Live sealing: a sealed directory whose bytes changed since, or (when later writes reach the
    Checkpoints' bytes; not the s3 store, which keeps the sealed copy) that was removed since."""
    for info, manifest in plan.changed:
        publish.mark_changed(ctx, tj, info, f"{info.directory} changed after it was sealed (digest now "
                                            f"{manifest.digest})", bytes_in_place=store.later_writes_reach_checkpoints)
    if store.later_writes_reach_checkpoints:
        for info in plan.missing:
            publish.mark_changed(ctx, tj, info, missing_message(info.directory or "", plan.skipped),
                                 bytes_in_place=True)


def _still_owning(ctx: Context, tj: TrainingJob, plan: SnapshotPlan, scan: ScanReport,
                  existing: list[CheckpointInfo]) -> list[dict[str, Any]]:
    """The job's Checkpoints from live sealing that stay (logic/replays.still_owning): never one it
    did not create, such as a deleted one's saved YAML applied again (its signature verifies)."""
    namespace = tj.metadata.namespace
    holders: set[str] = set()
    for each in workload.output_claim_names(tj) if tj.spec.output.parts_per_worker else \
            [workload.output_claim_name(tj)]:
        pvc = ctx.kube.cached_get(PVCS, namespace, each) or {}
        holders |= {o.get("uid", "") for o in (pvc.get("metadata") or {}).get("ownerReferences") or []}
    retired = {(r.path, r.digest) for r in (tj.status.live.retired if tj.status.live else None) or []}
    keep = replays.still_owning(existing, {p.name for p in plan.checkpoints}, holders,
                                {(m.path, m.digest) for m in scan.checkpoints}, retired)
    bodies = (ctx.kube.get(CHECKPOINTS, namespace, c.name) for c in keep)
    return [b for b in bodies if b is not None]


def _retire(ctx: Context, tj: TrainingJob, plan: SnapshotPlan) -> None:
    for info in plan.retire:
        ctx.info(tj, "Retired", f"retention: deleting Checkpoint {info.name} (step {info.step})")
        ctx.kube.delete(CHECKPOINTS, tj.metadata.namespace, info.name)


def _delete_unused_uploads(ctx: Context, tj: TrainingJob, store: Store, plan: SnapshotPlan, scan: ScanReport) -> None:
    """Uploads that became no Checkpoint (retention's drops, directories retired before)."""
    uploads = {m.path: m.uri for m in scan.checkpoints if m.uri}
    unused = [uploads[d] for d in [*plan.dropped, *plan.gone] if d in uploads]
    for uri in store.delete_unused_uploads(tj, unused):
        ctx.info(tj, "DataDeleted", f"deleted {uri} (not kept as a Checkpoint)")


def _delete_unused_snapshots(ctx: Context, tj: TrainingJob, store: Store, claim: str) -> None:
    """With volume snapshots: the job's snapshots no Checkpoint points into (retention's drops,
    live snapshots of directories retired since)."""
    if store.output_snapshot(tj, claim, FINAL_SNAPSHOT) is None:
        return
    for name in volume_snapshot_steps.delete_unused(ctx, tj.metadata.namespace, tj.metadata.uid):
        ctx.info(tj, "DataDeleted", f"deleted VolumeSnapshot {name} (no Checkpoint points into it)")


def _observe_snapshot(ctx: Context, tj: TrainingJob, published: list[PlannedCheckpoint]) -> None:
    if tj.status.snapshotStartTime:
        metrics.SNAPSHOT_DURATION.labels(ctx.config.storage_type).observe(seconds_since(tj.status.snapshotStartTime))
    metrics.TRANSFERRED_BYTES.labels("snapshot").inc(sum(p.sealed_size for p in published))


def _changed_not_stored(plan: SnapshotPlan, bytes_in_place: bool) -> Optional[str]:
    """s3 store: a sealed directory changed after its upload; the new bytes exist only on the
    output volume, which is then kept."""
    if bytes_in_place or not plan.changed:
        return None
    return "changed after sealing, not stored: " + ", ".join(info.directory or "" for info, _ in plan.changed[:5])


def _report_snapshot(ctx: Context, tj: TrainingJob, plan: SnapshotPlan, scan: ScanReport,
                     created: list[tuple[dict[str, Any], PlannedCheckpoint]]) -> None:
    if scan.total_skipped:  # one event for all of them (3,000 skipped links are one line)
        ctx.warn(tj, "Skipped", skipped_message(scan.skipped, scan.skippedCount))
    if plan.dropped:
        ctx.info(tj, "NotKept", f"retention: not kept as Checkpoints: {', '.join(plan.dropped)}")
    # No event per Checkpoint: the job's outcome event names them all (one POST, whatever their number),
    # and each Checkpoint's Ready condition says what it holds.


def _hand_over_output_claim(ctx: Context, tj: TrainingJob, store: Store, claim: str, owners: list[dict[str, Any]],
                            keep: bool) -> None:
    """Volume store: the Checkpoints own the output volume from now on, so Kubernetes deletes it
    with the last of them (and not with the job). s3 store: the data was uploaded; release the
    volume, unless something in it was not stored (then it stays, owned by the job)."""
    if not store.keeps_output_claim:
        for each in workload.output_claim_names(tj) if tj.spec.output.parts_per_worker and not keep else \
                [] if keep else [claim]:
            _, keeping = claim_holds.delete_unless_held(ctx, tj.metadata.namespace, each)
            if keeping:  # a source.volume Checkpoint adopted a path of it: it goes with the last of them
                ctx.info(tj, "OutputKept", f"volume {each} is kept: Checkpoint {', '.join(keeping)} points into it")
    elif owners:  # with a volume per worker, every worker's volume (a checkpoint may read from any)
        for each in workload.output_claim_names(tj) if tj.spec.output.parts_per_worker else [claim]:
            publish.own_output_claim(ctx, tj, each, [publish.checkpoint_owner(b) for b in owners], keep_job=False)


# --- finished, deleting -----------------------------------------------------------------------------

def _finished(ctx: Context, tj: TrainingJob) -> Optional[float]:
    """Idempotent clean-up (after a crash) and the release of a retained output volume."""
    live_sealing.forget(ctx, tj)
    # Left when the operator died (or the DELETE failed) right after the final status: its watch
    # event (the pod exists) puts it in the cache and wakes the job. Else it is gone already.
    if tj.status.snapshotPod and ctx.kube.cached(PODS, tj.metadata.namespace, tj.status.snapshotPod):
        ctx.kube.delete(PODS, tj.metadata.namespace, tj.status.snapshotPod)
    if used_uids(tj.metadata.labels):
        tj = _release_inputs(ctx, tj)
    if tj.status.restoredInputs:  # the operator stopped between the Job's end and their release
        tj = _release_restored_inputs(ctx, tj)
    if flow.wants_output_released(tj):
        # With a volume per worker, every worker's volume; the condition names the first.
        claims = workload.output_claim_names(tj) if tj.spec.output.parts_per_worker else \
            [tj.status.outputClaim or workload.output_claim_name(tj)]
        released = [_release_claim(ctx, tj, claim) for claim in claims]
        tj = write_status(ctx, tj, flow.released_change(claims[0], *released[0]))
        ctx.info(tj, "OutputReleased", f"volume {', '.join(claims)} released on request")
    return None


def _release_claim(ctx: Context, tj: TrainingJob, claim: str) -> tuple[bool, list[str]]:
    pvc = ctx.kube.get(PVCS, tj.metadata.namespace, claim)
    return claim_holds.delete_unless_held(ctx, tj.metadata.namespace, claim) \
        if pvc is not None and _owns(tj, pvc) else (False, [])


def _deleting(ctx: Context, tj: TrainingJob) -> Optional[float]:
    """The Job, pods and output volume go with the TrainingJob (owner references). Releases the
    finalizer that operator versions before 0.2 put on TrainingJobs (kopf's, same name); on a
    conflict, at once again on a fresh read."""
    live_sealing.forget(ctx, tj)
    finalizers = tj.metadata.finalizers or []
    if PROTECTION_FINALIZER in finalizers:
        remaining = [f for f in finalizers if f != PROTECTION_FINALIZER]
        try:
            ctx.kube.patch(TRAINING_JOBS, tj.metadata.namespace, tj.metadata.name, {"metadata": {
                "finalizers": remaining, "resourceVersion": tj.metadata.resourceVersion}})
        except Conflict:
            return 0.0
    return None


STEPS = {TrainingJobPhase.PENDING: start, TrainingJobPhase.QUEUED: follow_job, TrainingJobPhase.RUNNING: follow_job,
         TrainingJobPhase.SNAPSHOTTING: snapshot}
