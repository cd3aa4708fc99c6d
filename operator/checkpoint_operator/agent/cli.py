"""`checkpoint-operator agent ...`: the commands the operator's pods run."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import traceback


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
    scan.add_argument("--result", action="store_true",
                      help="print the operator's bounded result line instead (per checkpoint its digest and "
                           "totals, never its files: protocol/results.py)")
    scan.add_argument("--manifests-dir", default=None, metavar="DIR",
                      help="write each checkpoint's full manifest to DIR/sha256-<hex>.json as its files are hashed "
                           "(the volume store keeps them at the volume's root, in .ckpt-manifests/)")
    scan.add_argument("--sync", action="store_true",
                      help="then syncfs(2) the directory's filesystem and say so in the result (\"synced\": \"syncfs\"): "
                           "a volume snapshot of it follows")
    scan.add_argument("--workers", type=_positive_int, default=None, help="hashing threads (default: number of cores)")
    scan.add_argument("--max-entries", type=_positive_int, default=None, metavar="N",
                      help="fail past this many directory entries in all (default 1000000, 2000000 with --result; "
                           "or CKPT_SCAN_MAX_ENTRIES)")
    scan.add_argument("--parts", type=_positive_int, default=None, metavar="N",
                      help="DIR/worker-0 .. DIR/worker-<N-1> are N workers' outputs: a directory of the same name "
                           "in several of them is one checkpoint, the union of their files (agent/parts.py)")
    scan.add_argument("--per-worker", action="store_true",
                      help="with --parts: each worker's checkpoints stay its own, at worker-<i>/<directory>")
    scan.add_argument("--part-manifests", action="store_true",
                      help="with --parts --result: write each checkpoint's full manifest to .ckpt-manifests/ at the "
                           "root of the first worker's directory that provides its files")
    _live_union_flags(scan)
    scan.set_defaults(func=lambda a: _call("scan", a))

    snap = cmds.add_parser("snapshot", help="scan an output directory and upload each checkpoint (s3 store)",
                           description="Scan DIR like `scan`, upload every checkpoint found under --upload-to "
                                       "(manifest last), and print the operator's result line (each checkpoint's "
                                       "digest, totals and upload URI).")
    snap.add_argument("dir")
    snap.add_argument("--upload-to", required=True, metavar="S3_PREFIX", help="s3://bucket/prefix/ for this output")
    snap.add_argument("--layout", choices=["auto", "directories", "files"], default="auto")
    snap.add_argument("--single", action="store_true", help="DIR itself is one checkpoint (uploaded to S3_PREFIX)")
    snap.add_argument("--json", action="store_true", help="accepted for symmetry with scan; output is always JSON")
    snap.add_argument("--concurrency", type=_positive_int, default=None, help="parallel transfers")
    snap.add_argument("--max-entries", type=_positive_int, default=None, metavar="N",
                      help="fail past this many directory entries in all (default 1000000, or CKPT_SCAN_MAX_ENTRIES)")
    snap.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    snap.add_argument("--reuse-sealed", action="store_true",
                      help="a checkpoint `agent watch` sealed and uploaded (UPLOAD_TO/sealed/<path>/<digest>/) is not "
                           "uploaded again: its sealed copy is reported")
    snap.add_argument("--parts", type=_positive_int, default=None, metavar="N",
                      help="DIR/worker-0 .. DIR/worker-<N-1> are N workers' outputs: a directory of the same name "
                           "in several of them is one checkpoint, the union of their files (agent/parts.py)")
    snap.add_argument("--per-worker", action="store_true",
                      help="with --parts: each worker's checkpoints stay its own, at worker-<i>/<directory>")
    _live_union_flags(snap)
    snap.set_defaults(func=lambda a: _call("snapshot", a))
    resume = cmds.add_parser("resume-parts",
                             help="copy the latest checkpoint complete over N workers' volumes into each of them",
                             description="DIR/worker-0 .. DIR/worker-<N-1> are N workers' volumes (output."
                                         "volumePerWorker), every worker stopped: find the newest directory whose "
                                         "union over them is complete, and write that union into "
                                         "DIR/worker-<i>/.ckpt-resume/<digest hex> of every worker, each file checked "
                                         "against its sha256 (agent/resume_parts.py).")
    resume.add_argument("dir")
    resume.add_argument("--parts", type=_positive_int, required=True, metavar="N")
    resume.add_argument("--layout", choices=["auto", "directories", "files"], default="auto")
    resume.add_argument("--keep", default=None, metavar="sha256:HEX",
                        help="also keep this earlier copy (the one the workers fall back to if this run's result is lost)")
    resume.add_argument("--published", action="append", default=None, metavar="DIR",
                        help="a directory with a Checkpoint (repeated): its sealed parts stay sealed; every other "
                             "part sealed by a worker's sidecar gets its write bits back")
    resume.add_argument("--published-list", default=None, metavar="VALUE",
                        help="the directories with a Checkpoint, encoded in one argument (protocol/published.py; "
                             "what the operator passes, whatever their count), as --published")
    resume.add_argument("--keep-sealed", action="store_true",
                        help="give nothing back: every sealed part stays sealed (the operator's list did not fit)")
    resume.add_argument("--workers", type=_positive_int, default=None, help="hashing threads (default: number of cores)")
    resume.add_argument("--max-entries", type=_positive_int, default=None, metavar="N",
                        help="fail past this many directory entries in all (default 1000000, or CKPT_SCAN_MAX_ENTRIES)")
    resume.set_defaults(func=lambda a: _call("resume_parts", a))

    upload = cmds.add_parser("upload", help="upload a checkpoint directory to s3://bucket/prefix/",
                             description="Upload DIR to an S3 prefix; the manifest is written last as the commit marker.")
    upload.add_argument("dir")
    upload.add_argument("uri", help="s3://bucket/prefix/")
    upload.add_argument("--manifest", default=None, help="a manifest JSON already computed by `scan` (skips hashing twice)")
    upload.add_argument("--concurrency", type=_positive_int, default=None, help="parallel transfers")
    upload.add_argument("--blobs", default=None, metavar="S3_PREFIX",
                        help="content-addressed layout: each file stored once under S3_PREFIX<sha256> (the store "
                             "uses <namespace prefix>/blobs/sha256/), the manifest at URI naming them")
    upload.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    upload.set_defaults(func=lambda a: _call("upload", a))

    download = cmds.add_parser("download", help="download and verify a checkpoint from s3://bucket/prefix/",
                               description="Download the checkpoint at an S3 prefix into DIR, verifying size and "
                                           "sha256 of every file against its manifest.")
    download.add_argument("uri", help="s3://bucket/prefix/")
    download.add_argument("dir")
    download.add_argument("--digest", default=None, metavar="sha256:HEX",
                          help="the digest the checkpoint must have (pinned by the operator); a manifest with "
                               "another digest is refused before anything is downloaded")
    download.add_argument("--concurrency", type=_positive_int, default=None, help="parallel transfers")
    download.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    download.set_defaults(func=lambda a: _call("download", a))

    watch = cmds.add_parser("watch", help="seal checkpoints as training writes them (the live-sealing sidecar)",
                            description="Watch an output directory and seal each checkpoint directory once it is "
                                        "complete (see docs/live-sealing.md, sealing rules); one JSON line per event on "
                                        "stdout. Runs until SIGTERM, then seals what is left and exits 0.")
    watch.add_argument("dir", help="the output directory the training code writes into")
    watch.add_argument("--interval", type=_positive_float, default=0.25, metavar="SECONDS",
                       help="time between two looks at the output (default 0.25)")
    watch.add_argument("--upload-to", default=None, metavar="S3_PREFIX",
                       help="s3 store: upload each sealed checkpoint under S3_PREFIX/sealed/ (volume store: omit)")
    watch.add_argument("--upload-concurrency", type=_positive_int, default=2, metavar="N",
                       help="parallel transfers of one upload (default 2: training keeps most of the I/O)")
    watch.add_argument("--annotations-file", default=None, metavar="FILE",
                       help="a downwardAPI file of the pod's annotations (ckpt.dev/live-remove: what to remove)")
    watch.add_argument("--shared", action="store_true",
                       help="several pods write this output (an Indexed Job): the end of this pod seals nothing")
    watch.add_argument("--max-entries", type=_positive_int, default=None, metavar="N",
                       help="directory entries looked at per pass (default 1000000, or CKPT_SCAN_MAX_ENTRIES)")
    watch.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    watch.add_argument("--manifests-dir", default=None, metavar="DIR",
                       help="volume store: write each sealed checkpoint's full manifest to DIR/sha256-<hex>.json")
    watch.add_argument("--sync", action="store_true",
                       help="syncfs(2) the output's filesystem once a directory is sealed, before it is announced "
                            "(\"synced\": \"syncfs\" in its line): a volume snapshot of it follows")
    watch.add_argument("--part", action="store_true",
                       help="output.volumePerWorker: DIR is one worker's volume (JOB_COMPLETION_INDEX); each sealed "
                            "directory is that worker's part of a checkpoint assembled across the workers' volumes")
    watch.set_defaults(func=lambda a: _call("live_watch", a, sigterm_finishes=True))

    imp = cmds.add_parser("import", help="import a checkpoint (s3, http(s), ftp(s), Hugging Face, Git, GCS, Azure) into DEST",
                          description="Copy SOURCE into DEST: s3://bucket/key or s3://bucket/prefix/, an http(s):// or "
                                      "ftp(s):// URL, hf://org/name[@revision], git+https://host/repo[@revision] "
                                      "(or git+http://, git://), gs://bucket/prefix/ or az://account/container/prefix/ "
                                      "(a key, object or blob name instead of prefix/ for one file). Archives (.tar, "
                                      ".tar.gz, .tgz, .tar.bz2, .zip) are extracted safely.")
    imp.add_argument("source")
    imp.add_argument("dest")
    imp.add_argument("--max-size", default=None, metavar="BYTES",
                     help="refuse a source that is, or expands to, more than this (e.g. 500Gi; default 2Ti): checked "
                          "before any byte moves when the size is known, and while bytes move otherwise")
    imp.add_argument("--max-files", type=_positive_int, default=None, metavar="N",
                     help="refuse a source of more files (archive members, objects) than this (default 1000000)")
    imp.add_argument("--endpoint-url", default=None,
                     help="endpoint of the source's service: S3 (default AWS_ENDPOINT_URL or AWS), the Hugging Face "
                          "Hub (default HF_ENDPOINT or https://huggingface.co), GCS's XML API (default "
                          "https://storage.googleapis.com), Azure Blob (default https://ACCOUNT.blob.core.windows.net)")
    imp.add_argument("--include", action="append", metavar="GLOB",
                     help="hf://: only files matching this glob (repeatable)")
    imp.add_argument("--exclude", action="append", metavar="GLOB",
                     help="hf://: no file matching this glob (repeatable)")
    imp.add_argument("--lfs", action="store_true", help="git: fetch the commit's Git LFS files")
    imp.add_argument("--replace-earlier-import", action="store_true",
                     help="an earlier import's output in DEST (marked beside DEST when it was committed) is removed "
                          "first; anything else in DEST is still refused (the operator's import pods)")
    imp.add_argument("--ca-file", default=None, metavar="PEM",
                     help="https://, ftps:// and git over https: trust these CA certificates instead of the system's")
    imp.set_defaults(func=lambda a: _call("importer", a))
    _add_transfer_parsers(cmds)
    _add_cache_parsers(cmds)


def _add_cache_parsers(cmds: argparse._SubParsersAction) -> None:
    """The node-local input cache (agent/node_cache.py, docs/node-cache.md)."""
    fill = cmds.add_parser("cache-fill", help="make an input a verified entry of the node's cache (s3 store)",
                           description="Ensure the checkpoint at S3_PREFIX is in the node cache at ROOT as "
                                       "entries/<namespace>/<hex>/data: a hit is checked (sizes and a sample of "
                                       "blocks, or every byte with --verify full), a miss or a corrupted entry is "
                                       "downloaded once per node (other pods wait for it), evicting least recently "
                                       "used entries no pod holds. Prints one JSON line.")
    fill.add_argument("uri", metavar="S3_PREFIX")
    fill.add_argument("root", metavar="ROOT", help="where the node's cache volume is mounted")
    fill.add_argument("--key", required=True, metavar="NAMESPACE/HEX", help="the entry: namespace and digest hex")
    fill.add_argument("--size", required=True, type=int, metavar="BYTES", help="the checkpoint's size (reserved)")
    fill.add_argument("--capacity", required=True, metavar="BYTES", help="the node cache's capacity (e.g. 500Gi)")
    fill.add_argument("--verify", choices=["sample", "full"], default="sample",
                      help="how a cached entry is checked before use (default: sizes and a sample of blocks)")
    fill.add_argument("--no-hold", action="store_true",
                      help="do not wait for a cache-hold process to hold the entry (by hand, or in tests)")
    fill.add_argument("--wait-seconds", type=_positive_float, default=None,
                      help="give up waiting for room in a full cache after this long (default: wait)")
    fill.add_argument("--result-file", default=None, metavar="FILE",
                      help="also write the JSON line here (the container's terminationMessagePath)")
    fill.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    fill.set_defaults(func=lambda a: _call("node_cache", a))

    hold = cmds.add_parser("cache-hold", help="hold node-cache entries for the pod's life (its native sidecar)",
                           description="Take a shared lock on each KEY's entry of the node cache at ROOT and keep it "
                                       "until SIGTERM: no fill evicts an entry a running pod holds.")
    hold.add_argument("root", metavar="ROOT")
    hold.add_argument("--key", action="append", required=True, metavar="NAMESPACE/HEX")
    hold.set_defaults(func=lambda a: _call("node_cache", a, sigterm_finishes=True))


def _add_transfer_parsers(cmds: argparse._SubParsersAction) -> None:
    """verify, and the commands of a push or pull over exec (agent/transfer.py)."""
    verify = cmds.add_parser("verify", help="re-read a checkpoint where it lives and check every file",
                             description="Check every file of the checkpoint at LOCATION (s3://bucket/prefix/ or a "
                                         "directory) against its manifest, and the manifest against --digest. "
                                         "Prints the verdict (one JSON line with --json; exit 0 either way with "
                                         "--json, else 1 when not verified).")
    verify.add_argument("location", help="s3://bucket/prefix/ or a directory")
    verify.add_argument("--digest", default=None, metavar="sha256:HEX",
                        help="the digest recorded for the checkpoint (required for a directory without a manifest)")
    verify.add_argument("--max-size", default=None, metavar="BYTES", help="a checkpoint larger than this is a problem")
    verify.add_argument("--json", action="store_true", help="print the result as one JSON line")
    verify.add_argument("--result", action="store_true",
                        help="print the operator's bounded result line (protocol/results.py) instead")
    verify.add_argument("--manifest", default=None, metavar="FILE",
                        help="a directory's manifest stored elsewhere (the volume store's .ckpt-manifests/<digest>.json)")
    verify.add_argument("--concurrency", type=_positive_int, default=None, help="parallel reads (S3)")
    verify.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    verify.set_defaults(func=lambda a: _call("verify", a))

    receive = cmds.add_parser("receive", help="an upload receiver pod: wait for a push into DIR, then check it",
                              description="Wait until `agent unpack` (run in this pod by kubectl ckpt push) commits "
                                          "an upload into DIR, then scan DIR and print the scan JSON with the "
                                          "verdict against the pushed manifest and --digest.")
    receive.add_argument("dir")
    receive.add_argument("--digest", default=None, metavar="sha256:HEX", help="the digest the data must have")
    receive.add_argument("--sync", action="store_true",
                         help="then syncfs(2) DIR's filesystem and say so (\"synced\": \"syncfs\"): a volume snapshot follows")
    receive.add_argument("--idle", type=float, default=900, metavar="SECONDS",
                         help="give up after this long without a push under way (prints received: false)")
    receive.add_argument("--max-size", default=None, metavar="BYTES", help="refuse more than this")
    receive.set_defaults(func=lambda a: _call("transfer", a))

    unpack = cmds.add_parser("unpack", help="write a pushed checkpoint (a tar stream on stdin) into DIR",
                             description="Read a tar stream on stdin (the manifest first, then files it lists), "
                                         "write each verified file into DIR, then commit (see agent receive).")
    unpack.add_argument("dir")
    unpack.add_argument("--max-size", default=None, metavar="BYTES", help="refuse more than this")
    unpack.add_argument("--name", default=None, help="the pushed directory's name (the step may be read from it)")
    unpack.set_defaults(func=lambda a: _call("transfer", a))

    pack = cmds.add_parser("pack", help="write the checkpoint in DIR as a tar stream on stdout (a pull)",
                           description="Write DIR's files (its stored manifest first, when it has one) as a tar "
                                       "stream on stdout.")
    pack.add_argument("dir")
    pack.add_argument("--session-dir", default=None, help="where `agent hold` sees this pull (the pull pod's)")
    pack.add_argument("--manifest", default=None, metavar="FILE",
                      help="the checkpoint's manifest stored elsewhere (the volume store's .ckpt-manifests/)")
    pack.add_argument("--digest", default=None, help="the recorded digest: DIR's stored manifest is sent (and gives "
                                                     "the files) only when it has this digest")
    pack.set_defaults(func=lambda a: _call("transfer", a))

    hold = cmds.add_parser("hold", help="a pull pod: wait until the pulls run in the pod are over",
                           description="Exit once a pull (agent pack --session-dir) was served and none is under "
                                       "way, or after --idle seconds without one.")
    hold.add_argument("--session-dir", required=True)
    hold.add_argument("--idle", type=float, default=900, metavar="SECONDS")
    hold.set_defaults(func=lambda a: _call("transfer", a))


def _live_union_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", default=None, metavar="PATH",
                        help="with --parts: only the checkpoint directory PATH (a live union: output.publish "
                             "Continuous; on the s3 store uploaded to UPLOAD_TO/sealed/PATH/<digest>/)")
    parser.add_argument("--expect", action="append", default=None, metavar="WORKER=DIGEST",
                        help="with --only: the part worker WORKER's sidecar sealed, with this digest; a part with "
                             "other bytes now makes PATH skipped, named")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value}: must be more than 0")
    return value


def _terminate(signum, frame) -> None:
    from checkpoint_operator.protocol.errors import Terminated
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def _call(module: str, args: argparse.Namespace, sigterm_finishes: bool = False) -> int:
    """Run one agent command: exit 0 on success, 1 with one `error: ...` line on a failure, 130
    (Ctrl-C) or 143 (SIGTERM) after cleaning up, never a traceback for an expected failure.
    `sigterm_finishes` (watch): SIGTERM asks the command to finish its work (`args.stop` is set),
    from here on, so one that comes while the command is still importing is not lost. Whatever
    the command writes on stderr has the environment's credentials masked (agent/redact.py)."""
    from checkpoint_operator.agent.redact import redacted_stderr
    with redacted_stderr():
        return _run_command(module, args, sigterm_finishes)


