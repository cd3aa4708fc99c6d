import re

import pytest

from checkpoint_operator.logic.naming import (MAX_NAME, assign_checkpoint_names, bounded_name, checkpoint_name,
                                              sanitize)

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize("directory,expected", [
    ("step-2000", "job-step-2000"),
    ("checkpoint-100", "job-checkpoint-100"),
    ("Step_2000", "job-step-2000"),
    ("global_step20", "job-global-step20"),
    ("model.v2", "job-model-v2"),
])
def test_plain_names_are_lowercased_and_valid(directory, expected):
    assert checkpoint_name("job", directory) == expected


def test_root_files_are_named_final():
    assert assign_checkpoint_names("job", ["."], set()) == {".": "job-final"}


def test_names_are_deterministic_and_unique_when_sanitized_forms_clash():
    dirs = ["step-1", "Step_1", "STEP.1"]
    first = assign_checkpoint_names("job", dirs, set())
    assert first == assign_checkpoint_names("job", list(reversed(dirs)), set())
    assert first["step-1"] == "job-step-1"  # the clean one keeps the plain name
    assert len(set(first.values())) == 3
    assert all(DNS1123.match(n) for n in first.values())


def test_name_taken_by_a_foreign_object_gets_a_hash():
    names = assign_checkpoint_names("job", ["step-1"], {"job-step-1"})
    assert names["step-1"].startswith("job-step-1-") and names["step-1"] != "job-step-1"


def test_unrepresentable_directory_gets_a_hash_not_an_empty_part():
    name = checkpoint_name("job", "___")
    assert DNS1123.match(name) and name.startswith("job-") and len(name) == len("job-") + 6


def test_long_names_are_bounded_and_still_distinct():
    a = checkpoint_name("p" * 240, "step-" + "1" * 30)
    b = checkpoint_name("p" * 240, "step-" + "1" * 29 + "2")
    assert len(a) <= MAX_NAME and len(b) <= MAX_NAME and a != b


def test_bounded_name_keeps_short_names_and_shortens_long_ones():
    assert bounded_name("short", 63) == "short"
    long = bounded_name("x" * 100, 63)
    assert len(long) == 63 and long != bounded_name("x" * 99 + "y", 63)


def test_sanitize():
    assert sanitize("--A b__C--") == "a-b-c"
