"""Block storage that attaches to one node (issue 20 item 3), through the real operator on a three-node
local cluster: what the volume store does on a ReadWriteOnce class (consumers on other nodes wait on
a multi-attach error), and what volume snapshots change (storage.volume.snapshotClassName)."""

from __future__ import annotations

import asyncio
import json
import os
import threading

import pytest

from checkpoint_operator.config import OperatorConfig
from conftest import CKPT, NS, TJ, held_until, training_job, write_checkpoint
from formats_files import torch_file, weights
from test_operator_imports import web  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(180)

CLAIMS, PODS = "v1/persistentvolumeclaims", "v1/pods"


@pytest.fixture
def cluster_nodes() -> int:
    return 3


def on_node(job: dict, node: str) -> dict:
    job["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return job


async def wait_phase(api, wait_for, resource, name, phases, timeout=60):
    phases = (phases,) if isinstance(phases, str) else phases

    async def reached():
        obj = await api.get(resource, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") in phases else None
    return await wait_for(reached, timeout=timeout)


async def worker_pods(api, job: str) -> list[dict]:
    return await api.list(PODS, NS, label_selector=f"ckpt.dev/trainingjob={job},ckpt.dev/component=worker")


async def events_for(api, name: str, reason: str) -> list[dict]:
    return [e for e in await api.list("v1/events", NS)
            if e.get("involvedObject", {}).get("name") == name and e.get("reason") == reason]


class TestTheVolumeStoreOnReadWriteOnceBlockStorage:
    """Today's behaviour without a snapshot class, and the problem item 3 fixes."""

    @pytest.fixture
    def operator_config(self) -> OperatorConfig:
        return OperatorConfig(reconcile_interval=0.2, agent_image="checkpoint-operator:test",
                              default_storage_class="block")

    async def test_a_consumer_on_another_node_waits_on_a_multi_attach_error(self, api, operator, cluster, trainer,
                                                                          wait_for):
        trainer.behaviours["producer"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1",
                                                                          {"w.bin": b"weights"}) or 0
        await api.create(TJ, NS, on_node(training_job("producer"), "local-0"))
        await wait_phase(api, wait_for, TJ, "producer", "Succeeded")
        location = (await api.get(CKPT, NS, "producer.step-1") or await api.get(CKPT, NS, "producer-step-1"))
        claim = location["status"]["location"]["volume"]["claimName"]
        assert (await api.get(CLAIMS, NS, claim))["spec"]["accessModes"] == ["ReadWriteOnce"]

        release = asyncio.Event()
        trainer.behaviours["reader-b"] = held_until(release, timeout=60)
        trainer.behaviours["reader-c"] = lambda a, env: 0
        name = location["metadata"]["name"]
        await api.create(TJ, NS, on_node(training_job("reader-b", checkpoints=[{"name": name}]), "local-1"))
        await wait_for(lambda: "reader-b" in trainer.envs, timeout=30)
        await api.create(TJ, NS, on_node(training_job("reader-c", checkpoints=[{"name": name}]), "local-2"))
        [pod_c] = await wait_for(lambda: worker_pods(api, "reader-c"), timeout=30)
        [event] = await wait_for(lambda: events_for(api, pod_c["metadata"]["name"], "FailedAttachVolume"), timeout=30)
        [pod_b] = await worker_pods(api, "reader-b")
        volume = (await api.get(CLAIMS, NS, claim))["spec"]["volumeName"]
        assert event["message"] == (f'Multi-Attach error for volume "{volume}" Volume is already used by pod(s) '
                                    f'{pod_b["metadata"]["name"]}')
        assert "reader-c" not in trainer.envs  # still waiting: its volume is attached to local-1

        # hostile4 D9: its TrainingJob says so (it said Running and nothing else), naming the claim.
        async def attach_wait():
            tj = await api.get(TJ, NS, "reader-c")
            ready = next((c for c in tj["status"].get("conditions", []) if c["type"] == "Ready"), {})
            return (tj, ready) if ready.get("reason") == "VolumeAttachWait" else None
        tj, ready = await wait_for(attach_wait, timeout=30)
        assert tj["status"]["phase"] == "Running"
        assert ready["message"] == (f"pod {pod_c['metadata']['name']} waits to attach PersistentVolumeClaim {claim}: "
                                    f"{event['message']}")
        assert "reader-c" not in trainer.envs
        release.set()
        await wait_phase(api, wait_for, TJ, "reader-c", "Succeeded")
        assert await events_for(api, "reader-c", "VolumeAttachWait")  # a Warning, as the condition was set


# --- with volume snapshots ----------------------------------------------------------------------

SNAPSHOTS = "snapshot.storage.k8s.io/v1/volumesnapshots"
CONTENTS = "snapshot.storage.k8s.io/v1/volumesnapshotcontents"
SNAPSHOT_CONFIG = dict(reconcile_interval=0.2, agent_image="checkpoint-operator:test", default_storage_class="block",
                       volume_snapshot_class="block-snapshots")


def trainer_checkpoint(out: str, step: int) -> None:
    """A Transformers Trainer checkpoint (complete: files that parse); trainer_state.json (its completion
    marker) written last."""
    write_checkpoint(out, f"checkpoint-{step}", {"config.json": b"{}", "model.safetensors": weights(b"w" * step),
                                                 "optimizer.pt": torch_file()})
    write_checkpoint(out, f"checkpoint-{step}", {"trainer_state.json": json.dumps(
        {"global_step": step, "log_history": [{"step": step, "loss": 1.0}]}).encode()})


async def checkpoint_of(api, job: str, directory: str) -> dict | None:
    """The Checkpoint a job made of one directory of its output (whatever the naming rule)."""
    for obj in await api.list(CKPT, NS):
        source = obj["spec"]["source"].get("trainingJob") or {}
        if source.get("name") == job and source.get("directory") == directory:
            return obj
    return None


async def ready_checkpoint(api, wait_for, job: str, directory: str, timeout: float = 60) -> dict:
    async def ready():
        obj = await checkpoint_of(api, job, directory)
        return obj if obj and obj.get("status", {}).get("phase") == "Ready" else None
    return await wait_for(ready, timeout=timeout)


async def snapshot_ready(api, name: str) -> bool:
    body = await api.get(SNAPSHOTS, NS, name)
    return bool(body and (body.get("status") or {}).get("readyToUse"))


async def gone(api, resource: str, namespace: str | None, name: str) -> bool:
    return await api.get(resource, namespace, name) is None


async def job_snapshots(api, tj: dict) -> list[dict]:
    return await api.list(SNAPSHOTS, NS, label_selector=f"ckpt.dev/trainingjob-uid={tj['metadata']['uid']}")


def owner_kinds(obj: dict) -> list[tuple[str, str]]:
    return sorted((o["kind"], o["name"]) for o in obj["metadata"].get("ownerReferences") or [])


class TestVolumeSnapshots:
    """storage.volume.snapshotClassName set: checkpoints in VolumeSnapshots, consumers on any node."""

    @pytest.fixture
    def operator_config(self) -> OperatorConfig:
        return OperatorConfig(**SNAPSHOT_CONFIG)

    @pytest.mark.slow
    async def test_two_consumers_on_other_nodes_read_at_once_and_keep_frees_the_snapshots(
            self, api, operator, cluster, trainer, wait_for):
        first_seen, second_seen = threading.Event(), threading.Event()

        def produce(attempt, env):
            out = env["CHECKPOINT_OUTPUT_DIR"]
            trainer_checkpoint(out, 10)
            assert first_seen.wait(90)
            trainer_checkpoint(out, 20)
            assert second_seen.wait(90)
            return 0
        trainer.behaviours["producer"] = produce
        await api.create(TJ, NS, on_node(training_job("producer", output={"publish": "Continuous", "keep": 1}),
                                         "local-0"))

        # Sealed while the job runs: in a ready snapshot of the output volume, owned by the Checkpoint alone.
        c10 = await ready_checkpoint(api, wait_for, "producer", "checkpoint-10")
        location = c10["status"]["location"]["snapshot"]
        assert location["path"] == "checkpoint-10" and location["restoreSize"] == "10Gi"
        assert location["storageClassName"] == "block"
        snap10 = await api.get(SNAPSHOTS, NS, location["volumeSnapshotName"])
        assert snap10["status"]["readyToUse"] is True
        assert owner_kinds(snap10) == [("Checkpoint", c10["metadata"]["name"])]
        producer = await api.get(TJ, NS, "producer")
        assert producer["status"]["phase"] == "Running"
        assert snap10["spec"]["source"]["persistentVolumeClaimName"] == producer["status"]["outputClaim"]
        content10 = snap10["status"]["boundVolumeSnapshotContentName"]
        copy10 = cluster.snapshot_controller.copy_dir(content10)
        assert (copy10 / "checkpoint-10" / "model.safetensors").read_bytes() == weights(b"w" * 10)
        first_seen.set()

        # keep: 1: the newer one retires the older Checkpoint, and its snapshot goes with it.
        c20 = await ready_checkpoint(api, wait_for, "producer", "checkpoint-20")
        await wait_for(lambda: gone(api, SNAPSHOTS, NS, snap10["metadata"]["name"]), timeout=30)
        await wait_for(lambda: gone(api, CONTENTS, None, content10), timeout=30)
        assert not copy10.exists()
        second_seen.set()
        producer = await wait_phase(api, wait_for, TJ, "producer", "Succeeded")
        assert producer["status"]["outputCheckpoints"] == [c20["metadata"]["name"]]
        # The output volume is released once its checkpoints are in ready snapshots.
        await wait_for(lambda: gone(api, CLAIMS, NS, producer["status"]["outputClaim"]), timeout=30)
        snap20 = c20["status"]["location"]["snapshot"]["volumeSnapshotName"]
        assert [s["metadata"]["name"] for s in await job_snapshots(api, producer)] == [snap20]

        # Two consumers on the two other nodes, reading at the same time from volumes of their own.
        both_started, release = threading.Barrier(3, timeout=60), threading.Event()
        read = {}

        def consume(attempt, env):
            read[env["HOSTNAME"]] = open(os.path.join(env["CHECKPOINT_INPUT_PATH"], "model.safetensors"), "rb").read()
            both_started.wait()
            assert release.wait(60)
            return 0
        name = c20["metadata"]["name"]
        for reader, node in (("reader-b", "local-1"), ("reader-c", "local-2")):
            trainer.behaviours[reader] = consume
            await api.create(TJ, NS, on_node(training_job(reader, checkpoints=[{"name": name}]), node))
        await asyncio.to_thread(both_started.wait)  # both run at once: neither waits on the other's node
        assert sorted(read.values()) == [weights(b"w" * 20), weights(b"w" * 20)]
        claims = {}
        for reader, node in (("reader-b", "local-1"), ("reader-c", "local-2")):
            [pod] = await worker_pods(api, reader)
            assert pod["spec"]["nodeName"] == node and not await events_for(api, pod["metadata"]["name"],
                                                                             "FailedAttachVolume")
            claim = await api.get(CLAIMS, NS, f"{pod['metadata']['name']}-ckpt-in-0")
            assert claim["spec"]["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                                   "name": snap20}
            assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["status"]["phase"] == "Bound"
            assert claim["metadata"]["labels"]["ckpt.dev/component"] == "restored-input"
            assert claim["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "checkpoint-operator"
            assert owner_kinds(claim) == [("Pod", pod["metadata"]["name"])]
            claims[reader] = claim["metadata"]["name"]
            tj = await api.get(TJ, NS, reader)
            assert tj["status"]["restoredInputs"] == 1
        release.set()
        for reader in claims:
            done = await wait_phase(api, wait_for, TJ, reader, "Succeeded")
            assert "restoredInputs" not in done["status"]
        # Their pods' job is over: the pods go, and the restored volumes with them.
        for reader, claim in claims.items():
            await wait_for(lambda claim=claim: gone(api, CLAIMS, NS, claim), timeout=30)
            assert not await worker_pods(api, reader)
        await wait_event_reason(api, wait_for, "reader-b", "InputsReleased")

        # Deleting the last Checkpoint that points into the snapshot deletes it, its content and its copy.
        content20 = (await api.get(SNAPSHOTS, NS, snap20))["status"]["boundVolumeSnapshotContentName"]
        await api.delete(CKPT, NS, name)
        await wait_for(lambda: gone(api, SNAPSHOTS, NS, snap20), timeout=30)
        await wait_for(lambda: gone(api, CONTENTS, None, content20), timeout=30)
        assert not cluster.snapshot_controller.copy_dir(content20).exists()

    async def test_the_end_of_job_snapshot_holds_every_checkpoint_of_the_output(self, api, operator, cluster, trainer,
                                                                                wait_for):
        def produce(attempt, env):
            out = env["CHECKPOINT_OUTPUT_DIR"]
            write_checkpoint(out, "step-1", {"w.bin": b"1"})
            write_checkpoint(out, "step-2", {"w.bin": b"22"})
            write_checkpoint(out, ".", {"config.json": b"{}", "model.safetensors": b"final"})
            return 0
        trainer.behaviours["pretrain"] = produce
        await api.create(TJ, NS, on_node(training_job("pretrain"), "local-0"))
        tj = await wait_phase(api, wait_for, TJ, "pretrain", "Succeeded")
        checkpoints = [await checkpoint_of(api, "pretrain", d) for d in ("step-1", "step-2", ".")]
        snapshot_names = {c["status"]["location"]["snapshot"]["volumeSnapshotName"] for c in checkpoints}
        assert len(snapshot_names) == 1  # one snapshot of the output, after the writers stopped
        [snapshot_name] = snapshot_names
        assert checkpoints[2]["status"]["location"]["snapshot"]["items"] == ["config.json", "model.safetensors"]
        snapshot = await api.get(SNAPSHOTS, NS, snapshot_name)
        assert owner_kinds(snapshot) == sorted(("Checkpoint", c["metadata"]["name"]) for c in checkpoints)
        await wait_for(lambda: gone(api, CLAIMS, NS, tj["status"]["outputClaim"]), timeout=30)

        seen = {}

        def consume(attempt, env):
            root = env["CHECKPOINT_INPUT_PATH"]
            seen["files"] = sorted(os.listdir(root))
            seen["model"] = open(os.path.join(root, "model.safetensors"), "rb").read()
            return 0
        trainer.behaviours["finetune"] = consume
        final = checkpoints[2]["metadata"]["name"]
        await api.create(TJ, NS, on_node(training_job("finetune", checkpoints=[{"name": final}]), "local-2"))
        await wait_phase(api, wait_for, TJ, "finetune", "Succeeded")
        assert seen == {"files": ["config.json", "model.safetensors"], "model": b"final"}  # the root files only

        # The snapshot stays while any Checkpoint points into it.
        for c in checkpoints[:2]:
            await api.delete(CKPT, NS, c["metadata"]["name"])
        await wait_for(lambda: gone(api, CKPT, NS, checkpoints[1]["metadata"]["name"]), timeout=30)
        await asyncio.sleep(1.0)
        assert owner_kinds(await api.get(SNAPSHOTS, NS, snapshot_name)) == [("Checkpoint", final)]
        await api.delete(CKPT, NS, final)
        await wait_for(lambda: gone(api, SNAPSHOTS, NS, snapshot_name), timeout=30)

    async def test_a_consumer_whose_snapshot_was_deleted_says_why_it_waits(self, api, operator, cluster, trainer,
                                                                          wait_for, monkeypatch):
        """Someone deletes the VolumeSnapshot a Ready Checkpoint points into (it has the RBAC to): the
        consumer's restored volume cannot be provisioned, and its TrainingJob names the claim and the
        provisioner's reason instead of staying silently Running."""
        from checkpoint_operator.reconcile import volumes
        monkeypatch.setattr(volumes, "CLAIM_RECHECK", 0.5)
        trainer.behaviours["producer"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1",
                                                                          {"w.bin": b"w"}) or 0
        await api.create(TJ, NS, training_job("producer"))
        await wait_phase(api, wait_for, TJ, "producer", "Succeeded")
        step1 = await ready_checkpoint(api, wait_for, "producer", "step-1")
        snapshot = step1["status"]["location"]["snapshot"]["volumeSnapshotName"]
        await api.delete(SNAPSHOTS, NS, snapshot)
        await wait_for(lambda: gone(api, SNAPSHOTS, NS, snapshot), timeout=30)
        trainer.behaviours["reader"] = lambda a, env: 0
        await api.create(TJ, NS, training_job("reader", checkpoints=[{"name": step1["metadata"]["name"]}]))

        async def explained():
            tj = await api.get(TJ, NS, "reader")
            ready = next((c for c in (tj or {}).get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})
            # The first pass may say "no event says why yet": the provisioner's event comes after.
            explains = ready.get("reason") == "VolumeNotBound" and "ProvisioningFailed" in ready.get("message", "")
            return ready if explains else None
        ready = await wait_for(explained, timeout=30)
        assert "-ckpt-in-0 is Pending: ProvisioningFailed" in ready["message"]
        assert f'volumesnapshots.snapshot.storage.k8s.io "{snapshot}" not found' in ready["message"]
        assert "reader" not in trainer.envs

    async def test_a_snapshot_made_in_advance_under_the_operator_s_name_is_never_taken(self, api, operator, cluster,
                                                                                       trainer, wait_for):
        """hostile4 D8: a tenant made a VolumeSnapshot of the running job's output under the name the
        operator would use (computable from status.outputClaim), with its labels; the operator
        adopted it: the Checkpoint was Ready with the digest of the final bytes while consumers read
        the older bytes the early snapshot held. Only a snapshot the operator created and recorded
        (status.volumeSnapshots, by UID) is a checkpoint's; the tenant's is left alone."""
        from checkpoint_operator.logic.volume_snapshots import COMPONENT_OUTPUT, volume_snapshot_name
        go = threading.Event()

        def producer(attempt, env):
            write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"w.bin": b"OLD-BYTES"})
            assert go.wait(60)
            write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"w.bin": b"NEW-BYTES"})
            return 0
        trainer.behaviours["producer"] = producer
        await api.create(TJ, NS, training_job("producer"))
        await wait_for(lambda: "producer" in trainer.envs, timeout=30)
        tj = await api.get(TJ, NS, "producer")
        claim = tj["status"]["outputClaim"]
        squat = volume_snapshot_name(claim, "final")
        labels = {"app.kubernetes.io/managed-by": "checkpoint-operator", "ckpt.dev/component": COMPONENT_OUTPUT,
                  "ckpt.dev/trainingjob": "producer", "ckpt.dev/trainingjob-uid": tj["metadata"]["uid"]}
        await api.create(SNAPSHOTS, NS, {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                         "metadata": {"name": squat, "namespace": NS, "labels": labels},
                                         "spec": {"volumeSnapshotClassName": "block-snapshots",
                                                  "source": {"persistentVolumeClaimName": claim}}})
        await wait_for(lambda: snapshot_ready(api, squat), timeout=30)
        go.set()
        await wait_phase(api, wait_for, TJ, "producer", "Succeeded")
        step1 = await ready_checkpoint(api, wait_for, "producer", "step-1")
        location = step1["status"]["location"]["snapshot"]
        assert location["volumeSnapshotName"] != squat and location["volumeSnapshotName"].startswith(squat + "-")
        taken = await api.get(SNAPSHOTS, NS, location["volumeSnapshotName"])
        assert location["volumeSnapshotUID"] == taken["metadata"]["uid"]
        producer = await api.get(TJ, NS, "producer")
        assert producer["status"]["volumeSnapshots"] == [{"key": squat, "name": taken["metadata"]["name"],
                                                          "uid": taken["metadata"]["uid"]}]
        copy = cluster.snapshot_controller.copy_dir(taken["status"]["boundVolumeSnapshotContentName"])
        assert (copy / "step-1" / "w.bin").read_bytes() == b"NEW-BYTES"
        read = {}
        trainer.behaviours["reader"] = lambda a, env: read.setdefault(
            "w", open(os.path.join(env["CHECKPOINT_INPUT_PATH"], "w.bin"), "rb").read()) and 0
        await api.create(TJ, NS, training_job("reader", checkpoints=[{"name": step1["metadata"]["name"]}]))
        await wait_phase(api, wait_for, TJ, "reader", "Succeeded")
        assert read == {"w": b"NEW-BYTES"}
        # The tenant's snapshot is not the operator's to hand over or delete.
        kept = await api.get(SNAPSHOTS, NS, squat)
        assert kept is not None and not kept["metadata"].get("ownerReferences")

    async def test_a_template_mount_of_the_restored_input_volume_is_refused(self, api, operator, cluster, trainer,
                                                                            wait_for):
        """hostile4 D3: a consumer's own mount naming `ckpt-in-0` got the restored claim read-write (an
        ephemeral volume has no volume-level readOnly). The job fails in one line; no pod runs."""
        trainer.behaviours["producer"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1",
                                                                          {"w.bin": b"w"}) or 0
        await api.create(TJ, NS, training_job("producer"))
        await wait_phase(api, wait_for, TJ, "producer", "Succeeded")
        step1 = await ready_checkpoint(api, wait_for, "producer", "step-1")
        trainer.behaviours["rw"] = lambda a, env: 0
        body = training_job("rw", checkpoints=[{"name": step1["metadata"]["name"]}])
        body["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "ckpt-in-0", "mountPath": "/rw"}]
        await api.create(TJ, NS, body)
        tj = await wait_phase(api, wait_for, TJ, "rw", ("Running", "Succeeded", "Failed"))
        assert tj["status"]["phase"] == "Failed"
        assert tj["status"]["message"].startswith("spec.template.spec.containers[trainer].volumeMounts 'ckpt-in-0' "
                                                  "names a volume the operator adds")
        assert "rw" not in trainer.envs and not await worker_pods(api, "rw")

    async def test_a_restarted_group_gets_its_inputs_restored_from_the_snapshot_again(self, api, operator, cluster,
                                                                                      trainer, wait_for):
        """A 2-worker consumer (engine Job) whose worker 1 fails: the operator's group restart stages the
        inputs as the first start did (a volume restored from the snapshot per pod), records them, and
        releases the restarted pods' volumes at the end; the failed attempt's volumes go with its pods."""
        trainer.behaviours["producer"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1",
                                                                          {"w.bin": b"w1"}) or 0
        await api.create(TJ, NS, training_job("producer"))
        await wait_phase(api, wait_for, TJ, "producer", "Succeeded")
        step1 = await ready_checkpoint(api, wait_for, "producer", "step-1")
        snapshot = step1["status"]["location"]["snapshot"]["volumeSnapshotName"]
        reads: list[tuple[str, str, bytes]] = []
        second_started, release = threading.Barrier(3, timeout=60), threading.Event()

        def group(attempt, env):
            reads.append((env["ATTEMPT"], env["JOB_COMPLETION_INDEX"],
                          open(os.path.join(env["CHECKPOINT_INPUT_PATH"], "w.bin"), "rb").read()))
            if env["ATTEMPT"] == "0":
                return 3 if env["JOB_COMPLETION_INDEX"] == "1" else 0
            second_started.wait()
            assert release.wait(60)
            return 0
        trainer.behaviours["group"] = group
        body = training_job("group", checkpoints=[{"name": step1["metadata"]["name"]}], replicas=2, backoffLimit=1,
                            output={"enabled": False})
        body["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "ATTEMPT", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.labels['ckpt.dev/restart-attempt']"}}}]
        await api.create(TJ, NS, body)
        await asyncio.to_thread(second_started.wait)
        tj = await api.get(TJ, NS, "group")
        assert tj["status"]["restarts"] == 1 and tj["status"]["restoredInputs"] == 1
        pods = [p for p in await worker_pods(api, "group")
                if p["metadata"]["labels"]["ckpt.dev/restart-attempt"] == "1" and not p["metadata"].get(
                    "deletionTimestamp")]
        assert len(pods) == 2
        restored = [f"{p['metadata']['name']}-ckpt-in-0" for p in pods]
        for name in restored:
            claim = await api.get(CLAIMS, NS, name)
            assert claim["spec"]["dataSource"]["name"] == snapshot and claim["status"]["phase"] == "Bound"

        async def only_the_restarted_pods_claims():
            claims = await api.list(CLAIMS, NS, label_selector="ckpt.dev/component=restored-input")
            return sorted(c["metadata"]["name"] for c in claims) == sorted(restored)
        await wait_for(only_the_restarted_pods_claims, timeout=30)  # the failed attempt's went with its pods
        release.set()
        done = await wait_phase(api, wait_for, TJ, "group", ("Succeeded", "Failed"))
        assert done["status"]["phase"] == "Succeeded", done["status"].get("message")

        async def released():  # the outcome is written first, then the pods go, then the count
            tj = await api.get(TJ, NS, "group")
            return "restoredInputs" not in tj["status"]
        await wait_for(released, timeout=30)
        for name in restored:
            await wait_for(lambda name=name: gone(api, CLAIMS, NS, name), timeout=30)
        assert {data for _, _, data in reads} == {b"w1"}
        assert sorted((a, i) for a, i, _ in reads if a == "1") == [("1", "0"), ("1", "1")]

    async def test_an_import_is_kept_in_a_snapshot_and_its_volume_released(self, api, operator, cluster, trainer,
                                                                         wait_for, web):
        await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                                    "metadata": {"name": "base", "namespace": NS},
                                    "spec": {"source": {"http": {"url": f"{web}/model.tar.gz"}}}})

        async def ready():
            obj = await api.get(CKPT, NS, "base")
            return obj if obj.get("status", {}).get("phase") == "Ready" else None
        base = await wait_for(ready, timeout=60)
        location = base["status"]["location"]["snapshot"]
        assert location["path"] == "data" and base["status"]["owned"] is True
        snapshot = await api.get(SNAPSHOTS, NS, location["volumeSnapshotName"])
        assert owner_kinds(snapshot) == [("Checkpoint", "base")]
        await wait_for(lambda: gone(api, CLAIMS, NS, "base-data"), timeout=30)
        seen = {}

        def consume(attempt, env):
            seen["model"] = open(os.path.join(env["CHECKPOINT_INPUT_PATH"], "model.safetensors"), "rb").read()
            return 0
        for reader, node in (("r1", "local-1"), ("r2", "local-2")):
            trainer.behaviours[reader] = consume
            await api.create(TJ, NS, on_node(training_job(reader, checkpoints=[{"name": "base"}], output={
                "enabled": False}), node))
        for reader in ("r1", "r2"):
            await wait_phase(api, wait_for, TJ, reader, "Succeeded")
        assert seen["model"] == b"w" * 64
        await api.delete(CKPT, NS, "base")
        await wait_for(lambda: gone(api, SNAPSHOTS, NS, location["volumeSnapshotName"]), timeout=30)


