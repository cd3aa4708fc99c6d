"""A status change as data, and how it applies to a status (pure; reconcile/status_writer.py writes it).

Every status change of both kinds is a `StatusChange`: the phase, the Ready condition's reason
and message, kstatus' Reconciling/Stalled (derived the same way for both kinds), named extra
conditions (Complete, OutputRetained) and plain fields (a None value removes the field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from checkpoint_operator.logic.conditions import get_condition, kstatus_conditions, one_line_message, set_condition


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
    fields: Mapping[str, Any] = field(default_factory=dict)
    conditions: tuple[ConditionChange, ...] = ()

    def __post_init__(self) -> None:  # every message of a status is one line (and so its event)
        object.__setattr__(self, "message", one_line_message(self.message))


def apply_change(status: Mapping[str, Any], change: StatusChange, *, generation: Optional[int], now: str,
                 is_settled: Callable[[Optional[str]], bool]) -> dict:
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
    for key, value in change.fields.items():
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


def status_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict:
    """The JSON merge patch (RFC 7386) from `before` to `after`: None removes a key, at any
    depth, since a merge patch merges objects (a nested key left out would stay)."""
    patch: dict = {}
    for key, value in after.items():
        old = before.get(key)
        if old == value:
            continue
        patch[key] = status_patch(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    patch.update({k: None for k in before if k not in after})
    return patch
