"""Checkpoints with source.s3 or source.http: copy the data into storage the operator owns."""

from __future__ import annotations

from checkpoint_operator.handlers.checkpoint import _set_status, run_single_scan, set_ready
from checkpoint_operator.handlers.context import Context
from checkpoint_operator.kube import PVCS
from checkpoint_operator.logic import workload
from checkpoint_operator.storage import store_for
from checkpoint_operator.storage.base import MissingUpload
from checkpoint_operator import metrics


def import_checkpoint(ctx: Context, checkpoint: dict) -> None:
    meta, source = checkpoint["metadata"], checkpoint["spec"]["source"]
    origin = source["s3"]["uri"] if "s3" in source else source["http"]["url"]
    store = store_for(ctx.config)
    if store.import_needs_claim:
        ctx.kube.ensure(PVCS, meta["namespace"], workload.build_import_claim(checkpoint, ctx.config))
    scan = run_single_scan(ctx, checkpoint, workload.build_import_pod(checkpoint, ctx.config),
                           phase="Importing", reason="Importing", failure_reason="ImportFailed",
                           describe=f"import of {origin}")
    if scan is None:
        return
    manifest = scan.checkpoints[0]
    try:
        location = store.import_location(checkpoint, workload.import_claim_name(checkpoint), scan.uploads)
        if not store.is_committed(location):
            raise MissingUpload("the upload into the store did not complete (no manifest)")
    except MissingUpload as exc:
        _set_status(ctx, checkpoint, "Failed", "ImportFailed", f"import of {origin}: {exc}", stalled=True,
                    event="Warning")
        return
    metrics.TRANSFERRED_BYTES.labels("import").inc(manifest.sizeBytes)
    set_ready(ctx, checkpoint, manifest, location, owned=True)
