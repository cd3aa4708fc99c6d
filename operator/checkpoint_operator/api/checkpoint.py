"""The Checkpoint resource: an immutable, content-addressed set of files."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field, WithJsonSchema

from checkpoint_operator.api.common import (MAX_VOLUME_SNAPSHOT_RECORDS, QUANTITY_PATTERN, Condition, ObjectRef, Phase,
                                            PinnedCheckpoint, VolumeSnapshotRecord, description_rule, ready_reason,
                                            size_limit_rule)
from checkpoint_operator.api.meta import ApiObject
from checkpoint_operator.api.rules import (ApiModel, Count, Description, Digest, FileName, Message, Metric, Name, Path,
                                           Rule, Short, Uid, Uri, has_exactly_one, path_has_dotdot)
from checkpoint_operator.api.upload import UploadSource, UploadStatus
from checkpoint_operator.api.sources import (
    AzureBlobSource, CaConfigMap, GcsSource, GitSource, HuggingFaceSource, LocalSecret, SourceStatus, endpoint_rule,
)
from checkpoint_operator.api.urls import NAME_FORBIDDEN_CHAR, cel_matches, cel_string, url_rules


class CheckpointPhase(Phase):
    """Pending -> (Importing) -> Ready | Failed."""

    PENDING = "Pending"
    IMPORTING = "Importing"
    READY = "Ready"
    FAILED = "Failed"

    @property
    def is_settled(self) -> bool:
        """Nothing more will happen to the data (Ready or Failed)."""
        return self in (CheckpointPhase.READY, CheckpointPhase.FAILED)


# Bounded form of status.usedBy: the first users by name, and usedByCount for all of them.
MAX_USED_BY_LISTED = 20
# The formats agent/formats.py detects (its RULES table); a test keeps the two equal.
CheckpointFormat = Literal["huggingface", "safetensors", "torch", "torch-dcp", "deepspeed", "megatron", "nemo",
                           "lightning", "keras", "gguf", "orbax", "cerebras", "file", "unknown"]
SOURCE_KINDS = ("s3", "http", "huggingFace", "gcs", "azureBlob", "git", "volume", "trainingJob", "upload")
# The kinds that copy data in (an import pod); volume adopts in place, trainingJob is a snapshot.
IMPORT_KINDS = ("s3", "http", "huggingFace", "gcs", "azureBlob", "git")
WEB_SCHEMES = ("http://", "https://", "ftp://", "ftps://")


class SecretRef(ApiModel):
    name: Name = Field(description="Name of a Secret in the same namespace with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.")


class S3Source(ApiModel):
    """Import from S3-compatible object storage."""

    cel_rules = (Rule("self.uri.startsWith('s3://')",
                      "spec.source.s3.uri must start with s3:// (for example s3://bucket/prefix/)",
                      lambda s: s["uri"].startswith("s3://"), field_path=".uri"),
                 # issue 23 item 8: s3://AKIA...:SECRET@bucket/ reached status.message and Events
                 *url_rules("uri", "s3"),
                 endpoint_rule("s3"),
                 *url_rules("endpoint", "s3", optional=True))

    uri: Uri = Field(description="s3://bucket/key for one object (archives are extracted) or s3://bucket/prefix/ for a tree.")
    endpoint: Optional[Uri] = Field(None, description="Endpoint URL of an S3-compatible store; empty for AWS.")
    region: Optional[Short] = Field(None, description="Region of the bucket.")
    secretRef: Optional[SecretRef] = Field(None, description="Secret holding the credentials; default: the operator's.")


class HttpSource(ApiModel):
    """Import one file (or archive) from a web or FTP URL."""

    cel_rules = (Rule("self.url.startsWith('http://') || self.url.startsWith('https://') || "
                      "self.url.startsWith('ftp://') || self.url.startsWith('ftps://')",
                      "spec.source.http.url must start with http://, https://, ftp:// or ftps://",
                      lambda s: s["url"].startswith(WEB_SCHEMES), field_path=".url"),
                 *url_rules("url", "http"),
                 Rule("!has(self.secretRef) || self.url.startsWith('ftp://') || self.url.startsWith('ftps://')",
                      "spec.source.http.secretRef is the login of an ftp:// or ftps:// URL; http(s) URLs take none",
                      lambda s: "secretRef" not in s or s["url"].startswith(("ftp://", "ftps://")),
                      field_path=".secretRef"))

    url: Uri = Field(description="URL of a file or an archive (.tar, .tar.gz, .tgz, .tar.bz2, .zip; "
                                                  "extracted): http://, https://, ftp:// or ftps:// (explicit FTPS, "
                                                  "AUTH TLS).")
    secretRef: Optional[LocalSecret] = Field(
        None, description="FTP login: a Secret with the keys username and password (default: anonymous).")
    caConfigMap: Optional[CaConfigMap] = Field(None, description="CA certificates to trust for https:// and ftps://.")


class VolumeSource(ApiModel):
    """Adopt data already on a PersistentVolumeClaim of the same namespace (never deleted by the operator)."""

    cel_rules = (Rule("!self.path.matches('(^|/)[.][.](/|$)')",
                      "spec.source.volume.path must stay inside the volume: '..' is not allowed",
                      lambda s: not path_has_dotdot(s.get("path", "")), field_path=".path"),
                 # The names rule (agent/names.py): the path is quoted in statuses and events and
                 # becomes location.volume.path (hostile1 D12: a newline, a bidi control, a ZWSP).
                 Rule(f"!self.path.matches({cel_string(NAME_FORBIDDEN_CHAR)})",
                      "spec.source.volume.path must not hold control characters, invisible ones (a newline, a "
                      "bidirectional control, a zero-width space...) or a backslash: the names rule of checkpoint "
                      "files",
                      lambda s: not cel_matches(NAME_FORBIDDEN_CHAR, s.get("path", "")), field_path=".path"))

    claimName: str = Field(description="Name of the PersistentVolumeClaim.", min_length=1, max_length=253)
    path: Path = Field("/", description="Directory inside the volume that holds the checkpoint.")


class TrainingJobSource(ApiModel):
    """Written by the operator for snapshots of a TrainingJob's output; not for users."""

    name: Name = Field(description="Name of the producing TrainingJob.")
    uid: Uid = Field(description="UID of the producing TrainingJob.")
    directory: FileName = Field(description="Entry of the output directory this checkpoint was made from ('.' for the root files).")
    sealed: Optional[SealedData] = Field(
        None, description="What the job found sealed in the directory: the Checkpoint's own reconcile makes it Ready "
                          "from this once its data is held for it (the job never writes its status).")
    signature: Optional[Digest] = Field(
        None, description="The operator's HMAC-SHA256 of this source (namespace, name, job, directory, sealed data) "
                          "with a key only it holds: the sealed data is trusted only when it verifies.")


