"""The workload's API calls: a TrainingJob's Job or JobSet (read, created, deleted), its headless
Service, whether the engine is installed, and the rendezvous port.

The one place that names each engine's resource (logic/engines.py builds and reads the objects),
so that every other step is the same for both engines, and the RBAC derived from the calls
(rbac.py, tests/test_rbac.py) sees both.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.kube import JOBS, JOBSETS, SERVICES
from checkpoint_operator.logic import engines, rendezvous, workers, workload
from checkpoint_operator.logic.rendezvous import Rendezvous
from checkpoint_operator.reconcile.context import Context


def get(ctx: Context, tj: TrainingJob, name: str) -> Optional[dict[str, Any]]:
    """The workload as the watch last showed it (kube.ObjectCache): its end is an event that wakes the job."""
    if tj.spec.engine == "JobSet":
        return ctx.kube.cached_get(JOBSETS, tj.metadata.namespace, name)
    return ctx.kube.cached_get(JOBS, tj.metadata.namespace, name)


def ensure(ctx: Context, tj: TrainingJob, body: dict[str, Any]) -> dict[str, Any]:
    """Create the workload, or return the object of that name (idempotent)."""
    if tj.spec.engine == "JobSet":
        return ctx.kube.ensure(JOBSETS, tj.metadata.namespace, body)
    return ctx.kube.ensure(JOBS, tj.metadata.namespace, body)


def delete_attempt(ctx: Context, tj: TrainingJob, name: str, uid: str) -> bool:
    """Delete a failed attempt's Job, or JobSet with a volume per worker (that object only, by uid;
    otherwise JobSet restarts its own child Jobs); its pods first (Foreground, as JobSet deletes its
    child Jobs), so that the next attempt never overlaps it."""
    if tj.spec.engine == "JobSet":
        return ctx.kube.delete(JOBSETS, tj.metadata.namespace, name, propagation="Foreground", uid=uid)
    return ctx.kube.delete(JOBS, tj.metadata.namespace, name, propagation="Foreground", uid=uid)


def worker_controllers(ctx: Context, tj: TrainingJob) -> frozenset[str]:
    """The UIDs of the objects whose pods are this job's workers (issue 23 item 9): the Job the
    operator created, its UID recorded in status.jobUid (a group restart records the new Job's);
    with engine JobSet, the JobSet's child Jobs (JobSet creates them again on each restart), each
    trusted only while its controller is the JobSet whose UID is recorded. None recorded: none."""
    recorded = tj.status.jobUid
    if not recorded:
        return frozenset()
    if tj.spec.engine != "JobSet":
        return frozenset({recorded})
    name = tj.status.jobName or workload.job_name(tj)
    children = ctx.kube.list(JOBS, tj.metadata.namespace, label_selector=f"{engines.JOBSET_NAME_LABEL}={name}")
    return frozenset(uid for child in children
                     if workers.controller_uid(child) == recorded and isinstance(uid := child["metadata"].get("uid"), str))


def ensure_service(ctx: Context, tj: TrainingJob) -> dict[str, Any]:
    """The headless Service of a distributed Job's workers (JobSet makes its own)."""
    return ctx.kube.ensure(SERVICES, tj.metadata.namespace, workload.build_rendezvous_service(tj))


def engine_installed(ctx: Context, tj: TrainingJob) -> bool:
    """A Job can always run; a JobSet needs its CRD (discovery)."""
    return tj.spec.engine != "JobSet" or ctx.kube.serves(JOBSETS)


def free_port() -> int:
    """A TCP port nothing listens on now on this host (local mode: every worker runs here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rendezvous_for(ctx: Context, tj: TrainingJob) -> Rendezvous:
    """Worker 0's address and port, as the operator is configured (logic/rendezvous.py)."""
    port = ctx.config.rendezvous_port or free_port()
    return rendezvous.rendezvous_of(tj, ctx.config.rendezvous_address, port)
