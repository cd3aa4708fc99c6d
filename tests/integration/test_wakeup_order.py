"""The fact reconcile/wakeups.py's no-lost-wake-up argument rests on, checked against the kopf in
use: for every event, kopf has updated the index from that event's body before it calls the
`on.event` handlers. If a kopf upgrade changed that order, this fails."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from checkpoint_operator import main
from checkpoint_operator.local.server import run_kopf_in_thread
from conftest import CKPT, NS

pytestmark = pytest.mark.timeout(60)


async def test_kopf_updates_the_index_before_it_calls_the_event_handlers(api, api_url, wait_for):
    registry = kopf.OperatorRegistry()
    seen: list[tuple[str, str, bool]] = []

    @kopf.index(*main.CHECKPOINTS, registry=registry, id="versions")
    async def versions(body, **_):
        return {body["metadata"]["name"]: body["metadata"].get("resourceVersion")}

    @kopf.on.event(*main.CHECKPOINTS, registry=registry)
    async def changed(event, body, versions: kopf.Index, **_):
        name, version = body["metadata"]["name"], body["metadata"].get("resourceVersion")
        indexed = list(versions.get(name, []))
        seen.append((event.get("type"), version, event.get("type") == "DELETED" or indexed == [version]))

    settings = kopf.OperatorSettings()
    main.configure_settings(settings)
    handle = await asyncio.to_thread(run_kopf_in_thread, registry, settings, [NS], api_url)
    try:
        await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                                     "metadata": {"name": "c", "namespace": NS},
                                     "spec": {"source": {"volume": {"claimName": "data", "path": "/"}}}})
        for i in range(20):  # a burst of changes: kopf may batch them, but never reorder them
            await api.patch(CKPT, NS, "c", {"metadata": {"labels": {"round": str(i)}}})
        last = (await api.get(CKPT, NS, "c"))["metadata"]["resourceVersion"]
        await wait_for(lambda: any(v == last for _, v, _ in seen), timeout=20)
    finally:
        await asyncio.to_thread(handle.stop)
    assert seen and all(ok for _, _, ok in seen), seen