class CheckpointSource(ApiModel):
    """Where the checkpoint's data comes from: exactly one of s3, http, huggingFace, gcs, azureBlob, git,
    volume, trainingJob, upload."""

    cel_rules = (Rule("[" + ", ".join(f"has(self.{k})" for k in SOURCE_KINDS) + "].filter(x, x).size() == 1",
                      f"spec.source must set exactly one of {', '.join(SOURCE_KINDS)}",
                      lambda s: has_exactly_one(s, SOURCE_KINDS)),)

    s3: Optional[S3Source] = Field(None, description="Import from object storage.")
    http: Optional[HttpSource] = Field(None, description="Import from a web or FTP URL.")
    huggingFace: Optional[HuggingFaceSource] = Field(None, description="Import a Hugging Face Hub repository.")
    gcs: Optional[GcsSource] = Field(None, description="Import from Google Cloud Storage.")
    azureBlob: Optional[AzureBlobSource] = Field(None, description="Import from Azure Blob Storage.")
    git: Optional[GitSource] = Field(None, description="Import a commit of a Git repository.")
    volume: Optional[VolumeSource] = Field(None, description="Adopt data already on a PVC.")
    trainingJob: Optional[TrainingJobSource] = Field(None, description="Snapshot of a TrainingJob's output.")
    upload: Optional[UploadSource] = Field(None, description="Data a user pushes (kubectl ckpt push).")

    @property
    def kind(self) -> str:
        return next(k for k in SOURCE_KINDS if getattr(self, k) is not None)


