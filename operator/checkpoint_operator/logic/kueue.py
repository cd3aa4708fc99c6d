"""Kueue: what a TrainingJob's workload carries so that Kueue admits it (pure).

Kueue manages a batch/v1 Job or a JobSet that has the label `kueue.x-k8s.io/queue-name` (the
LocalQueue): it must be created with `spec.suspend: true` (Kueue's webhook would set it too, when
installed), Kueue unsuspends it once the ClusterQueue has quota (admission, possibly adding node
selectors and tolerations to the pod template first) and suspends it again to preempt it (the Job
controller deletes its pods; they do not count as failures). A TrainingJob labelled with a queue
name passes every `kueue.x-k8s.io/` label of its own (queue-name, priority-class for a
WorkloadPriorityClass, max-exec-time-seconds) to its Job or JobSet, which is then created suspended.
Pod priority (`priorityClassName`) is the pod template's own.
"""

from __future__ import annotations

from typing import Mapping, Optional

KUEUE_PREFIX = "kueue.x-k8s.io/"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def kueue_labels(labels: Optional[Mapping[str, str]]) -> dict[str, str]:
    """The TrainingJob's Kueue labels, for its workload."""
    return {k: v for k, v in (labels or {}).items() if k.startswith(KUEUE_PREFIX)}


def queue_name(labels: Optional[Mapping[str, str]]) -> Optional[str]:
    return (labels or {}).get(QUEUE_LABEL) or None
