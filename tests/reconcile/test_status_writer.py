"""The one status door against the emulated API: no-op writes skipped, 409s retried on a fresh
read, events once per change, the status model enforced."""

import pydantic
import pytest

from checkpoint_operator.api.checkpoint import CheckpointStatus
from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobStatus
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.status_writer import write_status
from checkpoint_operator.kube import EVENTS, TRAINING_JOBS, Kube
from checkpoint_operator.logic.status import StatusChange
from factories import training_job


@pytest.fixture
def ctx(api_url):
    return Context(kube=Kube.from_url(api_url), config=OperatorConfig())


def created(ctx) -> TrainingJob:
    body = training_job("w")
    body["metadata"] = {"name": "w", "namespace": "default"}
    return TrainingJob.model_validate(ctx.kube.create(TRAINING_JOBS, "default", body))


def events(ctx):
    return [e for e in ctx.kube.list(EVENTS, "default") if e["involvedObject"]["name"] == "w"]


def test_writes_once_skips_no_ops_and_posts_one_event(ctx):
    tj = created(ctx)
    change = StatusChange(phase="Pending", reason="InputNotFound", message="input x does not exist", event="Warning")
    written = write_status(ctx, tj, change)
    assert written.status.phase == "Pending" and written.ready_reason() == "InputNotFound"
    again = write_status(ctx, written, change)
    assert again.metadata.resourceVersion == written.metadata.resourceVersion  # no write
    assert [e["reason"] for e in events(ctx)] == ["InputNotFound"]


def test_a_conflict_is_retried_on_a_fresh_read(ctx):
    tj = created(ctx)
    # someone else writes meanwhile: our copy is stale
    ctx.kube.patch_status(TRAINING_JOBS, "default", "w", {"jobName": "by-someone-else"})
    written = write_status(ctx, tj, StatusChange(fields=TrainingJobStatus(inputCount=2)))
    assert written.status.inputCount == 2 and written.status.jobName == "by-someone-else"


def test_the_status_model_refuses_what_the_schema_would_prune(ctx):
    tj = created(ctx)
    with pytest.raises(pydantic.ValidationError):  # when the change is made
        StatusChange(fields=TrainingJobStatus.model_validate({"notAField": 1}))
    with pytest.raises(pydantic.ValidationError):  # a Checkpoint's field on a TrainingJob: when it is written
        write_status(ctx, tj, StatusChange(fields=CheckpointStatus(owned=True)))
    assert ctx.kube.get(TRAINING_JOBS, "default", "w").get("status") is None
