"""How the workers of a distributed TrainingJob find each other (pure: names, variables, the Service).

A job is distributed when it has more than one replica or starts more than one process per pod
(`spec.nprocPerNode`). Its workers get the variables of the launchers people use, all pointing at
worker 0:

| variable | value |
| --- | --- |
| `PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT` | torchrun's arguments (`--nnodes`, ...), as Kubeflow Trainer sets them |
| `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK` | `init_process_group(init_method="env://")` with one process per pod: `WORLD_SIZE` = replicas, `RANK` = the pod's index |
| `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` | `jax.distributed.initialize()` with one process per pod |

The index is the pod's completion index, read through the downward API
(`metadata.annotations['batch.kubernetes.io/job-completion-index']`, as Kubeflow Trainer does), so
every pod of one template gets its own. torchrun sets `RANK` and `WORLD_SIZE` (= replicas x
nprocPerNode) for each process it starts, over the pod's values.

Worker 0's address is its DNS name: with the Job engine the operator creates a headless Service (no
cluster IP, `publishNotReadyAddresses`, selecting the job's worker pods) named like the Job, and the
pods' `subdomain` is that Service, so the Job controller's hostname `<job>-<i>` makes worker `i`
reachable as `<job>-<i>.<job>` (Kubernetes' documented pattern for pod-to-pod communication in an
Indexed Job). With the JobSet engine the JobSet controller makes that Service (`network.
enableDNSHostnames`) and worker `i` is `<jobset>-node-0-<i>.<jobset>`. The port is 29500 (torch's
default and Kubeflow Trainer's); in local mode (the operator's `rendezvous_address`) the address is
127.0.0.1 and the port a free one per workload, since every worker runs on this host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.logic.naming import MAX_LABEL_NAME, bounded_name, sanitize

DEFAULT_PORT = 29500
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
INDEX_FIELD = f"metadata.annotations['{COMPLETION_INDEX}']"
INDEX_VARIABLES = ("PET_NODE_RANK", "RANK", "JAX_PROCESS_ID")  # the worker's index (downward API)
REPLICATED_JOB = "node"  # the JobSet's one replicated job, as Kubeflow Trainer names it
POD_SUFFIX = 6  # "-" and the 5 random characters of a pod's name
VARIABLES = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT",
             "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK",
             "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def is_distributed(tj: TrainingJob) -> bool:
    return tj.spec.replicas > 1 or tj.spec.nprocPerNode > 1


def needs_service(tj: TrainingJob) -> bool:
    """Workers on several pods need names: the Job engine's headless Service (JobSet makes its own)."""
    return tj.spec.replicas > 1 and tj.spec.engine == "Job"


def dns1035_label(base: str, limit: int) -> str:
    """A DNS-1035 label (a Service's name: lower-case letters, digits and '-', starting with a letter)
    of at most `limit` characters, from `base`; unchanged when it already is one, else with a short
    hash of `base` so that two names never map to one."""
    candidate = sanitize(base)
    if not candidate or not candidate[0].isalpha():
        candidate = f"tj-{candidate}".rstrip("-")
    return bounded_name(candidate, limit, salt="" if candidate == base else base)


def _digits(n: int) -> int:
    return len(str(max(n - 1, 0)))


def worker_replicated_job(index: int) -> str:
    """Worker `index`'s replicated job when each worker has its own volume (logic/engines.py)."""
    return f"{REPLICATED_JOB}-{index}"


def _per_worker(tj: TrainingJob) -> bool:
    return tj.spec.engine == "JobSet" and tj.spec.output.enabled and tj.spec.output.parts_per_worker


def workload_name(tj: TrainingJob) -> str:
    """The Job's or JobSet's name. A single-pod Job keeps the job's name (cut to a label's 63
    characters). Otherwise the name is also a Service's (DNS-1035), and short enough that every pod
    name fits: `<job>-<i>` (the hostname) with the Job engine, `<jobset>-node-0-<i>-xxxxx` with
    JobSet (what JobSet's webhook checks)."""
    name, replicas = tj.metadata.name, tj.spec.replicas
    if _per_worker(tj):  # pods <jobset>-node-<i>-0-0-xxxxx
        return dns1035_label(name, MAX_LABEL_NAME - len(f"-{REPLICATED_JOB}--0-0") - _digits(replicas) - POD_SUFFIX)
    if tj.spec.engine == "JobSet":
        return dns1035_label(name, MAX_LABEL_NAME - len(f"-{REPLICATED_JOB}-0-") - _digits(replicas) - POD_SUFFIX)
    if replicas > 1:
        return dns1035_label(name, MAX_LABEL_NAME - 1 - _digits(replicas))
    return bounded_name(name, MAX_LABEL_NAME)


