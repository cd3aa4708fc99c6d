"""Small builders of API objects for unit tests (plain dicts, as the API returns them)."""

from __future__ import annotations

import itertools

_uids = itertools.count(1)


def uid() -> str:
    return f"00000000-0000-0000-0000-{next(_uids):012d}"


def checkpoint(name: str, *, phase: str = "Ready", step: int | None = None, produced_by: str | None = "t",
               created: str = "2026-01-01T00:00:00Z", deleting: bool = False, claim: str = "data",
               path: str | None = None, used_by: list | None = None, complete: bool | None = None,
               resumable: bool | None = None, directory: str | None = None) -> dict:
    status: dict = {"phase": phase, "digest": f"sha256:{name}",
                    "location": {"volume": {"claimName": claim, "path": path or name}}}
    if step is not None:
        status["step"] = step
    if produced_by:
        status["producedBy"] = {"name": produced_by, "uid": "u-" + produced_by}
    if used_by is not None:
        status["usedBy"] = used_by
    if complete is not None:
        status["complete"] = complete
    if resumable is not None:
        status["resumable"] = resumable
    meta = {"name": name, "namespace": "default", "uid": uid(), "creationTimestamp": created, "resourceVersion": "1"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    source: dict = {"volume": {"claimName": claim, "path": "/"}}
    if directory is not None:
        source = {"trainingJob": {"name": produced_by or "t", "uid": "u-" + (produced_by or "t"),
                                  "directory": directory}}
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": meta,
            "spec": {"source": source}, "status": status}


def training_job(name: str = "train", *, phase: str | None = None, checkpoints: list | None = None,
                 output: dict | None = None, replicas: int = 1, containers: list | None = None,
                 volumes: list | None = None, **spec_fields) -> dict:
    spec = {"checkpoints": checkpoints or [], "output": {"enabled": True, "size": "10Gi", "layout": "auto",
                                                         **(output or {})},
            "inputDir": "/input-checkpoint", "outputDir": "/output-checkpoint", "replicas": replicas,
            "template": {"spec": {"containers": containers or [
                {"name": "trainer", "image": "python:3.11", "command": ["python", "train.py"]}]}}, **spec_fields}
    if volumes:
        spec["template"]["spec"]["volumes"] = volumes
    obj = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob",
           "metadata": {"name": name, "namespace": "default", "uid": "u-" + name, "generation": 1,
                        "resourceVersion": "1"},
           "spec": spec}
    if phase:
        obj["status"] = {"phase": phase}
    return obj


def indexes(checkpoints: list | None = None, jobs: list | None = None, pods: list | None = None,
            entries: list | None = None):
    """The operator's real `Indexes`, filled by the real index functions from these bodies (as
    kopf fills them from the watch streams), over plain dicts. `entries`: ClusterCheckpoints."""
    from checkpoint_operator.reconcile.indexes import (Indexes, checkpoint_keys, cluster_checkpoint_keys,
                                                       training_job_keys, worker_pod_keys)

    def build(bodies, keys_of):
        index: dict = {}
        for body in bodies or []:
            for key, value in keys_of(body).items():
                index.setdefault(key, []).append(value)
        return index
    return Indexes(build(checkpoints, checkpoint_keys), build(jobs, training_job_keys), build(pods, worker_pod_keys),
                   build(entries, cluster_checkpoint_keys))
