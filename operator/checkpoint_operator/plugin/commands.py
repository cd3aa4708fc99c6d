"""The commands of `kubectl ckpt` (the same as `checkpoint-operator ckpt`): ls, lineage, verify,
pull, push. Each returns an exit code (0 done, 1 failed); a failure the user must act on is a
PluginError, one line naming the object and what is wrong.

Where the data moves (docs/kubectl-ckpt.md): on the s3 store the plugin reads and writes the
bucket itself with the user's credentials, through the agent's resumable upload and verifying
download; on the volume store it streams through a short pod that the operator starts on
request (exec, a tar stream; the pod's agent checks every file). Verification is always the
operator's: the plugin asks (an annotation), the operator's pod re-reads the data and the
status writer records the condition Verified.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Iterator
from typing import Any, Callable, Optional, TextIO, TypeVar, get_args

import yaml

from checkpoint_operator import API_VERSION
from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, Manifest
from checkpoint_operator.protocol.names import printable
from checkpoint_operator.agent.progress import Progress, human_bytes
from checkpoint_operator.api.checkpoint import (Checkpoint, CheckpointFormat, CheckpointHead, CheckpointPhase,
                                               CheckpointSpec, CheckpointStatus)
from checkpoint_operator.api.upload import (PULL_REQUEST_ANNOTATION, UPLOAD_DIGEST_ANNOTATION,
                                            UPLOAD_REQUEST_ANNOTATION, VERIFY_REQUEST_ANNOTATION, UploadStatus)
from checkpoint_operator.kube import CHECKPOINTS, CLUSTER_CHECKPOINTS, PVCS
from checkpoint_operator.logic import transfers
from checkpoint_operator.logic.agent_pods import pod_problem
from checkpoint_operator.logic.quantity import format_size
from checkpoint_operator.logic.workload import IMPORT_SIZE_ANNOTATION
from checkpoint_operator.logic.catalog import LABEL_CLUSTER_CHECKPOINT
from checkpoint_operator.plugin import usage, views
from checkpoint_operator.plugin.client import Cluster, ExecSession, PluginError, check_name

FORMATS = get_args(CheckpointFormat)
T = TypeVar("T")
POLL = 0.5
EXEC_START_SECONDS = 15.0  # a container reported Running may still be starting its process
MiB = 1024 * 1024


@dataclass
class Io:
    out: TextIO
    err: TextIO

    def note(self, message: str) -> None:
        print(message, file=self.err, flush=True)


def print_object(obj: Any, output: Optional[str], io: Io) -> None:
    if output == "yaml":
        io.out.write(yaml.safe_dump(obj, sort_keys=False))
    else:
        io.out.write(json.dumps(obj, indent=2) + "\n")


def request_value() -> str:
    """Names one request: a timestamp made unique (two requests in one second stay apart)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") + "-" + secrets.token_hex(3)


def get_checkpoint(cluster: Cluster, name: str) -> CheckpointHead:
    return views.read_checkpoint(cluster.get_checkpoint(name))


