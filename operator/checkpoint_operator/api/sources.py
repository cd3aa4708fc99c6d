"""The import sources of issue 14 (Hugging Face, Google Cloud Storage, Azure Blob, Git) and the
provenance an import records (status.source).

Each URL-like field is refused by a CEL rule (with its Python twin) when it does not name what
the field is for, and by the one URL rule of api/urls.py (the agent's too) when it holds control
or invisible characters, carries credentials (those go in a Secret named by `secretRef`, never in
the spec: anyone who can read the Checkpoint can read its spec, and the operator quotes the
source in events and conditions) or is not scheme://host[:port]/....
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import Field

from checkpoint_operator.api.rules import ApiModel, Rule
from checkpoint_operator.api.urls import cel_matches, cel_string, url_rules

MAX_URI = 4096
MAX_NAME = 253
MAX_REVISION = 255  # a git ref name component is at most 255 bytes
MAX_GLOB = 1024
MAX_GLOBS = 64
MAX_KEY = 253  # a ConfigMap/Secret key

HTTP_URL = r"^https?://[^/?#\s]+([/?#]\S*)?$"
# org/name as the Hub allows it: letters, digits, '-', '_', '.', each part at most 96 characters
# and not starting or ending with '.' or '-'.
HF_REPO = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,94}[A-Za-z0-9])?/[A-Za-z0-9]([A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$"
# A branch, a tag, a commit or a ref such as refs/pr/1: the characters of git ref names that
# need no quoting anywhere, and no '..' (git refuses it in a ref name).
REVISION = r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$"
GS_URI = r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$"
# Account: 3-24 lowercase letters and digits; container: 3-63 of lowercase letters, digits and '-'.
AZURE_URI = (r"^(az://[a-z0-9]{3,24}|https://[a-z0-9]{3,24}\.blob\.[a-z0-9.-]+[a-z0-9])"
             r"/[a-z0-9][a-z0-9-]{1,61}[a-z0-9](/.*)?$")
GIT_URL = r"^(https?|git)://[^/?#\s]+/\S+$"
def revision_ok(revision: str) -> bool:
    return cel_matches(REVISION, revision) and ".." not in revision


def _revision_rule(field_path: str) -> Rule:
    return Rule(f"!has(self.revision) || (self.revision.matches({cel_string(REVISION)}) && !self.revision.contains('..'))",
                f"spec.source.{field_path}.revision must be a branch, a tag or a commit (letters, digits, "
                "'_', '-', '.', '/'; no '..')",
                lambda s: "revision" not in s or revision_ok(s["revision"]), field_path=".revision")


def endpoint_rule(field_path: str) -> Rule:
    return Rule(f"!has(self.endpoint) || self.endpoint.matches({cel_string(HTTP_URL)})",
                f"spec.source.{field_path}.endpoint must be an http:// or https:// URL",
                lambda s: "endpoint" not in s or cel_matches(HTTP_URL, s["endpoint"]), field_path=".endpoint")


# What the API server accepts as a Secret's or ConfigMap's name (a DNS-1123 subdomain) and as a key in
# one (not '.' or '..': at least one character that is not a dot). Refused here, where the field is
# named, rather than when the import pod that mounts them is refused (hostile6 R4: '../x' was taken,
# and a key became the agent's --ca-file path).
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
KEY_PATTERN = r"^[-._a-zA-Z0-9]*[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"


class LocalSecret(ApiModel):
    """A Secret in the Checkpoint's namespace; the source says which keys it reads."""

    name: str = Field(min_length=1, max_length=MAX_NAME, pattern=OBJECT_NAME_PATTERN,
                      description="Name of the Secret (a DNS-1123 subdomain).")


class CaConfigMap(ApiModel):
    """A ConfigMap key holding the PEM certificates of the CA(s) to trust, instead of the system's."""

    name: str = Field(min_length=1, max_length=MAX_NAME, pattern=OBJECT_NAME_PATTERN,
                      description="Name of the ConfigMap (a DNS-1123 subdomain).")
    key: str = Field("ca.crt", min_length=1, max_length=MAX_KEY, pattern=KEY_PATTERN,
                     description="Key holding the PEM bundle (letters, digits, '-', '_', '.').")


Glob = Annotated[str, Field(min_length=1, max_length=MAX_GLOB)]
Globs = Optional[list[Glob]]


def _globs_field(what: str) -> Any:
    return Field(None, max_length=MAX_GLOBS, description=what)


