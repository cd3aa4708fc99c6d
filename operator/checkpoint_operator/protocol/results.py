"""What the agent reports to the operator: one typed, versioned model per result.

The agent writes each result with these classes and the operator reads it with the same ones
(protocol/channel.py carries it), so a field renamed on one side fails a test, not a pod.

A result's size does not grow with the number of files: per checkpoint it carries only what
a Checkpoint's status needs (`CheckpointSummary`); the full manifest is stored beside the data
(the s3 store's manifest object, the volume store's `.ckpt-manifests/` directory) and read
from there by whoever needs every file. Every field is bounded, and so is the number of
checkpoints in one result (`MAX_CHECKPOINTS`) and its encoded size (`MAX_RESULT_BYTES`): past
either, the agent fails with one line naming the limit, and the operator refuses a longer line
without reading it whole.

Kinds: `scan` (agent scan --result, agent snapshot), `transfer` (agent receive, agent verify
--result), `import` (agent import), and the live-sealing sidecar's events `sealed`, `removed`,
`changed` and `warning` (agent watch), `cache-fill` and `resume` (agent resume-parts). Each line carries its `kind` and `version`; a version
newer than `RESULT_VERSION` is refused with one line (an agent image newer than the operator).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from checkpoint_operator.protocol.manifest import Manifest

RESULT_VERSION = 1

# One result names at most this many checkpoints: an output of 5,000 step directories is
# reported whole (about 2 MB); past it the scan fails at once with one line naming the limit.
MAX_CHECKPOINTS = 10_000
# The encoded result line: well under the 10 MiB at which a kubelet rotates a container's log
# (containerd's containerLogMaxSize) and local mode's 8 MiB kept tail. 10,000 checkpoints with
# short names take about 4 MB; long names and many metrics reach this bound first.
MAX_RESULT_BYTES = 6 * 1024 * 1024
# The root files of an output ('.') are mounted one by one on the volume store (a volumeMount
# each), so their names travel with the result, at most this many; past it `items` is None.
MAX_ITEMS = 256
MAX_ITEM = 255  # an item's name or path (what status.location's items hold)
MAX_SKIPPED_REPORTED = 20     # skipped entries named in a result; skippedCount counts all
MAX_PROBLEMS_REPORTED = 20    # problems named in a transfer result; problemCount counts all
MAX_TEXT = 1000               # a reason or message in a result (cut with '...')
MAX_REPORTED_PATH = 1024      # a path named in a result (skipped entries, problems; cut with '...')
MAX_CHECKPOINT_PATH = 512     # a checkpoint's own path: '.', a root file, a directory or container/step
MAX_URI = 4096
MAX_METRICS = 16
METRIC_NAME = r"^[A-Za-z0-9_.\-/]{1,63}$"
MAX_INT = 2**63 - 1           # what a Kubernetes status integer (int64) holds
DIGEST = r"^sha256:[0-9a-f]{64}$"

Text = Annotated[str, Field(max_length=MAX_TEXT)]
ReportedPath = Annotated[str, Field(max_length=MAX_REPORTED_PATH)]
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
# How the agent made the bytes it reports durable before a volume snapshot of them ("syncfs",
# agent/durability.py); None: not synced (nothing asked it, or the kernel refused).
Synced = Optional[Annotated[str, Field(max_length=32)]]


def cut(text: str, limit: int = MAX_TEXT) -> str:
    """`text` within `limit` characters (a longer one ends with '...')."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Report(BaseModel):
    """Base of every result: unknown fields of the same version are ignored (an additive change);
    an unknown kind or a newer version never reaches validation (protocol/channel.py)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: str
    version: int = RESULT_VERSION


# A checkpoint assembled across workers' volumes (output.volumePerWorker) names at most this many
# workers (the CRD's bound on such jobs is 128).
MAX_PARTS = 128


class PartSummary(BaseModel):
    """One worker's share of a checkpoint assembled across workers' volumes (agent/parts.py): what
    the volume store mounts from that worker's claim (protocol/parts.py)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    worker: Annotated[int, Field(ge=0, lt=MAX_PARTS)]
    # the files or whole directories it provides, relative to the checkpoint's directory; None: the
    # checkpoint's whole directory (one worker provides every file)
    items: Optional[Annotated[list[Annotated[str, Field(max_length=MAX_ITEM)]], Field(max_length=MAX_ITEMS)]] = None


