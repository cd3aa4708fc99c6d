"""`checkpoint-operator local run`: apply manifests to an emulated cluster, run everything on
this machine, and report the resulting Checkpoints and TrainingJobs."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

import pydantic
import yaml

from checkpoint_operator import API_VERSION
from checkpoint_operator.agent.errors import one_line, yaml_problem
from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.local.report import build_report, render_table
from checkpoint_operator.local.stuck import stuck_jobs

if TYPE_CHECKING:
    from checkpoint_operator.kube import Kube
    from checkpoint_operator.local.s3store import S3Settings

NAMESPACE = "default"
# Where catalog entries (ClusterCheckpoints) are imported, as the chart's release namespace.
CATALOG_NAMESPACE = "ckpt-system"
STORE_SECRET = "ckpt-local-store"  # --store s3: the agent pods' credentials, a Secret in each namespace
# What local mode writes in its state directory (--fresh removes a directory holding only these).
STATE_ENTRIES = {"api-objects.jsonl", "api-objects.json", "cluster", "s3", "kubeconfig", "logs", "store.json"}
SETTLED_CHECKPOINT = ("Ready", "Failed")
FINISHED_JOB = ("Succeeded", "Failed")


class ManifestError(ValueError):
    pass


def manifest_files(paths: Iterable[str]) -> list[Path]:
    """Files in the order given; a directory contributes its *.yaml/*.yml files in name order."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        elif path.is_file():
            files.append(path)
        else:
            raise ManifestError(f"-f {raw}: no such file or directory")
    return files


def load_manifests(paths: Iterable[str]) -> list[dict]:
    """Parse and validate like the API server would (the CRD schema and CEL rules live in the
    pydantic models), so a bad manifest fails here with the field named."""
    from checkpoint_operator.api.checkpoint import CheckpointSpec
    from checkpoint_operator.api.clustercheckpoint import ClusterCheckpointSpec
    from checkpoint_operator.api.messages import describe
    from checkpoint_operator.api.rules import ApiModel
    from checkpoint_operator.api.trainingjob import TrainingJobSpec
    models: dict[str, type[ApiModel]] = {"Checkpoint": CheckpointSpec, "TrainingJob": TrainingJobSpec,
                                         "ClusterCheckpoint": ClusterCheckpointSpec}
    objects = []
    for file in manifest_files(paths):
        try:
            docs = list(yaml.safe_load_all(file.read_text()))
        except RecursionError:  # PyYAML's composer recurses once per level of nesting
            raise ManifestError(f"{file}: nested too deeply to be a manifest") from None
        except yaml.YAMLError as exc:
            raise ManifestError(f"{file}: {yaml_problem(exc)}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{file}: cannot be read as UTF-8 text ({one_line(str(exc))})") from None
        for doc in docs:
            if not doc:
                continue
            if not isinstance(doc, dict):
                raise ManifestError(f"{file}: a document is a {type(doc).__name__}, not a Kubernetes object")
            if not isinstance(doc.get("metadata") or {}, dict):
                raise ManifestError(f"{file}: metadata must be a mapping (name, namespace, labels)")
            kind = doc.get("kind")
            if doc.get("apiVersion") != API_VERSION or kind not in models:
                raise ManifestError(f"{file}: only {API_VERSION} Checkpoint, TrainingJob and ClusterCheckpoint are "
                                    f"supported in local mode, not {doc.get('apiVersion')} {kind}")
            name = (doc.get("metadata") or {}).get("name")
            if not name or not isinstance(name, str):
                raise ManifestError(f"{file}: {kind} without metadata.name" if not name else
                                    f"{file}: {kind}: metadata.name must be a string, not {name!r}")
            try:
                doc["spec"] = models[kind].model_validate(doc.get("spec") or {}).to_wire()
            except pydantic.ValidationError as exc:
                raise ManifestError(f"{file}: {kind} {name}: {describe(exc, models[kind], 'spec')}") from None
            if kind == "ClusterCheckpoint":  # cluster-scoped: a namespace would be refused
                doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k != "namespace"}
            else:
                doc["metadata"] = {**doc["metadata"], "namespace": NAMESPACE}
            objects.append(doc)
    return objects


def check_storage_flags(storage_class: str | None, snapshot_class: str | None) -> None:
    """--storage-class names one of the local cluster's classes; --volume-snapshot-class one of its
    VolumeSnapshotClasses, of the output class's driver (the standard class takes no snapshots)."""
    from checkpoint_operator.local.storage import DEFAULT_CLASSES
    classes = {c.name: c for c in DEFAULT_CLASSES}
    if storage_class is not None and storage_class not in classes:
        raise ManifestError(f"--storage-class {storage_class}: the local cluster's classes are {', '.join(classes)}")
    if snapshot_class is None:
        return
    output = classes[storage_class] if storage_class else next(c for c in DEFAULT_CLASSES if c.default)
    if output.snapshot_class != snapshot_class:
        takes = [c.name for c in DEFAULT_CLASSES if c.snapshot_class == snapshot_class]
        raise ManifestError(f"--volume-snapshot-class {snapshot_class}: "
                            + (f"it snapshots the volumes of {', '.join(takes)}; add --storage-class {takes[0]}"
                               if takes else "the local cluster's VolumeSnapshotClass is block-snapshots "
                                             "(with --storage-class block or block-multireader)"))


def local_run(args: argparse.Namespace) -> int:
    # The operator's timers read their interval at import: make local mode react quickly.
    os.environ.setdefault("CKPT_RECONCILE_INTERVAL", "0.3")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf._core.reactor.running").setLevel(logging.ERROR)  # "OS signals are ignored" in a thread
    try:
        objects = load_manifests(args.filename)
        check_storage_flags(getattr(args, "storage_class", None), getattr(args, "volume_snapshot_class", None))
        if getattr(args, "volume_snapshot_class", None) and getattr(args, "store", "volume") == "s3":
            raise ManifestError("--volume-snapshot-class is for the volume store (--store volume), not --store s3")
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir).resolve()
    if getattr(args, "fresh", False):
        problem = clear_state_dir(state_dir)
        if problem:
            print(f"error: --fresh: {problem}", file=sys.stderr)
            return 2

    import kopf
    from checkpoint_operator import main
    from checkpoint_operator.config import OperatorConfig
    from checkpoint_operator.reconcile.context import Context
    from checkpoint_operator.kube import CHECKPOINTS, CLUSTER_CHECKPOINTS, TRAINING_JOBS, ApiError, Conflict, Kube
    from checkpoint_operator.local.cluster import LocalCluster
    from checkpoint_operator.local.server import EmulatorServer, run_kopf_in_thread

    from checkpoint_operator.local.engine import OPERATOR_IMAGE, ContainerEngineRuntime, choose_runtime
    agent_image = args.agent_image or OPERATOR_IMAGE
    try:
        runtime, why = choose_runtime(args.runtime, agent_image, Path.cwd())
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(why, file=sys.stderr, flush=True)
    containers = isinstance(runtime, ContainerEngineRuntime)

    from checkpoint_operator.local import s3store
    try:
        check_state_store(state_dir, args)
    except s3store.LocalStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    namespaces = [NAMESPACE, CATALOG_NAMESPACE]
    weed = server = cluster = handle = None
    # SIGTERM and SIGHUP end the run as Ctrl-C does: through the `finally` that stops what it started
    # (weed runs in its own session: no terminal signal reaches it; hostile3 F2).
    with exit_on_signals(signal.SIGTERM, signal.SIGHUP):
        try:
            weed = s3store.LocalSeaweedFS(state_dir / "s3") if wants_local_seaweedfs(args) else None
            try:
                store = open_store(args, weed)
            except s3store.LocalStoreError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            record_state_store(state_dir, args)
            server = EmulatorServer(state_dir=state_dir)
            url = server.start()
            kube = Kube.from_url(url)
            ensure_namespaces(kube, namespaces)
            if store is not None:
                provide_store_secret(kube, namespaces, store)
                os.environ.update(store.env())  # the operator's own identity (commit checks, deleting owned data)
            cluster = LocalCluster(url, state_dir / "cluster", namespaces=namespaces, workdir=os.getcwd(),
                                   runtime=runtime, nodes=getattr(args, "nodes", 1),
                                   report=lambda line: print(line, file=sys.stderr, flush=True))
            print("engines: batch/v1 Jobs and jobset.x-k8s.io/v1alpha2 JobSets, run by local controllers; Kueue: a "
                  "local stand-in that admits a queued workload at once", file=sys.stderr, flush=True)
            cluster.start_in_thread()
            settings = kopf.OperatorSettings()
            main.configure_settings(settings)
            settings.posting.enabled = True
            # Agent pods run the operator's image in a container engine; the process runtime ignores images.
            # Every worker of a distributed job runs on this host: they meet at 127.0.0.1, on a free port per job.
            config = OperatorConfig(reconcile_interval=main.INTERVAL, catalog_namespace=CATALOG_NAMESPACE,
                                    rendezvous_address="127.0.0.1", rendezvous_port=0,
                                    agent_image=agent_image if containers else "checkpoint-operator:local",
                                    default_storage_class=getattr(args, "storage_class", None),
                                    volume_snapshot_class=getattr(args, "volume_snapshot_class", None),
                                    **(store_config(store) if store is not None else {}))
            handle = run_kopf_in_thread(kopf.get_default_registry(), settings, namespaces, url,
                                        memo=main.make_memo(Context(kube, config, namespaces=namespaces)))
            earlier = earlier_objects(kube.list(TRAINING_JOBS, NAMESPACE), kube.list(CHECKPOINTS, NAMESPACE),
                                      objects)
            if earlier:
                print(earlier_note(earlier, args.state_dir), file=sys.stderr, flush=True)
            for obj in objects:
                resource = {"Checkpoint": CHECKPOINTS, "TrainingJob": TRAINING_JOBS,
                            "ClusterCheckpoint": CLUSTER_CHECKPOINTS}[obj["kind"]]
                name = obj["metadata"]["name"]
                try:
                    kube.create(resource, NAMESPACE, obj)
                    print(f"{obj['kind'].lower()}.ckpt.dev/{name} created", file=sys.stderr)
                except Conflict:
                    existing = kube.get(resource, NAMESPACE, name) or {}
                    same = existing.get("spec") == obj["spec"]
                    print(f"{obj['kind'].lower()}.ckpt.dev/{name} "
                          f"{'unchanged' if same else 'exists with another spec (kept; start over with --fresh)'}",
                          file=sys.stderr)
                except ApiError as exc:  # refused as the API server would (name, schema, CEL rules)
                    if exc.status != 422:
                        raise
                    print(f"error: {exc.message}", file=sys.stderr)
                    return 2
            watcher = Watcher(kube, state_dir / "logs", {n for k, n in earlier if k == "TrainingJob"})
            settled = watcher.wait(args.timeout)
            checkpoints = kube.list(CHECKPOINTS, NAMESPACE)
            jobs = kube.list(TRAINING_JOBS, NAMESPACE)
            entries = kube.list(CLUSTER_CHECKPOINTS, None)
            if getattr(args, "serve", False):
                report = build_report(checkpoints, jobs, entries)
                print(json.dumps(report, indent=2) if args.output == "json" else render_table(report), flush=True)
                serve_until_interrupted(url, state_dir, store, own_store=weed is not None)
        finally:
            if handle is not None:
                handle.stop()
            if cluster is not None:
                cluster.stop_thread()
            if server is not None:
                server.stop()
            if weed is not None:
                weed.stop()
    report = build_report(checkpoints, jobs, entries)
    if not getattr(args, "serve", False):  # --serve printed it before serving
        print(json.dumps(report, indent=2) if args.output == "json" else render_table(report))
    mine = {o["metadata"]["name"] for o in objects if o["kind"] == "TrainingJob"}
    # A job that can never finish was reported once, at once, while the rest ran on (Watcher.poll).
    if any(name in mine for name in watcher.stuck):
        return 1
    if not settled:
        print(f"error: not everything settled within {args.timeout:g} s (see the phases above; --timeout sets "
              f"how long to wait)", file=sys.stderr)
        return 1
    # An earlier run's failed job was reported by that run; this one answers for its own.
    return 1 if any(j["phase"] == "Failed" and j["name"] in mine for j in report["trainingJobs"]) else 0


def wants_local_seaweedfs(args: argparse.Namespace) -> bool:
    return getattr(args, "store", "volume") == "s3" and not getattr(args, "s3_endpoint", None)


def open_store(args: argparse.Namespace, weed):
    """The S3Settings, or None for the volume store; `weed`: the SeaweedFS to start (stopped by the
    caller, whatever happens after it was asked to start)."""
    from checkpoint_operator.local import s3store
    if getattr(args, "store", "volume") != "s3":
        if getattr(args, "s3_endpoint", None) or getattr(args, "s3_bucket", None):
            raise s3store.LocalStoreError("--s3-endpoint and --s3-bucket go with --store s3")
        return None
    bucket = args.s3_bucket or s3store.DEFAULT_BUCKET
    if args.s3_endpoint:
        settings = s3store.from_environment(args.s3_endpoint, bucket, os.environ)
        s3store.ensure_bucket(settings)
        print(f"store: s3 at {settings.endpoint}, bucket {bucket}", file=sys.stderr, flush=True)
        return settings
    settings = weed.start(bucket)
    print(f"store: s3, SeaweedFS on {settings.endpoint} (127.0.0.1 only, telemetry off), data in {weed.data_dir}",
          file=sys.stderr, flush=True)
    return settings


@contextlib.contextmanager
def exit_on_signals(*signums: int) -> Iterator[None]:
    """Within: each of `signums` raises SystemExit(128 + signum), so `finally` blocks run (Python's
    default for SIGTERM/SIGHUP is to die at once). Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)
    previous = {signum: signal.signal(signum, leave) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --- the store a state dir was made with (hostile3 F9) --------------------------------------------
STORE_FILE = "store.json"  # {"store": "volume" | "s3", "endpoint": ..., "bucket": ...}


def _store_of(args: argparse.Namespace) -> dict:
    if getattr(args, "store", "volume") != "s3":
        return {"store": "volume"}
    return {"store": "s3", "endpoint": getattr(args, "s3_endpoint", None) or "local SeaweedFS",
            "bucket": getattr(args, "s3_bucket", None) or "checkpoints"}


def _describe_store(store: dict) -> str:
    if store.get("store") != "s3":
        return "the volume store"
    if "endpoint" not in store:
        return "the s3 store"
    return f"the s3 store ({store.get('endpoint')}, bucket {store.get('bucket')})"


def _store_flags(store: dict) -> str:
    if store.get("store") != "s3":
        return "without --store s3"
    flags = "--store s3"
    if store.get("endpoint", "local SeaweedFS") != "local SeaweedFS":
        flags += f" --s3-endpoint {store.get('endpoint')}"
    if store.get("bucket", "checkpoints") != "checkpoints":
        flags += f" --s3-bucket {store.get('bucket')}"
    return flags


def check_state_store(state_dir: Path, args: argparse.Namespace) -> None:
    """A state dir holds Checkpoints on the store it was made with: a run on another store would find
    them nowhere (every input refused), so it is refused in one line."""
    from checkpoint_operator.local import s3store
    path = state_dir / STORE_FILE
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:  # made before the store was recorded: its own SeaweedFS data says s3
        if not (state_dir / "s3" / "data").is_dir():
            return
        recorded = {"store": "s3"}
    except (OSError, ValueError) as exc:
        raise s3store.LocalStoreError(f"{path}: unreadable ({exc}); --fresh starts over") from None
    wanted = _store_of(args)
    if not isinstance(recorded, dict) or recorded == wanted or set(recorded) == {"store"} and (
            recorded.get("store") == wanted["store"]):
        return
    raise s3store.LocalStoreError(f"{state_dir} holds Checkpoints on {_describe_store(recorded)}, and this run "
                                  f"uses {_describe_store(wanted)}: run {_store_flags(recorded)}, or add --fresh "
                                  f"to start over (its data is deleted), or use another --state-dir")


def record_state_store(state_dir: Path, args: argparse.Namespace) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STORE_FILE).write_text(json.dumps(_store_of(args)))


def store_config(store) -> dict:
    return {"storage_type": "s3", "s3_endpoint": store.endpoint, "s3_bucket": store.bucket,
            "s3_region": store.region, "s3_secret_name": STORE_SECRET}


def ensure_namespaces(kube: Kube, namespaces: list[str]) -> None:
    """The namespaces local mode acts in exist, as in a cluster (the operator's own, the catalog's, is
    made by its install): kopf watches only namespaces that exist."""
    from checkpoint_operator.kube import NAMESPACES
    for namespace in namespaces:
        kube.ensure(NAMESPACES, "", {"metadata": {"name": namespace}})


def provide_store_secret(kube, namespaces: list[str], store) -> None:
    """What a platform provisions in each namespace (docs/storage.md): here one identity for all of them."""
    import base64

    from checkpoint_operator.kube import Conflict, Resource
    secrets = Resource("", "v1", "secrets", "Secret")
    data = {k: base64.b64encode(v.encode()).decode() for k, v in
            (("AWS_ACCESS_KEY_ID", store.access_key), ("AWS_SECRET_ACCESS_KEY", store.secret_key))}
    for namespace in namespaces:
        body = {"metadata": {"name": STORE_SECRET, "namespace": namespace}, "type": "Opaque", "data": data}
        try:
            kube.create(secrets, namespace, body)
        except Conflict:  # kept from an earlier run: the credentials may be new (another endpoint)
            kube.patch(secrets, namespace, STORE_SECRET, {"data": data})


STORE_ENV_FILE = "s3.env"  # --serve --store s3: the exports that `kubectl ckpt pull`/`verify --local` need


def store_env_text(store: "S3Settings") -> str:
    """The shell exports of the s3 store's endpoint and credentials (S3Settings.env), quoted for sh."""
    import shlex
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(store.env().items()))


def serve_hints(kubeconfig: Path, store: Optional["S3Settings"], env_file: Optional[Path], own_store: bool
                ) -> list[str]:
    """What --serve tells the user to type: the kubeconfig, and with --store s3 where the store is
    (hostile5 F5: without it `kubectl ckpt pull` went to AWS). The local SeaweedFS's credentials are
    in a file of mode 0600, never printed; a store of --s3-endpoint is reached with the user's own."""
    lines = [f"  export KUBECONFIG={kubeconfig}"]
    if store is not None and own_store and env_file is not None:
        lines.append(f"  . {env_file}   # AWS_ENDPOINT_URL and the credentials of the local store, for kubectl "
                     f"ckpt pull, push and verify --local")
    elif store is not None:
        lines.append(f"  export AWS_ENDPOINT_URL={store.endpoint}   # with your AWS_* credentials of bucket "
                     f"{store.bucket}, for kubectl ckpt pull, push and verify --local")
    return lines + ["  kubectl ckpt ls"]


def write_private(path: Path, text: str) -> None:
    """`text` into `path`, created 0600 (replaced when it exists: the endpoint's port changes per run)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def serve_until_interrupted(url: str, state_dir: Path, store: Optional["S3Settings"] = None, *,
                            own_store: bool = False) -> None:
    """--serve: keep the cluster and the operator running for kubectl (and kubectl ckpt) through a
    kubeconfig, until Ctrl-C or SIGTERM."""
    import signal
    import threading

    import yaml
    kubeconfig = state_dir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": url}}], "users": [{"name": "local", "user": {}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local", "namespace": NAMESPACE}}]}))
    env_file = None
    if store is not None and own_store:
        env_file = state_dir / "s3" / STORE_ENV_FILE
        write_private(env_file, store_env_text(store))
    hints = "\n".join(serve_hints(kubeconfig, store, env_file, own_store))
    print(f"serving the local cluster at {url} until Ctrl-C; try:\n{hints}", file=sys.stderr, flush=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


class Watcher:
    """Follows the run until everything has settled: reports Checkpoints as they become Ready or
    go, failed pods with the end of their logs (pod_logs.py), and jobs that can never finish
    (stuck.py) at once; those do not hold the run."""

    def __init__(self, kube: Any, logs_dir: Path, earlier_jobs: set[str]) -> None:
        from checkpoint_operator.local.pod_logs import PodFailureReporter
        from checkpoint_operator.local.podlogs import MAX_LOG_BYTES  # all a container's log keeps
        self.kube = kube
        self.earlier_jobs = earlier_jobs
        self.stuck: dict[str, Any] = {}  # job name -> StuckJob
        self.pods = PodFailureReporter(lambda ns, pod, c: kube.read_log(ns, pod, c, limit_bytes=MAX_LOG_BYTES),
                                       logs_dir)
        # What earlier runs left is not news: their Ready Checkpoints and failed pods are not told again.
        from checkpoint_operator.kube import CHECKPOINTS, PODS
        self.reported = {c["metadata"]["name"] for c in kube.list(CHECKPOINTS, NAMESPACE)
                         if c.get("status", {}).get("phase") == "Ready"}
        self.pods.seen.update(p["metadata"].get("uid", "") for p in kube.list(PODS, NAMESPACE)
                              if p.get("status", {}).get("phase") == "Failed")

    def describe(self, stuck: Any) -> str:
        """`error: ...` for a job of this run; `warning: ...` for one an earlier run left."""
        if stuck.name in self.earlier_jobs:
            return (f"warning: TrainingJob {stuck.name} (from an earlier run: start clean with --fresh) can never "
                    f"finish: {stuck.why}")
        return f"error: TrainingJob {stuck.name} can never finish: {stuck.why}"

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll():
                return True
            time.sleep(0.2)
        return False

    def poll(self) -> bool:
        """One look: True when every job has finished or can never finish, and every Checkpoint has settled."""
        from checkpoint_operator.kube import CHECKPOINTS, CLUSTER_CHECKPOINTS, PODS, TRAINING_JOBS
        jobs = self.kube.list(TRAINING_JOBS, NAMESPACE)
        checkpoints = self.kube.list(CHECKPOINTS, NAMESPACE)
        entries = self.kube.list(CLUSTER_CHECKPOINTS, None)
        report_new_checkpoints(checkpoints, jobs, self.reported)
        self.pods.report(self.kube.list(PODS, NAMESPACE))
        for stuck in stuck_jobs(_parsed(TrainingJob, jobs), _parsed(Checkpoint, checkpoints)):
            if stuck.name not in self.stuck:
                self.stuck[stuck.name] = stuck
                print(f"{self.describe(stuck)}; the run goes on with the rest", file=sys.stderr, flush=True)
        return all(j.get("status", {}).get("phase") in FINISHED_JOB or j["metadata"]["name"] in self.stuck
                   for j in jobs) and all(self._settled(c) for c in [*checkpoints, *entries])

    def _settled(self, checkpoint: dict) -> bool:
        status = checkpoint.get("status", {})
        if status.get("phase") not in SETTLED_CHECKPOINT:
            return False
        if not checkpoint["metadata"].get("deletionTimestamp"):
            return True
        # Its deletion waits for the jobs that use it: it will not end while they can never finish.
        users = [u.get("name") for u in status.get("usedBy") or []]
        return bool(users) and all(u in self.stuck for u in users)


def report_new_checkpoints(checkpoints: list[dict], jobs: list[dict], reported: set[str]) -> None:
    """One line per Checkpoint as it becomes Ready, and per one deleted, with its producer's phase
    then (live sealing shows them while the job is Running)."""
    phases = {j["metadata"]["name"]: j.get("status", {}).get("phase") for j in jobs}
    present = set()
    for c in sorted(checkpoints, key=lambda c: c["metadata"].get("creationTimestamp") or ""):
        name, status = c["metadata"]["name"], c.get("status", {})
        present.add(name)
        if status.get("phase") != "Ready" or name in reported:
            continue
        reported.add(name)
        producer = (status.get("producedBy") or {}).get("name")
        by = f", TrainingJob {producer} {phases.get(producer) or 'gone'}" if producer else ""
        print(f"checkpoint.ckpt.dev/{name} Ready (step {status.get('step')}{by})", file=sys.stderr, flush=True)
    for name in sorted(reported - present):
        reported.discard(name)
        print(f"checkpoint.ckpt.dev/{name} deleted", file=sys.stderr, flush=True)


def _parsed(model: Any, bodies: list[dict]) -> list[Any]:
    parsed = []
    for body in bodies:
        try:
            parsed.append(model.model_validate(body))
        except pydantic.ValidationError:
            continue  # the API server admitted it; a model that disagrees is not for this report
    return parsed


def earlier_objects(jobs: list[dict], checkpoints: list[dict], applied: list[dict]) -> list[tuple[str, str]]:
    """(kind, name) of what the state directory holds that this run's manifests do not name."""
    named = {(o["kind"], o["metadata"]["name"]) for o in applied}
    found = [("TrainingJob", j["metadata"]["name"]) for j in jobs] + \
            [("Checkpoint", c["metadata"]["name"]) for c in checkpoints]
    return [k for k in found if k not in named]


def earlier_note(earlier: list[tuple[str, str]], state_dir: str, shown: int = 5) -> str:
    parts = []
    for kind in ("TrainingJob", "Checkpoint"):
        names = sorted(n for k, n in earlier if k == kind)
        if names:
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{len(names)} {kind}{'s' if len(names) > 1 else ''} ({', '.join(names[:shown])}{more})")
    return (f"note: {state_dir} holds objects from an earlier run, which stay and take part in this one: "
            f"{'; '.join(parts)}; start clean with --fresh")


def clear_state_dir(state_dir: Path) -> Optional[str]:
    """--fresh: remove the state directory of earlier runs; refuse (a message) a directory that
    holds anything local mode does not write there, so a mistyped --state-dir deletes nothing else."""
    from checkpoint_operator.agent import fstree
    if not state_dir.exists():
        return None
    if not state_dir.is_dir() or state_dir.is_symlink():
        return f"{state_dir} is not a directory"
    foreign = sorted(e.name for e in state_dir.iterdir()
                     if e.name not in STATE_ENTRIES and not e.name.startswith("api-objects"))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return (f"{state_dir} does not look like a local mode state directory (it holds {shown}); "
                "remove it yourself, or choose another --state-dir")
    fstree.remove_tree(str(state_dir), make_writable=True)  # sealed checkpoints are read-only
    return None
