"""The TrainingJob's decisions, as pure functions: given what was read, what happens next.

Pending -> Running -> Snapshotting -> Succeeded | Failed, with Queued beside Running while the
workload is suspended (Kueue). reconcile/trainingjob.py reads the objects, calls these, applies
what they decide and records it; tests/unit/logic/test_trainingjob_flow.py tests every decision
without an API.

A distributed job (several pods, or engine JobSet) fails and succeeds as a group: the snapshot
waits until every worker has stopped, the first worker to fail is named, and a failed attempt
restarts the whole group up to `backoffLimit` times (logic/engines.py says who restarts it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Optional

from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobPhase, TrainingJobStatus, WorkerFailure
from checkpoint_operator.logic import engines, live_sealing, workers
from checkpoint_operator.logic.agent_pods import PodProblem
from checkpoint_operator.logic.conditions import seconds_since
from checkpoint_operator.logic.engines import WorkloadState
from checkpoint_operator.logic.inputs import InputWait
from checkpoint_operator.logic.results import Fail, Wait
from checkpoint_operator.logic import status
from checkpoint_operator.logic.status import ConditionChange, StatusChange

MAX_SNAPSHOT_ATTEMPTS = 3
SNAPSHOT_RETRY_DELAYS = (10.0, 30.0)  # seconds before the 2nd and 3rd attempts
RELEASE_OUTPUT_ANNOTATION = "ckpt.dev/release-output"
OUTPUT_RETAINED = "OutputRetained"


def input_wait(waits: list[InputWait]) -> Wait:
    """All waiting inputs in one message; Stalled when one of them cannot resolve by itself.
    No requeue: the inputs' events wake the job (reconcile/wakeups.py says why none is lost)."""
    return Wait(waits[0].reason, "; ".join(w.message for w in waits), stalled=any(w.terminal for w in waits))


def fail_change(fail: Fail, now: str) -> StatusChange:
    return status.fail_change(TrainingJobPhase.FAILED, fail, TrainingJobStatus(completionTime=now))


def running_change(job_name: str, inputs: list[str], output_claim: Optional[str], now: str,
                   publish: Optional[str] = None, pinned: bool = True, *, kind: str = "Job",
                   queue: Optional[str] = None, rendezvous: Optional[str] = None,
                   job_uid: Optional[str] = None) -> StatusChange:
    """`pinned`: status.inputs was written before the Job (with inputs); else none, recorded here.
    `queue`: the workload was created suspended for Kueue's LocalQueue `queue`: Queued until admitted.
    `job_uid`: the workload's UID (only pods it controls are trusted as the job's workers)."""
    names = ", ".join(inputs) or "no inputs"
    fields = TrainingJobStatus(jobName=job_name, outputClaim=output_claim, publish=publish, rendezvous=rendezvous)
    if job_uid is not None:
        fields = TrainingJobStatus(jobName=job_name, outputClaim=output_claim, publish=publish, rendezvous=rendezvous,
                                   jobUid=job_uid)
    if queue is not None:
        change = StatusChange(phase=TrainingJobPhase.QUEUED, reason="Queued", event="Normal", fields=fields,
                              message=f"{kind} {job_name} is queued in Kueue (LocalQueue {queue}): it starts when "
                                      f"Kueue admits it; inputs: {names}")
    else:
        change = StatusChange(phase=TrainingJobPhase.RUNNING, reason="Running", event="Normal",
                              message=f"{kind} {job_name} started on {names}",
                              fields=fields).with_fields(TrainingJobStatus(startTime=now))
    return change if pinned else change.with_fields(TrainingJobStatus(inputs=[], inputCount=0))


def publish_mode(tj: TrainingJob, default: str) -> Optional[str]:
    """spec.output.publish, else the operator's default; None without an output."""
    if not tj.output_enabled:
        return None
    if tj.spec.output.perWorker:  # live sealing of each worker's own checkpoints: not yet (the CRD refuses it)
        return "OnCompletion"
    return tj.spec.output.publish or default


