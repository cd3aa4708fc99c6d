import json

import pytest

from checkpoint_operator.agent.manifest import FileEntry, Manifest, digest_of
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic.snapshot import ScanOutputError, ScanResult, parse_scan_output, plan_snapshot
from checkpoint_operator.storage.volume import VolumeStore
from factories import training_job


def manifest(path, step=None, files=("model.pt",)):
    entries = [FileEntry(path=f, size=1, sha256="0" * 64) for f in files]
    return Manifest(path=path, files=entries, sizeBytes=len(entries), fileCount=len(entries),
                    digest=digest_of(entries), format="torch", step=step, resumable=False)


def location(m):
    return VolumeStore(OperatorConfig()).snapshot_location("train-output", m, "auto", {})


def test_parse_scan_output_finds_the_json_line_among_log_noise():
    result = {"checkpoints": [manifest("step-1", 1).model_dump()], "skipped": [{"path": ".tmp", "reason": "hidden"}]}
    log = "starting\n" + json.dumps(result) + "\nINFO done\n"
    scan = parse_scan_output(log)
    assert scan.checkpoints[0].path == "step-1" and scan.skipped[0]["reason"] == "hidden"
    with pytest.raises(ScanOutputError):
        parse_scan_output("no json here\n{broken")


def test_plan_names_lineage_and_keep():
    tj = training_job("train", output={"keep": 2})
    tj["status"] = {"inputs": [{"name": "base", "uid": "u-base", "digest": "sha256:b"}]}
    scan = ScanResult([manifest("step-100", 100), manifest("step-300", 300), manifest("step-200", 200),
                       manifest(".", None, files=("config.json",))], [])
    plan = plan_snapshot(tj, scan, [], location, "2026-01-01T00:00:00Z")
    assert [p.name for p in plan.checkpoints] == ["train-step-300", "train-step-200", "train-final"]
    assert plan.dropped == ["step-100"]
    first = plan.checkpoints[0]
    assert first.body["spec"]["source"]["trainingJob"] == {"name": "train", "uid": "u-train", "directory": "step-300"}
    assert first.status["parents"] == [{"name": "base", "uid": "u-base", "digest": "sha256:b"}]
    assert first.status["producedBy"] == {"name": "train", "uid": "u-train"}
    assert first.status["step"] == 300 and first.status["phase"] == "Ready" and first.status["owned"] is True
    assert first.status["location"] == {"volume": {"claimName": "train-output", "path": "step-300"}}
    root = plan.checkpoints[2]
    assert root.status["location"]["volume"] == {"claimName": "train-output", "path": ".", "items": ["config.json"]}


def test_plan_is_idempotent_against_its_own_earlier_checkpoints_and_avoids_foreign_names():
    tj = training_job("train")
    scan = ScanResult([manifest("step-1", 1)], [])
    first = plan_snapshot(tj, scan, [], location, "t")
    ours = {**first.checkpoints[0].body, "metadata": {**first.checkpoints[0].body["metadata"], "uid": "x"}}
    again = plan_snapshot(tj, scan, [ours], location, "t")
    assert again.checkpoints[0].name == "train-step-1"
    foreign = {"metadata": {"name": "train-step-1"}, "spec": {"source": {"volume": {"claimName": "c"}}}}
    other = plan_snapshot(tj, scan, [foreign], location, "t")
    assert other.checkpoints[0].name.startswith("train-step-1-")


def test_name_prefix():
    tj = training_job("train", output={"namePrefix": "llama"})
    plan = plan_snapshot(tj, ScanResult([manifest("step-1", 1)], []), [], location, "t")
    assert plan.checkpoints[0].name == "llama-step-1"
