"""The ToggleSet change of kopf_startup.py: the same answers as kopf's, fewer wake-ups."""

from __future__ import annotations

import asyncio

import kopf
from kopf._cogs.aiokits import aiotoggles

from checkpoint_operator import kopf_startup


def test_applies_to_the_checked_kopf_version():
    assert kopf.__version__.startswith(kopf_startup.CHECKED_VERSIONS)
    assert kopf_startup.apply() and aiotoggles.ToggleSet.make_toggle is kopf_startup._make_toggle


async def _startup(objects: int) -> tuple[int, bool]:
    """kopf's pattern: a blocker, one toggle per listed object, each worker drops its own and
    waits for the whole set; returns how often the set's condition woke its waiters."""
    toggles = aiotoggles.ToggleSet(all)
    wakeups = 0
    notify_all = toggles._condition.notify_all

    def counted() -> None:
        nonlocal wakeups
        wakeups += 1
        notify_all()
    toggles._condition.notify_all = counted
    blocker = await toggles.make_toggle(name="blocker")
    done = []

    async def worker(toggle):
        await asyncio.sleep(0)
        await toggles.drop_toggle(toggle)
        await toggles.wait_for(True)
        done.append(toggle)

    tasks = [asyncio.create_task(worker(await toggles.make_toggle(name=str(i)))) for i in range(objects)]
    await asyncio.sleep(0.01)
    held = not done and toggles.is_off()  # nobody passes while the blocker is there
    await toggles.drop_toggle(blocker)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    return wakeups, held and len(done) == objects and toggles.is_on()


def test_waiters_pass_exactly_when_the_last_toggle_goes_and_wake_once():
    kopf_startup.apply()
    wakeups, correct = asyncio.run(_startup(500))
    assert correct
    assert wakeups <= 2  # kopf's own: one per make and drop, 1,001 here


def test_a_new_off_toggle_holds_waiters_again():
    kopf_startup.apply()

    async def scenario() -> list[str]:
        toggles = aiotoggles.ToggleSet(all)
        seen = []
        await toggles.wait_for(True)  # empty: on
        late = await toggles.make_toggle(name="late")  # off: the set turns off
        waiter = asyncio.create_task(toggles.wait_for(True))
        await asyncio.sleep(0.01)
        seen.append("waiting" if not waiter.done() else "passed")
        await late.turn_to(True)  # an individual toggle still notifies
        await asyncio.wait_for(waiter, 1)
        seen.append("passed")
        return seen
    assert asyncio.run(scenario()) == ["waiting", "passed"]


async def test_whether_kopf_is_paused_is_read_from_what_its_watch_streams_got():
    """kopf hands its operator_paused to every watch stream's streaming_block; the wrapper keeps it
    per loop, and `paused` reads it (from any thread)."""
    from kopf._cogs.clients import watching
    assert kopf_startup.apply() and getattr(watching.streaming_block, "_ckpt_recording", False)
    loop = asyncio.get_running_loop()
    assert not kopf_startup.paused(loop)  # no stream yet: not paused
    operator_paused = aiotoggles.ToggleSet(any)
    peering = await operator_paused.make_toggle(False, name="peering")
    resource = kopf._cogs.structs.references.Resource("", "v1", "pods")
    async with watching.streaming_block(resource=resource, namespace=None, operator_paused=operator_paused):
        assert not kopf_startup.paused(loop)
    await peering.turn_to(True)
    assert kopf_startup.paused(loop)
    assert await asyncio.to_thread(kopf_startup.paused, loop)  # read from another thread
    await peering.turn_to(False)
    assert not kopf_startup.paused(loop)