class CheckpointSummary(BaseModel):
    """One checkpoint as its Checkpoint's status needs it (never its files)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    path: Annotated[str, Field(min_length=1, max_length=MAX_CHECKPOINT_PATH)] = Field(
        description="relative to the scanned directory: '.', a root file, a directory, or container/step")
    digest: Annotated[str, Field(pattern=DIGEST)]
    sizeBytes: Count
    fileCount: Count
    format: Annotated[str, Field(max_length=32)] = "unknown"
    step: Optional[Count] = None
    resumable: bool = False
    # As agent/completeness.py decides it (None: no rule for the format); carried as it is.
    complete: Optional[bool] = None
    completeReason: Optional[Text] = None
    metrics: Optional[Annotated[dict[str, float], Field(max_length=MAX_METRICS)]] = None
    # s3 store: the prefix the checkpoint was uploaded to (manifest written last: the commit marker).
    uri: Optional[Annotated[str, Field(max_length=MAX_URI)]] = None
    # volume store: the full manifest was written to <scanned root>/.ckpt-manifests/ (protocol/manifest.py).
    manifestStored: bool = False
    # the root files ('.'): their names, when at most MAX_ITEMS (a volume location mounts them one by one).
    items: Optional[Annotated[list[Annotated[str, Field(max_length=MAX_ITEM)]], Field(max_length=MAX_ITEMS)]] = None
    # volume store, a volume per worker: where each worker's part lies (its full manifest, when
    # stored, is in the first part's worker's volume). None: one volume holds it all.
    parts: Optional[Annotated[list[PartSummary], Field(min_length=1, max_length=MAX_PARTS)]] = None

    @field_validator("metrics")
    @classmethod
    def _finite_named_metrics(cls, metrics: Optional[dict[str, float]]) -> Optional[dict[str, float]]:
        for name, value in (metrics or {}).items():
            if not re.fullmatch(METRIC_NAME, name):
                raise ValueError(f"metric name {name[:80]!r} is not {METRIC_NAME}")
            if not math.isfinite(value):
                raise ValueError(f"metric {name} is not a finite number")
        return metrics

    @classmethod
    def of(cls, manifest: Manifest, *, uri: Optional[str] = None, manifest_stored: bool = False,
           items: Optional[list[str]] = None, parts: Optional[list[PartSummary]] = None) -> "CheckpointSummary":
        """The summary of a scanned checkpoint; values a status cannot hold are left out, not
        refused: a step past int64 is no step, a long reason is cut."""
        step = manifest.step if manifest.step is not None and 0 <= manifest.step <= MAX_INT else None
        reason = cut(manifest.completeReason) if manifest.completeReason is not None else None
        return cls(path=manifest.path, digest=manifest.digest, sizeBytes=manifest.sizeBytes,
                   fileCount=manifest.fileCount, format=manifest.format, step=step, resumable=manifest.resumable,
                   complete=manifest.complete, completeReason=reason, metrics=manifest.metrics, uri=uri,
                   manifestStored=manifest_stored, items=items, parts=parts)


class Skipped(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    path: ReportedPath
    reason: Text


class Problem(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    path: ReportedPath  # '.' for the checkpoint as a whole
    problem: Text

    def line(self) -> str:
        return f"'{self.path}': {self.problem}" if self.path != "." else self.problem


class ScanReport(Report):
    """`agent scan --result` (volume store) and `agent snapshot` (s3 store): the checkpoints found."""

    kind: Literal["scan"] = "scan"
    checkpoints: Annotated[list[CheckpointSummary], Field(max_length=MAX_CHECKPOINTS)]
    skipped: Annotated[list[Skipped], Field(max_length=MAX_SKIPPED_REPORTED)] = []
    skippedCount: Count = 0
    # volume store: why the manifests could not be stored beside the data (the checkpoints are
    # still what was found; their manifestStored is False).
    manifestsProblem: Optional[Text] = None
    synced: Synced = None  # agent scan --sync: the scanned filesystem was synced (a volume snapshot follows)

    @property
    def total_skipped(self) -> int:
        return max(self.skippedCount, len(self.skipped))


class TransferReport(Report):
    """`agent receive` (a push into a volume) and `agent verify --result`: the data read again,
    checked against its manifest and the pinned digest."""

    kind: Literal["transfer"] = "transfer"
    received: bool = True            # receive: False when no push came (then `reason` says why)
    verified: bool = False
    checkpoint: Optional[CheckpointSummary] = None
    problems: Annotated[list[Problem], Field(max_length=MAX_PROBLEMS_REPORTED)] = []
    problemCount: Count = 0
    reason: Text = ""
    synced: Synced = None  # agent receive --sync: the receiving filesystem was synced

    def problems_text(self, shown: int = 3) -> str:
        lines = [p.line() for p in self.problems[:shown]]
        more = max(self.problemCount, len(self.problems)) - len(lines)
        return "; ".join(lines) + (f"; and {more} more" if more > 0 else "")


class Provenance(BaseModel):
    """What an import fetched (status.source): the source as given and, for Git and the Hub, the commit."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    uri: Annotated[str, Field(max_length=MAX_URI)]
    revision: Optional[Annotated[str, Field(max_length=256)]] = None
    resolvedRevision: Optional[Annotated[str, Field(max_length=128)]] = None


class ImportReport(Report):
    """`agent import`: what landed in DEST."""

    kind: Literal["import"] = "import"
    sizeBytes: Count
    fileCount: Count
    extracted: bool = False
    provenance: Provenance


