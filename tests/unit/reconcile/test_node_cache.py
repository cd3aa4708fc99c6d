"""reconcile/node_cache.py: the namespace's cache volume and claim are made or found once per namespace
every few minutes, not at every job's start (the API requests of a lifecycle); status.cachedOn is asked
for by the job's reconcile and written by the Checkpoint's."""

from __future__ import annotations

import copy
import json
from typing import Any

import factories
import pod_shapes
from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.kube import Conflict
from checkpoint_operator.logic.node_cache import CACHED_ON_ANNOTATION, FillReport, requested_cached_on
from checkpoint_operator.logic.workers import WorkerPod
from checkpoint_operator.api.common import PodPhase
from checkpoint_operator.reconcile import status_writer
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.logic.signatures import CACHED_ON_REQUEST
from checkpoint_operator.reconcile.node_cache import ENSURED_FOR_SECONDS, ensure_cache_claim, record_fills, sync_cached_on
from checkpoint_operator.reconcile.signing_keys import SigningKeys

KEY = b"k" * 32


class RecordingKube:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def ensure(self, resource: Any, namespace: str, body: dict) -> dict:
        self.calls.append((resource.plural, namespace, body["metadata"]["name"]))
        return body


def test_the_cache_claim_is_made_once_per_namespace_and_looked_for_again_later():
    kube = RecordingKube()
    ctx = Context(kube=kube, config=pod_shapes.config("s3-cache"))  # type: ignore[arg-type]
    assert ensure_cache_claim(ctx, "team-a", now=100.0)
    assert kube.calls == [("persistentvolumes", "", "ckpt-node-cache-team-a"),
                          ("persistentvolumeclaims", "team-a", "ckpt-node-cache")]
    assert not ensure_cache_claim(ctx, "team-a", now=100.0 + ENSURED_FOR_SECONDS - 1)
    assert ensure_cache_claim(ctx, "team-b", now=101.0)
    assert ensure_cache_claim(ctx, "team-a", now=100.0 + ENSURED_FOR_SECONDS)  # deleted by hand meanwhile?
    assert len(kube.calls) == 6
    other = Context(kube=kube, config=pod_shapes.config("s3-cache"))  # type: ignore[arg-type]
    assert ensure_cache_claim(other, "team-a", now=100.0)  # another operator (a restart) looks again


# --- status.cachedOn: asked for by the job's reconcile, written by the Checkpoint's (one owner) -----

DIGEST = "sha256:" + "ab" * 32


class CheckpointKube:
    """One Checkpoint: GET, a conditional metadata PATCH (a 409 on a stale resourceVersion, or once
    when `conflict_once`), and status PATCHes recorded."""

    def __init__(self, body: dict, conflict_once: bool = False) -> None:
        self.body, self.conflict_once = body, conflict_once
        self.status_patches: list[dict] = []

    def get(self, resource: Any, namespace: str, name: str) -> dict:
        return copy.deepcopy(self.body)

    def patch(self, resource: Any, namespace: str, name: str, patch: dict) -> dict:
        meta = patch["metadata"]
        if self.conflict_once or meta.get("resourceVersion") != self.body["metadata"]["resourceVersion"]:
            if self.conflict_once:  # another job's fill asked meanwhile
                self.conflict_once = False
                meta = self.body["metadata"]
                meta["annotations"] = CACHED_ON_REQUEST.signed(KEY, meta["namespace"], meta["name"], meta["uid"],
                                                               '["node-z"]')
                self._bump()
            raise Conflict(409, "Conflict", "the object changed")
        self.body["metadata"].setdefault("annotations", {}).update(meta.get("annotations") or {})
        self._bump()
        return copy.deepcopy(self.body)

    def patch_status(self, resource: Any, namespace: str, name: str, patch: dict, resource_version: str) -> dict:
        self.status_patches.append(patch)
        self.body["status"].update(patch)
        self._bump()
        return copy.deepcopy(self.body)

    def _bump(self) -> None:
        self.body["metadata"]["resourceVersion"] = str(int(self.body["metadata"]["resourceVersion"]) + 1)


def _input_checkpoint() -> dict:
    body = factories.checkpoint("base")
    body["metadata"].update({"resourceVersion": "1"})
    body["status"]["digest"] = DIGEST
    return body


def _job_with_input(ckpt: dict) -> TrainingJob:
    body = factories.training_job("train", phase="Running")
    body["metadata"]["uid"] = "tj-uid"
    body["status"]["inputs"] = [{"name": "base", "uid": ckpt["metadata"]["uid"], "digest": DIGEST}]
    return TrainingJob.model_validate(body)


