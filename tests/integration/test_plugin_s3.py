"""`kubectl ckpt` on the s3 store, against the real operator and a real S3 server (SeaweedFS on
127.0.0.1): push uploads straight into the prefix the operator assigned (the user's
credentials, the agent's resumable upload) and the operator's pod verifies it in place; pull
downloads with the pinned digest; verify runs the operator's pod (or --local, the user's
credentials); owned data goes with the Checkpoint, even before it was Ready."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from checkpoint_operator.protocol.manifest import MANIFEST_NAME
from checkpoint_operator.objectstore.blobs import blob_root_of, object_uri
from checkpoint_operator.objectstore.s3 import manifest_exists, parse_s3_uri, read_manifest
from checkpoint_operator.config import OperatorConfig
from conftest import CKPT, NS
from plugin_helpers import Plugin, make_model_dir, tree_digest, write_kubeconfig

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("credential_watch")]


@pytest.fixture
def operator_config(s3) -> OperatorConfig:  # noqa: F811
    return OperatorConfig(reconcile_interval=0.2, agent_image="checkpoint-operator:test", storage_type="s3",
                          s3_endpoint=s3.endpoint, s3_bucket=s3.bucket, s3_prefix=s3.root.rstrip("/"),
                          s3_secret_name="store-credentials")


@pytest.fixture
async def store_secret(api, s3):  # noqa: F811
    def b64(text):
        return base64.b64encode(text.encode()).decode()
    await api.create("v1/secrets", NS, {"metadata": {"name": "store-credentials"}, "data": {
        "AWS_ACCESS_KEY_ID": b64(s3.server.access_key), "AWS_SECRET_ACCESS_KEY": b64(s3.server.secret_key)}})


@pytest.fixture
def ckpt(api_url, tmp_path) -> Plugin:
    return Plugin(write_kubeconfig(tmp_path / "kubeconfig", api_url))


async def test_push_pull_verify_tamper_and_delete_on_s3(ckpt, api, store_secret, operator, cluster, s3,  # noqa: F811
                                                        tmp_path, wait_for):
    source = make_model_dir(tmp_path)
    pushed = await ckpt("push", str(source), "--name", "s3-model", "--format", "safetensors")
    assert pushed.code == 0, pushed.err
    body = await api.get(CKPT, NS, "s3-model")
    status = body["status"]
    uri = status["location"]["s3"]["uri"]
    assert uri.startswith(f"s3://{s3.bucket}/{s3.root}default/s3-model-") and status["owned"] is True
    assert status["phase"] == "Ready" and status["format"] == "safetensors"  # the pusher's hint wins
    assert status["step"] == 120 and status["fileCount"] == 4 and "upload" not in status
    assert manifest_exists(uri)

    pulled = await ckpt("pull", "s3-model", str(tmp_path / "back"))
    assert pulled.code == 0, pulled.err
    assert tree_digest(tmp_path / "back") == tree_digest(source)
    assert (tmp_path / "back" / MANIFEST_NAME).exists()

    verified = await ckpt("verify", "s3-model")
    assert verified.code == 0 and "Verified=True" in verified.out, verified.err
    local = await ckpt("verify", "s3-model", "--local")
    assert local.code == 0 and "read locally; not recorded" in local.out, local.err

    manifest = read_manifest(uri)
    entry = next(e for e in manifest.files if e.path == "config.json")
    loc = parse_s3_uri(object_uri(uri, manifest, entry.path, entry.sha256))  # its blob
    assert manifest.blobs and "/blobs/sha256/" in loc.key
    original = s3.client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    s3.client().put_object(Bucket=loc.bucket, Key=loc.key, Body=original.replace(b"64", b"65"))
    tampered = await ckpt("verify", "s3-model")
    assert tampered.code == 1
    assert "Verified=False (DataMismatch)" in tampered.out and "'config.json': sha256" in tampered.out
    local = await ckpt("verify", "s3-model", "--local", "-o", "json")
    result = json.loads(local.out)
    assert local.code == 1 and result["verified"] is False
    assert result["problems"][0]["path"] == "config.json"
    refused = await ckpt("pull", "s3-model", str(tmp_path / "again"))
    assert refused.code == 1 and "config.json: sha256 mismatch" in refused.err

    await api.delete(CKPT, NS, "s3-model")
    await wait_for(lambda: _gone(api, "s3-model"), timeout=30)
    assert not manifest_exists(uri)


async def test_data_pushed_to_an_upload_that_never_became_ready_goes_with_it(api, store_secret, operator,  # noqa: F811
                                                                             cluster, s3, wait_for):
    await api.create(CKPT, NS, {"metadata": {"name": "abandoned"}, "spec": {"source": {"upload": {}}}})

    async def assigned():
        body = await api.get(CKPT, NS, "abandoned")
        return (body.get("status") or {}).get("upload")
    upload = await wait_for(assigned, timeout=20)
    assert upload["store"] == "s3" and upload["endpoint"] == s3.endpoint
    prefix = parse_s3_uri(upload["uri"]).as_prefix()
    s3.client().put_object(Bucket=prefix.bucket, Key=prefix.key + "half.bin", Body=b"x" * 100)
    await api.delete(CKPT, NS, "abandoned")
    await wait_for(lambda: _gone(api, "abandoned"), timeout=30)
    listed = s3.client().list_objects_v2(Bucket=prefix.bucket, Prefix=prefix.key)
    assert listed.get("KeyCount", 0) == 0


async def test_a_resumed_push_skips_what_arrived_and_a_bad_upload_fails(ckpt, api, store_secret, operator,  # noqa: F811
                                                                        cluster, s3, tmp_path, wait_for):
    source = make_model_dir(tmp_path, "step-3")
    await api.create(CKPT, NS, {"metadata": {"name": "resumed"}, "spec": {"source": {"upload": {}}}})

    async def assigned():
        return ((await api.get(CKPT, NS, "resumed")).get("status") or {}).get("upload")
    prefix = parse_s3_uri((await wait_for(assigned, timeout=20))["uri"]).as_prefix()
    # an interrupted push: two blobs there (beside the Checkpoint's prefix, named by their sha256), no manifest
    blob_dir = parse_s3_uri(blob_root_of(prefix.uri))
    for rel in ("config.json", "trainer_state.json"):
        data = (source / rel).read_bytes()
        s3.client().put_object(Bucket=blob_dir.bucket, Key=blob_dir.key + hashlib.sha256(data).hexdigest(), Body=data)
    resumed = await ckpt("push", str(source), "--name", "resumed")
    assert resumed.code == 0, resumed.err
    assert "skipped 2 files already uploaded" in resumed.err

    # An upload whose objects do not match its manifest: Failed, naming the file, never Ready.
    other = make_model_dir(tmp_path / "o", "step-4")
    await api.create(CKPT, NS, {"metadata": {"name": "broken"}, "spec": {"source": {"upload": {}}}})

    async def assigned_broken():
        return ((await api.get(CKPT, NS, "broken")).get("status") or {}).get("upload")
    target = parse_s3_uri((await wait_for(assigned_broken, timeout=20))["uri"]).as_prefix()
    from checkpoint_operator.agent.upload import upload_dir
    manifest = upload_dir(str(other), target.uri).manifest
    s3.client().put_object(Bucket=target.bucket, Key=target.key + "model.safetensors", Body=b"truncated")
    await api.patch(CKPT, NS, "broken", {"metadata": {"annotations": {
        "ckpt.dev/upload-digest": manifest.digest, "ckpt.dev/upload-requested": "by-hand-1"}}})

    async def failed():
        body = await api.get(CKPT, NS, "broken")
        return body if body["status"].get("phase") == "Failed" else None
    body = await wait_for(failed, timeout=60)
    assert body["status"]["conditions"][0]["reason"] in ("UploadMismatch",) or any(
        c["reason"] == "UploadMismatch" for c in body["status"]["conditions"])
    assert "'model.safetensors': size 9 bytes" in body["status"]["message"]
    again = await ckpt("push", str(other), "--name", "broken")
    assert again.code == 1 and "Checkpoint broken failed:" in again.err and "delete it" in again.err


async def _gone(api, name):
    return await api.get(CKPT, NS, name) is None


async def test_a_push_of_a_file_that_changed_says_what_to_do(ckpt, api, store_secret, operator, cluster, s3,  # noqa: F811
                                                              tmp_path, monkeypatch):
    from plugin_helpers import push_of_a_file_changed_after_hashing
    await push_of_a_file_changed_after_hashing(ckpt, api, tmp_path, monkeypatch, "racy")
