"""Pods that run the operator's own image (`checkpoint-operator agent ...`): snapshot, scan,
import, download. The store-independent parts (the stores add their commands and env), the
deadline every agent pod gets, and how a pod's state reads (pure functions on pod dicts)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from checkpoint_operator.api.common import PodPhase
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic.security_context import Identity, agent_pod_context, restricted_container
from checkpoint_operator.protocol.errors import REFUSED_EXIT_CODE

AGENT_OUTPUT_MOUNT = "/checkpoint-output"
AGENT_DATA_MOUNT = "/checkpoint-data"
# Volume names the operator adds to pods; a template may not use them.
OUTPUT_VOLUME = "ckpt-output"
STAGING_VOLUME = "ckpt-inputs"
STAGING_MOUNT = "/checkpoint-inputs"
INPUT_VOLUME_PREFIX = "ckpt-in-"
DOWNLOAD_CONTAINER_PREFIX = "download-input-"  # + the input's index in status.inputs (s3 store)
GIB = 1024 ** 3
# Service meshes inject a proxy container into every pod of a namespace (Istio in every Kubeflow
# profile namespace, Linkerd): an agent pod talks to no service, and the admission policy refuses a
# container that does not run the operator's image, so agent pods opt out of injection.
MESH_OPT_OUT_ANNOTATIONS = {"sidecar.istio.io/inject": "false", "linkerd.io/inject": "disabled"}
MESH_OPT_OUT_LABELS = {"sidecar.istio.io/inject": "false"}  # Istio's newer form (the annotation is older)


@dataclass
class InputVolumes:
    """What a training pod needs to see its inputs at <inputDir>/<name>, read-only."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)            # added to every training container
    init_containers: list[dict[str, Any]] = field(default_factory=list)   # run before the training code


def agent_container(name: str, command: list[str], config: OperatorConfig, mounts: list[dict[str, Any]],
                    env: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    container = {"name": name, "image": config.agent_image, "imagePullPolicy": config.agent_image_pull_policy,
                 "command": command, "volumeMounts": mounts, "resources": copy.deepcopy(config.agent_resources),
                 "securityContext": restricted_container()}
    if env:
        container["env"] = env
    return container


def agent_deadline(config: OperatorConfig, size_bytes: Optional[int] = None) -> int:
    """activeDeadlineSeconds of an agent pod: the base, plus time per GiB where the size is known."""
    extra = (size_bytes or 0) / GIB * config.agent_deadline_seconds_per_gib
    return int(config.agent_deadline_seconds + extra)


def writes_a_claim(volumes: list[dict[str, Any]]) -> bool:
    return any("persistentVolumeClaim" in v and not v["persistentVolumeClaim"].get("readOnly") for v in volumes)


def agent_pod(metadata: dict[str, Any], config: OperatorConfig, containers: list[dict[str, Any]],
              volumes: list[dict[str, Any]], init_containers: Optional[list[dict[str, Any]]] = None, *,
              size_bytes: Optional[int] = None, identity: Optional[Identity] = None) -> dict[str, Any]:
    """An agent pod: Pod Security "restricted" and no service-account token (logic/security_context.py);
    `identity`: the trainer's, for a pod that reads what the trainer wrote."""
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": containers, "volumes": volumes,
                            "activeDeadlineSeconds": agent_deadline(config, size_bytes),
                            "automountServiceAccountToken": False,
                            "securityContext": agent_pod_context(writes_claim=writes_a_claim(volumes),
                                                                 identity=identity)}
    if init_containers:
        spec["initContainers"] = init_containers
    if config.agent_service_account:
        spec["serviceAccountName"] = config.agent_service_account
    metadata = {**metadata, "labels": {**metadata.get("labels", {}), **MESH_OPT_OUT_LABELS},
                "annotations": {**metadata.get("annotations", {}), **MESH_OPT_OUT_ANNOTATIONS}}
    return {"metadata": metadata, "spec": spec}


def staging_size_limit(size_bytes: Optional[int], limit_bytes: int) -> str:
    """sizeLimit of an emptyDir that receives data: the known size plus a margin, else the limit."""
    if size_bytes is None:
        return str(limit_bytes)
    return str(min(limit_bytes, int(size_bytes * 1.1) + 64 * 1024 * 1024))


