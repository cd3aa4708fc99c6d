"""Checkpoints with source.s3 or source.http: copy the data into storage the operator owns."""

from __future__ import annotations

from checkpoint_operator.handlers.checkpoint import _set_status, run_agent_pod, set_ready
from checkpoint_operator.handlers.context import Context
from checkpoint_operator.kube import PODS, PVCS
from checkpoint_operator.logic import workload
from checkpoint_operator.logic.snapshot import ScanOutputError, parse_scan_output
from checkpoint_operator.storage import store_for
from checkpoint_operator.storage.base import MissingUpload
from checkpoint_operator import metrics


def import_checkpoint(ctx: Context, checkpoint: dict) -> None:
    meta, source = checkpoint["metadata"], checkpoint["spec"]["source"]
    namespace = meta["namespace"]
    origin = source["s3"]["uri"] if "s3" in source else source["http"]["url"]
    store = store_for(ctx.config)
    if store.import_needs_claim:
        ctx.kube.ensure(PVCS, namespace, workload.build_import_claim(checkpoint, ctx.config))
    pod = run_agent_pod(ctx, checkpoint, workload.build_import_pod(checkpoint, ctx.config))
    if pod is None:
        if checkpoint.get("status", {}).get("phase") not in ("Importing", "Failed"):
            _set_status(ctx, checkpoint, "Importing", "Importing", f"importing {origin}", event="Normal")
        return
    try:
        scan = parse_scan_output(ctx.kube.read_log(namespace, pod["metadata"]["name"]))
        if len(scan.checkpoints) != 1:
            raise ScanOutputError(f"{origin} holds no files")
    except ScanOutputError as exc:
        _set_status(ctx, checkpoint, "Failed", "ImportFailed", f"import of {origin}: {exc}", stalled=True,
                    event="Warning")
        return
    finally:
        ctx.kube.delete(PODS, namespace, pod["metadata"]["name"])
    manifest = scan.checkpoints[0]
    try:
        location = store.import_location(checkpoint, workload.import_claim_name(checkpoint), scan.uploads)
    except MissingUpload as exc:
        _set_status(ctx, checkpoint, "Failed", "ImportFailed", f"import of {origin}: {exc}", stalled=True,
                    event="Warning")
        return
    metrics.TRANSFERRED_BYTES.labels("import").inc(manifest.sizeBytes)
    set_ready(ctx, checkpoint, manifest, location, owned=True)
