"""What an import pod needs for each kind of spec.source: the URI the agent fetches, its flags,
and the environment and volumes that carry the source's credentials and CA (contract 4).

One function per kind; pure (typed spec in, pod parts out). Credentials reach the agent only
as references to the Secret the user named (secretKeyRef, or the Secret mounted as files):
never as values in the pod spec, the URI, the status or an event. Also here: reading the
import's provenance (what `agent import` reported: protocol/results.py) and the status.source it becomes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointSource, HttpSource, S3Source
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpointSource
from checkpoint_operator.api.sources import (AzureBlobSource, CaConfigMap, GcsSource, GitSource, HuggingFaceSource,
                                             SourceStatus)
from checkpoint_operator.protocol.results import Provenance

# What an import reads: a Checkpoint's source, or a catalog entry's (the same import kinds).
ImportSource = CheckpointSource | ClusterCheckpointSource

# Where an import pod mounts what it is given (the local kubelet rewrites these paths too).
SOURCE_SECRET_VOLUME = "ckpt-source-secret"
SOURCE_SECRET_MOUNT = "/var/run/secrets/ckpt-source"
SOURCE_CA_VOLUME = "ckpt-source-ca"
SOURCE_CA_MOUNT = "/var/run/ckpt-source-ca"
SECRET_DIR_ENV = "CKPT_SOURCE_SECRET_DIR"  # agent/sources/base.py reads it
AZURE_KEYS = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN")
# Special Hub refs that keep their '/' in an hf:// URI (huggingface_hub's parse_hf_uri).
_HF_SPECIAL_REF = re.compile(r"refs/(pr/\d+|convert/[\w.-]+)")
_COMMIT = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
MAX_URI = 4096


@dataclass
class ImportSpec:
    kind: str
    uri: str  # what the agent fetches; credential-free (CEL refuses credentials in URLs)
    args: list[str] = field(default_factory=list)  # the source's flags of `agent import`
    env: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    revision: Optional[str] = None  # the revision asked for (huggingFace, git)
    pins_commit: bool = False  # the agent reports the commit it fetched; an import without it fails
    secret: Optional[str] = None  # the source's Secret (secretRef): the only one its pod may read


def _secret_env(secret: str, keys: tuple[str, ...], optional: bool = False) -> list[dict[str, Any]]:
    ref = {"name": secret, "key": ""}
    return [{"name": key, "valueFrom": {"secretKeyRef": {**ref, "key": key, **({"optional": True} if optional else {})}}}
            for key in keys]


def _mounted_secret(spec: ImportSpec, secret: str) -> None:
    """The Secret as files (username, password) at SOURCE_SECRET_MOUNT, for Git and FTP."""
    spec.secret = secret
    spec.volumes.append({"name": SOURCE_SECRET_VOLUME, "secret": {"secretName": secret, "defaultMode": 0o400}})
    spec.mounts.append({"name": SOURCE_SECRET_VOLUME, "mountPath": SOURCE_SECRET_MOUNT, "readOnly": True})
    spec.env.append({"name": SECRET_DIR_ENV, "value": SOURCE_SECRET_MOUNT})


def _mounted_ca(spec: ImportSpec, ca: CaConfigMap) -> None:
    spec.volumes.append({"name": SOURCE_CA_VOLUME, "configMap": {"name": ca.name}})
    spec.mounts.append({"name": SOURCE_CA_VOLUME, "mountPath": SOURCE_CA_MOUNT, "readOnly": True})
    spec.args += ["--ca-file", f"{SOURCE_CA_MOUNT}/{ca.key}"]


def _s3(s3: S3Source) -> ImportSpec:
    spec = ImportSpec("s3", s3.uri)
    if s3.endpoint:
        spec.env.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint})
    if s3.region:
        spec.env.append({"name": "AWS_DEFAULT_REGION", "value": s3.region})
    if s3.secretRef:
        spec.secret = s3.secretRef.name
        spec.env += _secret_env(s3.secretRef.name, ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    return spec


def _http(http: HttpSource) -> ImportSpec:
    spec = ImportSpec("http", http.url)
    if http.secretRef:
        _mounted_secret(spec, http.secretRef.name)
    if http.caConfigMap:
        _mounted_ca(spec, http.caConfigMap)
    return spec


def hf_uri(repo: str, revision: str) -> str:
    """hf://org/name@revision as huggingface_hub parses it (a '/' in a branch name is %2F)."""
    if "/" in revision and not _HF_SPECIAL_REF.fullmatch(revision):
        revision = revision.replace("/", "%2F")
    return f"hf://{repo}@{revision}"