class CheckpointSpec(ApiModel):
    """Desired state of a Checkpoint. Immutable: a checkpoint is identified by its data."""

    # A transition rule: only the API server can check it (it needs the stored object).
    cel_rules = (Rule("self == oldSelf",
                      "spec is immutable (spec.source, spec.description, spec.format, spec.maxSize): create a new Checkpoint instead",
                      None),
                 size_limit_rule("maxSize", "spec.maxSize"),
                 description_rule("spec.description"))

    source: CheckpointSource = Field(description="Where the data comes from.")
    description: Optional[Description] = Field(None, description="Free text shown to humans.")
    format: Optional[CheckpointFormat] = Field(None, description="Format hint; detected from the files when empty.")
    maxSize: Optional[str] = Field(
        None, pattern=QUANTITY_PATTERN, max_length=64,
        description="Refuse an import larger than this (a quantity); may only lower the operator's and the "
                    "namespace's limit.")


MAX_VOLUME_PARTS = 100000  # one per worker at most (api.trainingjob.MAX_REPLICAS)
MAX_SNAPSHOT_PARTS = 128  # one per worker volume at most (api.trainingjob.MAX_WORKER_VOLUMES; a test keeps them equal)


class VolumeLocation(ApiModel):
    claimName: Name = Field(description="PersistentVolumeClaim holding the data.")
    path: Path = Field(description="Directory inside the volume ('.' for its root).")
    items: Optional[list[FileName]] = Field(
        None, max_length=256,
        description="When set, only these files of the directory belong to the checkpoint (mounted one by one).")
    manifest: Optional[Path] = Field(
        None, description="Where the checkpoint's full manifest (every file's size and sha256) is stored in the "
                          "volume, outside the checkpoint's directory; absent when none is (an adopted volume).")


class S3Location(ApiModel):
    uri: Uri = Field(description="s3://bucket/prefix/ holding the data and its manifest.")


class SnapshotLocation(ApiModel):
    """In a CSI VolumeSnapshot (snapshot.storage.k8s.io/v1) of the volume that was written: each pod
    that reads it gets a volume of its own restored from the snapshot."""

    volumeSnapshotName: Name = Field(description="VolumeSnapshot in the Checkpoint's namespace holding the data.")
    volumeSnapshotUID: Optional[Uid] = Field(
        None, description="Its UID, as the operator created it: a namesake made after it is not this checkpoint's data.")
    path: Path = Field(description="Directory inside the snapshot's volume ('.' for its root).")
    items: Optional[list[FileName]] = Field(
        None, description="When set, only these files of the directory belong to the checkpoint (mounted one by one).")
    restoreSize: Optional[str] = Field(
        None, pattern=QUANTITY_PATTERN, max_length=64,
        description="Smallest volume the snapshot restores into (its status.restoreSize): what a restored claim asks for.")
    storageClassName: Optional[Name] = Field(
        None, description="StorageClass of the volume the snapshot was taken of (restores use it; empty: the "
                          "cluster's default class).")
    worker: Optional[Count] = Field(
        None, description="In snapshotParts: the worker whose volume the snapshot was taken of.")


