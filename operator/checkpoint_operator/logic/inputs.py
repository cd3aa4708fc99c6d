"""Which Checkpoints a TrainingJob mounts: resolve each reference, or say why it must wait.

Resolution reads the operator's indexes (`Lookup`: the watch cache, no API request), then the
handler reads each chosen input live and `check_live_input` decides on that fresh copy: a
cached "Ready" is never enough to start pods on a checkpoint that is being deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Protocol

from checkpoint_operator import PROTECTION_FINALIZER
from checkpoint_operator.api.checkpoint import CheckpointHead, CheckpointPhase, Location
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpointHead
from checkpoint_operator.api.common import PinnedCheckpoint
from checkpoint_operator.api.trainingjob import CheckpointRef, TrainingJob, TrainingJobPhase
from checkpoint_operator.api.wire import (CheckpointSourceWire, CheckpointSpecWire, CheckpointStatusWire, KeepBestWire,
                                          MetadataWire, ObjectRefWire, OutputWire, RetentionWire, SealedDataWire,
                                          TrainingJobSourceWire,
                                          TrainingJobSpecWire, TrainingJobStatusWire, checkpoint_wire,
                                          training_job_wire)
from checkpoint_operator.logic.naming import ROOT_DIRECTORY
from checkpoint_operator.logic.retention import KEEP_LABEL
from checkpoint_operator.logic.signatures import SEALED, message_digest, sealed_fields, verify_digest
from checkpoint_operator.logic.wait_cycles import find_wait_cycle


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """What the indexes keep of a Checkpoint (small: thousands of them stay in memory)."""

    name: str
    uid: str
    phase: CheckpointPhase
    created: str = ""
    step: Optional[int] = None
    producer_name: Optional[str] = None
    producer_uid: Optional[str] = None
    directory: Optional[str] = None      # spec.source.trainingJob.directory of snapshots
    complete: Optional[bool] = None
    resumable: Optional[bool] = None
    deleting: bool = False
    digest: Optional[str] = None
    metrics: tuple[tuple[str, float], ...] = ()   # status.metrics (a few named numbers)
    exempt: bool = False                          # labelled ckpt.dev/keep=true: retention never deletes it
    sealed: bool = False                          # a snapshot's, with its sealed data in its spec
    # The producer is the operator's word only in status.producedBy (the operator writes every status) or in a
    # spec.source.trainingJob it signed (logic/signatures.py): what is signed, and the signature, kept to check.
    producer_in_status: bool = False
    seal_digest: str = ""
    seal_signature: str = ""
    unsigned_claim: bool = False                  # its spec names a producer without the operator's signature

    @classmethod
    def from_body(cls, raw: Mapping[str, Any]) -> "CheckpointInfo":
        """From a body as kopf hands it, read raw (api/wire.py): every event of every Checkpoint."""
        body = checkpoint_wire(raw)
        meta, status = body.get("metadata") or MetadataWire(), body.get("status") or CheckpointStatusWire()
        producer = status.get("producedBy") or ObjectRefWire()
        source = ((body.get("spec") or CheckpointSpecWire()).get("source") or CheckpointSourceWire()).get(
            "trainingJob") or TrainingJobSourceWire()
        try:
            phase = CheckpointPhase(status.get("phase") or "Pending")
        except ValueError:
            phase = CheckpointPhase.PENDING
        # A snapshot Checkpoint knows its data from its spec before its own reconcile makes it Ready:
        # its job plans with it (names, retention, changes) from the moment it is created.
        sealed = source.get("sealed") or SealedDataWire()
        known = status if status.get("digest") else sealed
        signature = source.get("signature") or ""
        seal_digest = message_digest(SEALED, sealed_fields(
            meta.get("namespace", ""), meta.get("name", ""), source.get("name", ""), source.get("uid", ""),
            source.get("directory", ""), sealed)) if sealed and signature else ""
        return cls(name=meta.get("name", ""), uid=meta.get("uid", ""), phase=phase,
                   created=meta.get("creationTimestamp") or "", step=known.get("step"),
                   producer_name=producer.get("name") or source.get("name"),
                   producer_uid=producer.get("uid") or source.get("uid"), directory=source.get("directory"),
                   complete=known.get("complete"), resumable=known.get("resumable"),
                   deleting=bool(meta.get("deletionTimestamp")), digest=known.get("digest"),
                   metrics=tuple(sorted((known.get("metrics") or {}).items()))[:16],
                   exempt=(meta.get("labels") or {}).get(KEEP_LABEL) == "true", sealed=bool(sealed),
                   producer_in_status=bool(producer.get("uid")), seal_digest=seal_digest,
                   seal_signature=signature[:128])

    def sealed_by(self, job_uid: str, directory: str) -> bool:
        """What its spec (or status) says: a Checkpoint of that job and directory (not proof: see producer_is_trusted)."""
        return self.producer_uid == job_uid and self.directory == directory

    def producer_is_trusted(self, keys: tuple[bytes, ...]) -> bool:
        """Whether the operator said who produced it: its status (only the operator writes it) names the
        producer, or its spec.source.trainingJob carries the operator's signature (with one of `keys`)."""
        if not self.producer_uid:
            return True  # names no producer: nothing to trust
        return self.producer_in_status or verify_digest(keys, self.seal_digest, self.seal_signature)

    def metric(self, name: str) -> Optional[float]:
        return next((v for k, v in self.metrics if k == name), None)

    @property
    def is_usable(self) -> bool:
        return self.phase == CheckpointPhase.READY and not self.deleting