def wait_for(cluster: Cluster, name: str, done: Callable[[CheckpointHead], Optional[T]], timeout: float,
             what: str) -> T:
    """Poll the Checkpoint until `done(checkpoint)` is truthy; PluginError naming `what` at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        checkpoint = get_checkpoint(cluster, name)
        result = done(checkpoint)
        if result:
            return result
        if time.monotonic() > deadline:
            ready = next((c for c in checkpoint.status.conditions or [] if c.type == "Ready"), None)
            raise PluginError(f"timed out after {timeout:.0f} s waiting for {what} (is the operator running? "
                              f"Checkpoint {name} is {checkpoint.phase}: "
                              f"{(ready.message if ready else None) or 'no condition yet'})")
        time.sleep(POLL)


def require_ready(checkpoint: CheckpointHead, doing: str) -> CheckpointStatus:
    if checkpoint.phase != CheckpointPhase.READY:
        raise PluginError(f"Checkpoint {checkpoint.metadata.name} is {checkpoint.phase}, not Ready: only a Ready "
                          f"Checkpoint can be {doing} ({checkpoint.status.message or 'no message'})")
    return checkpoint.status


# --- ls, lineage -----------------------------------------------------------------------------------

def each_checkpoint(cluster: Cluster, all_namespaces: bool = False) -> Iterator[dict[str, Any]]:
    """The Checkpoints, read in pages: each view keeps only what it shows of each (memory bounded by a
    page and the output, not by the namespace: 100,000 Checkpoints held whole were 2 GiB)."""
    if all_namespaces:
        yield from cluster.each("list Checkpoints in all namespaces", CHECKPOINTS, None)
        return
    found = False
    for body in cluster.each(f"list Checkpoints in namespace {cluster.namespace}", CHECKPOINTS, cluster.namespace):
        found = True
        yield body
    if not found:
        cluster.check_namespace()


def list_checkpoints(cluster: Cluster, all_namespaces: bool = False) -> list[dict[str, Any]]:
    """Every Checkpoint whole: for -o json/yaml, which prints them whole."""
    return list(each_checkpoint(cluster, all_namespaces))


def list_catalog(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.call("list ClusterCheckpoints (the catalog)", lambda: cluster.api.list(CLUSTER_CHECKPOINTS, None),
                        served="clustercheckpoints.ckpt.dev")


def catalog_if_readable(cluster: Cluster, io: Io) -> list[dict[str, Any]]:
    """The catalog where it only adds to the answer (ls -A, du -A, lineage): a cluster without the
    ClusterCheckpoint CRD (an older operator) or a user who may not list it still gets the rest, with a note."""
    try:
        return list_catalog(cluster)
    except PluginError as exc:
        io.note(f"warning: {exc} (the catalog is left out)")
        return []


def cmd_ls(cluster: Cluster, args: argparse.Namespace, io: Io) -> int:
    if args.catalog:
        return _ls_catalog(cluster, args, io)
    def wanted(checkpoint: CheckpointHead) -> bool:
        return not args.job or views.producer(checkpoint) == f"tj/{args.job}"
    wide, now = args.output == "wide", datetime.now(timezone.utc)
    items: list[dict[str, Any]] = []
    rows: list[tuple[tuple[str, str], list[str]]] = []
    if args.output in ("json", "yaml"):  # printed whole: held whole
        items = [b for b in list_checkpoints(cluster, args.all_namespaces) if wanted(views.read_checkpoint(b))]
    else:  # a table: each Checkpoint's row made as its page is read, the page then dropped
        rows = [((c.metadata.namespace, c.metadata.name), views.ls_row(c, wide=wide, namespaces=args.all_namespaces,
                                                                       now=now))
                for c in map(views.read_checkpoint, each_checkpoint(cluster, args.all_namespaces)) if wanted(c)]
    # -A: the catalog too (cluster-scoped entries every namespace may use), in rows of their own.
    entries = catalog_if_readable(cluster, io) if args.all_namespaces and not args.job else []
    if args.output in ("json", "yaml"):
        print_object({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items + entries}, args.output, io)
        return 0
    if not rows and not entries:
        where = "any namespace" if args.all_namespaces else f"namespace {cluster.namespace}"
        io.note(f"No Checkpoints found in {where}" + (f" written by TrainingJob {args.job}." if args.job else "."))
        return 0
    for entry in map(views.as_catalog_row, entries):
        rows.append(((entry.metadata.namespace, entry.metadata.name),
                     views.ls_row(entry, wide=wide, namespaces=args.all_namespaces, now=now)))
    rows.sort(key=lambda keyed: keyed[0])
    io.out.write(views.table(views.ls_headers(wide=wide, namespaces=args.all_namespaces),
                             [row for _, row in rows]) + "\n")
    return 0


def _ls_catalog(cluster: Cluster, args: argparse.Namespace, io: Io) -> int:
    entries = list_catalog(cluster)
    if args.output in ("json", "yaml"):
        print_object({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": entries}, args.output, io)
        return 0
    if not entries:
        io.note("The catalog is empty: no ClusterCheckpoints (a cluster administrator creates them, docs/catalog.md).")
        return 0
    io.out.write(views.catalog_table(map(views.read_catalog_entry, entries), wide=args.output == "wide") + "\n")
    return 0


# --- du -------------------------------------------------------------------------------------------

MAX_LISTED_OBJECTS = 10_000_000  # a listing is summed as it goes (memory bounded); this bounds its time


def cmd_du(cluster: Cluster, args: argparse.Namespace, io: Io) -> int:
    rows = usage.referenced(each_checkpoint(cluster, args.all_namespaces))  # summed page by page
    if not args.all_namespaces:
        rows.setdefault(cluster.namespace, usage.Usage(cluster.namespace))
    if args.catalog or args.all_namespaces:
        entries = list_catalog(cluster) if args.catalog else catalog_if_readable(cluster, io)
        for namespace, found in usage.referenced(entries).items():
            rows[namespace] = found
    claims = cluster.call("list PersistentVolumeClaims", lambda: cluster.api.list(
        PVCS, None if args.all_namespaces else cluster.namespace))
    catalog_claims: list[dict[str, Any]] = []
    catalog_row = rows.get(usage.CATALOG_ROW)
    if catalog_row is not None and catalog_row.claims:  # the catalog's own claims: in the operator's namespace
        catalog_claims = claims if args.all_namespaces else _catalog_claims(cluster, catalog_row)
        catalog_claims = [c for c in catalog_claims if LABEL_CLUSTER_CHECKPOINT in
                          ((c.get("metadata") or {}).get("labels") or {})]
    usage.attach_copies(rows, claims, LABEL_CLUSTER_CHECKPOINT, args.all_namespaces)
    index = usage.ClaimIndex.of(claims, catalog_claims)
    for row in rows.values():
        usage.measure_claims(row, index)
        _measure_prefixes(row, args.endpoint_url)
    ordered = sorted(rows.values(), key=lambda r: (r.namespace == usage.CATALOG_ROW, r.namespace))
    if args.output in ("json", "yaml"):
        print_object({"namespaces": [r.to_json() for r in ordered]}, args.output, io)
    else:
        io.out.write(usage.du_table(ordered) + "\n")
    for row in ordered:
        for problem in row.problems:
            io.note(f"warning: {row.namespace}: {problem}")
    return 0


def _catalog_claims(cluster: Cluster, row: usage.Usage) -> list[dict[str, Any]]:
    """The catalog entries' claims, of whatever namespace the operator runs in (a cluster-wide list by
    label); a user not allowed it gets the catalog's STORED as unknown, saying why."""
    try:
        return list(cluster.call("list the catalog's PersistentVolumeClaims in all namespaces",
                                 lambda: cluster.api.list(PVCS, None, label_selector=LABEL_CLUSTER_CHECKPOINT)))
    except PluginError as exc:
        row.problems.append(str(exc))
        row.unmeasured = True
        return []


