"""Every import source of issue 14 through the real operator, against real servers on 127.0.0.1:
the Hugging Face Hub (olah, a mirror serving local repositories; the minimal Hub for a private
repository whose LFS file is redirected to a CDN), Git (http-backend with a login and LFS),
Azure Blob (Azurite), GCS's XML API (SeaweedFS) and FTPS (pyftpdlib, with a CA of its own).

Each imports the same tiny Hugging Face model layout to a Ready Checkpoint with format
huggingface, the digest of those files and its provenance (status.source: the commit for the Hub
and Git), on the volume store and on the s3 store. Broken sources fail with a Failed condition
saying why, never Ready, and no credential appears in a status, an event or a pod spec.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

import credentials
from checkpoint_operator.agent.scan import scan_directory
from checkpoint_operator.config import OperatorConfig
from conftest import CKPT, NS
from ftpserver import PASSWORD, USER, ftp_server  # noqa: F401  (fixture)
from gitserver import git_http  # noqa: F401  (fixture)
from hubserver import mini_hub  # noqa: F401  (fixtures)
from layouts import tar_gz, tiny_model

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("credential_watch")]
HF_TOKEN = "hf_operator_test_token_42"
GIT_PASSWORD = "git-operator-secret-42"
credentials.register(HF_TOKEN, GIT_PASSWORD)
HAS_LFS = shutil.which("git-lfs") is not None


@pytest.fixture
def store(request):
    """The store the operator runs with: "volume" unless a test parametrizes it (indirect)."""
    return getattr(request, "param", "volume")


@pytest.fixture
def operator_config(store, request) -> OperatorConfig:
    if store == "volume":
        return OperatorConfig(reconcile_interval=0.2, agent_image="checkpoint-operator:test")
    s3env = request.getfixturevalue("s3")
    return OperatorConfig(reconcile_interval=0.2, agent_image="checkpoint-operator:test", storage_type="s3",
                          s3_endpoint=s3env.endpoint, s3_bucket=s3env.bucket, s3_prefix=s3env.root.rstrip("/"),
                          s3_secret_name="store-credentials")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def secret(api, name: str, data: dict[str, str]) -> None:
    await api.create("v1/secrets", NS, {"metadata": {"name": name}, "data": {k: b64(v) for k, v in data.items()}})


def checkpoint(name: str, source: dict, **spec) -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": name, "namespace": NS},
            "spec": {"source": source, **spec}}


async def settled(api, wait_for, names, timeout=150) -> dict[str, dict]:
    async def all_settled():
        found = {}
        for name in names:
            obj = await api.get(CKPT, NS, name)
            if obj.get("status", {}).get("phase") not in ("Ready", "Failed"):
                return None
            found[name] = obj
        return found
    return await wait_for(all_settled, timeout=timeout, interval=0.2)


def expected_digest(tmp_path: Path, files: dict[str, bytes]) -> str:
    root = tmp_path / "expected"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return scan_directory(root, single=True).checkpoints[0].digest


async def everything_written(api) -> str:
    """Every Checkpoint, event and pod the API holds, as text (to look for leaked credentials)."""
    parts = [await api.list(CKPT, NS), await api.list("v1/events", NS), await api.list("v1/pods", NS)]
    return json.dumps(parts)


@pytest.fixture
async def store_secret(api, store, request):
    if store == "s3":
        s3env = request.getfixturevalue("s3")
        await secret(api, "store-credentials", {"AWS_ACCESS_KEY_ID": s3env.server.access_key,
                                                "AWS_SECRET_ACCESS_KEY": s3env.server.secret_key})


@pytest.mark.parametrize("store", ["volume", "s3"], indirect=True)
async def test_every_source_imports_the_tiny_model(api, store, store_secret, operator, wait_for, tmp_path, olah_hub,
                                                   mini_hub, git_http, azure_blob, s3, ftp_server):
    model = tiny_model()
    digest = expected_digest(tmp_path, model)
    sources: dict[str, tuple[dict, dict]] = {}  # name -> (spec.source, expected status.source)

    # Hugging Face: a public repository on olah
    commit = olah_hub.add_repo(f"tiny-org/gpt2-{store}", model)
    sources["hf-mirror"] = ({"huggingFace": {"repo": f"tiny-org/gpt2-{store}", "endpoint": olah_hub.endpoint}},
                            {"kind": "huggingFace", "uri": f"hf://tiny-org/gpt2-{store}@main", "revision": "main",
                             "resolvedRevision": commit})
    # Hugging Face: a private repository behind a token, its weights an LFS file on a CDN
    commit = mini_hub.add_repo("org/private", model, lfs=("model.safetensors",), token=HF_TOKEN)
    await secret(api, "hf-token", {"HF_TOKEN": HF_TOKEN})
    sources["hf-private"] = ({"huggingFace": {"repo": "org/private", "revision": "main", "endpoint": mini_hub.endpoint,
                                              "secretRef": {"name": "hf-token"}}},
                             {"kind": "huggingFace", "uri": "hf://org/private@main", "revision": "main",
                              "resolvedRevision": commit})
    # Git over http with a login, a tag, and the weights in LFS (without git-lfs on the machine,
    # plain files: tests/agent/test_import_git.py then says that LFS was not tested)
    files = dict(model)
    lfs = {"model.safetensors": files.pop("model.safetensors")} if HAS_LFS else {}
    commit = git_http.add_repo("model", files, lfs_files=lfs, tag="v1")
    git_http.require_login(USER, GIT_PASSWORD)
    await secret(api, "git-login", {"username": USER, "password": GIT_PASSWORD})
    sources["git"] = ({"git": {"url": git_http.url("model"), "revision": "v1", "lfs": HAS_LFS,
                               "secretRef": {"name": "git-login"}}},
                      {"kind": "git", "uri": f"git+{git_http.url('model')}@v1", "revision": "v1",
                       "resolvedRevision": commit})
    # Azure Blob: a tree under a prefix, the connection string in a Secret
    for rel, data in model.items():
        azure_blob.upload(f"runs/gpt2/{rel}", data)
    await secret(api, "azure", {"AZURE_STORAGE_CONNECTION_STRING": azure_blob.server.connection_string})
    sources["azure"] = ({"azureBlob": {"uri": azure_blob.uri("runs/gpt2/"), "secretRef": {"name": "azure"}}},
                        {"kind": "azureBlob", "uri": azure_blob.uri("runs/gpt2/")})
    # GCS's XML API with an HMAC key (SeaweedFS speaks it)
    for rel, data in model.items():
        s3.client().put_object(Bucket=s3.bucket, Key=s3.key(f"gcs/gpt2/{rel}"), Body=data)
    await secret(api, "gcs-hmac", {"AWS_ACCESS_KEY_ID": s3.server.access_key,
                                   "AWS_SECRET_ACCESS_KEY": s3.server.secret_key})
    gs_uri = f"gs://{s3.bucket}/{s3.key('gcs/gpt2/')}"
    sources["gcs"] = ({"gcs": {"uri": gs_uri, "endpoint": s3.endpoint, "secretRef": {"name": "gcs-hmac"}}},
                      {"kind": "gcs", "uri": gs_uri})
    # FTPS with a login and the server's CA from a ConfigMap
    (ftp_server.root / "gpt2.tar.gz").write_bytes(tar_gz(model))
    await secret(api, "ftp-login", {"username": USER, "password": PASSWORD})
    await api.create("v1/configmaps", NS, {"metadata": {"name": "ftp-ca"},
                                           "data": {"ca.crt": ftp_server.ca.ca_file.read_text()}})
    url = ftp_server.ftps_url("gpt2.tar.gz")
    sources["ftps"] = ({"http": {"url": url, "secretRef": {"name": "ftp-login"}, "caConfigMap": {"name": "ftp-ca"}}},
                       {"kind": "http", "uri": url})

    for name, (source, _) in sources.items():
        await api.create(CKPT, NS, checkpoint(name, source))
    done = await settled(api, wait_for, list(sources))
    for name, (_, provenance) in sources.items():
        status = done[name]["status"]
        assert status["phase"] == "Ready", (name, status.get("message"), status.get("conditions"))
        assert status["format"] == "huggingface" and status["fileCount"] == len(model), (name, status)
        assert status["digest"] == digest, name
        assert status["source"] == provenance, name
        assert status["owned"] is True
        assert ("s3" if store == "s3" else "volume") in status["location"], status["location"]
    assert {auth for *_, auth in mini_hub.seen_by("cdn")} == {None}  # the token never left the endpoint
    written = await everything_written(api)
    for credential in (HF_TOKEN, GIT_PASSWORD, PASSWORD, azure_blob.server.key, s3.server.secret_key):
        assert credential not in written


async def test_broken_sources_fail_with_the_reason(api, operator, wait_for, mini_hub, git_http, azure_blob, s3,
                                                   ftp_server):
    # The volume store: what fails is the import container, the same on both stores.
    mini_hub.add_repo("org/private", tiny_model(), token=HF_TOKEN)
    mini_hub.add_repo("org/public", tiny_model())
    git_http.add_repo("model", tiny_model())
    await secret(api, "hf-wrong", {"HF_TOKEN": "hf_not_the_token"})
    (ftp_server.root / "evil.tar.gz").write_bytes(tar_gz({"../../escape.txt": b"x"}))
    for rel, data in tiny_model().items():
        s3.client().put_object(Bucket=s3.bucket, Key=s3.key(f"gcs/private/{rel}"), Body=data)
    cases = {
        "hf-wrong-token": ({"huggingFace": {"repo": "org/private", "endpoint": mini_hub.endpoint,
                                            "secretRef": {"name": "hf-wrong"}}}, {},
                           "the Hub refused the token (HF_TOKEN)"),
        "hf-no-revision": ({"huggingFace": {"repo": "org/public", "revision": "v9", "endpoint": mini_hub.endpoint}}, {},
                           "no revision 'v9' in org/public"),
        "hf-over-size": ({"huggingFace": {"repo": "org/public", "endpoint": mini_hub.endpoint}}, {"maxSize": "1Ki"},
                         "past the size limit of 1024"),
        "git-no-revision": ({"git": {"url": git_http.url("model"), "revision": "v9"}}, {}, "no revision 'v9'"),
        "git-no-repo": ({"git": {"url": git_http.url("absent")}}, {}, "repository not found"),
        "azure-no-container": ({"azureBlob": {"uri": f"az://{azure_blob.server.account}/absent/m/",
                                              "secretRef": {"name": "azure"}}}, {}, "no such container 'absent'"),
        "gcs-anonymous": ({"gcs": {"uri": f"gs://{s3.bucket}/{s3.key('gcs/private/')}", "endpoint": s3.endpoint}}, {},
                          "no HMAC key was given, so the request was anonymous"),
        "ftp-unsafe-archive": ({"http": {"url": ftp_server.url("evil.tar.gz")}}, {}, "archive refused"),
    }
    await secret(api, "azure", {"AZURE_STORAGE_CONNECTION_STRING": azure_blob.server.connection_string})
    for name, (source, spec, _) in cases.items():
        await api.create(CKPT, NS, checkpoint(name, source, **spec))
    done = await settled(api, wait_for, list(cases))
    for name, (_, _, words) in cases.items():
        status = done[name]["status"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert status["phase"] == "Failed" and "digest" not in status and "source" not in status, (name, status)
        assert ready["status"] == "False" and ready["reason"] == "ImportFailed", (name, ready)
        assert words in ready["message"], (name, ready["message"])
    assert "hf_not_the_token" not in await everything_written(api)
    assert not (Path("/") / "escape.txt").exists()
