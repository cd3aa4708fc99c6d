"""The local cluster with several nodes: scheduler, StorageClasses, PersistentVolumes with their access
modes and attach rule, ephemeral volumes (local/scheduler.py, local/storage.py, local/kubelet.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from checkpoint_operator.local.cluster import LocalCluster
from checkpoint_operator.local.server import ApiClient

NS = "default"
PODS, CLAIMS, VOLUMES = "v1/pods", "v1/persistentvolumeclaims", "v1/persistentvolumes"


class Holder:
    """Plays the containers of the pods named in `held`: each runs until its event is set, with
    its mounts recorded; other pods run for real."""

    def __init__(self) -> None:
        self.held: dict[str, asyncio.Event] = {}
        self.mounts: dict[str, dict] = {}
        self.started: dict[str, asyncio.Event] = {}

    def hold(self, pod: str) -> asyncio.Event:
        self.started[pod] = asyncio.Event()
        self.held[pod] = asyncio.Event()
        return self.held[pod]

    async def __call__(self, pod: dict, container: dict, env: dict, mounts: dict) -> int | None:
        name = pod["metadata"]["name"]
        if name not in self.held:
            return None
        self.mounts[name] = mounts
        self.started[name].set()
        await asyncio.wait_for(self.held[name].wait(), 60)
        return 0


@pytest.fixture
def holder() -> Holder:
    return Holder()


@pytest.fixture
async def cluster3(api_url: str, tmp_path: Path, holder: Holder) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(api_url, tmp_path / "cluster", container_runner=holder, nodes=3,
                            poll_interval=2.0) as local_cluster:
        yield local_cluster


def claim(name: str, storage_class: str | None = None, modes: tuple[str, ...] = ("ReadWriteOnce",),
          size: str = "1Gi", **spec: Any) -> dict:
    body: dict = {"metadata": {"name": name}, "spec": {"accessModes": list(modes),
                                                        "resources": {"requests": {"storage": size}}, **spec}}
    if storage_class is not None:
        body["spec"]["storageClassName"] = storage_class
    return body


def pod(name: str, claims: list[str] = (), node: str | None = None, read_only: bool = False,
        command: list[str] | None = None, **spec: Any) -> dict:
    volumes = [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c, "readOnly": read_only}}
               for i, c in enumerate(claims)]
    container = {"name": "main", "image": "x", "command": command or ["true"],
                 "volumeMounts": [{"name": f"v{i}", "mountPath": f"/data{i}", "readOnly": read_only}
                                  for i in range(len(claims))]}
    body: dict = {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [container],
                                                       "volumes": volumes, **spec}}
    if node is not None:
        body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return body


async def phase(api: ApiClient, name: str) -> str | None:
    obj = await api.get(PODS, NS, name)
    return (obj or {}).get("status", {}).get("phase")


async def events_of(api: ApiClient, name: str, reason: str | None = None) -> list[dict]:
    return [e for e in await api.list("v1/events", NS)
            if e["involvedObject"]["name"] == name and (reason is None or e["reason"] == reason)]


async def test_nodes_are_registered_and_pods_spread_or_follow_their_selector(api: ApiClient, cluster3: LocalCluster,
                                                                             holder: Holder, wait_for) -> None:
    nodes = await api.list("v1/nodes", None)
    assert [n["metadata"]["name"] for n in nodes] == ["local-0", "local-1", "local-2"]
    assert nodes[1]["metadata"]["labels"]["kubernetes.io/hostname"] == "local-1"
    assert all(n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] for n in nodes)
    releases = [holder.hold(f"p{i}") for i in range(3)]
    for i in range(3):
        await api.create(PODS, NS, pod(f"p{i}"))
    await wait_for(lambda: all(holder.started[f"p{i}"].is_set() for i in range(3)))
    placed = {(await api.get(PODS, NS, f"p{i}"))["spec"]["nodeName"] for i in range(3)}
    assert placed == {"local-0", "local-1", "local-2"}  # the least loaded node each time
    await api.create(PODS, NS, pod("pinned", node="local-2"))
    await wait_for(lambda: _phase_is(api, "pinned", "Succeeded"))
    pinned = await api.get(PODS, NS, "pinned")
    assert pinned["spec"]["nodeName"] == "local-2"
    assert any(c["type"] == "PodScheduled" and c["status"] == "True" for c in pinned["status"]["conditions"])
    assert [e["message"] for e in await events_of(api, "pinned", "Scheduled")] == [
        "Successfully assigned default/pinned to local-2"]
    # Required node affinity, NotIn: the other nodes
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["local-0", "local-1"]}]}]}}}
    await api.create(PODS, NS, pod("anti", affinity=affinity))
    await wait_for(lambda: _phase_is(api, "anti", "Succeeded"))
    assert (await api.get(PODS, NS, "anti"))["spec"]["nodeName"] == "local-2"
    for release in releases:
        release.set()


async def _phase_is(api: ApiClient, name: str, wanted: str) -> bool:
    return await phase(api, name) == wanted


async def test_a_pod_no_node_fits_is_unschedulable_with_the_schedulers_message(api: ApiClient, cluster3: LocalCluster,
                                                                                wait_for) -> None:
    await api.create(PODS, NS, pod("nowhere", node="gpu-node"))

    async def unschedulable() -> dict | None:
        conditions = ((await api.get(PODS, NS, "nowhere")) or {}).get("status", {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "PodScheduled" and c["status"] == "False"), None)
    condition = await wait_for(unschedulable)
    assert condition["reason"] == "Unschedulable"
    assert condition["message"] == ("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. "
                                    "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.")
    assert await events_of(api, "nowhere", "FailedScheduling")
    assert (await api.get(PODS, NS, "nowhere"))["spec"].get("nodeName") is None


async def test_a_block_claim_waits_for_its_first_consumer_then_gets_a_volume(api: ApiClient, cluster3: LocalCluster,
                                                                             wait_for) -> None:
    classes = {c["metadata"]["name"]: c for c in await api.list("storage.k8s.io/v1/storageclasses", None)}
    assert classes["block"]["volumeBindingMode"] == "WaitForFirstConsumer"
    assert classes["standard"]["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    drivers = {d["metadata"]["name"]: d for d in await api.list("storage.k8s.io/v1/csidrivers", None)}
    assert drivers[classes["block"]["provisioner"]]["spec"]["attachRequired"] is True
    await api.create(CLAIMS, NS, claim("disk", "block"))
    await wait_for(lambda: events_of(api, "disk", "WaitForFirstConsumer"))
    assert (await api.get(CLAIMS, NS, "disk"))["status"].get("phase", "Pending") == "Pending"
    await api.create(PODS, NS, pod("writer", ["disk"], node="local-1",
                                   command=["python", "-c", "import sys; open(sys.argv[1], 'w').write('x')", "/data0/f"]))
    await wait_for(lambda: _phase_is(api, "writer", "Succeeded"))
    bound = await api.get(CLAIMS, NS, "disk")
    assert bound["status"]["phase"] == "Bound"
    assert bound["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "local-1"
    pv = await api.get(VOLUMES, None, bound["spec"]["volumeName"])
    assert pv["metadata"]["name"] == f"pvc-{bound['metadata']['uid']}"
    assert pv["spec"]["accessModes"] == ["ReadWriteOnce"] and pv["spec"]["storageClassName"] == "block"
    assert pv["spec"]["claimRef"]["uid"] == bound["metadata"]["uid"] and pv["status"]["phase"] == "Bound"
    assert (cluster3.claim_dir(NS, "disk") / "f").read_text() == "x"
    directory = cluster3.claim_dir(NS, "disk")
    await api.delete(CLAIMS, NS, "disk")
    await wait_for(lambda: _gone(api, VOLUMES, None, pv["metadata"]["name"]))
    assert not directory.exists()


async def _gone(api: ApiClient, resource: str, namespace: str | None, name: str) -> bool:
    return await api.get(resource, namespace, name) is None


async def test_a_class_refuses_an_access_mode_its_driver_does_not_support(api: ApiClient, cluster3: LocalCluster,
                                                                         wait_for) -> None:
    await api.create(CLAIMS, NS, claim("shared-disk", "block", ("ReadWriteMany",)))
    await api.create(PODS, NS, pod("user", ["shared-disk"]))
    failed = await wait_for(lambda: events_of(api, "shared-disk", "ProvisioningFailed"))
    assert "access mode ReadWriteMany" in failed[0]["message"] and failed[0]["type"] == "Warning"
    assert (await api.get(CLAIMS, NS, "shared-disk"))["status"].get("phase", "Pending") == "Pending"
    await asyncio.sleep(0.5)
    assert await phase(api, "user") == "Pending"


async def test_a_read_write_once_block_volume_waits_on_a_multi_attach_error(api: ApiClient, cluster3: LocalCluster,
                                                                          holder: Holder, wait_for) -> None:
    """What the attach/detach controller does: while a pod on local-0 uses the disk, a pod on local-1
    stays ContainerCreating with FailedAttachVolume; it starts once the first has finished."""
    await api.create(CLAIMS, NS, claim("disk", "block"))
    release_a = holder.hold("a")
    holder.hold("b").set()
    await api.create(PODS, NS, pod("a", ["disk"], node="local-0"))
    await wait_for(lambda: holder.started["a"].is_set())
    await api.create(PODS, NS, pod("b", ["disk"], node="local-1", read_only=True))
    event = (await wait_for(lambda: events_of(api, "b", "FailedAttachVolume")))[0]
    volume = (await api.get(CLAIMS, NS, "disk"))["spec"]["volumeName"]
    assert event["type"] == "Warning"
    assert event["message"] == f'Multi-Attach error for volume "{volume}" Volume is already used by pod(s) a'
    waiting = await api.get(PODS, NS, "b")
    assert waiting["status"]["phase"] == "Pending" and waiting["spec"]["nodeName"] == "local-1"
    assert waiting["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    await asyncio.sleep(0.5)
    assert not holder.started["b"].is_set()
    # A pod on the same node shares the attached volume.
    holder.hold("c").set()
    await api.create(PODS, NS, pod("c", ["disk"], node="local-0"))
    await wait_for(lambda: _phase_is(api, "c", "Succeeded"))
    release_a.set()
    await wait_for(lambda: _phase_is(api, "b", "Succeeded"))


@pytest.mark.parametrize("storage_class, mode", [("standard", "ReadWriteOnce"), ("standard", "ReadWriteMany"),
                                                 ("block-multireader", "ReadOnlyMany")])
async def test_volumes_that_allow_it_are_used_on_several_nodes_at_once(api: ApiClient, cluster3: LocalCluster,
                                                                       holder: Holder, wait_for, storage_class: str,
                                                                       mode: str) -> None:
    """A shared filesystem is not attached (any mode works across nodes); ReadOnlyMany and ReadWriteMany
    volumes are attached to several nodes."""
    await api.create(CLAIMS, NS, claim("vol", storage_class, (mode,)))
    releases = {name: holder.hold(name) for name in ("a", "b", "c")}
    for name, node in (("a", "local-0"), ("b", "local-1"), ("c", "local-2")):
        await api.create(PODS, NS, pod(name, ["vol"], node=node, read_only=mode == "ReadOnlyMany"))
    await wait_for(lambda: all(holder.started[n].is_set() for n in releases), timeout=20)
    assert not await events_of(api, "b", "FailedAttachVolume")
    for release in releases.values():
        release.set()


async def test_an_ephemeral_volume_gets_a_claim_of_its_own_that_goes_with_the_pod(api: ApiClient,
                                                                                 cluster3: LocalCluster,
                                                                                 wait_for) -> None:
    template = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "test"}},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "block",
                         "resources": {"requests": {"storage": "1Gi"}}}}
    body = pod("scratch", node="local-2", command=["python", "-c", "import sys; open(sys.argv[1], 'w').write('y')", "/scratch/f"])
    body["spec"]["volumes"] = [{"name": "tmp", "ephemeral": {"volumeClaimTemplate": template}}]
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "tmp", "mountPath": "/scratch"}]
    created = await api.create(PODS, NS, body)
    await wait_for(lambda: _phase_is(api, "scratch", "Succeeded"))
    made = await api.get(CLAIMS, NS, "scratch-tmp")
    assert made["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "test"}
    assert made["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert made["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "local-2"
    assert (cluster3.claim_dir(NS, "scratch-tmp") / "f").read_text() == "y"
    await api.delete(PODS, NS, "scratch")
    await wait_for(lambda: _gone(api, CLAIMS, NS, "scratch-tmp"))


async def test_a_read_write_once_pod_volume_is_for_one_pod_at_a_time(api: ApiClient, cluster3: LocalCluster,
                                                                     holder: Holder, wait_for) -> None:
    await api.create(CLAIMS, NS, claim("solo", "block", ("ReadWriteOncePod",)))
    release = holder.hold("first")
    await api.create(PODS, NS, pod("first", ["solo"]))
    await wait_for(lambda: holder.started["first"].is_set())
    holder.hold("second").set()
    await api.create(PODS, NS, pod("second", ["solo"]))
    failed = await wait_for(lambda: events_of(api, "second", "FailedScheduling"))
    assert "ReadWriteOncePod access mode already in-use by another pod" in failed[0]["message"]
    release.set()
    await wait_for(lambda: _phase_is(api, "second", "Succeeded"), timeout=20)


async def test_a_static_volume_with_node_affinity_takes_its_pods_to_its_node(api: ApiClient, cluster3: LocalCluster,
                                                                             tmp_path: Path, wait_for) -> None:
    """A local PersistentVolume (as a node-local cache would use): bound by name, its directory is the
    PV's path, its pods land on its node, and its data stays when the claim goes (Retain)."""
    path = tmp_path / "node-cache"
    path.mkdir()
    (path / "model.bin").write_text("cached")
    await api.create(VOLUMES, None, {"metadata": {"name": "cache-local-1"}, "spec": {
        "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": "", "local": {"path": str(path)},
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["local-1"]}]}]}}}})
    await api.create(CLAIMS, NS, claim("cache", "", volumeName="cache-local-1"))
    await api.create(PODS, NS, pod("reader", ["cache"], command=["python", "-c", "import sys; print(open(sys.argv[1]).read())", "/data0/model.bin"]))
    await wait_for(lambda: _phase_is(api, "reader", "Succeeded"))
    assert (await api.get(PODS, NS, "reader"))["spec"]["nodeName"] == "local-1"
    assert await api.read_log(NS, "reader") == "cached\n"
    await api.delete(PODS, NS, "reader")
    await api.delete(CLAIMS, NS, "cache")

    async def released() -> bool:
        return ((await api.get(VOLUMES, None, "cache-local-1")) or {}).get("status", {}).get("phase") == "Released"
    await wait_for(released)
    assert (path / "model.bin").read_text() == "cached"


