"""The resume step of a group restart with a volume per worker (pure).

Every worker of such a job writes its own volume, so the checkpoint the workers wrote together is
whole only over the union of the volumes (a DCP `.metadata` in worker 0's, each rank's shard in its
own), and a restarted worker cannot mount another's ReadWriteOnce volume. Between two attempts the
operator runs one agent pod mounting every worker's claim read-write, `agent resume-parts`
(agent/resume_parts.py): it copies the latest checkpoint complete over the union into every
worker's volume at `.ckpt-resume/<digest hex>/` (and points `.ckpt-resume/latest` at it, for people).
Its result (protocol/results.py ResumeReport) is recorded in `status.resume`; the next attempt's
workers get `CHECKPOINT_RESUME_PATH=$CHECKPOINT_OUTPUT_DIR/.ckpt-resume/<digest hex>` once a copy
exists (a later step that finds nothing newer complete leaves that copy, and the path, as they were).
"""

from __future__ import annotations

import posixpath
from typing import Iterable, Optional, Sequence
from checkpoint_operator.api.trainingjob import GroupResume, TrainingJob, TrainingJobStatus
from checkpoint_operator.logic.status import StatusChange
from checkpoint_operator.logic.workers import attempt_name
from checkpoint_operator.protocol import published as published_list
from checkpoint_operator.protocol.results import ResumeReport, cut

RESUME_DIR = ".ckpt-resume"  # agent/scan.py RESUME_DIR (scans leave it alone)
LATEST = "latest"            # agent/resume_parts.py LATEST
PASSED_SHOWN = 3             # newer checkpoints passed over, named in the message (status.resume counts none)


def resume_path(output_dir: str, digest: str) -> str:
    """The workers' CHECKPOINT_RESUME_PATH: the copy resumed from, in their own volume, named by its digest
    (not `latest`: the step switches each volume's link in turn, and a failure between two would leave the
    workers on different copies; the digest recorded in status.resume is one for all of them)."""
    return posixpath.join(output_dir, RESUME_DIR, digest.split(":", 1)[-1])


def kept_copy(tj: TrainingJob) -> Optional[str]:
    """The copy the next resume step must keep beside its own: the one recorded last (the workers fall
    back to it if that step's result is lost)."""
    return tj.status.resume.digest if tj.status.resume is not None else None


def kept_sealed(checkpoints: Iterable[Optional[str]], retired: Iterable[str], publishing: Iterable[str],
                union_in_flight: Optional[str]) -> list[str]:
    """The directories whose sealed parts the resume step leaves sealed (H9-3): those with a Checkpoint of
    the job (`checkpoints`: their directories, as the index has them), retired ones (their parts are
    removed by the sidecars, never written again), those this operator is publishing (`publishing`: it
    created or is creating their Checkpoint, which the index may not show yet) and the one a union pod
    is assembling now (`union_in_flight`: its result may be published while the resume step runs).
    Every other sealed part was sealed only as a part: the step gives it back to the trainer."""
    kept = {d for d in checkpoints if d} | set(retired) | set(publishing)
    if union_in_flight:
        kept.add(union_in_flight)
    return sorted(kept)


def gives_back(kept: Sequence[str]) -> bool:
    """Whether the resume step is told what stays sealed, so gives the other sealed parts back: the
    directories fit in its one `--published-list` argument (protocol/published.py: about 30,000 names
    of one job's usual shape). Past that it gets `--keep-sealed` and gives nothing back this time:
    never a published part made writable; a trainer that writes an unpublished step again may then
    fail on it (H9-3), which kept_sealed_message says."""
    return published_list.KEEP_SEALED not in published_list.resume_args(kept)


def kept_sealed_message(count: int) -> str:
    return (f"the resume step was told to keep every sealed part sealed: the {count} directories published, being "
            f"published or retired do not fit in its one --published-list argument ({published_list.MAX_ARGUMENT} "
            "characters encoded); parts sealed for a checkpoint never published stay read-only this time (a trainer "
            "that writes such a step again may fail on it)")


def has_resume_copy(tj: TrainingJob) -> bool:
    """A resume step has written a copy into every worker's volume (a later one never removes the last)."""
    return tj.status.resume is not None and tj.status.resume.digest is not None


def needs_resume_step(tj: TrainingJob, attempt: int) -> bool:
    """Before `attempt` (> 0) starts, the resume step has not run for it yet."""
    return attempt > 0 and (tj.status.resume is None or tj.status.resume.attempt != attempt)


def resumed_change(tj: TrainingJob, attempt: int, report: ResumeReport) -> StatusChange:
    """The resume step's result for the attempt of index `attempt` (status.resume.attempt; its messages
    name it counted from 1, workers.attempt_name), recorded before the next attempt starts: which checkpoint it resumes
    from (a Normal event), or that none is complete over the workers' volumes (a Warning: the workers
    start from an earlier copy, if any, else from their own files)."""
    passed = report.passed[:PASSED_SHOWN]
    more = max(report.passedCount, len(report.passed)) - len(passed)
    over = ("; passed over " + "; ".join(passed) + (f"; and {more} more" if more > 0 else "")) if passed else ""
    if report.path is not None and report.digest is not None:
        step = f" (step {report.step})" if report.step is not None else ""
        message = (f"{attempt_name(attempt)} resumes every worker from {report.path}{step}, {report.digest}: complete over "
                   f"the {tj.spec.replicas} workers' volumes, {report.fileCount} files copied into each "
                   f"({RESUME_DIR}/{report.digest.split(':', 1)[-1][:12]}...){over}")
        resume = GroupResume(attempt=attempt, directory=report.path, digest=report.digest, step=report.step,
                             message=message)
        return StatusChange(reason="Resuming", event="Normal", message=message,
                            fields=TrainingJobStatus(resume=resume))
    earlier = tj.status.resume if has_resume_copy(tj) else None
    if earlier is not None:
        message = (f"{attempt_name(attempt)}: no newer checkpoint is complete over the {tj.spec.replicas} workers' "
                   f"volumes{over}; every worker resumes from the earlier copy of {earlier.directory} "
                   f"({earlier.digest})")
    else:
        message = (f"{attempt_name(attempt)}: no checkpoint is complete over the {tj.spec.replicas} workers' volumes"
                   f"{over}; the workers start without {RESUME_DIR} (their own files are in CHECKPOINT_OUTPUT_DIR)")
    resume = GroupResume(attempt=attempt, directory=earlier.directory if earlier else None,
                         digest=earlier.digest if earlier else None, step=earlier.step if earlier else None,
                         message=message)
    return StatusChange(reason="Resuming", event="Warning", message=message, fields=TrainingJobStatus(resume=resume))


def resume_failed_change(tj: TrainingJob, attempt: int, failure: str) -> StatusChange:
    """The resume pod failed (its copies are written in every volume or none): the attempt starts from
    what was there before, said in a Warning."""
    earlier = tj.status.resume if has_resume_copy(tj) else None
    then = (f"every worker resumes from the earlier copy of {earlier.directory} ({earlier.digest})" if earlier
            else "the workers start from their own files")
    message = f"{attempt_name(attempt)}: the resume step failed: {cut(failure, 2000)}; {then}"
    resume = GroupResume(attempt=attempt, directory=earlier.directory if earlier else None,
                         digest=earlier.digest if earlier else None, step=earlier.step if earlier else None,
                         message=cut(message, 4000))
    return StatusChange(reason="ResumeFailed", event="Warning", message=message,
                        fields=TrainingJobStatus(resume=resume))

