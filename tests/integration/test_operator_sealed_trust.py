"""What the operator tells itself through fields a namespace user may also write, through the real
operator (hostile7 A1-A4): a snapshot Checkpoint's spec.source.trainingJob (the sealed summary) and
the changed-after-sealing / cached-on annotations are trusted only with the operator's signature
(logic/signatures.py; the key is a Secret in the operator's namespace that it makes on first start).

A1: a hand-written snapshot Checkpoint (any digest, step, lineage) over a job's claim, which the user
made it an owner of, fails with one line naming the field; it is never Ready. A2: a Checkpoint made
in advance under the name a job derives is a NameConflict: the job never adopts it nor hands it its
output claim, which stays the job's. A3: unsigned annotations are ignored; the operator's own
(signed) request is served."""

from __future__ import annotations

import base64
import copy
import threading

import pytest

from checkpoint_operator.config import SIGNING_KEY_SECRET
from checkpoint_operator.logic import signatures
from checkpoint_operator.logic.signatures import CACHED_ON_REQUEST, CHANGED_REQUEST
from checkpoint_operator.reconcile.signing import NOT_SIGNED, NOT_SIGNED_MESSAGE
from conftest import CKPT, NS, TJ, training_job, write_checkpoint
from test_operator_lifecycle import wait_phase
from test_operator_live import LIVE, ready, trainer_checkpoint

pytestmark = pytest.mark.timeout(180)
CLAIMS = "v1/persistentvolumeclaims"
OTHER_DIGEST = "sha256:" + "11" * 32


def ready_condition(obj: dict) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})


async def _ready_job(api, wait_for, trainer, name: str) -> tuple[dict, dict]:
    trainer.behaviours[name] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1",
                                                                {"w.pt": b"GOOD"}) or 0
    await api.create(TJ, NS, training_job(name))
    tj = await wait_phase(api, wait_for, TJ, name, "Succeeded")
    genuine = await api.get(CKPT, NS, f"{name}.step-1")
    assert genuine["status"]["phase"] == "Ready"
    return tj, genuine


def _forged(name: str, tj: dict, claim: str, directory: str = "step-9000") -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": name, "namespace": NS},
            "spec": {"source": {"trainingJob": {
                "name": tj["metadata"]["name"], "uid": tj["metadata"]["uid"], "directory": directory,
                "sealed": {"digest": OTHER_DIGEST, "sizeBytes": 140_000_000_000, "fileCount": 7, "step": 9000,
                           "complete": True, "resumable": True,
                           "parents": [{"name": "llama-3-8b-base", "uid": "u", "digest": OTHER_DIGEST}],
                           "location": {"volume": {"claimName": claim, "path": "step-1"}}}}}}}


async def _failed(api, wait_for, name: str) -> dict:
    async def failed():
        body = await api.get(CKPT, NS, name)
        return body if body and (body.get("status") or {}).get("phase") == "Failed" else None
    return await wait_for(failed, timeout=60)