class SealedCheckpoint(CheckpointSummary):
    """A checkpoint the sidecar sealed while the job runs."""

    sealReason: Text = ""
    readOnly: bool = False
    readOnlyProblem: Optional[Text] = None
    skipped: Count = 0
    sealedAt: float = 0.0
    announced: bool = False  # said again by a restarted sidecar (the operator creates nothing twice)
    synced: Synced = None    # agent watch --sync: the filesystem was synced once it was sealed
    # agent watch --part (output.volumePerWorker): the worker whose part of the directory this is;
    # the operator assembles the union once every worker's part is sealed (logic/live_unions.py)
    part: Optional[Annotated[int, Field(ge=0, lt=MAX_PARTS)]] = None


class SealedEvent(Report):
    kind: Literal["sealed"] = "sealed"
    checkpoint: SealedCheckpoint


class RemovedEvent(Report):
    """A retired directory the operator asked to remove is gone."""

    kind: Literal["removed"] = "removed"
    path: Annotated[str, Field(max_length=MAX_CHECKPOINT_PATH)]
    digest: Annotated[str, Field(max_length=80)] = ""


class ChangedEvent(Report):
    """A sealed directory whose bytes are no longer its digest."""

    kind: Literal["changed"] = "changed"
    path: Annotated[str, Field(max_length=MAX_CHECKPOINT_PATH)]
    digest: Annotated[str, Field(max_length=80)]
    found: Optional[Annotated[str, Field(max_length=80)]] = None
    message: Text = ""


class NotRemoved(BaseModel):
    """A retired directory the operator asked to remove that the sidecar could not remove."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    path: Annotated[str, Field(max_length=MAX_CHECKPOINT_PATH)]
    digest: Annotated[str, Field(max_length=80)] = ""


class WarningEvent(Report):
    kind: Literal["warning"] = "warning"
    message: Text
    notRemoved: Optional[NotRemoved] = None  # the warning is a removal that failed (the operator counts them)


# The node-local input cache (agent/node_cache.py): a fill's report is its container's termination
# message, which the kubelet keeps to 4,096 bytes: a few evictions named, all counted.
MAX_EVICTIONS_REPORTED = 8
TERMINATION_MESSAGE_BYTES = 4096
CACHE_KEY = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[0-9a-f]{64}$"  # <namespace>/<hex of the digest>
CacheKey = Annotated[str, Field(pattern=CACHE_KEY, max_length=128)]


class CacheEviction(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    key: CacheKey
    sizeBytes: Count


class CacheFillReport(Report):
    """`agent cache-fill`: how an input became a verified entry of the node's cache."""

    kind: Literal["cache-fill"] = "cache-fill"
    cache: Literal["hit", "miss", "refetched"]  # refetched: a corrupted entry downloaded again
    key: CacheKey
    sizeBytes: Count
    fetchedBytes: Count = 0          # from the store by this fill
    waitedSeconds: Annotated[float, Field(ge=0, le=1e9)] = 0.0  # for another pod's fill, or for room
    problem: Optional[Annotated[str, Field(max_length=300)]] = None  # why a refetched entry was refused
    evicted: Annotated[list[CacheEviction], Field(max_length=MAX_EVICTIONS_REPORTED)] = []
    evictedCount: Count = 0
    evictedBytes: Count = 0

    @property
    def digest(self) -> str:
        return "sha256:" + self.key.rpartition("/")[2]


MAX_PASSED_REPORTED = 20  # newer directories passed over by a resume, named in its result; passedCount counts all


class ResumeReport(Report):
    """`agent resume-parts`: the checkpoint a restarted group with a volume per worker resumes from,
    copied into every worker's volume at .ckpt-resume/<digest hex> (None: no checkpoint is complete over the
    workers' parts; nothing was written, an earlier copy stays), and the newer ones passed over."""

    kind: Literal["resume"] = "resume"
    path: Optional[Annotated[str, Field(max_length=MAX_CHECKPOINT_PATH)]] = None  # the checkpoint's directory
    digest: Optional[Annotated[str, Field(pattern=DIGEST)]] = None
    step: Optional[Count] = None
    sizeBytes: Count = 0
    fileCount: Count = 0
    passed: Annotated[list[Text], Field(max_length=MAX_PASSED_REPORTED)] = []
    passedCount: Count = 0


LiveEvent = Union[SealedEvent, RemovedEvent, ChangedEvent, WarningEvent]
LIVE_EVENTS: tuple[type[Report], ...] = (SealedEvent, RemovedEvent, ChangedEvent, WarningEvent)
KINDS: dict[str, type[Report]] = {
    "scan": ScanReport, "transfer": TransferReport, "import": ImportReport, "cache-fill": CacheFillReport,
    "resume": ResumeReport, **{model.model_fields["kind"].default: model for model in LIVE_EVENTS},
}
