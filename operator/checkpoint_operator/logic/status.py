"""A status change as data, and how it applies to a status (pure; reconcile/status_writer.py writes it).

Every status change of both kinds is a `StatusChange`: the phase, the Ready condition's reason
and message, kstatus' Reconciling/Stalled (derived the same way for both kinds), named extra
conditions (Complete, OutputRetained) and plain fields: a partial status model, whose fields
given (`model_fields_set`) are set, and removed when given as None.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union

from checkpoint_operator.api.checkpoint import CheckpointStatus
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpointStatus
from checkpoint_operator.api.trainingjob import TrainingJobStatus
from checkpoint_operator.logic.conditions import get_condition, kstatus_conditions, one_line_message, set_condition
from checkpoint_operator.logic.results import Fail, Wait

# The status fields a change sets: validated when the change is made, so a misspelt or
# mistyped field fails where it is written (and mypy checks the names).
StatusFields = Union[CheckpointStatus, TrainingJobStatus, ClusterCheckpointStatus]


@dataclass(frozen=True)
class ConditionChange:
    type: str
    status: str      # "True" | "False" | "Unknown"
    reason: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", one_line_message(self.message))


@dataclass(frozen=True)
class StatusChange:
    phase: Optional[str] = None          # None: keep the phase
    reason: Optional[str] = None         # None: leave the Ready condition as it is
    message: str = ""
    ready: bool = False
    stalled: bool = False
    event: Optional[str] = None          # "Normal" | "Warning": posted when reason or message changed
    fields: Optional[StatusFields] = None
    conditions: tuple[ConditionChange, ...] = ()

    def __post_init__(self) -> None:  # every message of a status is one line (and so its event)
        object.__setattr__(self, "message", one_line_message(self.message))

    def with_fields(self, more: StatusFields) -> StatusChange:
        """This change, also setting (or removing) the fields `more` names."""
        if self.fields is None:
            return dataclasses.replace(self, fields=more)
        if type(more) is not type(self.fields):
            raise TypeError(f"{type(more).__name__} fields added to a change of {type(self.fields).__name__}")
        values = {name: getattr(self.fields, name) for name in self.fields.model_fields_set}
        values.update({name: getattr(more, name) for name in more.model_fields_set})
        return dataclasses.replace(self, fields=type(more).model_validate(values))


def wait_change(phase: Optional[str], wait: Wait) -> Optional[StatusChange]:
    """What a wait records: its reason and message in the Ready condition (None: a quiet wait)."""
    if wait.reason is None:
        return None
    return StatusChange(phase=phase, reason=wait.reason, message=wait.message, stalled=wait.stalled,
                        event="Warning" if wait.warning else "Normal")


def fail_change(phase: str, fail: Fail, fields: Optional[StatusFields] = None) -> StatusChange:
    """What a failure records: the failed phase, Stalled, a warning event."""
    return StatusChange(phase=phase, reason=fail.reason, message=fail.message, stalled=True, event="Warning",
                        fields=fields)


def set_fields(fields: Optional[StatusFields]) -> dict[str, Any]:
    """The wire form of the fields a partial status names; None for the ones it removes."""
    if fields is None:
        return {}
    wire = fields.to_wire()
    return {name: wire.get(name) for name in fields.model_fields_set}


def apply_change(status: Mapping[str, Any], change: StatusChange, *, generation: Optional[int], now: str,
                 is_settled: Callable[[Optional[str]], bool]) -> dict[str, Any]:
    """The whole new status. Reconciling is True while the object is neither ready, stalled
    nor settled; lastTransitionTime moves only when a condition's status does."""
    new = {k: v for k, v in status.items()}
    phase = change.phase or status.get("phase")
    conditions = status.get("conditions")
    if change.reason is not None:
        reconciling = not (change.ready or change.stalled or is_settled(phase))
        conditions = kstatus_conditions(conditions, ready=change.ready, reason=change.reason, message=change.message,
                                        generation=generation, now=now, reconciling=reconciling,
                                        stalled=change.stalled)
        new.update({"message": change.message, "observedGeneration": generation})
    for extra in change.conditions:
        conditions = set_condition(conditions, extra.type, extra.status, extra.reason, extra.message, generation, now)
    if conditions is not None:
        new["conditions"] = conditions
    if phase is not None:
        new["phase"] = phase
    for key, value in set_fields(change.fields).items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = value
    return new


def should_post_event(before: Mapping[str, Any], change: StatusChange) -> bool:
    """One event per change of reason or message: a wait that lasts an hour is one event."""
    if not change.event or change.reason is None:
        return False
    previous = get_condition(before.get("conditions"), "Ready") or {}
    return (previous.get("reason"), previous.get("message")) != (change.reason, change.message)


def status_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) from `before` to `after`: None removes a key, at any
    depth, since a merge patch merges objects (a nested key left out would stay)."""
    patch: dict[str, Any] = {}
    for key, value in after.items():
        old = before.get(key)
        if old == value:
            continue
        patch[key] = status_patch(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    patch.update({k: None for k in before if k not in after})
    return patch
