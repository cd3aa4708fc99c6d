"""In-use protection: a Checkpoint is never deleted while a live TrainingJob uses it.

Modelled on Kubernetes' own PVC protection. Nothing is written on the Checkpoint to claim it,
so a thousand jobs on one hot input never contend for one object:

1. A job records its use on ITSELF, before any pod exists: the label `uses.ckpt.dev/<uid>`
   (plus the pinned `status.inputs`).
2. It then reads each input live (not from the cache) and backs off (drops the label, waits)
   when the input is being deleted, is gone, or lacks the finalizer.
3. The Checkpoint's finalizer, once a deletion has started, LISTs TrainingJobs live with the
   label selector `uses.ckpt.dev/<uid>` and refuses while any of them is unfinished.

Why no job can slip through: the API server orders writes (etcd is linearizable) and a live
GET/LIST sees every write ordered before it. Take the job's label write L and the deletion's
write D (deletionTimestamp). If L comes before D, the finalizer's LIST runs after D, so after
L: it sees the label and waits for the job. If D comes before L, the job's live GET runs
after L, so after D: it sees the deletionTimestamp and never creates a pod. Either way one
of the two sees the other; no timing is involved (tests/integration/test_operator_races.py
runs both orders). A job that has created its pods keeps its label until it finishes.

`status.usedBy` on the Checkpoint is informational (bounded: the first users by name and
`usedByCount`), written from the index when it changes; the protection never reads it.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from checkpoint_operator.api.checkpoint import MAX_USED_BY_LISTED, CheckpointStatus
from checkpoint_operator.api.common import ObjectRef

USES_LABEL_PREFIX = "uses.ckpt.dev/"


def uses_label(checkpoint_uid: str) -> str:
    return USES_LABEL_PREFIX + checkpoint_uid


def used_uids(labels: Optional[Mapping[str, str]]) -> list[str]:
    """The Checkpoint uids a TrainingJob's labels say it uses."""
    return sorted(k[len(USES_LABEL_PREFIX):] for k in (labels or {}) if k.startswith(USES_LABEL_PREFIX))


def uses_selector(checkpoint_uid: str) -> str:
    return uses_label(checkpoint_uid)


def label_patch(current: Optional[Mapping[str, str]], wanted_uids: Iterable[str]) -> dict[str, Any]:
    """The metadata.labels merge patch that makes the job's uses labels exactly `wanted_uids`
    (empty when they already are)."""
    have, want = set(used_uids(current)), set(wanted_uids)
    patch: dict[str, Any] = {uses_label(u): "true" for u in sorted(want - have)}
    patch.update({uses_label(u): None for u in sorted(have - want)})
    return patch


def used_by_status(users: Iterable[tuple[str, str]]) -> CheckpointStatus:
    """status.usedBy/usedByCount from (name, uid) of the live users: bounded, sorted by name."""
    ordered = sorted(set(users))
    return CheckpointStatus(usedBy=[ObjectRef(name=n, uid=u) for n, u in ordered[:MAX_USED_BY_LISTED]],
                            usedByCount=len(ordered))


def blocking_users(training_jobs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Names of the listed TrainingJobs that still use their inputs (not finished)."""
    from checkpoint_operator.logic.inputs import TrainingJobInfo
    return sorted(info.name for info in map(TrainingJobInfo.from_body, training_jobs) if not info.phase.is_finished)


def deletion_blocked_message(names: list[str]) -> str:
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"deletion waits: in use by TrainingJob(s) {shown}; it completes by itself when they finish"
