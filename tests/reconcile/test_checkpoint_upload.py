"""The upload step (reconcile/checkpoint_upload.py) against the emulated API."""

import pytest

from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.api.upload import UPLOAD_DIGEST_ANNOTATION, UPLOAD_REQUEST_ANNOTATION
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.kube import CHECKPOINTS, NAMESPACES, PODS, Kube
from checkpoint_operator.logic.limits import NAMESPACE_LIMIT_ANNOTATION
from checkpoint_operator.logic.results import Wait
from checkpoint_operator.reconcile.checkpoint_upload import await_upload
from checkpoint_operator.reconcile.context import Context

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def ctx(api_url):
    return Context(kube=Kube.from_url(api_url), config=OperatorConfig())


def requested_upload(ctx: Context) -> Checkpoint:
    body = {"metadata": {"name": "pushed", "namespace": "team-a",
                         "annotations": {UPLOAD_REQUEST_ANNOTATION: "1", UPLOAD_DIGEST_ANNOTATION: DIGEST}},
            "spec": {"source": {"upload": {}}}}
    return Checkpoint.model_validate(ctx.kube.create(CHECKPOINTS, "team-a", body))


@pytest.mark.parametrize("storage_type", ["volume", "s3"])
def test_an_unusable_namespace_limit_waits_and_starts_no_pod(ctx, storage_type):
    """The limit's wait is returned, never passed on as the agent's --max-size (it used to reach
    the receiver's command line as `--max-size Wait(...)`)."""
    ctx.config = OperatorConfig(storage_type=storage_type, s3_bucket="b")
    ctx.kube.create(NAMESPACES, "", {"metadata": {"name": "team-a",
                                                  "annotations": {NAMESPACE_LIMIT_ANNOTATION: "big"}}})
    result = await_upload(ctx, requested_upload(ctx))
    assert isinstance(result, Wait) and result.reason == "InvalidLimit", result
    assert "annotation ckpt.dev/max-checkpoint-size='big'" in result.message
    assert ctx.kube.list(PODS, "team-a") == []
