"""What a relist hands on (pure functions and a Reflector with a fake API): hostile12 H12-3, H12-4.

H12-3: a TrainingJob deleted while the watch was down (410 / outage) is handed on by the relist as
DELETED with `informer.slim(body)` (what the reflector remembered: metadata only, no status). A
finished job keeps the Checkpoints it used pinned in status.inputs only (wakeups.py: "a finished job
keeps its pins in status"; Context.last_uses is not kept for finished jobs), so its deletion wakes
none of them: their in-use state (a deletion the use blocks, usedBy) is not looked at again until
the resync. The same deletion seen live (whole body), or held while paused (Holding keeps a custom
resource's DELETED whole *because* its wake-ups read it), wakes them.
"""
from __future__ import annotations

import json
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from checkpoint_operator import kube, main
from checkpoint_operator.kube import ObjectCache
from checkpoint_operator.reconcile.indexes import Indexes, ObjectIndex
from checkpoint_operator.reconcile.informer import Reflector, Target


class _Queue:
    def __init__(self) -> None:
        self.keys: list = []

    def add(self, key, after=None) -> None:
        self.keys.append(key)

    def add_all(self, keys) -> None:
        self.keys.extend(keys)


def _ctx() -> Any:
    ctx = SimpleNamespace(pod_index=ObjectIndex(), checkpoint_index=ObjectIndex(), training_job_index=ObjectIndex(),
                          cluster_checkpoint_index=ObjectIndex(), kube=SimpleNamespace(cache=ObjectCache()),
                          child_wakeups=None, last_uses={}, own_writes={}, queue=_Queue())
    ctx.indexes = Indexes(ctx.checkpoint_index, ctx.training_job_index, ctx.pod_index, ctx.cluster_checkpoint_index)
    ctx.forget = lambda *a, **k: None
    return ctx


CKPT = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
        "metadata": {"name": "ck", "namespace": "ns", "uid": "uid-ck", "resourceVersion": "1",
                     "finalizers": ["ckpt.dev/protection"]},
        "spec": {"source": {"volume": {"claimName": "data", "path": "/x"}}}, "status": {"phase": "Ready"}}
DONE = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "done", "namespace": "ns", "uid": "uid-done", "resourceVersion": "2"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}},
                 "checkpoints": [{"name": "ck"}]},
        "status": {"phase": "Succeeded", "inputs": [{"name": "ck", "uid": "uid-ck"}]}}


class _Page:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


def _strip(body):
    return {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}


@pytest.mark.parametrize("how", ["live", "relist"])
def test_a_finished_job_deleted_in_a_watch_gap_wakes_the_checkpoints_it_pinned(how):
    ctx = _ctx()
    main.changed(ctx, "ADDED", json.loads(json.dumps(CKPT)))
    got: list[tuple[str, dict]] = []
    reflector = Reflector(None, Target(kube.TRAINING_JOBS, "ns"), lambda t, b: got.append((t, b)),
                          threading.Lock(), lambda: None)
    listed = [[_strip(DONE)], []]
    reflector._request = lambda q, _t: _Page(json.dumps(  # type: ignore[method-assign]
        {"metadata": {"resourceVersion": "9"}, "items": listed.pop(0)}).encode())
    reflector._list()
    for event_type, body in got:
        main.changed(ctx, event_type, body)
        main.wake(ctx, event_type, body)
    ctx.queue.keys.clear()
    if how == "live":
        deleted = json.loads(json.dumps(DONE))  # the watch's DELETED: the whole last body
    else:
        got.clear()
        reflector._list()  # the relist after a 410: "done" is no longer there
        assert [t for t, _ in got] == ["DELETED"]
        deleted = got[0][1]
    main.changed(ctx, "DELETED", deleted)
    main.wake(ctx, "DELETED", deleted)
    assert ("Checkpoint", "ns", "ck") in ctx.queue.keys, (
        f"{how}: the deletion of the finished job that pinned ck woke {ctx.queue.keys}; body handed on: {deleted}")


class _Raw:
    """A watch stream that stays open (a quiet watch: the server ends it after WATCH_TIMEOUT, 300 s)."""

    def __init__(self) -> None:
        self.aborted = threading.Event()

    def read1(self, _n: int) -> bytes:
        self.aborted.wait(20)
        return b""

    def shutdown(self) -> None:
        self.aborted.set()

    close = shutdown

    def release_conn(self) -> None:
        pass


def test_a_relist_asked_while_a_list_runs_is_not_left_waiting_for_the_next_watch_to_end():
    """H12-4: Holding.release (the replica resumes after a pause) calls Reflector.relist while the
    reflector is in a paged LIST (a relist after a 410, or the LIST of 10,000 Checkpoints): `relist`
    finds no watch to abort, the LIST under way clears nothing (it read `_replay` before it began),
    and the watch that follows is not checked for `_replay`: the replay (every custom resource handed
    on again, the only wake-up of what changed while paused) waits until that watch ends, up to
    WATCH_TIMEOUT = 300 s, and the changes swallowed while paused wake nothing meanwhile."""
    import time
    handed: list[tuple[str, str]] = []
    reflector = Reflector(None, Target(kube.CHECKPOINTS, "ns"), lambda t, b: handed.append((t, b["metadata"]["name"])),
                          threading.Lock(), lambda: None)
    gate, second_page_asked = threading.Event(), threading.Event()
    watches: list[_Raw] = []

    def request(query, _timeout):
        if query.get("watch"):
            raw = _Raw()
            watches.append(raw)
            return SimpleNamespace(response=raw)
        if query.get("continue"):
            second_page_asked.set()
            gate.wait(10)
            items = [_strip({**CKPT, "metadata": {**CKPT["metadata"], "name": "b", "uid": "uid-b"}})]
            return _Page(json.dumps({"metadata": {}, "items": items}).encode())
        return _Page(json.dumps({"metadata": {"resourceVersion": "9", "continue": "t"},
                                 "items": [_strip(CKPT)]}).encode())
    reflector._request = request  # type: ignore[method-assign]
    reflector.start()
    try:
        assert second_page_asked.wait(5)
        reflector.relist()  # the replica resumes while the LIST is on its second page
        gate.set()
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and reflector.lists < 2:
            time.sleep(0.05)
        assert reflector.lists >= 2, (
            f"relist asked during a LIST: {reflector.lists} LIST(s) after 4 s, the replay waits on watch "
            f"#{len(watches)} (open: {bool(watches) and not watches[-1].aborted.is_set()}); handed on: {handed}")
    finally:
        reflector.stop()
        gate.set()
        reflector.join(5)
