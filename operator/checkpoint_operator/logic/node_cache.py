"""The node-local cache of inputs (s3 store), the operator's side: pure builders and readers.

How it is served without hostPath in user pods (docs/node-cache.md), as KServe's LocalModelCache
does: one *local* PersistentVolume per namespace (`ckpt-node-cache-<namespace>`), all at the same
path (`cache.localPath`), whose node affinity takes every cache node (`cache.nodeSelector`): a
local volume is mounted from the disk of whichever node its pod runs on, so each node has its own
cache behind one claim (`ckpt-node-cache`, bound to it by name) in each namespace. A pod mounts a
`persistentVolumeClaim`, which Pod Security "restricted" allows. Its native sidecar `ckpt-cache-hold`
holds its entries for the pod's life, its init containers `download-input-<i>` run `agent cache-fill`
(download once per node, verify, evict what no pod holds), and the training containers mount
`entries/<namespace>/<hex>/data` read-only, where they saw the downloaded copy before.

Each fill reports its result line (protocol/results.py `CacheFillReport`) as its termination message
(bounded at 4,096 bytes by the kubelet): `read_fill_reports` parses the pods' init container states
with that model into `FillReport`s, from which
come the Checkpoints' `status.cachedOn` and the hit/miss/bytes-saved/eviction metrics."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import agent_commands
from checkpoint_operator.logic.agent_pods import DOWNLOAD_CONTAINER_PREFIX, InputVolumes, agent_container, download_container
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.logic.security_context import AGENT_UID
from checkpoint_operator.logic.signatures import CACHED_ON_REQUEST
from checkpoint_operator.protocol.channel import ResultError, decode
from checkpoint_operator.protocol.results import TERMINATION_MESSAGE_BYTES, CacheFillReport

CACHE_CLAIM = "ckpt-node-cache"
CACHE_VOLUME = "ckpt-node-cache"
CACHE_MOUNT = "/checkpoint-node-cache"
HOLD_CONTAINER = "ckpt-cache-hold"
COMPONENT = "node-cache"
TERMINATION_LOG = "/dev/termination-log"
MAX_CACHED_ON = 64  # nodes listed in a Checkpoint's status.cachedOn (the count says how many in all)
# A TrainingJob's reconcile reads the fills' reports but never writes a Checkpoint's status: it asks
# with this annotation (a JSON list of node names), and the Checkpoint's reconcile writes cachedOn.
CACHED_ON_ANNOTATION = CACHED_ON_REQUEST.key  # with its signature beside it: the jobs' word only
MAX_NODE_NAME = 253
MAX_CACHED_ON_ANNOTATION = MAX_CACHED_ON * (MAX_NODE_NAME + 3) + 2  # bytes: the longest list it may hold
LABELS = {"app.kubernetes.io/managed-by": "checkpoint-operator", "ckpt.dev/component": COMPONENT}


def volume_name(namespace: str) -> str:
    """The namespace's local PersistentVolume (cluster-scoped: its name says whose it is)."""
    return f"{CACHE_CLAIM}-{namespace}"


def cache_key(namespace: str, digest: str) -> str:
    return f"{namespace}/{digest.removeprefix('sha256:')}"


def entry_data_path(namespace: str, digest: str) -> str:
    """Where an entry's files are in the cache volume (agent/node_cache.py's layout)."""
    return posixpath.join("entries", namespace, digest.removeprefix("sha256:"), "data")


def node_affinity(config: OperatorConfig) -> dict[str, Any]:
    selector = config.cache_node_selector or {"kubernetes.io/os": "linux"}
    return {"required": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": key, "operator": "In", "values": [str(value)]} for key, value in sorted(selector.items())]}]}}


def build_cache_volume(namespace: str, config: OperatorConfig) -> dict[str, Any]:
    """The namespace's local PersistentVolume: the cache path on every cache node, reserved for the
    namespace's claim (claimRef), kept when the claim goes (Retain: it holds only copies)."""
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": volume_name(namespace), "labels": {**LABELS, "ckpt.dev/namespace": namespace}},
            "spec": {"capacity": {"storage": config.cache_capacity}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": config.cache_storage_class,
                     "volumeMode": "Filesystem", "local": {"path": config.cache_local_path},
                     "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace,
                                  "name": CACHE_CLAIM},
                     "nodeAffinity": node_affinity(config)}}


def build_cache_claim(namespace: str, config: OperatorConfig) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": CACHE_CLAIM, "namespace": namespace, "labels": dict(LABELS)},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": config.cache_storage_class,
                     "volumeName": volume_name(namespace), "volumeMode": "Filesystem",
                     "resources": {"requests": {"storage": config.cache_capacity}}}}


VERIFY_ANNOTATION = "ckpt.dev/cache-verify"  # on a TrainingJob: "full" checks every byte of its cached inputs


def verify_mode(annotations: Optional[Mapping[str, str]], config: OperatorConfig) -> str:
    """How a job's fills check a cached entry: its annotation asks for `full` (or `sample`) on demand,
    else the install's `cache.verify`; any other value is the install's (the annotation only adds checks
    when it says full)."""
    asked = (annotations or {}).get(VERIFY_ANNOTATION)
    return asked if asked in ("sample", "full") and (asked == "full" or config.cache_verify == "sample") \
        else config.cache_verify


def cacheable(item: ResolvedInput, config: OperatorConfig) -> bool:
    """An input the cache can hold: on the s3 store, pinned to a digest, of a known size that fits."""
    return (config.cache_enabled and item.location.s3 is not None and item.digest.startswith("sha256:")
            and item.size_bytes is not None and item.size_bytes <= config.cache_capacity_bytes)