def service_name(tj: TrainingJob) -> str:
    """The headless Service: named like the workload (JobSet names its own so)."""
    return workload_name(tj)


def worker_host(tj: TrainingJob, index: int) -> str:
    """Worker `index`'s DNS name within the namespace (`<host>.<subdomain>`)."""
    name = workload_name(tj)
    if _per_worker(tj):
        return f"{name}-{worker_replicated_job(index)}-0-0.{name}"
    if tj.spec.engine == "JobSet":
        return f"{name}-{REPLICATED_JOB}-0-{index}.{name}"
    return f"{name}-{index}.{name}"


@dataclass(frozen=True)
class Rendezvous:
    """Where worker 0 listens, and how many workers and processes there are."""

    address: str
    port: int
    nodes: int
    nproc_per_node: int

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"


def rendezvous_of(tj: TrainingJob, address: Optional[str] = None, port: Optional[int] = None) -> Rendezvous:
    """`address`/`port`: the operator's override (local mode: 127.0.0.1 and a free port); else worker
    0's DNS name (127.0.0.1 for a single pod) and 29500."""
    if address is None:
        address = worker_host(tj, 0) if tj.spec.replicas > 1 else "127.0.0.1"
    return Rendezvous(address, port or DEFAULT_PORT, tj.spec.replicas, tj.spec.nprocPerNode)


def variables(rendezvous: Rendezvous) -> list[dict[str, Any]]:
    """The launchers' variables (env entries: a value, or the pod's index from the downward API)."""
    index: dict[str, Any] = ({"valueFrom": {"fieldRef": {"fieldPath": INDEX_FIELD}}} if rendezvous.nodes > 1
                             else {"value": "0"})
    values: dict[str, dict[str, Any]] = {
        "PET_NNODES": {"value": str(rendezvous.nodes)},
        "PET_NPROC_PER_NODE": {"value": str(rendezvous.nproc_per_node)},
        "PET_NODE_RANK": index,
        "PET_MASTER_ADDR": {"value": rendezvous.address},
        "PET_MASTER_PORT": {"value": str(rendezvous.port)},
        "MASTER_ADDR": {"value": rendezvous.address},
        "MASTER_PORT": {"value": str(rendezvous.port)},
        "WORLD_SIZE": {"value": str(rendezvous.nodes)},
        "RANK": index,
        "JAX_COORDINATOR_ADDRESS": {"value": rendezvous.endpoint},
        "JAX_NUM_PROCESSES": {"value": str(rendezvous.nodes)},
        "JAX_PROCESS_ID": index,
    }
    return [{"name": name, **values[name]} for name in VARIABLES]


def build_service(tj: TrainingJob, labels: dict[str, Any], selector: dict[str, Any],
                  owner: dict[str, Any]) -> dict[str, Any]:
    """The headless Service that gives each worker pod its DNS name (Job engine, replicas > 1)."""
    return {"metadata": {"name": service_name(tj), "namespace": tj.metadata.namespace, "labels": labels,
                         "ownerReferences": [owner]},
            "spec": {"clusterIP": "None", "selector": selector, "publishNotReadyAddresses": True}}


def check_template(pod_spec: dict[str, Any]) -> Optional[str]:
    """A distributed job's pods are named by the operator: a template's own hostname or subdomain
    would break worker 0's address. Returns the refusal, or None."""
    for field_name in ("hostname", "subdomain"):
        if pod_spec.get(field_name):
            return (f"spec.template.spec.{field_name} {pod_spec[field_name]!r} is not allowed with more than one "
                    f"replica: the operator names the workers (<job>-<index>.<service>) so that they find each "
                    f"other; remove it")
    return None
