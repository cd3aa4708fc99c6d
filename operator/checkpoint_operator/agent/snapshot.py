"""`agent snapshot`: scan an output directory and upload each checkpoint found (s3 store).

Each checkpoint's manifest object is written last by the upload, so a checkpoint whose upload
was cut off has no manifest and is never reported. The result is the scan's JSON plus
`uploads` ({checkpoint path: s3 uri}), printed as one line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional

from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.agent.parts import scan_parts
from checkpoint_operator.agent.scan import scan_directory
from checkpoint_operator.agent.tree import entry_limit
from checkpoint_operator.agent.upload import upload_dir


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
             endpoint_url=None, max_entries: Optional[int] = None, reuse_sealed: bool = False) -> dict:
    result = scan_directory(Path(directory), layout=layout, single=single, max_entries=entry_limit(max_entries))
    uploads = {}
    for manifest in result.checkpoints:
        if reuse_sealed and not single:
            # Sealed while the job ran (agent watch): the copy named by this very digest is there.
            from checkpoint_operator.agent.s3 import manifest_exists
            from checkpoint_operator.agent.live_watch import sealed_uri
            sealed = sealed_uri(upload_to, manifest.path, manifest.digest)
            if manifest_exists(sealed, endpoint_url=endpoint_url):
                uploads[manifest.path] = sealed
                continue
        uri = upload_uri(upload_to, manifest.path, single)
        upload_dir(checkpoint_root(directory, manifest.path, layout, single), uri, manifest=manifest,
                   concurrency=concurrency, endpoint_url=endpoint_url)
        uploads[manifest.path] = uri
    return {**result.model_dump(mode="json"), "uploads": uploads}


def snapshot_parts(directory: str, count: int, layout: str, upload_to: str, per_worker: bool = False,
                   concurrency=None, endpoint_url=None, max_entries: Optional[int] = None) -> dict:
    """`snapshot` of several workers' outputs (agent/parts.py): each checkpoint, a union of parts
    or one worker's own, is uploaded from where its files lie into one prefix."""
    parts = scan_parts(directory, count, layout, per_worker, max_entries=entry_limit(max_entries))
    uploads = {}
    for manifest in parts.result.checkpoints:
        uri = upload_uri(upload_to, manifest.path, False)
        upload_dir(directory, uri, manifest=manifest, concurrency=concurrency, endpoint_url=endpoint_url,
                   tops=parts.tops[manifest.path])
        uploads[manifest.path] = uri
    return {**parts.result.model_dump(mode="json"), "uploads": uploads, "sources": parts.sources}


def main(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.dir):
        raise AgentError(f"{args.dir}: not a directory (snapshot takes the directory that holds the checkpoints)")
    if getattr(args, "parts", None):
        print(json.dumps(snapshot_parts(args.dir, args.parts, args.layout, args.upload_to, args.per_worker,
                                        concurrency=args.concurrency, endpoint_url=args.endpoint_url,
                                        max_entries=args.max_entries)), flush=True)
        return 0
    output = snapshot(args.dir, args.layout, args.upload_to, single=args.single, concurrency=args.concurrency,
                      endpoint_url=args.endpoint_url, max_entries=args.max_entries,
                      reuse_sealed=getattr(args, "reuse_sealed", False))
    print(json.dumps(output), flush=True)
    return 0
