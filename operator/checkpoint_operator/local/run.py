"""`checkpoint-operator local run`: apply manifests to an emulated cluster, run everything on
this machine, and report the resulting Checkpoints and TrainingJobs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterable

import pydantic
import yaml

from checkpoint_operator import API_VERSION
from checkpoint_operator.agent.errors import one_line, yaml_problem

NAMESPACE = "default"
# Where catalog entries (ClusterCheckpoints) are imported, as the chart's release namespace.
CATALOG_NAMESPACE = "ckpt-system"
STORE_SECRET = "ckpt-local-store"  # --store s3: the agent pods' credentials, a Secret in each namespace
STATE_ENTRIES = ("api-objects.jsonl", "api-objects.json", "cluster", "s3", "kubeconfig")  # what --fresh deletes
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
    from checkpoint_operator.api.rules import ApiModel
    from checkpoint_operator.api.trainingjob import TrainingJobSpec
    models: dict[str, type[ApiModel]] = {"Checkpoint": CheckpointSpec, "TrainingJob": TrainingJobSpec,
                                         "ClusterCheckpoint": ClusterCheckpointSpec}
    objects = []
    for file in manifest_files(paths):
        try:
            docs = list(yaml.safe_load_all(file.read_text()))
        except yaml.YAMLError as exc:
            raise ManifestError(f"{file}: {yaml_problem(exc)}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{file}: cannot be read as UTF-8 text ({one_line(str(exc))})") from None
        for doc in docs:
            if not doc:
                continue
            if not isinstance(doc, dict):
                raise ManifestError(f"{file}: a document is a {type(doc).__name__}, not a Kubernetes object")
            kind = doc.get("kind")
            if doc.get("apiVersion") != API_VERSION or kind not in models:
                raise ManifestError(f"{file}: only {API_VERSION} Checkpoint, TrainingJob and ClusterCheckpoint are "
                                    f"supported in local mode, not {doc.get('apiVersion')} {kind}")
            name = (doc.get("metadata") or {}).get("name")
            if not name:
                raise ManifestError(f"{file}: {kind} without metadata.name")
            try:
                doc["spec"] = models[kind].model_validate(doc.get("spec") or {}).to_wire()
            except pydantic.ValidationError as exc:
                details = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise ManifestError(f"{file}: {kind} {name}: {details}") from None
            if kind == "ClusterCheckpoint":  # cluster-scoped: a namespace would be refused
                doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k != "namespace"}
            else:
                doc["metadata"] = {**doc["metadata"], "namespace": NAMESPACE}
            objects.append(doc)
    return objects


def local_run(args: argparse.Namespace) -> int:
    # The operator's timers read their interval at import: make local mode react quickly.
    os.environ.setdefault("CKPT_RECONCILE_INTERVAL", "0.3")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf._core.reactor.running").setLevel(logging.ERROR)  # "OS signals are ignored" in a thread
    try:
        objects = load_manifests(args.filename)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
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

    state_dir = Path(args.state_dir).resolve()
    if getattr(args, "fresh", False):
        forget_state(state_dir)
    from checkpoint_operator.local import s3store
    try:
        store, weed = open_store(args, state_dir)
    except s3store.LocalStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    namespaces = [NAMESPACE, CATALOG_NAMESPACE]
    server = EmulatorServer(state_dir=state_dir)
    url = server.start()
    kube = Kube.from_url(url)
    if store is not None:
        provide_store_secret(kube, namespaces, store)
        os.environ.update(store.env())  # the operator's own identity (commit checks, deleting owned data)
    cluster = LocalCluster(url, state_dir / "cluster", namespaces=namespaces, workdir=os.getcwd(), runtime=runtime)
    cluster.start_in_thread()
    settings = kopf.OperatorSettings()
    main.configure_settings(settings)
    settings.posting.enabled = True
    # Agent pods run the operator's image in a container engine; the process runtime ignores images.
    config = OperatorConfig(reconcile_interval=main.INTERVAL, catalog_namespace=CATALOG_NAMESPACE,
                            agent_image=agent_image if containers else "checkpoint-operator:local",
                            **(store_config(store) if store is not None else {}))
    handle = run_kopf_in_thread(kopf.get_default_registry(), settings, namespaces, url,
                                memo=main.make_memo(Context(kube, config, namespaces=namespaces)))
    try:
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
                print(f"{obj['kind'].lower()}.ckpt.dev/{name} {'unchanged' if same else 'exists with another spec (kept; delete the state dir to start over)'}",
                      file=sys.stderr)
            except ApiError as exc:  # refused as the API server would (name, schema, CEL rules)
                if exc.status != 422:
                    raise
                print(f"error: {exc.message}", file=sys.stderr)
                return 2
        settled = wait_until_settled(kube, args.timeout)
        checkpoints = kube.list(CHECKPOINTS, NAMESPACE)
        jobs = kube.list(TRAINING_JOBS, NAMESPACE)
        entries = kube.list(CLUSTER_CHECKPOINTS, None)
        if getattr(args, "serve", False):
            report = build_report(checkpoints, jobs, entries)
            print(json.dumps(report, indent=2) if args.output == "json" else render_table(report), flush=True)
            serve_until_interrupted(url, state_dir)
    finally:
        handle.stop()
        cluster.stop_thread()
        server.stop()
        if weed is not None:
            weed.stop()
    report = build_report(checkpoints, jobs, entries)
    if not getattr(args, "serve", False):  # --serve printed it before serving
        print(json.dumps(report, indent=2) if args.output == "json" else render_table(report))
    if not settled:
        print(f"error: not everything settled within {args.timeout:.0f} s (see the phases above)", file=sys.stderr)
        return 1
    return 1 if any(j["phase"] == "Failed" for j in report["trainingJobs"]) else 0


def forget_state(state_dir: Path) -> None:
    """--fresh: delete what earlier runs kept (only the entries local mode writes, never the directory itself)."""
    import shutil
    for name in STATE_ENTRIES:
        path = state_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def open_store(args: argparse.Namespace, state_dir: Path):
    """(S3Settings or None for the volume store, the SeaweedFS to stop or None)."""
    from checkpoint_operator.local import s3store
    if getattr(args, "store", "volume") != "s3":
        if getattr(args, "s3_endpoint", None) or getattr(args, "s3_bucket", None):
            raise s3store.LocalStoreError("--s3-endpoint and --s3-bucket go with --store s3")
        return None, None
    bucket = args.s3_bucket or s3store.DEFAULT_BUCKET
    if args.s3_endpoint:
        settings = s3store.from_environment(args.s3_endpoint, bucket, os.environ)
        s3store.ensure_bucket(settings)
        print(f"store: s3 at {settings.endpoint}, bucket {bucket}", file=sys.stderr, flush=True)
        return settings, None
    weed = s3store.LocalSeaweedFS(state_dir / "s3")
    settings = weed.start(bucket)
    print(f"store: s3, SeaweedFS on {settings.endpoint} (127.0.0.1 only, telemetry off), data in {weed.data_dir}",
          file=sys.stderr, flush=True)
    return settings, weed


def store_config(store) -> dict:
    return {"storage_type": "s3", "s3_endpoint": store.endpoint, "s3_bucket": store.bucket,
            "s3_region": store.region, "s3_secret_name": STORE_SECRET}


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


def serve_until_interrupted(url: str, state_dir: Path) -> None:
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
    print(f"serving the local cluster at {url} until Ctrl-C; try:\n  export KUBECONFIG={kubeconfig}\n"
          f"  kubectl ckpt ls", file=sys.stderr, flush=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_until_settled(kube, timeout: float) -> bool:
    from checkpoint_operator.kube import CHECKPOINTS, CLUSTER_CHECKPOINTS, TRAINING_JOBS
    deadline = time.monotonic() + timeout
    reported: set[str] = set()
    while time.monotonic() < deadline:
        jobs = kube.list(TRAINING_JOBS, NAMESPACE)
        checkpoints = kube.list(CHECKPOINTS, NAMESPACE)
        entries = kube.list(CLUSTER_CHECKPOINTS, None)
        report_new_checkpoints(checkpoints, jobs, reported)
        if all(j.get("status", {}).get("phase") in FINISHED_JOB for j in jobs) and \
                all(c.get("status", {}).get("phase") in SETTLED_CHECKPOINT for c in [*checkpoints, *entries]):
            return True
        time.sleep(0.2)
    return False


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


def build_report(checkpoints: list[dict], jobs: list[dict], entries: Iterable[dict] = ()) -> dict:
    def ckpt(c: dict) -> dict:
        s = c.get("status", {})
        return {"name": c["metadata"]["name"], "phase": s.get("phase"), "format": s.get("format"),
                "step": s.get("step"), "resumable": s.get("resumable"), "sizeBytes": s.get("sizeBytes"),
                "fileCount": s.get("fileCount"), "digest": s.get("digest"), "parents": s.get("parents") or [],
                "producedBy": s.get("producedBy"), "complete": s.get("complete"),
                "store": next(iter(s.get("location") or {}), None)}

    def job(j: dict) -> dict:
        s = j.get("status", {})
        return {"name": j["metadata"]["name"], "phase": s.get("phase"),
                "inputs": [{"name": i["name"], "digest": i.get("digest")} for i in s.get("inputs") or []],
                "outputCheckpoints": s.get("outputCheckpoints") or [], "message": s.get("message")}
    def entry(e: dict) -> dict:
        s = e.get("status", {})
        source = s.get("source") or {}
        return {**ckpt(e), "license": s.get("license"), "source": source.get("uri"),
                "commit": source.get("resolvedRevision")}
    by_name = lambda o: o["metadata"]["name"]  # noqa: E731
    report = {"checkpoints": [ckpt(c) for c in sorted(checkpoints, key=by_name)],
              "trainingJobs": [job(j) for j in sorted(jobs, key=by_name)]}
    if entries:
        report["clusterCheckpoints"] = [entry(e) for e in sorted(entries, key=by_name)]
    return report


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)


def render_table(report: dict) -> str:
    from checkpoint_operator.logic.quantity import format_size
    ckpts = _table(["CHECKPOINT", "PHASE", "FORMAT", "STEP", "RESUMABLE", "SIZE", "FILES", "PARENTS", "DIGEST"],
                   [[c["name"], c["phase"], c["format"], c["step"], c["resumable"],
                     format_size(c["sizeBytes"]) if c["sizeBytes"] is not None else None, c["fileCount"],
                     ",".join(p["name"] for p in c["parents"]) or "-",
                     (c["digest"] or "")[:19]] for c in report["checkpoints"]])
    jobs = _table(["TRAININGJOB", "PHASE", "INPUTS", "OUTPUTS"],
                  [[j["name"], j["phase"], ",".join(i["name"] for i in j["inputs"]) or "-",
                    ",".join(j["outputCheckpoints"]) or "-"] for j in report["trainingJobs"]])
    if not report.get("clusterCheckpoints"):
        return f"{jobs}\n\n{ckpts}"
    catalog = _table(["CLUSTERCHECKPOINT", "PHASE", "FORMAT", "SIZE", "FILES", "LICENSE", "DIGEST"],
                     [[e["name"], e["phase"], e["format"],
                       format_size(e["sizeBytes"]) if e["sizeBytes"] is not None else None, e["fileCount"],
                       e["license"] or "-", (e["digest"] or "")[:19]] for e in report["clusterCheckpoints"]])
    return f"{jobs}\n\n{ckpts}\n\n{catalog}"