@dataclass(frozen=True, slots=True)
class TrainingJobInfo:
    name: str
    uid: str
    phase: TrainingJobPhase
    publishes_live: bool = False                # status.publish == Continuous: Checkpoints appear while it runs
    best: Optional[tuple[str, str]] = None      # spec.output.retention.keepBest (metric, mode): select: best
    waits_on: tuple[str, ...] = ()              # not started yet: the TrainingJobs it takes fromTrainingJob

    @classmethod
    def from_body(cls, raw: Mapping[str, Any]) -> "TrainingJobInfo":
        """From a body as kopf hands it, read raw (api/wire.py): every event of every TrainingJob."""
        body = training_job_wire(raw)
        meta, status = body.get("metadata") or MetadataWire(), body.get("status") or TrainingJobStatusWire()
        try:
            phase = TrainingJobPhase(status.get("phase") or "Pending")
        except ValueError:
            phase = TrainingJobPhase.PENDING
        spec = body.get("spec") or TrainingJobSpecWire()
        output = spec.get("output") or OutputWire()
        best = (output.get("retention") or RetentionWire()).get("keepBest") or KeepBestWire()
        metric = best.get("metric")
        waits_on = tuple(sorted({str(r["fromTrainingJob"]) for r in spec.get("checkpoints") or []
                                 if isinstance(r, Mapping) and r.get("fromTrainingJob")}))[:MAX_WAITS_ON] \
            if phase == TrainingJobPhase.PENDING else ()
        return cls(meta.get("name", ""), meta.get("uid", ""), phase, status.get("publish") == "Continuous",
                   (metric, best.get("mode", "min")) if metric else None, waits_on)


class Lookup(Protocol):
    """The look-ups resolution needs; reconcile/indexes.py answers them from kopf's indexes."""

    def checkpoint(self, namespace: str, name: str) -> Optional[CheckpointInfo]: ...

    def checkpoint_by_uid(self, namespace: str, uid: str) -> Optional[CheckpointInfo]: ...

    def checkpoints_of(self, namespace: str, producer_uid: str) -> list[CheckpointInfo]: ...

    def training_job(self, namespace: str, name: str) -> Optional[TrainingJobInfo]: ...

    def cluster_checkpoint(self, name: str) -> Optional[CheckpointInfo]: ...

    def cluster_checkpoint_by_uid(self, uid: str) -> Optional[CheckpointInfo]: ...


CLUSTER_KIND: Literal["ClusterCheckpoint"] = "ClusterCheckpoint"


@dataclass(frozen=True)
class Candidate:
    """An input chosen from the indexes, still to be checked live."""

    name: str
    uid: str
    mount_name: str
    cluster: bool = False  # a ClusterCheckpoint of the catalog (cluster-scoped), not a Checkpoint of the namespace

    @property
    def kind(self) -> str:
        return CLUSTER_KIND if self.cluster else "Checkpoint"


@dataclass(frozen=True)
class ResolvedInput:
    name: str
    uid: str
    digest: str
    mount_name: str
    location: Location
    size_bytes: Optional[int] = None
    cluster: bool = False

    def pinned(self) -> PinnedCheckpoint:
        return PinnedCheckpoint(name=self.name, uid=self.uid, digest=self.digest, sizeBytes=self.size_bytes,
                                kind=CLUSTER_KIND if self.cluster else None)