def publish_mode_of_job(job: dict[str, Any]) -> str:
    """What a Job (or JobSet) created before a crash publishes: Continuous when its pods have the sidecar."""
    job_spec = job.get("spec") or {}
    if "replicatedJobs" in job_spec:  # a JobSet: the pods of its (one) replicated job
        job_spec = ((job_spec.get("replicatedJobs") or [{}])[0].get("template") or {}).get("spec") or {}
    init = ((job_spec.get("template") or {}).get("spec") or {}).get("initContainers") or []
    return "Continuous" if any(c.get("name") == live_sealing.SIDECAR for c in init) else "OnCompletion"


def input_download_failure(input_name: str, error: str) -> str:
    """Added to the Job's failure when a training pod's input download was refused: the
    training code never ran, and the agent's line says why (a digest that is not the pinned one)."""
    return f"input {input_name} could not be downloaded: {error}"


def worker_failures(messages: list[str]) -> list[str]:
    """What the failed training pods say (an OOM kill, an eviction, an exit code), added to the
    Job's own condition (BackoffLimitExceeded names no cause): the first, and how many more."""
    if not messages:
        return []
    more = f" (and {len(messages) - 1} more failed pod(s))" if len(messages) > 1 else ""
    return [messages[0] + more]


def job_failure_message(job: Optional[dict[str, Any]]) -> str:
    if job is None:
        return "was deleted before it finished"
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return f"failed: {condition.get('reason', '')} {condition.get('message', '')}".strip()
    return "failed"


def running_wait(tj: TrainingJob, problems: list[PodProblem], kind: str = "Job") -> Wait:
    """While the Job runs: quiet, unless a pod is stuck (then the condition names why, and goes
    back to Running once it is not)."""
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more pod(s))" if len(problems) > 1 else ""
        return Wait(first.reason, first.message + more)
    if tj.ready_reason() not in (None, "Running"):
        attempt, restarts = attempt_of(tj), tj.status.restarts or 0
        preempted = f" and {tj.status.preemptions} preemption(s)" if engines.resumes_parts(tj) and tj.status.preemptions \
            else ""
        after = f" ({workers.attempt_name(attempt)}, after {restarts} group restart(s){preempted})" if attempt else ""
        return Wait("Running", f"{kind} {tj.status.jobName} is running{after}", warning=False)
    return Wait()


# --- groups: distributed jobs -------------------------------------------------------------------

def is_group(tj: TrainingJob) -> bool:
    """Workers that fail and succeed together: several pods, or a JobSet."""
    return tj.spec.replicas > 1 or tj.spec.engine == "JobSet"


def worker_failure_change(tj: TrainingJob, state: WorkloadState,
                          pods: list[workers.WorkerPod]) -> Optional[StatusChange]:
    """Record the worker that failed first in the current attempt, once per attempt, as soon as it
    is seen (its pod may be gone by the time the group restarts)."""
    recorded = tj.status.workerFailure
    if not is_group(tj) or (recorded is not None and recorded.attempt == state.attempt):
        return None
    attempt, first = state.attempt, workers.first_failure(pods, state.attempt)
    if first is None and state.attempt > 0 and (recorded is None or recorded.attempt < state.attempt - 1):
        # The engine restarted the group before this pass saw the failure (JobSet, one-pod Jobs
        # of a volume per worker: the failed Job ends at once): the last attempt's pods, if still there.
        attempt, first = state.attempt - 1, workers.first_failure(pods, state.attempt - 1)
    if first is None:
        return None
    failure = WorkerFailure(attempt=attempt, index=first.index, pod=first.name, message=workers.describe(first))
    return StatusChange(fields=TrainingJobStatus(workerFailure=failure))


