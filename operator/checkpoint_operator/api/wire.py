"""The raw (JSON) form of the objects, as far as the hot paths read it without parsing a model.

kopf hands every event's body as a mapping; the index functions and the wake-up mapping run on
every event of every object (10,000 Checkpoints at start-up), where validating the full models
would cost most of the operator's CPU. They read these typed views instead: the type checker
refuses a key that is not here, and tests/test_api_wire.py refuses a key here that the api
models do not have, so a renamed field fails a test instead of reading as absent.

Only what is read is declared; every key is optional (total=False), as in a body.
"""

from __future__ import annotations

from typing import Any, Mapping, TypedDict, cast


class OwnerReferenceWire(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    uid: str


class MetadataWire(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    resourceVersion: str
    creationTimestamp: str
    deletionTimestamp: str
    labels: dict[str, str]
    annotations: dict[str, str]
    finalizers: list[str]
    ownerReferences: list[OwnerReferenceWire]


class ObjectRefWire(TypedDict, total=False):
    name: str
    uid: str


class SealedDataWire(TypedDict, total=False):
    digest: str
    step: int
    complete: bool
    resumable: bool
    metrics: dict[str, float]


class TrainingJobSourceWire(TypedDict, total=False):
    name: str
    uid: str
    directory: str
    sealed: SealedDataWire
    signature: str


class VolumeSourceWire(TypedDict, total=False):
    claimName: str
    path: str


class CheckpointSourceWire(TypedDict, total=False):
    trainingJob: TrainingJobSourceWire
    volume: VolumeSourceWire


class CheckpointSpecWire(TypedDict, total=False):
    source: CheckpointSourceWire


class CheckpointStatusWire(TypedDict, total=False):
    phase: str
    step: int
    complete: bool
    resumable: bool
    digest: str
    sizeBytes: int
    location: dict[str, Any]
    metrics: dict[str, float]
    producedBy: ObjectRefWire
    usedBy: list[ObjectRefWire]
    usedByCount: int
    cachedOn: list[str]


class CheckpointWire(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: MetadataWire
    spec: CheckpointSpecWire
    status: CheckpointStatusWire


class CheckpointRefWire(TypedDict, total=False):
    name: str
    uid: str
    fromTrainingJob: str
    clusterCheckpoint: str


class KeepBestWire(TypedDict, total=False):
    metric: str
    mode: str


class RetentionWire(TypedDict, total=False):
    keepBest: KeepBestWire


class OutputWire(TypedDict, total=False):
    retention: RetentionWire


class TrainingJobSpecWire(TypedDict, total=False):
    checkpoints: list[CheckpointRefWire]
    output: OutputWire
    template: dict[str, Any]  # the pod template (only the claims it names are read: logic/claim_guard.py)


class PinnedCheckpointWire(TypedDict, total=False):
    name: str
    uid: str


class TrainingJobStatusWire(TypedDict, total=False):
    phase: str
    publish: str
    inputs: list[PinnedCheckpointWire]


class TrainingJobWire(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: MetadataWire
    spec: TrainingJobSpecWire
    status: TrainingJobStatusWire


class ObjectWire(TypedDict, total=False):
    """Any object: a pod, a Job, a PVC (their metadata only)."""

    apiVersion: str
    kind: str
    metadata: MetadataWire


def checkpoint_wire(body: Mapping[str, Any]) -> CheckpointWire:
    """A Checkpoint's body as kopf or the API gave it, read through its typed view (no copy)."""
    return cast(CheckpointWire, body)


def training_job_wire(body: Mapping[str, Any]) -> TrainingJobWire:
    return cast(TrainingJobWire, body)


def object_wire(body: Mapping[str, Any]) -> ObjectWire:
    return cast(ObjectWire, body)