async def wait_event_reason(api, wait_for, name: str, reason: str) -> list[dict]:
    return await wait_for(lambda: events_for(api, name, reason), timeout=20)


class TestReadOnlyManyRestores:
    """A driver that attaches read-only to many nodes (GCE PD: block-multireader here) with
    restoreAccessMode ReadOnlyMany; each replica of a multi-pod consumer gets its own restored claim."""

    @pytest.fixture
    def operator_config(self) -> OperatorConfig:
        return OperatorConfig(**{**SNAPSHOT_CONFIG, "default_storage_class": "block-multireader",
                                 "volume_restore_access_mode": "ReadOnlyMany"})

    async def test_every_replica_reads_from_a_read_only_many_claim_of_its_own(self, api, operator, cluster, trainer,
                                                                            wait_for):
        trainer.behaviours["producer"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1",
                                                                          {"w.bin": b"weights"}) or 0
        await api.create(TJ, NS, training_job("producer"))
        await wait_phase(api, wait_for, TJ, "producer", "Succeeded")
        step1 = await ready_checkpoint(api, wait_for, "producer", "step-1")
        started, release, read = threading.Barrier(3, timeout=60), threading.Event(), []

        def consume(attempt, env):
            read.append(open(os.path.join(env["CHECKPOINT_INPUT_PATH"], "w.bin"), "rb").read())
            started.wait()
            assert release.wait(60)
            return 0
        trainer.behaviours["pair"] = consume
        await api.create(TJ, NS, training_job("pair", replicas=2, checkpoints=[{"name": step1["metadata"]["name"]}],
                                              output={"enabled": False}))
        await asyncio.to_thread(started.wait)
        pods = await worker_pods(api, "pair")
        assert len({p["spec"]["nodeName"] for p in pods}) == 2  # spread over two nodes, both running
        for pod in pods:
            claim = await api.get(CLAIMS, NS, f"{pod['metadata']['name']}-ckpt-in-0")
            assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
            assert claim["spec"]["storageClassName"] == "block-multireader"
        assert read == [b"weights", b"weights"]
        release.set()
        await wait_phase(api, wait_for, TJ, "pair", "Succeeded")