def _failed_first(tj: TrainingJob, attempt: int) -> Optional[str]:
    """The recorded first failure of `attempt` (None: not seen, its pod was gone before)."""
    recorded = tj.status.workerFailure
    if recorded is not None and recorded.attempt == attempt:
        return f"{recorded.message} (failed first)"
    return None


def attempt_of(tj: TrainingJob) -> int:
    """The attempt the operator's workload runs (its `ckpt.dev/restart-attempt` label): one per group
    restart, and with a volume per worker one per preemption too, since a preempted group is made
    again after the resume step (its workers would otherwise be admitted again with the copy of an
    earlier attempt, or none: hostile7 R1)."""
    restarts = tj.status.restarts or 0
    return restarts + (tj.status.preemptions or 0) if engines.resumes_parts(tj) else restarts


def _when_quickly_admitted_again(tj: TrainingJob, queue: Optional[str]) -> str:
    if engines.resumes_parts(tj):  # as any preemption of such a group: a new attempt after the resume step
        return _when_admitted_again(tj, queue, resumed=True)
    return "they were started again and resume from their latest checkpoint"


def _when_admitted_again(tj: TrainingJob, queue: Optional[str], resumed: bool = False) -> str:
    if engines.resumes_parts(tj):
        made = "it is queued again" if queue else "it runs" if resumed else \
            "it is made suspended, as its user left it: set its spec.suspend to false to resume"
        return ("the operator makes the group again once they have stopped: the resume step copies the latest "
                f"checkpoint complete over the workers' volumes into each, and {made}")
    return "it resumes from its latest checkpoint when admitted again" if queue else \
        "it resumes from its latest checkpoint when its spec.suspend is set to false"


# status.suspendTransition of a workload admitted without a Suspended condition written yet.
NO_SUSPEND_RECORD = ""


def suspension_change(tj: TrainingJob, state: WorkloadState, queue: Optional[str], now: str) -> Optional[StatusChange]:
    """A running workload suspended (Kueue preempted it: its pods are stopped): Queued, reason
    Preempted, counted. A queued one resumed (admitted): Running, its resume recorded.

    A preemption that Kueue undid before this pass looked (it suspends, then admits again at once
    when another flavor fits) leaves no suspended workload to see, but its controller's record:
    the Suspended condition turned True and False again, with a new lastTransitionTime. A running
    job whose workload has a resume later than the one recorded (status.suspendTransition) was
    preempted meanwhile: counted once, stays Running (its workers were replaced and resume from
    their latest checkpoint)."""
    what = f"{state.kind} {state.name}"
    by = f"preempted by Kueue (LocalQueue {queue})" if queue else "suspended (spec.suspend)"
    count = (tj.status.preemptions or 0) + 1
    if state.suspended and tj.phase == TrainingJobPhase.RUNNING:
        return StatusChange(phase=TrainingJobPhase.QUEUED, reason="Preempted", event="Warning",
                            fields=TrainingJobStatus(preemptions=count),
                            message=f"{what} was {by}: its workers are stopped, its sealed checkpoints stay; "
                                    f"{_when_admitted_again(tj, queue)} (preemption {count})")
    if not state.suspended and tj.phase == TrainingJobPhase.QUEUED:
        again = f" again after {tj.status.preemptions} preemption(s)" if tj.status.preemptions else ""
        admitted = StatusChange(phase=TrainingJobPhase.RUNNING, reason="Running", event="Normal",
                                message=f"{what} was admitted{again} and runs")
        if not tj.status.startTime:
            admitted = admitted.with_fields(TrainingJobStatus(startTime=now))
        # Recorded even when its controller wrote no Suspended condition (admitted before it looked):
        # "" then, so that the first one it writes later is a preemption's.
        return admitted.with_fields(TrainingJobStatus(suspendTransition=state.suspend_transition or NO_SUSPEND_RECORD))
    seen = tj.status.suspendTransition
    if state.suspended or tj.phase != TrainingJobPhase.RUNNING or state.suspend_transition in (None, seen):
        return None
    if seen is None and queue is not None:
        # Created suspended for Kueue: its first resume is its admission, which this job did not
        # record (it was adopted running, or recorded by an operator that did not keep resumes).
        return StatusChange(fields=TrainingJobStatus(suspendTransition=state.suspend_transition))
    return StatusChange(reason="Preempted", event="Warning",
                        fields=TrainingJobStatus(preemptions=count, suspendTransition=state.suspend_transition),
                        message=f"{what} was {by} and admitted again (resumed at {state.suspend_transition}) before "
                                f"the operator looked: its workers were stopped, its sealed checkpoints stay; "
                                f"{_when_quickly_admitted_again(tj, queue)} (preemption {count})")