class Location(ApiModel):
    """Where the bytes are."""

    volume: Optional[VolumeLocation] = Field(None, description="On a PersistentVolumeClaim.")
    volumeParts: Optional[list[VolumeLocation]] = Field(
        None, max_length=MAX_VOLUME_PARTS,
        description="Assembled from several workers' volumes (output.volumePerWorker): each part's claim, the "
                    "checkpoint's directory in it and the items (files or directories) it provides; consumers "
                    "mount them side by side into one directory.")
    s3: Optional[S3Location] = Field(None, description="In object storage.")
    snapshot: Optional[SnapshotLocation] = Field(
        None, description="In a VolumeSnapshot of the volume it was written to (storage.volume.snapshotClassName).")
    snapshotParts: Optional[list[SnapshotLocation]] = Field(
        None, max_length=MAX_SNAPSHOT_PARTS,
        description="Assembled from several workers' volumes (output.volumePerWorker or perWorker) kept in "
                    "VolumeSnapshots (storage.volume.snapshotClassName): per worker that provides files, the "
                    "snapshot of its volume, the checkpoint's directory in it and the items it provides; consumers "
                    "restore every one and mount them side by side into one directory.")

    @property
    def snapshots(self) -> list[SnapshotLocation]:
        """Every VolumeSnapshot the data is in (none: it is not in snapshots)."""
        return [self.snapshot] if self.snapshot is not None else list(self.snapshotParts or [])

    @property
    def on_volumes(self) -> bool:
        """On claims or in VolumeSnapshots (the volume store), not in object storage."""
        return self.volume is not None or bool(self.volumeParts) or bool(self.snapshots)


MAX_PARENTS = 64  # a job's inputs at most (api.trainingjob.MAX_INPUTS)


class SealedData(ApiModel):
    """A snapshot's data as its TrainingJob found it sealed (the manifest's totals, where the bytes
    are, the job's inputs): set once, when the job creates the Checkpoint, and immutable with the
    spec. The Checkpoint's status is derived from it by the Checkpoint's own reconcile."""

    digest: Digest = Field(description="sha256: of the canonical manifest.")
    sizeBytes: Optional[Count] = Field(None, description="Total size of the files in bytes.")
    fileCount: Optional[Count] = Field(None, description="Number of files.")
    format: Optional[CheckpointFormat] = Field(None, description="Detected format.")
    step: Optional[Count] = Field(None, description="Training step, when known.")
    resumable: Optional[bool] = Field(None, description="Optimizer state is present.")
    complete: Optional[bool] = Field(None, description="The completeness check's verdict (absent: not checked).")
    completeReason: Optional[Message] = Field(None, description="Why it is (in)complete, or why it was not checked.")
    metrics: Optional[dict[str, Annotated[Metric, Field(description="The metric's value.")]]] = Field(
        None, max_length=16, description="A few numbers the checkpoint records about itself.")
    # Opaque to CEL (the spec's immutability rule would otherwise cost as much as the largest
    # location, a volume per worker): the Checkpoint's reconcile checks it instead, before Ready
    # (the claim or snapshot is the job's and held for this Checkpoint; an upload under the job's prefix).
    location: Annotated[Location, WithJsonSchema({"type": "object", "additionalProperties": True,
                                                  "description": "Where the bytes are (a Location, as in status)."})]
    parents: Optional[list[PinnedCheckpoint]] = Field(None, max_length=MAX_PARENTS,
                                                      description="Inputs of the producing job: the lineage.")


TrainingJobSource.model_rebuild()  # `sealed` refers to SealedData, defined after it


