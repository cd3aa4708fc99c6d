"""The kopf/API boundary: bodies become api models here, once, with the CRD's defaults.

A spec that does not validate (an API server without the CRD's schema, such as an emulator, or
a spec from before a model change) is kept as the raw body in `InvalidObject` so the handler
can fail the object with the message instead of crashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import pydantic

from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint
from checkpoint_operator.api.meta import ObjectMeta
from checkpoint_operator.api.trainingjob import TrainingJob

Obj = TypeVar("Obj", TrainingJob, Checkpoint, ClusterCheckpoint)


@dataclass
class InvalidObject(Exception):
    body: dict
    error: pydantic.ValidationError

    def message(self) -> str:
        def one(error: dict) -> str:
            message = error["msg"].removeprefix("Value error, ")
            if message.startswith("spec."):  # our CEL-twin messages already name the field
                return message
            return f"{'.'.join(str(p) for p in error['loc'])}: {message}" if error["loc"] else message
        return "; ".join(one(e) for e in self.error.errors())


def parse(model: type[Obj], body: dict) -> Obj:
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as error:
        raise InvalidObject(body, error) from None


def parse_tolerant(model: type[Obj], body: dict) -> Obj:
    """`parse`, or for an invalid spec an object with metadata and status only (spec None), so
    its status can still be written."""
    try:
        return parse(model, body)
    except InvalidObject:
        status_model = model.model_fields["status"].annotation
        return model.model_construct(apiVersion=body.get("apiVersion", ""), kind=body.get("kind", model.__name__),
                                     metadata=ObjectMeta.model_validate(body.get("metadata") or {}), spec=None,
                                     status=status_model.model_validate(body.get("status") or {}))
