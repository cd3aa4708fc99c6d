"""Checkpoints imported from a web URL on the volume store: an archive becomes a Ready,
owned Checkpoint; a broken source fails with the reason, and nothing is marked Ready."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading

import pytest

from conftest import CKPT, NS

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("credential_watch")]


@pytest.fixture
def web(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in {"config.json": b"{}", "model.safetensors": b"w" * 64,
                           "optimizer.pt": b"o"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "model.tar.gz").write_bytes(buffer.getvalue())
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "evil.tar").write_bytes(evil.getvalue())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def http_checkpoint(name: str, url: str) -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": name, "namespace": NS},
            "spec": {"source": {"http": {"url": url}}}}


async def settled(api, wait_for, name):
    async def done():
        obj = await api.get(CKPT, NS, name)
        return obj if obj.get("status", {}).get("phase") in ("Ready", "Failed") else None
    return await wait_for(done, timeout=40)


async def test_http_archive_import_on_the_volume_store(api, operator, wait_for, web):
    await api.create(CKPT, NS, http_checkpoint("from-web", f"{web}/model.tar.gz"))
    ckpt = await settled(api, wait_for, "from-web")
    status = ckpt["status"]
    assert status["phase"] == "Ready", status
    assert status["owned"] is True and status["fileCount"] == 3 and status["format"] == "huggingface"
    assert status["resumable"] is True
    name = f"from-web-data-{ckpt['metadata']['uid'][:8]}"
    assert status["location"] == {"volume": {"claimName": name, "path": "data",
                                             "manifest": f".ckpt-manifests/{status['digest'].replace(':', '-')}.json"}}
    claim = await api.get("v1/persistentvolumeclaims", NS, name)
    assert claim["metadata"]["ownerReferences"][0]["name"] == "from-web"


@pytest.mark.parametrize("path,fragment", [("missing.tar.gz", "404"), ("evil.tar", "escape.txt")])
async def test_broken_sources_fail_with_the_reason(api, operator, wait_for, web, path, fragment):
    await api.create(CKPT, NS, http_checkpoint("broken", f"{web}/{path}"))
    ckpt = await settled(api, wait_for, "broken")
    status = ckpt["status"]
    assert status["phase"] == "Failed" and "digest" not in status
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ImportFailed"
    assert fragment in ready["message"] and path in ready["message"]
    async def warned():  # kopf posts events in the background
        return any(e["involvedObject"]["name"] == "broken" and e["type"] == "Warning" and e["reason"] == "ImportFailed"
                   for e in await api.list("v1/events", NS))
    await wait_for(warned, timeout=10)


async def test_a_hand_written_snapshot_checkpoint_fails_with_the_reason(api, operator, wait_for):
    await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                                "metadata": {"name": "forged", "namespace": NS},
                                "spec": {"source": {"trainingJob": {"name": "nobody", "uid": "u-1", "directory": "x"}}}})
    ckpt = await settled(api, wait_for, "forged")
    ready = next(c for c in ckpt["status"]["conditions"] if c["type"] == "Ready")
    assert ckpt["status"]["phase"] == "Failed" and ready["reason"] == "NotSealed" and "nobody" in ready["message"]
    # With sealed data that names a claim its job never made (the user's own): never Ready on it.
    await api.create("v1/persistentvolumeclaims", NS, {"metadata": {"name": "users-data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                                "metadata": {"name": "forged-sealed", "namespace": NS},
                                "spec": {"source": {"trainingJob": {
                                    "name": "nobody", "uid": "u-1", "directory": "x", "sealed": {
                                        "digest": "sha256:" + "0" * 64,
                                        "location": {"volume": {"claimName": "users-data", "path": "x"}}}}}}})
    ckpt = await settled(api, wait_for, "forged-sealed")
    ready = next(c for c in ckpt["status"]["conditions"] if c["type"] == "Ready")
    # The operator signs what it seals; a hand-written sealed block is refused before its data is looked at.
    assert ckpt["status"]["phase"] == "Failed" and ready["reason"] == "NotSignedByOperator"
    assert "spec.source.trainingJob.sealed is written by the operator only" in ready["message"]


async def test_the_namespace_annotation_lowers_the_import_size_limit(api, operator, wait_for, web, tmp_path):
    """An administrator's Namespace annotation lowers CKPT_MAX_CHECKPOINT_SIZE for that namespace:
    the agent gets it as --max-size and refuses the import before it is downloaded whole."""
    (tmp_path / "big.safetensors").write_bytes(b"w" * 4096)
    await api.patch("v1/namespaces", None, NS, {"metadata": {"annotations": {"ckpt.dev/max-checkpoint-size": "1Ki"}}})
    await api.create(CKPT, NS, http_checkpoint("too-big", f"{web}/big.safetensors"))
    ckpt = await settled(api, wait_for, "too-big")
    ready = next(c for c in ckpt["status"]["conditions"] if c["type"] == "Ready")
    assert ckpt["status"]["phase"] == "Failed" and ready["reason"] == "ImportFailed", ckpt["status"]
    assert "past the size limit of 1024" in ready["message"], ready["message"]  # refused on its Content-Length

    await api.patch("v1/namespaces", None, NS, {"metadata": {"annotations": {"ckpt.dev/max-checkpoint-size": "big"}}})
    await api.create(CKPT, NS, http_checkpoint("bad-limit", f"{web}/model.tar.gz"))

    async def refused():
        obj = await api.get(CKPT, NS, "bad-limit")
        conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        return conditions if conditions.get("Ready", {}).get("reason") == "InvalidLimit" else None
    conditions = await wait_for(refused, timeout=30)
    assert "ckpt.dev/max-checkpoint-size='big'" in conditions["Ready"]["message"]
    assert conditions["Stalled"]["status"] == "True"


async def test_a_size_beyond_int64_is_a_status_not_a_retry_loop(api, operator, wait_for, web):
    """hostile3 F6: a 400-digit Namespace limit or push size was float('inf'), an OverflowError in a
    retry loop, and the Checkpoint got no status at all. Failed before (status None)."""
    huge = "9" * 400
    await api.patch("v1/namespaces", None, NS, {"metadata": {"annotations": {"ckpt.dev/max-checkpoint-size": huge}}})
    await api.create(CKPT, NS, http_checkpoint("huge-limit", f"{web}/model.tar.gz"))

    async def reason(name: str, wanted: str):
        obj = await api.get(CKPT, NS, name)
        ready = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}.get("Ready") or {}
        return ready if ready.get("reason") == wanted else None
    limit = await wait_for(lambda: reason("huge-limit", "InvalidLimit"), timeout=30)
    assert "annotation ckpt.dev/max-checkpoint-size='9999" in limit["message"] and len(limit["message"]) < 300
    await api.patch("v1/namespaces", None, NS, {"metadata": {"annotations": {"ckpt.dev/max-checkpoint-size": None}}})

    await api.create(CKPT, NS, {"metadata": {"name": "huge-push", "annotations": {
        "ckpt.dev/upload-digest": "sha256:" + "a" * 64, "ckpt.dev/upload-requested": "r1",
        "ckpt.dev/volume-size": huge}}, "spec": {"source": {"upload": {}}}})

    async def refused():
        obj = await api.get(CKPT, NS, "huge-push")
        message = (obj.get("status") or {}).get("message") or ""
        return message if "annotation ckpt.dev/volume-size: '9999" in message else None
    message = await wait_for(refused, timeout=30)
    assert "is not a size" in message and len(message) < 400, message
    assert await api.get("v1/pods", NS, "huge-push-upload") is None


async def _foreign_claim(api, wait_for, cluster, name: str):
    """A user's own PVC called `name`, with data."""
    await api.create("v1/persistentvolumeclaims", NS, {"metadata": {"name": name}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    claim_dir = await wait_for(lambda: cluster.claim_dir(NS, name))
    (claim_dir / "team.txt").write_bytes(b"the team's data")
    return claim_dir


async def _waits_on_the_claim(api, wait_for, name: str) -> dict:
    async def waiting():
        obj = await api.get(CKPT, NS, name)
        ready = next((c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == "Ready"), None)
        return ready if ready and ready["reason"] == "ClaimNotOwned" else None
    return await wait_for(waiting, timeout=40)


async def _held_by_an_invalid_limit(api, wait_for, body: dict) -> str:
    """Create the Checkpoint while the Namespace's limit annotation is invalid: it waits before its
    claim is made (InvalidLimit). Returns the name its claim will have."""
    await api.patch("v1/namespaces", None, NS, {"metadata": {"annotations": {"ckpt.dev/max-checkpoint-size": "big"}}})
    created = await api.create(CKPT, NS, body)

    async def held():
        obj = await api.get(CKPT, NS, created["metadata"]["name"])
        ready = next((c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == "Ready"), None)
        return ready if ready and ready["reason"] == "InvalidLimit" else None
    await wait_for(held, timeout=30)
    return f"{created['metadata']['name']}-data-{created['metadata']['uid'][:8]}"


async def _release_the_limit(api, name: str) -> None:
    await api.patch("v1/namespaces", None, NS, {"metadata": {"annotations": {"ckpt.dev/max-checkpoint-size": None}}})
    # A Namespace is not watched: a change of the Checkpoint wakes it now rather than at its recheck.
    await api.patch(CKPT, NS, name, {"metadata": {"labels": {"touched": "yes"}}})


async def test_an_import_never_takes_over_a_claim_it_does_not_own(api, operator, cluster, wait_for, web):
    """Issue 23 item 5: a Checkpoint named so that its claim is a user's PVC waited on nothing,
    mounted that PVC read-write and wrote into it. The claim's name now holds the Checkpoint's uid
    (a PVC named like the old `<name>-data` is simply not its claim); one made under the exact
    name once the Checkpoint exists is never mounted: the import waits, naming it."""
    team_dir = await _foreign_claim(api, wait_for, cluster, "teamdata1-data")
    await api.create(CKPT, NS, http_checkpoint("teamdata1", f"{web}/model.tar.gz"))
    ready = await settled(api, wait_for, "teamdata1")
    assert ready["status"]["phase"] == "Ready" and ready["status"]["location"]["volume"]["claimName"] != "teamdata1-data"
    assert sorted(p.name for p in team_dir.iterdir()) == ["team.txt"]

    claim = await _held_by_an_invalid_limit(api, wait_for, http_checkpoint("teamdata2", f"{web}/model.tar.gz"))
    claim_dir = await _foreign_claim(api, wait_for, cluster, claim)
    await _release_the_limit(api, "teamdata2")
    ready = await _waits_on_the_claim(api, wait_for, "teamdata2")
    assert f"PersistentVolumeClaim {claim} exists and does not belong to Checkpoint teamdata2" in ready["message"]
    obj = await api.get(CKPT, NS, "teamdata2")
    assert obj["status"]["phase"] == "Pending" and "owned" not in obj["status"], obj["status"]
    pods = (await api.list("v1/pods", NS))
    assert not [p for p in pods if any((v.get("persistentVolumeClaim") or {}).get("claimName") == claim
                                       for v in p["spec"].get("volumes") or [])]
    assert sorted(p.name for p in claim_dir.iterdir()) == ["team.txt"]


async def test_an_upload_never_takes_over_a_claim_it_does_not_own(api, operator, cluster, wait_for):
    claim = await _held_by_an_invalid_limit(api, wait_for, {"metadata": {"name": "teamdata3", "annotations": {
        "ckpt.dev/upload-digest": "sha256:" + "0" * 64, "ckpt.dev/upload-requested": "now"}},
        "spec": {"source": {"upload": {}}}})
    claim_dir = await _foreign_claim(api, wait_for, cluster, claim)
    await _release_the_limit(api, "teamdata3")
    ready = await _waits_on_the_claim(api, wait_for, "teamdata3")
    assert f"{claim} exists and does not belong to Checkpoint teamdata3" in ready["message"]
    assert await api.get("v1/pods", NS, "teamdata3-upload") is None
    assert sorted(p.name for p in claim_dir.iterdir()) == ["team.txt"]


@pytest.mark.parametrize("source,words", [
    ({"s3": {"uri": "s3://AKIAEXAMPLE:wJalrXUtnFEMI-example-secret@bucket/x/"}},
     "spec.source.s3.uri must not carry credentials"),
    ({"s3": {"uri": "s3://bucket/x/", "endpoint": "https://AKIAEXAMPLE:wJalrXUtnFEMI-example-secret@minio:9000"}},
     "spec.source.s3.endpoint must not carry credentials"),
    ({"http": {"url": "ftp://ftp.example.com/dir%0D%0APASS%20x/m.tar"}},
     "spec.source.http.url must not hold control characters"),
    # hostile1 D3, D4, D12: each was accepted, then crashed the agent or was quoted in statuses and events
    ({"azureBlob": {"uri": "https://acct.blob.core.windows.net/models/llama/?sv=2020&sig=wJalrXUtnFEMI-example-secret"}},
     "spec.source.azureBlob.uri must not carry credentials"),
    ({"http": {"url": "http://127.0.0.1:9/x.tar?X-Amz-Credential=AKIA&X-Amz-Signature=wJalrXUtnFEMI-example-secret"}},
     "spec.source.http.url must not carry credentials"),
    ({"http": {"url": "http://[::1/x.tar"}}, "spec.source.http.url must be scheme://host[:port]/..."),
    ({"http": {"url": "http://\uff55\uff20127.0.0.1:9/x.tar"}}, "spec.source.http.url must be scheme://host[:port]/..."),
    ({"git": {"url": "https://h/r%E2%80%AE.git"}}, "spec.source.git.url must not hold control characters"),
    ({"volume": {"claimName": "c", "path": "/a\nb"}}, "spec.source.volume.path must not hold control characters"),
    ({"volume": {"claimName": "c", "path": "/\u202ex"}}, "spec.source.volume.path must not hold control characters"),
])
async def test_the_api_refuses_credentials_and_control_characters_in_urls(api, source, words):
    """Issues 18 item 9 and 23 item 8: the CRD's rules, as local mode's admission (and a real API
    server) runs them; the refused value is not echoed back."""
    from checkpoint_operator.local.server import ApiError
    with pytest.raises(ApiError) as refused:
        await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                                    "metadata": {"name": "bad-url", "namespace": NS}, "spec": {"source": source}})
    assert refused.value.status == 422 and words in str(refused.value), str(refused.value)
    assert "wJalrXUtnFEMI-example-secret" not in str(refused.value)
    assert await api.get(CKPT, NS, "bad-url") is None
