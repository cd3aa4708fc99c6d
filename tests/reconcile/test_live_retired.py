"""status.live.retired stays within the CRD's maxItems (hostile9 H9-7), against the emulated API: once
1,000 retirements wait for a removal that never comes (a root trainer's files, a worker whose pod has
ended), the next retirement's status write was refused (422), and retention and deletions stalled."""

from __future__ import annotations

import pytest

from checkpoint_operator.api.trainingjob import MAX_RETIRED_LISTED, TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.kube import TRAINING_JOBS, Kube
from checkpoint_operator.reconcile import live_sealing
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.reconcile.objects import parse
from factories import training_job

NS = "default"
DIGEST = "sha256:" + "a" * 64


@pytest.fixture
def ctx(api_url):
    return Context(kube=Kube.from_url(api_url), config=OperatorConfig())


def test_a_retirement_past_the_bound_is_written_dropping_the_oldest_with_one_warning(ctx):
    body = training_job("long", output={"enabled": True, "size": "1Gi", "layout": "auto", "publish": "Continuous"})
    ctx.kube.create(TRAINING_JOBS, NS, body)
    ctx.kube.patch_status(TRAINING_JOBS, NS, "long", {"phase": "Running", "publish": "Continuous", "live": {
        "retired": [{"path": f"checkpoint-{i}", "digest": DIGEST} for i in range(MAX_RETIRED_LISTED)]}})
    tj = parse(TrainingJob, ctx.kube.get(TRAINING_JOBS, NS, "long"))
    warnings: list[tuple[str, str]] = []
    ctx.warn = lambda obj, reason, message: warnings.append((reason, message))  # type: ignore[method-assign]

    tj = live_sealing.record_live(ctx, tj, sealed=1, retire=[(f"checkpoint-{MAX_RETIRED_LISTED}", DIGEST)])
    tj = live_sealing.record_live(ctx, tj, sealed=0, retire=[(f"checkpoint-{MAX_RETIRED_LISTED + 1}", DIGEST)])

    stored = ctx.kube.get(TRAINING_JOBS, NS, "long")["status"]["live"]
    paths = [r["path"] for r in stored["retired"]]
    assert len(paths) == MAX_RETIRED_LISTED
    assert paths[0] == "checkpoint-2" and paths[-2:] == [f"checkpoint-{MAX_RETIRED_LISTED}",
                                                         f"checkpoint-{MAX_RETIRED_LISTED + 1}"]
    assert stored["sealedCount"] == 1
    assert [r for r, _ in warnings] == ["RetiredNotTracked"]  # once, not at every pass