class HuggingFaceSource(ApiModel):
    """Import a model repository of the Hugging Face Hub (or of a mirror: `endpoint`)."""

    cel_rules = (
        Rule(f"self.repo.matches({cel_string(HF_REPO)})",
             "spec.source.huggingFace.repo must be organization/name (letters, digits, '-', '_', '.'; each part at "
             "most 96 characters)",
             lambda s: cel_matches(HF_REPO, s["repo"]), field_path=".repo"),
        _revision_rule("huggingFace"),
        endpoint_rule("huggingFace"),
        *url_rules("endpoint", "huggingFace", optional=True),
    )

    repo: str = Field(max_length=193, description="Repository id, organization/name (for example openai-community/gpt2).")
    revision: Optional[str] = Field(
        None, max_length=MAX_REVISION,
        description="Branch, tag or commit (default: main). The commit it resolves to is recorded in "
                    "status.source.resolvedRevision and every file is fetched at that commit.")
    include: Globs = _globs_field("Only files matching one of these globs (fnmatch, as huggingface_hub's allow_patterns).")
    exclude: Globs = _globs_field("No file matching one of these globs (as huggingface_hub's ignore_patterns).")
    endpoint: Optional[str] = Field(None, max_length=MAX_URI,
                                    description="Hub endpoint (a mirror); default: the agent's HF_ENDPOINT, else "
                                                "https://huggingface.co. The token is sent to this host only.")
    secretRef: Optional[LocalSecret] = Field(None, description="Secret with the key HF_TOKEN (private and gated repositories).")


class GcsSource(ApiModel):
    """Import from Google Cloud Storage through its S3-compatible XML API (HMAC keys)."""

    cel_rules = (
        Rule(f"self.uri.matches({cel_string(GS_URI)})",
             "spec.source.gcs.uri must be gs://bucket/prefix/ (a tree) or gs://bucket/object (one file or archive)",
             lambda s: cel_matches(GS_URI, s["uri"]), field_path=".uri"),
        *url_rules("uri", "gcs"),
        endpoint_rule("gcs"),
        *url_rules("endpoint", "gcs", optional=True),
    )

    uri: str = Field(max_length=MAX_URI, description="gs://bucket/prefix/ for a tree, gs://bucket/object for one file or archive.")
    endpoint: Optional[str] = Field(None, max_length=MAX_URI,
                                    description="XML API endpoint; default https://storage.googleapis.com.")
    secretRef: Optional[LocalSecret] = Field(
        None, description="Secret with an HMAC key as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; without it the "
                          "requests are anonymous (public buckets).")


class AzureBlobSource(ApiModel):
    """Import from Azure Blob Storage."""

    cel_rules = (
        Rule(f"self.uri.matches({cel_string(AZURE_URI)})",
             "spec.source.azureBlob.uri must be https://ACCOUNT.blob.core.windows.net/CONTAINER/prefix/ or "
             "az://ACCOUNT/CONTAINER/prefix/ (a blob name instead of prefix/ for one file or archive)",
             lambda s: cel_matches(AZURE_URI, s["uri"]), field_path=".uri"),
        *url_rules("uri", "azureBlob"),
    )

    uri: str = Field(max_length=MAX_URI, description="https://ACCOUNT.blob.core.windows.net/CONTAINER/prefix/ or "
                                                     "az://ACCOUNT/CONTAINER/prefix/ (ending in / for a tree).")
    secretRef: Optional[LocalSecret] = Field(
        None, description="Secret with one of AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY (the account key) or "
                          "AZURE_STORAGE_SAS_TOKEN; without it the requests are anonymous (public containers).")


class GitSource(ApiModel):
    """Import the files of one commit of a Git repository (shallow; LFS files when asked)."""

    cel_rules = (
        Rule(f"self.url.matches({cel_string(GIT_URL)})",
             "spec.source.git.url must be an https://, http:// or git:// URL of a repository",
             lambda s: cel_matches(GIT_URL, s["url"]), field_path=".url"),
        *url_rules("url", "git"),
        _revision_rule("git"),
    )

    url: str = Field(max_length=MAX_URI, description="https://, http:// or git:// URL of the repository.")
    revision: Optional[str] = Field(
        None, max_length=MAX_REVISION,
        description="Branch, tag or full commit id (default: the remote's HEAD). The commit is recorded in "
                    "status.source.resolvedRevision.")
    lfs: Optional[bool] = Field(None, description="Fetch Git LFS files (without it, a commit holding LFS pointers is refused).")
    secretRef: Optional[LocalSecret] = Field(
        None, description="Secret with the keys username and password (a token), as kubernetes.io/basic-auth; "
                          "given to git by a credential helper, never in the URL.")
    caConfigMap: Optional[CaConfigMap] = Field(None, description="CA certificates to trust for an https:// URL.")


SourceKind = Literal["s3", "http", "huggingFace", "gcs", "azureBlob", "git", "volume", "trainingJob"]


class SourceStatus(ApiModel):
    """What an import fetched: the source as the agent named it and, for Git and the Hub, the commit."""

    kind: SourceKind = Field(description="The kind of spec.source.")
    uri: str = Field(max_length=MAX_URI, description="What was fetched (hf://, git+https://, gs://, az://, s3://, http(s):// "
                                                     "or ftp(s)://), without credentials.")
    revision: Optional[str] = Field(None, max_length=MAX_REVISION, description="The revision asked for.")
    resolvedRevision: Optional[str] = Field(
        None, max_length=64, pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$",
        description="The commit the revision resolved to when the data was fetched (the data is that commit's).")