def replaced_suspension_change(tj: TrainingJob, kind: str, name: str, suspend: bool,
                               queue: Optional[str]) -> Optional[StatusChange]:
    """The workload of a group with a volume per worker is being replaced (deleted before the resume step)
    and its user changes its spec.suspend meanwhile (`suspend`: as it is now, H9-9): the job's phase follows
    it, so the next workload is created as the user wants it when it is made (engines._suspend reads the
    phase then), not as it was when the suspension was seen: a resume set on the old one while it was being
    deleted was lost (the new one was made suspended). Not a preemption (its replacement counted one
    already). Kueue decides for a queued job (None)."""
    if queue is not None or not engines.resumes_parts(tj):
        return None
    if tj.phase == TrainingJobPhase.QUEUED and not suspend:
        return StatusChange(phase=TrainingJobPhase.RUNNING, reason="Running", event="Normal",
                            message=f"{kind} {name} was resumed by its user (spec.suspend false) while it is replaced: "
                                    f"the group is made again running after the resume step")
    if tj.phase == TrainingJobPhase.RUNNING and suspend:
        return StatusChange(phase=TrainingJobPhase.QUEUED, reason="Suspended", event="Normal",
                            message=f"{kind} {name} was suspended by its user (spec.suspend) while it is replaced: "
                                    f"{_when_admitted_again(tj, queue)}")
    return None


def adopted_workload_change(tj: TrainingJob, state: WorkloadState, uid: Optional[str],
                            queue: Optional[str]) -> StatusChange:
    """This job's workload found with another UID than recorded: the operator stopped between creating
    it and recording it. Its Suspended record is its own (the last workload's resume is not compared
    with it). One that replaced a recorded workload is a group restart's next attempt: created
    suspended for Kueue, it is queued as `attempt_started_change` records it, never a preemption of
    the running attempt (review4 F4)."""
    if tj.status.jobUid is not None and queue is not None and state.suspended:
        return attempt_started_change(tj, state.kind, state.name, tj.status.rendezvous, queue, uid)
    return StatusChange(fields=TrainingJobStatus(jobUid=uid, suspendTransition=None))


def attempt_started_change(tj: TrainingJob, kind: str, name: str, rendezvous: Optional[str],
                           queue: Optional[str], job_uid: Optional[str] = None) -> StatusChange:
    """The operator created the workload of the next attempt (engine Job). Queued in Kueue, it waits
    to be admitted like a new one (Kueue makes a new Workload for it): Queued, not Preempted.
    `job_uid`: the new workload's UID, recorded with the attempt (its pods are the workers now)."""
    # A new workload: the Suspended record of the last one is not its own.
    fields = TrainingJobStatus(rendezvous=rendezvous, suspendTransition=None) if job_uid is None else \
        TrainingJobStatus(rendezvous=rendezvous, jobUid=job_uid, suspendTransition=None)
    if queue is None:
        return StatusChange(fields=fields)
    return StatusChange(phase=TrainingJobPhase.QUEUED, reason="Queued", event="Normal", fields=fields,
                        message=f"{workers.attempt_name(attempt_of(tj))}: {kind} {name} is queued in Kueue (LocalQueue {queue}) "
                                f"again: it starts when Kueue admits it")


