"""Data the operator removes stays while another Checkpoint points into it (hostile1 D13), against
the emulated API: an adoption of a directory that a running job's retention released is refused,
and an owned s3 prefix that another Checkpoint's location points into is not deleted."""

from __future__ import annotations

import pytest

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointStatus
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.kube import TRAINING_JOBS, Kube
from checkpoint_operator.reconcile import checkpoint as checkpoint_reconcile
from checkpoint_operator.reconcile import live_sealing
from checkpoint_operator.reconcile.context import Context
from factories import checkpoint, indexes, training_job

NS = "default"
DIGEST = "sha256:" + "a" * 64


@pytest.fixture
def ctx(api_url):
    return Context(kube=Kube.from_url(api_url), config=OperatorConfig())


def live_job(ctx: Context, phase: str = "Running") -> dict:
    body = training_job("live", output={"enabled": True, "size": "1Gi", "layout": "auto", "publish": "Continuous"})
    created = ctx.kube.create(TRAINING_JOBS, NS, body)
    ctx.kube.patch_status(TRAINING_JOBS, NS, "live", {"phase": phase, "publish": "Continuous", "live": {
        "retired": [{"path": "checkpoint-10", "digest": DIGEST}]}})
    return created


def output_claim(job: dict) -> dict:
    return {"metadata": {"name": "live-output-x", "namespace": NS, "ownerReferences": [
        {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "name": "live", "uid": job["metadata"]["uid"],
         "controller": False}]}}


def test_adopting_a_directory_retention_released_is_refused_while_the_job_runs(ctx):
    claim = output_claim(live_job(ctx))
    assert live_sealing.retired_refusal(ctx, claim, "/checkpoint-10") == (
        "spec.source.volume.path: checkpoint-10 overlaps checkpoint-10, which retention of the running TrainingJob "
        "live released (its Checkpoint was deleted) and which is being removed: adopt a directory that is kept")
    assert live_sealing.retired_refusal(ctx, claim, "/") is not None
    assert live_sealing.retired_refusal(ctx, claim, "/checkpoint-20") is None
    forged = output_claim({"metadata": {"uid": "someone-else"}})
    assert live_sealing.retired_refusal(ctx, forged, "/checkpoint-10") is None


def test_a_finished_job_removes_nothing_any_more(ctx):
    claim = output_claim(live_job(ctx, phase="Succeeded"))
    assert live_sealing.retired_refusal(ctx, claim, "/checkpoint-10") is None


class _Recorder:
    def __init__(self) -> None:
        self.deleted: list[CheckpointStatus] = []

    def delete_owned_data(self, status: CheckpointStatus, namespace: str) -> str:
        self.deleted.append(status)
        assert status.location is not None and status.location.s3 is not None
        return status.location.s3.uri


def s3_checkpoint(name: str, uri: str, owned: bool = True) -> dict:
    body = checkpoint(name)
    body["status"]["location"] = {"s3": {"uri": uri}}
    body["status"]["owned"] = owned
    return body


def test_an_owned_prefix_another_checkpoint_points_into_is_kept(ctx, monkeypatch):
    store = _Recorder()
    monkeypatch.setattr(checkpoint_reconcile, "store_for", lambda config: store)
    doomed = s3_checkpoint("doomed", "s3://b/ns/default/doomed-1/")
    inside = s3_checkpoint("inside", "s3://b/ns/default/doomed-1/", owned=False)
    ctx.indexes = indexes(checkpoints=[doomed, inside])
    warnings: list[tuple[str, str]] = []
    monkeypatch.setattr(ctx, "warn", lambda obj, reason, message: warnings.append((reason, message)))
    checkpoint_reconcile._delete_owned_data(ctx, Checkpoint.model_validate(doomed))
    assert store.deleted == []
    assert warnings == [("DataKept", "deleting this Checkpoint releases s3://b/ns/default/doomed-1/, but Checkpoint "
                                     "inside points into it: it stays while they do")]

    ctx.indexes = indexes(checkpoints=[doomed, s3_checkpoint("beside", "s3://b/ns/default/doomed-10/")])
    checkpoint_reconcile._delete_owned_data(ctx, Checkpoint.model_validate(doomed))
    assert [s.location.s3.uri for s in store.deleted if s.location and s.location.s3] == ["s3://b/ns/default/doomed-1/"]
