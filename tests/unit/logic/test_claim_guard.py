"""What a TrainingJob's template reaches, and which live claims are the operator's (logic/claim_guard.py,
issue 23 item 4)."""

from __future__ import annotations

from checkpoint_operator.logic.claim_guard import ClaimReference, claim_references, managed_claim_reason


def pvc_volume(name: str, claim: str) -> dict:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim}}


def ephemeral_clone(name: str, claim: str, key: str = "dataSource") -> dict:
    return {"name": name, "ephemeral": {"volumeClaimTemplate": {"spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
        key: {"kind": "PersistentVolumeClaim", "name": claim}}}}}


def test_every_way_a_template_reaches_a_claim_is_found():
    spec = {"containers": [], "volumes": [
        pvc_volume("a", "team-data"), {"name": "b", "emptyDir": {}}, ephemeral_clone("c", "producer-output-abcde"),
        ephemeral_clone("d", "model-data", "dataSourceRef"),
        {"name": "e", "ephemeral": {"volumeClaimTemplate": {"spec": {"dataSource": {
            "kind": "VolumeSnapshot", "apiGroup": "snapshot.storage.k8s.io", "name": "snap"}}}}}]}
    assert claim_references(spec) == [
        ClaimReference("team-data", "spec.template.spec.volumes[0].persistentVolumeClaim.claimName"),
        ClaimReference("producer-output-abcde", "spec.template.spec.volumes[2].ephemeral.volumeClaimTemplate.spec."
                                                "dataSource"),
        ClaimReference("model-data", "spec.template.spec.volumes[3].ephemeral.volumeClaimTemplate.spec.dataSourceRef")]


def test_a_live_claim_is_the_operator_s_by_label_or_by_owner():
    assert managed_claim_reason(None) is None
    assert managed_claim_reason({"metadata": {"name": "team-data", "labels": {"app": "x"}}}) is None
    assert "labelled app.kubernetes.io/managed-by=checkpoint-operator" in managed_claim_reason(
        {"metadata": {"labels": {"app.kubernetes.io/managed-by": "checkpoint-operator"}}})
    assert managed_claim_reason({"metadata": {"ownerReferences": [
        {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "name": "m-step-1", "uid": "u"}]}}) == \
        "it belongs to Checkpoint m-step-1"
    assert managed_claim_reason({"metadata": {"ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u"}]}}) is None
