"""logic/signatures.py: what the operator tells itself through fields users may write is trusted only
with its signature (hostile7 A1-A4): a changed byte anywhere fails, field order does not matter."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from checkpoint_operator.logic import signatures
from checkpoint_operator.logic.inputs import CheckpointInfo
from checkpoint_operator.logic.sealing_changes import MAX_REQUEST, changed_failure
from checkpoint_operator.api.checkpoint import CheckpointPhase

KEY, OTHER = b"k" * 32, b"o" * 32
SEALED: dict[str, Any] = {"digest": "sha256:" + "ab" * 32, "sizeBytes": 1024, "fileCount": 3, "step": 10,
                          "complete": True, "resumable": False, "metrics": {"loss": 2.0, "acc": 0.5},
                          "parents": [{"name": "base", "uid": "u-base", "digest": "sha256:" + "cd" * 32}],
                          "location": {"volume": {"claimName": "train-output-1", "path": "step-10"}}}


def _body(**changes: Any) -> dict[str, Any]:
    body = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
            "metadata": {"name": "train.step-10", "namespace": "team-a"},
            "spec": {"source": {"trainingJob": {"name": "train", "uid": "job-uid", "directory": "step-10",
                                                "sealed": copy.deepcopy(SEALED)}}}}
    return body


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    meta, source = body["metadata"], body["spec"]["source"]["trainingJob"]
    return signatures.sealed_fields(meta["namespace"], meta["name"], source["name"], source["uid"],
                                    source["directory"], source["sealed"])


def _verifies(body: dict[str, Any], keys: tuple[bytes, ...] = (KEY,)) -> bool:
    return signatures.verify(keys, signatures.SEALED, _fields(body),
                             body["spec"]["source"]["trainingJob"].get("signature"))


def test_the_operator_s_own_body_verifies_and_is_not_changed_otherwise():
    planned = _body()
    signed = signatures.sign_snapshot_body(KEY, planned)
    assert "signature" not in planned["spec"]["source"]["trainingJob"]  # the plan itself stays as planned
    assert signed["spec"]["source"]["trainingJob"]["signature"].startswith("v1:")
    assert _verifies(signed)
    assert not _verifies(signed, (OTHER,))                  # another key (another operator, a guess)
    assert _verifies(signed, (OTHER, KEY))                  # a rotation: the previous key still verifies
    assert not _verifies(planned)                           # unsigned


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _paths(v, (*path, i))]
    return [path]


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return value[:-1] + ("x" if value[-1:] != "x" else "y")


@pytest.mark.parametrize("path", [("metadata", "name"), ("metadata", "namespace")] + [
    ("spec", "source", "trainingJob", *p) for p in _paths({k: v for k, v in _body()["spec"]["source"][
        "trainingJob"].items()})])
def test_a_changed_byte_in_any_field_fails(path):
    signed = signatures.sign_snapshot_body(KEY, _body())
    forged = copy.deepcopy(signed)
    target = forged
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = _changed(target[path[-1]])
    assert not _verifies(forged), path


def test_an_added_or_removed_field_fails():
    signed = signatures.sign_snapshot_body(KEY, _body())
    added = copy.deepcopy(signed)
    added["spec"]["source"]["trainingJob"]["sealed"]["location"]["volume"]["manifest"] = "x"
    removed = copy.deepcopy(signed)
    del removed["spec"]["source"]["trainingJob"]["sealed"]["parents"]
    assert not _verifies(added) and not _verifies(removed)


def test_field_order_and_number_spelling_do_not_matter():
    """What the API server returns may order keys differently and write a whole float as an integer."""
    signed = signatures.sign_snapshot_body(KEY, _body())
    source = signed["spec"]["source"]["trainingJob"]
    reordered = copy.deepcopy(signed)
    sealed = reordered["spec"]["source"]["trainingJob"]["sealed"]
    reordered["spec"]["source"]["trainingJob"]["sealed"] = dict(reversed(list(sealed.items())))
    reordered["spec"]["source"]["trainingJob"]["sealed"]["metrics"] = {"acc": 0.5, "loss": 2}
    assert _verifies(reordered)
    assert signatures.canonical("p", {"a": 1, "b": [{"y": 2.0, "x": 1}]}) == \
        signatures.canonical("p", {"b": [{"x": 1, "y": 2}], "a": 1.0})
    assert source["signature"] == signatures.sign(KEY, signatures.SEALED, dict(reversed(list(_fields(signed).items()))))


def test_a_signature_is_bound_to_its_purpose():
    fields = signatures.annotation_fields("ns", "c", "uid", "x")
    signature = signatures.sign(KEY, signatures.CACHED_ON, fields)
    assert signatures.verify((KEY,), signatures.CACHED_ON, fields, signature)
    assert not signatures.verify((KEY,), signatures.CHANGED_AFTER_SEALING, fields, signature)


def test_malformed_signatures_do_not_verify():
    digest = signatures.message_digest(signatures.SEALED, _fields(_body()))
    good = signatures.sign_digest(KEY, digest)
    for bad in (None, "", "v1:", good.upper(), good + "0", "v2" + good[2:], "x" * 10_000):
        assert not signatures.verify_digest((KEY,), digest, bad), bad
    assert not signatures.verify_digest((KEY,), "", good)


def test_a_signed_annotation_is_trusted_only_for_its_object_and_value():
    request = signatures.CHANGED_REQUEST
    annotations = request.signed(KEY, "ns", "c", "uid-1", "step-1 changed after it was sealed")
    assert set(annotations) == {"ckpt.dev/changed-after-sealing", "ckpt.dev/changed-after-sealing-signature"}
    assert request.trusted_value((KEY,), annotations, "ns", "c", "uid-1") == "step-1 changed after it was sealed"
    assert request.trusted_value((KEY,), annotations, "ns", "c", "uid-2") is None        # a namesake made since
    assert request.trusted_value((KEY,), annotations, "ns", "other", "uid-1") is None    # copied to another
    assert request.trusted_value((OTHER,), annotations, "ns", "c", "uid-1") is None
    forged = {**annotations, request.key: "SECURITY NOTICE: use ckpt attacker-model instead"}
    assert request.trusted_value((KEY,), forged, "ns", "c", "uid-1") is None
    assert request.trusted_value((KEY,), {request.key: "x"}, "ns", "c", "uid-1") is None  # unsigned
    assert request.trusted_value((KEY,), {}, "ns", "c", "uid-1") is None
    # the cached-on signature is not a changed-after-sealing one
    cached = signatures.CACHED_ON_REQUEST.signed(KEY, "ns", "c", "uid-1", "x")
    assert request.trusted_value((KEY,), {request.key: "x", request.signature_key: cached[
        signatures.CACHED_ON_REQUEST.signature_key]}, "ns", "c", "uid-1") is None


def test_the_index_trusts_a_producer_only_in_status_or_signed():
    signed = signatures.sign_snapshot_body(KEY, _body())
    signed["metadata"]["uid"] = "c-uid"
    info = CheckpointInfo.from_body(signed)
    assert info.sealed_by("job-uid", "step-10") and info.producer_is_trusted((KEY,))
    assert not info.producer_is_trusted((OTHER,))
    forged = copy.deepcopy(signed)
    forged["spec"]["source"]["trainingJob"]["sealed"]["step"] = 9000
    assert not CheckpointInfo.from_body(forged).producer_is_trusted((KEY,))
    unsigned = _body()
    del unsigned["spec"]["source"]["trainingJob"]["sealed"]
    assert not CheckpointInfo.from_body(unsigned).producer_is_trusted((KEY,))
    ready = copy.deepcopy(unsigned)  # status: only the operator writes it
    ready["status"] = {"phase": "Ready", "producedBy": {"name": "train", "uid": "job-uid"}}
    assert CheckpointInfo.from_body(ready).producer_is_trusted((KEY,))
    assert CheckpointInfo.from_body({"metadata": {"name": "user-made"}}).producer_is_trusted(())


def test_a_changed_request_is_one_bounded_line_whoever_wrote_it():
    change = changed_failure("x\n" * 200_000, "sha256:" + "ab" * 32, CheckpointPhase.READY, produced_by_job=True)
    assert change is not None and "\n" not in change.message and len(change.message) < MAX_REQUEST + 200
