"""The ClusterCheckpoint resource: a catalog entry, a public checkpoint imported once by the platform
team and used read-only by the TrainingJobs of every namespace (`{clusterCheckpoint: NAME}`).

Cluster-scoped, so no tenant can create one (creating it is an administrator's right: the chart
gives tenants get/list/watch only). Its sources are the import sources of a Checkpoint; a
`secretRef` names a Secret in the operator's namespace, where the import pod runs (docs/catalog.md).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from checkpoint_operator.api.checkpoint import CheckpointFormat, CheckpointPhase, HttpSource, Location, S3Source
from checkpoint_operator.api.common import (QUANTITY_PATTERN, Condition, description_rule, ready_reason,
                                            size_limit_rule)
from checkpoint_operator.api.meta import ApiObject
from checkpoint_operator.api.rules import (ApiModel, Count, Description, Digest, Message, Metric, Name, Rule, Short,
                                           Uid, Uri, has_exactly_one)
from checkpoint_operator.api.sources import (HTTP_URL, AzureBlobSource, GcsSource, GitSource, HuggingFaceSource,
                                             SourceStatus)
from checkpoint_operator.api.urls import FORBIDDEN_CHAR, QUERY_CREDENTIAL, URL, USERINFO, cel_matches, cel_string

# Hugging Face first: the catalog is mostly public models of the Hub.
CATALOG_SOURCE_KINDS = ("huggingFace", "s3", "http", "git", "gcs", "azureBlob")
MAX_USED_BY_LISTED = 20


class ClusterCheckpointSource(ApiModel):
    """Where the catalog entry's data comes from: exactly one of huggingFace, s3, http, git, gcs, azureBlob
    (a secretRef names a Secret in the operator's namespace)."""

    cel_rules = (Rule("[" + ", ".join(f"has(self.{k})" for k in CATALOG_SOURCE_KINDS) + "].filter(x, x).size() == 1",
                      f"spec.source must set exactly one of {', '.join(CATALOG_SOURCE_KINDS)}",
                      lambda s: has_exactly_one(s, CATALOG_SOURCE_KINDS)),)

    huggingFace: Optional[HuggingFaceSource] = Field(None, description="Import a Hugging Face Hub repository.")
    s3: Optional[S3Source] = Field(None, description="Import from object storage.")
    http: Optional[HttpSource] = Field(None, description="Import from a web or FTP URL.")
    git: Optional[GitSource] = Field(None, description="Import a commit of a Git repository.")
    gcs: Optional[GcsSource] = Field(None, description="Import from Google Cloud Storage.")
    azureBlob: Optional[AzureBlobSource] = Field(None, description="Import from Azure Blob Storage.")

    @property
    def kind(self) -> str:
        return next(k for k in CATALOG_SOURCE_KINDS if getattr(self, k) is not None)

    @property
    def needs_secret(self) -> bool:
        """The source names a Secret (of the operator's namespace): only the operator's namespace may fetch it."""
        source = getattr(self, self.kind)
        return getattr(source, "secretRef", None) is not None


class ClusterCheckpointSpec(ApiModel):
    """A catalog entry. Immutable, like a Checkpoint: its data is its identity."""

    cel_rules = (
        Rule("self == oldSelf", "spec is immutable (spec.source, spec.license, ...): create a new ClusterCheckpoint "
                                "instead", None),
        # The URL rule of the sources (api/urls.py), for an http(s) URL only.
        Rule("!has(self.license) || (" + " && ".join(
                 [f"self.license.matches({cel_string(HTTP_URL)})", f"self.license.matches({cel_string(URL)})"]
                 + [f"!self.license.matches({cel_string(p)})" for p in (USERINFO, QUERY_CREDENTIAL, FORBIDDEN_CHAR)])
             + ")",
             "spec.license must be an http:// or https:// URL (the license's text), without credentials or "
             "control or invisible characters",
             lambda s: "license" not in s or (cel_matches(HTTP_URL, s["license"]) and cel_matches(URL, s["license"])
                                              and not any(cel_matches(p, s["license"])
                                                          for p in (USERINFO, QUERY_CREDENTIAL, FORBIDDEN_CHAR))),
             field_path=".license"),
        size_limit_rule("maxSize", "spec.maxSize"),
        description_rule("spec.description"),
    )

    source: ClusterCheckpointSource = Field(description="Where the data comes from.")
    license: Optional[Uri] = Field(None, description="URL of the license the data is used under (recorded in "
                                                     "status.license and shown by kubectl ckpt ls --catalog).")
    description: Optional[Description] = Field(None, description="Free text shown to humans.")
    format: Optional[CheckpointFormat] = Field(None, description="Format hint; detected from the files when empty.")
    maxSize: Optional[str] = Field(
        None, pattern=QUANTITY_PATTERN, max_length=64,
        description="Refuse an import larger than this (a quantity); may only lower the operator's limit.")


class NamespacedRef(ApiModel):
    """A TrainingJob of some namespace."""

    namespace: Name = Field(description="Namespace of the TrainingJob.")
    name: Name = Field(description="Name of the TrainingJob.")
    uid: Optional[Name] = Field(None, description="UID of the TrainingJob.")


class ClusterCheckpointStatus(ApiModel):
    """Observed state of a ClusterCheckpoint, written by the operator."""

    phase: Optional[CheckpointPhase] = Field(None, description="Pending, Importing, Ready or Failed.")
    message: Optional[Message] = Field(None, description="Why the entry is in this phase.")
    location: Optional[Location] = Field(None, description="Where the catalog's copy is (a claim of the operator's "
                                                           "namespace, or the store's catalog prefix).")
    owned: Optional[bool] = Field(None, description="True: the operator deletes the data with the entry.")
    sizeBytes: Optional[Count] = Field(None, description="Total size of the files in bytes.")
    size: Optional[Short] = Field(None, description="Total size, human-readable (for kubectl get).")
    fileCount: Optional[Count] = Field(None, description="Number of files.")
    digest: Optional[Digest] = Field(None, description="sha256: of the canonical manifest; what every use is pinned to.")
    format: Optional[CheckpointFormat] = Field(None, description="Detected format.")
    step: Optional[Count] = Field(None, description="Training step, when known.")
    resumable: Optional[bool] = Field(None, description="True when optimizer state is present.")
    complete: Optional[bool] = Field(
        None, description="True when its files were checked and are what their format says; false when a check found "
                          "otherwise; absent when nothing could be checked (as a Checkpoint's).")
    metrics: Optional[dict[str, Annotated[Metric, Field(description="The metric's value.")]]] = Field(
        None, max_length=16, description="A few numbers the checkpoint records about itself.")
    source: Optional[SourceStatus] = Field(None, description="What was fetched and, for Git and the Hub, the commit.")
    license: Optional[Uri] = Field(None, description="spec.license, as recorded when the data was imported.")
    agentPodUid: Optional[Uid] = Field(
        None, description="UID of the import pod the operator created, recorded before its result is read: a pod of "
                          "that name with another UID is not trusted.")
    usedBy: Optional[list[NamespacedRef]] = Field(
        None, max_length=MAX_USED_BY_LISTED,
        description="No longer written: every authenticated identity may read a catalog entry, so its status names "
                    "no job nor namespace (usedByCount counts them; the operator namespace's Events name them); "
                    "kept so that a status an earlier version wrote still validates, and removed at the next write.")
    usedByCount: Optional[Count] = Field(None, description="Number of live TrainingJobs that use it (for kubectl get).")
    conditions: Optional[list[Condition]] = Field(None, description="Standard conditions (Ready, Complete).")
    observedGeneration: Optional[Count] = Field(None, description="The .metadata.generation last reconciled.")



class ClusterCheckpointHead(ApiObject):
    """A catalog entry without its spec: what can still be read, failed or deleted when the spec does not
    parse (as CheckpointHead; reconcile/objects.py)."""

    kind: Literal["ClusterCheckpoint"] = "ClusterCheckpoint"
    status: ClusterCheckpointStatus = Field(default_factory=ClusterCheckpointStatus)

    @property
    def phase(self) -> CheckpointPhase:
        return self.status.phase or CheckpointPhase.PENDING

    def ready_reason(self) -> Optional[str]:
        return ready_reason(self.status.conditions)


class ClusterCheckpoint(ClusterCheckpointHead):
    spec: ClusterCheckpointSpec

    @property
    def is_usable(self) -> bool:
        return self.phase == CheckpointPhase.READY and not self.metadata.deleting
