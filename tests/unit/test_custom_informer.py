"""The custom resources through the operator's own informer (issue 22 item 4): their indexes kept
from each event as kopf's were (main.py `changed`), a relist that drops what vanished, the held
wake-ups (informer.Holding) at start-up and while kopf's peering pauses the replica, and a queue
that runs no reconcile before the first LISTs of every kind are in the indexes (main.start_queue)."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from checkpoint_operator import kube, main
from checkpoint_operator.kube import ObjectCache
from checkpoint_operator.reconcile.indexes import Indexes, ObjectIndex
from checkpoint_operator.reconcile.informer import Holding, Reflector, Target, targets

pytestmark = pytest.mark.unit


def _job(name: str, rv: str, *, wants: str = "", phase: str = "Pending", uid: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}
    if wants:
        spec["checkpoints"] = [{"name": wants}]
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}", "resourceVersion": rv},
            "spec": spec, "status": {"phase": phase}}


def _checkpoint(name: str, rv: str, phase: str = "Ready") -> dict[str, Any]:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": rv},
            "spec": {"source": {"volume": {"claimName": "data", "path": "/x"}}}, "status": {"phase": phase}}


def _entry(name: str, rv: str) -> dict[str, Any]:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "ClusterCheckpoint",
            "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": rv}, "spec": {}, "status": {}}


def _ctx(holding: Any = None) -> Any:
    ctx = SimpleNamespace(pod_index=ObjectIndex(), checkpoint_index=ObjectIndex(), training_job_index=ObjectIndex(),
                          cluster_checkpoint_index=ObjectIndex(), kube=SimpleNamespace(cache=ObjectCache()),
                          child_wakeups=holding)
    ctx.indexes = Indexes(ctx.checkpoint_index, ctx.training_job_index, ctx.pod_index, ctx.cluster_checkpoint_index)
    return ctx


def test_each_event_replaces_the_object_s_index_entries_and_deleted_removes_them():
    ctx = _ctx()
    main.changed(ctx, "ADDED", _job("a", "1", wants="base"))
    assert ctx.indexes.training_job("ns", "a").uid == "uid-a"
    assert ctx.indexes.jobs_waiting_on("ns", "name", "base") == ["a"]
    main.changed(ctx, "MODIFIED", _job("a", "2", wants="other"))  # its old key goes, the new one comes
    assert ctx.indexes.jobs_waiting_on("ns", "name", "base") == []
    assert ctx.indexes.jobs_waiting_on("ns", "name", "other") == ["a"]
    main.changed(ctx, "MODIFIED", _job("a", "3", wants="other", phase="Succeeded"))  # finished: waits on nothing
    assert ctx.indexes.jobs_waiting_on("ns", "name", "other") == []
    assert ctx.indexes.training_job("ns", "a").phase.value == "Succeeded"
    main.changed(ctx, "ADDED", _checkpoint("c", "4"))
    main.changed(ctx, "ADDED", _entry("e", "5"))
    assert ctx.indexes.checkpoint("ns", "c").name == "c" and ctx.indexes.checkpoints_on_claim("ns", "data") == ["c"]
    assert ctx.indexes.cluster_checkpoint("e").uid == "uid-e"
    for body in (_job("a", "6"), _checkpoint("c", "7"), _entry("e", "8")):
        main.changed(ctx, "DELETED", body)
    assert ctx.indexes.training_job("ns", "a") is None and ctx.indexes.checkpoint("ns", "c") is None
    assert ctx.indexes.cluster_checkpoint("e") is None
    assert not len(ctx.training_job_index) and not len(ctx.checkpoint_index) and not len(ctx.cluster_checkpoint_index)


def test_a_body_the_key_function_cannot_read_leaves_no_entry_and_stops_nothing():
    ctx = _ctx()
    main.changed(ctx, "ADDED", _job("a", "1"))
    broken = _job("a", "2")
    broken["spec"]["checkpoints"] = "not a list"
    main.changed(ctx, "MODIFIED", broken)
    assert ctx.indexes.training_job("ns", "a") is None
    main.changed(ctx, "MODIFIED", _job("a", "3"))
    assert ctx.indexes.training_job("ns", "a") is not None


class _Page:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


def test_a_relist_drops_from_the_index_what_the_list_no_longer_has():
    """A Checkpoint deleted while the watch was down (410): the relist hands it on as DELETED."""
    ctx = _ctx()
    reflector = Reflector(None, Target(kube.CHECKPOINTS, None), lambda t, b: main.changed(ctx, t, b),
                          threading.Lock(), lambda: None)
    listed = [[_checkpoint("kept", "1"), _checkpoint("gone", "2")], [_checkpoint("kept", "1")]]

    def request(query, _timeout):
        items = [{k: v for k, v in c.items() if k not in ("apiVersion", "kind")} for c in listed.pop(0)]
        return _Page(json.dumps({"kind": "CheckpointList", "metadata": {"resourceVersion": "9"},
                                 "items": items}).encode())
    reflector._request = request  # type: ignore[method-assign]
    reflector._list()
    assert ctx.indexes.checkpoint("ns", "gone") is not None
    reflector._list()
    assert ctx.indexes.checkpoint("ns", "gone") is None and ctx.indexes.checkpoint("ns", "kept") is not None


def test_a_replayed_list_hands_on_every_object_unchanged_ones_too():
    events: list[tuple[str, str]] = []
    reflector = Reflector(None, Target(kube.CHECKPOINTS, None), lambda t, b: events.append((t, b["metadata"]["name"])),
                          threading.Lock(), lambda: None)

    def request(query, _timeout):
        return _Page(json.dumps({"metadata": {"resourceVersion": "9"}, "items": [_checkpoint("a", "1")]}).encode())
    reflector._request = request  # type: ignore[method-assign]
    reflector._list()
    reflector._list()
    assert events == [("ADDED", "a")]  # unchanged: not again
    reflector.relist()
    reflector._list()
    assert events == [("ADDED", "a"), ("MODIFIED", "a")] and not reflector._replay.is_set()


def test_the_custom_resources_are_watched_where_kopf_watched_them():
    found = {(t.resource.plural, t.namespace, t.label_selector) for t in targets(main.CUSTOM, ["a", "b"])}
    assert found == {("trainingjobs", "a", None), ("trainingjobs", "b", None), ("checkpoints", "a", None),
                     ("checkpoints", "b", None), ("clustercheckpoints", None, None)}
    assert {(t.resource.plural, t.namespace) for t in targets(main.CUSTOM, [])} == {
        ("trainingjobs", None), ("checkpoints", None), ("clustercheckpoints", None)}


# --- held wake-ups -----------------------------------------------------------------------------------

def _holding(paused: list[bool], delivered: list, replays: list) -> Holding:
    return Holding(lambda t, b: delivered.append((t, b["kind"], b["metadata"]["name"])), threading.Lock(),
                   paused=lambda: paused[0], replayed=main.CUSTOM_KEYS, on_replay=lambda: replays.append(1),
                   ready=False)


def _claim(name: str, rv: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": rv}}


def test_at_start_up_custom_resource_wake_ups_go_on_and_children_s_wait_until_ready():
    paused, delivered, replays = [False], [], []
    holding = _holding(paused, delivered, replays)
    holding.offer("ADDED", _job("a", "1"))
    holding.offer("ADDED", _claim("d", "2"))
    assert delivered == [("ADDED", "TrainingJob", "a")]
    assert not holding.release() and not holding.open  # start-up is not over
    holding.ready = True
    assert holding.release() and delivered[-1] == ("ADDED", "PersistentVolumeClaim", "d") and not replays


def test_while_paused_nothing_is_woken_and_the_release_replays_the_custom_resources():
    paused, delivered, replays = [False], [], []
    holding = _holding(paused, delivered, replays)
    holding.ready = True
    assert holding.release()
    paused[0] = True
    holding.offer("MODIFIED", _job("a", "2"))  # not held: a relist replays it whole
    holding.offer("DELETED", _checkpoint("c", "3"))  # held (slim)
    holding.offer("MODIFIED", _claim("d", "4"))
    assert delivered == [] and not holding.open and holding.replay_due
    assert set(holding.held) == {("Checkpoint", "ns", "c"), ("PersistentVolumeClaim", "ns", "d")}
    assert not holding.release()  # still paused
    paused[0] = False
    assert holding.release()
    assert sorted(delivered) == [("DELETED", "Checkpoint", "c"), ("MODIFIED", "PersistentVolumeClaim", "d")]
    assert replays == [1] and not holding.replay_due
    holding.offer("MODIFIED", _job("a", "5"))
    assert delivered[-1] == ("MODIFIED", "TrainingJob", "a") and replays == [1]


def test_a_standby_replica_at_start_up_holds_no_custom_resource_body():
    paused, delivered, replays = [True], [], []
    holding = _holding(paused, delivered, replays)
    for i in range(100):
        holding.offer("ADDED", _checkpoint(f"c{i}", str(i)))
    assert not holding.held and not delivered and holding.replay_due


# --- the queue runs nothing before the first LISTs ----------------------------------------------------

class _FakeInformer:
    def __init__(self) -> None:
        self.listed = False

    def wait_synced(self, timeout: float) -> bool:
        return self.listed

    def stop(self) -> None:
        pass


async def test_the_queue_runs_no_reconcile_until_every_first_list_is_applied(monkeypatch):
    from checkpoint_operator import malloc
    from checkpoint_operator.config import OperatorConfig
    from checkpoint_operator.reconcile import wakeups
    fake = _FakeInformer()
    reconciled: list[tuple[str, str, str]] = []
    ctx = main.Context(kube=SimpleNamespace(cache=ObjectCache()), config=OperatorConfig.from_env())  # type: ignore[arg-type]

    def start_informer(ctx: Any) -> Any:
        ctx.child_wakeups = Holding(lambda t, b: None, threading.Lock(), ready=False)
        ctx.queue.add(("TrainingJob", "ns", "a"))  # a listed object's wake-up, during the LIST
        return fake
    monkeypatch.setattr(main, "start_informer", start_informer)
    monkeypatch.setattr(main, "reconcile", lambda ctx, key: reconciled.append(key))
    monkeypatch.setattr(malloc, "start_trimmer", lambda *a: None)
    monkeypatch.setattr(wakeups, "start_resync", lambda ctx: None)
    starting = asyncio.create_task(main.start_queue(main.make_memo(ctx)))
    await asyncio.sleep(0.3)
    assert not starting.done() and reconciled == [] and not ctx.child_wakeups.ready
    fake.listed = True
    await asyncio.wait_for(starting, 5)
    for _ in range(50):
        if reconciled:
            break
        await asyncio.sleep(0.02)
    assert reconciled == [("TrainingJob", "ns", "a")] and ctx.child_wakeups.ready
    await main.stop_queue(main.make_memo(ctx))
