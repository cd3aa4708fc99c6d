"""Which TrainingJobs of a `local run` can never finish, and why (issue 18 item 8b).

`local run` waits until every job has finished. A job whose input nothing applied can ever
produce used to keep it waiting, silently, for the whole timeout: a Checkpoint name that no file
creates, a `fromTrainingJob` that does not exist. Here, from the objects alone (pure; nothing is
read), a job is stuck when:

- the operator says it will not go on by itself (its `Stalled` condition is True: a failed
  input, a cycle of jobs, a name conflict, ...);
- it has not started and one of its inputs cannot come: a `fromTrainingJob` that no
  TrainingJob is; a Checkpoint name that does not exist and that no unfinished job would write
  (a derived name's prefix is the text before its first '.', logic/naming.py); a uid that no
  Checkpoint has; a producer that finished without the output it asks for;
- it takes from a job that is stuck (found by going around until nothing changes).

`local run` says so as soon as it is found, naming the input, and ends once everything else has
settled, instead of waiting for the timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.api.trainingjob import CheckpointRef, TrainingJob, TrainingJobPhase
from checkpoint_operator.logic.conditions import get_condition


@dataclass(frozen=True)
class StuckJob:
    name: str
    why: str  # one line: which input, and why it never comes


def prefix_of(job: TrainingJob) -> str:
    return job.spec.output.namePrefix or job.metadata.name


def _condition(job: TrainingJob, kind: str) -> Optional[dict]:
    return get_condition([c.model_dump(mode="json", exclude_none=True) for c in job.status.conditions or []], kind)


def _describe(ref: CheckpointRef) -> str:
    if ref.fromTrainingJob:
        return f"{ref.select or 'latest'} checkpoint of TrainingJob {ref.fromTrainingJob}"
    return f"Checkpoint {ref.name}" if ref.name else f"Checkpoint with uid {ref.uid}"


def _input_never_comes(job: TrainingJob, ref: CheckpointRef, jobs: dict[str, TrainingJob],
                       checkpoints: Sequence[Checkpoint]) -> Optional[str]:
    what = f"input {_describe(ref)}"
    if ref.clusterCheckpoint:  # a catalog entry is imported on its own; one that fails makes the job fail
        return None
    if ref.fromTrainingJob:
        producer = jobs.get(ref.fromTrainingJob)
        if producer is None:
            return f"{what}: no TrainingJob {ref.fromTrainingJob} exists, and none was applied"
        ready = _condition(job, "Ready") or {}
        if producer.is_finished and ready.get("reason") == "InputNotFound":
            return f"{what}: {ready.get('message') or 'it finished without one'}"
        return None
    if ref.uid:
        if any(c.metadata.uid == ref.uid for c in checkpoints):
            return None
        return f"{what}: no Checkpoint has that uid"
    name = ref.name or ""
    if any(c.metadata.name == name for c in checkpoints):
        return None
    prefix = name.split(".", 1)[0]
    if prefix == prefix_of(job):  # its own output: it is made only after the job has run
        return (f"{what} does not exist, and only this job would write it (its prefix is '{prefix}'), "
                "after it has run")
    if any(prefix_of(j) == prefix and not j.is_finished for j in jobs.values()):
        return None  # a running or waiting job may still write it
    return (f"{what} does not exist, and no unfinished TrainingJob would write it (none has the prefix "
            f"'{prefix}': a job's Checkpoints are named <namePrefix or job name>.<directory>)")


def _blocker(ref: CheckpointRef, jobs: dict[str, TrainingJob], checkpoints: Sequence[Checkpoint],
             stuck: dict[str, str]) -> Optional[str]:
    """The stuck job this input waits on, if it waits on nothing else."""
    if ref.fromTrainingJob:
        return ref.fromTrainingJob if ref.fromTrainingJob in stuck else None
    if ref.clusterCheckpoint:
        return None
    if not ref.name or any(c.metadata.name == ref.name for c in checkpoints):
        return None
    prefix = ref.name.split(".", 1)[0]
    writers = [j.metadata.name for j in jobs.values() if prefix_of(j) == prefix and not j.is_finished]
    return writers[0] if writers and all(w in stuck for w in writers) else None


def stuck_jobs(jobs: Sequence[TrainingJob], checkpoints: Sequence[Checkpoint]) -> list[StuckJob]:
    """The unfinished jobs that can never finish, each with why (see the module's docstring)."""
    by_name = {j.metadata.name: j for j in jobs}
    stuck: dict[str, str] = {}
    for job in jobs:
        if job.is_finished:
            continue
        stalled = _condition(job, "Stalled") or {}
        if stalled.get("status") == "True":
            stuck[job.metadata.name] = stalled.get("message") or "the operator says it will not go on by itself"
            continue
        if job.phase != TrainingJobPhase.PENDING:
            continue
        for ref in job.spec.checkpoints:
            why = _input_never_comes(job, ref, by_name, checkpoints)
            if why is not None:
                stuck[job.metadata.name] = why
                break
    changed = True
    while changed:  # a job waiting on a stuck job is stuck too
        changed = False
        for job in jobs:
            name = job.metadata.name
            if name in stuck or job.phase != TrainingJobPhase.PENDING:
                continue
            blocker = next((b for b in (_blocker(r, by_name, checkpoints, stuck) for r in job.spec.checkpoints)
                            if b is not None), None)
            if blocker is not None:
                stuck[name] = f"it takes from TrainingJob {blocker}, which can never finish (see above)"
                changed = True
    return [StuckJob(name, why) for name, why in sorted(stuck.items())]
