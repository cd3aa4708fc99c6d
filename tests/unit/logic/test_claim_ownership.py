"""A claim some Checkpoint still points into is never garbage-collected or deleted (issue 23
item 6): the rules of logic/claim_ownership.py."""

from __future__ import annotations

from checkpoint_operator.logic.claim_ownership import adopter_owners, holders, owners_after


def ref(kind: str, name: str, uid: str | None = None) -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": kind, "name": name, "uid": uid or f"uid-{name}",
            "controller": False, "blockOwnerDeletion": True}


JOB = {**ref("TrainingJob", "producer"), "controller": True}
MANAGED = {"app.kubernetes.io/managed-by": "checkpoint-operator"}


def claim(name: str = "producer-output-abcde", owners: list | None = None, labels: dict | None = None) -> dict:
    return {"metadata": {"name": name, "labels": MANAGED if labels is None else labels,
                         "ownerReferences": owners if owners is not None else [JOB]},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}


def test_only_the_job_s_own_reference_may_leave():
    current = [JOB, ref("Checkpoint", "step-1"), ref("Checkpoint", "adopter")]
    assert owners_after(current, [ref("Checkpoint", "step-2"), ref("Checkpoint", "step-1")], drop_uid=JOB["uid"]) == \
        [ref("Checkpoint", "step-1"), ref("Checkpoint", "adopter"), ref("Checkpoint", "step-2")]
    assert owners_after(current, [], drop_uid=None) == current


def test_an_adopter_holds_the_operator_s_claims_only():
    adopter = ref("Checkpoint", "adopter")
    assert adopter_owners(claim(), adopter) == [JOB, adopter]
    owned_not_labelled = claim(labels={}, owners=[ref("Checkpoint", "step-1")])
    assert adopter_owners(owned_not_labelled, adopter) == [ref("Checkpoint", "step-1"), adopter]
    assert adopter_owners(claim(owners=[JOB, adopter]), adopter) is None          # already
    assert adopter_owners(claim(labels={}, owners=[]), adopter) is None           # the user's own claim
    assert adopter_owners(claim(labels={}, owners=[{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                    "name": "db", "uid": "s"}]), adopter) is None
    assert adopter_owners(claim(owners=[]), adopter) is None                      # nothing would collect it


def test_holders_are_the_checkpoints_among_the_owners():
    assert holders(claim(owners=[JOB, ref("Checkpoint", "a"), ref("Checkpoint", "b")])) == ["a", "b"]
    assert holders(claim()) == [] and holders(None) == []