def engine_restarts_change(tj: TrainingJob, state: WorkloadState, max_restarts: int) -> Optional[StatusChange]:
    """JobSet restarted the group (its status.restarts grew): record it, naming the worker that failed."""
    done = tj.status.restarts or 0
    if state.kind != "JobSet" or engines.operator_restarts(tj) or state.attempt <= done:
        return None
    failure = _failed_first(tj, state.attempt - 1) or "a worker failed (its pod is gone)"
    return StatusChange(reason="Restarting", event="Warning", fields=TrainingJobStatus(restarts=state.attempt),
                        message=f"JobSet {state.name} restarted the group (restart {state.attempt} of {max_restarts}, "
                                f"{workers.attempt_name(state.attempt)}): "
                                f"{failure}; every worker was stopped and started again")


def stopping_wait(live_workers: list[workers.WorkerPod]) -> Wait:
    """The workload is over but some workers still stop: the snapshot (or the restart) waits for all."""
    names = ", ".join(p.name for p in live_workers[:3]) + (" ..." if len(live_workers) > 3 else "")
    return Wait("Stopping", f"waiting for {len(live_workers)} worker(s) to stop ({names})", warning=False)


def deadline_left(tj: TrainingJob, now: datetime) -> Optional[float]:
    """Seconds left of spec.activeDeadlineSeconds, counted from the job's start (None: no deadline)."""
    if tj.spec.activeDeadlineSeconds is None:
        return None
    if not tj.status.startTime:
        return float(tj.spec.activeDeadlineSeconds)
    started = datetime.fromisoformat(tj.status.startTime.replace("Z", "+00:00"))
    return tj.spec.activeDeadlineSeconds - (now - started).total_seconds()


def restart_change(tj: TrainingJob, state: WorkloadState, max_restarts: int,
                   left: Optional[float]) -> Optional[StatusChange]:
    """The operator's own group restart (engine Job, several pods) after a failed attempt, or None
    when the job has failed for good: the restarts are used up, or its deadline has passed."""
    done = tj.status.restarts or 0
    if state.outcome is not False or state.deadline_exceeded or done >= max_restarts or (left is not None and left < 1):
        return None
    resume = (f"; each attempt resumes from {live_sealing.RESUME_ENV}" if tj.publishes_live
              else "; each worker resumes from the latest checkpoint complete over the workers' volumes "
                   f"({live_sealing.RESUME_ENV}, once the resume step has copied it into each)" if engines.resumes_parts(tj)
              else "; the workers find their own checkpoints in CHECKPOINT_OUTPUT_DIR")
    return StatusChange(reason="Restarting", event="Warning", fields=TrainingJobStatus(restarts=done + 1),
                        message=f"{_failed_first(tj, state.attempt) or state.failure or 'a worker failed'}; "
                                f"every worker was stopped; "
                                f"restarting the group (restart {done + 1} of {max_restarts}, "
                                f"{workers.attempt_name(attempt_of(tj) + 1)}){resume}")


def group_outcome(tj: TrainingJob, state: WorkloadState, failure: str) -> str:
    """What the finished group's message says: the workload's failure, the worker that failed
    first, the restarts it had."""
    if state.outcome:
        return "succeeded"
    parts = [failure, _failed_first(tj, state.attempt)]
    restarts = tj.status.restarts or 0
    if restarts:
        parts.append(f"after {restarts} group restart(s)")
    return "; ".join(p for p in parts if p)


# A scheduled pod whose containers have not started is looked at for a failed attach (a LIST of
# its Events) only once it has waited this long: most pods start within it, and a Multi-Attach
# error or an attach limit is there by then (the attach/detach controller reports it at once).
ATTACH_GRACE = 5.0  # seconds


