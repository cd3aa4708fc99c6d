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

pytestmark = pytest.mark.timeout(120)


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
    assert status["location"] == {"volume": {"claimName": "from-web-data", "path": "data",
                                             "manifest": f".ckpt-manifests/{status['digest'].replace(':', '-')}.json"}}
    claim = await api.get("v1/persistentvolumeclaims", NS, "from-web-data")
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
    assert ckpt["status"]["phase"] == "Failed" and ready["reason"] == "ProducerGone" and "nobody" in ready["message"]


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