def _run_command(module: str, args: argparse.Namespace, sigterm_finishes: bool) -> int:
    import gc
    import importlib

    from checkpoint_operator.protocol.errors import AgentError, one_line
    if sigterm_finishes:
        args.stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: args.stop.set())
    else:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        # Held until now by local mode's zygote (see checkpoint_operator.cli.accept_sigterm).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        # Importing boto3 and pydantic makes ~10^5 long-lived objects and no garbage: the cyclic
        # GC passes the imports trigger are pure start-up cost. Frozen afterwards, they are also
        # never scanned again by later collections.
        gc.disable()
        try:
            mod = importlib.import_module(f"checkpoint_operator.agent.{module}")
        finally:
            gc.freeze()
            gc.enable()
        return int(mod.main(args) or 0)
    except AgentError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))  # a Refusal: REFUSED_EXIT_CODE, not to be retried
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", 130)
        print(f"error: agent {args.agent_command} interrupted ({'SIGTERM' if code == 143 else 'Ctrl-C'}); "
              f"rerun to resume", file=sys.stderr)
        return code
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: agent {args.agent_command}: {one_line(str(exc.strerror or exc))}{one_line(where)}",
              file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug: show where, then the one line
        traceback.print_exc()
        print(f"error: agent {args.agent_command}: unexpected {type(exc).__name__}: {exc} (a bug: please report "
              f"it with the traceback above)", file=sys.stderr)
        return 1