def _measure_prefixes(row: usage.Usage, endpoint_url: Optional[str]) -> None:
    """The objects under the namespace's prefix, with the user's credentials: summed as listed."""
    if not row.s3_prefixes:
        return
    from checkpoint_operator.objectstore.s3 import describe_error, list_objects, make_client, parse_s3_uri
    client = make_client(endpoint_url)
    total, count = 0, 0
    for prefix in row.s3_prefixes:
        try:
            for obj in list_objects(client, parse_s3_uri(prefix)):
                total += int(obj.get("Size") or 0)
                count += 1
                if count >= MAX_LISTED_OBJECTS:
                    row.problems.append(f"stopped after {count} objects: the figure is a lower bound")
                    break
        except Exception as exc:  # noqa: BLE001 - one line naming the prefix, the rest of the report stands
            row.problems.append(f"cannot list {prefix}: {describe_error(exc, prefix, endpoint_url)}")
            row.unmeasured = True
            return
    row.stored_s3, row.s3_objects = total, count


def cmd_lineage(cluster: Cluster, args: argparse.Namespace, io: Io) -> int:
    check_name("Checkpoint", args.name)
    items = [views.for_lineage(views.read_checkpoint(b)) for b in each_checkpoint(cluster)]
    from_catalog = any(p.kind == "ClusterCheckpoint" for c in items for p in c.parents)
    entries = map(views.read_catalog_entry, catalog_if_readable(cluster, io)) if from_catalog else ()
    lineage = views.build_lineage(items, args.name, entries)
    if lineage is None:
        cluster.get_checkpoint(args.name)  # says why (not found, no such namespace)
        raise PluginError(f'Checkpoint "{args.name}" not found in namespace {cluster.namespace}')
    if args.output in ("json", "yaml"):
        print_object(lineage.to_json(), args.output, io)
    else:
        io.out.write(views.render_lineage(lineage) + "\n")
    return 0


# --- verify ----------------------------------------------------------------------------------------

def cmd_verify(cluster: Cluster, args: argparse.Namespace, io: Io) -> int:
    status = require_ready(get_checkpoint(cluster, args.name), "verified")
    if args.local:
        return _verify_locally(status, args, io)
    value = request_value()
    cluster.annotate(args.name, {VERIFY_REQUEST_ANNOTATION: value})
    io.note(f"verification of {args.name} requested; the operator re-reads its data "
            f"({transfers.describe_location(status.location)})")
    wait_for(cluster, args.name, lambda c: c.metadata.annotation(VERIFY_REQUEST_ANNOTATION) != value, args.timeout,
             f"the operator to verify {args.name}")
    checkpoint = wait_for(cluster, args.name,
                          lambda c: c if not c.metadata.annotation(VERIFY_REQUEST_ANNOTATION) else None,
                          args.timeout, f"the operator to verify {args.name} (a newer request is under way)")
    condition = next((c for c in checkpoint.status.conditions or [] if c.type == "Verified"), None)
    result = {"name": args.name, "verified": condition.status if condition else "Unknown",
              "reason": condition.reason if condition else None, "message": condition.message if condition else None,
              "time": condition.lastTransitionTime if condition else None}
    if args.output in ("json", "yaml"):
        print_object(result, args.output, io)
    else:
        io.out.write(f"checkpoint.ckpt.dev/{args.name} Verified={result['verified']} ({result['reason']}) at "
                     f"{result['time']}: {result['message']}\n")
    return 0 if result["verified"] == "True" else 1


