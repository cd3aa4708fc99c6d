"""A claim some Checkpoint still points into is never garbage-collected or deleted (issue 23
item 6): reconcile/claim_holds.py and publish.py against the emulated API, conditional writes
included."""

from __future__ import annotations

import pytest

from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.kube import PVCS, Conflict, Kube
from checkpoint_operator.reconcile import claim_holds, publish
from checkpoint_operator.reconcile.context import Context
from factories import checkpoint, training_job

NS = "default"


def ref(kind: str, name: str, uid: str | None = None) -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": kind, "name": name, "uid": uid or f"uid-{name}",
            "controller": False, "blockOwnerDeletion": True}


JOB = {**ref("TrainingJob", "producer"), "controller": True}
MANAGED = {"app.kubernetes.io/managed-by": "checkpoint-operator"}


def claim(name: str = "producer-output-abcde", owners: list | None = None, labels: dict | None = None) -> dict:
    return {"metadata": {"name": name, "labels": MANAGED if labels is None else labels,
                         "ownerReferences": owners if owners is not None else [JOB]},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}


@pytest.fixture
def ctx(api_url):
    return Context(kube=Kube.from_url(api_url), config=OperatorConfig())


def adopter() -> Checkpoint:
    body = checkpoint("adopter", phase="Pending", claim="producer-output-abcde", produced_by=None)
    body["metadata"]["uid"] = "uid-adopter"
    return Checkpoint.model_validate(body)


def test_an_adopter_becomes_an_owner_before_it_scans(ctx):
    live = ctx.kube.create(PVCS, NS, claim())
    assert claim_holds.hold_for_adopter(ctx, adopter(), live) is None
    owners = ctx.kube.get(PVCS, NS, "producer-output-abcde")["metadata"]["ownerReferences"]
    assert [o["name"] for o in owners] == ["producer", "adopter"]
    assert owners[1]["blockOwnerDeletion"] is True and owners[1]["controller"] is False


def test_the_adopter_s_patch_is_conditional(ctx):
    stale = ctx.kube.create(PVCS, NS, claim())
    ctx.kube.patch(PVCS, NS, "producer-output-abcde", {"metadata": {"annotations": {"x": "y"}}})
    wait = claim_holds.hold_for_adopter(ctx, adopter(), stale)
    assert wait is not None and wait.reason is None and wait.requeue_after
    assert len(ctx.kube.get(PVCS, NS, "producer-output-abcde")["metadata"]["ownerReferences"]) == 1


def test_an_adopter_waits_on_a_claim_that_is_being_deleted(ctx):
    live = claim()
    live["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    wait = claim_holds.hold_for_adopter(ctx, adopter(), live)
    assert wait.reason == "VolumeDeleting" and "producer-output-abcde is being deleted" in wait.message


def test_the_operator_deletes_a_claim_only_when_no_checkpoint_holds_it(ctx):
    ctx.kube.create(PVCS, NS, claim(owners=[JOB, ref("Checkpoint", "adopter")]))
    assert claim_holds.delete_unless_held(ctx, NS, "producer-output-abcde") == (False, ["adopter"])
    assert ctx.kube.get(PVCS, NS, "producer-output-abcde") is not None
    ctx.kube.create(PVCS, NS, claim("free-output-abcde"))
    assert claim_holds.delete_unless_held(ctx, NS, "free-output-abcde") == (True, [])


class AdoptedMeanwhile(Kube):
    """An adopter adds itself between the operator's read and its delete."""

    def delete(self, resource, namespace, name, propagation="Background", resource_version=None):
        if resource == PVCS and not getattr(self, "adopted", False):
            self.adopted = True
            self.patch(PVCS, namespace, name, {"metadata": {"ownerReferences": [JOB, ref("Checkpoint", "late")]}})
        return super().delete(resource, namespace, name, propagation, resource_version)


def test_an_adoption_between_the_read_and_the_delete_keeps_the_claim(api_url):
    ctx = Context(kube=AdoptedMeanwhile.from_url(api_url), config=OperatorConfig())
    ctx.kube.create(PVCS, NS, claim())
    assert claim_holds.delete_unless_held(ctx, NS, "producer-output-abcde") == (False, ["late"])
    assert ctx.kube.get(PVCS, NS, "producer-output-abcde") is not None


def test_a_conditional_delete_of_a_changed_claim_is_a_conflict(ctx):
    created = ctx.kube.create(PVCS, NS, claim())
    ctx.kube.patch(PVCS, NS, "producer-output-abcde", {"metadata": {"annotations": {"x": "y"}}})
    with pytest.raises(Conflict):
        ctx.kube.delete(PVCS, NS, "producer-output-abcde", resource_version=created["metadata"]["resourceVersion"])


def test_live_sealing_adds_owners_and_never_drops_an_earlier_checkpoint_or_an_adopter(ctx):
    tj = TrainingJob.model_validate({**training_job("producer"), "metadata": {
        "name": "producer", "namespace": NS, "uid": JOB["uid"]}})
    ctx.kube.create(PVCS, NS, claim(owners=[JOB, ref("Checkpoint", "producer-step-1"), ref("Checkpoint", "adopter")]))
    publish.own_output_claim(ctx, tj, "producer-output-abcde", [ref("Checkpoint", "producer-step-2")], keep_job=True)
    owners = ctx.kube.get(PVCS, NS, "producer-output-abcde")["metadata"]["ownerReferences"]
    assert [o["name"] for o in owners] == ["producer", "producer-step-1", "adopter", "producer-step-2"]
