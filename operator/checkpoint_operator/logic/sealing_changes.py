"""A sealed directory that changed afterwards, as a request from its job to its Checkpoint (pure).

The job sees the change (the sidecar's log, or the final scan); only the Checkpoint's reconcile
writes the Checkpoint's status (reconcile/status_writer.py). So the job annotates the Checkpoint
with what changed, and the Checkpoint's reconcile fails it: on the volume store a Checkpoint is
the bytes in place, and it is never Ready with other bytes than its digest.
"""

from __future__ import annotations

from typing import Optional

from checkpoint_operator.api.checkpoint import CheckpointPhase
from checkpoint_operator.logic.conditions import one_line_message
from checkpoint_operator.logic.signatures import CHANGED_REQUEST
from checkpoint_operator.logic.status import StatusChange

CHANGED_AFTER_SEALING = "ChangedAfterSealing"
CHANGED_AFTER_SEALING_ANNOTATION = CHANGED_REQUEST.key  # with its signature beside it: the job's word only
MAX_REQUEST = 1024  # an annotation value: one line, bounded whatever the path it quotes


def changed_request(message: str) -> str:
    """The annotation's value: what changed, one bounded line."""
    return one_line_message(message)[:MAX_REQUEST]


def changed_failure(request: Optional[str], digest: Optional[str], phase: CheckpointPhase,
                    produced_by_job: bool) -> Optional[StatusChange]:
    """The Failed status a job's request asks for (None: no request, not a job's Checkpoint, or failed already).
    `request`: the annotation's value only when its signature verifies (reconcile/signing.py): anyone may
    write an annotation, so an unsigned one is no request and its text is never shown."""
    if not request or not produced_by_job or phase == CheckpointPhase.FAILED:
        return None
    return StatusChange(phase=CheckpointPhase.FAILED, reason=CHANGED_AFTER_SEALING, stalled=True, event="Warning",
                        message=f"{changed_request(request)}: its files are no longer the bytes of digest "
                                f"{digest or 'unknown'}")  # one bounded line, whoever wrote it (hostile7 C2)