def _fill(pod_uid: str, node: str) -> WorkerPod:
    report = FillReport(node=node, key="default/" + DIGEST.removeprefix("sha256:"), outcome="miss",
                        size_bytes=10, fetched_bytes=10)
    return WorkerPod(name=f"w-{pod_uid}", phase=PodPhase.RUNNING, uid=pod_uid, cache_fills=(report,))


def test_a_jobs_fills_ask_the_checkpoint_which_alone_writes_cached_on():
    """The TrainingJob's pass wrote the Checkpoint's status.cachedOn before (NotTheOwner under the
    one-writer rule): it now only annotates, and the Checkpoint's own pass writes the status."""
    kube = CheckpointKube(_input_checkpoint())
    ctx = Context(kube=kube, config=pod_shapes.config("s3-cache"), signing_keys=SigningKeys((KEY,)))  # type: ignore[arg-type]
    tj = _job_with_input(kube.body)
    with status_writer.status_pass(ctx, "TrainingJob", "default", "train"):
        record_fills(ctx, tj, [_fill("p1", "node-a")])
    assert kube.status_patches == []
    assert kube.body["metadata"]["annotations"][CACHED_ON_ANNOTATION] == '["node-a"]'
    checkpoint = Checkpoint.model_validate(kube.get(None, "", ""))
    with status_writer.status_pass(ctx, "Checkpoint", "default", "base"):
        sync_cached_on(ctx, checkpoint)
    assert kube.status_patches == [{"cachedOn": ["node-a"]}]


def test_two_jobs_asking_at_once_keep_both_nodes():
    kube = CheckpointKube(_input_checkpoint(), conflict_once=True)
    ctx = Context(kube=kube, config=pod_shapes.config("s3-cache"), signing_keys=SigningKeys((KEY,)))  # type: ignore[arg-type]
    with status_writer.status_pass(ctx, "TrainingJob", "default", "train"):
        record_fills(ctx, _job_with_input(kube.body), [_fill("p2", "node-a")])
    assert kube.body["metadata"]["annotations"][CACHED_ON_ANNOTATION] == '["node-a","node-z"]'


def test_a_bad_cached_on_annotation_is_ignored():
    assert requested_cached_on('["a","b"]') == ["a", "b"]
    assert requested_cached_on("[]") == []
    for bad in (None, "not json", '{"a": 1}', '[1]', '[""]', '["' + "n" * 254 + '"]',
                json.dumps([f"n{i}" for i in range(65)]), "[" + " " * 20_000 + "]"):
        assert requested_cached_on(bad) is None, bad


def test_a_cached_on_annotation_the_operator_did_not_sign_is_no_request():
    """Anyone who may patch a Checkpoint may write the annotation (hostile7 A3): without the operator's
    signature for this very Checkpoint (a copy from another one does not verify) status.cachedOn stays."""
    body = _input_checkpoint()
    body["status"]["cachedOn"] = ["node-a"]
    other = CACHED_ON_REQUEST.signed(KEY, "default", "other", "other-uid", '["gpu-node-7"]')
    for asked in ({CACHED_ON_ANNOTATION: '["gpu-node-7","node-b"]'}, other,
                        CACHED_ON_REQUEST.signed(b"x" * 32, "default", "base", body["metadata"]["uid"], '["gpu-node-7"]')):
        body["metadata"]["annotations"] = asked
        kube = CheckpointKube(copy.deepcopy(body))
        ctx = Context(kube=kube, config=pod_shapes.config("s3-cache"), signing_keys=SigningKeys((KEY,)))  # type: ignore[arg-type]
        with status_writer.status_pass(ctx, "Checkpoint", "default", "base"):
            sync_cached_on(ctx, Checkpoint.model_validate(kube.body))
        assert kube.status_patches == [], asked
    body["metadata"]["annotations"] = CACHED_ON_REQUEST.signed(KEY, "default", "base", body["metadata"]["uid"],
                                                               '["node-b"]')
    kube = CheckpointKube(body)
    ctx = Context(kube=kube, config=pod_shapes.config("s3-cache"), signing_keys=SigningKeys((KEY,)))  # type: ignore[arg-type]
    with status_writer.status_pass(ctx, "Checkpoint", "default", "base"):
        sync_cached_on(ctx, Checkpoint.model_validate(kube.body))
    assert kube.status_patches == [{"cachedOn": ["node-b"]}]
