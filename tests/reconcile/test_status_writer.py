"""The one status door against the emulated API: no-op writes skipped, 409s retried on a fresh
read, events once per change, the status model enforced."""

import pydantic
import pytest

from checkpoint_operator.api.checkpoint import CheckpointStatus
from checkpoint_operator.api.common import VolumeSnapshotRecord
from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobStatus
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile import status_writer
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


def status_patches(ctx, seen):
    def observe(current, key, patch):
        seen.append((current.pass_id if current else None, key, patch))
    return observe


def test_a_pass_writes_its_changes_once_in_order_with_each_event(ctx):
    tj = created(ctx)
    seen = []
    status_writer.observers.append(status_patches(ctx, seen))
    try:
        with status_writer.status_pass(ctx, "TrainingJob", "default", "w"):
            staged = write_status(ctx, tj, StatusChange(phase="Pending", reason="InputNotFound", message="no x",
                                                        event="Warning"))
            assert staged.status.phase == "Pending"  # the pass goes on with the change applied
            assert ctx.kube.get(TRAINING_JOBS, "default", "w").get("status") is None  # not written yet
            write_status(ctx, staged, StatusChange(fields=TrainingJobStatus(inputCount=1)))
            write_status(ctx, staged, StatusChange(phase="Running", reason="Running", message="started",
                                                   event="Normal"))
    finally:
        status_writer.observers.clear()
    assert len(seen) == 1 and seen[0][2]["phase"] == "Running" and seen[0][2]["inputCount"] == 1
    stored = ctx.kube.get(TRAINING_JOBS, "default", "w")["status"]
    assert (stored["phase"], stored["inputCount"], stored["message"]) == ("Running", 1, "started")
    assert sorted(e["reason"] for e in events(ctx)) == ["InputNotFound", "Running"]


def test_a_pass_may_not_write_another_objects_status(ctx):
    tj = created(ctx)
    with pytest.raises(status_writer.NotTheOwner, match="only its own reconcile writes it"):
        with status_writer.status_pass(ctx, "Checkpoint", "default", "w"):
            write_status(ctx, tj, StatusChange(fields=TrainingJobStatus(inputCount=1)))
    assert ctx.kube.get(TRAINING_JOBS, "default", "w").get("status") is None


def test_commit_writes_before_an_effect_and_a_failing_pass_keeps_what_it_decided(ctx):
    tj = created(ctx)
    with status_writer.status_pass(ctx, "TrainingJob", "default", "w") as current:
        write_status(ctx, tj, StatusChange(fields=TrainingJobStatus(inputCount=1)))
        written = status_writer.commit(ctx, tj)
        assert written.status.inputCount == 1 and current.written is not None  # durable before the effect
    with pytest.raises(RuntimeError, match="boom"):
        with status_writer.status_pass(ctx, "TrainingJob", "default", "w"):
            write_status(ctx, written, StatusChange(fields=TrainingJobStatus(inputCount=2)))
            raise RuntimeError("boom")
    assert ctx.kube.get(TRAINING_JOBS, "default", "w")["status"]["inputCount"] == 2


def record(name: str) -> VolumeSnapshotRecord:
    return VolumeSnapshotRecord(key=name, name=f"{name}-0a1b", uid=f"uid-{name}")


def test_a_staged_function_of_the_object_is_made_again_from_a_fresh_read(ctx):
    """A list grown from its current value (status.volumeSnapshots) keeps what a concurrent write
    added, with the pass's earlier staged changes applied before it."""
    tj = created(ctx)

    def grown(current):
        return StatusChange(fields=TrainingJobStatus(volumeSnapshots=[*(current.status.volumeSnapshots or []),
                                                                      record("mine")]))
    with status_writer.status_pass(ctx, "TrainingJob", "default", "w"):
        write_status(ctx, tj, StatusChange(fields=TrainingJobStatus(inputCount=1)))
        staged = write_status(ctx, tj, grown)
        assert [r.key for r in staged.status.volumeSnapshots] == ["mine"]
        # someone else records one meanwhile: the pass's write meets a 409 and reads again
        ctx.kube.patch_status(TRAINING_JOBS, "default", "w", {"volumeSnapshots": [record("theirs").to_wire()]})
    stored = ctx.kube.get(TRAINING_JOBS, "default", "w")["status"]
    assert [r["key"] for r in stored["volumeSnapshots"]] == ["theirs", "mine"] and stored["inputCount"] == 1
