"""The catalog (ClusterCheckpoints) with the real operator process, as a platform team and two tenants
use it: the entry is imported once from a Hub (the local mini Hub) in the operator's namespace; jobs of
two namespaces use it read-only, pinned to its digest; on the volume store each namespace gets one
verified copy, reused by its later jobs; deleting the entry waits for the jobs of every namespace
(a Warning names them with their namespaces), then its copies go with it. The s3 store's catalog
prefix, read by every namespace's scoped credentials and written by none, is in
test_operator_catalog_s3.py."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import catalog
from checkpoint_operator.protocol import channel
from checkpoint_operator.protocol.results import CheckpointSummary, ScanReport
from conftest import TJ, Operator, held_until, training_job, write_checkpoint
from hubserver import mini_hub  # noqa: F401  (fixture)
from layouts import tiny_model
from webserver import web  # noqa: F401  (fixture)
from plugin_helpers import Plugin, write_kubeconfig

pytestmark = pytest.mark.timeout(300)
CCKPT = "ckpt.dev/v1alpha1/clustercheckpoints"
CATALOG_NS = "ckpt-system"
TEAMS = ("team-a", "team-b")
LICENSE = "https://www.apache.org/licenses/LICENSE-2.0"


@pytest.fixture
def operator_config() -> OperatorConfig:
    return OperatorConfig(reconcile_interval=0.2, agent_image="checkpoint-operator:test",
                          catalog_namespace=CATALOG_NS)


@pytest.fixture
async def operator(api_url, cluster, operator_config, api):
    for namespace in (*TEAMS, CATALOG_NS):
        await api.create("v1/namespaces", None, {"metadata": {"name": namespace}})
    op = Operator(api_url, operator_config, namespaces=[*TEAMS, CATALOG_NS])
    await op.start()
    yield op
    await op.stop()


def entry(name: str, source: dict, **spec) -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "ClusterCheckpoint", "metadata": {"name": name},
            "spec": {"source": source, **spec}}


def job_in(namespace: str, name: str, **spec) -> dict:
    body = training_job(name, **spec)
    body["metadata"]["namespace"] = namespace
    return body


async def phase_of(api, wait_for, namespace, name, phase, timeout=90):
    async def reached():
        obj = await api.get(TJ, namespace, name)
        return obj if obj and obj.get("status", {}).get("phase") == phase else None
    return await wait_for(reached, timeout=timeout, interval=0.1)


@pytest.mark.slow
async def test_a_catalog_entry_is_imported_once_and_used_by_every_namespace(api, api_url, operator, trainer, wait_for,
                                                                            mini_hub, tmp_path):  # noqa: F811
    model = tiny_model()
    commit = mini_hub.add_repo("community/tiny-gpt2", model)
    await api.create(CCKPT, None, entry("tiny-gpt2", {"huggingFace": {"repo": "community/tiny-gpt2",
                                                                      "endpoint": mini_hub.endpoint}},
                                        license=LICENSE, description="a tiny GPT-2 for tests"))

    async def ready():
        obj = await api.get(CCKPT, None, "tiny-gpt2")
        return obj if obj.get("status", {}).get("phase") in ("Ready", "Failed") else None
    imported = await wait_for(ready, timeout=120, interval=0.2)
    status = imported["status"]
    assert status["phase"] == "Ready", status
    assert status["license"] == LICENSE and status["source"]["resolvedRevision"] == commit
    assert status["format"] == "huggingface" and status["fileCount"] == len(model)
    location = status["location"]["volume"]
    # Imported in the operator's namespace, on a claim the entry owns (no tenant can touch it).
    claim = await api.get("v1/persistentvolumeclaims", CATALOG_NS, location["claimName"])
    assert claim["metadata"]["ownerReferences"][0]["uid"] == imported["metadata"]["uid"]
    assert "ckpt.dev/in-use-protection" in imported["metadata"]["finalizers"]

    # Two tenants' jobs use it read-only, each from a verified copy in its own namespace.
    seen: dict[str, dict] = {}

    def reads(team):
        def behaviour(attempt, env):
            path = env["CHECKPOINT_INPUT_PATH"]
            seen[team] = {rel: open(os.path.join(path, rel), "rb").read() for rel in model}
            write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.safetensors": team.encode()})
            return 0
        return behaviour
    for team in TEAMS:
        trainer.behaviours[f"{team}-tune"] = reads(team)
        await api.create(TJ, team, job_in(team, f"{team}-tune", checkpoints=[{"clusterCheckpoint": "tiny-gpt2"}]))
    done = {team: await phase_of(api, wait_for, team, f"{team}-tune", "Succeeded") for team in TEAMS}
    for team in TEAMS:
        assert seen[team] == model
        pinned = done[team]["status"]["inputs"]
        assert pinned == [{"name": "tiny-gpt2", "uid": imported["metadata"]["uid"], "digest": status["digest"],
                           "sizeBytes": status["sizeBytes"], "kind": "ClusterCheckpoint"}]
        copy = await api.get("v1/persistentvolumeclaims", team, f"catalog-tiny-gpt2-{imported['metadata']['uid'][:5]}-copy")
        assert copy["metadata"]["annotations"][catalog.COPIED_DIGEST_ANNOTATION] == status["digest"]
        assert copy["metadata"]["ownerReferences"][0]["kind"] == "ClusterCheckpoint"
        produced = await api.get("ckpt.dev/v1alpha1/checkpoints", team, f"{team}-tune.step-1")
        assert produced["status"]["parents"][0]["kind"] == "ClusterCheckpoint"
    copy_pods = [p for p in await api.list("v1/pods", "team-a")
                 if p["metadata"]["labels"].get("ckpt.dev/clustercheckpoint") == "tiny-gpt2"]
    assert len(copy_pods) == 1  # one copy for the namespace
    copy = await api.get("v1/persistentvolumeclaims", "team-a",
                         f"catalog-tiny-gpt2-{imported['metadata']['uid'][:5]}-copy")
    # the pods' UIDs were recorded before their results were read (issue 23 item 9)
    assert copy["metadata"]["annotations"][catalog.COPY_POD_ANNOTATION] == copy_pods[0]["metadata"]["uid"]
    assert (await api.get(CCKPT, None, "tiny-gpt2"))["status"]["agentPodUid"]

    # What a tenant sees: the catalog, and what its namespace stores (its copy's claim) against what it references.
    ckpt = Plugin(write_kubeconfig(tmp_path / "kubeconfig", api_url, namespace="team-a"))
    listed = await ckpt("ls", "--catalog")
    assert listed.code == 0, listed.err
    header, row = listed.out.splitlines()
    assert header.split() == ["NAME", "PHASE", "FORMAT", "SIZE", "USED-BY", "LICENSE", "SOURCE", "AGE"]
    assert row.split()[:3] == ["tiny-gpt2", "Ready", "huggingface"] and LICENSE in row
    everything = await ckpt("ls", "-A")
    assert any(line.split()[:3] == ["(catalog)", "tiny-gpt2", "Ready"] for line in everything.out.splitlines())
    assert any(line.split()[:2] == ["team-b", "team-b-tune.step-1"] for line in everything.out.splitlines())
    du = await ckpt("du", "-o", "json")
    assert du.code == 0, du.err
    (team_a,) = json.loads(du.out)["namespaces"]
    copy_name = f"catalog-tiny-gpt2-{imported['metadata']['uid'][:5]}-copy"
    output_claims = [c["metadata"]["name"] for c in await api.list("v1/persistentvolumeclaims", "team-a")
                     if c["metadata"]["name"] != copy_name]
    assert team_a["referencedBytes"] == len(b"team-a") and team_a["checkpoints"] == 1
    assert sorted(team_a["volumes"]["claims"]) == sorted([*output_claims, copy_name])
    copy_claim = await api.get("v1/persistentvolumeclaims", "team-a", copy_name)
    assert copy_claim["spec"]["resources"]["requests"]["storage"] == str(int(status["sizeBytes"] * 1.1) + 64 * 1024 ** 2)
    assert team_a["storedBytes"] == team_a["volumes"]["bytes"] > team_a["referencedBytes"]
    # The catalog's own claim is measured where the catalog lives (hostile3 F3: it was "gone", 0 B, SAVED 100%).
    catalog_claim = await api.get("v1/persistentvolumeclaims", CATALOG_NS, location["claimName"])
    for argv in (("du", "--catalog", "-o", "json"), ("du", "-A", "-o", "json")):
        report = await ckpt(*argv)
        assert report.code == 0 and "gone" not in report.err and "not found" not in report.err, report.err
        rows = {r["namespace"]: r for r in json.loads(report.out)["namespaces"]}
        from checkpoint_operator.plugin.usage import claim_capacity
        assert rows["(catalog)"]["storedBytes"] == claim_capacity(catalog_claim) > 0, rows["(catalog)"]
        assert rows["(catalog)"]["volumes"]["claims"] == [location["claimName"]]
    assert {"team-a", "team-b"} <= set(rows)  # -A: every namespace holding a copy

    # A later job of team-a mounts the same copy: no second copy pod, and nothing fetched again from the Hub.
    fetched = len(mini_hub.seen_by("hub"))
    trainer.behaviours["team-a-again"] = reads("team-a-again")
    await api.create(TJ, "team-a", job_in("team-a", "team-a-again", checkpoints=[{"clusterCheckpoint": "tiny-gpt2"}]))
    await phase_of(api, wait_for, "team-a", "team-a-again", "Succeeded")
    assert len(mini_hub.seen_by("hub")) == fetched
    assert [p["metadata"]["uid"] for p in await api.list("v1/pods", "team-a")
            if p["metadata"]["labels"].get("ckpt.dev/clustercheckpoint") == "tiny-gpt2"] == \
        [p["metadata"]["uid"] for p in copy_pods]

    # Deleting the entry waits for the job that still uses it, in whatever namespace it runs.
    release = asyncio.Event()
    trainer.behaviours["team-b-long"] = held_until(release)
    await api.create(TJ, "team-b", job_in("team-b", "team-b-long", checkpoints=[{"clusterCheckpoint": "tiny-gpt2"}]))
    await phase_of(api, wait_for, "team-b", "team-b-long", "Running")
    await api.delete(CCKPT, None, "tiny-gpt2")

    async def blocked():
        obj = await api.get(CCKPT, None, "tiny-gpt2")
        return obj if obj and obj["status"].get("message", "").startswith("deletion waits") else None
    held = await wait_for(blocked, timeout=30)
    # Every tenant reads the entry: its status counts the users and names none (hostile3 F7) ...
    assert held["status"]["message"].startswith("deletion waits: in use by 1 TrainingJob(s) in 1 namespace(s)")
    assert "team-b" not in json.dumps(held["status"]) and "usedBy" not in held["status"]
    # ... the operator namespace's Events, which only administrators read, name them.
    events = [e for e in await api.list("v1/events", CATALOG_NS) if e["reason"] == "DeletionBlocked"]
    assert events and "team-b/team-b-long" in events[0]["message"]
    assert not [e for e in await api.list("v1/events", "team-b") if e["reason"] == "DeletionBlocked"]
    assert events[0]["involvedObject"]["kind"] == "ClusterCheckpoint" and "namespace" not in events[0]["involvedObject"]
    # A new job may not start on an entry being deleted.
    await api.create(TJ, "team-a", job_in("team-a", "team-a-late", checkpoints=[{"clusterCheckpoint": "tiny-gpt2"}]))

    async def refused():
        obj = await api.get(TJ, "team-a", "team-a-late")
        return obj if (obj.get("status") or {}).get("message", "").startswith("input ClusterCheckpoint tiny-gpt2 is being deleted") else None
    await wait_for(refused, timeout=30)

    release.set()
    await phase_of(api, wait_for, "team-b", "team-b-long", "Succeeded")
    await wait_for(lambda: _gone(api, CCKPT, None, "tiny-gpt2"), timeout=30)
    # Its copies and the catalog's claim go with it (owner references; the local garbage collector's resync).
    for namespace, name in [(team, f"catalog-tiny-gpt2-{imported['metadata']['uid'][:5]}-copy") for team in TEAMS] + \
            [(CATALOG_NS, location["claimName"])]:
        await wait_for(lambda namespace=namespace, name=name: _gone(api, "v1/persistentvolumeclaims", namespace, name),
                       timeout=40)


async def _gone(api, resource, namespace, name) -> bool:
    return await api.get(resource, namespace, name) is None


async def test_an_entry_is_imported_in_a_catalog_namespace_the_operator_does_not_watch(
        api, api_url, cluster, operator_config, wait_for, mini_hub):  # noqa: F811
    """A namespaced install that watches only its tenants' namespaces: no watch event tells of the import
    pod in the catalog namespace, so what creating it returned (Pending) must not be what its later
    passes read. Before the object cache kept only what a watch keeps fresh, the entry stayed
    Importing forever (local mode's catalog example hung so: kopf watched no namespace not made)."""
    commit = mini_hub.add_repo("community/tiny-gpt2", tiny_model())
    for namespace in (TEAMS[0], CATALOG_NS):
        await api.create("v1/namespaces", None, {"metadata": {"name": namespace}})
    op = Operator(api_url, operator_config, namespaces=[TEAMS[0]])  # the catalog namespace is not watched
    await op.start()
    try:
        await api.create(CCKPT, None, entry("tiny-gpt2", {"huggingFace": {"repo": "community/tiny-gpt2",
                                                                          "endpoint": mini_hub.endpoint}}))

        async def settled():
            obj = await api.get(CCKPT, None, "tiny-gpt2")
            return obj if obj.get("status", {}).get("phase") in ("Ready", "Failed") else None
        imported = await wait_for(settled, timeout=60, interval=0.2)
        assert imported["status"]["phase"] == "Ready", imported["status"]
        assert imported["status"]["source"]["resolvedRevision"] == commit
        assert not [p for p in await api.list("v1/pods", CATALOG_NS)]  # its pod deleted once the result was recorded
    finally:
        await op.stop()


async def test_a_catalog_entry_that_needs_a_secret_is_not_copied_on_the_volume_store(api, operator, trainer, wait_for,
                                                                                      mini_hub):  # noqa: F811
    """Its Secret is the operator namespace's: a copy in another namespace could not read it, so a job there
    fails with the reason instead of copying forever (the s3 store has no such copy)."""
    mini_hub.add_repo("org/private", tiny_model(), token="hf_catalog_token")
    import base64
    await api.create("v1/secrets", CATALOG_NS, {"metadata": {"name": "hf"}, "data": {
        "HF_TOKEN": base64.b64encode(b"hf_catalog_token").decode()}})
    await api.create(CCKPT, None, entry("private", {"huggingFace": {"repo": "org/private", "endpoint": mini_hub.endpoint,
                                                                    "secretRef": {"name": "hf"}}}))

    async def ready():
        obj = await api.get(CCKPT, None, "private")
        return obj if obj.get("status", {}).get("phase") in ("Ready", "Failed") else None
    assert (await wait_for(ready, timeout=120, interval=0.2))["status"]["phase"] == "Ready"
    await api.create(TJ, "team-a", job_in("team-a", "uses-private", checkpoints=[{"clusterCheckpoint": "private"}]))
    failed = await phase_of(api, wait_for, "team-a", "uses-private", "Failed")
    assert "needs a Secret of the operator's namespace" in failed["status"]["message"]
    assert not [c for c in await api.list("v1/persistentvolumeclaims", "team-a")
                if c["metadata"].get("labels", {}).get("ckpt.dev/clustercheckpoint") == "private"]


async def test_a_tenant_cannot_plant_or_mount_a_namespace_copy(api, operator, trainer, wait_for, mini_hub):  # noqa: F811
    """A claim planted under the copy's name is never mounted nor written (the job waits, naming it), and a
    template that names the real copy is refused: it would change the bytes behind the entry's digest."""
    mini_hub.add_repo("community/tiny-gpt2", tiny_model())
    await api.create(CCKPT, None, entry("tiny-gpt2", {"huggingFace": {"repo": "community/tiny-gpt2",
                                                                      "endpoint": mini_hub.endpoint}}))

    async def ready():
        obj = await api.get(CCKPT, None, "tiny-gpt2")
        return obj if obj.get("status", {}).get("phase") == "Ready" else None
    uid = (await wait_for(ready, timeout=120, interval=0.2))["metadata"]["uid"]
    copy_name = f"catalog-tiny-gpt2-{uid[:5]}-copy"
    await api.create("v1/persistentvolumeclaims", "team-a", {"metadata": {"name": copy_name}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    await api.create(TJ, "team-a", job_in("team-a", "victim", checkpoints=[{"clusterCheckpoint": "tiny-gpt2"}]))

    async def waiting():
        obj = await api.get(TJ, "team-a", "victim")
        return obj if (obj.get("status") or {}).get("message", "").startswith(
            f"PersistentVolumeClaim {copy_name} exists and does not belong to ClusterCheckpoint tiny-gpt2") else None
    await wait_for(waiting, timeout=30)
    assert not [p for p in await api.list("v1/pods", "team-a")
                if any((v.get("persistentVolumeClaim") or {}).get("claimName") == copy_name
                       for v in p["spec"].get("volumes") or [])]

    # The planted claim gone, the real copy is made; a template naming it is refused.
    await api.delete("v1/persistentvolumeclaims", "team-a", copy_name)
    await api.delete(TJ, "team-a", "victim")
    trainer.behaviours["user"] = lambda attempt, env: 0
    await api.create(TJ, "team-b", job_in("team-b", "user", checkpoints=[{"clusterCheckpoint": "tiny-gpt2"}]))
    await phase_of(api, wait_for, "team-b", "user", "Succeeded")
    thief = job_in("team-b", "thief")
    thief["spec"]["template"]["spec"]["volumes"] = [{"name": "c", "persistentVolumeClaim": {"claimName": copy_name}}]
    await api.create(TJ, "team-b", thief)
    failed = await phase_of(api, wait_for, "team-b", "thief", "Failed")
    assert "is managed by the checkpoint operator" in failed["status"]["message"], failed["status"]


async def test_a_copy_pod_made_by_a_tenant_under_the_copy_s_name_and_owner_is_not_read(
        api, operator, trainer, wait_for, mini_hub):  # noqa: F811
    """Issue 23 item 9 for the catalog: a tenant makes the copy pod first (the expected name, the
    entry as owner, a result that claims the entry's digest over an empty claim). The operator reads
    only the pod whose UID it recorded on the copy's claim: the impostor is deleted unread and the
    real copy is made (before, the empty copy was marked verified and mounted)."""
    model = tiny_model()
    mini_hub.add_repo("community/tiny-gpt2", model)
    await api.create(CCKPT, None, entry("tiny-gpt2", {"huggingFace": {"repo": "community/tiny-gpt2",
                                                                      "endpoint": mini_hub.endpoint}}))

    async def ready():
        obj = await api.get(CCKPT, None, "tiny-gpt2")
        return obj if obj.get("status", {}).get("phase") == "Ready" else None
    imported = await wait_for(ready, timeout=120, interval=0.2)
    name = catalog.copy_pod_name(ClusterCheckpoint.model_validate(imported))
    forged = channel.encode(ScanReport(checkpoints=[CheckpointSummary(
        path=".", digest=imported["status"]["digest"], sizeBytes=1, fileCount=1)]))
    await api.create("v1/pods", "team-a", {"metadata": {
        "name": name, "namespace": "team-a", "labels": {"ckpt.dev/clustercheckpoint": "tiny-gpt2"},
        "ownerReferences": [catalog.owner_reference(ClusterCheckpoint.model_validate(imported))]},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "copy", "image": "x", "command": [
            "python", "-c", f"print({forged!r})"]}]}})

    async def impostor_done():
        pod = await api.get("v1/pods", "team-a", name)
        return pod if pod and pod.get("status", {}).get("phase") == "Succeeded" else None
    impostor = await wait_for(impostor_done, timeout=30)

    seen: dict[str, bytes] = {}

    def reads(attempt, env):
        path = env["CHECKPOINT_INPUT_PATH"]
        seen.update({rel: open(os.path.join(path, rel), "rb").read() for rel in model})
        return 0
    trainer.behaviours["reader"] = reads
    await api.create(TJ, "team-a", job_in("team-a", "reader", output={"enabled": False},
                                          checkpoints=[{"clusterCheckpoint": "tiny-gpt2"}]))
    done = await phase_of(api, wait_for, "team-a", "reader", ("Succeeded"), timeout=120)
    assert seen == model, done["status"]
    copy = await api.get("v1/persistentvolumeclaims", "team-a", f"catalog-tiny-gpt2-{imported['metadata']['uid'][:5]}-copy")
    assert copy["metadata"]["annotations"][catalog.COPY_POD_ANNOTATION] != impostor["metadata"]["uid"]