class TestKubectlCkptOnSnapshots:
    """kubectl ckpt verify and pull of a checkpoint kept in a VolumeSnapshot (their pods restore it),
    and a push (kept in a snapshot of its own volume)."""

    @pytest.fixture
    def operator_config(self) -> OperatorConfig:
        return OperatorConfig(**SNAPSHOT_CONFIG)

    @pytest.mark.slow
    async def test_verify_pull_and_push(self, api, operator, cluster, trainer, wait_for, tmp_path):
        from plugin_helpers import Plugin, tree_digest, write_kubeconfig
        ckpt = Plugin(write_kubeconfig(tmp_path / "kubeconfig", cluster.api_url))
        files = {"config.json": b"{}", "model.safetensors": b"m" * 4096}
        trainer.behaviours["producer"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-7",
                                                                          files) or 0
        await api.create(TJ, NS, on_node(training_job("producer"), "local-0"))
        await wait_phase(api, wait_for, TJ, "producer", "Succeeded")
        name = (await ready_checkpoint(api, wait_for, "producer", "step-7"))["metadata"]["name"]
        verified = await ckpt("verify", name)
        assert verified.code == 0, verified.err
        assert "Verified=True (Verified)" in verified.out and "VolumeSnapshot" in verified.out
        pulled = await ckpt("pull", name, str(tmp_path / "back"))
        assert pulled.code == 0, pulled.err
        expected = tmp_path / "expected"
        write_checkpoint(str(expected), ".", files)
        assert tree_digest(tmp_path / "back") == tree_digest(expected)
        # A push lands on a volume of its own, is kept in a snapshot of it, and the volume is released.
        from plugin_helpers import make_model_dir
        source = make_model_dir(tmp_path)
        pushed = await ckpt("push", str(source), "--name", "laptop-model")
        assert pushed.code == 0, pushed.err
        body = await api.get(CKPT, NS, "laptop-model")
        location = body["status"]["location"]["snapshot"]
        assert location["path"] == "data" and body["status"]["phase"] == "Ready"
        assert owner_kinds(await api.get(SNAPSHOTS, NS, location["volumeSnapshotName"])) == [
            ("Checkpoint", "laptop-model")]
        await wait_for(lambda: gone(api, CLAIMS, NS, "laptop-model-data"), timeout=30)
        back = await ckpt("pull", "laptop-model", str(tmp_path / "laptop-back"))
        assert back.code == 0, back.err
        assert tree_digest(tmp_path / "laptop-back") == tree_digest(source)
        # Their pods are gone, and the volumes restored for them with them.
        async def no_restored_claims():
            claims = await api.list(CLAIMS, NS)
            return not [c for c in claims if c["metadata"].get("labels", {}).get("ckpt.dev/component") ==
                        "restored-input"]
        await wait_for(no_restored_claims, timeout=30)