async def test_a_claim_of_local_volumes_binds_to_a_free_one_on_its_pods_node(api: ApiClient, cluster3: LocalCluster,
                                                                            tmp_path: Path, wait_for) -> None:
    """The no-provisioner class (local-storage): node-local volumes made by hand, as a node cache uses
    them. A pod lands on a node that has a free one, its claim binds to that one; a pod pinned to a node
    without one is Unschedulable with the scheduler's reason."""
    for node in ("local-1", "local-2"):
        path = tmp_path / f"disk-{node}"
        path.mkdir()
        (path / "node").write_text(node)
        await api.create(VOLUMES, None, {"metadata": {"name": f"cache-{node}"}, "spec": {
            "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "local-storage", "local": {"path": str(path)},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})
    await api.create(CLAIMS, NS, claim("cache-a", "local-storage"))
    await api.create(PODS, NS, pod("reader", ["cache-a"], command=["python", "-c", "import sys; print(open(sys.argv[1]).read())",
                                                                   "/data0/node"]))
    await wait_for(lambda: _phase_is(api, "reader", "Succeeded"), timeout=20)
    node = (await api.get(PODS, NS, "reader"))["spec"]["nodeName"]
    assert await api.read_log(NS, "reader") == f"{node}\n"
    assert (await api.get(CLAIMS, NS, "cache-a"))["spec"]["volumeName"] == f"cache-{node}"
    await api.create(CLAIMS, NS, claim("cache-b", "local-storage"))
    await api.create(PODS, NS, pod("nowhere", ["cache-b"], node="local-0"))
    failed = await wait_for(lambda: events_of(api, "nowhere", "FailedScheduling"), timeout=20)
    assert "didn't find available persistent volumes to bind" in failed[0]["message"]


def test_node_names() -> None:
    from checkpoint_operator.local.cluster import node_names
    assert node_names(1) == ["local"] and node_names(3) == ["local-0", "local-1", "local-2"]
    with pytest.raises(ValueError):
        node_names(0)
