"""Every CEL rule of both CRDs, evaluated with a CEL library on accepting and rejecting objects.

The cases are whole objects: each is defaulted as the API server would, then every rule found in
the generated schema is evaluated at its node (transition rules only when an old object is
given). A case states which rules must reject it; every other rule must accept it. The test
fails when a rule of the CRD lacks an accepting or a rejecting case, and when the Python twin
of a rule (api/rules.py) disagrees with CEL on any node.

The helpers and CASES here are reused by tests/unit/api/test_models.py and tests/unit/api/test_crdgen.py.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import cel
import pytest
import yaml

from checkpoint_operator.api import cel_quantity, crdgen
from checkpoint_operator.api.rules import Rule

ROOT = Path(__file__).resolve().parents[3]
CRD_FILES = {"Checkpoint": ROOT / "crds" / "ckpt.dev_checkpoints.yaml",
             "TrainingJob": ROOT / "crds" / "ckpt.dev_trainingjobs.yaml",
             "ClusterCheckpoint": ROOT / "crds" / "ckpt.dev_clustercheckpoints.yaml"}


# --- schema helpers (shared) ------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def load_crd(kind: str) -> dict:
    """The committed CRD (parsed once: callers must not modify it)."""
    return yaml.load(CRD_FILES[kind].read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def open_api_schema(crd: dict) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict, value: Any) -> Any:
    """Structural defaulting as the API server does it: missing properties get their default,
    then defaulting goes on inside every present value (including the defaults just set)."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            apply_defaults(schema["items"], item)
    return value


@dataclass
class Evaluation:
    path: str            # where the rule sits, for example spec.checkpoints[1]
    rule: dict           # the x-kubernetes-validations entry
    value: Any           # self
    old: Any             # oldSelf (None when there is none)
    ok: Optional[bool]   # None: not evaluated (a transition rule without an old object)


def is_transition_rule(rule: dict) -> bool:
    return "oldSelf" in rule["rule"]


def evaluate_rules(schema: dict, value: Any, old: Any = None, path: str = "") -> Iterator[Evaluation]:
    """Walk schema and object together and evaluate every CEL rule on the node that carries it."""
    for rule in schema.get("x-kubernetes-validations", []):
        if is_transition_rule(rule) and old is None:
            yield Evaluation(path, rule, value, old, None)  # the API server skips it on create
            continue
        context = {"self": value}
        if old is not None:
            context["oldSelf"] = old
        result = cel.evaluate(rule["rule"], cel.Context(context, cel_quantity.FUNCTIONS))
        assert isinstance(result, bool), f"{rule['rule']!r} at {path} returned {result!r}, not a bool"
        yield Evaluation(path, rule, value, old, result)
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                old_sub = old.get(name) if isinstance(old, dict) else None
                yield from evaluate_rules(sub, value[name], old_sub, f"{path}.{name}".lstrip("."))
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):  # no old value for items of atomic lists
            yield from evaluate_rules(schema["items"], item, None, f"{path}[{i}]")


