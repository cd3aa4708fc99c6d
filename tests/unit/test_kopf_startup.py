"""kopf_startup.py: whether kopf's peering paused the operator, read from what kopf's orchestrator got."""

from __future__ import annotations

import asyncio

import kopf
from kopf._cogs.aiokits import aiotoggles
from kopf._core.reactor import orchestration

from checkpoint_operator import kopf_startup


def test_applies_to_the_checked_kopf_version_and_leaves_kopf_s_toggles_alone():
    assert kopf.__version__.startswith(kopf_startup.CHECKED_VERSIONS)
    assert kopf_startup.apply() and getattr(orchestration.orchestrator, "_ckpt_recording", False)
    assert kopf_startup.apply()  # once: not wrapped twice
    assert not getattr(orchestration.orchestrator.__closure__[0].cell_contents, "_ckpt_recording", False)
    assert not hasattr(aiotoggles.ToggleSet, "_ckpt_linear_startup")  # no index pre-population to change


async def test_whether_kopf_is_paused_is_read_from_what_its_orchestrator_got():
    """kopf hands its operator_paused to its orchestrator (peering turns it on); the wrapper keeps it
    per loop, and `paused` reads it (from any thread). With no kopf watch stream at all: the
    operator's own informer watches every kind."""
    assert kopf_startup.apply()
    loop = asyncio.get_running_loop()
    kopf_startup._PAUSES.pop(loop, None)
    assert not kopf_startup.paused(loop)  # no orchestrator yet: not paused
    operator_paused = aiotoggles.ToggleSet(any)
    peering = await operator_paused.make_toggle(False, name="peering")
    started = []

    async def orchestrator(**kwargs):
        started.append(kwargs["operator_paused"])
    wrapped = kopf_startup._recording(orchestrator)
    await wrapped(operator_paused=operator_paused, settings=None)
    assert started == [operator_paused] and not kopf_startup.paused(loop)
    await peering.turn_to(True)
    assert kopf_startup.paused(loop)
    assert await asyncio.to_thread(kopf_startup.paused, loop)  # read from another thread
    await peering.turn_to(False)
    assert not kopf_startup.paused(loop)


async def test_the_replica_may_act_only_once_kopf_arranged_its_peering_and_while_not_paused():
    """hostile12 H12-1: kopf makes its peering toggles (on until the peers are read, with mandatory
    peering) in the orchestrator's first adjust_tasks, after the startup handlers: until then the
    replica does not know whether it may act, and does not."""
    assert kopf_startup.apply() and getattr(orchestration.adjust_tasks, "_ckpt_recording", False)
    loop = asyncio.get_running_loop()
    kopf_startup._PAUSES.pop(loop, None)
    kopf_startup._ARRANGED.pop(loop, None)
    assert not kopf_startup.may_act(loop)
    operator_paused = aiotoggles.ToggleSet(any)
    await kopf_startup._recording(lambda **kwargs: asyncio.sleep(0))(operator_paused=operator_paused)
    assert not kopf_startup.may_act(loop)  # the orchestrator runs, its peering not arranged yet
    peering = await operator_paused.make_toggle(True, name="peering, preactivated")

    async def adjust_tasks(**kwargs):
        pass
    await kopf_startup._arranging(adjust_tasks)(ensemble=None)
    assert not kopf_startup.may_act(loop)  # arranged, and paused
    await peering.turn_to(False)
    assert kopf_startup.may_act(loop)
