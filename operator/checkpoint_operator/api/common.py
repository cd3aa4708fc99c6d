"""Types shared by both resources: conditions, object references and the Phase base."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Literal, Mapping, Optional

from pydantic import Field

from checkpoint_operator.api import cel_quantity
from checkpoint_operator.api.urls import TEXT_FORBIDDEN_CHAR, cel_matches, cel_string
from checkpoint_operator.api.rules import (ApiModel, ConditionType, Count, Digest, Message, Name, Reason, Rule, Timestamp,
                                           Uid)


class Condition(ApiModel):
    """A kstatus-style condition, as metav1.Condition."""

    type: ConditionType = Field(description="Kind of condition: Ready, Reconciling or Stalled.")
    status: Literal["True", "False", "Unknown"] = Field(description="Status of the condition: True, False or Unknown.")
    reason: Reason = Field(description="One-word CamelCase reason for the last transition.")
    message: Message = Field("", description="Human-readable details of the last transition.")
    lastTransitionTime: Timestamp = Field(description="When the status last changed (RFC 3339).")
    observedGeneration: Optional[Count] = Field(
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
    sizeBytes: Optional[Count] = Field(None, description="Size of the Checkpoint's data (sizes staging volumes and "
                                                         "deadlines).")
    kind: Optional[Literal["ClusterCheckpoint"]] = Field(
        None, description="ClusterCheckpoint for a catalog entry (cluster-scoped); empty for a Checkpoint of the namespace.")


def ready_reason(conditions: Optional[list[Condition]]) -> Optional[str]:
    """The reason of the Ready condition, if there is one."""
    ready = next((c for c in conditions or [] if c.type == "Ready"), None)
    return ready.reason if ready else None


class Phase(str, Enum):
    """Base of the phase enums: compares and serialises as its string value."""

    def __str__(self) -> str:
        return str(self.value)


class PodPhase(Phase):
    """A pod's status.phase (core/v1); a pod without one yet is Pending."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> "PodPhase":
        try:
            return cls((pod.get("status") or {}).get("phase") or cls.PENDING)
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_live(self) -> bool:
        return self in (PodPhase.PENDING, PodPhase.RUNNING)


QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
# A quantity of QUANTITY_PATTERN that is zero (0, 0Gi, 00.000M): the API server refuses a volume of
# that size ("must be greater than zero"). Written without backslashes: the same text is a CEL literal.
ZERO_QUANTITY = r"^0+([.]0+)?[A-Za-z]*$"


def is_zero_quantity(text: str) -> bool:
    return re.fullmatch(ZERO_QUANTITY, text) is not None


def size_limit_rule(field: str, where: str) -> Rule:
    """A size limit (maxSize) is a whole number of bytes, above zero and within int64 (what every size
    the operator compares it with is): Kubernetes' CEL quantity library, in the API server since 1.28
    (api/cel_quantity.py is its Python twin for local mode). A text that is no quantity is left to
    the field's pattern, which names it."""
    quantity = f"quantity(self.{field})"
    return Rule(f"!has(self.{field}) || !isQuantity(self.{field}) || ({quantity}.sign() == 1 && {quantity}.isInteger())",
                f"{where} must be a whole number of bytes above zero and below 8Ei (2^63), such as 500Gi",
                lambda s: field not in s or not cel_quantity.is_quantity(s[field])
                or _positive_int64(cel_quantity.quantity(s[field])), field_path=f".{field}")


def description_rule(where: str, field: str = "description") -> Rule:
    """Free text shown to humans (kubectl describe, the catalog): no control character but tab and
    newline (an escape sequence would recolour or rewrite a terminal, a carriage return overprint a
    line) and no invisible one (a bidirectional control makes `txt.exe` of `exe.txt`)."""
    return Rule(f"!has(self.{field}) || !self.{field}.matches({cel_string(TEXT_FORBIDDEN_CHAR)})",
                f"{where} must not hold control characters other than tab and newline, nor invisible ones (an "
                f"escape, a bell, a carriage return, a bidirectional control, a zero-width space...)",
                lambda s: field not in s or not cel_matches(TEXT_FORBIDDEN_CHAR, s[field]), field_path=f".{field}")


def _positive_int64(quantity: dict[str, str]) -> bool:
    return cel_quantity.sign(quantity) == 1 and cel_quantity.is_integer(quantity)

_SUFFIXES = {"": 1, "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12, "P": 10 ** 15, "E": 10 ** 18,
             "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}


MAX_QUANTITY_BYTES = 2 ** 63 - 1  # Kubernetes' int64: anything larger is no size
_MAX_QUANTITY_CHARS = 64  # as the CRD's size fields (maxLength): parsing stays bounded whatever the input


def parse_quantity(text: str) -> int:
    """`500Gi` -> bytes; a plain number is bytes. Exact (integer arithmetic, never a float: hostile3
    F6's 400-digit size was `inf`), bounded in length and in value (int64). ValueError names what is
    allowed, in one line, with the text shortened."""
    stripped = text.strip()
    match = re.fullmatch(r"([0-9]+)(?:\.([0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", stripped) \
        if len(stripped) <= _MAX_QUANTITY_CHARS else None
    value: Optional[int] = None
    if match:
        whole, fraction, unit = match.group(1), match.group(2) or "", _SUFFIXES[match.group(3) or ""]
        value = (int(whole) * 10 ** len(fraction) + int(fraction or "0")) * unit // 10 ** len(fraction)
    if value is None or value > MAX_QUANTITY_BYTES:
        shown = repr(text[:60])
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ValueError(f"{shown} is not a size: use a number of bytes or a quantity such as 500Gi or 10G "
                         f"(below 8Ei)")
    return value


# The newest; an older one is long handed over (or its snapshot is taken again). A job with a volume per
# worker records one end-of-job snapshot per worker volume (at most api.trainingjob.MAX_WORKER_VOLUMES, 128)
# at once: the bound leaves room for them and for live snapshots besides.
MAX_VOLUME_SNAPSHOT_RECORDS = 160


class VolumeSnapshotRecord(ApiModel):
    """A VolumeSnapshot the operator created, as its create call answered: only such a snapshot is
    taken as a checkpoint's (one made by anyone else under a name the operator would use is not)."""

    key: Name = Field(description="What it was taken for: the volume and the purpose, as a name "
                                  "(logic/volume_snapshots.py, volume_snapshot_name).")
    name: Name = Field(description="The VolumeSnapshot's name (the key and a random part).")
    uid: Uid = Field(description="The VolumeSnapshot's UID, so that a re-created namesake is told apart.")

