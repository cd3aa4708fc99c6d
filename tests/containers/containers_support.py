"""Helpers of the containers tier (a module of its own: test modules import it by name, which
`from conftest import ...` cannot do reliably beside the integration tier's conftest)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_IMAGE = "localhost/ckpt-train:dev"

_spec = importlib.util.spec_from_file_location("integration_fixtures", HERE.parent / "integration" / "conftest.py")
integration = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = integration  # dataclasses look their module up there
_spec.loader.exec_module(integration)
Operator, training_job, NS, CKPT, TJ = (integration.Operator, integration.training_job, integration.NS,
                                        integration.CKPT, integration.TJ)


def python_job(name: str, script: str, *, checkpoints: list | None = None, user: int | None = 1000,
               control: Path | None = None, **spec) -> dict:
    """A TrainingJob whose trainer runs ``python -c SCRIPT`` in the training image, as ``user``;
    ``control``: a host directory mounted at /ctl (for a test to talk to the running job)."""
    tj = training_job(name, checkpoints=checkpoints, command=["python", "-c", script], **spec)
    pod_spec = tj["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    container["image"] = TRAIN_IMAGE
    if user is not None:
        pod_spec["securityContext"] = {"runAsUser": user, "runAsGroup": user, "runAsNonRoot": True}
    if control is not None:
        pod_spec["volumes"] = [{"name": "ctl", "hostPath": {"path": str(control)}}]
        container["volumeMounts"] = [{"name": "ctl", "mountPath": "/ctl"}]
    return tj