def _verify_locally(status: CheckpointStatus, args: argparse.Namespace, io: Io) -> int:
    """--local: read the objects from S3 with the user's own credentials; nothing is recorded."""
    from checkpoint_operator.agent.verify import MAX_PROBLEMS, verify_s3
    if status.location is None or status.location.s3 is None:
        raise PluginError(f"--local reads object storage, but Checkpoint {args.name} is on a volume "
                          f"({transfers.describe_location(status.location)}): verify it without --local")
    uri = status.location.s3.uri
    result = verify_s3(uri, status.digest, endpoint_url=args.endpoint_url)
    if args.output in ("json", "yaml"):
        print_object(result.summary() | {"checkpoints": None}, args.output, io)
    elif result.verified and result.manifest is not None:
        io.out.write(f"{args.name}: all {result.manifest.fileCount} files at {uri} match the manifest, digest "
                     f"{result.manifest.digest} (read locally; not recorded)\n")
    else:
        io.out.write(f"{args.name}: NOT verified at {uri} ({len(result.problems)} problems; read locally, not "
                     f"recorded):\n" + "".join(f"  {p.line()}\n" for p in result.problems[:MAX_PROBLEMS]))
    return 0 if result.verified else 1


# --- pull ------------------------------------------------------------------------------------------

def cmd_pull(cluster: Cluster, args: argparse.Namespace, io: Io) -> int:
    checkpoint = get_checkpoint(cluster, args.name)
    status = require_ready(checkpoint, "pulled")
    if os.path.exists(args.dir) and not os.path.isdir(args.dir):
        raise PluginError(f"{args.dir}: exists and is not a directory")
    clean = getattr(args, "clean", False)
    if status.location is not None and status.location.s3 is not None:
        from checkpoint_operator.agent.download import download_prefix
        from checkpoint_operator.objectstore.s3 import read_manifest
        uri = status.location.s3.uri
        manifest = read_manifest(uri, endpoint_url=args.endpoint_url)
        if status.digest and manifest.digest != status.digest:
            raise PluginError(f"{uri}: the checkpoint there has digest {manifest.digest}, not the recorded "
                              f"{status.digest}; refusing to pull it (the objects at this prefix were replaced)")
        make_room(args.dir, manifest, None, clean, io)
        result = download_prefix(uri, args.dir, digest=status.digest, manifest=manifest,
                                 endpoint_url=args.endpoint_url, log=io.note)
        manifest = result.manifest
    else:
        make_room(args.dir, None, status.digest, clean, io, early=True)
        manifest = _pull_through_pod(cluster, checkpoint, args, io)
    summary = {"name": args.name, "dir": args.dir, "digest": manifest.digest, "fileCount": manifest.fileCount,
               "sizeBytes": manifest.sizeBytes}
    if args.output in ("json", "yaml"):
        print_object(summary, args.output, io)
    else:
        io.out.write(f"pulled checkpoint.ckpt.dev/{args.name} into {args.dir}: {manifest.fileCount} files, "
                     f"{format_size(manifest.sizeBytes)}, every file verified, digest {manifest.digest}\n")
    return 0


