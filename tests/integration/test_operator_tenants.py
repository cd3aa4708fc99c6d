"""The credential model of the s3 store, against a real SeaweedFS with one identity per namespace
(`-s3.config`, actions scoped as `Read|Write|List:<bucket>/<prefix>/<namespace>/*`): the
operator's agent pods do all their work with their namespace's scoped credentials, and a tenant
that takes its own namespace's Secret cannot write, delete or read another tenant's checkpoints.

The operator's own identity (its environment here, as the chart's operatorSecret would give it)
reaches the whole prefix and never goes into a pod."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile

import pytest

from checkpoint_operator.objectstore.s3 import read_manifest
from checkpoint_operator.config import OperatorConfig
from conftest import CKPT, TJ, Operator, training_job, write_checkpoint
from s3server import SeaweedFS

pytestmark = pytest.mark.timeout(300)
TEAMS = ("team-a", "team-b")
BUCKET, PREFIX = "tenants", "checkpoints"
OPERATOR_KEYS = ("operator-access", "operator-secret-0123456789")
SECRET = "store-credentials"


def team_keys(team: str) -> tuple[str, str]:
    return f"{team}-access", f"{team}-secret-0123456789"


def identities() -> dict:
    """What a platform provisions: the operator's identity, and one per namespace scoped to its prefix."""
    def scoped(team):
        scope = f"{BUCKET}/{PREFIX}/{team}/*"
        access, secret = team_keys(team)
        return {"name": team, "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": [f"Read:{scope}", f"Write:{scope}", f"List:{scope}"]}
    return {"identities": [
        {"name": "checkpoint-operator", "credentials": [{"accessKey": OPERATOR_KEYS[0], "secretKey": OPERATOR_KEYS[1]}],
         "actions": ["Read", "Write", "List"]},
        *(scoped(team) for team in TEAMS)]}


class ScopedSeaweedFS(SeaweedFS):
    config_path: str = ""

    def command(self) -> list[str]:
        return super().command() + [f"-s3.config={self.config_path}"]


@pytest.fixture(scope="module")
def scoped_store():
    data_dir = tempfile.mkdtemp(prefix="ckpt-weed-tenants-")
    server = ScopedSeaweedFS(data_dir, access_key=OPERATOR_KEYS[0], secret_key=OPERATOR_KEYS[1])
    server.config_path = os.path.join(data_dir, "s3-identities.json")
    with open(server.config_path, "w") as f:
        json.dump(identities(), f)
    server.start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.kill()


def client_as(server: SeaweedFS, access: str, secret: str):
    import boto3
    import botocore.handlers
    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                          region_name="us-east-1")
    client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    return client


@pytest.fixture
def operator_config(scoped_store) -> OperatorConfig:
    return OperatorConfig(reconcile_interval=0.2, agent_image="checkpoint-operator:test", storage_type="s3",
                          s3_endpoint=scoped_store.endpoint, s3_bucket=BUCKET, s3_region="us-east-1",
                          s3_prefix=PREFIX, s3_secret_name=SECRET)


@pytest.fixture
async def operator(api_url, cluster, operator_config, scoped_store, monkeypatch):
    # The operator's own identity is its environment (the chart's operatorSecret).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", OPERATOR_KEYS[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", OPERATOR_KEYS[1])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    op = Operator(api_url, operator_config, namespaces=list(TEAMS))
    await op.start()
    yield op
    await op.stop()


@pytest.fixture
async def tenants(api):
    def b64(text):
        return base64.b64encode(text.encode()).decode()
    for team in TEAMS:
        await api.create("v1/namespaces", None, {"metadata": {"name": team}})
        access, secret = team_keys(team)
        await api.create("v1/secrets", team, {"metadata": {"name": SECRET}, "data": {
            "AWS_ACCESS_KEY_ID": b64(access), "AWS_SECRET_ACCESS_KEY": b64(secret)}})


def in_namespace(body: dict, namespace: str) -> dict:
    body["metadata"]["namespace"] = namespace
    return body


async def wait_phase(api, wait_for, namespace, name, phase, timeout=90):
    async def reached():
        obj = await api.get(TJ, namespace, name)
        return obj if obj and obj.get("status", {}).get("phase") == phase else None
    return await wait_for(reached, timeout=timeout)


def agent(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", *args], capture_output=True,
                          text=True, timeout=120, env=env)


