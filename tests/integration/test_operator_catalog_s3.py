"""The catalog on the s3 store, against a real SeaweedFS with one identity per namespace: a catalog entry
is imported once (in the operator's namespace, with that namespace's store Secret) under
`<prefix>/_catalog/`, which every namespace's scoped credentials may read and none may write; the jobs of
two tenants download it with their own credentials, pinned to its digest; a tenant that takes its
namespace's Secret cannot overwrite or delete the catalog's data; deleting the entry deletes its data
with the operator's own identity."""

from __future__ import annotations

import base64
import json
import os
import tempfile

import pytest

from checkpoint_operator.agent.s3 import manifest_exists, read_manifest
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.objectstore.blobs import object_uri
from conftest import TJ, Operator, training_job
from hubserver import mini_hub  # noqa: F401  (fixture)
from layouts import tiny_model
from plugin_helpers import Plugin, write_kubeconfig
from test_operator_tenants import BUCKET, OPERATOR_KEYS, PREFIX, SECRET, ScopedSeaweedFS, client_as

pytestmark = pytest.mark.timeout(300)
CCKPT = "ckpt.dev/v1alpha1/clustercheckpoints"
CATALOG_NS = "ckpt-system"
TEAMS = ("team-a", "team-b")


def keys(namespace: str) -> tuple[str, str]:
    return f"{namespace}-access", f"{namespace}-secret-0123456789"


def identities() -> dict:
    """What the platform provisions (docs/catalog.md): each tenant reads and writes its own prefix and only
    reads the catalog's; the catalog namespace's identity writes the catalog prefix and nothing else."""
    catalog = f"{BUCKET}/{PREFIX}/_catalog/*"

    def identity(name, actions):
        access, secret = keys(name)
        return {"name": name, "credentials": [{"accessKey": access, "secretKey": secret}], "actions": actions}
    tenants = [identity(team, [f"Read:{BUCKET}/{PREFIX}/{team}/*", f"Write:{BUCKET}/{PREFIX}/{team}/*",
                               f"List:{BUCKET}/{PREFIX}/{team}/*", f"Read:{catalog}", f"List:{catalog}"])
               for team in TEAMS]
    return {"identities": [
        {"name": "checkpoint-operator", "credentials": [{"accessKey": OPERATOR_KEYS[0], "secretKey": OPERATOR_KEYS[1]}],
         "actions": ["Read", "Write", "List"]},
        identity(CATALOG_NS, [f"Read:{catalog}", f"Write:{catalog}", f"List:{catalog}"]), *tenants]}


@pytest.fixture(scope="module")
def catalog_store():
    data_dir = tempfile.mkdtemp(prefix="ckpt-weed-catalog-")
    server = ScopedSeaweedFS(data_dir, access_key=OPERATOR_KEYS[0], secret_key=OPERATOR_KEYS[1])
    server.config_path = os.path.join(data_dir, "s3-identities.json")
    with open(server.config_path, "w") as f:
        json.dump(identities(), f)
    server.start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.kill()


@pytest.fixture
def operator_config(catalog_store) -> OperatorConfig:
    return OperatorConfig(reconcile_interval=0.2, agent_image="checkpoint-operator:test", storage_type="s3",
                          s3_endpoint=catalog_store.endpoint, s3_bucket=BUCKET, s3_region="us-east-1",
                          s3_prefix=PREFIX, s3_secret_name=SECRET, catalog_namespace=CATALOG_NS)


@pytest.fixture
async def operator(api_url, cluster, operator_config, api, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", OPERATOR_KEYS[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", OPERATOR_KEYS[1])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for namespace in (*TEAMS, CATALOG_NS):
        await api.create("v1/namespaces", None, {"metadata": {"name": namespace}})
        access, secret = keys(namespace)
        await api.create("v1/secrets", namespace, {"metadata": {"name": SECRET}, "data": {
            "AWS_ACCESS_KEY_ID": base64.b64encode(access.encode()).decode(),
            "AWS_SECRET_ACCESS_KEY": base64.b64encode(secret.encode()).decode()}})
    op = Operator(api_url, operator_config, namespaces=[*TEAMS, CATALOG_NS])
    await op.start()
    yield op
    await op.stop()


