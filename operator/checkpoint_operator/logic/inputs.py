"""Which Checkpoints a TrainingJob mounts: resolve each reference, or say why it must wait."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

FINISHED_JOB_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class ResolvedInput:
    name: str
    uid: str
    digest: Optional[str]
    mount_name: str
    location: dict

    def pinned(self) -> dict:
        pinned = {"name": self.name, "uid": self.uid}
        if self.digest:
            pinned["digest"] = self.digest
        return pinned


# Waits that will not end by themselves: the job reports Stalled (GitOps shows Degraded).
TERMINAL_WAITS = ("InputFailed", "DuplicateInput")


@dataclass(frozen=True)
class InputWait:
    """An input that is not usable yet: `reason` is a CamelCase word, `message` names the input."""

    reason: str
    message: str

    @property
    def terminal(self) -> bool:
        return self.reason in TERMINAL_WAITS


@dataclass(frozen=True)
class Resolution:
    inputs: list[ResolvedInput]
    waits: list[InputWait]

    @property
    def ready(self) -> bool:
        return not self.waits


def is_deleting(obj: dict) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def is_ready_checkpoint(obj: dict) -> bool:
    return obj.get("status", {}).get("phase") == "Ready" and not is_deleting(obj)


def select_latest(checkpoints: list[dict], job_name: str, job_uid: Optional[str] = None) -> Optional[dict]:
    """The Ready checkpoint produced by `job_name` (this incarnation of it, when `job_uid` is
    given) with the highest step, then the newest."""
    def produced_by_job(c: dict) -> bool:
        producer = c.get("status", {}).get("producedBy", {})
        return producer.get("name") == job_name and (job_uid is None or producer.get("uid") == job_uid)
    candidates = [c for c in checkpoints if is_ready_checkpoint(c) and produced_by_job(c)]
    if not candidates:
        return None

    def rank(c: dict) -> tuple:
        step = c["status"].get("step")
        return (step is not None, step if step is not None else -1,
                c["metadata"].get("creationTimestamp", ""), c["metadata"]["name"])
    return max(candidates, key=rank)


def _find(checkpoints: list[dict], ref: dict) -> Optional[dict]:
    if "name" in ref:
        return next((c for c in checkpoints if c["metadata"]["name"] == ref["name"]), None)
    return next((c for c in checkpoints if c["metadata"].get("uid") == ref["uid"]), None)


def _describe(ref: dict) -> str:
    if "fromTrainingJob" in ref:
        return f"latest checkpoint of TrainingJob {ref['fromTrainingJob']}"
    return f"Checkpoint {ref['name']}" if "name" in ref else f"Checkpoint with uid {ref['uid']}"


def is_used_by(checkpoint: dict, job_uid: Optional[str]) -> bool:
    return bool(job_uid) and any(u.get("uid") == job_uid for u in checkpoint.get("status", {}).get("usedBy") or [])


def resolve_one(ref: dict, checkpoints: list[dict], training_jobs: list[dict],
                job_uid: Optional[str] = None) -> ResolvedInput | InputWait:
    """`job_uid`: the resolving job; a checkpoint it is already registered in stays usable while
    being deleted (the finalizer waits for the job)."""
    if "fromTrainingJob" in ref:
        job_name = ref["fromTrainingJob"]
        producer = next((j for j in training_jobs if j["metadata"]["name"] == job_name), None)
        if producer is None:
            return InputWait("InputNotFound", f"input {_describe(ref)}: TrainingJob {job_name} does not exist")
        phase = producer.get("status", {}).get("phase")
        if phase not in FINISHED_JOB_PHASES:
            return InputWait("WaitingForTrainingJob",
                             f"input {_describe(ref)}: TrainingJob {job_name} has not finished (phase {phase or 'Pending'})")
        checkpoint = select_latest(checkpoints, job_name, producer["metadata"].get("uid"))
        if checkpoint is None:
            return InputWait("InputNotFound",
                             f"input {_describe(ref)}: TrainingJob {job_name} produced no Ready checkpoint")
    else:
        checkpoint = _find(checkpoints, ref)
        if checkpoint is None:
            return InputWait("InputNotFound", f"input {_describe(ref)} does not exist")
    name = checkpoint["metadata"]["name"]
    if is_deleting(checkpoint) and not is_used_by(checkpoint, job_uid):
        return InputWait("InputDeleting", f"input Checkpoint {name} is being deleted")
    status = checkpoint.get("status", {})
    if status.get("phase") == "Failed":
        return InputWait("InputFailed", f"input Checkpoint {name} has failed: {status.get('message', '')}".rstrip(": "))
    if status.get("phase") != "Ready":
        return InputWait("InputNotReady", f"input Checkpoint {name} is not Ready (phase {status.get('phase') or 'Pending'})")
    if not status.get("location"):
        return InputWait("InputNotReady", f"input Checkpoint {name} has no location yet")
    return ResolvedInput(name=name, uid=checkpoint["metadata"]["uid"], digest=status.get("digest"),
                         mount_name=ref.get("mountName") or name, location=status["location"])


def resolve_inputs(refs: list[dict], checkpoints: list[dict], training_jobs: list[dict]) -> Resolution:
    inputs, waits = [], []
    for ref in refs:
        result = resolve_one(ref, checkpoints, training_jobs)
        (inputs if isinstance(result, ResolvedInput) else waits).append(result)
    mount_names = [i.mount_name for i in inputs]
    for dup in sorted({m for m in mount_names if mount_names.count(m) > 1}):
        waits.append(InputWait("DuplicateInput", f"two inputs would be mounted at the same directory {dup!r}; "
                                                 "set spec.checkpoints[].mountName to tell them apart"))
    return Resolution(inputs, waits)


def is_live_user(job: Optional[dict], uid: Optional[str]) -> bool:
    """Does this TrainingJob (as listed in a Checkpoint's usedBy) still need its inputs?"""
    if job is None or (uid and job["metadata"].get("uid") != uid):
        return False
    return job.get("status", {}).get("phase") not in FINISHED_JOB_PHASES
