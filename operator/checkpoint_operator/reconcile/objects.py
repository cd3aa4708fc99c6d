"""The kopf/API boundary: bodies become api models here, once, with the CRD's defaults.

A spec that does not validate (stored before a CRD upgrade tightened a rule, or written to an
API server without the CRD's schema) is kept as the raw body in `InvalidObject`, so the
reconcile can still read the object's head (metadata and status: `parse_head`) to fail or
delete it, instead of crashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointHead
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint, ClusterCheckpointHead
from checkpoint_operator.api.messages import describe
from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobHead

Obj = TypeVar("Obj", TrainingJob, Checkpoint, ClusterCheckpoint)
Head = TypeVar("Head", TrainingJobHead, CheckpointHead, ClusterCheckpointHead)


@dataclass
class InvalidObject(Exception):
    body: dict[str, Any]
    error: pydantic.ValidationError

    model: type[pydantic.BaseModel] = pydantic.BaseModel  # what it was validated as: names the allowed fields

    def message(self) -> str:
        return describe(self.error, self.model)


def parse(model: type[Obj], body: dict[str, Any]) -> Obj:
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as error:
        raise InvalidObject(body, error, model) from None


def parse_head(model: type[Head], body: dict[str, Any]) -> Head:
    """Metadata and status only (whatever the spec holds): enough to write the status."""
    return model.model_validate({k: v for k, v in body.items() if k != "spec"})
