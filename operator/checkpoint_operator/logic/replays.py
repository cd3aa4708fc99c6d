"""A snapshot Checkpoint created again from a saved copy of a deleted one (pure).

A snapshot Checkpoint's signature (logic/signatures.py sealed_fields) binds its namespace, name,
job, directory and sealed data, never its uid: the uid does not exist when the job signs. So a
copy of its YAML (`kubectl get -o yaml`, a GitOps repository, a backup) applied after the
Checkpoint was deleted verifies. Its directory may be gone by then (live sealing retires a deleted
Checkpoint's directory and the sidecar removes it), so what the job did not itself create is told
apart by what the job did, not by the signature:

- the job hands the bytes (the output claim, a volume snapshot) to each Checkpoint it creates in
  the same pass that creates it; a later hand-over (the end-of-job snapshot) goes only to a
  Checkpoint that already holds them, or whose directory the job's output still holds with the
  same digest (the scan found it), never to one whose (directory, digest) it retired;
- the Checkpoint's own reconcile fails one whose (directory, digest) its job retired, and one its
  job never handed its bytes to once the job has finished (or is gone): it can never be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Collection, Optional

from checkpoint_operator.logic.inputs import CheckpointInfo

REASON = "NotCreatedByJob"


@dataclass(frozen=True)
class JobView:
    """What a snapshot Checkpoint's reconcile reads of its producing job (the one of its spec's uid)."""

    finished: bool
    retired: frozenset[tuple[str, str]]


def refusal(job_name: str, directory: str, digest: Optional[str], job: Optional[JobView], *,
            held: bool) -> Optional[str]:
    """Why a not-yet-Ready snapshot Checkpoint can never be its job's (one line), or None.
    `job` None: the job of its spec's name and uid no longer exists. `held`: the bytes it names are
    handed to it (then its job made it)."""
    if job is not None and digest and (directory, digest) in job.retired:
        return (f"{directory} (digest {digest}) was retired by TrainingJob {job_name} (its Checkpoint was deleted "
                "and its directory is being removed): this Checkpoint is a copy created again (a saved YAML "
                "applied?), not one the job made")
    if held:
        return None
    if job is None or job.finished:
        state = "no longer exists" if job is None else "has finished"
        return (f"TrainingJob {job_name} {state} and never handed {directory} to this Checkpoint: it is not one "
                "the job created (a deleted Checkpoint's saved YAML applied again?); its bytes may be gone")
    return None


def still_owning(existing: Collection[CheckpointInfo], planned: AbstractSet[str], holders: AbstractSet[str],
                 present: AbstractSet[tuple[str, str]],
                 retired: AbstractSet[tuple[str, str]]) -> list[CheckpointInfo]:
    """The job's Checkpoints from live sealing that keep (or get) the output claim at the end-of-job
    snapshot: not planned again, not being deleted, not retired, and either Ready (only held bytes make
    one Ready), holding the claim already (`holders`: the uids among its owners; the job handed it over
    when it created them) or of a
    (directory, digest) the output still holds (`present`, from the scan: one created just before a
    crash, before its hand-over). A copy of a deleted one applied again is neither."""
    kept = []
    for c in existing:
        if c.deleting or c.name in planned or (c.directory, c.digest) in retired:
            continue
        if c.is_usable or c.uid in holders or (c.directory, c.digest) in present:
            kept.append(c)
    return kept