def iter_schema_rules(schema: dict, path: str = "") -> Iterator[tuple[str, dict, dict]]:
    """(path, node, rule) for every rule of a schema."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, schema, rule
    for name, sub in schema.get("properties", {}).items():
        yield from iter_schema_rules(sub, f"{path}.{name}".lstrip("."))
    if "items" in schema:
        yield from iter_schema_rules(schema["items"], f"{path}[]")


@functools.lru_cache(maxsize=None)
def model_rules() -> dict[tuple[str, str], Rule]:
    """Every Rule declared on the API models, by CEL text and message (both kinds have a
    `self == oldSelf` rule, each with its own message)."""
    found: dict[tuple[str, str], Rule] = {}
    seen: set[type] = set()

    def visit(model: type) -> None:
        if model in seen:
            return
        seen.add(model)
        for rule in getattr(model, "cel_rules", ()):
            found[(rule.cel, rule.message)] = rule
        for info in model.model_fields.values():
            sub = crdgen._model_of(info.annotation)
            if sub is not None:
                visit(sub)

    for definition in crdgen.CRDS:
        visit(definition.spec_model)
        visit(definition.status_model)
        for rule in definition.root_rules:
            found[(rule.cel, rule.message)] = rule
    return found


# --- the cases --------------------------------------------------------------------------------

def checkpoint(**spec: Any) -> dict:
    spec.setdefault("source", {"s3": {"uri": "s3://models/llama/"}})
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": "ckpt"}, "spec": spec}


def training_job(**spec: Any) -> dict:
    spec.setdefault("template", {"spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]}})
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "tj"}, "spec": spec}


def cluster_checkpoint(**spec: Any) -> dict:
    spec.setdefault("source", {"huggingFace": {"repo": "org/tiny"}})
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "ClusterCheckpoint", "metadata": {"name": "tiny"}, "spec": spec}


def inputs(*refs: dict) -> dict:
    return training_job(checkpoints=list(refs))


@dataclass
class Case:
    id: str
    obj: dict
    rejected_by: tuple[str, ...] = ()  # message prefixes of the rules that must say no; others say yes
    old: Optional[dict] = None         # for transition rules: the stored object
    openapi_valid: bool = True         # False: the OpenAPI part of the schema refuses it too (maxLength, ...)
    api_server_only: bool = False      # refused at creation only: the operator still reads such a stored object
    kind: str = field(init=False)

    def __post_init__(self) -> None:
        self.kind = self.obj["kind"]


SOURCE = "spec.source must set exactly one"
S3_URI = "spec.source.s3.uri"
HTTP_URL = "spec.source.http.url"
HF_REPO = "spec.source.huggingFace.repo"
GCS_URI = "spec.source.gcs.uri"
AZURE_URI = "spec.source.azureBlob.uri"
GIT_URL = "spec.source.git.url must be"
VOLUME_PATH = "spec.source.volume.path"
IMMUTABLE = "spec is immutable"
REF_ONE = "spec.checkpoints[] must set exactly one"
SELECT = "spec.checkpoints[].select"
REF_NAME = "spec.checkpoints[].name"
REF_JOB = "spec.checkpoints[].fromTrainingJob must be"
SELF_REF = "spec.checkpoints[].fromTrainingJob must not name the TrainingJob itself"
NAME_DOT = "metadata.name of a TrainingJob must not contain"
REF_MOUNT = "spec.checkpoints[].mountName"
KEEP = "spec.output.keep"
KEEP_ALIAS = "spec.output.keep is the short form"
WAIT = "spec.checkpoints[].wait"
PREFIX = "spec.output.namePrefix"
INPUT_DIR = "spec.inputDir must be"
OUTPUT_DIR = "spec.outputDir must be"
NESTED = "spec.inputDir and spec.outputDir"
SYSTEM_INPUT_DIR = "spec.inputDir must not be at or under a system directory"
SYSTEM_OUTPUT_DIR = "spec.outputDir must not be at or under a system directory"
RESTART_POLICY = "spec.template.spec.restartPolicy"
CONTAINER_NAME = "spec.template.spec.containers[].name"
INIT_CONTAINER_NAME = "spec.template.spec.initContainers[].name"
OUTPUT_SIZE = "spec.output.size must be greater than zero"
REPLICAS = "spec.replicas"
NAMED_PODS = "spec.template.spec.hostname and subdomain"
SHARED_PIDS = "spec.template.spec.shareProcessNamespace must not be true"
HOST_PIDS = "spec.template.spec.hostPID must not be true"
CONTAINERS = "spec.template.spec.containers"
PARTS_ENGINE = "spec.output.volumePerWorker and perWorker need spec.engine: JobSet"
PARTS_LIVE = "spec.output.perWorker is published OnCompletion"
PARTS_REPLICAS = "spec.replicas must be at most 128 with spec.output.volumePerWorker"
PARTS_EXCLUSIVE = "spec.output.volumePerWorker and perWorker are exclusive"
PARTS_NO_OUTPUT = "spec.output.volumePerWorker and perWorker need spec.output.enabled"
PARTS_ONE_WORKER = "spec.output.volumePerWorker needs spec.replicas of 2 or more"

LONG_OK = ("a" * 63 + ".") * 3 + "a" * 61          # 253 characters, a valid subdomain
LONG_BAD = LONG_OK + "a"                          # 254
S3 = {"uri": "s3://models/llama/"}
BASE_CKPT = checkpoint(description="base", format="huggingface")

CASES: list[Case] = [
    # Checkpoint: exactly one source
    Case("source-s3", checkpoint(source={"s3": {**S3, "endpoint": "http://minio:9000", "region": "eu",
                                                "secretRef": {"name": "creds"}}})),
    Case("source-http", checkpoint(source={"http": {"url": "https://example.com/m.tar.gz"}})),
    Case("source-volume", checkpoint(source={"volume": {"claimName": "data", "path": "/runs/ckpt-1"}})),
    Case("source-trainingjob", checkpoint(source={"trainingJob": {"name": "tj", "uid": "u1", "directory": "step-1"}})),
    Case("source-none", checkpoint(source={}), (SOURCE,)),
    Case("source-two", checkpoint(source={"s3": S3, "http": {"url": "https://example.com/m.tar"}}), (SOURCE,)),
    Case("source-three", checkpoint(source={"s3": S3, "http": {"url": "https://e.com/m"},
                                            "volume": {"claimName": "data"}}), (SOURCE,)),
    # s3 uri / http url schemes
    Case("s3-https-uri", checkpoint(source={"s3": {"uri": "https://bucket.s3.amazonaws.com/x/"}}), (S3_URI,)),
    Case("s3-gs-uri", checkpoint(source={"s3": {"uri": "gs://bucket/x/"}}), (S3_URI,)),
    Case("s3-uppercase-scheme", checkpoint(source={"s3": {"uri": "S3://bucket/x/"}}), (S3_URI,)),
    # --- the sources of issue 14 (workstream G1) ---
    Case("source-huggingface", checkpoint(source={"huggingFace": {
        "repo": "openai-community/gpt2", "revision": "main", "include": ["*.safetensors", "*.json"],
        "exclude": ["*.bin"], "endpoint": "https://hf-mirror.example.com", "secretRef": {"name": "hf"}}})),
    Case("source-gcs", checkpoint(source={"gcs": {"uri": "gs://my-bucket/runs/ckpt-1/", "secretRef": {"name": "gcs"},
                                                  "endpoint": "https://storage.googleapis.com"}})),
    Case("source-azure-https", checkpoint(source={"azureBlob": {
        "uri": "https://myaccount.blob.core.windows.net/models/llama/", "secretRef": {"name": "az"}}})),
    Case("source-azure-az", checkpoint(source={"azureBlob": {"uri": "az://myaccount/models/llama.tar.gz"}})),
    Case("source-git", checkpoint(source={"git": {"url": "https://git.example.com/org/model.git", "revision": "v1.0",
                                                  "lfs": True, "secretRef": {"name": "git"},
                                                  "caConfigMap": {"name": "ca"}}})),
    Case("source-git-daemon", checkpoint(source={"git": {"url": "git://127.0.0.1/model.git"}})),
    Case("source-git-and-hf", checkpoint(source={"git": {"url": "https://e.com/r.git"},
                                                 "huggingFace": {"repo": "a/b"}}), (SOURCE,)),
    Case("http-ftps-login", checkpoint(source={"http": {"url": "ftps://ftp.example.com/m.tar", "secretRef": {"name": "ftp"},
                                                        "caConfigMap": {"name": "ca", "key": "ca.pem"}}})),
    Case("http-credentials", checkpoint(source={"http": {"url": "https://user:pw@example.com/m.zip"}}), (HTTP_URL,)),
    Case("http-ftp-credentials", checkpoint(source={"http": {"url": "ftp://user:pw@example.com/m.zip"}}), (HTTP_URL,)),
    Case("http-secret-on-https", checkpoint(source={"http": {"url": "https://e.com/m.zip", "secretRef": {"name": "s"}}}),
         ("spec.source.http.secretRef",)),
    Case("hf-repo-no-org", checkpoint(source={"huggingFace": {"repo": "gpt2"}}), (HF_REPO,)),
    Case("hf-repo-three-parts", checkpoint(source={"huggingFace": {"repo": "a/b/c"}}), (HF_REPO,)),
    Case("hf-repo-url", checkpoint(source={"huggingFace": {"repo": "https://huggingface.co/a/b"}}), (HF_REPO,)),
    Case("hf-repo-dotdot", checkpoint(source={"huggingFace": {"repo": "../b"}}), (HF_REPO,)),
    Case("hf-repo-newline", checkpoint(source={"huggingFace": {"repo": "a/b\n"}}), (HF_REPO,)),
    Case("hf-revision-pr", checkpoint(source={"huggingFace": {"repo": "a/b", "revision": "refs/pr/1"}})),
    Case("hf-revision-sha", checkpoint(source={"huggingFace": {"repo": "a/b", "revision": "a" * 40}})),
    Case("hf-revision-dotdot", checkpoint(source={"huggingFace": {"repo": "a/b", "revision": "main/../x"}}),
         ("spec.source.huggingFace.revision",)),
    Case("hf-revision-space", checkpoint(source={"huggingFace": {"repo": "a/b", "revision": "my branch"}}),
         ("spec.source.huggingFace.revision",)),
    Case("hf-endpoint-ftp", checkpoint(source={"huggingFace": {"repo": "a/b", "endpoint": "ftp://mirror"}}),
         ("spec.source.huggingFace.endpoint",)),
    Case("hf-endpoint-credentials", checkpoint(source={"huggingFace": {"repo": "a/b",
                                                                       "endpoint": "https://u:p@mirror"}}),
         ("spec.source.huggingFace.endpoint",)),
    Case("gcs-s3-uri", checkpoint(source={"gcs": {"uri": "s3://bucket/x/"}}), (GCS_URI,)),
    Case("gcs-no-bucket", checkpoint(source={"gcs": {"uri": "gs:///x/"}}), (GCS_URI,)),
    Case("gcs-uppercase-bucket", checkpoint(source={"gcs": {"uri": "gs://Bucket/x/"}}), (GCS_URI,)),
    Case("gcs-endpoint-no-scheme", checkpoint(source={"gcs": {"uri": "gs://bucket/x/", "endpoint": "storage.local"}}),
         ("spec.source.gcs.endpoint",)),
    Case("azure-other-host", checkpoint(source={"azureBlob": {"uri": "https://example.com/models/x/"}}), (AZURE_URI,)),
    Case("azure-http", checkpoint(source={"azureBlob": {"uri": "http://acct.blob.core.windows.net/models/x/"}}),
         (AZURE_URI,)),
    Case("azure-no-container", checkpoint(source={"azureBlob": {"uri": "az://myaccount"}}), (AZURE_URI,)),
    Case("azure-uppercase-account", checkpoint(source={"azureBlob": {"uri": "az://MyAccount/models/"}}), (AZURE_URI,)),
    Case("git-ssh", checkpoint(source={"git": {"url": "git@github.com:org/repo.git"}}), (GIT_URL,)),
    Case("git-file", checkpoint(source={"git": {"url": "file:///srv/repo.git"}}), (GIT_URL,)),
    Case("git-token-in-url", checkpoint(source={"git": {"url": "https://x-token:ghp_secret@github.com/o/r.git"}}),
         ("spec.source.git.url must not carry credentials",)),
    Case("git-revision-dotdot", checkpoint(source={"git": {"url": "https://e.com/r.git", "revision": "a..b"}}),
         ("spec.source.git.revision",)),
    # every URL field: no credentials, no control characters raw or percent-encoded (issues 18 item 9, 23 item 8)
    Case("s3-access-key-in-uri", checkpoint(source={"s3": {"uri": "s3://AKIAEXAMPLE:SECRET@bucket/x/"}}),
         ("spec.source.s3.uri must not carry credentials",)),
    Case("s3-endpoint-credentials", checkpoint(source={"s3": {**S3, "endpoint": "https://AKIA:SECRET@minio:9000"}}),
         ("spec.source.s3.endpoint must not carry credentials",)),
    Case("s3-endpoint-not-http", checkpoint(source={"s3": {**S3, "endpoint": "minio:9000"}}),
         ("spec.source.s3.endpoint must be",)),
    Case("s3-uri-crlf-encoded", checkpoint(source={"s3": {"uri": "s3://bucket/a%0D%0Ab/"}}),
         ("spec.source.s3.uri must not hold control characters",)),
    Case("s3-uri-nul", checkpoint(source={"s3": {"uri": "s3://bucket/a\x00b/"}}),
         ("spec.source.s3.uri must not hold control characters",)),
    Case("s3-endpoint-newline-encoded", checkpoint(source={"s3": {**S3, "endpoint": "http://minio:9000/%0a"}}),
         ("spec.source.s3.endpoint must not hold control characters",)),
    Case("s3-uri-percent-ok", checkpoint(source={"s3": {"uri": "s3://bucket/a%20b%2F/"}})),
    Case("http-ftp-crlf-encoded", checkpoint(source={"http": {"url": "ftp://example.com/a%0D%0APASS%20x/m.tar"}}),
         ("spec.source.http.url must not hold control characters",)),
    Case("http-del", checkpoint(source={"http": {"url": "https://example.com/m\x7f.tar"}}),
         ("spec.source.http.url must not hold control characters",)),
    Case("http-c1-encoded", checkpoint(source={"http": {"url": "https://example.com/m%C2%85.tar"}}),
         ("spec.source.http.url must not hold control characters",)),
    Case("hf-endpoint-crlf-encoded", checkpoint(source={"huggingFace": {"repo": "a/b",
                                                                        "endpoint": "https://mirror/%0d%0a"}}),
         ("spec.source.huggingFace.endpoint must not hold control characters",)),
    Case("gcs-uri-control", checkpoint(source={"gcs": {"uri": "gs://bucket/a\rb/"}}),
         ("spec.source.gcs.uri must not hold control characters",)),
    Case("gcs-uri-hmac-in-uri", checkpoint(source={"gcs": {"uri": "gs://GOOG1E:secret@bucket/x/"}}), (GCS_URI,)),
    Case("gcs-endpoint-control", checkpoint(source={"gcs": {"uri": "gs://bucket/x/",
                                                            "endpoint": "https://storage.local/%00"}}),
         ("spec.source.gcs.endpoint must not hold control characters",)),
    Case("azure-uri-control", checkpoint(source={"azureBlob": {"uri": "az://myaccount/models/x%0A/"}}),
         ("spec.source.azureBlob.uri must not hold control characters",)),
    Case("azure-uri-key-in-uri", checkpoint(source={"azureBlob": {"uri": "https://acct:key@acct.blob.core.windows.net/m/"}}),
         (AZURE_URI,)),
    Case("git-url-control", checkpoint(source={"git": {"url": "https://e.com/r%0A.git"}}),
         ("spec.source.git.url must not hold control characters",)),
    # hostile1 D3, D4, D12: one URL rule with the agent's (api/urls.py; tests/unit/api/test_url_rule.py)
    Case("http-fullwidth-at", checkpoint(source={"http": {"url": "http://\uff55\uff20127.0.0.1:9/x.tar"}}),
         ("spec.source.http.url must be scheme://host",)),
    Case("http-unclosed-ipv6", checkpoint(source={"http": {"url": "http://[::1/x.tar"}}),
         ("spec.source.http.url must be scheme://host",)),
    Case("http-empty-label", checkpoint(source={"http": {"url": "http://a..b/x.tar"}}),
         ("spec.source.http.url must be scheme://host",)),
    Case("s3-uri-unclosed-ipv6", checkpoint(source={"s3": {"uri": "s3://[::1/x/"}}),
         ("spec.source.s3.uri must be scheme://host",)),
    Case("hf-endpoint-empty-label", checkpoint(source={"huggingFace": {"repo": "a/b", "endpoint": "https://a..b"}}),
         ("spec.source.huggingFace.endpoint must be scheme://host",)),
    Case("gcs-endpoint-token", checkpoint(source={"gcs": {"uri": "gs://bucket/x/",
                                                          "endpoint": "https://storage.local/?access_token=x"}}),
         ("spec.source.gcs.endpoint must not carry credentials",)),
    Case("azure-empty-label", checkpoint(source={"azureBlob": {"uri": "https://acct.blob.core..windows.net/models/x/"}}),
         ("spec.source.azureBlob.uri must be scheme://host",)),
    Case("http-ipv6", checkpoint(source={"http": {"url": "http://[fe80::1:2]:8080/x.tar"}})),
    Case("s3-endpoint-unclosed-ipv6", checkpoint(source={"s3": {**S3, "endpoint": "http://[::1:9000"}}),
         ("spec.source.s3.endpoint must be scheme://host",)),
    Case("git-fullwidth-at", checkpoint(source={"git": {"url": "https://\uff55\uff20h/r.git"}}),
         ("spec.source.git.url must be scheme://host",)),
    Case("azure-sas-in-query", checkpoint(source={"azureBlob": {
        "uri": "https://acct.blob.core.windows.net/models/llama/?sv=2020-08-04&sig=SECRETSIG"}}),
         ("spec.source.azureBlob.uri must not carry credentials",)),
    Case("http-presigned", checkpoint(source={"http": {
        "url": "https://h/x.tar?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc"}}),
         ("spec.source.http.url must not carry credentials",)),
    Case("http-encoded-token", checkpoint(source={"http": {"url": "https://h/x.tar?%74oken=abc"}}),
         ("spec.source.http.url must not carry credentials",)),
    Case("http-harmless-query", checkpoint(source={"http": {"url": "https://h/x.tar?download=true&signature_v=2"}})),
    Case("http-bidi-encoded", checkpoint(source={"http": {"url": "https://h/m%E2%80%AE.tar"}}),
         ("spec.source.http.url must not hold control characters",)),
    Case("gcs-zwsp", checkpoint(source={"gcs": {"uri": "gs://bucket/model\u200b/"}}),
         ("spec.source.gcs.uri must not hold control characters",)),
    Case("volume-path-newline", checkpoint(source={"volume": {"claimName": "data", "path": "/a\nb"}}),
         ("spec.source.volume.path must not hold control characters",)),
    Case("volume-path-bidi", checkpoint(source={"volume": {"claimName": "data", "path": "/\u202ex"}}),
         ("spec.source.volume.path must not hold control characters",)),
    Case("volume-path-zwsp", checkpoint(source={"volume": {"claimName": "data", "path": "/runs/7\u200b"}}),
         ("spec.source.volume.path must not hold control characters",)),
    Case("volume-path-percent-is-a-name", checkpoint(source={"volume": {"claimName": "data", "path": "/a%0Ab/caf\u00e9"}})),
    Case("http-plain", checkpoint(source={"http": {"url": "http://example.com/m.zip"}})),
    Case("http-ftp", checkpoint(source={"http": {"url": "ftp://example.com/m.zip"}})),
    Case("http-no-scheme", checkpoint(source={"http": {"url": "example.com/m.zip"}}), (HTTP_URL,)),
    Case("http-s3", checkpoint(source={"http": {"url": "s3://bucket/m.zip"}}), (HTTP_URL,)),
    # volume path: no '..' segment
    Case("volume-default-path", checkpoint(source={"volume": {"claimName": "data"}})),
    Case("volume-dots-in-names", checkpoint(source={"volume": {"claimName": "data", "path": "/a/..b/c..d/.e"}})),
    Case("volume-dotdot", checkpoint(source={"volume": {"claimName": "data", "path": ".."}}), (VOLUME_PATH,)),
    Case("volume-dotdot-leading", checkpoint(source={"volume": {"claimName": "data", "path": "../etc"}}),
         (VOLUME_PATH,)),
    Case("volume-dotdot-middle", checkpoint(source={"volume": {"claimName": "data", "path": "/a/../../b"}}),
         (VOLUME_PATH,)),
    Case("volume-dotdot-trailing", checkpoint(source={"volume": {"claimName": "data", "path": "/a/.."}}),
         (VOLUME_PATH,)),
    # immutability (transition rule)
    Case("immutable-same", BASE_CKPT, old=BASE_CKPT),
    Case("immutable-description", checkpoint(description="changed", format="huggingface"), (IMMUTABLE,),
         old=BASE_CKPT),
    Case("immutable-source", checkpoint(description="base", format="huggingface",
                                        source={"s3": {"uri": "s3://models/other/"}}), (IMMUTABLE,), old=BASE_CKPT),
    Case("immutable-format-added", checkpoint(description="base", format="huggingface"), (IMMUTABLE,),
         old=checkpoint(description="base")),
    Case("immutable-format-removed", checkpoint(description="base"), (IMMUTABLE,), old=BASE_CKPT),

    # TrainingJob: checkpoint references
    Case("ref-name", inputs({"name": "llama-3.8b-base"})),
    Case("ref-uid", inputs({"uid": "6f1c2c3e-9d7a-4b1e-8a51-0c4a3f9e2b11"})),
    Case("ref-from-job-latest", inputs({"fromTrainingJob": "sft", "select": "latest", "mountName": "policy"})),
    Case("ref-from-job", inputs({"fromTrainingJob": "sft"})),
    Case("ref-two-inputs", inputs({"name": "base"}, {"fromTrainingJob": "sft", "select": "latest"})),
    Case("ref-name-253", inputs({"name": LONG_OK})),
    Case("ref-none", inputs({}), (REF_ONE,)),
    Case("ref-only-mount-name", inputs({"mountName": "x"}), (REF_ONE,)),
    Case("ref-name-and-uid", inputs({"name": "a", "uid": "u"}), (REF_ONE,)),
    Case("ref-name-and-job", inputs({"name": "a", "fromTrainingJob": "b"}), (REF_ONE,)),
    Case("ref-all-three", inputs({"name": "a", "uid": "u", "fromTrainingJob": "b"}), (REF_ONE,)),
    Case("ref-second-bad", inputs({"name": "a"}, {"uid": "u", "name": "b"}), (REF_ONE,)),
    Case("select-with-name", inputs({"name": "a", "select": "latest"}), (SELECT,)),
    Case("select-with-uid", inputs({"uid": "u", "select": "latest"}), (SELECT,)),
    Case("select-alone", inputs({"select": "latest"}), (REF_ONE, SELECT)),
    Case("select-best-wait-finished", inputs({"fromTrainingJob": "sft", "select": "best", "wait": "Finished"})),
    Case("wait-with-name", inputs({"name": "a", "wait": "Finished"}), (WAIT,)),
    Case("name-uppercase", inputs({"name": "Llama"}), (REF_NAME,)),
    Case("name-underscore", inputs({"name": "llama_3"}), (REF_NAME,)),
    Case("name-leading-dash", inputs({"name": "-llama"}), (REF_NAME,)),
    Case("name-trailing-dash", inputs({"name": "llama-"}), (REF_NAME,)),
    Case("name-trailing-newline", inputs({"name": "llama\n"}), (REF_NAME,)),
    Case("name-empty", inputs({"name": ""}), (REF_NAME,)),
    Case("name-too-long", inputs({"name": LONG_BAD}), (REF_NAME,), openapi_valid=False),
    Case("job-uppercase", inputs({"fromTrainingJob": "SFT"}), (REF_JOB,)),
    Case("job-underscore", inputs({"fromTrainingJob": "sft_1"}), (REF_JOB,)),
    Case("job-leading-dash", inputs({"fromTrainingJob": "-sft"}), (REF_JOB,)),
    Case("job-too-long", inputs({"fromTrainingJob": LONG_BAD}), (REF_JOB,), openapi_valid=False),
    Case("cluster-ref", inputs({"clusterCheckpoint": "gpt2-tiny", "mountName": "base"})),
    Case("cluster-ref-uppercase", inputs({"clusterCheckpoint": "GPT2"}), ("spec.checkpoints[].clusterCheckpoint",)),
    Case("cluster-ref-and-name", inputs({"clusterCheckpoint": "a", "name": "b"}), (REF_ONE,)),
    Case("catalog-hf", cluster_checkpoint(license="https://www.apache.org/licenses/LICENSE-2.0")),
    Case("catalog-two-sources", cluster_checkpoint(source={"huggingFace": {"repo": "org/tiny"},
                                                           "http": {"url": "https://example.com/m.tgz"}}), (SOURCE,)),
    Case("catalog-no-source", cluster_checkpoint(source={}), (SOURCE,)),
    Case("catalog-license-not-a-url", cluster_checkpoint(license="Apache-2.0"), ("spec.license",)),
    Case("catalog-license-with-credentials", cluster_checkpoint(license="https://u:p@example.com/l"),
         ("spec.license",)),
    Case("catalog-license-control", cluster_checkpoint(license="https://example.com/l%0D%0AX-Evil: 1"),
         ("spec.license",)),
    Case("catalog-bad-repo", cluster_checkpoint(source={"huggingFace": {"repo": "no-slash"}}), (HF_REPO,)),
    Case("catalog-max-size", cluster_checkpoint(maxSize="500Gi")),
    Case("catalog-max-size-zero", cluster_checkpoint(maxSize="0Gi"), ("spec.maxSize",)),
    # Beyond int64 (hostile6: accepted before), a fraction of a byte, the largest int64, 7Ei.
    Case("catalog-max-size-past-int64", cluster_checkpoint(maxSize="99999999999999999999Ei"), ("spec.maxSize",)),
    Case("catalog-max-size-8Ei", cluster_checkpoint(maxSize="8Ei"), ("spec.maxSize",)),
    Case("catalog-max-size-fraction-of-a-byte", cluster_checkpoint(maxSize="1.5"), ("spec.maxSize",)),
    Case("catalog-max-size-int64", cluster_checkpoint(maxSize="9223372036854775807")),
    Case("catalog-max-size-7Ei", cluster_checkpoint(maxSize="7.5Ei")),
    Case("catalog-description-lines", cluster_checkpoint(description="A tiny model.\n\tTrained on\tC4.")),
    Case("catalog-description-escape", cluster_checkpoint(description="a\x1b[31mred\x07"), ("spec.description",)),
    Case("catalog-description-carriage-return", cluster_checkpoint(description="ok\rfake"), ("spec.description",)),
    Case("catalog-description-c1", cluster_checkpoint(description="a\x85b"), ("spec.description",)),
    Case("catalog-description-bidi", cluster_checkpoint(description="ok \u202etxt.exe"), ("spec.description",)),
    Case("catalog-description-zero-width", cluster_checkpoint(description="o\u200bk"), ("spec.description",)),
    Case("checkpoint-description-lines", checkpoint(description="step 1000\nloss 1.2")),
    Case("checkpoint-description-escape", checkpoint(description="\x1b]0;title\x07"), ("spec.description",)),
    Case("checkpoint-max-size", checkpoint(maxSize="500Gi")),
    Case("checkpoint-max-size-zero", checkpoint(maxSize="0"), ("spec.maxSize",)),
    Case("checkpoint-max-size-past-int64", checkpoint(maxSize="9223372036854775808"), ("spec.maxSize",)),
    Case("catalog-spec-same", cluster_checkpoint(), old=cluster_checkpoint()),
    Case("catalog-spec-changed", cluster_checkpoint(license="https://a.example/l"),
         (IMMUTABLE,), old=cluster_checkpoint(license="https://b.example/l")),
    Case("mount-uppercase", inputs({"name": "a", "mountName": "Policy"}), (REF_MOUNT,)),
    Case("mount-slash", inputs({"name": "a", "mountName": "a/b"}), (REF_MOUNT,)),
    Case("mount-leading-dash", inputs({"name": "a", "mountName": "-p"}), (REF_MOUNT,)),
    Case("mount-too-long", inputs({"name": "a", "mountName": LONG_BAD}), (REF_MOUNT,), openapi_valid=False),
    # output
    Case("keep-unset", training_job(output={"size": "5Gi"})),
    Case("keep-1", training_job(output={"keep": 1})),
    Case("keep-0", training_job(output={"keep": 0}), (KEEP,)),
    Case("keep-negative", training_job(output={"keep": -1}), (KEEP,)),
    Case("retention-and-publish", training_job(output={"publish": "Continuous", "retention": {
        "keepLatest": 2, "keepEvery": 1000, "keepBest": {"metric": "eval_loss", "mode": "min", "count": 2}}})),
    Case("keep-beside-retention", training_job(output={"keep": 3, "retention": {"keepEvery": 100}})),
    Case("keep-and-keep-latest", training_job(output={"keep": 3, "retention": {"keepLatest": 2}}), (KEEP_ALIAS,)),
    Case("prefix-ok", training_job(output={"namePrefix": "llama-sft-2"})),
    Case("prefix-200", training_job(output={"namePrefix": "p" * 200})),
    Case("prefix-201", training_job(output={"namePrefix": "p" * 201}), (PREFIX,)),
    Case("prefix-uppercase", training_job(output={"namePrefix": "Llama"}), (PREFIX,)),
    Case("prefix-dot", training_job(output={"namePrefix": "llama.sft"}), (PREFIX,)),
    Case("prefix-leading-dash", training_job(output={"namePrefix": "-llama"}), (PREFIX,)),
    Case("prefix-trailing-dash", training_job(output={"namePrefix": "llama-"}), (PREFIX,)),
    Case("prefix-newline", training_job(output={"namePrefix": "llama\n"}), (PREFIX,)),
    # replicas
    # TrainingJob immutability (transition rule): a run is what it was started with
    Case("tj-immutable-same", training_job(replicas=2), old=training_job(replicas=2)),
    Case("tj-immutable-replicas", training_job(replicas=2), (IMMUTABLE,), old=training_job(replicas=1)),
    Case("tj-immutable-inputs", training_job(checkpoints=[{"name": "other"}]), (IMMUTABLE,), old=training_job()),
    Case("replicas-unset", training_job()),
    Case("replicas-4", training_job(replicas=4)),
    Case("replicas-0", training_job(replicas=0), (REPLICAS,)),
    Case("replicas-negative", training_job(replicas=-1), (REPLICAS,)),
    # a distributed job's pods are named by the operator
    Case("one-pod-named", training_job(template={"spec": {"hostname": "h", "subdomain": "s", "containers": [
        {"name": "t", "image": "x"}]}})),
    Case("two-pods-hostname", training_job(replicas=2, template={"spec": {"hostname": "h", "containers": [
        {"name": "t", "image": "x"}]}}), (NAMED_PODS,)),
    Case("two-pods-subdomain", training_job(replicas=2, engine="JobSet", template={"spec": {
        "subdomain": "s", "containers": [{"name": "t", "image": "x"}]}}), (NAMED_PODS,)),
    Case("two-pods", training_job(replicas=2, nprocPerNode=8, engine="JobSet")),
    # hostile7 E2, H1: the live-sealing sidecar's channels are the operator's alone
    Case("shared-pids-live", training_job(output={"publish": "Continuous"}, template={"spec": {
        "shareProcessNamespace": True, "containers": [{"name": "t", "image": "x"}]}}), (SHARED_PIDS,)),
    Case("host-pids-live", training_job(output={"publish": "Continuous"}, template={"spec": {
        "hostPID": True, "containers": [{"name": "t", "image": "x"}]}}), (HOST_PIDS,)),
    Case("shared-pids-on-completion", training_job(output={"publish": "OnCompletion"}, template={"spec": {
        "shareProcessNamespace": True, "containers": [{"name": "t", "image": "x"}]}})),
    Case("annotations-in-template", training_job(template={"metadata": {"annotations": {
        "team": "a"}}, "spec": {"containers": [{"name": "t", "image": "x"}]}})),
    # a volume per worker: JobSet (one replicated job per worker), OnCompletion, at most 128 workers
    Case("volume-per-worker", training_job(replicas=2, engine="JobSet", output={"volumePerWorker": True})),
    Case("per-worker", training_job(replicas=128, engine="JobSet", output={"perWorker": True,
                                                                             "publish": "OnCompletion"})),
    Case("volume-per-worker-off", training_job(replicas=200, output={"volumePerWorker": False,
                                                                     "publish": "Continuous"})),
    Case("volume-per-worker-job", training_job(replicas=2, output={"volumePerWorker": True}), (PARTS_ENGINE,)),
    Case("per-worker-job", training_job(replicas=2, engine="Job", output={"perWorker": True}), (PARTS_ENGINE,)),
    # live sealing of a checkpoint assembled across workers' volumes (logic/live_unions.py)
    Case("volume-per-worker-live", training_job(replicas=2, engine="JobSet", output={
        "volumePerWorker": True, "publish": "Continuous"})),
    Case("per-worker-live", training_job(replicas=2, engine="JobSet", output={
        "perWorker": True, "publish": "Continuous"}), (PARTS_LIVE,)),
    Case("per-worker-too-many", training_job(replicas=129, engine="JobSet", output={"perWorker": True}),
         (PARTS_REPLICAS,)),
    # hostile4 D11: both at once, or where a volume per worker means nothing, were accepted silently
    Case("volume-per-worker-and-per-worker", training_job(replicas=2, engine="JobSet", output={
        "volumePerWorker": True, "perWorker": True}), (PARTS_EXCLUSIVE,)),
    Case("volume-per-worker-one-of-them-off", training_job(replicas=2, engine="JobSet", output={
        "volumePerWorker": True, "perWorker": False})),
    Case("volume-per-worker-one-worker", training_job(replicas=1, engine="JobSet", output={"volumePerWorker": True}),
         (PARTS_ONE_WORKER,)),
    Case("per-worker-one-worker", training_job(replicas=1, engine="JobSet", output={"perWorker": True})),
    Case("volume-per-worker-no-output", training_job(replicas=2, engine="JobSet", output={
        "volumePerWorker": True, "enabled": False}), (PARTS_NO_OUTPUT,)),
    Case("per-worker-no-output", training_job(replicas=2, engine="JobSet", output={
        "perWorker": True, "enabled": False}), (PARTS_NO_OUTPUT,)),
    # inputDir / outputDir
    Case("dirs-custom", training_job(inputDir="/data/in", outputDir="/data/out")),
    Case("dirs-prefix-not-nested", training_job(inputDir="/ab", outputDir="/a")),
    Case("dirs-prefix-not-nested-2", training_job(inputDir="/a", outputDir="/ab")),
    Case("dirs-hidden-names", training_job(inputDir="/a/.in", outputDir="/a/..out")),
    Case("dirs-output-in-input", training_job(inputDir="/a", outputDir="/a/b"), (NESTED,)),
    Case("dirs-input-in-output", training_job(inputDir="/a/b", outputDir="/a"), (NESTED,)),
    Case("dirs-equal", training_job(inputDir="/ckpt", outputDir="/ckpt"), (NESTED,)),
    Case("dirs-input-root", training_job(inputDir="/"), (NESTED,)),
    Case("dirs-output-root", training_job(outputDir="/"), (NESTED,)),
    Case("dirs-input-trailing-slash", training_job(inputDir="/in/"), (INPUT_DIR,)),
    Case("dirs-output-trailing-slash", training_job(outputDir="/out/"), (OUTPUT_DIR,)),
    Case("dirs-trailing-slash-nested", training_job(inputDir="/a/", outputDir="/a/b"), (INPUT_DIR,)),
    Case("dirs-input-relative", training_job(inputDir="in"), (INPUT_DIR,)),
    Case("dirs-output-relative", training_job(outputDir="out/ckpt"), (OUTPUT_DIR,)),
    Case("dirs-dot", training_job(inputDir="/a/./in"), (INPUT_DIR,)),
    Case("dirs-dotdot", training_job(outputDir="/a/../out"), (OUTPUT_DIR,)),
    Case("dirs-double-slash", training_job(inputDir="/a//in"), (INPUT_DIR,)),
    Case("dirs-double-slash-alias", training_job(inputDir="//out", outputDir="/out"), (INPUT_DIR,)),
    # hostile5 F2: not over a directory the container runtime or the image owns
    Case("dirs-output-etc", training_job(outputDir="/etc"), (SYSTEM_OUTPUT_DIR,)),
    Case("dirs-output-proc", training_job(outputDir="/proc"), (SYSTEM_OUTPUT_DIR,)),
    Case("dirs-output-dev-shm", training_job(outputDir="/dev/shm"), (SYSTEM_OUTPUT_DIR,)),
    Case("dirs-output-var-run-secrets", training_job(outputDir="/var/run/secrets"), (SYSTEM_OUTPUT_DIR,)),
    Case("dirs-output-usr-local", training_job(outputDir="/usr/local/out"), (SYSTEM_OUTPUT_DIR,)),
    Case("dirs-input-lib64", training_job(inputDir="/lib64"), (SYSTEM_INPUT_DIR,)),
    Case("dirs-input-sys", training_job(inputDir="/sys/fs/in"), (SYSTEM_INPUT_DIR,)),
    Case("dirs-both-system", training_job(inputDir="/run/in", outputDir="/boot/out"),
         (SYSTEM_INPUT_DIR, SYSTEM_OUTPUT_DIR)),
    Case("dirs-system-name-prefix", training_job(inputDir="/etcetera", outputDir="/devices/out")),
    Case("dirs-var-not-var-run", training_job(inputDir="/var/in", outputDir="/var/runs/out")),
    Case("dirs-tmp-home", training_job(inputDir="/tmp/in", outputDir="/home/user/out")),
    # hostile5 F3: what kube-apiserver refuses in the Job the operator builds
    Case("restart-never", training_job(template={"spec": {"restartPolicy": "Never", "containers": [
        {"name": "t", "image": "x"}]}})),
    Case("restart-on-failure", training_job(template={"spec": {"restartPolicy": "OnFailure", "containers": [
        {"name": "t", "image": "x"}]}})),
    Case("restart-always", training_job(template={"spec": {"restartPolicy": "Always", "containers": [
        {"name": "t", "image": "x"}]}}), (RESTART_POLICY,)),
    Case("restart-lowercase", training_job(template={"spec": {"restartPolicy": "never", "containers": [
        {"name": "t", "image": "x"}]}}), (RESTART_POLICY,)),
    Case("container-name-space", training_job(template={"spec": {"containers": [{"name": "Bad Name", "image": "x"}]}}),
         (CONTAINER_NAME,)),
    Case("container-name-dot", training_job(template={"spec": {"containers": [{"name": "t.1", "image": "x"}]}}),
         (CONTAINER_NAME,)),
    Case("container-name-64", training_job(template={"spec": {"containers": [{"name": "c" * 64, "image": "x"}]}}),
         (CONTAINER_NAME,)),
    Case("container-name-63", training_job(template={"spec": {"containers": [{"name": "c" * 63, "image": "x"}]}})),
    Case("container-name-missing", training_job(template={"spec": {"containers": [
        {"name": "ok", "image": "x"}, {"image": "y"}]}}), (CONTAINER_NAME,)),
    Case("container-name-newline", training_job(template={"spec": {"containers": [{"name": "t\n", "image": "x"}]}}),
         (CONTAINER_NAME,)),
    Case("init-container-name-underscore", training_job(template={"spec": {
        "initContainers": [{"name": "Bad_Init", "image": "x"}], "containers": [{"name": "t", "image": "x"}]}}),
         (INIT_CONTAINER_NAME,)),
    Case("init-container-name-ok", training_job(template={"spec": {
        "initContainers": [{"name": "fetch-1", "image": "x"}], "containers": [{"name": "t", "image": "x"}]}})),
    Case("output-size-zero", training_job(output={"size": "0"}), (OUTPUT_SIZE,)),
    Case("output-size-zero-gi", training_job(output={"size": "0Gi"}), (OUTPUT_SIZE,)),
    Case("output-size-zero-fraction", training_job(output={"size": "00.000M"}), (OUTPUT_SIZE,)),
    Case("output-size-small", training_job(output={"size": "0.5Gi"})),
    Case("output-size-ten", training_job(output={"size": "10"})),
    # template
    Case("template-full-pod", training_job(template={
        "metadata": {"labels": {"team": "nlp"}, "annotations": {"a": "b"}},
        "spec": {"restartPolicy": "Never", "nodeSelector": {"gpu": "a100"},
                 "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                 "initContainers": [{"name": "fetch", "image": "busybox", "command": ["true"]}],
                 "containers": [{"name": "t", "image": "t:1", "resources": {"limits": {"nvidia.com/gpu": 1}},
                                 "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 29500}]}],
                 "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}]}})),
    Case("template-no-containers", training_job(template={"spec": {"restartPolicy": "Never"}}), (CONTAINERS,)),
    Case("template-empty-containers", training_job(template={"spec": {"containers": []}}), (CONTAINERS,)),
    Case("template-no-spec", training_job(template={"metadata": {}}), (CONTAINERS,), openapi_valid=False),
    # the whole object (issue 18 items 6 and 11): a job never takes its own output; its name, the
    # prefix of its Checkpoints' names (<name>.<directory>), has no '.'
    Case("takes-another-job", inputs({"fromTrainingJob": "pretrain"})),
    Case("takes-itself", inputs({"fromTrainingJob": "tj"}), (SELF_REF,)),
    Case("takes-itself-among-others", inputs({"name": "base"}, {"fromTrainingJob": "tj", "select": "final"}),
         (SELF_REF,)),
    Case("takes-a-checkpoint-named-like-itself", inputs({"name": "tj"})),
    Case("name-with-dot", {**training_job(), "metadata": {"name": "tj.v2"}}, (NAME_DOT,), api_server_only=True),
    Case("name-with-dot-takes-itself", {**inputs({"fromTrainingJob": "tj.v2"}), "metadata": {"name": "tj.v2"}},
         (NAME_DOT, SELF_REF)),
]


def evaluations(case: Case) -> list[Evaluation]:
    schema = open_api_schema(load_crd(case.kind))
    new = apply_defaults(schema, copy.deepcopy(case.obj))
    old = apply_defaults(schema, copy.deepcopy(case.old)) if case.old is not None else None
    return list(evaluate_rules(schema, new, old))


def rule_matches(message: str, prefixes: tuple[str, ...]) -> bool:
    return any(message.startswith(p) for p in prefixes)


# --- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_rules_accept_and_reject_as_stated(case: Case) -> None:
    twins = model_rules()
    results = [e for e in evaluations(case) if e.ok is not None]
    failed = sorted({e.rule["message"] for e in results if not e.ok})
    unexpected = [m for m in failed if not rule_matches(m, case.rejected_by)]
    missing = [p for p in case.rejected_by if not any(m.startswith(p) for m in failed)]
    assert not unexpected, f"rules refused {case.id} unexpectedly: {unexpected}"
    assert not missing, f"no rule refused {case.id}; expected {missing}, all refusals: {failed}"
    # the Python twin of each rule (what the operator's models run) says the same on every node
    for e in results:
        rule = twins[(e.rule["rule"], e.rule["message"])]
        if rule.check is not None:
            python = rule.check(e.value)
            assert python == e.ok, (f"{case.id}: at {e.path} CEL says {e.ok} and Python says {python} "
                                    f"for {e.rule['rule']!r} on {e.value!r}")


def test_every_rule_has_an_accepting_and_a_rejecting_case() -> None:
    coverage: dict[tuple[str, str], set[bool]] = {}
    for kind in CRD_FILES:
        for _, _, rule in iter_schema_rules(open_api_schema(load_crd(kind))):
            coverage.setdefault((rule["rule"], rule["message"]), set())
    assert len(coverage) >= 18  # the rules this test was written for; more is fine
    for case in CASES:
        for e in evaluations(case):
            if e.ok is not None:
                coverage[(e.rule["rule"], e.rule["message"])].add(e.ok)
    uncovered = {rule: sorted(seen) for rule, seen in coverage.items() if seen != {True, False}}
    assert not uncovered, f"rules without both an accepting and a rejecting case (outcomes seen): {uncovered}"


def test_every_crd_rule_is_declared_on_a_model() -> None:
    twins = model_rules()
    for kind in CRD_FILES:
        for path, _, rule in iter_schema_rules(open_api_schema(load_crd(kind))):
            key = (rule["rule"], rule["message"])
            assert key in twins, f"{kind} {path}: rule {rule['rule']!r} ({rule['message']!r}) has no Rule in api/"
            if twins[key].check is None:
                assert is_transition_rule(rule), f"{rule['rule']!r} has no Python check but is not a transition rule"


def test_messages_name_their_field() -> None:
    for kind in CRD_FILES:
        for path, _, rule in iter_schema_rules(open_api_schema(load_crd(kind))):
            assert "spec." in rule["message"] or (not path and rule["message"].startswith("metadata.name")), \
                f"{kind} {path}: message {rule['message']!r} names no spec. field"
            # the message starts with the path of the node the rule sits on (list items as [])
            assert rule["message"].startswith(path), f"{kind}: {rule['message']!r} does not start with {path}"


def test_immutability_message_names_every_spec_field() -> None:
    from checkpoint_operator.api.checkpoint import CheckpointSpec
    (rule,) = [r for r in CheckpointSpec.cel_rules if r.cel == "self == oldSelf"]
    for name in CheckpointSpec.model_fields:
        assert f"spec.{name}" in rule.message


def test_transition_rule_is_skipped_on_create() -> None:
    # The API server evaluates `self == oldSelf` only on update: on create there is no oldSelf.
    (skipped,) = [e for e in evaluations(Case("create", BASE_CKPT)) if e.ok is None]
    assert skipped.rule["rule"] == "self == oldSelf" and skipped.path == "spec"


# --- what the API server checks when the CRD is created ----------------------------------------

MAX_REQUEST_BYTES = 3 * 1024 * 1024
UNBOUNDED_STRING = MAX_REQUEST_BYTES - 2         # the estimator's length of a string without maxLength
UNBOUNDED_OBJECT_ITEMS = MAX_REQUEST_BYTES // 3  # items of a list of objects without maxItems ("{}," each)
PER_RULE_COST_LIMIT = 10_000_000                 # StaticEstimatedCostLimit of apiextensions


def _resolve_field(node: dict, chain: list[str]) -> Optional[dict]:
    for name in chain:
        node = node.get("properties", {}).get(name)
        if node is None:
            return None
    return node


@pytest.mark.parametrize("kind", CRD_FILES)
def test_rules_only_read_declared_fields(kind: str) -> None:
    """CEL sees only declared properties: a field kept by x-kubernetes-preserve-unknown-fields is
    invisible to it, and a rule that reads one does not compile (the CRD is refused)."""
    for path, node, rule in iter_schema_rules(open_api_schema(load_crd(kind))):
        for match in re.finditer(r"\b(?:self|oldSelf)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", rule["rule"]):
            chain = [c for c in match.group(1).split(".") if c]
            methods = {"startsWith", "endsWith", "matches", "contains", "size", "filter", "all", "exists"}
            while chain and chain[-1] in methods:
                chain.pop()
            if not path and chain in (["metadata", "name"], ["metadata", "generateName"]):
                continue  # at the root, CEL may read these two fields of metadata (and no other)
            assert _resolve_field(node, chain) is not None, \
                f"{kind} {path}: {rule['rule']!r} reads self.{'.'.join(chain)}, which the schema does not declare"
        if "fieldPath" in rule:
            chain = rule["fieldPath"].lstrip(".").split(".")
            assert _resolve_field(node, chain) is not None, f"{kind} {path}: bad fieldPath {rule['fieldPath']}"


@pytest.mark.parametrize("kind", CRD_FILES)
def test_regex_rules_fit_the_cost_budget(kind: str) -> None:
    """A lower bound of the API server's cost estimate of the matches() calls (cel-go: string
    length x 0.1 times regex length x 0.25, times how often the rule runs): without maxLength
    and maxItems the CRD is refused with "estimated rule cost exceeds budget"."""
    schema = open_api_schema(load_crd(kind))

    def walk(node: dict, cardinality: int, path: str) -> Iterator[tuple[str, dict, dict, int]]:
        for rule in node.get("x-kubernetes-validations", []):
            yield path, node, rule, cardinality
        for name, sub in node.get("properties", {}).items():
            yield from walk(sub, cardinality, f"{path}.{name}")
        if "items" in node:
            yield from walk(node["items"], cardinality * node.get("maxItems", UNBOUNDED_OBJECT_ITEMS), f"{path}[]")

    checked = 0
    for path, node, rule, cardinality in walk(schema, 1, ""):
        cost = 0
        for target, regex in re.findall(r"self\.([A-Za-z_]+)\.matches\('((?:[^'\\]|\\.)*)'\)", rule["rule"]):
            length = node["properties"][target].get("maxLength", UNBOUNDED_STRING)
            cost += math.ceil(0.1 * (length + 1)) * math.ceil(0.25 * len(regex))
            checked += 1
        assert cost * cardinality <= PER_RULE_COST_LIMIT, \
            f"{kind} {path}: {rule['rule']!r} is estimated at {cost * cardinality} (limit {PER_RULE_COST_LIMIT})"
    assert checked > 0


PER_CRD_COST_LIMIT = 100_000_000  # StaticEstimatedCRDCostLimit: all rules of a CRD together
STRING_TRAVERSAL = 0.1            # cel-go's cost factor per character of a string operation


@pytest.mark.parametrize("kind", CRD_FILES)
def test_rough_cost_estimate_of_every_rule(kind: str) -> None:
    """A rough version of the API server's estimate (the `cel` package exposes no cost estimator): each
    string operation on a field costs its maxLength x 0.1 (x 0.25 x the regex length for matches()),
    times how often the rule runs (the maxItems of the lists above it). The real estimate runs in kind
    (e2e/README.md); this one fails when a bound is missing or a rule grows out of proportion."""
    schema = open_api_schema(load_crd(kind))

    def walk(node: dict, cardinality: int, path: str) -> Iterator[tuple[str, dict, dict, int]]:
        for rule in node.get("x-kubernetes-validations", []):
            yield path, node, rule, cardinality
        for name, sub in node.get("properties", {}).items():
            yield from walk(sub, cardinality, f"{path}.{name}")
        if "items" in node:
            yield from walk(node["items"], cardinality * node.get("maxItems", UNBOUNDED_OBJECT_ITEMS), f"{path}[]")

    operation = re.compile(r"(?:self|oldSelf)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\.(startsWith|endsWith|contains|matches)"
                           r"\('((?:[^'\\]|\\.)*)'")
    total, estimates = 0, {}
    for path, node, rule, cardinality in walk(schema, 1, ""):
        cost = 1
        for chain, function, argument in operation.findall(rule["rule"]):
            field = _resolve_field(node, [c for c in chain.split(".") if c])
            length = field.get("maxLength", UNBOUNDED_STRING) if field else UNBOUNDED_STRING
            factor = math.ceil(0.25 * len(argument)) if function == "matches" else 1
            cost += math.ceil(STRING_TRAVERSAL * (length + 1)) * factor
        estimates[f"{path or '.'}: {rule['rule'][:60]}"] = cost * cardinality
        total += cost * cardinality
    worst = max(estimates, key=estimates.get)
    assert estimates[worst] <= PER_RULE_COST_LIMIT, f"{kind} {worst} is estimated at {estimates[worst]}"
    assert total <= PER_CRD_COST_LIMIT, f"{kind}: all rules together are estimated at {total}"
    assert len(estimates) >= 5
