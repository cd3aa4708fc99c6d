"""The TrainingJob's decisions, as pure functions: given what was read, what happens next.

Pending -> Running -> Snapshotting -> Succeeded | Failed. reconcile/trainingjob.py reads the
objects, calls these, applies what they decide and records it; tests/unit/logic/test_trainingjob_flow.py
tests every decision without an API.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Optional

from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobPhase, TrainingJobStatus
from checkpoint_operator.logic import live_sealing
from checkpoint_operator.logic.agent_pods import PodProblem
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
                   publish: Optional[str] = None, pinned: bool = True) -> StatusChange:
    """`pinned`: status.inputs was written before the Job (with inputs); else none, recorded here."""
    names = ", ".join(inputs) or "no inputs"
    change = StatusChange(phase=TrainingJobPhase.RUNNING, reason="Running",
                          message=f"Job {job_name} started on {names}", event="Normal",
                          fields=TrainingJobStatus(jobName=job_name, outputClaim=output_claim, startTime=now,
                                                   publish=publish))
    return change if pinned else change.with_fields(TrainingJobStatus(inputs=[], inputCount=0))


def publish_mode(tj: TrainingJob, default: str) -> Optional[str]:
    """spec.output.publish, else the operator's default; None without an output."""
    if not tj.output_enabled:
        return None
    return tj.spec.output.publish or default


def publish_mode_of_job(job: dict[str, Any]) -> str:
    """What a Job created before a crash publishes: Continuous when its pods have the sidecar."""
    init = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("initContainers") or []
    return "Continuous" if any(c.get("name") == live_sealing.SIDECAR for c in init) else "OnCompletion"


def job_outcome(job: Optional[dict[str, Any]]) -> Optional[bool]:
    """True/False once the Job has succeeded/failed (after its retries) and none of its pods is
    still running; None until then. Only the final conditions count: FailureTarget and
    SuccessCriteriaMet are set while pods may still be writing (a deadline's SIGTERM grace
    period, say), and a snapshot taken then would freeze half-written files."""
    if job is None:
        return False
    status = job.get("status", {})
    if status.get("active") or status.get("terminating"):
        return None
    for condition in status.get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") == "Complete":
            return True
        if condition.get("status") == "True" and condition.get("type") == "Failed":
            return False
    return None


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


def running_wait(tj: TrainingJob, problems: list[PodProblem]) -> Wait:
    """While the Job runs: quiet, unless a pod is stuck (then the condition names why, and goes
    back to Running once it is not)."""
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more pod(s))" if len(problems) > 1 else ""
        return Wait(first.reason, first.message + more)
    if tj.ready_reason() not in (None, "Running"):
        return Wait("Running", f"Job {tj.status.jobName} is running", warning=False)
    return Wait()


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


def snapshot_retry(attempts: int, message: str) -> Optional[Fail]:
    """A failed snapshot pod is retried; after MAX_SNAPSHOT_ATTEMPTS the job fails."""
    if attempts >= MAX_SNAPSHOT_ATTEMPTS:
        return Fail("SnapshotFailed", f"snapshot failed {attempts} times; last: {message}")
    return None


def snapshot_done(tj: TrainingJob, names: list[str], now: str, retained: Optional[str],
                  claim: Optional[str], skipped: int) -> StatusChange:
    summary = f"{len(names)} checkpoint(s): {', '.join(names)}" if names else "no checkpoints in the output"
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