async def test_the_catalog_prefix_is_read_by_every_namespace_and_written_by_none(api, api_url, operator, trainer,
                                                                                 wait_for, catalog_store, mini_hub,  # noqa: F811
                                                                                 tmp_path):
    model = tiny_model()
    mini_hub.add_repo("community/tiny-gpt2", model)
    await api.create(CCKPT, None, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "ClusterCheckpoint",
                                   "metadata": {"name": "tiny-gpt2"},
                                   "spec": {"source": {"huggingFace": {"repo": "community/tiny-gpt2",
                                                                       "endpoint": mini_hub.endpoint}}}})

    async def settled():
        obj = await api.get(CCKPT, None, "tiny-gpt2")
        return obj if obj.get("status", {}).get("phase") in ("Ready", "Failed") else None
    entry = await wait_for(settled, timeout=120, interval=0.2)
    status = entry["status"]
    assert status["phase"] == "Ready", status
    uri = status["location"]["s3"]["uri"]
    assert uri.startswith(f"s3://{BUCKET}/{PREFIX}/_catalog/tiny-gpt2-")
    assert read_manifest(uri, endpoint_url=catalog_store.endpoint).digest == status["digest"]

    attempts: dict[str, dict] = {}

    def use(team):
        def behaviour(attempt, env):
            path = env["CHECKPOINT_INPUT_PATH"]
            attempts[team] = {"files": {rel: open(os.path.join(path, rel), "rb").read() for rel in model}}
            client = client_as(catalog_store, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
            # the file's blob (content-addressed: the catalog's blobs beside its entries)
            manifest = read_manifest(uri, endpoint_url=catalog_store.endpoint)
            entry = next(e for e in manifest.files if e.path == "model.safetensors")
            key = object_uri(uri, manifest, entry.path, entry.sha256)[len(f"s3://{BUCKET}/"):]
            assert key.startswith(f"{PREFIX}/_catalog/blobs/sha256/")
            for name, call in (("overwrite", lambda: client.put_object(Bucket=BUCKET, Key=key, Body=b"forged")),
                               ("delete", lambda: client.delete_object(Bucket=BUCKET, Key=key)),
                               ("read", lambda: client.get_object(Bucket=BUCKET, Key=key)["Body"].read())):
                try:
                    result = call()
                    attempts[team][name] = result if name == "read" else "allowed"
                except Exception as exc:  # noqa: BLE001 - the error code is what is checked
                    attempts[team][name] = getattr(exc, "response", {}).get("Error", {}).get("Code", str(exc))
            return 0
        return behaviour
    for team in TEAMS:
        trainer.behaviours[f"{team}-use"] = use(team)
        body = training_job(f"{team}-use", checkpoints=[{"clusterCheckpoint": "tiny-gpt2"}], output={"enabled": False})
        body["metadata"]["namespace"] = team
        # The tenant's own pod takes its namespace's store Secret, as a tenant could.
        body["spec"]["template"]["spec"]["containers"][0]["env"] = [
            {"name": k, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": k}}}
            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
        await api.create(TJ, team, body)

    async def finished(team):
        obj = await api.get(TJ, team, f"{team}-use")
        return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None
    for team in TEAMS:
        done = await wait_for(lambda team=team: finished(team), timeout=120, interval=0.2)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["inputs"][0]["digest"] == status["digest"]
        job = await api.get("batch/v1/jobs", team, f"{team}-use")
        download = job["spec"]["template"]["spec"]["initContainers"][0]
        assert download["command"][3] == uri  # the catalog prefix itself: no copy on the s3 store
        assert attempts[team]["files"] == model
        assert attempts[team]["read"] == model["model.safetensors"]  # every namespace reads the catalog...
        assert attempts[team]["overwrite"] == "AccessDenied" and attempts[team]["delete"] == "AccessDenied"  # ...none writes it
    assert not [c for team in TEAMS for c in await api.list("v1/persistentvolumeclaims", team)]

    # du with the operator's identity (an administrator's view): the catalog's row is a listing of its prefix.
    ckpt = Plugin(write_kubeconfig(tmp_path / "kubeconfig", api_url, namespace="team-a"))
    du = await ckpt("du", "-A", "-o", "json", "--endpoint-url", catalog_store.endpoint)
    assert du.code == 0, du.err
    rows = {r["namespace"]: r for r in json.loads(du.out)["namespaces"]}
    listed = client_as(catalog_store, *OPERATOR_KEYS).list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/_catalog/")
    assert rows["(catalog)"]["referencedBytes"] == status["sizeBytes"]
    assert rows["(catalog)"]["storedBytes"] == sum(o["Size"] for o in listed["Contents"]) > status["sizeBytes"]
    assert rows["(catalog)"]["s3"]["prefixes"] == [f"s3://{BUCKET}/{PREFIX}/_catalog/"]
    # A tenant's own credentials list the catalog too (they read it), and see the same figures.
    team_env = dict(zip(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), keys("team-a")))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in team_env.items():
            patch.setenv(key, value)
        tenant = await ckpt("du", "--catalog", "--endpoint-url", catalog_store.endpoint)
    assert tenant.code == 0, tenant.err
    (catalog_line,) = [line for line in tenant.out.splitlines() if line.startswith("(catalog)")]
    assert catalog_line.split()[1:3] == ["1", status["size"]]

    # Deleting the entry (no job uses it now) deletes its data, with the operator's identity.
    await api.delete(CCKPT, None, "tiny-gpt2")

    async def gone():
        return await api.get(CCKPT, None, "tiny-gpt2") is None
    await wait_for(gone, timeout=30)
    assert not manifest_exists(uri, endpoint_url=catalog_store.endpoint)
