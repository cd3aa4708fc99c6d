"""Every pod the operator creates, and every pod template it hands to a Job, built by the real
builders (logic/, storage/) for every store (volume, s3, and volume with volume snapshots) and every
source kind: the shapes that
test_pod_security.py checks against Pod Security "restricted" and test_admission_policy.py
against the chart's ValidatingAdmissionPolicy.

Each shape is the object as the API server receives it (apiVersion, kind, metadata with the
namespace, spec). `agent_pods()` are the operator's own pods; `training_pods()` the pods a Job
makes from the template the operator built (a user template that itself meets "restricted").
"""

from __future__ import annotations

import hashlib

import copy
from typing import Any, Optional

from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint
from checkpoint_operator.api.trainingjob import GroupResume, TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic.live_unions import Assemble, union_args
from checkpoint_operator.logic import catalog, transfers, workload
from checkpoint_operator.logic.agent_pods import AGENT_OUTPUT_MOUNT
from checkpoint_operator.api.checkpoint import Location
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.storage import store_for

NAMESPACE = "team-a"
IMAGE = "registry.example/checkpoint-operator:1.2.3"
STORE_SECRET = "ckpt-s3"
AGENT_SERVICE_ACCOUNT = "ckpt-agent"
S3_ENDPOINT = "http://minio.minio.svc:9000"
DIGEST = "sha256:" + "a" * 64
LIMIT = 10 * 1024 ** 3

SOURCES: dict[str, dict[str, Any]] = {
    "s3": {"s3": {"uri": "s3://ext/llama/", "endpoint": "http://ext:9000", "region": "eu",
                  "secretRef": {"name": "ext-creds"}}},
    "s3-anonymous": {"s3": {"uri": "s3://public/llama/"}},
    "http": {"http": {"url": "https://example.com/m.tar.gz"}},
    "ftp-with-login-and-ca": {"http": {"url": "ftps://ftp.example/m.tar.gz", "secretRef": {"name": "ftp-login"},
                                       "caConfigMap": {"name": "corp-ca", "key": "ca.pem"}}},
    "huggingFace": {"huggingFace": {"repo": "org/model", "revision": "main", "endpoint": "https://mirror.example",
                                    "secretRef": {"name": "hf"}}},
    "gcs": {"gcs": {"uri": "gs://bucket/run/", "secretRef": {"name": "hmac"}}},
    "azureBlob": {"azureBlob": {"uri": "https://acct.blob.core.windows.net/models/llama/", "secretRef": {"name": "az"}}},
    "git": {"git": {"url": "https://git.example/org/model.git", "revision": "v1", "lfs": True,
                    "secretRef": {"name": "git-login"}, "caConfigMap": {"name": "corp-ca", "key": "bundle.pem"}}},
}

# A user template that meets "restricted" on its own (what a careful user writes).
RESTRICTED_TEMPLATE = {"metadata": {"labels": {"team": "ml"}}, "spec": {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000,
                        "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "trainer", "image": "trainer:1", "command": ["python", "train.py"],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}


SNAPSHOT_CLASS = "ebs-snapshots"
STORES = ("volume", "s3", "snapshots")  # snapshots: the volume store with volume snapshots (storage.volume.snapshotClassName)


def config(store: str, **overrides: Any) -> OperatorConfig:
    values: dict[str, Any] = {"agent_image": IMAGE, "agent_service_account": AGENT_SERVICE_ACCOUNT}
    if store == "snapshots":
        values.update(volume_snapshot_class=SNAPSHOT_CLASS, default_storage_class="gp3")
    if store in ("s3", "s3-cache"):
        values.update(storage_type="s3", s3_bucket="ckpts", s3_endpoint=S3_ENDPOINT, s3_secret_name=STORE_SECRET)
    if store == "s3-cache":  # the node-local input cache (logic/node_cache.py)
        values.update(cache_enabled=True, cache_capacity="200Gi")
    return OperatorConfig(**{**values, **overrides})


def checkpoint(source: dict[str, Any], *, name: str = "model", status: Optional[dict] = None) -> Checkpoint:
    body: dict[str, Any] = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}"},
                            "spec": {"source": source}}
    if status:
        body["status"] = status
    return Checkpoint.model_validate(body)


CATALOG_NAMESPACE = "ckpt-system"  # the chart's release namespace in test_admission_policy.py


def cluster_checkpoint(source: dict[str, Any], *, name: str = "tiny", status: Optional[dict] = None
                       ) -> ClusterCheckpoint:
    body: dict[str, Any] = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "ClusterCheckpoint",
                            "metadata": {"name": name, "uid": f"uid-cluster-{name}"}, "spec": {"source": source}}
    if status:
        body["status"] = status
    return ClusterCheckpoint.model_validate(body)