class TestACheckpointFollowsItsSnapshot:
    """hostile4 D4: a Ready Checkpoint stayed Ready after its VolumeSnapshot was deleted or turned
    readyToUse=false. The resync (one LIST of the namespace's snapshots) wakes the Checkpoint, whose
    own reconcile reads its snapshot and fails it with the reason; nothing selects it then."""

    @pytest.fixture
    def operator_config(self) -> OperatorConfig:
        return OperatorConfig(**SNAPSHOT_CONFIG, resync_interval=0.5)

    async def test_a_lost_or_unready_snapshot_fails_its_checkpoint_and_latest_skips_it(self, api, operator, cluster,
                                                                                      trainer, wait_for):
        sealed = threading.Event()

        def produce(attempt, env):
            trainer_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], 10)
            assert sealed.wait(90)
            trainer_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], 20)
            return 0
        trainer.behaviours["producer"] = produce
        await api.create(TJ, NS, training_job("producer", output={"publish": "Continuous"}))
        c10 = await ready_checkpoint(api, wait_for, "producer", "checkpoint-10")
        sealed.set()
        c20 = await ready_checkpoint(api, wait_for, "producer", "checkpoint-20")
        await wait_phase(api, wait_for, TJ, "producer", "Succeeded")
        name20 = c20["metadata"]["name"]
        snap20 = c20["status"]["location"]["snapshot"]["volumeSnapshotName"]
        assert snap20 != c10["status"]["location"]["snapshot"]["volumeSnapshotName"]

        async def checkpoint_reason(reason):
            obj = await api.get(CKPT, NS, name20)
            ready = next((c for c in obj["status"].get("conditions", []) if c["type"] == "Ready"), {})
            return obj if ready.get("reason") == reason else None

        # Not readyToUse (the CSI driver says so on the content; the snapshot follows it): Failed, naming it
        # and the error.
        content = (await api.get(SNAPSHOTS, NS, snap20))["status"]["boundVolumeSnapshotContentName"]

        async def content_status(**status):
            body = await api.get(CONTENTS, None, content)
            body["status"].update(status)
            await api.replace(CONTENTS, None, content, {k: v for k, v in body.items()}, subresource="status")
        await content_status(readyToUse=False, error={"message": "the storage lost the snapshot"})
        failed = await wait_for(lambda: checkpoint_reason("VolumeSnapshotNotReady"), timeout=30)
        assert failed["status"]["phase"] == "Failed"
        assert failed["status"]["message"] == (f"VolumeSnapshot {snap20} is not readyToUse: the storage lost the "
                                               "snapshot")
        # select: latest takes the newest usable one.
        read = {}
        trainer.behaviours["reader"] = lambda a, env: read.setdefault(
            "w", open(os.path.join(env["CHECKPOINT_INPUT_PATH"], "model.safetensors"), "rb").read()) and 0
        await api.create(TJ, NS, training_job("reader", checkpoints=[{"fromTrainingJob": "producer",
                                                                      "select": "latest"}]))
        reader = await wait_phase(api, wait_for, TJ, "reader", ("Succeeded", "Failed"))
        assert reader["status"]["phase"] == "Succeeded" and read == {"w": weights(b"w" * 10)}
        assert [p["name"] for p in reader["status"]["inputs"]] == [c10["metadata"]["name"]]

        # readyToUse again: Ready again.
        await content_status(readyToUse=True, error=None)
        again = await wait_for(lambda: checkpoint_reason("Ready"), timeout=30)
        assert again["status"]["phase"] == "Ready" and again["status"]["message"].endswith(
            f"VolumeSnapshot {snap20} is readyToUse again")

        # Deleted outside the operator: Failed for good, naming it.
        await api.delete(SNAPSHOTS, NS, snap20)
        lost = await wait_for(lambda: checkpoint_reason("VolumeSnapshotLost"), timeout=30)
        assert lost["status"]["phase"] == "Failed"
        assert lost["status"]["message"] in (  # seen while its finalizers run, or after
            f"VolumeSnapshot {snap20} is gone (deleted outside the operator): the data of this Checkpoint is lost",
            f"VolumeSnapshot {snap20} is being deleted outside the operator: the data of this Checkpoint is lost")
        assert (await api.get(CKPT, NS, c10["metadata"]["name"]))["status"]["phase"] == "Ready"


