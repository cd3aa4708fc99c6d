"""kopf's index pre-population, made linear in the number of objects (kopf 1.45).

With `kopf.index` handlers, kopf holds back every object's handlers until every object of every
watched resource is indexed: each object gets a toggle in one `ToggleSet(all)`, made when its
first event arrives and dropped once indexed, and each worker then waits on the set. kopf's
`ToggleSet.make_toggle`/`drop_toggle` call `notify_all()` on every change, and every waiting
worker wakes and re-checks the set: quadratic in the objects listed. With 10,000 Checkpoints the
operator spent more than 15 minutes of CPU in `Condition.notify_all` before its first reconcile
(py-spy; `python bench/scale.py --only requests`).

Waiters of a ToggleSet only wait for its aggregate state (`wait_for(True/False)`), so it is
enough to notify when that state changes. The individual toggles keep notifying as before.

Also: whether kopf is paused (`paused`). kopf's peering freezes its watch streams while a peer of
higher priority runs, through one `ToggleSet(any)` per operator (`operator_paused`) that it hands
to every watch stream and keeps to itself otherwise. Each stream passes it to
`watching.streaming_block`; a wrapper of that records it per event loop, so the operator's own
informer (reconcile/informer.py Holding) holds its wake-ups while kopf is frozen, as kopf's
streams would have delivered nothing.

Applied only to the kopf versions it was checked against; elsewhere kopf is left as it is (and
`paused` is always False).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Callable, Iterable

import kopf
from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.clients import watching

logger = logging.getLogger(__name__)

CHECKED_VERSIONS = ("1.45.",)  # kopf/_cogs/aiokits/aiotoggles.py as read for this change


async def _make_toggle(self: aiotoggles.ToggleSet, __val: bool = False, *,
                       name: str | None = None) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggles(self: aiotoggles.ToggleSet, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    await _drop_toggles(self, (toggle,))


# kopf's operator_paused per event loop (one kopf operator per loop), as its watch streams got it.
_PAUSES: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiotoggles.ToggleSet]" = weakref.WeakKeyDictionary()


def _recording(streaming_block: Callable[..., Any]) -> Callable[..., Any]:
    def recording_streaming_block(*, operator_paused: aiotoggles.ToggleSet | None = None, **kwargs: Any) -> Any:
        if operator_paused is not None:
            try:
                _PAUSES[asyncio.get_running_loop()] = operator_paused
            except RuntimeError:  # no loop: nothing to record it for
                pass
        return streaming_block(operator_paused=operator_paused, **kwargs)
    recording_streaming_block._ckpt_recording = True  # type: ignore[attr-defined]
    return recording_streaming_block


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
    """Install the change once; False (and kopf untouched) for an unchecked kopf version."""
    version = getattr(kopf, "__version__", "")
    cls = aiotoggles.ToggleSet
    if getattr(cls, "_ckpt_linear_startup", False):
        return True
    probe = cls(all)
    if not version.startswith(CHECKED_VERSIONS) or not (hasattr(probe, "_condition") and hasattr(probe, "_toggles")):
        logger.info("kopf %s: index pre-population left as kopf does it (checked: %s)", version, CHECKED_VERSIONS)
        return False
    # Replacing kopf's methods is the point of this module (mypy refuses assigning to a method).
    cls.make_toggle = _make_toggle  # type: ignore[method-assign]
    cls.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    cls.drop_toggles = _drop_toggles  # type: ignore[method-assign]
    cls._ckpt_linear_startup = True  # type: ignore[attr-defined]
    if not getattr(watching.streaming_block, "_ckpt_recording", False):
        watching.streaming_block = _recording(watching.streaming_block)
    return True