def _cache_container(name: str, command: list[str], config: OperatorConfig, env: list[dict[str, Any]]) -> dict[str, Any]:
    """An agent container on the cache volume, as the agent's user whatever the pod's: every pod of
    every namespace writes the cache's files as one owner (uid 65532, which owns cache.localPath)."""
    container = agent_container(name, command, config, mounts=[{"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT}],
                                env=env or None)
    container["securityContext"].update({"runAsUser": AGENT_UID, "runAsGroup": AGENT_UID})
    return container


def cache_parts(namespace: str, input_dir: str, inputs: list[tuple[int, ResolvedInput]], config: OperatorConfig,
                env: list[dict[str, Any]], verify: Optional[str] = None) -> InputVolumes:
    """What a training pod needs to read `inputs` ((index in status.inputs, input)) from the node cache."""
    result = InputVolumes()
    if not inputs:
        return result
    result.volumes.append({"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": CACHE_CLAIM}})
    keys = [cache_key(namespace, item.digest) for _, item in inputs]
    hold = _cache_container(HOLD_CONTAINER, agent_commands.cache_hold(CACHE_MOUNT, list(dict.fromkeys(keys))),
                            config, [])
    hold["restartPolicy"] = "Always"
    hold["resources"] = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}
    result.init_containers.append(hold)
    for (index, item), key in zip(inputs, keys):
        assert item.location.s3 is not None and item.size_bytes is not None  # cacheable()
        command = agent_commands.cache_fill(item.location.s3.uri, CACHE_MOUNT, key=key, size=item.size_bytes,
                                            capacity=config.cache_capacity_bytes, verify=verify or config.cache_verify,
                                            result_file=TERMINATION_LOG)
        fill = _cache_container(download_container(index), command, config, env)
        fill["terminationMessagePath"] = TERMINATION_LOG
        fill["terminationMessagePolicy"] = "File"
        result.init_containers.append(fill)
        result.mounts.append({"name": CACHE_VOLUME, "readOnly": True,
                              "subPath": entry_data_path(namespace, item.digest),
                              "mountPath": posixpath.join(input_dir, item.mount_name)})
    return result


# --- what the fills report ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheEviction:
    key: str
    size_bytes: int


@dataclass(frozen=True)
class FillReport:
    """One `agent cache-fill` result (protocol/results.py CacheFillReport) and the node it ran on."""

    node: str
    key: str
    outcome: str            # hit | miss | refetched
    size_bytes: int
    fetched_bytes: int
    evicted: tuple[CacheEviction, ...] = ()
    evicted_count: int = 0
    evicted_bytes: int = 0

    @property
    def digest(self) -> str:
        return "sha256:" + self.key.rpartition("/")[2]

    @property
    def saved_bytes(self) -> int:
        """Bytes this pod did not read from the store (a hit: the whole input)."""
        return self.size_bytes if self.outcome == "hit" else 0


def parse_fill_report(node: str, message: str) -> Optional[FillReport]:
    """A fill's termination message, parsed with the agent's own model (bounded: the kubelet keeps 4,096
    bytes); None when it is not one."""
    if len(message) > TERMINATION_MESSAGE_BYTES:
        return None
    try:
        report = decode(message.strip(), (CacheFillReport,))
    except ResultError:
        return None
    evicted = tuple(CacheEviction(e.key, e.sizeBytes) for e in report.evicted)
    return FillReport(node=node, key=report.key, outcome=report.cache, size_bytes=report.sizeBytes,
                      fetched_bytes=report.fetchedBytes, evicted=evicted,
                      evicted_count=max(report.evictedCount, len(evicted)),
                      evicted_bytes=max(report.evictedBytes, sum(e.size_bytes for e in evicted)))


def read_fill_reports(pod: Mapping[str, Any]) -> list[FillReport]:
    """The fills of a pod that have ended well, with the node they ran on."""
    node = (pod.get("spec") or {}).get("nodeName") or ""
    reports = []
    for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if not str(status.get("name", "")).startswith(DOWNLOAD_CONTAINER_PREFIX):
            continue
        terminated = (status.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode") == 0 and terminated.get("message") and node:
            report = parse_fill_report(node, str(terminated["message"]))
            if report is not None:
                reports.append(report)
    return reports


def cached_on(current: list[str], digest: str, reports: list[FillReport]) -> list[str]:
    """A Checkpoint's `status.cachedOn` after `reports`: nodes where a fill of its digest ended well are
    added, nodes that evicted it are removed (sorted, at most MAX_CACHED_ON)."""
    nodes = set(current)
    hexdigest = digest.removeprefix("sha256:")
    for report in reports:
        if report.digest == digest:
            nodes.add(report.node)
        if any(e.key.rpartition("/")[2] == hexdigest for e in report.evicted):
            nodes.discard(report.node)
    return sorted(nodes)[:MAX_CACHED_ON]


def cached_on_request(nodes: list[str]) -> str:
    """The annotation's value asking for `nodes` as a Checkpoint's status.cachedOn."""
    return json.dumps(sorted(set(nodes))[:MAX_CACHED_ON], separators=(",", ":"))


def requested_cached_on(annotation: Optional[str]) -> Optional[list[str]]:
    """The nodes the annotation asks for (sorted, at most MAX_CACHED_ON); None when there is none, or
    when it is not a bounded JSON list of node names (anyone may write an annotation: ignored then)."""
    if annotation is None or len(annotation) > MAX_CACHED_ON_ANNOTATION:
        return None
    try:
        value = json.loads(annotation)
    except ValueError:
        return None
    if not isinstance(value, list) or len(value) > MAX_CACHED_ON or \
            not all(isinstance(n, str) and 0 < len(n) <= MAX_NODE_NAME for n in value):
        return None
    return sorted(set(value))
