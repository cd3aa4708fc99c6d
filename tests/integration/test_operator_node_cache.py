"""The node-local input cache end to end: the real operator, a three-node local cluster, SeaweedFS. Six
consumers of one checkpoint run at once on three nodes: each node downloads it once (three copies read
from the store, not six), the others read the node's copy; the Checkpoint says where it is cached, the
pods mount a claim (no hostPath, no download into the pod), and the metrics count hits and misses."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from prometheus_client import REGISTRY

from checkpoint_operator.config import OperatorConfig
from conftest import CKPT, NS, TJ, training_job, write_checkpoint
from test_operator_s3_store import store_secret, wait_phase  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(240)
CONSUMERS = 6


@pytest.fixture
def cluster_nodes() -> int:
    return 3


@pytest.fixture
def operator_config(s3) -> OperatorConfig:  # noqa: F811
    return OperatorConfig(reconcile_interval=0.2, agent_image="checkpoint-operator:test", storage_type="s3",
                          s3_endpoint=s3.endpoint, s3_bucket=s3.bucket, s3_prefix=s3.root.rstrip("/"),
                          s3_secret_name="store-credentials", cache_enabled=True,
                          cache_capacity="5Mi")  # one 3 MiB entry per node


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"checkpoint_operator_{name}", labels or None) or 0.0


async def test_consumers_on_three_nodes_read_three_copies_from_the_store(api, store_secret, operator, trainer,  # noqa: F811
                                                                         wait_for, cluster):
    weights = os.urandom(3 * 1024 * 1024)

    def pretrain(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.bin": weights, "config.json": b"{}"})
        return 0
    trainer.behaviours["pre"] = pretrain
    await api.create(TJ, NS, training_job("pre"))
    await wait_phase(api, wait_for, TJ, "pre", "Succeeded")
    checkpoint = await api.get(CKPT, NS, "pre.step-1")
    size = checkpoint["status"]["sizeBytes"]

    all_running = asyncio.Event()
    read: dict[str, bytes] = {}
    started = 0

    async def consume(attempt, env):
        nonlocal started
        path = os.path.join(env["CHECKPOINT_INPUT_PATH"], "model.bin")
        read[env["HOSTNAME"] if "HOSTNAME" in env else str(len(read))] = open(path, "rb").read()
        started += 1
        if started == CONSUMERS:
            all_running.set()
        await asyncio.wait_for(all_running.wait(), 120)  # all at once: the scheduler spreads them
        return 0
    before = {o: _metric("node_cache_fills_total", outcome=o) for o in ("hit", "miss")}
    saved_before = _metric("node_cache_saved_bytes_total")
    for i in range(CONSUMERS):
        trainer.behaviours[f"use-{i}"] = consume
        await api.create(TJ, NS, training_job(f"use-{i}", checkpoints=[{"name": "pre.step-1"}]))
    for i in range(CONSUMERS):
        await wait_phase(api, wait_for, TJ, f"use-{i}", "Succeeded", timeout=180)
    assert len(read) == CONSUMERS and all(data == weights for data in read.values())

    # What each pod's fill reported (its termination message), and where it ran.
    reports, nodes = [], set()
    for pod in (await api.list("v1/pods", NS)):
        if not pod["metadata"].get("labels", {}).get("ckpt.dev/trainingjob", "").startswith("use-"):
            continue
        spec = pod["spec"]
        assert not any("hostPath" in v or "emptyDir" in v for v in spec["volumes"]), spec["volumes"]
        assert {"name": "ckpt-node-cache", "persistentVolumeClaim": {"claimName": "ckpt-node-cache"}} in spec["volumes"]
        (fill,) = [s for s in pod["status"]["initContainerStatuses"] if s["name"] == "download-input-0"]
        reports.append(json.loads(fill["state"]["terminated"]["message"]))
        nodes.add(spec["nodeName"])
    assert len(nodes) == 3, nodes
    outcomes = sorted(r["cache"] for r in reports)
    assert outcomes == ["hit"] * (CONSUMERS - 3) + ["miss"] * 3
    assert sum(r["fetchedBytes"] for r in reports) == 3 * size  # C = K copies read from the store, not N

    async def cached_everywhere():
        status = (await api.get(CKPT, NS, "pre.step-1"))["status"]
        return status.get("cachedOn") == sorted(nodes)
    await wait_for(cached_everywhere, timeout=30)
    assert _metric("node_cache_fills_total", outcome="miss") - before["miss"] == 3
    assert _metric("node_cache_fills_total", outcome="hit") - before["hit"] == CONSUMERS - 3
    assert _metric("node_cache_saved_bytes_total") - saved_before == (CONSUMERS - 3) * size

    # The namespace's local volume: the cache path on every Linux node, bound to the namespace's claim.
    pv = await api.get("v1/persistentvolumes", None, f"ckpt-node-cache-{NS}")
    assert pv["spec"]["local"]["path"] == "/var/lib/checkpoint-operator/cache"
    claim = await api.get("v1/persistentvolumeclaims", NS, "ckpt-node-cache")
    assert claim["status"]["phase"] == "Bound" and claim["spec"]["volumeName"] == f"ckpt-node-cache-{NS}"
    # Each node has its own copy, on its own disk.
    for node in nodes:
        entry = cluster.node_dir(node) / "local-volumes/var/lib/checkpoint-operator/cache/entries" / NS
        (digest_dir,) = list(entry.iterdir())
        assert (digest_dir / "data" / "model.bin").read_bytes() == weights


@pytest.mark.parametrize("cluster_nodes", [1])
async def test_an_eviction_takes_the_node_out_of_cached_on(api, store_secret, operator, trainer, wait_for,  # noqa: F811
                                                          cluster, cluster_nodes):
    """A cache for one entry: the job on B evicts A (its pod is over), so A is cached nowhere and B on the node.
    On one node too the cache is the node's own directory, never the host's path."""
    def pretrain(attempt, env):
        for step in ("a", "b"):
            write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], step, {"model.bin": os.urandom(3 * 1024 * 1024)})
        return 0
    trainer.behaviours["pre"] = pretrain
    await api.create(TJ, NS, training_job("pre"))
    await wait_phase(api, wait_for, TJ, "pre", "Succeeded")
    for name, step in (("on-a", "pre.a"), ("on-b", "pre.b")):
        trainer.behaviours[name] = lambda attempt, env: 0
        await api.create(TJ, NS, training_job(name, checkpoints=[{"name": step}]))
        await wait_phase(api, wait_for, TJ, name, "Succeeded")

    async def cached(name, nodes):
        return (await api.get(CKPT, NS, name))["status"].get("cachedOn") == nodes
    await wait_for(lambda: cached("pre.b", ["local"]), timeout=30)
    await wait_for(lambda: cached("pre.a", None), timeout=30)
    assert _metric("node_cache_evictions_total") >= 1
    entries = cluster.node_dir("local") / "local-volumes/var/lib/checkpoint-operator/cache/entries" / NS
    b_digest = (await api.get(CKPT, NS, "pre.b"))["status"]["digest"].removeprefix("sha256:")
    assert [p.name for p in entries.iterdir()] == [b_digest]
    assert not os.path.exists("/var/lib/checkpoint-operator/cache/entries")
