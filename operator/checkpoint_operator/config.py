"""Operator settings, read once from the environment (the Helm chart sets these variables)."""

from __future__ import annotations

import json
import os
from typing import Literal, Optional

from pydantic import BaseModel, Field, model_validator

ENV_PREFIX = "CKPT_"

DEFAULT_IMAGE = "ghcr.io/ckpt-dev/checkpoint-operator:0.1.0"


class OperatorConfig(BaseModel):
    storage_type: Literal["volume", "s3"] = Field("volume", description="where checkpoint data lives")
    s3_endpoint: Optional[str] = Field(None, description="S3 endpoint URL; empty for AWS")
    s3_bucket: Optional[str] = None
    s3_prefix: str = "checkpoints"
    s3_region: Optional[str] = None
    s3_secret_name: Optional[str] = Field(
        None, description="Secret (in each job's namespace) with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for agent pods")
    default_storage_class: Optional[str] = None
    default_output_size: str = "10Gi"
    agent_image: str = DEFAULT_IMAGE
    agent_image_pull_policy: str = "IfNotPresent"
    agent_resources: dict = Field(default_factory=lambda: {
        "requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}})
    agent_service_account: Optional[str] = None
    reconcile_interval: float = Field(5.0, gt=0, description="seconds between checks of unfinished objects")

    @model_validator(mode="after")
    def _s3_store_needs_a_bucket(self):
        if self.storage_type == "s3" and not self.s3_bucket:
            raise ValueError("CKPT_S3_BUCKET must be set when CKPT_STORAGE_TYPE is s3")
        return self

    @classmethod
    def from_env(cls, environ: Optional[dict[str, str]] = None) -> "OperatorConfig":
        """CKPT_<FIELD> in upper case, e.g. CKPT_STORAGE_TYPE=s3, CKPT_AGENT_RESOURCES='{"limits":...}'."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        for name, field in cls.model_fields.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            values[name] = json.loads(raw) if field.annotation is dict else raw
        return cls.model_validate(values)
