"""The import pod of each source kind (logic/import_sources.py), pure: the URI and flags the agent
gets (parsed by the agent's real parser), where credentials come from (Secret references only),
and the provenance recorded from the agent's output."""

from __future__ import annotations

import argparse
import json

import pytest

from checkpoint_operator.agent.cli import add_agent_parser
from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import agent_commands, workload
from checkpoint_operator.logic.import_sources import (
    SOURCE_CA_MOUNT, SOURCE_SECRET_MOUNT, azure_uri, hf_uri, import_spec, source_status,
)
from checkpoint_operator.storage import store_for
from checkpoint_operator.protocol import channel
from checkpoint_operator.protocol.results import ImportReport, Provenance


def ckpt(source: dict) -> Checkpoint:
    return Checkpoint.model_validate({"metadata": {"name": "m", "namespace": "default", "uid": "u-1"},
                                      "spec": {"source": source}})


def parse(command: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_agent_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(command[1:])


SOURCES = {
    "huggingFace": {"huggingFace": {"repo": "org/model", "revision": "feature/x", "include": ["*.json", "*.safetensors"],
                                    "exclude": ["*.bin"], "endpoint": "https://mirror.example", "secretRef": {"name": "hf"}}},
    "gcs": {"gcs": {"uri": "gs://bucket/run/", "endpoint": "http://gcs:4443", "secretRef": {"name": "hmac"}}},
    "azureBlob": {"azureBlob": {"uri": "https://acct.blob.core.windows.net/models/llama/", "secretRef": {"name": "az"}}},
    "git": {"git": {"url": "https://git.example/org/model.git", "revision": "v1", "lfs": True,
                    "secretRef": {"name": "login"}, "caConfigMap": {"name": "ca", "key": "bundle.pem"}}},
    "http": {"http": {"url": "ftps://ftp.example/m.tar.gz", "secretRef": {"name": "ftp"}, "caConfigMap": {"name": "ca"}}},
    "s3": {"s3": {"uri": "s3://ext/llama/", "endpoint": "http://ext:9000", "secretRef": {"name": "ext"}}},
}


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_the_agent_parses_every_import_command(kind):
    spec = import_spec(ckpt(SOURCES[kind]))
    args = parse(agent_commands.import_(spec.uri, "/checkpoint-data/data", max_size=1000, source_args=spec.args))
    assert (args.source, args.dest, args.max_size) == (spec.uri, "/checkpoint-data/data", "1000")


def test_hugging_face():
    spec = import_spec(ckpt(SOURCES["huggingFace"]))
    assert spec.uri == "hf://org/model@feature%2Fx" and spec.revision == "feature/x" and spec.pins_commit
    args = parse(agent_commands.import_(spec.uri, "/d", source_args=spec.args))
    assert args.include == ["*.json", "*.safetensors"] and args.exclude == ["*.bin"]
    assert args.endpoint_url == "https://mirror.example"
    token = next(e for e in spec.env if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "HF_TOKEN"}
    assert {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"} in spec.env


def test_hf_uris_as_huggingface_hub_parses_them():
    from huggingface_hub import parse_hf_uri
    for revision in ("main", "feature/x", "refs/pr/3", "a" * 40):
        parsed = parse_hf_uri(hf_uri("org/model", revision))
        assert (parsed.id, parsed.revision, parsed.path_in_repo) == ("org/model", revision, "")


def test_azure_https_form_becomes_az_with_its_endpoint_when_not_the_public_cloud():
    assert azure_uri("https://acct.blob.core.windows.net/models/llama/") == (
        "az://acct/models/llama/", "https://acct.blob.core.windows.net")
    assert import_spec(ckpt(SOURCES["azureBlob"])).args == []
    sovereign = import_spec(ckpt({"azureBlob": {"uri": "https://acct.blob.core.chinacloudapi.cn/models/x.tar"}}))
    assert sovereign.uri == "az://acct/models/x.tar"
    assert sovereign.args == ["--endpoint-url", "https://acct.blob.core.chinacloudapi.cn"]
    env = import_spec(ckpt(SOURCES["azureBlob"])).env
    assert {e["name"] for e in env} == {"AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN"}
    assert all(e["valueFrom"]["secretKeyRef"]["optional"] is True for e in env)


def test_git_login_and_ca_are_mounted_files():
    spec = import_spec(ckpt(SOURCES["git"]))
    assert spec.uri == "git+https://git.example/org/model.git@v1" and spec.pins_commit
    args = parse(agent_commands.import_(spec.uri, "/d", source_args=spec.args))
    assert args.lfs and args.ca_file == f"{SOURCE_CA_MOUNT}/bundle.pem"
    assert {"name": "CKPT_SOURCE_SECRET_DIR", "value": SOURCE_SECRET_MOUNT} in spec.env
    assert {v["name"]: v for v in spec.volumes}["ckpt-source-secret"]["secret"]["secretName"] == "login"
    assert import_spec(ckpt({"git": {"url": "git://h/r.git"}})).uri == "git://h/r.git"
    assert import_spec(ckpt({"git": {"url": "git://h/r.git"}})).revision == "HEAD"


def test_gcs_and_ftps():
    gcs = import_spec(ckpt(SOURCES["gcs"]))
    assert gcs.uri == "gs://bucket/run/" and gcs.args == ["--endpoint-url", "http://gcs:4443"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in gcs.env} == {"hmac"}
    ftp = import_spec(ckpt(SOURCES["http"]))
    assert ftp.kind == "http" and ftp.args == ["--ca-file", f"{SOURCE_CA_MOUNT}/ca.crt"]


@pytest.mark.parametrize("storage", ["volume", "s3"])
@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_import_pods_carry_the_source_volumes_and_only_secret_references(storage, kind):
    config = OperatorConfig(storage_type=storage, s3_bucket="store", s3_secret_name="store-creds")
    checkpoint = ckpt(SOURCES[kind])
    pod = workload.build_import_pod(checkpoint, config, store_for(config).import_containers(checkpoint, 1000))
    spec = import_spec(checkpoint)
    names = {v["name"] for v in pod["spec"]["volumes"]}
    assert {v["name"] for v in spec.volumes} <= names
    fetch = (pod["spec"].get("initContainers") or pod["spec"]["containers"])[0]
    assert fetch["name"] == "import"
    assert {m["name"] for m in spec.mounts} <= {m["name"] for m in fetch["volumeMounts"]}
    assert all("value" not in e or e["name"] in ("CKPT_SOURCE_SECRET_DIR", "HF_HUB_DISABLE_TELEMETRY",
                                                  "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION") for e in fetch["env"])
    assert spec.uri in fetch["command"]  # an argument of its own, never inside the shell text


def test_shell_text_holds_no_argument():
    checkpoint = ckpt({"huggingFace": {"repo": "org/model", "include": ["*.json; rm -rf /", "$(id)"]}})
    container = store_for(OperatorConfig()).import_containers(checkpoint, 1000)[1][0]
    assert "*.json; rm -rf /" in container["command"] and "$(id)" in container["command"]
    assert "rm -rf" not in container["command"][2] and "$(id)" not in container["command"][2]


def test_provenance_from_the_import_output():
    line = json.dumps({"kind": "import", "version": 1, "sizeBytes": 3, "fileCount": 1, "provenance": {
        "uri": "hf://o/m@main", "revision": "main", "resolvedRevision": "a" * 40}}, separators=(",", ":"))
    log = "import: done\n" + line + '\n{"kind":"scan","version":1,"checkpoints":[]}\n'
    provenance = channel.find_result(log, (ImportReport,), limit_bytes=1 << 20).provenance
    spec = import_spec(ckpt({"huggingFace": {"repo": "o/m"}}))
    assert source_status(spec, provenance).to_wire() == {"kind": "huggingFace", "uri": "hf://o/m@main",
                                                         "revision": "main", "resolvedRevision": "a" * 40}
    assert "did not report the commit" in source_status(spec, None)
    assert "did not report the commit" in source_status(spec, Provenance(uri="hf://o/m", resolvedRevision="main"))
    s3 = import_spec(ckpt(SOURCES["s3"]))
    assert source_status(s3, None).to_wire() == {"kind": "s3", "uri": "s3://ext/llama/"}


def test_statuses_and_events_never_show_a_url_s_query():
    """hostile1 D4: `importing <url>` quoted the whole URL, a signed one's signature included. The
    CRD refuses the known credential parameters; what a query may hold besides is left out of
    every message and of status.source (the spec keeps the URL whole)."""
    checkpoint = ckpt({"http": {"url": "https://e.example/m.tar?download=1&X-Custom-Auth=abc"}})
    assert workload.import_origin(checkpoint) == "https://e.example/m.tar?..."
    shown = source_status(import_spec(checkpoint), None)
    assert not isinstance(shown, str) and shown.to_wire() == {"kind": "http", "uri": "https://e.example/m.tar?..."}
    plain = ckpt({"http": {"url": "https://e.example/m.tar"}})
    assert workload.import_origin(plain) == "https://e.example/m.tar"