# --- reading a pod ------------------------------------------------------------------------------

# Waiting reasons of a container that will not start by themselves (or not soon).
STUCK_WAITING_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                         "CreateContainerError", "CrashLoopBackOff", "RunContainerError")


@dataclass(frozen=True)
class PodProblem:
    """Why a pod is not running: `reason` CamelCase, `message` names the pod."""

    reason: str
    message: str


def pod_problem(pod: Mapping[str, Any]) -> Optional[PodProblem]:
    """A Pending pod that is stuck (unschedulable, image pull back-off, bad config, ...), or None."""
    meta, status = pod.get("metadata", {}), pod.get("status", {}) or {}
    name = meta.get("name", "?")
    if PodPhase.of(pod) != PodPhase.PENDING:
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == "Unschedulable":
            return PodProblem("Unschedulable", f"pod {name} cannot be scheduled: {condition.get('message', '')}".strip())
    for kind in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(kind) or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_WAITING_REASONS:
                return PodProblem(waiting["reason"], f"pod {name} container {container.get('name')}: "
                                                     f"{waiting['reason']}: {waiting.get('message', '')}".strip())
    return None


# A claim waiting for its first pod to be scheduled, or being provisioned (the provisioner's Normal
# progress events, which a restore from a volume snapshot takes a while in), is not stuck.
NOT_STUCK_CLAIM_REASONS = ("WaitForFirstConsumer", "WaitForPodScheduled", "ExternalProvisioning", "Provisioning",
                           "ProvisioningSucceeded")


def claim_events_selector(claim_name: str) -> str:
    """fieldSelector of the Events about one PersistentVolumeClaim (a list of that object only)."""
    return f"involvedObject.kind=PersistentVolumeClaim,involvedObject.name={claim_name}"


def claim_problem(claim: Optional[dict[str, Any]], events: list[dict[str, Any]]) -> Optional[PodProblem]:
    """Why a claim a pod waits for is not bound, from its status and its latest event (a Warning
    first: ProvisioningFailed names a missing StorageClass or a full pool), or None when it is
    bound or only waits for its first consumer."""
    if claim is None:
        return None
    meta, status = claim.get("metadata", {}), claim.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Bound":
        return None
    name = meta.get("name", "?")

    def when(event: dict[str, Any]) -> str:
        return event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or ""
    ordered = sorted(events, key=when, reverse=True)
    latest = next((e for e in ordered if e.get("type") == "Warning"), ordered[0] if ordered else None)
    if latest is not None and latest.get("reason") in NOT_STUCK_CLAIM_REASONS:
        return None
    if latest is None:
        storage_class = (claim.get("spec") or {}).get("storageClassName")
        cause = f"no event says why yet (storageClassName {storage_class or 'unset: the cluster default'})"
    else:
        cause = f"{latest.get('reason', '')}: {latest.get('message', '')}".strip(": ")
    return PodProblem("VolumeNotBound", f"PersistentVolumeClaim {name} is {phase}: {cause}")


def pod_events_selector(pod_name: str) -> str:
    """fieldSelector of the Events about one Pod (a list of that object only)."""
    return f"involvedObject.kind=Pod,involvedObject.name={pod_name}"


ATTACH_FAILED = "FailedAttachVolume"  # the attach/detach controller's Warning (Multi-Attach, attach limits, ...)
MAX_ATTACH_MESSAGE = 500


