"""`agent snapshot`: scan an output directory and upload each checkpoint found (s3 store).

Each checkpoint's manifest object is written last by the upload, so a checkpoint whose upload
was cut off has no manifest and is never reported. The result is the operator's bounded scan
result (protocol/results.py): per checkpoint its digest, totals and the prefix it went to.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

from checkpoint_operator.protocol import channel, results
from checkpoint_operator.protocol.errors import Refusal
from checkpoint_operator.agent.parts import Assembled, PartsStream, parts_output
from checkpoint_operator.protocol.manifest import Manifest
from checkpoint_operator.agent.scan import report_of, scan_checkpoints
from checkpoint_operator.agent.tree import entry_limit
from checkpoint_operator.agent.upload import upload_dir
from checkpoint_operator.objectstore.blobs import blob_root_of


def upload_uri(prefix: str, path: str, single: bool) -> str:
    """Where one checkpoint of the output goes. Directories and the root files live in separate
    sub-prefixes, so no directory name can collide with the root-files checkpoint."""
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    if single:
        return prefix
    return prefix + ("root/" if path == "." else f"dirs/{path}/")


def checkpoint_root(directory: str, path: str, layout: str, single: bool) -> str:
    """Directory that a checkpoint's file paths are relative to."""
    return directory if single or path == "." or layout == "files" else os.path.join(directory, path)


def snapshot(directory: str, layout: str, upload_to: str, single: bool = False, concurrency=None,
             endpoint_url=None, max_entries: Optional[int] = None, reuse_sealed: bool = False) -> results.ScanReport:
    scan = scan_checkpoints(Path(directory), layout=layout, single=single, max_entries=entry_limit(max_entries),
                            max_checkpoints=results.MAX_CHECKPOINTS, max_skipped=results.MAX_SKIPPED_REPORTED)
    uploads = {}
    for scanned in scan.checkpoints:
        manifest = scanned.manifest
        if reuse_sealed and not single:
            # Sealed while the job ran (agent watch): the copy named by this very digest is there.
            from checkpoint_operator.objectstore.s3 import manifest_exists
            from checkpoint_operator.agent.live_watch import sealed_uri
            sealed = sealed_uri(upload_to, manifest.path, manifest.digest)
            if manifest_exists(sealed, endpoint_url=endpoint_url):
                uploads[manifest.path] = sealed
                continue
        uri = upload_uri(upload_to, manifest.path, single)
        upload_dir(checkpoint_root(directory, manifest.path, layout, single), uri, manifest=manifest,
                   concurrency=concurrency, endpoint_url=endpoint_url, blobs=blob_root_of(upload_to))
        uploads[manifest.path] = uri
        scanned.manifest = manifest.model_copy(update={"files": []})  # uploaded: its files are no longer needed
    return report_of(scan, uploads)


def snapshot_parts(directory: str, count: int, layout: str, upload_to: str, per_worker: bool = False,
                   concurrency=None, endpoint_url=None, max_entries: Optional[int] = None,
                   only: Optional[str] = None, expect: Optional[dict[int, str]] = None,
                   reuse_sealed: bool = False) -> results.ScanReport:
    """`snapshot` of several workers' outputs (agent/parts.py): each checkpoint, a union of parts
    or one worker's own, is uploaded from where its files lie into one prefix (the s3 store needs
    no parts in the result: the union is one manifest, its files blobs as any checkpoint's).
    `only` (a live union, output.publish: Continuous): that one directory, uploaded where a sealed
    checkpoint goes (UPLOAD_TO/sealed/<path>/<digest>/, never overwritten); `reuse_sealed` (the
    end-of-job snapshot): a union found there already is reported, not uploaded again."""
    from checkpoint_operator.agent.live_watch import sealed_uri
    uploads = {}

    def upload(assembled: Assembled) -> Manifest:  # each union as it comes: one held at a time
        manifest = assembled.manifest
        sealed = sealed_uri(upload_to, manifest.path, manifest.digest)
        if (reuse_sealed or only is not None) and not per_worker:
            from checkpoint_operator.objectstore.s3 import manifest_exists
            # published while the job ran (or by an earlier union pod: the prefix is named by the digest)
            if manifest_exists(sealed, endpoint_url=endpoint_url):
                uploads[manifest.path] = sealed
                return manifest
        uri = sealed if only is not None else upload_uri(upload_to, manifest.path, False)
        upload_dir(directory, uri, manifest=manifest, concurrency=concurrency, endpoint_url=endpoint_url,
                   tops=assembled.tops, blobs=blob_root_of(upload_to))
        uploads[manifest.path] = uri
        return manifest

    stream = PartsStream(directory, count, layout, per_worker, max_entries=entry_limit(max_entries), only=only,
                         expect=expect)
    return report_of(parts_output(stream, directory, layout, per_worker, mounts=False, each=upload), uploads)


def main(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.dir):
        raise Refusal(f"{args.dir}: not a directory (snapshot takes the directory that holds the checkpoints)")
    if getattr(args, "parts", None):
        from checkpoint_operator.agent.scan import expected_parts
        channel.write(snapshot_parts(args.dir, args.parts, args.layout, args.upload_to, args.per_worker,
                                     concurrency=args.concurrency, endpoint_url=args.endpoint_url,
                                     max_entries=args.max_entries, only=getattr(args, "only", None),
                                     expect=expected_parts(getattr(args, "expect", None)),
                                     reuse_sealed=getattr(args, "reuse_sealed", False)))
        return 0
    report = snapshot(args.dir, args.layout, args.upload_to, single=args.single, concurrency=args.concurrency,
                      endpoint_url=args.endpoint_url, max_entries=args.max_entries,
                      reuse_sealed=getattr(args, "reuse_sealed", False))
    channel.write(report)
    return 0