def _hugging_face(hf: HuggingFaceSource) -> ImportSpec:
    revision = hf.revision or "main"
    spec = ImportSpec("huggingFace", hf_uri(hf.repo, revision), revision=revision, pins_commit=True,
                      env=[{"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"}])
    for pattern in hf.include or []:
        spec.args += ["--include", pattern]
    for pattern in hf.exclude or []:
        spec.args += ["--exclude", pattern]
    if hf.endpoint:
        spec.args += ["--endpoint-url", hf.endpoint]
    if hf.secretRef:
        spec.secret = hf.secretRef.name
        spec.env += _secret_env(hf.secretRef.name, ("HF_TOKEN",))
    return spec


def _gcs(gcs: GcsSource) -> ImportSpec:
    spec = ImportSpec("gcs", gcs.uri)
    if gcs.endpoint:
        spec.args += ["--endpoint-url", gcs.endpoint]
    if gcs.secretRef:
        spec.secret = gcs.secretRef.name
        spec.env += _secret_env(gcs.secretRef.name, ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    return spec


def azure_uri(uri: str) -> tuple[str, Optional[str]]:
    """(az://ACCOUNT/CONTAINER/path, the blob endpoint or None) from either accepted form."""
    match = re.fullmatch(r"https://([a-z0-9]{3,24})\.(blob\.[a-z0-9.-]+)/(.*)", uri, re.DOTALL)
    if not match:
        return uri, None
    account, suffix, rest = match.groups()
    return f"az://{account}/{rest}", f"https://{account}.{suffix}"


def _azure_blob(azure: AzureBlobSource) -> ImportSpec:
    uri, endpoint = azure_uri(azure.uri)
    spec = ImportSpec("azureBlob", uri)
    if endpoint and endpoint.split(".", 1)[1] != "blob.core.windows.net":
        spec.args += ["--endpoint-url", endpoint]  # another cloud's (or a private endpoint's) suffix
    if azure.secretRef:  # whichever of the three keys the Secret has
        spec.secret = azure.secretRef.name
        spec.env += _secret_env(azure.secretRef.name, AZURE_KEYS, optional=True)
    return spec


def _git(git: GitSource) -> ImportSpec:
    base = git.url if git.url.startswith("git://") else f"git+{git.url}"
    spec = ImportSpec("git", f"{base}@{git.revision}" if git.revision else base, revision=git.revision or "HEAD",
                      pins_commit=True)
    if git.lfs:
        spec.args.append("--lfs")
    if git.secretRef:
        _mounted_secret(spec, git.secretRef.name)
    if git.caConfigMap:
        _mounted_ca(spec, git.caConfigMap)
    return spec


def shown_uri(uri: str) -> str:
    """A source's URI as statuses and events show it: credentials before the host (the CRD refuses
    them) masked, and the query left out ("?..."): it may carry a credential under a name the URL
    rule does not know (a signed URL's own parameter); the spec keeps it whole."""
    hidden = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@", r"\1***@", uri)
    base, mark, _ = hidden.partition("?")
    return base + ("?..." if mark else "")


def import_spec(checkpoint: Checkpoint) -> ImportSpec:
    """ValueError for a source that is not imported (volume, trainingJob, upload)."""
    return import_spec_of(checkpoint.spec.source)


def import_spec_of(source: ImportSource) -> ImportSpec:
    """A Checkpoint's or a catalog entry's source (the same import kinds)."""
    if source.s3 is not None:
        return _s3(source.s3)
    if source.http is not None:
        return _http(source.http)
    if source.huggingFace is not None:
        return _hugging_face(source.huggingFace)
    if source.gcs is not None:
        return _gcs(source.gcs)
    if source.azureBlob is not None:
        return _azure_blob(source.azureBlob)
    if source.git is not None:
        return _git(source.git)
    raise ValueError(f"spec.source.{source.kind} is not imported")


def pinned_source(source: ClusterCheckpointSource, resolved_revision: Optional[str]) -> ClusterCheckpointSource:
    """The source at the commit its first import fetched (the Hub, Git): a later copy of a catalog entry
    fetches the same files, whatever the branch says by then (the digest check catches any other change)."""
    if not resolved_revision or source.kind not in ("huggingFace", "git"):
        return source
    pinned = getattr(source, source.kind).model_copy(update={"revision": resolved_revision})
    return source.model_copy(update={source.kind: pinned})


# --- provenance --------------------------------------------------------------------------------

def source_status(spec: ImportSpec, provenance: Optional[Provenance]) -> SourceStatus | str:
    """status.source, or why the import cannot be recorded: a source that pins a commit must
    report one (a 40 or 64 digit hex commit id). `provenance`: what `agent import` reported
    (protocol/results.py ImportReport), None when it reported nothing."""
    resolved = provenance.resolvedRevision if provenance is not None else None
    if spec.pins_commit and (not isinstance(resolved, str) or not _COMMIT.fullmatch(resolved)):
        return "the import did not report the commit it fetched (resolvedRevision)"
    return SourceStatus(kind=spec.kind, uri=shown_uri(spec.uri)[:MAX_URI], revision=spec.revision or None,
                        resolvedRevision=resolved if spec.pins_commit else None)
