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


# The loops whose kopf orchestrator arranged its tasks once (adjust_tasks: the peering toggles made,
# turned on until the peers are read when peering is mandatory; kopf's watch streams spawned after).
_ARRANGED: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, bool]" = weakref.WeakKeyDictionary()


def _arranging(adjust_tasks: Callable[..., Any]) -> Callable[..., Any]:
    async def arranging_adjust_tasks(**kwargs: Any) -> None:
        await adjust_tasks(**kwargs)
        try:
            _ARRANGED[asyncio.get_running_loop()] = True
        except RuntimeError:  # no loop: nothing to record it for
            pass
    arranging_adjust_tasks._ckpt_recording = True  # type: ignore[attr-defined]
    return arranging_adjust_tasks


def may_act(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the replica of `loop` may act (reconcile, write): kopf's orchestrator has arranged its
    peering once and the replica is not paused. kopf's own watch streams started only there, after
    the peering toggles (with mandatory peering: on until the peers are read), so a standby replica
    never ran a handler; the operator's informer starts earlier (start-up), so the queue waits for
    this instead (hostile12 H12-1). True wherever the wrappers are not applied (an unchecked kopf)."""
    if not getattr(orchestration.adjust_tasks, "_ckpt_recording", False):
        return True
    return _ARRANGED.get(loop, False) and not paused(loop)


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
    if not getattr(orchestration.adjust_tasks, "_ckpt_recording", False):
        orchestration.adjust_tasks = _arranging(orchestration.adjust_tasks)
    return True
