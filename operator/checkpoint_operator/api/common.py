"""Types shared by both resources: conditions and object references."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from checkpoint_operator.api.rules import ApiModel, ConditionType, Digest, Message, Name, Reason, Timestamp, Uid


class Condition(ApiModel):
    """A kstatus-style condition, as metav1.Condition."""

    type: ConditionType = Field(description="Kind of condition: Ready, Reconciling or Stalled.")
    status: Literal["True", "False", "Unknown"] = Field(description="Status of the condition: True, False or Unknown.")
    reason: Reason = Field(description="One-word CamelCase reason for the last transition.")
    message: Message = Field("", description="Human-readable details of the last transition.")
    lastTransitionTime: Timestamp = Field(description="When the status last changed (RFC 3339).")
    observedGeneration: Optional[int] = Field(
        None, description="The .metadata.generation the condition was computed from.")


class ObjectRef(ApiModel):
    """A reference to an object of the same namespace by name and uid."""

    name: Name = Field(description="Name of the object.")
    uid: Optional[Uid] = Field(None, description="UID of the object, so that a re-created namesake is told apart.")


class PinnedCheckpoint(ApiModel):
    """An input checkpoint as resolved when a job started: later changes cannot affect it."""

    name: Name = Field(description="Name of the Checkpoint.")
    uid: Uid = Field(description="UID of the Checkpoint.")
    digest: Optional[Digest] = Field(None, description="Digest (sha256 of the manifest) of the Checkpoint's data.")
