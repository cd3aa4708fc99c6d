"""The agent command lines the operator puts into pods, built in one place.

tests/agent/test_commands.py parses every one of them with the real parser of agent/cli.py,
so a flag renamed on one side fails a test instead of a pod.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from checkpoint_operator.protocol import published as published_list

AGENT = ("checkpoint-operator", "agent")
Layout = str  # "auto" | "directories" | "files" (api.trainingjob.OutputSpec.layout)


def _parts(parts: Optional[int], per_worker: bool) -> list[str]:
    return [*(["--parts", str(parts)] if parts else []), *(["--per-worker"] if parts and per_worker else [])]


def scan(directory: str, *, layout: Layout = "auto", single: bool = False, result: bool = True,
         manifests_dir: Optional[str] = None, sync: bool = False, parts: Optional[int] = None,
         per_worker: bool = False) -> list[str]:
    """The scan of DIR (volume store snapshots, adoption of a volume path): `result`, the bounded
    result line the operator reads (protocol/results.py), else every manifest as JSON; the full
    manifests written to `manifests_dir` (beside the data, never inside a checkpoint; with `parts`,
    to MANIFESTS_DIR of a worker's own directory: --part-manifests). `sync`: then syncfs the filesystem (a volume snapshot of
    it follows), reported in the result. `parts`: DIR/worker-<i> are that many workers' outputs
    (agent/parts.py)."""
    return [*AGENT, "scan", directory, *(["--single"] if single else ["--layout", layout]),
            *_parts(parts, per_worker), "--result" if result else "--json",
            *((["--part-manifests"] if parts else ["--manifests-dir", manifests_dir]) if manifests_dir else []),
            *(["--sync"] if sync else [])]


def snapshot(directory: str, upload_to: str, *, layout: Layout = "auto", single: bool = False,
             reuse_sealed: bool = False, parts: Optional[int] = None, per_worker: bool = False) -> list[str]:
    """Scan DIR and upload each checkpoint under UPLOAD_TO (s3 store); writes the scan's result line.
    `reuse_sealed`: a checkpoint the sealing sidecar uploaded already (same digest) is not sent again."""
    return [*AGENT, "snapshot", directory, *(["--single"] if single else ["--layout", layout]),
            "--upload-to", upload_to, *(["--reuse-sealed"] if reuse_sealed else []), *_parts(parts, per_worker)]


def resume_parts(directory: str, *, parts: int, layout: Layout = "auto", keep: Optional[str] = None,
                 published: Iterable[str] = ()) -> list[str]:
    """Between the attempts of a group with a volume per worker: copy the latest checkpoint complete over
    the workers' volumes (DIR/worker-<i>) into each one's .ckpt-resume/<digest hex>, keeping the copy
    `keep` (the one recorded last); every part a sidecar sealed of a directory not `published` gets its
    write bits back; writes the result line. The directories go in ONE argument whatever their count
    (`--published-list=VALUE`, protocol/published.py: the admission policy admits 300 arguments), a
    name that starts with '-' (`--ckpt-5`) inside it; `--keep-sealed` instead when they do not fit."""
    return [*AGENT, "resume-parts", directory, "--parts", str(parts), "--layout", layout,
            *(["--keep", keep] if keep else []), *published_list.resume_args(published)]


def download(uri: str, directory: str, *, digest: str) -> list[str]:
    """Download and verify a checkpoint pinned to `digest`: a manifest with another digest (the
    prefix was rewritten after the Checkpoint became Ready) is refused before a byte moves."""
    return [*AGENT, "download", uri, directory, "--digest", digest]


def cache_fill(uri: str, root: str, *, key: str, size: int, capacity: int, verify: str, result_file: str) -> list[str]:
    """Make the input at `uri` a verified entry `key` of the node cache mounted at `root` (downloaded
    once per node, pinned to the key's digest), reporting to `result_file` (the termination message)."""
    return [*AGENT, "cache-fill", uri, root, "--key", key, "--size", str(size), "--capacity", str(capacity),
            "--verify", verify, "--result-file", result_file]


def cache_hold(root: str, keys: list[str]) -> list[str]:
    """The pod's native sidecar: hold its cache entries until SIGTERM (never evicted while it runs)."""
    return [*AGENT, "cache-hold", root, *[arg for key in keys for arg in ("--key", key)]]


def import_(source: str, dest: str, *, max_size: Optional[int] = None, max_files: Optional[int] = None,
            source_args: Sequence[str] = (), replace_earlier: bool = False) -> list[str]:
    """Copy SOURCE into DEST, refusing more than `max_size` bytes or `max_files` files.
    `source_args`: the source's own flags (logic/import_sources.py: --include, --lfs, --ca-file...).
    `replace_earlier`: an earlier import's output in DEST is removed first (DEST on the
    Checkpoint's own claim: a pod deleted unread after a restart may have committed there)."""
    return [*AGENT, "import", source, dest, *(["--max-size", str(max_size)] if max_size is not None else []),
            *(["--max-files", str(max_files)] if max_files is not None else []), *source_args,
            *(["--replace-earlier-import"] if replace_earlier else [])]


# --- verify, and push/pull over exec (agent/transfer.py) -----------------------------------------

def verify(location: str, *, digest: Optional[str] = None, max_size: Optional[int] = None,
           manifest: Optional[str] = None) -> list[str]:
    """Re-read a checkpoint (s3://prefix/ or a directory) and check it against its manifest
    (`manifest`: a directory's, stored elsewhere); writes the result line the operator reads."""
    return [*AGENT, "verify", location, *(["--digest", digest] if digest else []),
            *(["--max-size", str(max_size)] if max_size is not None else []),
            *(["--manifest", manifest] if manifest else []), "--result"]


def receive(directory: str, *, digest: str, idle: float, max_size: Optional[int] = None,
            sync: bool = False) -> list[str]:
    """An upload receiver: wait for a push into DIR (agent unpack, run by exec), then check it.
    `sync`: then syncfs DIR's filesystem (a volume snapshot of it follows), reported in its result."""
    return [*AGENT, "receive", directory, "--digest", digest, "--idle", f"{idle:g}",
            *(["--max-size", str(max_size)] if max_size is not None else []), *(["--sync"] if sync else [])]


def unpack(directory: str, *, max_size: Optional[int] = None, name: Optional[str] = None) -> list[str]:
    """Write the tar stream on stdin into DIR and commit it (what `kubectl ckpt push` execs)."""
    return [*AGENT, "unpack", directory, *(["--max-size", str(max_size)] if max_size is not None else []),
            *(["--name", name] if name else [])]


def pack(directory: str, *, session_dir: Optional[str] = None, digest: Optional[str] = None,
         manifest: Optional[str] = None) -> list[str]:
    """Write the checkpoint in DIR as a tar stream on stdout (what `kubectl ckpt pull` execs); its
    stored manifest (`manifest`: stored beside the data, else DIR's own) only when it has the
    recorded `digest`."""
    return [*AGENT, "pack", directory, *(["--session-dir", session_dir] if session_dir else []),
            *(["--digest", digest] if digest else []), *(["--manifest", manifest] if manifest else [])]


def hold(session_dir: str, *, idle: float) -> list[str]:
    """A pull pod's main container: until the pulls in the pod are over."""
    return [*AGENT, "hold", "--session-dir", session_dir, "--idle", f"{idle:g}"]


def watch(output_dir: str, *, interval: float, annotations_file: Optional[str] = None,
          upload_to: Optional[str] = None, shared: bool = False, upload_concurrency: Optional[int] = None,
          manifests_dir: Optional[str] = None, sync: bool = False, part: bool = False) -> list[str]:
    """The live-sealing sidecar: seal checkpoints in OUTPUT_DIR as they complete (one result line each).
    `sync`: syncfs once a directory is sealed, before it is announced (a volume snapshot follows);
    `part`: OUTPUT_DIR is one worker's own volume (output.volumePerWorker), it seals that worker's parts."""
    return [*AGENT, "watch", output_dir, "--interval", f"{interval:g}",
            *(["--annotations-file", annotations_file] if annotations_file else []),
            *(["--upload-to", upload_to] if upload_to else []),
            *(["--manifests-dir", manifests_dir] if manifests_dir else []),
            *(["--upload-concurrency", str(upload_concurrency)] if upload_concurrency else []),
            *(["--shared"] if shared else []), *(["--sync"] if sync else []), *(["--part"] if part else [])]
