"""The operator's word between its own reconciles, signed and checked (logic/signatures.py): a job
signs the snapshot Checkpoints it creates and the annotations it writes on Checkpoints; the
Checkpoint's reconcile, and the job when it finds a Checkpoint of its name, trust them only when
the signature verifies with the operator's key (reconcile/signing_keys.py: one Secret read per
process, no request per lifecycle)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointHead, TrainingJobSource
from checkpoint_operator.logic import signatures
from checkpoint_operator.logic.inputs import CheckpointInfo
from checkpoint_operator.reconcile.context import Context

NOT_SIGNED = "NotSignedByOperator"
NOT_SIGNED_MESSAGE = ("spec.source.trainingJob.sealed is written by the operator only: its signature does not "
                      "verify (a snapshot Checkpoint is made by its TrainingJob; create a Checkpoint from "
                      "spec.source.volume to adopt data on a claim)")


def keys(ctx: Context) -> tuple[bytes, ...]:
    return ctx.signing_keys.keys(ctx.kube, ctx.config.catalog_namespace)


def signing_key(ctx: Context) -> bytes:
    return keys(ctx)[0]


def _verifies_or_reloaded(ctx: Context, check: Any) -> bool:
    """`check(keys)`, and once more after reading the Secret again when it fails (a rotation; rate-limited)."""
    if check(keys(ctx)):
        return True
    return ctx.signing_keys.reload(ctx.kube, ctx.config.catalog_namespace) and bool(check(keys(ctx)))


def signed_snapshot(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    """A planned snapshot Checkpoint's body with its spec.source.trainingJob signed."""
    return signatures.sign_snapshot_body(signing_key(ctx), body)


def sealed_verifies(ctx: Context, checkpoint: Checkpoint, source: TrainingJobSource) -> bool:
    """Whether the operator wrote this Checkpoint's spec.source.trainingJob (its sealed data) for it."""
    if source.sealed is None or not source.signature:
        return False
    fields = signatures.sealed_fields(checkpoint.metadata.namespace, checkpoint.metadata.name, source.name,
                                      source.uid, source.directory, source.sealed.to_wire())
    digest = signatures.message_digest(signatures.SEALED, fields)
    return _verifies_or_reloaded(ctx, lambda k: signatures.verify_digest(k, digest, source.signature))


def body_is_signed_for(ctx: Context, body: dict[str, Any], job_uid: str, directory: str,
                       digest: Optional[str] = None) -> bool:
    """A Checkpoint found by name is this job's Checkpoint of `directory` (and, when given, of that
    sealed digest) only when the operator signed it so: its spec is what anyone may write."""
    info = CheckpointInfo.from_body(body)
    return info.sealed_by(job_uid, directory) and (digest is None or info.digest == digest) and \
        signatures.verify_digest(keys(ctx), info.seal_digest, info.seal_signature)


def trusted_info(ctx: Context, info: Optional[CheckpointInfo]) -> Optional[CheckpointInfo]:
    """The index's view of a Checkpoint as a job may plan with it: one whose producer is only what its
    spec says, unsigned, is no job's (a name taken by someone else: a NameConflict, never adopted)."""
    if info is None or info.producer_is_trusted(keys(ctx)):
        return info
    return dataclasses.replace(info, producer_uid=None, directory=None, sealed=False, unsigned_claim=True)


def own_checkpoints(ctx: Context, namespace: str, job_uid: str) -> list[CheckpointInfo]:
    """The job's Checkpoints, as the index has them: those its spec names the job of, when signed."""
    trusted = keys(ctx)
    return [c for c in ctx.indexes.checkpoints_of(namespace, job_uid) if c.producer_is_trusted(trusted)]


def changed_request(ctx: Context, checkpoint: CheckpointHead) -> Optional[str]:
    """The changed-after-sealing request, when its job (the operator) wrote it for this Checkpoint."""
    return _trusted_annotation(ctx, checkpoint, signatures.CHANGED_REQUEST)


def cached_on_request(ctx: Context, checkpoint: CheckpointHead) -> Optional[str]:
    return _trusted_annotation(ctx, checkpoint, signatures.CACHED_ON_REQUEST)


def _trusted_annotation(ctx: Context, checkpoint: CheckpointHead,
                        annotation: signatures.SignedAnnotation) -> Optional[str]:
    meta = checkpoint.metadata
    annotations = meta.annotations or {}
    if annotation.key not in annotations:
        return None
    value: list[Optional[str]] = [None]

    def check(k: tuple[bytes, ...]) -> bool:
        value[0] = annotation.trusted_value(k, annotations, meta.namespace, meta.name, meta.uid)
        return value[0] is not None
    _verifies_or_reloaded(ctx, check)
    return value[0]


def signed_annotations(ctx: Context, checkpoint: CheckpointHead, annotation: signatures.SignedAnnotation,
                       value: str) -> dict[str, str]:
    meta = checkpoint.metadata
    return annotation.signed(signing_key(ctx), meta.namespace, meta.name, meta.uid, value)
