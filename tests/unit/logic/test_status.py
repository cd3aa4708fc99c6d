"""Status changes as data (logic/status.py): partial status models."""

from __future__ import annotations

import pytest

from checkpoint_operator.api.checkpoint import CheckpointStatus
from checkpoint_operator.api.trainingjob import TrainingJobStatus
from checkpoint_operator.logic.results import Fail, Wait
from checkpoint_operator.logic.status import StatusChange, fail_change, set_fields, wait_change


def test_a_status_change_names_the_fields_it_sets_and_removes():
    change = StatusChange(fields=TrainingJobStatus(jobName="j", inputs=None))
    assert set_fields(change.fields) == {"jobName": "j", "inputs": None}  # None: removed
    merged = change.with_fields(TrainingJobStatus(inputCount=0, jobName="k"))
    assert set_fields(merged.fields) == {"jobName": "k", "inputs": None, "inputCount": 0}
    with pytest.raises(TypeError, match="CheckpointStatus fields added to a change of TrainingJobStatus"):
        change.with_fields(CheckpointStatus(owned=True))


def test_waits_and_failures_record_the_same_way_for_both_kinds():
    assert wait_change("Pending", Wait()) is None  # a quiet wait
    wait = wait_change("Pending", Wait("InputNotReady", "input x", stalled=True, warning=False))
    assert (wait.phase, wait.reason, wait.stalled, wait.event) == ("Pending", "InputNotReady", True, "Normal")
    failed = fail_change("Failed", Fail("ImportFailed", "no"))
    assert (failed.phase, failed.reason, failed.stalled, failed.event, failed.fields) == \
        ("Failed", "ImportFailed", True, "Warning", None)
