"""The local cluster's CSI snapshot controller (local/snapshots.py), against external-snapshotter's own
CRDs (the emulated API validates every object by their schemas and CEL rules): VolumeSnapshots of
claims, their contents and copies, restores, deletion, and a restart in the middle of a copy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import yaml

from checkpoint_operator.local import snapshots as local_snapshots
from checkpoint_operator.local.cluster import LocalCluster
from checkpoint_operator.local.server import ApiClient

NS = "default"
PODS, CLAIMS = "v1/pods", "v1/persistentvolumeclaims"
SNAPSHOTS = "snapshot.storage.k8s.io/v1/volumesnapshots"
CONTENTS = "snapshot.storage.k8s.io/v1/volumesnapshotcontents"
SCHEMAS = Path(__file__).parent.parent / "schemas" / "external-snapshotter"


@pytest.fixture
async def cluster(api_url: str, tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(api_url, tmp_path / "cluster", nodes=2, poll_interval=2.0) as local_cluster:
        yield local_cluster


def claim(name: str, storage_class: str = "block", size: str = "1Gi", **spec: Any) -> dict:
    return {"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                                                 "resources": {"requests": {"storage": size}}, **spec}}


def snapshot(name: str, source: str, snapshot_class: str | None = "block-snapshots") -> dict:
    spec: dict = {"source": {"persistentVolumeClaimName": source}}
    if snapshot_class:
        spec["volumeSnapshotClassName"] = snapshot_class
    return {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": name},
            "spec": spec}


def restore(name: str, snapshot_name: str, size: str = "1Gi", storage_class: str = "block") -> dict:
    return claim(name, storage_class, size, dataSource={"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                                        "name": snapshot_name})


def run(name: str, claim_name: str, code: str, *args: str) -> dict:
    return {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [
        {"name": "main", "image": "x", "command": ["python", "-c", code, *args],
         "volumeMounts": [{"name": "v", "mountPath": "/data"}]}],
        "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim_name}}]}}


WRITE = "import sys, pathlib; p = pathlib.Path(sys.argv[1]); p.parent.mkdir(exist_ok=True); p.write_text(sys.argv[2])"
READ = "import sys; print(open(sys.argv[1]).read())"


async def succeeded(api: ApiClient, wait_for, name: str) -> dict:
    async def done() -> dict | None:
        obj = await api.get(PODS, NS, name)
        phase = (obj or {}).get("status", {}).get("phase")
        assert phase != "Failed", obj
        return obj if phase == "Succeeded" else None
    return await wait_for(done, timeout=20)


async def ready(api: ApiClient, wait_for, name: str) -> dict:
    async def is_ready() -> dict | None:
        obj = await api.get(SNAPSHOTS, NS, name)
        return obj if (obj or {}).get("status", {}).get("readyToUse") else None
    return await wait_for(is_ready, timeout=20)


async def written_volume(api: ApiClient, wait_for, name: str, text: str) -> None:
    await api.create(CLAIMS, NS, claim(name))
    await api.create(PODS, NS, run(f"write-{name}", name, WRITE, "/data/step-1/w.bin", text))
    await succeeded(api, wait_for, f"write-{name}")


def test_the_local_cluster_serves_external_snapshotters_own_crds() -> None:
    """local/crds/ (what local mode installs) is the copy kept under tests/schemas/ (commit afb2f0d8)."""
    for name in local_snapshots.CRD_FILES:
        assert (local_snapshots.CRD_DIR / name).read_bytes() == (SCHEMAS / name).read_bytes()
    assert {yaml.safe_load((SCHEMAS / n).read_text())["spec"]["names"]["kind"] for n in local_snapshots.CRD_FILES} == {
        "VolumeSnapshot", "VolumeSnapshotContent", "VolumeSnapshotClass"}


async def test_a_snapshot_is_a_ready_copy_that_a_new_claim_restores_on_another_node(api: ApiClient,
                                                                                   cluster: LocalCluster,
                                                                                   wait_for) -> None:
    await written_volume(api, wait_for, "out", "weights-1")
    created = await api.create(SNAPSHOTS, NS, snapshot("snap", "out"))
    done = await ready(api, wait_for, "snap")
    content_name = f"snapcontent-{created['metadata']['uid']}"
    assert done["status"]["boundVolumeSnapshotContentName"] == content_name
    assert done["status"]["restoreSize"] == "1Gi" and done["status"]["creationTime"].endswith("Z")
    assert set(done["metadata"]["finalizers"]) == {local_snapshots.AS_SOURCE_FINALIZER, local_snapshots.BOUND_FINALIZER}
    content = await api.get(CONTENTS, None, content_name)
    assert content["spec"]["deletionPolicy"] == "Delete" and content["spec"]["driver"] == "block.csi.local.ckpt.dev"
    assert content["spec"]["volumeSnapshotRef"]["uid"] == created["metadata"]["uid"]
    assert content["status"]["readyToUse"] is True and content["status"]["restoreSize"] == 2 ** 30
    assert content["metadata"]["finalizers"] == [local_snapshots.CONTENT_FINALIZER]
    assert local_snapshots.BEING_CREATED not in (content["metadata"].get("annotations") or {})
    # The source claim is protected only while the snapshot is being made.
    source = await api.get(CLAIMS, NS, "out")
    assert local_snapshots.PVC_FINALIZER not in source["metadata"]["finalizers"]
    # A copy, not links: a later write to the volume does not reach the snapshot.
    await api.create(PODS, NS, run("overwrite", "out", WRITE, "/data/step-1/w.bin", "changed"))
    await succeeded(api, wait_for, "overwrite")
    await api.create(CLAIMS, NS, restore("restored", "snap"))
    reader = run("read", "restored", READ, "/data/step-1/w.bin")
    reader["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "local-1"}
    await api.create(PODS, NS, reader)
    await succeeded(api, wait_for, "read")
    assert await api.read_log(NS, "read") == "weights-1\n"
    assert (await api.get(CLAIMS, NS, "restored"))["spec"]["dataSource"]["name"] == "snap"
    events = {e["reason"] for e in await api.list("v1/events", NS) if e["involvedObject"]["name"] == "snap"}
    assert {"CreatingSnapshot", "SnapshotReady"} <= events


async def test_a_restore_waits_for_a_ready_snapshot_and_a_large_enough_claim(api: ApiClient, cluster: LocalCluster,
                                                                            wait_for) -> None:
    await api.create(CLAIMS, NS, restore("early", "later"))
    await api.create(PODS, NS, run("waits", "early", READ, "/data/step-1/w.bin"))

    async def failed(name: str, part: str) -> list:
        return [e for e in await api.list("v1/events", NS) if e["involvedObject"]["name"] == name
                and e["reason"] == "ProvisioningFailed" and part in e["message"]]
    await wait_for(lambda: failed("early", 'volumesnapshots.snapshot.storage.k8s.io "later" not found'))
    await written_volume(api, wait_for, "src", "w")
    await api.create(SNAPSHOTS, NS, snapshot("later", "src"))
    await succeeded(api, wait_for, "waits")
    await api.create(CLAIMS, NS, restore("small", "later", size="500Mi"))
    await api.create(PODS, NS, run("never", "small", READ, "/data/step-1/w.bin"))
    await wait_for(lambda: failed("small", "requested volume size 524288000 is less than the size 1073741824"))
    assert (await api.get(CLAIMS, NS, "small"))["status"]["phase"] == "Pending"


async def test_snapshot_errors_are_in_its_status(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    await api.create(SNAPSHOTS, NS, snapshot("no-class", "nothing", snapshot_class="missing"))

    async def error(name: str, part: str) -> str | None:
        obj = await api.get(SNAPSHOTS, NS, name)
        message = ((obj or {}).get("status", {}).get("error") or {}).get("message") or ""
        return message if part in message else None
    await wait_for(lambda: error("no-class", 'persistentvolumeclaim "nothing" not found'))
    await written_volume(api, wait_for, "vol", "x")
    await api.create(SNAPSHOTS, NS, snapshot("bad-class", "vol", snapshot_class="missing"))
    await wait_for(lambda: error("bad-class", 'volumesnapshotclass.snapshot.storage.k8s.io "missing" not found'))
    assert (await api.get(SNAPSHOTS, NS, "bad-class"))["status"]["readyToUse"] is False
    # Without a class: the default class of the volume's driver.
    await api.create(SNAPSHOTS, NS, snapshot("default-class", "vol", snapshot_class=None))
    done = await ready(api, wait_for, "default-class")
    content = await api.get(CONTENTS, None, done["status"]["boundVolumeSnapshotContentName"])
    assert content["spec"]["volumeSnapshotClassName"] == "block-snapshots"
    # A shared-filesystem volume's driver has no snapshot class.
    await api.create(CLAIMS, NS, claim("shared", "standard"))
    await api.create(SNAPSHOTS, NS, snapshot("no-driver-class", "shared", snapshot_class=None))
    await wait_for(lambda: error("no-driver-class", "cannot find default snapshot class for driver "
                                                    "shared.csi.local.ckpt.dev"), timeout=15)


async def test_deleting_a_snapshot_deletes_its_content_and_copy_after_the_restores(api: ApiClient,
                                                                                  cluster: LocalCluster,
                                                                                  wait_for) -> None:
    await written_volume(api, wait_for, "out", "w")
    await api.create(SNAPSHOTS, NS, snapshot("snap", "out"))
    done = await ready(api, wait_for, "snap")
    content_name = done["status"]["boundVolumeSnapshotContentName"]
    copy = cluster.snapshot_controller.copy_dir(content_name)
    assert (copy / "step-1" / "w.bin").read_text() == "w"
    # A restore that has not happened yet (no consumer of its WaitForFirstConsumer class) holds the deletion.
    await api.create(CLAIMS, NS, restore("pending", "snap"))
    await api.delete(SNAPSHOTS, NS, "snap")

    async def pending_event() -> list:
        return [e for e in await api.list("v1/events", NS)
                if e["involvedObject"]["name"] == "snap" and e["reason"] == "SnapshotDeletePending"]
    await wait_for(pending_event)
    assert copy.exists() and await api.get(CONTENTS, None, content_name) is not None
    await api.delete(CLAIMS, NS, "pending")

    async def all_gone() -> bool:
        return await api.get(SNAPSHOTS, NS, "snap") is None and await api.get(CONTENTS, None, content_name) is None
    await wait_for(all_gone, timeout=20)
    assert not copy.exists()


async def test_a_retained_content_keeps_its_copy(api: ApiClient, cluster: LocalCluster, wait_for) -> None:
    await api.create("snapshot.storage.k8s.io/v1/volumesnapshotclasses", None, {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass", "metadata": {"name": "keep"},
        "driver": "block.csi.local.ckpt.dev", "deletionPolicy": "Retain"})
    await written_volume(api, wait_for, "out", "w")
    await api.create(SNAPSHOTS, NS, snapshot("kept", "out", snapshot_class="keep"))
    content_name = (await ready(api, wait_for, "kept"))["status"]["boundVolumeSnapshotContentName"]
    await api.delete(SNAPSHOTS, NS, "kept")
    await wait_for(lambda: _gone(api, SNAPSHOTS, NS, "kept"))
    await asyncio.sleep(0.5)
    assert await api.get(CONTENTS, None, content_name) is not None
    assert (cluster.snapshot_controller.copy_dir(content_name) / "step-1" / "w.bin").exists()


async def _gone(api: ApiClient, resource: str, namespace: str | None, name: str) -> bool:
    return await api.get(resource, namespace, name) is None


async def test_the_source_claim_waits_for_a_snapshot_being_made(api: ApiClient, cluster: LocalCluster, wait_for,
                                                                monkeypatch) -> None:
    """pvc-as-source-protection: deleting the source claim while its snapshot is being cut waits for it."""
    await written_volume(api, wait_for, "out", "w")
    gate = asyncio.Event()
    copy_volume = local_snapshots._copy_volume

    async def slow_copy(source: Path, target: Path) -> None:
        await gate.wait()
        copy_volume(source, target)
    monkeypatch.setattr(local_snapshots.asyncio, "to_thread", _to_thread_with(slow_copy, copy_volume))
    await api.create(SNAPSHOTS, NS, snapshot("snap", "out"))

    async def protected() -> bool:
        return local_snapshots.PVC_FINALIZER in (await api.get(CLAIMS, NS, "out"))["metadata"]["finalizers"]
    await wait_for(protected)
    await api.delete(CLAIMS, NS, "out")
    await asyncio.sleep(0.5)
    assert (await api.get(CLAIMS, NS, "out"))["metadata"]["deletionTimestamp"]
    gate.set()
    await ready(api, wait_for, "snap")
    await wait_for(lambda: _gone(api, CLAIMS, NS, "out"))


def _to_thread_with(replacement, original):
    real = asyncio.to_thread

    async def to_thread(function, *args, **kwargs):
        if function is original:
            return await replacement(*args)
        return await real(function, *args, **kwargs)
    return to_thread


async def test_a_copy_cut_short_by_a_restart_is_made_again(api_url: str, api: ApiClient, tmp_path: Path,
                                                          wait_for, monkeypatch) -> None:
    """The cluster stops in the middle of a snapshot's copy (local mode killed): the content is not
    ready and nothing partial is ever restored; the next cluster makes the copy again."""
    data = tmp_path / "cluster"
    first = LocalCluster(api_url, data, nodes=2, poll_interval=2.0)
    await first.start()
    await written_volume(api, wait_for, "out", "weights")
    copy_volume = local_snapshots._copy_volume
    started = asyncio.Event()

    async def stuck_copy(source: Path, target: Path) -> None:
        (target.parent).mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-dead")
        partial.mkdir()
        (partial / "half").write_text("h")  # what a killed copy leaves
        started.set()
        await asyncio.Event().wait()
    monkeypatch.setattr(local_snapshots.asyncio, "to_thread", _to_thread_with(stuck_copy, copy_volume))
    await api.create(SNAPSHOTS, NS, snapshot("snap", "out"))
    await asyncio.wait_for(started.wait(), 20)
    await first.stop()
    content = (await api.list(CONTENTS, None))[0]
    assert not content.get("status", {}).get("readyToUse")
    assert local_snapshots.BEING_CREATED in content["metadata"]["annotations"]
    monkeypatch.undo()
    async with LocalCluster(api_url, data, nodes=2, poll_interval=2.0) as second:
        done = await ready(api, wait_for, "snap")
        copy = second.snapshot_controller.copy_dir(done["status"]["boundVolumeSnapshotContentName"])
        assert (copy / "step-1" / "w.bin").read_text() == "weights"
        assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # the partial copy is gone


def test_a_volume_nested_1000_deep_is_snapshotted_measured_and_restored(tmp_path: Path) -> None:
    """Issue 18's class on the CSI side: the snapshot's copy, its size and a restore's copy go to any
    depth (shutil.copytree and Path.rglob recurse per level: RecursionError near 1,000 before)."""
    from deep_trees import build_deep_tree, files_of

    from checkpoint_operator.agent import fstree
    from checkpoint_operator.local import storage as local_storage
    try:
        volume = build_deep_tree(tmp_path / "v")
        written = files_of(volume)
        copy = tmp_path / "snapshots" / "content-1"
        local_snapshots._copy_volume(volume, copy)
        assert files_of(copy) == written
        assert local_snapshots._tree_bytes(copy) == sum(len(data) for data in written.values())
        restored = tmp_path / "volumes" / "restored"
        local_storage._make_volume_directory(restored, copy)
        assert files_of(restored) == written
    finally:  # pytest's own clean-up of old temporary directories recurses
        fstree.remove_tree(str(tmp_path), ignore_errors=True, make_writable=True)