async def test_one_tenant_cannot_write_or_read_another_tenants_checkpoints(api, tenants, operator, trainer,
                                                                           wait_for, scoped_store, tmp_path):
    for team in TEAMS:
        trainer.behaviours[f"{team}-train"] = lambda a, env, team=team: write_checkpoint(
            env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.safetensors": f"{team} weights".encode()}) or 0
        await api.create(TJ, team, in_namespace(training_job(f"{team}-train"), team))
    ready = {team: await wait_phase(api, wait_for, team, f"{team}-train", "Succeeded") for team in TEAMS}
    # Each namespace's snapshot pod uploaded with that namespace's credentials, into its own prefix.
    b_ckpt = (await api.get(CKPT, "team-b", "team-b-train.step-1"))["status"]
    b_uri, b_digest = b_ckpt["location"]["s3"]["uri"], b_ckpt["digest"]
    assert b_uri.startswith(f"s3://{BUCKET}/{PREFIX}/team-b/")
    a_uri = (await api.get(CKPT, "team-a", "team-a-train.step-1"))["status"]["location"]["s3"]["uri"]
    assert a_uri.startswith(f"s3://{BUCKET}/{PREFIX}/team-a/")
    assert all(tj["status"]["outputCount"] == 1 for tj in ready.values())

    # Tenant A takes its own namespace's Secret into a pod of its own (the kubelet resolves it)
    # and turns the agent and boto3 against tenant B's prefix.
    attempts: dict = {}

    def attack(attempt, env):
        creds = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        assert creds["AWS_ACCESS_KEY_ID"] == team_keys("team-a")[0]
        agent_env = {"PATH": os.environ["PATH"], "AWS_ENDPOINT_URL": scoped_store.endpoint,
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
                     "AWS_SHARED_CREDENTIALS_FILE": os.devnull, **creds}
        evil = tmp_path / "evil"
        write_checkpoint(str(evil), ".", {"model.safetensors": b"forged weights"})
        attempts["upload over B"] = agent("upload", str(evil), b_uri, env=agent_env)
        attempts["upload own"] = agent("upload", str(evil), f"s3://{BUCKET}/{PREFIX}/team-a/scratch/", env=agent_env)
        attempts["download B"] = agent("download", b_uri, str(tmp_path / "stolen"), env=agent_env)
        # B's files are blobs under B's prefix: neither A's upload into them nor A's manifest naming them reaches them
        b_blobs = f"s3://{BUCKET}/{PREFIX}/team-b/blobs/sha256/"
        attempts["upload into B's blobs"] = agent("upload", str(evil), f"s3://{BUCKET}/{PREFIX}/team-a/scratch2/",
                                                  "--blobs", b_blobs, env=agent_env)
        own = f"s3://{BUCKET}/{PREFIX}/team-a/scratch/"  # A's own upload (above), its manifest made to name B's blobs
        a_client = client_as(scoped_store, creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"])
        manifest_key = own[len(f"s3://{BUCKET}/"):] + ".checkpoint-manifest.json"
        forged = json.loads(a_client.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
        forged["blobs"] = "../../team-b/blobs/sha256/"
        a_client.put_object(Bucket=BUCKET, Key=manifest_key, Body=json.dumps(forged).encode())
        attempts["download B's blobs"] = agent("download", own, str(tmp_path / "stolen2"), env=agent_env)
        client = client_as(scoped_store, creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"])
        key = b_uri[len(f"s3://{BUCKET}/"):]
        for name, call in (("delete B", lambda: client.delete_object(Bucket=BUCKET, Key=key + ".checkpoint-manifest.json")),
                           ("list B", lambda: client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/team-b/"))):
            try:
                call()
                attempts[name] = "allowed"
            except Exception as exc:  # noqa: BLE001 - the error code is what is checked
                attempts[name] = getattr(exc, "response", {}).get("Error", {}).get("Code", str(exc))
        return 0
    trainer.behaviours["attack"] = attack
    body = in_namespace(training_job("attack", output={"enabled": False}), "team-a")
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    await api.create(TJ, "team-a", body)
    await wait_phase(api, wait_for, "team-a", "attack", "Succeeded")

    upload = attempts["upload over B"]
    assert upload.returncode == 1 and "denied" in upload.stderr.lower(), upload.stderr
    assert attempts["upload own"].returncode == 0, attempts["upload own"].stderr  # the credentials do work
    assert attempts["download B"].returncode == 1 and "denied" in attempts["download B"].stderr.lower(), \
        attempts["download B"].stderr  # no reading either
    assert attempts["delete B"] == "AccessDenied" and attempts["list B"] == "AccessDenied", attempts
    for name in ("upload into B's blobs", "download B's blobs"):
        assert attempts[name].returncode == 1 and "denied" in attempts[name].stderr.lower(), attempts[name].stderr
    # Tenant B's checkpoint is untouched, and B's own consumers still get exactly its bytes.
    assert read_manifest(b_uri, endpoint_url=scoped_store.endpoint).digest == b_digest  # the operator's identity
    seen = {}
    trainer.behaviours["team-b-use"] = lambda a, env: seen.update(
        data=open(os.path.join(env["CHECKPOINT_INPUT_PATH"], "model.safetensors"), "rb").read()) or 0
    await api.create(TJ, "team-b", in_namespace(training_job("team-b-use", checkpoints=[{"name": "team-b-train.step-1"}],
                                                             output={"enabled": False}), "team-b"))
    await wait_phase(api, wait_for, "team-b", "team-b-use", "Succeeded")
    assert seen["data"] == b"team-b weights"

    # Deleting B's Checkpoint deletes its data with the operator's identity (the tenants' cannot).
    await api.delete(CKPT, "team-b", "team-b-train.step-1")

    async def gone():
        return await api.get(CKPT, "team-b", "team-b-train.step-1") is None
    await wait_for(gone, timeout=30)
    operator_client = client_as(scoped_store, *OPERATOR_KEYS)
    left = operator_client.list_objects_v2(Bucket=BUCKET, Prefix=b_uri[len(f"s3://{BUCKET}/"):]).get("KeyCount")
    assert left == 0
