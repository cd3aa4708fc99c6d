"""Whether kopf is paused (`paused`): what the operator still needs of kopf's internals (kopf 1.45).

kopf's peering freezes the operator while a peer of higher priority runs, through one
`ToggleSet(any)` per operator (`operator_paused`) that `kopf._core.reactor.running` creates and
hands to its orchestrator (and from there to the watch streams of resources with handlers; the
operator has none now: reconcile/informer.py watches every kind). A wrapper of
`orchestration.orchestrator` records it per event loop, so the operator's own informer
(reconcile/informer.py Holding) holds its wake-ups while kopf is frozen, as kopf's streams
would have delivered nothing.

(Before the custom resources moved to the informer, this module also made kopf's index
pre-population linear in the objects listed: with no `kopf.index` left, kopf pre-populates
nothing, and that change is gone.)

Applied only to the kopf versions it was checked against; elsewhere kopf is left as it is (and
`paused` is always False).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Callable

import kopf
from kopf._cogs.aiokits import aiotoggles
from kopf._core.reactor import orchestration

logger = logging.getLogger(__name__)

CHECKED_VERSIONS = ("1.45.",)  # kopf/_core/reactor/running.py and orchestration.py as read for this change

# kopf's operator_paused per event loop (one kopf operator per loop), as its orchestrator got it.
_PAUSES: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiotoggles.ToggleSet]" = weakref.WeakKeyDictionary()


def record(operator_paused: aiotoggles.ToggleSet) -> None:
    """Keep kopf's operator_paused for the running loop."""
    try:
        _PAUSES[asyncio.get_running_loop()] = operator_paused
    except RuntimeError:  # no loop: nothing to record it for
        pass


def _recording(orchestrator: Callable[..., Any]) -> Callable[..., Any]:
    def recording_orchestrator(*, operator_paused: aiotoggles.ToggleSet, **kwargs: Any) -> Any:
        record(operator_paused)
        return orchestrator(operator_paused=operator_paused, **kwargs)
    recording_orchestrator._ckpt_recording = True  # type: ignore[attr-defined]
    return recording_orchestrator


def paused(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the kopf operator of `loop` is paused (a peer of higher priority runs). Read from any
    thread: a set of toggles that changes while it is read counts as paused (it is being paused or
    resumed; the next read tells)."""
    toggles = _PAUSES.get(loop)
    if toggles is None:
        return False
    try:
        return bool(toggles.is_on())
    except RuntimeError:
        return True


def apply() -> bool:
    """Install the wrapper once; False (and kopf untouched) for an unchecked kopf version."""
    version = getattr(kopf, "__version__", "")
    if getattr(orchestration.orchestrator, "_ckpt_recording", False):
        return True
    if not version.startswith(CHECKED_VERSIONS):
        logger.info("kopf %s: whether peering paused the operator is not read (checked: %s)", version,
                    CHECKED_VERSIONS)
        return False
    orchestration.orchestrator = _recording(orchestration.orchestrator)
    return True