def attach_grace_left(pod: workers.WorkerPod, now: datetime) -> float:
    """Seconds until a Pending pod without a problem of its own has waited ATTACH_GRACE since it
    was scheduled (0: look at its Events now; also when the time is unknown or unreadable)."""
    if not pod.scheduled_at:
        return 0.0
    try:
        waited = seconds_since(pod.scheduled_at, now)
    except ValueError:
        return 0.0
    return max(0.0, ATTACH_GRACE - waited)


def may_wait_on_a_volume(problem: PodProblem) -> bool:
    """A stuck pod whose cause may be an unbound claim (the scheduler says only that it is)."""
    return problem.reason == "Unschedulable" and "PersistentVolumeClaim" in problem.message


def after_job(tj: TrainingJob, succeeded: bool, outcome: str, now: str,
              snapshot_pod: Optional[str] = None) -> tuple[StatusChange, bool]:
    """The status once the Job is over, and whether a snapshot follows."""
    if not tj.output_enabled:
        if succeeded:
            return StatusChange(phase=TrainingJobPhase.SUCCEEDED, reason="Succeeded", message=f"Job {outcome}",
                                ready=True, event="Normal",
                                fields=TrainingJobStatus(completionTime=now, jobSucceeded=True)), False
        return fail_change(Fail("JobFailed", f"Job {outcome}"), now), False
    return StatusChange(phase=TrainingJobPhase.SNAPSHOTTING, reason="Snapshotting",
                        message=f"Job {outcome}; snapshotting the output", event="Normal",
                        fields=TrainingJobStatus(jobSucceeded=succeeded, snapshotStartTime=now, snapshotPod=snapshot_pod,
                                                 jobFailure=None if succeeded else outcome)), True


def snapshot_retry_at(attempts: int, now: datetime) -> tuple[str, float]:
    """When the attempt after `attempts` failed ones starts (RFC 3339), and in how many seconds."""
    delay = SNAPSHOT_RETRY_DELAYS[min(attempts, len(SNAPSHOT_RETRY_DELAYS)) - 1]
    at = (now + timedelta(seconds=delay)).replace(microsecond=0)
    return at.isoformat().replace("+00:00", "Z"), delay


def snapshot_wait(retry_at: Optional[str], now: datetime) -> Optional[float]:
    """Seconds still to wait before the next snapshot attempt, or None to start it now."""
    if not retry_at:
        return None
    remaining = (datetime.fromisoformat(retry_at.replace("Z", "+00:00")) - now).total_seconds()
    return remaining if remaining > 0 else None


def snapshot_retry(attempts: int, message: str, refused: bool = False) -> Optional[Fail]:
    """A failed snapshot pod is retried (a store that was down, a node lost, an OOM kill may not
    happen again); after MAX_SNAPSHOT_ATTEMPTS the job fails. A refusal of the output by the agent
    (`refused`: a name the names rule refuses, a key S3 cannot hold) fails it at once: the output
    is the same for the next pod, which would refuse it with the same line."""
    if refused:
        return Fail("SnapshotFailed", f"snapshot refused the output (not retried: the same output is refused "
                                      f"again): {message}")
    if attempts >= MAX_SNAPSHOT_ATTEMPTS:
        return Fail("SnapshotFailed", f"snapshot failed {attempts} times; last: {message}")
    return None


def publish_wait_since(ended: str, made: list[Optional[str]], started: str) -> str:
    """What the wait for a job's Checkpoints counts from (RFC 3339): the latest of its snapshot pod's end,
    its Checkpoints' creation and this operator process's start (hostile7 P1: a VolumeSnapshot slower
    than the bound, or an operator down that long, must not fail a job whose Checkpoints were created a
    moment before, nor before their own reconciles had a chance to run)."""
    def parsed(value: Optional[str]) -> Optional[datetime]:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
        except ValueError:
            return None
    times = [(t, v) for v in (ended, started, *made) if v and (t := parsed(v)) is not None]
    return max(times)[1] if times else ended


