"""What the format rules put in a Checkpoint: status `complete` and the Complete condition,
names of file checkpoints, the format names of the API, the format table of docs/concepts.md."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest

from checkpoint_operator.agent.formats import FORMATS, format_table_markdown
from checkpoint_operator.protocol.manifest import FileEntry, Manifest
from checkpoint_operator.api.checkpoint import CheckpointFormat
from checkpoint_operator.logic.naming import checkpoint_name, without_extension
from checkpoint_operator.api.checkpoint import Location, VolumeLocation
from checkpoint_operator.logic.snapshot import ready_change

FORMAT_TABLE_PAGE = Path(__file__).resolve().parents[3] / "docs" / "concepts.md"
FILE = FileEntry(path="model.pt", size=1, sha256="0" * 64)


def manifest(complete, reason=None) -> Manifest:
    return Manifest(path="checkpoint-10", files=[FILE], sizeBytes=1, fileCount=1, digest="sha256:" + "1" * 64,
                    format="huggingface", step=10, complete=complete, completeReason=reason)


@pytest.mark.parametrize("complete, reason, expected", [
    (True, "trainer_state.json is present", (True, "True", "Complete", "trainer_state.json is present")),
    (False, "missing trainer_state.json", (False, "False", "Incomplete", "missing trainer_state.json")),
    (None, None, (None, "Unknown", "NotChecked", "not checked: no completeness check applies (format huggingface)")),
    (None, "not checked: data.bin: content of a kind this check does not know",
     (None, "Unknown", "NotChecked", "not checked: data.bin: content of a kind this check does not know")),
])
def test_ready_status_records_complete_and_its_condition(complete, reason, expected):
    change = ready_change(manifest(complete, reason), Location(volume=VolumeLocation(claimName="c", path="x")), owned=True)
    (condition,) = [c for c in change.conditions if c.type == "Complete"]
    assert (change.fields.complete, condition.status, condition.reason, condition.message) == expected
    assert change.ready and change.phase == "Ready"  # kept: weights can be salvaged
    assert ("incomplete: missing trainer_state.json" in change.message) is (complete is False)


def test_format_names_of_the_api_are_the_detected_ones():
    assert set(typing.get_args(CheckpointFormat)) == set(FORMATS)


@pytest.mark.parametrize("name, expected", [
    ("tfiles-step-100.pt", "tfiles-step-100"), ("checkpoint_20000.mdl", "checkpoint_20000"),
    ("epoch=3-step=500.ckpt", "epoch=3-step=500"), ("step-1.5", "step-1.5"), (".pt", ".pt"), ("model", "model"),
])
def test_without_extension(name, expected):
    assert without_extension(name) == expected


def test_file_checkpoints_are_named_without_their_extension_and_stay_unique():
    names = {f: checkpoint_name("tfiles", f, is_file=True) for f in ["step-100.pt", "final.pt", "final.safetensors"]}
    assert re.fullmatch(r"tfiles\.step-100\.[0-9a-f]{10}", names["step-100.pt"])
    assert re.fullmatch(r"tfiles\.final\.[0-9a-f]{10}", names["final.pt"])
    assert re.fullmatch(r"tfiles\.final\.[0-9a-f]{10}", names["final.safetensors"])
    assert names["final.pt"] != names["final.safetensors"]
    assert re.fullmatch(r"j\.step-1-pt\.[0-9a-f]{10}", checkpoint_name("j", "step-1.pt"))  # a directory keeps its dot


def test_documented_format_table_is_the_rule_table():
    text = FORMAT_TABLE_PAGE.read_text()
    begin, end = "<!-- format-table:begin (generated from agent/formats.py RULES) -->", "<!-- format-table:end -->"
    assert begin in text and end in text, "docs/concepts.md lacks the generated format table markers"
    table = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == format_table_markdown(), (
        "the format table of docs/concepts.md is stale: paste the output of\n"
        "python -c 'from checkpoint_operator.agent.formats import format_table_markdown as t; print(t())'")


def test_every_number_of_a_ready_status_is_one_the_schema_accepts():
    from checkpoint_operator.api.checkpoint import CheckpointStatus
    from checkpoint_operator.logic.status import apply_change

    forged = Manifest.model_construct(  # as a manifest from anywhere could say (no validation)
        path="x", files=[FILE], sizeBytes=2**64, fileCount=-1, digest="sha256:" + "1" * 64, format="torch",
        step=2**63, resumable=False, complete=True, completeReason="ok",
        metrics={"loss": float("nan"), "acc": float("inf"), "big": 1e308, "ok": 0.5})
    change = ready_change(forged, Location(volume=VolumeLocation(claimName="c", path="x")), owned=True)
    fields = change.fields
    assert (fields.step, fields.sizeBytes, fields.fileCount, fields.metrics) == (None, None, None, {"ok": 0.5})
    status = apply_change({}, change, generation=1, now="2026-01-01T00:00:00Z", is_settled=lambda p: True)
    CheckpointStatus.model_validate(status)  # what write_status checks before every write
    json.dumps(status, allow_nan=False)


def test_the_status_models_and_the_manifest_bound_steps():
    from checkpoint_operator.api.checkpoint import CheckpointStatus

    with pytest.raises(ValueError, match="less than or equal to 9223372036854775807"):
        CheckpointStatus.model_validate({"step": 2**63})
    with pytest.raises(ValueError):
        CheckpointStatus.model_validate({"metrics": {"loss": float("nan")}})
    m = Manifest.model_validate({**manifest(True).model_dump(), "step": 10**30})
    assert m.step is None
    assert Manifest.model_validate({**manifest(True).model_dump(), "step": 2**63 - 1}).step == 2**63 - 1


def test_crds_refuse_a_status_number_without_bounds():
    import dataclasses
    from typing import Optional

    import pydantic

    from checkpoint_operator.api import crdgen
    from checkpoint_operator.api.checkpoint import CheckpointStatus

    status = pydantic.create_model("CheckpointStatus", __base__=CheckpointStatus,
                                   restarts=(Optional[int], pydantic.Field(None, description="Restarts.")))
    with pytest.raises(crdgen.UnboundedFieldsError) as refused:
        crdgen.build_crd(dataclasses.replace(crdgen.CHECKPOINT, status_model=status))
    assert str(refused.value) == (
        "Checkpoint status.restarts (model field CheckpointStatus.restarts): a number without minimum and maximum "
        "(every number the operator writes into a status is bounded); declare the status field with "
        "checkpoint_operator.api.rules.Count (an int64 >= 0) or Metric (a finite float), or with Field(ge=..., "
        "le=...): the operator writes only what the schema accepts")