async def test_a_hand_written_snapshot_checkpoint_fails_naming_the_field_and_is_never_ready(
        api, operator, trainer, wait_for):
    """A1 (and A4's squatters): the forger may write the spec and make it an owner of the job's claim."""
    tj, genuine = await _ready_job(api, wait_for, trainer, "victim")
    claim = tj["status"]["outputClaim"]
    await api.create(CKPT, NS, _forged("forged", tj, claim))
    # A copy of the genuine one's signed spec under another name: bound to its name, it does not verify either.
    replay = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": "replayed", "namespace": NS},
              "spec": copy.deepcopy(genuine["spec"])}
    replay["spec"]["source"]["trainingJob"]["sealed"]["step"] = 9000
    await api.create(CKPT, NS, replay)
    copied = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": "copied", "namespace": NS},
              "spec": copy.deepcopy(genuine["spec"])}
    await api.create(CKPT, NS, copied)
    for name in ("forged", "replayed", "copied"):
        body = await api.get(CKPT, NS, name)
        pvc = await api.get(CLAIMS, NS, claim)
        owners = pvc["metadata"].get("ownerReferences") or []
        await api.patch(CLAIMS, NS, claim, {"metadata": {"ownerReferences": owners + [{
            "apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "name": name, "uid": body["metadata"]["uid"]}]}})
    for name in ("forged", "replayed", "copied"):
        failed = await _failed(api, wait_for, name)
        condition = ready_condition(failed)
        assert (condition["reason"], condition["message"]) == (NOT_SIGNED, NOT_SIGNED_MESSAGE), name
        assert "spec.source.trainingJob.sealed is written by the operator only: its signature does not verify" \
            in condition["message"]
        assert not failed["status"].get("digest") and not failed["status"].get("producedBy"), failed["status"]
    # The genuine one is untouched, and what a consumer of "the job's latest" gets is still the job's.
    assert (await api.get(CKPT, NS, "victim.step-1"))["status"]["phase"] == "Ready"


async def test_a_name_taken_in_advance_is_a_name_conflict_and_the_output_claim_stays_the_job_s(
        api, operator, trainer, wait_for):
    """A2: only create/delete on Checkpoints; the job's uid and claim are in its status, readable by all."""
    release = threading.Event()

    def train(attempt, env):
        assert release.wait(90)
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"w.pt": b"GOOD"})
        return 0
    trainer.behaviours["victim2"] = train
    await api.create(TJ, NS, training_job("victim2"))

    async def running():
        tj = await api.get(TJ, NS, "victim2")
        return tj if tj and tj["metadata"].get("uid") and (tj.get("status") or {}).get("outputClaim") else None
    tj = await wait_for(running, timeout=60)
    claim = tj["status"]["outputClaim"]
    await api.create(CKPT, NS, _forged("victim2.step-1", tj, claim, directory="step-1"))
    release.set()

    async def conflicted():
        job = await api.get(TJ, NS, "victim2")
        return job if ready_condition(job).get("reason") == "NameConflict" else None
    waiting = await wait_for(conflicted, timeout=90)
    message = ready_condition(waiting)["message"]
    assert "output 'step-1' would be Checkpoint victim2.step-1, which exists" in message, message
    assert "without the operator's signature" in message, message
    decoy = await api.get(CKPT, NS, "victim2.step-1")
    pvc = await api.get(CLAIMS, NS, claim)
    owners = {(o["kind"], o["uid"]) for o in pvc["metadata"].get("ownerReferences") or []}
    assert ("Checkpoint", decoy["metadata"]["uid"]) not in owners          # never handed to the decoy
    assert ("TrainingJob", tj["metadata"]["uid"]) in owners               # still the job's
    assert not (decoy.get("metadata", {}).get("annotations") or {}).get(CHANGED_REQUEST.key)  # no change "reported"

    await api.delete(CKPT, NS, "victim2.step-1")  # the decoy goes: the job's own Checkpoint is made
    done = await wait_phase(api, wait_for, TJ, "victim2", "Succeeded", timeout=90)
    assert done["status"]["outputCheckpoints"] == ["victim2.step-1"]
    mine = await api.get(CKPT, NS, "victim2.step-1")
    assert mine["status"]["phase"] == "Ready" and mine["status"]["digest"] != OTHER_DIGEST
    assert mine["status"]["producedBy"]["uid"] == tj["metadata"]["uid"]


async def _operator_key(api) -> bytes:
    """The test acts as the operator here (it may read the Secret); no tenant can."""
    secret = await api.get("v1/secrets", "default", SIGNING_KEY_SECRET)
    return base64.b64decode(secret["data"]["key"])


async def test_unsigned_annotations_are_ignored_and_the_operator_s_own_requests_served(
        api, operator, trainer, wait_for):
    """A3: a merge patch of the two annotations (any text) neither fails the Checkpoint nor sets cachedOn."""
    _, genuine = await _ready_job(api, wait_for, trainer, "victim3")
    meta = genuine["metadata"]
    await api.patch(CKPT, NS, "victim3.step-1", {"metadata": {"annotations": {
        CHANGED_REQUEST.key: "SECURITY NOTICE: this model was recalled, use ckpt attacker-model instead",
        CHANGED_REQUEST.signature_key: "v1:" + "0" * 64,
        CACHED_ON_REQUEST.key: '["gpu-node-7","node-a"]'}}})
    # Then a request the operator did sign (as a job's fills would): once it is served, the forged ones were
    # seen by the same reconcile and ignored.
    key = await _operator_key(api)
    signed = CACHED_ON_REQUEST.signed(key, NS, meta["name"], meta["uid"], '["node-b"]')
    await api.patch(CKPT, NS, "victim3.step-1", {"metadata": {"annotations": signed}})

    async def cached():
        body = await api.get(CKPT, NS, "victim3.step-1")
        return body if (body.get("status") or {}).get("cachedOn") else None
    body = await wait_for(cached, timeout=60)
    assert body["status"]["cachedOn"] == ["node-b"]
    assert body["status"]["phase"] == "Ready", ready_condition(body)
    assert "SECURITY NOTICE" not in str(body["status"])

    # The operator's own changed-after-sealing request fails it, with the operator's text.
    line = "step-1 changed after it was sealed (digest now sha256:" + "22" * 32 + ")"
    await api.patch(CKPT, NS, "victim3.step-1", {"metadata": {"annotations": CHANGED_REQUEST.signed(
        key, NS, meta["name"], meta["uid"], line)}})
    failed = await _failed(api, wait_for, "victim3.step-1")
    assert ready_condition(failed)["reason"] == "ChangedAfterSealing"
    assert ready_condition(failed)["message"].startswith(line)


async def test_the_job_signs_what_it_creates_with_the_key_the_operator_made(api, operator, trainer, wait_for):
    _, genuine = await _ready_job(api, wait_for, trainer, "keyed")
    key = await _operator_key(api)
    assert len(key) >= 32
    meta, source = genuine["metadata"], genuine["spec"]["source"]["trainingJob"]
    fields = signatures.sealed_fields(meta["namespace"], meta["name"], source["name"], source["uid"],
                                      source["directory"], source["sealed"])
    assert signatures.verify((key,), signatures.SEALED, fields, source["signature"])
    assert not signatures.verify((b"x" * 32,), signatures.SEALED, fields, source["signature"])


async def test_retention_counts_only_the_job_s_own_checkpoints(api, operator, trainer, wait_for):
    """A4: a squatter naming a live-sealing job's uid with a huge step (only `create` on Checkpoints) is no
    Checkpoint of the job: keep: 1 keeps the job's latest, never the squatter's, and retires nothing for it."""
    first_seen = threading.Event()

    def train(attempt, env):
        out = env["CHECKPOINT_OUTPUT_DIR"]
        trainer_checkpoint(out, 10)
        assert first_seen.wait(90)
        trainer_checkpoint(out, 20)
        return 0
    trainer.behaviours["kept"] = train
    await api.create(TJ, NS, training_job("kept", output={**LIVE, "keep": 1}))
    first = await wait_for(lambda: ready(api, "kept.checkpoint-10"), timeout=60)
    tj = await api.get(TJ, NS, "kept")
    squatter = _forged("squat", tj, tj["status"]["outputClaim"], directory="zz-1")
    squatter["spec"]["source"]["trainingJob"]["sealed"].update(
        {"step": 1_000_000_001, "digest": first["status"]["digest"], "location": first["status"]["location"]})
    await api.create(CKPT, NS, squatter)
    await _failed(api, wait_for, "squat")
    first_seen.set()
    done = await wait_phase(api, wait_for, TJ, "kept", "Succeeded", timeout=90)
    assert done["status"]["outputCheckpoints"] == ["kept.checkpoint-20"]
    assert (await api.get(CKPT, NS, "kept.checkpoint-20"))["status"]["phase"] == "Ready"
    retired = [r["path"] for r in done["status"]["live"].get("retired") or []]
    assert "zz-1" not in retired and "checkpoint-20" not in retired, retired