def input_on_other_store(inputs: list[ResolvedInput], store: str) -> Optional[str]:
    """Why the first input cannot be read by an operator running the `store` store ("volume" or "s3"):
    its data is on the other one (the operator's store was changed under existing Checkpoints, or a
    local state dir run with another --store; hostile3 F9), or None."""
    for item in inputs:
        location = item.location
        where = ("s3" if location.s3 is not None
                 else "volume" if location.on_volumes  # (its claims, its workers', or their snapshots)
                 else None)
        if where != store:
            kind = CLUSTER_KIND if item.cluster else "Checkpoint"
            on = f"on the {where} store" if where else "nowhere this operator can read (its status has no location)"
            return (f"input {kind} {item.name} is {on}; this operator runs the {store} store and reads only "
                    f"Checkpoints stored there")
    return None


# Waits that will not end by themselves: the job reports Stalled (GitOps shows Degraded).
TERMINAL_WAITS = ("InputFailed", "DuplicateInput", "NoBestMetric", "InputCycle")
MAX_WAITS_ON = 64  # spec.checkpoints has at most 64 entries (api/trainingjob.py MAX_INPUTS)


@dataclass(frozen=True)
class InputWait:
    """An input that is not usable yet: `reason` is a CamelCase word, `message` names the input."""

    reason: str
    message: str

    @property
    def terminal(self) -> bool:
        return self.reason in TERMINAL_WAITS


@dataclass(frozen=True)
class Resolution:
    candidates: list[Candidate]
    waits: list[InputWait]


# --- selection among a producer's outputs ----------------------------------------------------------

def _rank(c: CheckpointInfo) -> tuple[bool, bool, int, str, str]:
    # The root's files (the final model, `select: final`) rank below every other output, even
    # when a step was read from them (a root `torch.save` file may record one): `latest` is what
    # a resume continues from, so it is the root only when the job wrote nothing else.
    return (c.directory != ROOT_DIRECTORY, c.step is not None, c.step if c.step is not None else -1, c.created, c.name)


def vouched_for(candidates: list[CheckpointInfo]) -> list[CheckpointInfo]:
    """The candidates a selection may pick: never one found incomplete; the ones found complete
    when there is any, else the ones not checked.

    Why not rank "not checked" after "complete" by step alone: a checkpoint becomes "not checked"
    when no check applies to what is in it, which is also what a save that died before writing
    any weight file looks like (a directory holding only notes or a tokenizer). Within one job the
    checked ones are the job's real format; an unchecked one among them is the exception, and a
    newer exception must not win over an older checkpoint that was checked whole. A job whose
    format has no check at all still gets its latest (all its checkpoints are unchecked alike)."""
    usable = [c for c in candidates if c.complete is not False]
    complete = [c for c in usable if c.complete is True]
    return complete or usable


def select_output(outputs: list[CheckpointInfo], policy: str,
                  best: Optional[tuple[str, str]] = None) -> Optional[CheckpointInfo]:
    """`latest`: the highest step, then the newest, of the usable outputs `vouched_for` (found
    complete, or when none was, not checked; never incomplete), the root's files only when there
    is no other; `latestResumable`: the same among those with optimizer state; `final`: the
    root-files one; `best`: the best by `best` = (metric, min|max) among those vouched for that
    record it (ties: `latest`)."""
    usable = [c for c in outputs if c.is_usable]
    if policy == "final":
        return next((c for c in usable if c.directory == ROOT_DIRECTORY), None)
    candidates = usable
    if policy == "latestResumable":
        candidates = [c for c in candidates if c.resumable]
    if policy == "best":
        metric, mode = best or ("", "min")
        scored = vouched_for([c for c in candidates if c.metric(metric) is not None])
        if not scored:
            return None
        sign = -1 if mode == "min" else 1
        return max(scored, key=lambda c: (sign * (c.metric(metric) or 0.0), _rank(c)))
    # The root's files rank below every other output (see _rank), whatever their checks say.
    candidates = vouched_for([c for c in candidates if c.directory != ROOT_DIRECTORY]) or \
        vouched_for([c for c in candidates if c.directory == ROOT_DIRECTORY])
    return max(candidates, key=_rank) if candidates else None


