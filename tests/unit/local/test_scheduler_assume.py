"""The local scheduler counts a pod on the node it chose before the binding's answer is back
(kube-scheduler's assumed pods): pods scheduled at once spread over the nodes. A full-suite run
under load put two of three pods on one node before (tests/local/test_nodes_and_storage.py)."""

from __future__ import annotations

from checkpoint_operator.local.scheduler import LocalNode, Scheduler, node_labels


def pod(uid: str) -> dict:
    return {"metadata": {"name": uid, "namespace": "default", "uid": uid}, "spec": {}, "status": {"phase": "Pending"}}


def test_pods_chosen_before_their_binding_is_seen_spread_over_the_nodes() -> None:
    nodes = [LocalNode(f"local-{i}", node_labels(f"local-{i}")) for i in range(3)]
    pods = [pod(f"p{i}") for i in range(3)]
    scheduler = Scheduler(api=None, nodes=nodes, pods=pods, claims={}, provisioner=None, events=None)  # type: ignore[arg-type]
    chosen = []
    for p in pods:  # the pod cache never shows a nodeName: every binding is still in flight
        node = scheduler._choose(p, nodes)
        scheduler._assumed[p["metadata"]["uid"]] = node.name
        chosen.append(node.name)
    assert sorted(chosen) == ["local-0", "local-1", "local-2"]
    pods.pop()  # a pod deleted before its binding was seen is forgotten
    scheduler._choose(pod("p9"), nodes)
    assert set(scheduler._assumed) == {"p0", "p1"}