READY_ENTRY_STATUS = {"phase": "Ready", "digest": DIGEST, "sizeBytes": 4096,
                      "source": {"kind": "huggingFace", "uri": "hf://org/model@main", "revision": "main",
                                 "resolvedRevision": "a" * 40}}


def catalog_pods(store_name: str) -> dict[str, dict[str, Any]]:
    """A catalog entry's import pod (the operator's namespace) for each source kind, and on the volume store a
    namespace's copy pod."""
    cfg = config(store_name, catalog_namespace=CATALOG_NAMESPACE)
    store = store_for(cfg)
    pods = {}
    for kind, source in SOURCES.items():
        entry = cluster_checkpoint(source)
        pods[f"{store_name}/catalog-import/{kind}"] = catalog.build_import_pod(
            entry, cfg, CATALOG_NAMESPACE, store.catalog_import_containers(entry, LIMIT))
    if store.copies_per_namespace:
        entry = cluster_checkpoint({"huggingFace": {"repo": "org/model"}}, status=READY_ENTRY_STATUS)
        pods[f"{store_name}/catalog-copy"] = catalog.build_copy_pod(
            entry, cfg, NAMESPACE, store.copy_containers(entry, catalog.copy_claim_name(entry), LIMIT))
    return pods


def training_job(template: Optional[dict] = None, *, publish: str = "OnCompletion", replicas: int = 1,
                 engine: str = "Job", labels: Optional[dict] = None, output: Optional[dict] = None) -> TrainingJob:
    return TrainingJob.model_validate({
        "apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "train", "namespace": NAMESPACE, "uid": "0123456789-uid", "labels": labels or {}},
        "spec": {"checkpoints": [{"name": "base"}], "replicas": replicas, "engine": engine,
                 "output": {"enabled": True, "size": "10Gi", "publish": publish, **(output or {})},
                 "template": copy.deepcopy(template or RESTRICTED_TEMPLATE)}})


