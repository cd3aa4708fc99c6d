"""protocol/published.py: the resume step's published directories in one bounded argument (trust2 B)."""

from __future__ import annotations

import base64
import json
import re
import zlib
from pathlib import Path

import pytest

from checkpoint_operator.protocol import published

CHART_POLICY = Path(__file__).resolve().parents[2] / "charts" / "checkpoint-operator" / "templates" / \
    "admission-policy.yaml"


def _raw(obj: object) -> str:
    return base64.urlsafe_b64encode(zlib.compress(json.dumps(obj).encode())).decode().rstrip("=")


def test_a_list_comes_back_sorted_distinct_and_deterministic():
    names = ["step-2", "--ckpt-5", "-1", "ckpts/step-2", "step-2", "café"]
    value = published.encode(names)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", value) and value == published.encode(list(reversed(names)))
    assert published.decode(value) == sorted(set(names))


def test_thousands_of_names_fit_one_argument():
    for count, under in ((3000, 16 * 1024), (30000, published.MAX_ARGUMENT)):
        value = published.encode(f"checkpoint-{50 * i}" for i in range(1, count + 1))
        assert len(value) < under, (count, len(value))


@pytest.mark.parametrize("value", [
    _raw(["../etc"]), _raw([".ckpt-live"]), _raw(["/etc"]), _raw(["a//b"]), _raw([""]), _raw(["a\x00b"]),
    _raw({"step-1": 1}), _raw([1]), _raw(["x" * 5000]), "eNoDAAAAAAE-cut", "!!", "",
    base64.urlsafe_b64encode(zlib.compress(b"[" + b"\"a\"," * (6 * 1024 * 1024) + b"\"a\"]")).decode().rstrip("="),
])
def test_anything_but_a_list_of_checkpoint_directories_is_refused(value):
    with pytest.raises(published.PublishedListError):
        published.decode(value)


def test_the_chart_s_policy_bounds_the_argument_as_the_operator_does():
    """The policy admits `--published-list=VALUE` up to the length resume_args passes, no longer."""
    text = CHART_POLICY.read_text()
    assert f"size(c.command[i]) <= {len(published.FLAG) + 1 + published.MAX_ARGUMENT}" in text
    assert f"'^{published.FLAG}=[A-Za-z0-9_-]+$'" in text and f"'{published.KEEP_SEALED}': ''" in text


# hostile13 H13-1, H13-4: what the agent builds from a value is bounded by its entries and depth, and a
# value is one list in one encoding.

def test_a_small_value_of_deep_or_countless_directories_is_refused_and_the_operator_never_passes_one():
    deep = [f"b{i}/" + "a/" * 2040 + "a" for i in range(1000)]  # ~11,000 characters, admitted by the policy
    many = ["aa"] * (published.MAX_ENTRIES + 1)
    for directories in (deep, many):
        value = published.encode(directories) if directories is deep else _raw(directories)
        assert len(value) <= published.MAX_ARGUMENT
        with pytest.raises(published.PublishedListError):
            published.decode(value)
    assert published.resume_args(deep) == [published.KEEP_SEALED]  # nothing the agent would refuse
    assert published.resume_args([f"step-{i}" for i in range(3000)])[0].startswith(published.FLAG + "=")


def test_nesting_and_bytes_after_the_stream_are_refused_in_one_line():
    nested = base64.urlsafe_b64encode(zlib.compress(b"[" * 100_000 + b"]" * 100_000, 9)).decode().rstrip("=")
    with pytest.raises(published.PublishedListError):
        published.decode(nested)
    value = published.encode(["step-1"])
    packed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)) + b"more"
    with pytest.raises(published.PublishedListError, match="after"):
        published.decode(base64.urlsafe_b64encode(packed).decode().rstrip("="))