# --- a volume per worker, kept in one VolumeSnapshot per worker volume (issue 19) -----------------

PART_WRITER = """
import json, os
out, rank = os.environ["CHECKPOINT_OUTPUT_DIR"], int(os.environ["RANK"])
def write(step, name, data):
    os.makedirs(os.path.join(out, step), exist_ok=True)
    with open(os.path.join(out, step, name), "wb") as f:
        f.write(data)
write("step-1", f"shard-{rank}.bin", bytes([rank]) * 16)      # each rank its own shard
write("step-1", "config.json", json.dumps({"layers": 2}).encode())  # the same bytes from both
if rank == 0:                                                   # step-2: rank 0 alone
    write("step-2", "shard-0.bin", b"\\x02" * 8)
"""

PART_READER = """
import os, sys
root = os.environ["CHECKPOINT_INPUT_PATH"]
listing = sorted(f"{name}={open(os.path.join(root, name), 'rb').read().hex()}" for name in os.listdir(root))
with open(sys.argv[1], "w") as f:  # the test's own file (the job has no output)
    f.write("\\n".join(listing))
"""


class TestAVolumePerWorkerInSnapshots:
    """output.volumePerWorker with storage.volume.snapshotClassName (issue 19): once the union scan
    is done, each worker volume that holds a part of a checkpoint is snapshotted; a union
    Checkpoint's location names each worker's snapshot and part; a consumer restores them all and
    sees the union; a snapshot goes with the last Checkpoint that needs it."""

    @pytest.fixture
    def operator_config(self) -> OperatorConfig:
        return OperatorConfig(**SNAPSHOT_CONFIG)

    async def test_one_snapshot_per_worker_volume_a_consumer_sees_the_union_and_each_goes_with_its_last_user(
            self, api, operator, cluster, wait_for, tmp_path):
        import sys
        await api.create(TJ, NS, training_job("vps", replicas=2, engine="JobSet", backoffLimit=0,
                                              output={"volumePerWorker": True},
                                              command=[sys.executable, "-c", PART_WRITER]))
        tj = await wait_phase(api, wait_for, TJ, "vps", ("Succeeded", "Failed"), timeout=120)
        assert tj["status"]["phase"] == "Succeeded", tj["status"].get("message")
        assert tj["status"]["outputCheckpoints"] == ["vps.step-1", "vps.step-2"]
        step1, step2 = await api.get(CKPT, NS, "vps.step-1"), await api.get(CKPT, NS, "vps.step-2")
        assert step1["status"]["phase"] == step2["status"]["phase"] == "Ready"
        assert step1["status"]["fileCount"] == 3
        parts1, parts2 = step1["status"]["location"]["snapshotParts"], step2["status"]["location"]["snapshotParts"]
        assert [(p["worker"], p["path"], p["items"]) for p in parts1] == [
            (0, "step-1", ["config.json", "shard-0.bin"]), (1, "step-1", ["shard-1.bin"])]
        assert [(p["worker"], p.get("items")) for p in parts2] == [(0, None)]
        assert "volume" not in step1["status"]["location"] and "volumeParts" not in step1["status"]["location"]

        # One snapshot per worker volume, ready, of that worker's claim; each owned by every Checkpoint
        # that needs it (worker 0's by both, worker 1's by step-1 alone), no longer by the job.
        snaps = {p["worker"]: p["volumeSnapshotName"] for p in parts1}
        assert parts2[0]["volumeSnapshotName"] == snaps[0]
        assert sorted(s["metadata"]["name"] for s in await job_snapshots(api, tj)) == sorted(snaps.values())
        for worker, name in snaps.items():
            body = await api.get(SNAPSHOTS, NS, name)
            assert body["status"]["readyToUse"] is True
            assert body["spec"]["source"]["persistentVolumeClaimName"] == \
                f"vps-output-{tj['metadata']['uid'][:5]}-{worker}"  # worker i's own volume
            copy = cluster.snapshot_controller.copy_dir(body["status"]["boundVolumeSnapshotContentName"])
            # what that worker wrote (config.json too: the union mounts worker 0's, the same bytes)
            assert sorted(p.name for p in (copy / "step-1").iterdir()) == ["config.json", f"shard-{worker}.bin"]
        assert owner_kinds(await api.get(SNAPSHOTS, NS, snaps[0])) == [("Checkpoint", "vps.step-1"),
                                                                        ("Checkpoint", "vps.step-2")]
        assert owner_kinds(await api.get(SNAPSHOTS, NS, snaps[1])) == [("Checkpoint", "vps.step-1")]
        # The workers' volumes are released once their checkpoints are in ready snapshots.
        for worker in (0, 1):
            source = (await api.get(SNAPSHOTS, NS, snaps[worker]))["spec"]["source"]["persistentVolumeClaimName"]
            await wait_for(lambda source=source: gone(api, CLAIMS, NS, source), timeout=30)

        # A second job reads the union at its input path: a volume restored from each snapshot.
        await api.create(TJ, NS, training_job("reader", checkpoints=[{"name": "vps.step-1"}], output={"enabled": False},
                                              command=[sys.executable, "-c", PART_READER, str(tmp_path / "seen.txt")]))
        reader = await wait_phase(api, wait_for, TJ, "reader", ("Succeeded", "Failed"), timeout=90)
        assert reader["status"]["phase"] == "Succeeded", reader["status"].get("message")
        seen = (tmp_path / "seen.txt").read_text().splitlines()
        config = json.dumps({"layers": 2}).encode().hex()
        assert seen == [f"config.json={config}", f"shard-0.bin={'00' * 16}", f"shard-1.bin={'01' * 16}"]
        [released] = await wait_event_reason(api, wait_for, "reader", "InputsReleased")
        assert "the 2 volume(s) each restored from snapshots" in released["message"]  # one per worker's snapshot

        # kubectl ckpt verify's request: its pod restores both snapshots and reads the union again.
        await api.patch(CKPT, NS, "vps.step-1", {"metadata": {"annotations": {"ckpt.dev/verify-requested": "now"}}})

        async def verified():
            body = await api.get(CKPT, NS, "vps.step-1")
            found = next((c for c in body["status"].get("conditions", []) if c["type"] == "Verified"), {})
            return found if found.get("status") in ("True", "False") else None
        condition = await wait_for(verified, timeout=60)
        assert condition["status"] == "True", condition
        assert "all 3 files" in condition["message"] and "2 VolumeSnapshots" in condition["message"]

        # Deleting step-1 deletes worker 1's snapshot (no one else needs it), not worker 0's (step-2's).
        content1 = (await api.get(SNAPSHOTS, NS, snaps[1]))["status"]["boundVolumeSnapshotContentName"]
        await api.delete(CKPT, NS, "vps.step-1")
        await wait_for(lambda: gone(api, SNAPSHOTS, NS, snaps[1]), timeout=30)
        await wait_for(lambda: gone(api, CONTENTS, None, content1), timeout=30)
        body0 = await api.get(SNAPSHOTS, NS, snaps[0])
        assert body0 is not None and owner_kinds(body0) == [("Checkpoint", "vps.step-2")]
        assert (await api.get(CKPT, NS, "vps.step-2"))["status"]["phase"] == "Ready"
        await api.delete(CKPT, NS, "vps.step-2")
        await wait_for(lambda: gone(api, SNAPSHOTS, NS, snaps[0]), timeout=30)

    async def test_per_worker_checkpoints_each_need_only_their_workers_snapshot(self, api, operator, cluster,
                                                                                wait_for):
        """output.perWorker (proxiML's mode): each worker's checkpoints are its own; each is in the
        snapshot of its worker's volume alone, owned by that worker's Checkpoints only."""
        import sys
        writer = ("import os; out, rank = os.environ['CHECKPOINT_OUTPUT_DIR'], os.environ['RANK']; "
                  "os.makedirs(os.path.join(out, 'step-1')); "
                  "open(os.path.join(out, 'step-1', 'w.bin'), 'wb').write(rank.encode() * 4)")
        await api.create(TJ, NS, training_job("pw", replicas=2, engine="JobSet", backoffLimit=0,
                                              output={"perWorker": True}, command=[sys.executable, "-c", writer]))
        tj = await wait_phase(api, wait_for, TJ, "pw", ("Succeeded", "Failed"), timeout=120)
        assert tj["status"]["phase"] == "Succeeded", tj["status"].get("message")
        names = tj["status"]["outputCheckpoints"]
        assert len(names) == 2
        snaps = []
        for worker in (0, 1):
            [body] = [b for b in [await api.get(CKPT, NS, n) for n in names]
                      if b["spec"]["source"]["trainingJob"]["directory"] == f"worker-{worker}/step-1"]
            [part] = body["status"]["location"]["snapshotParts"]
            assert (part["worker"], part["path"], part.get("items")) == (worker, "step-1", None)
            snapshot = await api.get(SNAPSHOTS, NS, part["volumeSnapshotName"])
            assert snapshot["spec"]["source"]["persistentVolumeClaimName"].endswith(f"-{worker}")
            assert owner_kinds(snapshot) == [("Checkpoint", body["metadata"]["name"])]
            copy = cluster.snapshot_controller.copy_dir(snapshot["status"]["boundVolumeSnapshotContentName"])
            assert (copy / "step-1" / "w.bin").read_bytes() == str(worker).encode() * 4
            snaps.append(part["volumeSnapshotName"])
        assert len(set(snaps)) == 2


