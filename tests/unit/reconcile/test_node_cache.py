"""reconcile/node_cache.py: the namespace's cache volume and claim are made or found once per namespace
every few minutes, not at every job's start (the API requests of a lifecycle)."""

from __future__ import annotations

from typing import Any

import pod_shapes
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.node_cache import ENSURED_FOR_SECONDS, ensure_cache_claim


class RecordingKube:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def ensure(self, resource: Any, namespace: str, body: dict) -> dict:
        self.calls.append((resource.plural, namespace, body["metadata"]["name"]))
        return body


def test_the_cache_claim_is_made_once_per_namespace_and_looked_for_again_later():
    kube = RecordingKube()
    ctx = Context(kube=kube, config=pod_shapes.config("s3-cache"))  # type: ignore[arg-type]
    assert ensure_cache_claim(ctx, "team-a", now=100.0)
    assert kube.calls == [("persistentvolumes", "", "ckpt-node-cache-team-a"),
                          ("persistentvolumeclaims", "team-a", "ckpt-node-cache")]
    assert not ensure_cache_claim(ctx, "team-a", now=100.0 + ENSURED_FOR_SECONDS - 1)
    assert ensure_cache_claim(ctx, "team-b", now=101.0)
    assert ensure_cache_claim(ctx, "team-a", now=100.0 + ENSURED_FOR_SECONDS)  # deleted by hand meanwhile?
    assert len(kube.calls) == 6
    other = Context(kube=kube, config=pod_shapes.config("s3-cache"))  # type: ignore[arg-type]
    assert ensure_cache_claim(other, "team-a", now=100.0)  # another operator (a restart) looks again