class CheckpointStatus(ApiModel):
    """Observed state of a Checkpoint, written by the operator."""

    phase: Optional[CheckpointPhase] = Field(None, description="Pending, Importing, Ready or Failed.")
    message: Optional[Message] = Field(None, description="Why the checkpoint is in this phase.")
    location: Optional[Location] = Field(None, description="Where the bytes are.")
    owned: Optional[bool] = Field(None, description="True when the operator owns the data and deletes it with the checkpoint.")
    sizeBytes: Optional[Count] = Field(None, description="Total size of the files in bytes.")
    size: Optional[Short] = Field(None, description="Total size, human-readable (for kubectl get).")
    fileCount: Optional[Count] = Field(None, description="Number of files.")
    digest: Optional[Digest] = Field(None, description="sha256: of the canonical manifest; the checkpoint's identity.")
    format: Optional[CheckpointFormat] = Field(None, description="Detected format.")
    step: Optional[Count] = Field(None, description="Training step, when known (one beyond int64 is left out; "
                                                      "the Complete condition says so).")
    resumable: Optional[bool] = Field(None, description="True when optimizer state is present, so training can resume.")
    complete: Optional[bool] = Field(
        None, description="True when its files were checked and are what their format says (headers parse, nothing "
                          "cut short, every file the format needs present); false when a check found otherwise "
                          "(never selected by latest); absent when nothing could be checked (its format has no "
                          "check). The Complete condition says why: True/Complete, False/Incomplete or "
                          "Unknown/NotChecked.")
    upload: Optional[UploadStatus] = Field(None, description="upload source: where the data is to be pushed.")
    agentPodUid: Optional[Uid] = Field(
        None, description="UID of the import, scan or upload pod the operator created, recorded before its result is "
                          "read: a pod of that name with another UID is not trusted.")
    verifyPodUid: Optional[Uid] = Field(None, description="UID of the verify pod the operator created (likewise).")
    pullPodUid: Optional[Uid] = Field(None, description="UID of the pull pod the operator created (likewise).")
    metrics: Optional[dict[str, Annotated[Metric, Field(description="The metric's value.")]]] = Field(
        None, max_length=16, description="A few numbers the checkpoint records about itself (metrics.json, or a "
                                         "trainer_state.json's log_history at its step): retention.keepBest, "
                                         "select: best.")
    source: Optional[SourceStatus] = Field(
        None, description="Provenance of an imported checkpoint: what was fetched and, for Git and the Hub, the commit.")
    producedBy: Optional[ObjectRef] = Field(None, description="The TrainingJob that wrote it.")
    parents: Optional[list[PinnedCheckpoint]] = Field(None, description="Inputs of the producing job: the lineage.")
    usedBy: Optional[list[ObjectRef]] = Field(
        None, max_length=MAX_USED_BY_LISTED,
        description=f"Live TrainingJobs that use it (the first {MAX_USED_BY_LISTED} by name; informational: the "
                    "in-use protection asks the API server at deletion time).")
    usedByCount: Optional[Count] = Field(None, description="Number of live TrainingJobs that use it (for kubectl get).")
    cachedOn: Optional[list[Annotated[str, Field(max_length=253)]]] = Field(
        None, max_length=64, description="Nodes whose node-local input cache holds a verified copy, as last reported by "
                                         "the pods that read it there (s3 store with cache.enabled; the first 64 by "
                                         "name; an eviction reported by a later pod removes its node).")
    volumeSnapshots: Optional[list[VolumeSnapshotRecord]] = Field(
        None, max_length=MAX_VOLUME_SNAPSHOT_RECORDS,
        description="VolumeSnapshots the operator created for it (an import's or a push's volume), by UID.")
    conditions: Optional[list[Condition]] = Field(None, description="Standard conditions (Ready, Complete, Verified).")
    observedGeneration: Optional[Count] = Field(None, description="The .metadata.generation last reconciled.")


class CheckpointHead(ApiObject):
    """A Checkpoint without its spec: what can still be read, failed or deleted when the spec
    does not parse (stored before a CRD upgrade tightened a rule; reconcile/objects.py)."""

    kind: Literal["Checkpoint"] = "Checkpoint"
    status: CheckpointStatus = Field(default_factory=CheckpointStatus)

    @property
    def phase(self) -> CheckpointPhase:
        return self.status.phase or CheckpointPhase.PENDING

    def ready_reason(self) -> Optional[str]:
        return ready_reason(self.status.conditions)


class Checkpoint(CheckpointHead):
    spec: CheckpointSpec

    @property
    def is_usable(self) -> bool:
        """Ready and not being deleted: a job may start on it."""
        return self.phase == CheckpointPhase.READY and not self.metadata.deleting
