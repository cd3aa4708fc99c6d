"""A model's validation errors as the one line a person reads (the operator's status, local mode's
refusal): each error as `<field path>: <what is wrong>`, without pydantic's wrapping (`Value error, `,
a model-level error's empty field `spec.`), and an unknown field named with the fields allowed there
(hostile3 F11: `spec.source.volume: Extra inputs are not permitted` said nothing of what an entry takes).
"""

from __future__ import annotations

import typing
from typing import Any, Optional

import pydantic
from pydantic_core import ErrorDetails

from checkpoint_operator.api.clustercheckpoint import ClusterCheckpointSource

# What a catalog entry's source refuses, and why: a person who wrote one of these meant a Checkpoint.
NOT_OF_AN_ENTRY = {"volume": "adopted", "trainingJob": "produced", "upload": "pushed"}


def _model_of(annotation: Any) -> Optional[type[pydantic.BaseModel]]:
    """The model a field holds (through Optional, lists and dicts), or None."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    if typing.get_origin(annotation) is not None:  # Optional, Union, list, dict, Annotated
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _fields_at(model: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> Optional[list[str]]:
    """The wire names of the fields of the model at `loc` (a path below `model`), or None."""
    current: Optional[type[pydantic.BaseModel]] = model
    for part in loc:
        if current is None:
            return None
        if not isinstance(part, str):
            continue  # a list index or a dict key: the same model
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        current = _model_of(field.annotation) if field is not None else None
    if current is None:
        return None
    return [f.alias or n for n, f in current.model_fields.items()]


def describe_error(error: ErrorDetails, model: type[pydantic.BaseModel], root: str) -> str:
    """One error of `model` (validated as `root`, e.g. "spec") as `<path>: <message>`."""
    loc = tuple(error["loc"])
    path = ".".join([root, *(str(p) for p in loc)]) if root else ".".join(str(p) for p in loc)
    message = error["msg"].removeprefix("Value error, ")
    if message.startswith(("spec.", f"{root}.")):
        return message  # the CEL-twin rules' messages name their field already
    if error["type"] == "extra_forbidden" and loc:
        allowed = _fields_at(model, loc[:-1])
        message = f"is not a field here (allowed: {', '.join(allowed)})" if allowed else "is not a field here"
        if (loc[-1] in NOT_OF_AN_ENTRY and allowed is not None
                and set(allowed) == set(ClusterCheckpointSource.model_fields)):
            message = (f"a ClusterCheckpoint is imported: set one of {', '.join(allowed)}; a catalog entry is "
                       f"never {NOT_OF_AN_ENTRY[str(loc[-1])]} (volume, trainingJob and upload are a Checkpoint's "
                       f"sources)")
    return f"{path}: {message}" if path else message


def describe(error: pydantic.ValidationError, model: type[pydantic.BaseModel], root: str = "") -> str:
    """Every error of `error` in one line, `; `-separated."""
    return "; ".join(describe_error(e, model, root) for e in error.errors())