def publish_wait(not_ready: list[tuple[str, str]], since: str, now: datetime, recheck: float,
                 limit: float) -> Wait | Fail:
    """The job's wait for its Checkpoints, (name, what it is) of each not Ready (nor failed on request)
    yet, counted from `since` (RFC 3339: publish_wait_since): quiet, then a failure naming them.
    `limit`: the operator's publish_timeout (600 s by default, CKPT_PUBLISH_TIMEOUT): a pass or two each,
    unless something holds one forever (its bytes never handed over, its object deleted again and
    again); then the job fails and names them, never waits on."""
    try:
        waited = (now - datetime.fromisoformat(since.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        waited = limit  # no time to count from: nothing may hold the job forever
    if waited < limit:
        return Wait(requeue_after=min(recheck, max(limit - waited, 0.1)))
    shown = ", ".join(f"{name} ({what})" for name, what in not_ready[:NAMES_IN_MESSAGE]) + \
        (f" and {len(not_ready) - NAMES_IN_MESSAGE} more" if len(not_ready) > NAMES_IN_MESSAGE else "")
    return Fail("CheckpointsNotReady", f"{len(not_ready)} Checkpoint(s) of this job not Ready {waited:.0f} s after "
                                       f"they were made: {shown}; each one's Ready condition says what holds it")


# A message names this many checkpoints (status.outputCheckpoints lists them all): 5,000 names
# would pass the 32 KiB a message may have.
NAMES_IN_MESSAGE = 20


def snapshot_done(tj: TrainingJob, names: list[str], now: str, retained: Optional[str],
                  claim: Optional[str], skipped: int) -> StatusChange:
    shown = ", ".join(names[:NAMES_IN_MESSAGE]) + (f" and {len(names) - NAMES_IN_MESSAGE} more"
                                                   if len(names) > NAMES_IN_MESSAGE else "")
    summary = f"{len(names)} checkpoint(s): {shown}" if names else "no checkpoints in the output"
    fields = TrainingJobStatus(outputCheckpoints=names, outputCount=len(names), completionTime=now,
                               skippedCount=skipped)
    conditions: tuple[ConditionChange, ...] = ()
    if retained:
        conditions = (ConditionChange(OUTPUT_RETAINED, "True", "NotAllStored",
                                      f"volume {claim} is kept: {retained}. Copy what you need, then annotate the "
                                      f"TrainingJob {RELEASE_OUTPUT_ANNOTATION}=true to release it"),)
    if tj.status.jobSucceeded:
        return StatusChange(phase=TrainingJobPhase.SUCCEEDED, reason="Succeeded", message=f"Job succeeded; {summary}",
                            ready=True, event="Normal", fields=fields, conditions=conditions)
    return StatusChange(phase=TrainingJobPhase.FAILED, reason="JobFailed",
                        message=f"Job {tj.status.jobFailure or 'failed'}; kept {summary}",
                        stalled=True, event="Warning", fields=fields, conditions=conditions)


def wants_output_released(tj: TrainingJob) -> bool:
    """The user asked to release a retained output volume (and it is still retained)."""
    retained = next((c for c in tj.status.conditions or [] if c.type == OUTPUT_RETAINED), None)
    return (tj.metadata.annotation(RELEASE_OUTPUT_ANNOTATION) or "").lower() == "true" \
        and retained is not None and retained.status == "True"


def released_change(claim: Optional[str], deleted: bool, kept_by: Optional[list[str]] = None) -> StatusChange:
    if deleted:
        what = f"volume {claim} deleted"
    elif kept_by:
        what = f"volume {claim} is kept while Checkpoint {', '.join(kept_by)} points into it, and goes with the last"
    else:
        what = f"volume {claim} is owned by its Checkpoints and goes with them"
    return StatusChange(conditions=(ConditionChange(OUTPUT_RETAINED, "False", "Released",
                                                    f"released on request ({RELEASE_OUTPUT_ANNOTATION}): {what}"),))
