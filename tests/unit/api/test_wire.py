"""The raw views of the hot paths (api/wire.py) name only fields the api models have: a field
renamed in a model fails here, not silently in the index functions or the wake-ups."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel

from checkpoint_operator.api import wire
from checkpoint_operator.api.checkpoint import (Checkpoint, SealedData, CheckpointHead, CheckpointSource, CheckpointSpec,
                                               CheckpointStatus, TrainingJobSource, VolumeSource)
from checkpoint_operator.api.common import ObjectRef, PinnedCheckpoint
from checkpoint_operator.api.meta import ObjectMeta, OwnerReference
from checkpoint_operator.api.trainingjob import (CheckpointRef, KeepBest, OutputSpec, RetentionSpec, TrainingJob,
                                                 TrainingJobSpec, TrainingJobStatus)

MODELS: dict[type, type[BaseModel]] = {
    wire.OwnerReferenceWire: OwnerReference, wire.MetadataWire: ObjectMeta, wire.ObjectRefWire: ObjectRef,
    wire.TrainingJobSourceWire: TrainingJobSource, wire.SealedDataWire: SealedData, wire.VolumeSourceWire: VolumeSource,
    wire.CheckpointSourceWire: CheckpointSource, wire.CheckpointSpecWire: CheckpointSpec,
    wire.CheckpointStatusWire: CheckpointStatus, wire.CheckpointWire: Checkpoint,
    wire.CheckpointRefWire: CheckpointRef, wire.KeepBestWire: KeepBest, wire.RetentionWire: RetentionSpec,
    wire.OutputWire: OutputSpec, wire.TrainingJobSpecWire: TrainingJobSpec,
    wire.PinnedCheckpointWire: PinnedCheckpoint, wire.TrainingJobStatusWire: TrainingJobStatus,
    wire.TrainingJobWire: TrainingJob, wire.ObjectWire: CheckpointHead,
}


def _models_in(annotation: object) -> set[type]:
    """The classes an annotation names (through Optional, list, dict, Annotated)."""
    if isinstance(annotation, type):
        return {annotation}
    return {m for arg in typing.get_args(annotation) for m in _models_in(arg)}


def test_every_view_is_checked():
    views = {v for v in vars(wire).values() if typing.is_typeddict(v)}
    assert views == set(MODELS)


@pytest.mark.parametrize("view", list(MODELS), ids=lambda v: v.__name__)
def test_each_key_of_a_view_is_a_field_of_its_model(view):
    model = MODELS[view]
    for key, annotation in typing.get_type_hints(view).items():
        assert key in model.model_fields, f"{view.__name__}.{key}: {model.__name__} has no field {key!r}"
        nested = [v for v in _models_in(annotation) if typing.is_typeddict(v)]
        for inner in nested:  # a nested view is the view of the field's own model
            assert MODELS[inner] in _models_in(model.model_fields[key].annotation), \
                f"{view.__name__}.{key}: {inner.__name__} is not the view of {model.__name__}.{key}"