def _incomplete_ones(outputs: list[CheckpointInfo]) -> str:
    """Why nothing was selected when Ready outputs exist: they were found incomplete."""
    incomplete = sorted(c.name for c in outputs if c.is_usable and c.complete is False)
    if not incomplete:
        return ""
    return (f" ({len(incomplete)} Ready one{'s were' if len(incomplete) != 1 else ' was'} found incomplete, such as "
            f"{incomplete[-1]}: its Complete condition says why; name it in spec.checkpoints[].name to use it anyway)")


def _describe(ref: CheckpointRef) -> str:
    if ref.fromTrainingJob:
        return f"{ref.select or 'latest'} checkpoint of TrainingJob {ref.fromTrainingJob}"
    if ref.clusterCheckpoint:
        return f"{CLUSTER_KIND} {ref.clusterCheckpoint}"
    return f"Checkpoint {ref.name}" if ref.name else f"Checkpoint with uid {ref.uid}"


def _state_wait(checkpoint: CheckpointInfo, kind: str = "Checkpoint") -> Optional[InputWait]:
    name = checkpoint.name
    if checkpoint.deleting:
        return InputWait("InputDeleting", f"input {kind} {name} is being deleted")
    if checkpoint.phase == CheckpointPhase.FAILED:
        return InputWait("InputFailed", f"input {kind} {name} has failed")
    if checkpoint.phase != CheckpointPhase.READY:
        return InputWait("InputNotReady", f"input {kind} {name} is not Ready (phase {checkpoint.phase})")
    return None


def _resolve_cluster(ref: CheckpointRef, lookup: Lookup) -> Candidate | InputWait:
    """A catalog entry: cluster-scoped, so the same for every namespace."""
    name = ref.clusterCheckpoint or ""
    entry = lookup.cluster_checkpoint(name)
    if entry is None:
        return InputWait("InputNotFound", f"input {CLUSTER_KIND} {name} does not exist (kubectl ckpt ls --catalog "
                                          "lists the catalog)")
    return _state_wait(entry, CLUSTER_KIND) or Candidate(entry.name, entry.uid, ref.mountName or entry.name, True)


def resolve_ref(ref: CheckpointRef, namespace: str, lookup: Lookup) -> Candidate | InputWait:
    if ref.clusterCheckpoint:
        return _resolve_cluster(ref, lookup)
    if ref.fromTrainingJob:
        job_name = ref.fromTrainingJob
        producer = lookup.training_job(namespace, job_name)
        if producer is None:
            return InputWait("InputNotFound", f"input {_describe(ref)}: TrainingJob {job_name} does not exist")
        policy = ref.select or "latest"
        if policy == "best" and producer.best is None:
            return InputWait("NoBestMetric", f"input {_describe(ref)}: TrainingJob {job_name} has no "
                                             "spec.output.retention.keepBest, whose metric select: best ranks by")
        running = not producer.phase.is_finished
        if running and not takes_from_running(ref, producer):
            return InputWait("WaitingForTrainingJob", f"input {_describe(ref)}: TrainingJob {job_name} has not "
                                                      f"finished (phase {producer.phase})")
        outputs = lookup.checkpoints_of(namespace, producer.uid)
        checkpoint = select_output(outputs, policy, producer.best)
        if checkpoint is None and running:
            return InputWait("WaitingForTrainingJob", f"input {_describe(ref)}: TrainingJob {job_name} is running "
                                                      f"and has no such Ready checkpoint yet{_incomplete_ones(outputs)}")
        if checkpoint is None:
            return InputWait("InputNotFound", f"input {_describe(ref)}: TrainingJob {job_name} produced no "
                                              f"such Ready checkpoint{_incomplete_ones(outputs)}")
    else:
        checkpoint = lookup.checkpoint(namespace, ref.name) if ref.name else \
            lookup.checkpoint_by_uid(namespace, ref.uid or "")
        if checkpoint is None:
            return InputWait("InputNotFound", f"input {_describe(ref)} does not exist")
    return _state_wait(checkpoint) or Candidate(checkpoint.name, checkpoint.uid, ref.mountName or checkpoint.name)


def takes_from_running(ref: CheckpointRef, producer: TrainingJobInfo) -> bool:
    """A running producer's outputs are taken as they appear, unless the reference waits for it
    to finish (`wait: Finished`), it publishes only at the end, or the root-files `final` is asked."""
    return producer.publishes_live and ref.wait != "Finished" and (ref.select or "latest") != "final"


