"""Pods that run the operator's own image (`checkpoint-operator agent ...`): snapshot, scan,
import, download. The store-independent parts; the stores add their commands and env."""

from __future__ import annotations

import copy
from typing import Optional

from checkpoint_operator.config import OperatorConfig

AGENT_OUTPUT_MOUNT = "/checkpoint-output"
AGENT_DATA_MOUNT = "/checkpoint-data"


def agent_container(name: str, command: list[str], config: OperatorConfig, mounts: list[dict],
                    env: Optional[list[dict]] = None) -> dict:
    container = {"name": name, "image": config.agent_image, "imagePullPolicy": config.agent_image_pull_policy,
                 "command": command, "volumeMounts": mounts, "resources": copy.deepcopy(config.agent_resources)}
    if env:
        container["env"] = env
    return container


def agent_pod(metadata: dict, config: OperatorConfig, containers: list[dict], volumes: list[dict],
              init_containers: Optional[list[dict]] = None) -> dict:
    spec: dict = {"restartPolicy": "Never", "containers": containers, "volumes": volumes}
    if init_containers:
        spec["initContainers"] = init_containers
    if config.agent_service_account:
        spec["serviceAccountName"] = config.agent_service_account
    return {"metadata": metadata, "spec": spec}