class TestAUnionFollowsEachOfItsSnapshots:
    """hostile4 D4 for a union in several snapshots: the resync looks at each; one not readyToUse
    fails the Checkpoint (naming it) and only the Checkpoints that need it; readyToUse again, Ready
    again; deleted outside the operator, Failed for good."""

    @pytest.fixture
    def operator_config(self) -> OperatorConfig:
        return OperatorConfig(**SNAPSHOT_CONFIG, resync_interval=0.5)

    async def test_one_workers_snapshot_lost_fails_the_unions_that_need_it(self, api, operator, cluster, wait_for):
        import sys
        await api.create(TJ, NS, training_job("vpl", replicas=2, engine="JobSet", backoffLimit=0,
                                              output={"volumePerWorker": True},
                                              command=[sys.executable, "-c", PART_WRITER]))
        tj = await wait_phase(api, wait_for, TJ, "vpl", ("Succeeded", "Failed"), timeout=120)
        assert tj["status"]["phase"] == "Succeeded", tj["status"].get("message")
        parts = (await api.get(CKPT, NS, "vpl.step-1"))["status"]["location"]["snapshotParts"]
        snap0, snap1 = (p["volumeSnapshotName"] for p in parts)

        async def reason_of(name, reason):
            obj = await api.get(CKPT, NS, name)
            ready = next((c for c in obj["status"].get("conditions", []) if c["type"] == "Ready"), {})
            return obj if ready.get("reason") == reason else None

        content = (await api.get(SNAPSHOTS, NS, snap1))["status"]["boundVolumeSnapshotContentName"]

        async def content_status(**status):
            body = await api.get(CONTENTS, None, content)
            body["status"].update(status)
            await api.replace(CONTENTS, None, content, body, subresource="status")
        await content_status(readyToUse=False, error={"message": "the storage lost the snapshot"})
        failed = await wait_for(lambda: reason_of("vpl.step-1", "VolumeSnapshotNotReady"), timeout=30)
        assert failed["status"]["phase"] == "Failed"
        assert failed["status"]["message"] == f"VolumeSnapshot {snap1} is not readyToUse: the storage lost the snapshot"
        assert (await api.get(CKPT, NS, "vpl.step-2"))["status"]["phase"] == "Ready"  # worker 0's alone
        await content_status(readyToUse=True, error=None)
        again = await wait_for(lambda: reason_of("vpl.step-1", "Ready"), timeout=30)
        assert again["status"]["message"].endswith(f"VolumeSnapshot {snap0}, {snap1} are readyToUse again")
        await api.delete(SNAPSHOTS, NS, snap1)
        lost = await wait_for(lambda: reason_of("vpl.step-1", "VolumeSnapshotLost"), timeout=30)
        assert lost["status"]["phase"] == "Failed" and snap1 in lost["status"]["message"]
        assert (await api.get(CKPT, NS, "vpl.step-2"))["status"]["phase"] == "Ready"