def make_room(directory: str, manifest: Optional[Manifest], digest: Optional[str], clean: bool, io: Io,
              early: bool = False) -> None:
    """DIR may hold only what a pull of this checkpoint leaves (agent/pull_target.py); anything
    else refuses the pull, naming it, or with --clean is removed first. `early`: a volume pull
    before its stream begins (the file list comes with the stream): only a root manifest of
    another checkpoint is refused here, so that no pod is started for nothing."""
    from checkpoint_operator.agent import pull_target
    if manifest is not None and (refusal := pull_target.case_refusal(directory, manifest)):
        raise PluginError(refusal)
    if early and clean:
        return  # removed once the stream says what the checkpoint holds
    found = pull_target.examine(directory, manifest, digest)
    if early:
        found.foreign = [f for f in found.foreign if f.rel == MANIFEST_NAME]
        found.count = len(found.foreign)
    if not found.count:
        return
    if clean and not pull_target.pulled_into(directory, manifest):
        raise PluginError(f"{directory}: --clean empties only a directory a pull wrote, and this one holds no pull "
                          f"(no {MANIFEST_NAME} at its root, no download parts or file of the checkpoint where its "
                          f"files go) but {found.count} entries of its own "
                          f"(first {found.foreign[0].line()}): pull into a new or empty directory, or remove them "
                          f"yourself")
    if clean and (repository := pull_target.repository_in(directory, manifest)) is not None:
        raise PluginError(f"{directory}: holds {printable(repository)}/, a repository: --clean never removes one; "
                          f"pull into a new or empty directory")
    if clean:
        removed = pull_target.remove_foreign(directory, manifest, digest)
        for item in removed[:pull_target.MAX_LISTED]:
            io.note(f"  removed {item.line()}")
        io.note(f"--clean: removed {len(removed)} entries of {directory} that are not part of this checkpoint")
        return
    for item in found.foreign:
        io.note(f"  {item.line()}")
    if found.count > len(found.foreign):
        io.note(f"  ... and {found.count - len(found.foreign)} more")
    raise PluginError(f"{directory}: holds {found.count} entries that are not part of this checkpoint (listed above; "
                      f"first {found.foreign[0].line()}); pulling into it would mix them with the checkpoint: pull "
                      f"into a new or empty directory, or add --clean to remove them first")


def _pull_through_pod(cluster: Cluster, checkpoint: CheckpointHead, args: argparse.Namespace, io: Io) -> Manifest:
    from checkpoint_operator.agent.transfer import StreamReceiver
    name, status = args.name, checkpoint.status
    value = request_value()
    cluster.annotate(name, {PULL_REQUEST_ANNOTATION: value})
    pod = wait_for_pod(cluster, transfers.pull_pod_name(name), value, checkpoint.metadata.uid, args.timeout, io)
    session = start_exec(cluster, pod, "hold", transfers.pull_command(status.location, checkpoint.status.digest),
                         stdin=False)
    receiver_name = os.path.basename(os.path.abspath(args.dir))
    clean = getattr(args, "clean", False)
    try:
        with Progress("pull", status.sizeBytes or 0, stream=io.err) as progress:
            done = StreamReceiver(args.dir, pulled=True, digest=status.digest, where=f"the stream from pod {pod}",
                                  name=receiver_name, on_bytes=progress.add,
                                  before_writing=lambda manifest: make_room(args.dir, manifest, status.digest,
                                                                            clean, io)).run(session)
    except (AgentError, PluginError) as exc:
        session.close()
        raise PluginError(f"pull of {name}: {exc}") from None
    code = session.finish()
    if code != 0:
        raise PluginError(f"pull of {name}: pod {pod}: {session.last_error()}")
    if done.manifest is None:
        raise PluginError(f"pull of {name}: pod {pod} sent no manifest")
    return done.manifest


# --- push ------------------------------------------------------------------------------------------

def cmd_push(cluster: Cluster, args: argparse.Namespace, io: Io) -> int:
    name = check_name("Checkpoint", args.name)
    if not os.path.isdir(args.dir):
        raise PluginError(f"{args.dir}: not a directory (push takes the directory that holds the checkpoint)")
    manifest = local_manifest(args.dir, io)
    checkpoint = _upload_checkpoint(cluster, name, manifest, args, io)
    if checkpoint.phase == CheckpointPhase.READY:
        io.out.write(f"checkpoint.ckpt.dev/{name} is already Ready with this data (digest {manifest.digest}); "
                     f"nothing to push\n")
        return 0
    upload = wait_for(cluster, name, lambda c: c.status.upload, args.timeout,
                      f"the operator to say where {name}'s data goes (status.upload)")
    value = request_value()
    if upload.store == "s3":
        _push_to_s3(cluster, name, args, manifest, upload, io)
        cluster.annotate(name, {UPLOAD_REQUEST_ANNOTATION: value})
    else:
        cluster.annotate(name, {UPLOAD_REQUEST_ANNOTATION: value})
        _push_through_pod(cluster, checkpoint, args, manifest, value, io)
    io.note(f"pushed; the operator verifies {name}")
    checkpoint = wait_for(cluster, name, lambda c: c if _push_settled(c, value) else None, args.timeout,
                          f"the operator to verify {name}")
    status = checkpoint.status
    if checkpoint.phase != CheckpointPhase.READY:
        raise PluginError(f"Checkpoint {name} is {checkpoint.phase}: {status.message}")
    if args.output in ("json", "yaml"):
        print_object({"name": name, "phase": "Ready", "digest": status.digest, "fileCount": status.fileCount,
                      "sizeBytes": status.sizeBytes, "format": status.format, "step": status.step,
                      "location": status.location.to_wire() if status.location else None}, args.output, io)
    else:
        io.out.write(f"checkpoint.ckpt.dev/{name} Ready: {status.fileCount} files, {status.size}, "
                     f"format {status.format}, step {views._text(status.step)}, digest {status.digest}\n")
    return 0


