"""What a reconcile step decided: the handlers apply it, the driver records it.

Every step function returns one of these, so a step's decision can be unit-tested without an
API: `Advance` (this phase is done, go on with the next at once), `Wait` (nothing more to do
until an event or `requeue_after` seconds; `reason`/`message` go into the Ready condition when
given), `Fail` (terminal: the object becomes Failed with the reason) and `Done`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union


@dataclass(frozen=True)
class Advance:
    pass


@dataclass(frozen=True)
class Wait:
    reason: Optional[str] = None      # None: a quiet wait (nothing to record)
    message: str = ""
    requeue_after: Optional[float] = None  # None: an event will wake the object
    stalled: bool = False             # will not end by itself (kstatus Stalled, GitOps Degraded)
    warning: bool = True              # the event's type when the reason or message changes


@dataclass(frozen=True)
class Fail:
    reason: str
    message: str


@dataclass(frozen=True)
class Done:
    pass


Result = Union[Advance, Wait, Fail, Done]