async def test_a_copy_that_did_not_verify_is_discarded(api, operator, trainer, wait_for, web):  # noqa: F811
    """hostile3 F4: the source changed once (the copy's digest differs): that job fails, but the copy's
    claim is deleted, so once the source is back as imported the namespace's next job gets a verified
    copy. Failed before: the claim kept the wrong bytes and every later job of the namespace failed
    "exists and is not empty; import into a new or empty directory"."""
    imported = tiny_model()["model.safetensors"]
    (web.root / "model.safetensors").write_bytes(imported)
    await api.create(CCKPT, None, entry("web-model", {"http": {"url": web.url("model.safetensors")}}))

    async def ready():
        obj = await api.get(CCKPT, None, "web-model")
        return obj if obj.get("status", {}).get("phase") in ("Ready", "Failed") else None
    made = await wait_for(ready, timeout=120, interval=0.2)
    assert made["status"]["phase"] == "Ready", made["status"]
    copy_name = f"catalog-web-model-{made['metadata']['uid'][:5]}-copy"
    trainer.behaviours["after"] = lambda attempt, env: 0

    (web.root / "model.safetensors").write_bytes(tiny_model(weights=1024)["model.safetensors"])
    await api.create(TJ, "team-a", job_in("team-a", "during", checkpoints=[{"clusterCheckpoint": "web-model"}]))
    failed = await phase_of(api, wait_for, "team-a", "during", "Failed", timeout=120)
    message = failed["status"]["message"]
    assert "the source changed since it was imported" in message and "is deleted" in message, message

    async def claim_gone():
        return (await api.get("v1/persistentvolumeclaims", "team-a", copy_name)) is None or None
    await wait_for(claim_gone, timeout=30)

    (web.root / "model.safetensors").write_bytes(imported)
    await api.create(TJ, "team-a", job_in("team-a", "after", checkpoints=[{"clusterCheckpoint": "web-model"}]))
    done = await wait_for(lambda: _settled(api, "team-a", "after"), timeout=120, interval=0.2)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    claim = await api.get("v1/persistentvolumeclaims", "team-a", copy_name)
    assert claim["metadata"]["annotations"][catalog.COPIED_DIGEST_ANNOTATION] == made["status"]["digest"]


async def _settled(api, namespace, name):
    obj = await api.get(TJ, namespace, name)
    return obj if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None