def _push_settled(checkpoint: CheckpointHead, value: str) -> bool:
    """Ready or Failed; or back to waiting with the request dropped (the receiver gave up)."""
    return checkpoint.phase.is_settled or (checkpoint.phase == CheckpointPhase.PENDING and
                                           checkpoint.metadata.annotation(UPLOAD_REQUEST_ANNOTATION) != value)


# Entries of DIR listed one per line when a push is refused (all are counted).
MAX_REFUSED_LISTED = 50


def local_manifest(directory: str, io: Io) -> Manifest:
    """The checkpoint in DIR: every file, links followed as `cp -L` does (the user's own
    machine and files: a Hugging Face cache snapshot, DVC or NFS layout is links into a store
    beside DIR). Anything of DIR that would not be part of the checkpoint (a broken link, a
    fifo, an unreadable file, a name outside the names rule) refuses the push, listing them:
    a push never stores less than DIR."""
    from pathlib import Path

    from checkpoint_operator.agent.scan import scan_directory
    from checkpoint_operator.agent.tree import entry_limit
    io.note(f"hashing the files of {directory} ...")
    result = scan_directory(Path(directory), single=True, follow_links=True, max_entries=entry_limit())
    left_out = [s for s in result.skipped if s.path != "."]  # "." alone: DIR has no file at all
    count = result.skippedCount - (len(result.skipped) - len(left_out))
    if count:
        for s in left_out[:MAX_REFUSED_LISTED]:
            io.note(f"  {s.path}: {s.reason}")
        if count > MAX_REFUSED_LISTED:
            io.note(f"  ... and {count - MAX_REFUSED_LISTED} more")
        first = left_out[0]
        raise PluginError(f"{directory}: {count} entries would not be part of the checkpoint (listed above; first "
                          f"'{first.path}': {first.reason}); nothing pushed: fix, rename or remove them "
                          f"(docs/kubectl-ckpt.md, what a push takes)")
    if not result.checkpoints:
        raise PluginError(f"{directory}: no files to push (the directory holds no regular file)")
    manifest = result.checkpoints[0]
    io.note(f"{manifest.fileCount} files, {human_bytes(manifest.sizeBytes)}, digest {manifest.digest}")
    return manifest


def _upload_checkpoint(cluster: Cluster, name: str, manifest: Manifest, args: argparse.Namespace,
                       io: Io) -> CheckpointHead:
    """The upload Checkpoint to push into: created, or an existing one that expects this data."""
    from checkpoint_operator.kube import Conflict
    body = cluster.call(f"get Checkpoint {name}", lambda: cluster.api.get(CHECKPOINTS, cluster.namespace, name))
    if body is None:
        cluster.check_namespace()
        new = new_upload_checkpoint(name, cluster.namespace, manifest, args.format, args.description)

        def create() -> Optional[dict[str, Any]]:
            try:
                return cluster.api.create(CHECKPOINTS, cluster.namespace, new)
            except Conflict:  # made meanwhile (another push): take it as it is
                return None
        body = cluster.call(f"create Checkpoint {name}", create)
        if body is not None:
            io.note(f"checkpoint.ckpt.dev/{name} created")
            return views.read_checkpoint(body)
        body = cluster.get_checkpoint(name)
    return _existing_upload(cluster, views.read_checkpoint(body), manifest, args)


