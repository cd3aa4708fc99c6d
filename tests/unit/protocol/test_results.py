"""protocol/results.py: one typed, versioned model per agent result, each field bounded."""

from __future__ import annotations


import pytest

from checkpoint_operator.protocol import channel, results
from checkpoint_operator.protocol.manifest import Manifest
from checkpoint_operator.protocol.results import (CheckpointSummary, ScanReport)

DIGEST = "sha256:" + "ab" * 32


def summary(path: str = "step-1", **fields) -> CheckpointSummary:
    return CheckpointSummary(path=path, digest=DIGEST, sizeBytes=10, fileCount=2, **fields)


def test_every_field_is_bounded_and_what_a_status_cannot_hold_is_left_out_not_refused():
    with pytest.raises(ValueError):
        summary(completeReason="x" * (results.MAX_TEXT + 1))
    with pytest.raises(ValueError):
        summary(metrics={f"m{i}": 1.0 for i in range(results.MAX_METRICS + 1)})
    with pytest.raises(ValueError):
        summary(metrics={"loss": float("nan")})
    with pytest.raises(ValueError):
        summary(items=["f"] * (results.MAX_ITEMS + 1))
    with pytest.raises(ValueError):
        ScanReport(checkpoints=[summary(f"s-{i}") for i in range(results.MAX_CHECKPOINTS + 1)])
    manifest = Manifest(path="step-1", files=[], sizeBytes=0, fileCount=0, digest=DIGEST, step=10**30,
                        completeReason="why " * 1000)
    made = CheckpointSummary.of(manifest)
    assert made.step is None and len(made.completeReason) == results.MAX_TEXT and made.completeReason.endswith("...")


def test_five_thousand_checkpoints_fit_a_result_easily():
    report = ScanReport(checkpoints=[summary(f"checkpoint-{i * 100}", step=i * 100, format="huggingface",
                                             resumable=True, complete=True, completeReason="config.json and weights",
                                             metrics={"eval_loss": 0.25, "accuracy": 0.9}) for i in range(5000)])
    size = len(channel.encode(report).encode())
    assert size < results.MAX_RESULT_BYTES / 2, size
