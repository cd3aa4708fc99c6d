"""Block storage that attaches to one node (issue 20 item 3), through the real operator on a three-node
local cluster: what the volume store does on a ReadWriteOnce class (consumers on other nodes wait on
a multi-attach error), and what volume snapshots change (storage.volume.snapshotClassName)."""

from __future__ import annotations

import asyncio

import pytest

from checkpoint_operator.config import OperatorConfig
from conftest import CKPT, NS, TJ, held_until, training_job, write_checkpoint

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
        await asyncio.sleep(1.0)
        assert "reader-c" not in trainer.envs  # still waiting: its volume is attached to local-1
        assert (await api.get(TJ, NS, "reader-c"))["status"]["phase"] == "Running"
        release.set()
        await wait_phase(api, wait_for, TJ, "reader-c", "Succeeded")
