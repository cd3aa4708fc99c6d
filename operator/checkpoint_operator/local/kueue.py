"""A stand-in for Kueue's admission in the local cluster (not Kueue: no ClusterQueues, quotas,
Workload objects or fair sharing).

What it does with a Job or JobSet labelled `kueue.x-k8s.io/queue-name` and created with
`spec.suspend: true` (what Kueue requires of the workloads it manages; a Job owned by a JobSet is
part of its JobSet's workload and left alone): it admits it at once, as Kueue does when the queue
has quota, by setting `spec.suspend: false`, and reports it (`local run` prints the line).
`preempt()` does what Kueue's preemption does to the workload: `spec.suspend: true` (its
controller then stops the pods), and admits it again after `hold` seconds (or at `admit()`);
`hold()` keeps a workload queued for a while, as a queue without quota would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from checkpoint_operator.local.kubelet import meta
from checkpoint_operator.local.server import ApiClient

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
STAND_IN = "kueue (local stand-in)"


def queue_of(obj: Mapping[str, Any]) -> str | None:
    return (meta(obj).get("labels") or {}).get(QUEUE_LABEL) or None


def is_managed(obj: Mapping[str, Any]) -> bool:
    """A workload Kueue would manage: queue-named, and not part of a JobSet."""
    owned_by_jobset = any(ref.get("kind") == "JobSet" for ref in meta(obj).get("ownerReferences") or [])
    return queue_of(obj) is not None and not owned_by_jobset


class KueueStandIn:
    """Admits queue-labelled suspended workloads at once; preempts them when told."""

    def __init__(self, api: ApiClient, report: Callable[[str], None] | None = None,
                 observe: Callable[[str, dict], None] | None = None) -> None:
        self.api = api
        self.report = report or (lambda line: None)
        self.observe = observe or (lambda resource, obj: None)  # our writes reach the caches at once
        self.held: dict[tuple[str, str, str], float] = {}  # (resource, ns, name) -> monotonic time of re-admission
        self.preemptions = 0

    async def reconcile(self, resource: str, obj: dict) -> float | None:
        """Admit a suspended managed workload unless held; returns when to look again (a hold)."""
        if not is_managed(obj) or meta(obj).get("deletionTimestamp") or not (obj.get("spec") or {}).get("suspend"):
            return None
        key = (resource, meta(obj)["namespace"], meta(obj)["name"])
        until = self.held.get(key)
        if until is not None and time.monotonic() < until:
            return until - time.monotonic()
        self.held.pop(key, None)
        self.observe(resource, await self.api.patch(resource, key[1], key[2], {"spec": {"suspend": False}}))
        again = " again" if until is not None else ""
        self.report(f"{STAND_IN}: admitted{again} {obj.get('kind')} {key[1]}/{key[2]} "
                    f"(LocalQueue {queue_of(obj)}: admitted at once, no quota here)")
        return None

    async def preempt(self, resource: str, namespace: str, name: str, hold: float = 1.0) -> None:
        """Suspend a running workload as Kueue's preemption does; admit it again after `hold` seconds."""
        self.held[(resource, namespace, name)] = time.monotonic() + hold
        self.preemptions += 1
        self.observe(resource, await self.api.patch(resource, namespace, name, {"spec": {"suspend": True}}))
        self.report(f"{STAND_IN}: preempted {resource.rsplit('/', 1)[-1]} {namespace}/{name} "
                    f"(suspended; admitted again in {hold:g} s)")

    def hold(self, resource: str, namespace: str, name: str, seconds: float) -> None:
        """Keep the workload of that name queued (suspended, not admitted) for `seconds`."""
        self.held[(resource, namespace, name)] = time.monotonic() + seconds

    def admit(self, resource: str, namespace: str, name: str) -> None:
        """End a hold now: the next reconcile admits the workload."""
        self.held[(resource, namespace, name)] = 0.0