def failed_attach(events: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The latest FailedAttachVolume event of a pod, or None."""
    failed = [e for e in events if e.get("reason") == ATTACH_FAILED]
    if not failed:
        return None
    return max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or "")


def attach_problem(pod_name: str, event: Mapping[str, Any], claims_by_volume: Mapping[str, str]) -> PodProblem:
    """A Pending pod waiting for a volume held by another node (ReadWriteOnce block storage: a
    Multi-Attach error) or refused by the node's attach limit: the claim whose volume the event
    names (`claims_by_volume`: PersistentVolume -> claim, of the pod's claims) and the message."""
    message = str(event.get("message") or "")
    claim = next((c for volume, c in sorted(claims_by_volume.items()) if f'"{volume}"' in message), None)
    what = f"PersistentVolumeClaim {claim}" if claim else "a volume"
    return PodProblem("VolumeAttachWait",
                      f"pod {pod_name} waits to attach {what}: {message[:MAX_ATTACH_MESSAGE]}".strip())


def pod_claims(pod: Mapping[str, Any]) -> list[str]:
    """The claims a pod mounts: its persistentVolumeClaim volumes and its ephemeral ones' (<pod>-<volume>)."""
    name = (pod.get("metadata") or {}).get("name", "")
    claims = []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if (volume.get("persistentVolumeClaim") or {}).get("claimName"):
            claims.append(str(volume["persistentVolumeClaim"]["claimName"]))
        elif volume.get("ephemeral"):
            claims.append(f"{name}-{volume.get('name')}")
    return claims


def job_events_selector(job_name: str) -> str:
    """fieldSelector of the Events about one batch/v1 Job."""
    return f"involvedObject.kind=Job,involvedObject.name={job_name}"


def job_creation_problem(job_name: str, events: list[dict[str, Any]]) -> Optional[PodProblem]:
    """Why a Job has no pods: the Job controller's latest `FailedCreate` (admission refused its
    pod: Pod Security, a quota, a policy), or None."""
    refusals = [e for e in events if e.get("reason") == "FailedCreate"]
    if not refusals:
        return None
    latest = max(refusals, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or "")
    return PodProblem("PodsRefused", f"Job {job_name} cannot create its pods: {latest.get('message', '')}".strip())


# Pod-level reasons of a Failed pod that the node decided (the kubelet killed its containers).
NODE_FAILURE_REASONS = ("Evicted", "NodeLost", "Shutdown", "Terminated", "NodeAffinity", "UnexpectedAdmissionError",
                        "OutOfcpu", "OutOfmemory")


@dataclass(frozen=True)
class PodFailure:
    message: str
    container: Optional[str] = None   # the container whose log tells why (None: the pod itself)
    exit_code: Optional[int] = None   # the failed container's (None: the pod failed as a whole)
    reason: Optional[str] = None      # its termination reason (Error, OOMKilled, ...)

    @property
    def agent_refused(self) -> bool:
        """Of an agent pod only (a training container's codes are its own): the agent refused the data
        (REFUSED_EXIT_CODE, protocol/errors.py Refusal), which a new pod would refuse again."""
        return self.exit_code == REFUSED_EXIT_CODE and self.reason == "Error"


def pod_failure(pod: Mapping[str, Any], what: str) -> PodFailure:
    """Why a Failed pod failed: a deadline, an eviction, or the first container that exited non-zero
    (init containers first: a failed init container leaves the main container's log empty)."""
    meta, status, spec = pod.get("metadata", {}), pod.get("status", {}) or {}, pod.get("spec", {}) or {}
    name = meta.get("name", "?")
    if status.get("reason") == "DeadlineExceeded":
        return PodFailure(f"{what} pod {name} exceeded its deadline of {spec.get('activeDeadlineSeconds')} s")
    if status.get("reason") in NODE_FAILURE_REASONS:  # its containers' exit codes (137) say only that they were killed
        return PodFailure(f"{what} pod {name} failed: {status['reason']}: {status.get('message') or 'no message'}")
    for kind in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(kind) or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated and terminated.get("exitCode", 0) != 0:
                reason = terminated.get("reason") or "Error"
                return PodFailure(f"{what} pod {name}: container {container.get('name')} failed "
                                  f"({reason}, exit code {terminated.get('exitCode')})", container.get("name"),
                                  terminated.get("exitCode"), reason)
    detail = status.get("message") or status.get("reason") or "no container reported why"
    return PodFailure(f"{what} pod {name} failed: {detail}")


def download_container(index: int) -> str:
    return f"{DOWNLOAD_CONTAINER_PREFIX}{index}"


def downloaded_input(container: Optional[str], input_names: list[str]) -> Optional[str]:
    """The input a training pod's init container downloads (None: not a download container)."""
    if not container or not container.startswith(DOWNLOAD_CONTAINER_PREFIX):
        return None
    index = container[len(DOWNLOAD_CONTAINER_PREFIX):]
    return input_names[int(index)] if index.isdigit() and int(index) < len(input_names) else None


def last_error_line(log: str) -> str:
    """The agent ends a failure with one `error: ...` line on stderr; else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1][:800]
