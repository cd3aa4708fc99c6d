"""No same-namespace back doors (issue 23), through the real operator against the emulated API:

- Pod Security "restricted" enforced on the namespace (item 3): a job whose template meets it
  runs, is snapshotted and consumed (every operator pod admitted); one whose template does not is
  refused by admission, and the TrainingJob says so in the API server's words;
- a template that mounts (or copies) a claim the operator manages is refused (item 4): the issue's
  attack on producer.step-1 fails and its bytes stay; an import's claim holds its Checkpoint's
  uid, so no template, orphaned Job or pod can have named it before (hostile1 D1, D2), and one
  named once the Checkpoint exists is refused;
- a Checkpoint that adopts a path of a producer's output keeps that volume alive after the
  producer and all its Checkpoints are gone (item 6), and lets it go with itself.
"""

from __future__ import annotations

import copy
import io
import os
import tarfile
import time

import pytest

from checkpoint_operator.local.pod_security import ENFORCE_LABEL
from conftest import CKPT, NS, TJ, training_job, write_checkpoint
from webserver import web  # noqa: F401

pytestmark = pytest.mark.timeout(180)

RESTRICTED_SPEC = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "trainer", "image": "trainer:1", "command": ["train"],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}


def restricted_job(name: str, **spec) -> dict:
    body = training_job(name, **spec)
    body["spec"]["template"] = {"spec": copy.deepcopy(RESTRICTED_SPEC)}
    return body


async def enforce(api, level: str) -> None:
    await api.patch("v1/namespaces", None, NS, {"metadata": {"labels": {ENFORCE_LABEL: level}}})


async def status_of(api, resource: str, name: str) -> dict:
    return ((await api.get(resource, NS, name)) or {}).get("status") or {}