def _existing_upload(cluster: Cluster, checkpoint: CheckpointHead, manifest: Manifest,
                     args: argparse.Namespace) -> CheckpointHead:
    meta, status = checkpoint.metadata, checkpoint.status
    name = meta.name
    if not isinstance(checkpoint, Checkpoint):
        raise PluginError(f"Checkpoint {name} exists and its spec cannot be read by this version of kubectl ckpt: "
                          f"push to another name")
    source = checkpoint.spec.source
    if source.upload is None:
        raise PluginError(f"Checkpoint {name} exists and its source is {source.kind}, not upload: push "
                          f"to another name")
    if checkpoint.phase == CheckpointPhase.READY:
        if status.digest == manifest.digest:
            return checkpoint
        raise PluginError(f"Checkpoint {name} is Ready with other data (digest {status.digest}, this directory "
                          f"has {manifest.digest}); a Checkpoint is immutable: push to another name")
    if checkpoint.phase == CheckpointPhase.FAILED:
        raise PluginError(f"Checkpoint {name} failed: {status.message}; delete it (kubectl delete ckpt {name}) "
                          f"and push again")
    if args.format and checkpoint.spec.format not in (None, args.format):
        raise PluginError(f"Checkpoint {name} has spec.format {checkpoint.spec.format}, not {args.format} (spec is "
                          f"immutable)")
    declared = meta.annotation(UPLOAD_DIGEST_ANNOTATION)
    if declared and declared != manifest.digest:
        raise PluginError(f"Checkpoint {name} expects data with digest {declared} (annotation "
                          f"{UPLOAD_DIGEST_ANNOTATION}), but {args.dir} has {manifest.digest}: push the directory it "
                          f"was made for, or delete {name}")
    if not declared or meta.annotation(IMPORT_SIZE_ANNOTATION) is None:
        return views.read_checkpoint(cluster.annotate(name, upload_annotations(manifest) | (
            {UPLOAD_DIGEST_ANNOTATION: declared} if declared else {})))
    return checkpoint


def upload_annotations(manifest: Manifest) -> dict[str, str]:
    """The digest the data must have, and the volume it needs (a margin for the filesystem)."""
    size = math.ceil((manifest.sizeBytes * 1.1 + 64 * MiB) / MiB)
    return {UPLOAD_DIGEST_ANNOTATION: manifest.digest, IMPORT_SIZE_ANNOTATION: f"{size}Mi"}


