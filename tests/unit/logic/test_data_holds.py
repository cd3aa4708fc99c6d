"""Data the operator removes stays while another Checkpoint points into it (logic/data_holds.py,
hostile1 D13)."""

from __future__ import annotations

import pytest

from checkpoint_operator.logic import data_holds
from checkpoint_operator.logic.data_holds import Pointer


@pytest.mark.parametrize("a, b, overlap", [
    ("checkpoint-10", "/checkpoint-10", True),
    ("checkpoint-10", "/checkpoint-10/sub/", True),      # an adopter of a part of it
    ("run/checkpoint-10", "run", True),                  # an adopter of its container
    ("checkpoint-10", "/", True),                         # an adopter of the whole volume
    ("checkpoint-10", "checkpoint-100", False),          # a name prefix is not a path prefix
    ("checkpoint-10", "checkpoint-20", False),
    ("run/a", "run/b", False),
])
def test_paths_overlap_when_one_is_inside_the_other(a, b, overlap):
    assert data_holds.paths_overlap(a, b) is overlap
    assert data_holds.paths_overlap(b, a) is overlap


def test_a_location_with_items_points_at_those_files_only():
    """The root files of an output (path '.', items) do not hold the directories beside them."""
    claim, pointer = data_holds.volume_pointer("root", {"trainingJob": {"name": "t"}}, {"location": {"volume": {
        "claimName": "out", "path": ".", "items": ["config.json", "model.safetensors"]}}})
    assert claim == "out" and pointer.places == ("config.json", "model.safetensors")
    assert data_holds.holders("checkpoint-10", [pointer]) == []
    assert data_holds.holders("model.safetensors", [pointer]) == ["root"]


def test_an_adopter_points_into_its_claim_before_it_is_ready():
    claim, pointer = data_holds.volume_pointer("kept", {"volume": {"claimName": "out", "path": "/checkpoint-10/"}}, {})
    assert (claim, pointer) == ("out", Pointer("kept", ("checkpoint-10",)))
    assert data_holds.volume_pointer("web", {"http": {"url": "https://x/y"}}, {}) is None


def test_holders_are_the_others_whose_places_overlap():
    pointers = [Pointer("kept", ("checkpoint-10",)), Pointer("all", (".",)), Pointer("other", ("checkpoint-20",))]
    assert data_holds.holders("checkpoint-10", pointers) == ["all", "kept"]
    assert data_holds.holders("checkpoint-10", pointers, exclude="all") == ["kept"]
    store = [Pointer("a", ("s3://b/ns/a-1/",)), Pointer("inside", ("s3://b/ns/a-1/sub/",)), Pointer("c", ("s3://b/ns/a-10/",))]
    assert data_holds.holders("s3://b/ns/a-1/", store, s3=True, exclude="a") == ["inside"]


def test_an_adoption_of_a_retired_directory_is_refused_with_the_field():
    assert data_holds.retired_refusal("/checkpoint-10", "live", ["checkpoint-10"]) == (
        "spec.source.volume.path: checkpoint-10 overlaps checkpoint-10, which retention of the running TrainingJob "
        "live released (its Checkpoint was deleted) and which is being removed: adopt a directory that is kept")
    assert data_holds.retired_refusal("/", "live", ["checkpoint-10"]) is not None
    assert data_holds.retired_refusal("/checkpoint-20", "live", ["checkpoint-10"]) is None