def as_created(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod as the API server receives it from the operator's client (kube.py adds these)."""
    return {"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(pod)}


# A checkpoint assembled across two workers' volumes, each kept in a VolumeSnapshot of its own.
SNAPSHOT_PARTS = [
    {"volumeSnapshotName": "train-output-01234-0-snap-0123456789-ab12cd34ef", "path": "step-1", "worker": 0,
     "items": [".metadata", "__0_0.distcp"], "restoreSize": "10Gi", "storageClassName": "gp3"},
    {"volumeSnapshotName": "train-output-01234-1-snap-9876543210-ab12cd34ef", "path": "step-1", "worker": 1,
     "items": ["__1_0.distcp"], "restoreSize": "10Gi", "storageClassName": "gp3"}]


PUBLISHED_3000 = [f"checkpoint-{50 * i}" for i in range(1, 3001)]


def agent_pods() -> dict[str, dict[str, Any]]:
    pods: dict[str, dict[str, Any]] = {}
    for store_name in STORES:
        cfg = config(store_name)
        store = store_for(cfg)
        tj = training_job()
        pods[f"{store_name}/snapshot"] = workload.build_snapshot_pod(
            tj, store.snapshot_command(tj, AGENT_OUTPUT_MOUNT), store.agent_env(), cfg,
            read_only=not store.snapshot_writes_output)  # as reconcile/trainingjob.py builds it
        parts = training_job(replicas=2, engine="JobSet", output={"volumePerWorker": True})
        pods[f"{store_name}/snapshot-volume-per-worker"] = workload.build_snapshot_pod(
            parts, store.snapshot_command(parts, AGENT_OUTPUT_MOUNT), store.agent_env(), cfg,
            read_only=not store.snapshot_writes_output)
        # Live sealing of that group (publish: Continuous): the union of one directory's sealed parts.
        live = training_job(replicas=2, engine="JobSet", output={"volumePerWorker": True}, publish="Continuous")
        union = Assemble("ckpts/step-2", ((0, "sha256:" + "ab" * 32), (1, "sha256:" + "cd" * 32)))
        pods[f"{store_name}/union-volume-per-worker"] = workload.build_union_pod(
            live, store.snapshot_command(live, AGENT_OUTPUT_MOUNT) + union_args(union), store.agent_env(), cfg,
            read_only=not store.snapshot_writes_output)  # as reconcile/live_unions.py builds it
        # Between two attempts of that group: every worker's volume read-write (logic/group_resume.py).
        pods[f"{store_name}/resume-volume-per-worker"] = workload.build_resume_pod(parts, cfg)
        resumed = parts.model_copy(deep=True)  # a later attempt: it keeps the copy recorded last (--keep)
        resumed.status.resume = GroupResume(attempt=1, directory="step-1", digest="sha256:" + "ab" * 32, step=1, message="m")
        pods[f"{store_name}/resume-volume-per-worker-again"] = workload.build_resume_pod(resumed, cfg)
        # With publish: Continuous: the directories that stay sealed (H9-3), one named like an option (H10-5).
        pods[f"{store_name}/resume-volume-per-worker-published"] = workload.build_resume_pod(
            resumed, cfg, published=["step-1", "ckpts/step-2", "--ckpt-5", "-1"])
        # A long Continuous job: 3,000 published directories, in one argument (protocol/published.py);
        # one argument each met the policy's 300 (trust2 B).
        pods[f"{store_name}/resume-volume-per-worker-published-3000"] = workload.build_resume_pod(
            resumed, cfg, published=PUBLISHED_3000)
        # More than one argument holds (protocol/published.MAX_ARGUMENT): --keep-sealed instead.
        pods[f"{store_name}/resume-volume-per-worker-kept-sealed"] = workload.build_resume_pod(
            resumed, cfg, published=[hashlib.sha256(str(i).encode()).hexdigest()[:40] for i in range(5000)])
        for kind, source in SOURCES.items():
            ckpt = checkpoint(source)
            pods[f"{store_name}/import/{kind}"] = workload.build_import_pod(
                ckpt, cfg, store.import_containers(ckpt, LIMIT))
        upload = checkpoint({"upload": {}}, name="pushed")
        request = transfers.UploadRequest("2026-01-01T00:00:00Z", DIGEST, size_bytes=1024)
        if store_name == "snapshots":  # a Checkpoint kept in a volume snapshot: verify and pull restore it
            ready = checkpoint({"trainingJob": {"name": "train", "uid": "0123456789-uid", "directory": "."}},
                               status={"phase": "Ready", "digest": DIGEST, "sizeBytes": 10, "location": {"snapshot": {
                                   "volumeSnapshotName": "train-output-01234-snap-0123456789", "path": ".",
                                   "items": ["config.json", "model.safetensors"], "restoreSize": "10Gi",
                                   "storageClassName": "gp3"}}})
            pods["snapshots/verify"] = transfers.build_verify_pod(ready, cfg, "now", [])
            pods["snapshots/pull"] = transfers.build_pull_pod(ready, cfg, "now")
            assembled = checkpoint({"trainingJob": {"name": "train", "uid": "0123456789-uid", "directory": "step-1"}},
                                   status={"phase": "Ready", "digest": DIGEST, "sizeBytes": 10,
                                           "location": {"snapshotParts": SNAPSHOT_PARTS}})
            pods["snapshots/verify/assembled-across-workers"] = transfers.build_verify_pod(assembled, cfg, "now", [])
            pods["snapshots/pull/assembled-across-workers"] = transfers.build_pull_pod(assembled, cfg, "now")
            pods["snapshots/upload-receiver"] = transfers.build_receiver_pod(upload, cfg, request, LIMIT,
                                                                             sync=store.syncs_before_snapshots)
        elif store_name == "volume":
            pods["volume/scan"] = workload.build_volume_scan_pod(
                checkpoint({"volume": {"claimName": "team-data", "path": "/runs/7"}}), cfg)
            pods["volume/upload-receiver"] = transfers.build_receiver_pod(upload, cfg, request, LIMIT)
            ready = checkpoint({"volume": {"claimName": "team-data", "path": "/"}}, status={
                "phase": "Ready", "digest": DIGEST, "sizeBytes": 10,
                "location": {"volume": {"claimName": "train-output-01234", "path": ".",
                                        "items": ["config.json", "model.safetensors"]}}})
            pods["volume/verify"] = transfers.build_verify_pod(ready, cfg, "now", [])
            pods["volume/pull"] = transfers.build_pull_pod(ready, cfg, "now")
            assembled = checkpoint({"volume": {"claimName": "team-data", "path": "/"}}, status={
                "phase": "Ready", "digest": DIGEST, "sizeBytes": 10, "location": {"volumeParts": [
                    {"claimName": "train-output-01234-0", "path": "step-1", "items": [".metadata", "__0_0.distcp"]},
                    {"claimName": "train-output-01234-1", "path": "step-1", "items": ["__1_0.distcp"]}]}})
            pods["volume/verify/assembled-across-workers"] = transfers.build_verify_pod(assembled, cfg, "now", [])
            pods["volume/pull/assembled-across-workers"] = transfers.build_pull_pod(assembled, cfg, "now")
        else:
            pods["s3/upload-check"] = transfers.build_upload_check_pod(
                upload, cfg, request, "s3://ckpts/checkpoints/team-a/pushed-uid-push/", store.agent_env(), LIMIT)
            ready = checkpoint({"s3": {"uri": "s3://ext/x/"}}, status={
                "phase": "Ready", "digest": DIGEST, "location": {"s3": {"uri": "s3://ckpts/checkpoints/team-a/m/"}}})
            pods["s3/verify"] = transfers.build_verify_pod(ready, cfg, "now", store.agent_env())
        pods.update(catalog_pods(store_name))
    return {name: as_created(pod) for name, pod in pods.items()}


def _inputs(store_name: str) -> list[ResolvedInput]:
    if store_name in ("s3", "s3-cache"):
        location = {"s3": {"uri": "s3://ckpts/checkpoints/team-a/base-uid/"}}
    elif store_name == "volume-parts":  # assembled across two workers' volumes
        location = {"volumeParts": [
            {"claimName": "producer-output-abcde-0", "path": "step-1", "items": [".metadata", "__0_0.distcp"]},
            {"claimName": "producer-output-abcde-1", "path": "step-1", "items": ["__1_0.distcp"]}]}
    elif store_name == "snapshots":
        location = {"snapshot": {"volumeSnapshotName": "producer-output-abcde-snap-0123456789", "path": "step-1",
                                 "restoreSize": "10Gi", "storageClassName": "gp3"}}
    elif store_name == "snapshot-parts":  # assembled across two workers' volumes, each in its snapshot
        location = {"snapshotParts": SNAPSHOT_PARTS}
    else:
        location = {"volume": {"claimName": "producer-output-abcde", "path": "step-1"}}
    return [ResolvedInput(name="base", uid="u-base", digest=DIGEST, mount_name="base",
                          location=Location.model_validate(location), size_bytes=1024)]


def built_job(store_name: str, template: Optional[dict] = None, *, publish: str = "OnCompletion",
              replicas: int = 1, engine: str = "Job", labels: Optional[dict] = None, attempt: int = 0,
              output: Optional[dict] = None, inputs_from: Optional[str] = None) -> dict[str, Any]:
    """The Job (or, with engine JobSet, the JobSet) the operator creates for the TrainingJob."""
    cfg = config(store_name)
    store = store_for(cfg)
    tj = training_job(template, publish=publish, replicas=replicas, engine=engine, labels=labels, output=output)
    inputs = _inputs(inputs_from or store_name)
    sidecar = workload.build_live_sidecar(tj, cfg, store.live_upload_prefix(tj), store.agent_env(),
                                          sync=store.syncs_before_snapshots) if publish == "Continuous" else None
    return workload.build_workload(tj, inputs, store.input_volumes(tj, inputs), sidecar, attempt=attempt).job


def built_service(replicas: int = 2) -> dict[str, Any]:
    """The headless Service of a distributed job's workers."""
    return {"apiVersion": "v1", "kind": "Service", **workload.build_rendezvous_service(training_job(replicas=replicas))}


def job_pod(job: dict[str, Any], replicated: int = 0) -> dict[str, Any]:
    """The pod the Job controller creates from the Job's template (a JobSet's: its child Job's, of
    replicated job `replicated`)."""
    if job["kind"] == "JobSet":
        template = copy.deepcopy(job["spec"]["replicatedJobs"][replicated]["template"]["spec"]["template"])
    else:
        template = copy.deepcopy(job["spec"]["template"])
    metadata = {**template.get("metadata", {}), "name": f"{job['metadata']['name']}-x7k2p",
                "namespace": job["metadata"]["namespace"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def training_pods(template: Optional[dict] = None) -> dict[str, dict[str, Any]]:
    pods = {}
    for store_name in STORES:
        for publish in ("OnCompletion", "Continuous"):
            for replicas in (1, 2):
                name = f"{store_name}/training/{publish}/replicas-{replicas}"
                pods[name] = job_pod(built_job(store_name, template, publish=publish, replicas=replicas))
            pods[f"{store_name}/training/{publish}/jobset"] = job_pod(
                built_job(store_name, template, publish=publish, replicas=2, engine="JobSet"))
        pods[f"{store_name}/training/volume-per-worker"] = job_pod(
            built_job(store_name, template, replicas=2, engine="JobSet", output={"volumePerWorker": True}), 1)
    for publish in ("OnCompletion", "Continuous"):  # inputs from the node cache: its sidecar and fills
        pods[f"s3-cache/training/{publish}"] = job_pod(built_job("s3-cache", template, publish=publish))
    pods["s3-cache/training/jobset"] = job_pod(built_job("s3-cache", template, replicas=2, engine="JobSet"))
    pods["volume/training/input-assembled-across-workers"] = job_pod(built_job("volume", template,
                                                                               inputs_from="volume-parts"))
    pods["snapshots/training/input-assembled-across-workers"] = job_pod(built_job("snapshots", template,
                                                                                  inputs_from="snapshot-parts"))
    return pods