def new_upload_checkpoint(name: str, namespace: str, manifest: Manifest, format_: Optional[str],
                          description: Optional[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": {"upload": {}}}
    if format_:
        spec["format"] = format_
    if description:
        spec["description"] = description
    CheckpointSpec.model_validate(spec)  # the CRD's rules, before the API server sees it
    return {"apiVersion": API_VERSION, "kind": "Checkpoint",
            "metadata": {"name": name, "namespace": namespace, "annotations": upload_annotations(manifest),
                         "labels": {"app.kubernetes.io/created-by": "kubectl-ckpt"}},
            "spec": spec}


def _push_to_s3(cluster: Cluster, name: str, args: argparse.Namespace, manifest: Manifest, upload: UploadStatus, io: Io) -> None:
    """Straight into the bucket with the user's credentials: the agent's resumable upload."""
    from checkpoint_operator.objectstore.s3 import resolve_endpoint
    from checkpoint_operator.agent.upload import upload_dir
    if not upload.uri:
        raise PluginError(f"Checkpoint {name}: status.upload names the s3 store but no uri")
    endpoint = args.endpoint_url or resolve_endpoint() or upload.endpoint
    io.note(f"uploading to {upload.uri}" + (f" (endpoint {endpoint})" if endpoint else ""))
    try:
        # The store's layout: blobs beside the Checkpoint's prefix, shared with the namespace's other data.
        from checkpoint_operator.objectstore.blobs import blob_root_of
        upload_dir(args.dir, upload.uri, manifest=manifest, endpoint_url=endpoint, follow_links=True, log=io.note,
                   blobs=blob_root_of(upload.uri))
    except AgentError as exc:
        raise PluginError(f"push of {name}: {exc} ({rerun_advice(cluster, name, args.dir, manifest)})") from None


def _push_through_pod(cluster: Cluster, checkpoint: CheckpointHead, args: argparse.Namespace, manifest: Manifest,
                      value: str, io: Io) -> None:
    """Into the receiver pod on the Checkpoint's PVC: a tar stream (the manifest first) on the
    stdin of `agent unpack`; only what an interrupted push did not leave there is sent."""
    from checkpoint_operator.agent.tarstream import TarWriter
    from checkpoint_operator.agent.tree import locate_file
    name = args.name
    pod = wait_for_pod(cluster, transfers.upload_pod_name(name), value, checkpoint.metadata.uid, args.timeout, io)
    there = remote_inventory(cluster, pod)
    to_send = [e for e in manifest.files if there.get(e.path) != (e.size, e.sha256)]
    if len(to_send) < manifest.fileCount:
        io.note(f"{manifest.fileCount - len(to_send)} files are in pod {pod} already (an earlier push); sending the "
                f"other {len(to_send)}")
    command = transfers.push_command(None, os.path.basename(os.path.abspath(args.dir)))
    session = start_exec(cluster, pod, "receive", command, stdin=True)
    try:
        with Progress("push", sum(e.size for e in to_send), stream=io.err) as progress:
            writer = TarWriter(session, on_bytes=progress.add)
            writer.add_bytes(MANIFEST_NAME, manifest.to_json().encode())
            for entry in to_send:
                writer.add_file(entry.path, locate_file(args.dir, entry.path, follow_links=True)[0], entry.size)
            writer.close()
        session.close_stdin()
    except BrokenPipeError:
        pass  # the command ended early: its error line says why
    except (AgentError, OSError) as exc:
        session.close()
        raise PluginError(f"push of {name}: {exc}") from None
    code = session.finish(timeout=args.timeout)
    if code != 0:
        raise PluginError(f"push of {name} into pod {pod}: {session.last_error()} "
                          f"({rerun_advice(cluster, name, args.dir, manifest)})")


def rerun_advice(cluster: Cluster, name: str, directory: str, manifest: Manifest) -> str:
    """What to do after a push that failed: rerun it (what arrived is kept), unless DIR no longer
    holds what was hashed. Then a rerun is refused (the Checkpoint expects the first digest: hostile1
    D11), and the way on is a new Checkpoint once DIR stops changing. Re-reads DIR's files once."""
    from checkpoint_operator.agent.hashing import hash_files
    from checkpoint_operator.agent.tree import locate_file
    try:
        paths = [locate_file(directory, e.path, follow_links=True)[0] for e in manifest.files]
    except (AgentError, OSError):
        paths = []
    now = hash_files(paths, sizes=[e.size for e in manifest.files]) if paths else []
    changed = [e.path for e, got in zip(manifest.files, now) if got != (e.size, e.sha256)]
    if paths and not changed:
        return "rerun to resume"
    first = f" ('{printable(changed[0])}'{f' and {len(changed) - 1} more' if len(changed) > 1 else ''})" if changed else ""
    return (f"{directory} changed since it was hashed{first}: Checkpoint {name} expects digest {manifest.digest}, so a "
            f"rerun is refused; once the files stop changing, delete it (kubectl delete checkpoint {name} -n "
            f"{cluster.namespace}) and push again")


def remote_inventory(cluster: Cluster, pod: str) -> dict[str, tuple[int, str]]:
    """What the receiver holds already (path -> size, sha256); empty when it holds nothing."""
    session = start_exec(cluster, pod, "receive", transfers.inventory_command(), stdin=False)
    output = session.read()
    if session.finish() != 0:
        return {}
    try:
        scan = json.loads(output.decode().strip().splitlines()[-1])
        files = scan["checkpoints"][0]["files"] if scan.get("checkpoints") else []
        return {f["path"]: (f["size"], f["sha256"]) for f in files}
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        return {}


# --- pods that serve a request ------------------------------------------------------------------------

def wait_for_pod(cluster: Cluster, pod_name: str, value: str, owner_uid: str, timeout: float, io: Io) -> str:
    """The operator's pod for request `value`, once it runs."""
    deadline = time.monotonic() + timeout
    said = None
    while True:
        pod = cluster.get_pod(pod_name)
        meta = (pod or {}).get("metadata") or {}
        ours = pod is not None and transfers.served_request(pod) == value and \
            any(ref.get("uid") == owner_uid for ref in meta.get("ownerReferences") or [])
        if pod is not None and ours:
            phase = (pod.get("status") or {}).get("phase")
            if phase == "Running":
                return pod_name
            if phase in ("Succeeded", "Failed"):
                raise PluginError(f"pod {pod_name} ended ({phase}) before the transfer began; try again")
            problem = pod_problem(pod)
            if problem and problem.message != said:
                io.note(f"waiting: {problem.message}")
                said = problem.message
        if time.monotonic() > deadline:
            raise PluginError(f"timed out after {timeout:.0f} s waiting for the operator's pod {pod_name} to run "
                              f"(is the operator running?)")
        time.sleep(POLL)


def start_exec(cluster: Cluster, pod: str, container: str, command: list[str], *, stdin: bool) -> ExecSession:
    """An exec session; retried while the container is still starting its process."""
    deadline = time.monotonic() + EXEC_START_SECONDS
    while True:
        try:
            return cluster.exec(pod, container, command, stdin=stdin)
        except PluginError as exc:
            if "is not running" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(POLL)


COMMANDS = {"ls": cmd_ls, "lineage": cmd_lineage, "verify": cmd_verify, "pull": cmd_pull, "push": cmd_push,
            "du": cmd_du}

__all__ = ["COMMANDS", "FORMATS", "Io", "PluginError"]