async def test_restricted_namespace_runs_compliant_jobs_and_names_the_refusal_of_others(
        api, operator, cluster, trainer, wait_for, monkeypatch):
    from checkpoint_operator.reconcile import volumes
    # A Job younger than PODS_GRACE is not said to be refused (its pods may be coming), and one
    # without pods is looked at again after PODS_RECHECK: 5 s and 10 s, shortened here.
    monkeypatch.setattr(volumes, "PODS_GRACE", 1.0)
    monkeypatch.setattr(volumes, "PODS_RECHECK", 1.0)
    await enforce(api, "restricted")

    def produce(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.safetensors": b"w" * 10})
        return 0
    trainer.behaviours["producer"] = produce
    trainer.behaviours["consumer"] = lambda attempt, env: 0
    await api.create(TJ, NS, restricted_job("producer", output={"publish": "Continuous"}))

    async def succeeded(name):
        status = await status_of(api, TJ, name)
        return status if status.get("phase") == "Succeeded" else None
    done = await wait_for(lambda: succeeded("producer"), timeout=60)
    assert done["outputCheckpoints"] == ["producer.step-1"]
    await api.create(TJ, NS, restricted_job("consumer", checkpoints=[{"name": "producer.step-1"}]))
    await wait_for(lambda: succeeded("consumer"), timeout=60)

    # The same job, but the template sets nothing: every pod of its Job is refused by admission.
    await api.create(TJ, NS, training_job("loose"))

    async def refused():
        status = await status_of(api, TJ, "loose")
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        return ready if ready.get("reason") == "PodsRefused" else None
    condition = await wait_for(refused, timeout=60)
    assert 'violates PodSecurity "restricted:latest"' in condition["message"]
    assert 'container "trainer" must set securityContext.allowPrivilegeEscalation=false' in condition["message"]
    assert (await status_of(api, TJ, "loose"))["phase"] == "Running"
    assert not [p for p in await api.list("v1/pods", NS) if p["metadata"]["name"].startswith("loose")]
    assert (await api.get(CKPT, NS, "producer.step-1"))["status"]["phase"] == "Ready"


# --- item 4: a template cannot reach another job's (or an import's) claim --------------------------

async def test_a_template_that_mounts_a_producer_s_output_is_refused_and_the_checkpoint_keeps_its_bytes(
        api, operator, cluster, trainer, wait_for):
    def produce(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.safetensors": b"original"})
        return 0

    def tamper(attempt, env):  # what the attacker's code does, if it runs (it did, before the fix)
        with open(f"{env['STEAL_DIR']}/step-1/model.safetensors", "wb") as f:
            f.write(b"TAMPERED")
        return 0
    trainer.behaviours["producer"] = produce
    trainer.behaviours["attacker"] = tamper
    await api.create(TJ, NS, training_job("producer"))

    async def ready():
        body = await api.get(CKPT, NS, "producer.step-1")
        return body if (body or {}).get("status", {}).get("phase") == "Ready" else None
    step = await wait_for(ready, timeout=60)
    claim = step["status"]["location"]["volume"]["claimName"]

    for name, volume in (("attacker", {"name": "steal", "persistentVolumeClaim": {"claimName": claim}}),
                         ("cloner", {"name": "steal", "ephemeral": {"volumeClaimTemplate": {"spec": {
                             "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                             "dataSource": {"kind": "PersistentVolumeClaim", "name": claim}}}}})):
        body = training_job(name)
        body["spec"]["template"]["spec"]["volumes"] = [volume]
        container = body["spec"]["template"]["spec"]["containers"][0]
        container["volumeMounts"] = [{"name": "steal", "mountPath": "/steal"}]
        container["env"] = [{"name": "STEAL_DIR", "value": "/steal"}]
        await api.create(TJ, NS, body)

        async def failed(name=name):
            status = await status_of(api, TJ, name)
            return status if status.get("phase") == "Failed" else None
        status = await wait_for(failed, timeout=30)
        ready_condition = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready_condition["reason"] == "ManagedClaim"
        assert f"PersistentVolumeClaim {claim} is managed by the checkpoint operator" in ready_condition["message"]
        assert not [p for p in await api.list("v1/pods", NS) if p["metadata"]["name"].startswith(name)]
    assert "attacker" not in trainer.envs
    step = await api.get(CKPT, NS, "producer.step-1")
    assert step["status"]["phase"] == "Ready"
    data = cluster.claim_dir(NS, claim)
    with open(f"{data}/step-1/model.safetensors", "rb") as f:
        assert f.read() == b"original"


def _import_archive(web_root) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in {"config.json": b"{}", "model.safetensors": b"w" * 64}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (web_root / "model.tar.gz").write_bytes(buffer.getvalue())


def tamper_when_imported(attempt, env):
    """A squatter's trainer: wait for an import's data on the claim it mounts, then rewrite it."""
    target = os.path.join(env["STEAL_DIR"], "data", "model.safetensors")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.exists(target):
            with open(target, "wb") as f:
                f.write(b"TAMPERED")
            return 0
        time.sleep(0.1)
    return 3


def squatter(name: str, volumes: list[dict]) -> dict:
    body = training_job(name)
    spec = body["spec"]["template"]["spec"]
    spec["volumes"] = volumes
    spec["containers"][0]["volumeMounts"] = [{"name": volumes[-1]["name"], "mountPath": "/steal"}]
    spec["containers"][0]["env"] = [{"name": "STEAL_DIR", "value": "/steal"}]
    return body


async def running(api, wait_for, name: str) -> None:
    async def is_running():
        return (await status_of(api, TJ, name)).get("phase") == "Running" or None
    await wait_for(is_running, timeout=30)


async def imported_untouched(api, cluster, wait_for, name: str, named: str) -> None:
    """The import `name` is Ready on a claim of its own (not `named`, which a squatter mounts)
    holding the archive's bytes."""
    async def settled():
        body = await api.get(CKPT, NS, name)
        return body if (body or {}).get("status", {}).get("phase") in ("Ready", "Failed") else None
    body = await wait_for(settled, timeout=60)
    status = body["status"]
    assert status["phase"] == "Ready", status
    claim = status["location"]["volume"]["claimName"]
    assert claim != named and body["metadata"]["uid"][:8] in claim
    with open(f"{cluster.claim_dir(NS, claim)}/data/model.safetensors", "rb") as f:
        assert f.read() == b"w" * 64
    assert await api.get("v1/persistentvolumeclaims", NS, named) is None


async def test_a_template_s_129th_volume_cannot_wait_for_an_import_s_claim(
        api, operator, cluster, trainer, wait_for, web):
    """hostile1 D1: 128 volumes naming one claim, then a 129th naming `future-data` (the import
    claim's name before it held the uid): the squat index kept only the first 128 references, so
    the import's claim was created under the running job, which rewrote the data after the
    Checkpoint was Ready (failed before: Ready, the claim's file `TAMPERED`)."""
    _import_archive(web.root)
    await api.create("v1/persistentvolumeclaims", NS, {"metadata": {"name": "a"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    trainer.behaviours["squatter"] = tamper_when_imported
    volumes = [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": "a"}} for i in range(128)]
    await api.create(TJ, NS, squatter("squatter", [
        *volumes, {"name": "steal", "persistentVolumeClaim": {"claimName": "future-data"}}]))
    await running(api, wait_for, "squatter")
    await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": "future"},
                                "spec": {"source": {"http": {"url": web.url("model.tar.gz")}}}})
    await imported_untouched(api, cluster, wait_for, "future", "future-data")


async def test_a_job_orphaned_by_its_trainingjob_cannot_wait_for_an_import_s_claim(
        api, operator, cluster, trainer, wait_for, web):
    """hostile1 D2: `kubectl delete tj --cascade=orphan` left a Job (and its waiting pod) naming
    `later-data`, which the squat check (TrainingJobs only) did not see (failed before: the
    orphaned pod started on the import's claim and rewrote it behind a Ready digest)."""
    _import_archive(web.root)
    trainer.behaviours["orphan"] = tamper_when_imported
    await api.create(TJ, NS, squatter("orphan", [{"name": "steal", "persistentVolumeClaim": {"claimName": "later-data"}}]))
    await running(api, wait_for, "orphan")
    await api.delete(TJ, NS, "orphan", propagation_policy="Orphan")

    async def orphaned():
        jobs = [j["metadata"]["name"] for j in await api.list("batch/v1/jobs", NS)]
        return await api.get(TJ, NS, "orphan") is None and jobs or None
    assert await wait_for(orphaned, timeout=30)
    await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": "later"},
                                "spec": {"source": {"http": {"url": web.url("model.tar.gz")}}}})
    await imported_untouched(api, cluster, wait_for, "later", "later-data")
    assert "orphan" not in trainer.envs  # its pod never found a claim to start on


async def test_a_template_naming_an_existing_import_s_claim_is_refused(api, operator, cluster, trainer, wait_for, web):
    """Once the Checkpoint exists its claim's name is known; a template naming it is refused by
    name, before the claim or its data exist (ManagedClaim)."""
    await api.patch("v1/namespaces", None, NS, {"metadata": {"annotations": {"ckpt.dev/max-checkpoint-size": "big"}}})
    await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": "held"},
                                "spec": {"source": {"http": {"url": web.url("model.tar.gz")}}}})
    uid = (await api.get(CKPT, NS, "held"))["metadata"]["uid"]
    claim = f"held-data-{uid[:8]}"
    trainer.behaviours["late"] = tamper_when_imported
    await api.create(TJ, NS, squatter("late", [{"name": "steal", "persistentVolumeClaim": {"claimName": claim}}]))

    async def failed():
        status = await status_of(api, TJ, "late")
        return status if status.get("phase") == "Failed" else None
    status = await wait_for(failed, timeout=30)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ManagedClaim" and "the data volume of Checkpoint held" in ready["message"]
    assert "late" not in trainer.envs


# --- item 6: adopted data is not deleted behind a Ready Checkpoint --------------------------------------

async def test_an_adopted_output_outlives_its_producer_and_goes_with_the_adopter(
        api, operator, cluster, trainer, wait_for):
    def produce(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.safetensors": b"weights"})
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-2", {"model.safetensors": b"weights-2"})
        return 0
    trainer.behaviours["producer"] = produce
    await api.create(TJ, NS, training_job("producer"))

    async def ready(name):
        body = await api.get(CKPT, NS, name)
        return body if (body or {}).get("status", {}).get("phase") == "Ready" else None
    step = await wait_for(lambda: ready("producer.step-1"), timeout=60)
    claim = step["status"]["location"]["volume"]["claimName"]
    await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": "kept"},
                                "spec": {"source": {"volume": {"claimName": claim, "path": "/step-1"}}}})
    adopted = await wait_for(lambda: ready("kept"), timeout=60)
    owners = (await api.get("v1/persistentvolumeclaims", NS, claim))["metadata"]["ownerReferences"]
    assert "kept" in [o["name"] for o in owners]

    # The producer goes, with every Checkpoint it made: the adopter alone still points into the volume.
    for name in ("producer.step-1", "producer.step-2"):
        await api.delete(CKPT, NS, name)
    await api.delete(TJ, NS, "producer")

    async def gone():
        names = [c["metadata"]["name"] for c in await api.list(CKPT, NS)]
        return not {"producer.step-1", "producer.step-2"} & set(names) \
            and await api.get(TJ, NS, "producer") is None or None
    await wait_for(gone, timeout=30)
    await cluster.reconcile_once()  # the garbage collector's pass over every claim
    volume = await api.get("v1/persistentvolumeclaims", NS, claim)
    assert volume is not None and not volume["metadata"].get("deletionTimestamp")
    assert (await api.get(CKPT, NS, "kept"))["status"]["digest"] == adopted["status"]["digest"]
    with open(f"{cluster.claim_dir(NS, claim)}/step-1/model.safetensors", "rb") as f:
        assert f.read() == b"weights"

    # The adopter goes too: the volume has no owner left and is collected.
    await api.delete(CKPT, NS, "kept")

    async def collected():
        return await api.get("v1/persistentvolumeclaims", NS, claim) is None or None
    await wait_for(collected, timeout=30)
