"""`checkpoint-operator agent ...`: the commands the operator's pods run."""

from __future__ import annotations

import argparse


def add_agent_parser(sub: argparse._SubParsersAction) -> None:
    agent = sub.add_parser("agent", help="data-plane commands run inside the operator's pods (usable by hand)",
                           description="Data-plane commands: scan, upload, download and import checkpoints.")
    cmds = agent.add_subparsers(dest="agent_command", required=True, metavar="AGENT_COMMAND")

    scan = cmds.add_parser("scan", help="list the checkpoints in an output directory, with their manifests",
                           description="Scan DIR per the snapshot rules and print the checkpoints found "
                                       "(paths, sizes, sha256, digest, format, step) and what was skipped.")
    scan.add_argument("dir", help="the output directory to scan")
    scan.add_argument("--layout", choices=["auto", "directories", "files"], default="auto",
                      help="auto: each subdirectory plus the root files; directories: subdirectories only; "
                           "files: each root file on its own")
    scan.add_argument("--single", action="store_true",
                      help="treat DIR itself as one checkpoint (used to adopt an existing volume path)")
    scan.add_argument("--json", action="store_true", help="print JSON (default: a human-readable table)")
    scan.add_argument("--workers", type=int, default=None, help="hashing threads (default: number of cores)")
    scan.set_defaults(func=lambda a: _call("scan", a))

    snap = cmds.add_parser("snapshot", help="scan an output directory and upload each checkpoint (s3 store)",
                           description="Scan DIR like `scan`, upload every checkpoint found under --upload-to "
                                       "(manifest last), and print the scan JSON plus the uploaded URIs.")
    snap.add_argument("dir")
    snap.add_argument("--upload-to", required=True, metavar="S3_PREFIX", help="s3://bucket/prefix/ for this output")
    snap.add_argument("--layout", choices=["auto", "directories", "files"], default="auto")
    snap.add_argument("--single", action="store_true", help="DIR itself is one checkpoint (uploaded to S3_PREFIX)")
    snap.add_argument("--json", action="store_true", help="accepted for symmetry with scan; output is always JSON")
    snap.add_argument("--concurrency", type=int, default=None, help="parallel transfers")
    snap.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    snap.set_defaults(func=lambda a: _call("snapshot", a))

    upload = cmds.add_parser("upload", help="upload a checkpoint directory to s3://bucket/prefix/",
                             description="Upload DIR to an S3 prefix; the manifest is written last as the commit marker.")
    upload.add_argument("dir")
    upload.add_argument("uri", help="s3://bucket/prefix/")
    upload.add_argument("--manifest", default=None, help="a manifest JSON already computed by `scan` (skips hashing twice)")
    upload.add_argument("--concurrency", type=int, default=None, help="parallel transfers")
    upload.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    upload.set_defaults(func=lambda a: _call("upload", a))

    download = cmds.add_parser("download", help="download and verify a checkpoint from s3://bucket/prefix/",
                               description="Download the checkpoint at an S3 prefix into DIR, verifying size and "
                                           "sha256 of every file against its manifest.")
    download.add_argument("uri", help="s3://bucket/prefix/")
    download.add_argument("dir")
    download.add_argument("--concurrency", type=int, default=None, help="parallel transfers")
    download.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    download.set_defaults(func=lambda a: _call("download", a))

    imp = cmds.add_parser("import", help="import a checkpoint from s3:// or http(s):// into DEST",
                          description="Copy SOURCE (an S3 object or prefix ending in /, or an http(s) URL) into DEST; "
                                      "archives (.tar, .tar.gz, .tgz, .tar.bz2, .zip) are extracted safely.")
    imp.add_argument("source")
    imp.add_argument("dest")
    imp.add_argument("--max-size", default=None, help="refuse archives that expand past this size (default 2Ti)")
    imp.add_argument("--max-files", type=int, default=None,
                     help="refuse archives with more members than this (default 1000000)")
    imp.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    imp.set_defaults(func=lambda a: _call("importer", a))


def _call(module: str, args: argparse.Namespace) -> int:
    import importlib
    mod = importlib.import_module(f"checkpoint_operator.agent.{module}")
    return int(mod.main(args) or 0)
