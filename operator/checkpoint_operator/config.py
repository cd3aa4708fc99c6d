"""Operator settings, read once from the environment (the Helm chart sets these variables)."""

from __future__ import annotations

import json
import os
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, Field, ValidationError, model_validator

from checkpoint_operator.api.common import QUANTITY_PATTERN, parse_quantity

ENV_PREFIX = "CKPT_"

# The operator's signing key (reconcile/signing_keys.py), in its own namespace (catalog_namespace).
SIGNING_KEY_SECRET = "checkpoint-operator-signing-key"
DEFAULT_IMAGE = "ghcr.io/ckpt-dev/checkpoint-operator:0.1.0"


class OperatorConfig(BaseModel):
    storage_type: Literal["volume", "s3"] = Field("volume", description="where checkpoint data lives")
    s3_endpoint: Optional[str] = Field(None, description="S3 endpoint URL; empty for AWS")
    s3_bucket: Optional[str] = None
    s3_prefix: str = "checkpoints"
    s3_region: Optional[str] = None
    s3_secret_name: Optional[str] = Field(
        None, description="Secret in each namespace with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for its agent pods, "
                          "scoped to s3://<bucket>/<prefix>/<namespace>/ (the operator's own credentials are its "
                          "environment and never go into a pod)")
    default_storage_class: Optional[str] = None
    volume_snapshot_class: Optional[str] = Field(
        None, description="volume store: take a CSI VolumeSnapshot of each output (and import) volume with this "
                          "VolumeSnapshotClass once its data is written; consumers get volumes restored from it, so "
                          "ReadWriteOnce block storage serves readers on any node (Helm storage.volume.snapshotClassName)")
    volume_restore_access_mode: Literal["ReadWriteOnce", "ReadOnlyMany"] = Field(
        "ReadWriteOnce", description="access mode of the volumes restored from snapshots (one per consumer pod, mounted "
                                     "read-only): ReadOnlyMany where the CSI driver supports it (GCE PD), which "
                                     "attaches it read-only (Helm storage.volume.restoreAccessMode)")
    default_output_size: str = "10Gi"
    agent_image: str = DEFAULT_IMAGE
    agent_image_pull_policy: str = "IfNotPresent"
    agent_resources: dict = Field(default_factory=lambda: {
        "requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}})
    agent_service_account: Optional[str] = None
    reconcile_interval: float = Field(
        1.0, gt=0, description="seconds: first retry after an error or a refused request (then doubled, up to 60)")
    resync_interval: float = Field(
        300.0, gt=0, description="seconds between safety-net passes over unfinished objects (events do the work)")
    workers: int = Field(16, ge=1, description="reconciles running at once (one per object at most)")
    agent_deadline_seconds: int = Field(3600, ge=60, description="activeDeadlineSeconds of every agent pod ...")
    agent_deadline_seconds_per_gib: float = Field(
        60.0, ge=0, description="... plus this per GiB of data, where its size is known (downloads, ...)")
    default_publish: Literal["OnCompletion", "Continuous"] = Field(
        "OnCompletion", description="spec.output.publish of TrainingJobs that do not set it")
    live_poll_interval: float = Field(
        1.0, gt=0, description="seconds between two reads of a running job's sealing sidecar log (publish: Continuous)")
    live_watch_interval: float = Field(0.25, gt=0, description="seconds between two looks of the sidecar at the output")
    live_upload_concurrency: int = Field(2, ge=1, description="parallel transfers of the sidecar's uploads (s3 store)")
    live_sidecar_resources: dict = Field(default_factory=lambda: {
        "requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}})
    rendezvous_address: Optional[str] = Field(
        default=None, description="MASTER_ADDR of every distributed job instead of worker 0's DNS name (local mode: "
                          "127.0.0.1, where every worker runs)")
    rendezvous_port: int = Field(
        default=29500, ge=0, le=65535, description="MASTER_PORT of distributed jobs; 0: a free port of this host, picked "
                                           "for each workload (local mode)")
    publish_timeout: float = Field(
        600.0, gt=0, le=7 * 24 * 3600,
        description="seconds a finished job waits for the Checkpoints its snapshot made to become Ready before it "
                    "fails naming them (CheckpointsNotReady): each is a pass or two, unless something holds it (Helm "
                    "publishTimeoutSeconds)")
    engine_check_interval: float = Field(
        default=30.0, gt=0, description="seconds between two looks for a missing engine (the JobSet CRD) of a waiting job")
    # Where ClusterCheckpoints are imported: the operator's own namespace (the chart sets it; else POD_NAMESPACE).
    catalog_namespace: str = "default"
    max_checkpoint_size: str = Field(
        "500Gi", pattern=QUANTITY_PATTERN,
        description="largest import (a quantity); a Namespace annotation ckpt.dev/max-checkpoint-size may lower it")

    cache_enabled: bool = Field(
        False, description="s3 store: a node-local cache of inputs (docs/node-cache.md): the first pod on a node "
                           "downloads an input into the node's cache volume, later pods there mount it read-only "
                           "(Helm cache.enabled)")
    cache_capacity: str = Field(
        "100Gi", pattern=QUANTITY_PATTERN,
        description="bytes each node's cache may hold, over every namespace; least recently used entries no pod "
                    "uses are evicted to make room (Helm cache.capacityPerNode)")
    cache_local_path: str = Field(
        "/var/lib/checkpoint-operator/cache", pattern=r"^/[^:]*$",
        description="the directory on every cache node that holds the cache (a local PersistentVolume's path; "
                    "it must exist, writable by uid 65532: Helm cache.localPath)")
    cache_storage_class: str = Field(
        "ckpt-node-cache", min_length=1, max_length=253,
        description="storageClassName of the cache's local PersistentVolumes and their claims (a class without a "
                    "provisioner; Helm cache.storageClassName)")
    cache_node_selector: dict = Field(
        default_factory=dict, description="labels of the nodes that have the cache directory (default: every Linux "
                                          "node; Helm cache.nodeSelector): cached inputs' pods run only there")
    cache_verify: Literal["sample", "full"] = Field(
        "sample", description="how a cached entry is checked on each use: sizes and a sample of blocks, or every "
                              "byte (Helm cache.verify)")

    @property
    def cache_capacity_bytes(self) -> int:
        return parse_quantity(self.cache_capacity)

    @property
    def max_checkpoint_bytes(self) -> int:
        return parse_quantity(self.max_checkpoint_size)

    @model_validator(mode="after")
    def _s3_store_needs_a_bucket(self):
        if self.storage_type == "s3" and not self.s3_bucket:
            raise ValueError("CKPT_S3_BUCKET must be set when CKPT_STORAGE_TYPE is s3")
        if self.cache_enabled and self.storage_type != "s3":
            raise ValueError("CKPT_CACHE_ENABLED (cache.enabled) caches inputs of the s3 store; CKPT_STORAGE_TYPE is "
                             f"{self.storage_type}")
        if self.storage_type != "volume" and self.volume_snapshot_class:
            raise ValueError("CKPT_VOLUME_SNAPSHOT_CLASS (storage.volume.snapshotClassName) is for the volume store; "
                             f"CKPT_STORAGE_TYPE is {self.storage_type}")
        return self

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "OperatorConfig":
        """CKPT_<FIELD> in upper case, e.g. CKPT_STORAGE_TYPE=s3, CKPT_AGENT_RESOURCES='{"limits":...}'.
        ConfigError: one line naming the first variable refused and what it allows."""
        source: Mapping[str, str] = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = source.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            try:
                values[name] = json.loads(raw) if field.annotation is dict else raw
            except ValueError:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()}: not JSON (a JSON object is expected)") from None
        pod_namespace = environ.get("POD_NAMESPACE") if environ is not None else None
        if "catalog_namespace" not in values and pod_namespace:
            values["catalog_namespace"] = pod_namespace
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc)) from None


class ConfigError(ValueError):
    """An operator setting refused: one line, the variable, its value and what is allowed."""


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    if not error["loc"]:  # a rule across settings: its own message names them
        return str(error["msg"]).removeprefix("Value error, ")
    name = str(error["loc"][0])
    field = OperatorConfig.model_fields.get(name)
    what = f" ({field.description})" if field is not None and field.description else ""
    value = str(error.get("input"))[:80]
    return f"{ENV_PREFIX}{name.upper()}={value}: {error['msg'][:1].lower()}{error['msg'][1:]}{what}"[:600]
