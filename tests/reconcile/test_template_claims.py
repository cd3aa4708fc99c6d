"""A TrainingJob's template may not reach a claim the operator manages (issue 23 item 4):
reconcile/template_claims.py against the emulated API, with the operator's real indexes filled
from object bodies (factories.indexes)."""

from __future__ import annotations

import pytest

from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.kube import PVCS, Kube
from checkpoint_operator.logic import workload
from checkpoint_operator.logic.claim_guard import MAX_TEMPLATE_CLAIMS
from checkpoint_operator.reconcile import template_claims
from checkpoint_operator.reconcile.context import Context
from factories import checkpoint, indexes, training_job

NS = "default"


def pvc_volume(name: str, claim: str, read_only: bool = False) -> dict:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}


def ephemeral_clone(name: str, claim: str, key: str = "dataSource") -> dict:
    return {"name": name, "ephemeral": {"volumeClaimTemplate": {"spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
        key: {"kind": "PersistentVolumeClaim", "name": claim}}}}}


@pytest.fixture
def ctx(api_url):
    context = Context(kube=Kube.from_url(api_url), config=OperatorConfig())
    context.indexes = indexes()
    return context


def job_with(*volumes: dict, name: str = "attacker") -> TrainingJob:
    return TrainingJob.model_validate(training_job(name, volumes=list(volumes)))


def producer() -> dict:
    body = training_job("producer", phase="Succeeded")
    body["metadata"]["uid"] = "abcde-1234"
    return body


def test_the_output_claim_of_another_job_is_refused_by_name_even_before_it_exists(ctx):
    ctx.indexes = indexes(jobs=[producer()])
    claim = workload.output_claim_name_for("producer", "abcde-1234")
    message = template_claims.refused(ctx, job_with(pvc_volume("steal", claim)))
    assert message == (f"spec.template.spec.volumes[0].persistentVolumeClaim.claimName: PersistentVolumeClaim "
                       f"{claim} is managed by the checkpoint operator (the output volume of TrainingJob producer); a "
                       f"template may not mount or copy it, or it could change a Checkpoint's bytes behind its "
                       f"digest: use spec.checkpoints to read a Checkpoint (mounted read-only)")


@pytest.mark.parametrize("source", [{"http": {"url": "https://e.x/m.tar"}}, {"upload": {}}])
def test_the_data_claim_of_an_import_or_a_push_is_refused(ctx, source):
    imported = checkpoint("model", phase="Importing")
    imported["spec"]["source"] = source
    ctx.indexes = indexes(checkpoints=[imported])
    claim = workload.import_claim_name_for("model", imported["metadata"]["uid"])
    assert claim == f"model-data-{imported['metadata']['uid'][:8]}"
    message = template_claims.refused(ctx, job_with(ephemeral_clone("copy", claim)))
    assert f"PersistentVolumeClaim {claim} is managed" in message and "the data volume of Checkpoint model" in message
    assert message.startswith("spec.template.spec.volumes[0].ephemeral.volumeClaimTemplate.spec.dataSource:")


def test_a_claim_of_the_operator_under_any_name_is_refused_when_read_live(ctx):
    ctx.kube.create(PVCS, NS, {"metadata": {"name": "renamed", "labels": {
        "app.kubernetes.io/managed-by": "checkpoint-operator"}}, "spec": {}})
    ctx.kube.create(PVCS, NS, {"metadata": {"name": "adopted-by-owner", "ownerReferences": [
        {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "name": "c", "uid": "u"}]}, "spec": {}})
    ctx.kube.create(PVCS, NS, {"metadata": {"name": "team-data"}, "spec": {}})
    assert "it is labelled" in template_claims.refused(ctx, job_with(pvc_volume("a", "team-data"),
                                                                     pvc_volume("b", "renamed", read_only=True)))
    assert "it belongs to Checkpoint c" in template_claims.refused(ctx, job_with(pvc_volume("a", "adopted-by-owner")))
    assert template_claims.refused(ctx, job_with(pvc_volume("a", "team-data"), pvc_volume("b", "missing"))) is None


def test_a_source_volume_checkpoint_does_not_make_the_user_s_claim_the_operator_s(ctx):
    """An adopted path stays on the user's claim, which the user may still write (docs/guarantees.md)."""
    ctx.indexes = indexes(checkpoints=[checkpoint("runs-7", claim="team-data", produced_by=None)])
    ctx.kube.create(PVCS, NS, {"metadata": {"name": "team-data"}, "spec": {}})
    assert template_claims.refused(ctx, job_with(pvc_volume("a", "team-data"))) is None


def test_a_template_naming_too_many_claims_is_refused_before_any_read(ctx):
    volumes = [pvc_volume(f"v{i}", f"claim-{i}") for i in range(MAX_TEMPLATE_CLAIMS + 1)]
    before = sum(ctx.kube.requests.values())
    assert template_claims.refused(ctx, job_with(*volumes)) == (
        f"spec.template.spec.volumes names {MAX_TEMPLATE_CLAIMS + 1} PersistentVolumeClaims: at most "
        f"{MAX_TEMPLATE_CLAIMS} are allowed")
    assert sum(ctx.kube.requests.values()) == before


def test_a_claim_named_by_a_running_job_s_template_is_not_created_for_it(ctx):
    squatter = training_job("squatter", phase="Running", volumes=[pvc_volume("a", "future-data")])
    done = training_job("old", phase="Succeeded", volumes=[pvc_volume("a", "later-data")])
    ctx.indexes = indexes(jobs=[squatter, done])
    assert template_claims.squatted(ctx, NS, "future-data") == (
        "PersistentVolumeClaim future-data is named in the pod template of TrainingJob squatter, which would mount "
        "it read-write: it is created once that job is finished or deleted")
    assert template_claims.squatted(ctx, NS, "later-data") is None  # a finished job mounts nothing any more
    assert template_claims.squatted(ctx, "other", "future-data") is None


def test_every_distinct_claim_of_a_template_is_in_the_squat_index(ctx):
    """hostile1 D1: 128 volumes naming one claim and a 129th naming another passed the bound (2
    distinct claims) but the index kept only the first 128 references, so the 129th was never
    found (failed before: squatted() was None)."""
    volumes = [pvc_volume(f"v{i}", "a") for i in range(MAX_TEMPLATE_CLAIMS)] + [pvc_volume("steal", "future")]
    ctx.indexes = indexes(jobs=[training_job("squatter", phase="Running", volumes=volumes)])
    assert template_claims.squatted(ctx, NS, "future") is not None
    assert template_claims.squatted(ctx, NS, "a") is not None
