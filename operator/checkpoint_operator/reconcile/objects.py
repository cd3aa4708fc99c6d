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
from pydantic_core import ErrorDetails

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointHead
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint, ClusterCheckpointHead
from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobHead

Obj = TypeVar("Obj", TrainingJob, Checkpoint, ClusterCheckpoint)
Head = TypeVar("Head", TrainingJobHead, CheckpointHead, ClusterCheckpointHead)


@dataclass
class InvalidObject(Exception):
    body: dict[str, Any]
    error: pydantic.ValidationError

    def message(self) -> str:
        def one(error: ErrorDetails) -> str:
            message = error["msg"].removeprefix("Value error, ")
            if message.startswith("spec."):  # our CEL-twin messages already name the field
                return message
            return f"{'.'.join(str(p) for p in error['loc'])}: {message}" if error["loc"] else message
        return "; ".join(one(e) for e in self.error.errors())


def parse(model: type[Obj], body: dict[str, Any]) -> Obj:
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as error:
        raise InvalidObject(body, error) from None


def parse_head(model: type[Head], body: dict[str, Any]) -> Head:
    """Metadata and status only (whatever the spec holds): enough to write the status."""
    return model.model_validate({k: v for k, v in body.items() if k != "spec"})