def resolve_pinned(pinned: PinnedCheckpoint, ref: CheckpointRef, namespace: str,
                   lookup: Lookup) -> Candidate | InputWait:
    """An input pinned at an earlier pass is kept by uid, so a restart cannot switch `latest`."""
    if pinned.kind == CLUSTER_KIND:
        entry = lookup.cluster_checkpoint_by_uid(pinned.uid)
        if entry is None:
            return InputWait("InputNotFound", f"input {CLUSTER_KIND} {pinned.name} (uid {pinned.uid}) no longer exists")
        return _state_wait(entry, CLUSTER_KIND) or Candidate(entry.name, entry.uid, ref.mountName or entry.name, True)
    checkpoint = lookup.checkpoint_by_uid(namespace, pinned.uid)
    if checkpoint is None:
        return InputWait("InputNotFound", f"input Checkpoint {pinned.name} (uid {pinned.uid}) no longer exists")
    return _state_wait(checkpoint) or Candidate(checkpoint.name, checkpoint.uid, ref.mountName or checkpoint.name)


def resolve_inputs(tj: TrainingJob, lookup: Lookup) -> Resolution:
    namespace, refs, pinned = tj.metadata.namespace, tj.spec.checkpoints, tj.status.inputs
    if pinned is not None and len(pinned) == len(refs):
        results = [resolve_pinned(p, ref, namespace, lookup) for p, ref in zip(pinned, refs)]
    else:
        results = [resolve_ref(ref, namespace, lookup) for ref in refs]
    candidates = [r for r in results if isinstance(r, Candidate)]
    waits = [r for r in results if isinstance(r, InputWait)]
    if any(w.reason == "WaitingForTrainingJob" for w in waits):
        cycle = _wait_cycle(tj, lookup)
        if cycle is not None:  # waiting would never end: say so, naming the cycle
            waits = [w for w in waits if w.reason != "WaitingForTrainingJob"] + [InputWait("InputCycle", cycle)]
    mount_names = [c.mount_name for c in candidates]
    for dup in sorted({m for m in mount_names if mount_names.count(m) > 1}):
        waits.append(InputWait("DuplicateInput", f"two inputs would be mounted at the same directory {dup!r}; "
                                                 "set spec.checkpoints[].mountName to tell them apart"))
    return Resolution(candidates, waits)


def _wait_cycle(tj: TrainingJob, lookup: Lookup) -> Optional[str]:
    """The message of a cycle of waits this job is in or waits on (logic/wait_cycles.py)."""
    namespace, name = tj.metadata.namespace, tj.metadata.name
    own = tuple(sorted({ref.fromTrainingJob for ref in tj.spec.checkpoints if ref.fromTrainingJob}))

    def waits_on(job: str) -> tuple[str, ...]:
        if job == name:
            return own
        info = lookup.training_job(namespace, job)
        return info.waits_on if info is not None else ()
    cycle = find_wait_cycle(name, waits_on)
    return cycle.message() if cycle is not None else None


def check_live_input(candidate: Candidate, checkpoint: Optional[CheckpointHead | ClusterCheckpointHead]
                     ) -> ResolvedInput | InputWait:
    """The decision on a fresh read of the input, made after the job recorded its use (see
    logic/protection.py): gone, replaced, deleting or unprotected means back off."""
    name, kind = candidate.name, candidate.kind
    if checkpoint is None or checkpoint.metadata.uid != candidate.uid:
        return InputWait("InputNotFound", f"input {kind} {name} no longer exists")
    meta, status = checkpoint.metadata, checkpoint.status
    if meta.deleting:
        return InputWait("InputDeleting", f"input {kind} {name} is being deleted")
    if not meta.has_finalizer(PROTECTION_FINALIZER):
        # Without the finalizer a deletion would not wait for us: never start on it.
        return InputWait("InputNotProtected", f"input {kind} {name} does not carry the "
                                              f"{PROTECTION_FINALIZER} finalizer yet")
    if status.phase != CheckpointPhase.READY or status.location is None or not status.digest:
        return InputWait("InputNotReady", f"input {kind} {name} is not Ready")  # (a Ready one has a digest to pin)
    return ResolvedInput(name=name, uid=candidate.uid, digest=status.digest, mount_name=candidate.mount_name,
                         location=status.location, size_bytes=status.sizeBytes, cluster=candidate.cluster)
