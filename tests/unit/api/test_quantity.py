"""Sizes (api/common.py parse_quantity): exact, bounded, and one ValueError line for anything that
is not a size, whatever the input (hostile3 F6: a 400-digit size was float('inf') and int() of it
an OverflowError, a retry loop with no status and a `kubectl ckpt du` traceback)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from checkpoint_operator.api.common import _SUFFIXES, MAX_QUANTITY_BYTES, parse_quantity

UNITS = sorted(_SUFFIXES)


@settings(max_examples=150, deadline=None, database=None)
@given(whole=st.integers(0, 10 ** 30), fraction=st.text("0123456789", max_size=12), unit=st.sampled_from(UNITS))
def test_a_quantity_is_exact_or_one_line_refused(whole, fraction, unit):
    text = f"{whole}{'.' + fraction if fraction else ''}{unit}"
    exact = int(Decimal(f"{whole}{'.' + fraction if fraction else ''}") * _SUFFIXES[unit])  # truncated
    if exact > MAX_QUANTITY_BYTES or len(text) > 64:
        with pytest.raises(ValueError) as refused:
            parse_quantity(text)
        assert "is not a size" in str(refused.value) and "\n" not in str(refused.value)
    else:
        assert parse_quantity(text) == exact


@settings(max_examples=150, deadline=None, database=None)
@given(st.text(max_size=500))
@example("000000000000\x1f\x1f\x08\U00010768\U00018cd6" * 10)  # escapes lengthen the echo: bounded still
def test_any_text_is_a_size_or_a_value_error(text):
    try:
        value = parse_quantity(text)
    except ValueError as exc:
        assert len(str(exc)) < 200 and "\n" not in str(exc)  # bounded, whatever the input
    else:
        assert 0 <= value <= MAX_QUANTITY_BYTES


@pytest.mark.parametrize("text", ["9" * 400, "9" * 5000 + "Ei", "8Ei", "9223372036854775808", "1e3", "-1", ""])
def test_beyond_int64_or_malformed_is_not_a_size(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_quantity(text)


def test_exact_where_a_float_was_not():
    assert parse_quantity("9223372036854775807") == MAX_QUANTITY_BYTES
    assert parse_quantity("7.99999999999Ei") == int(Decimal("7.99999999999") * 2 ** 60)
    assert parse_quantity("1.5Ki") == 1536 and parse_quantity("500Gi") == 500 * 2 ** 30
    assert parse_quantity(" 10G ") == 10 ** 10


def test_every_place_a_tenant_writes_a_size_says_so_in_one_line():
    from checkpoint_operator.api.checkpoint import Checkpoint
    from checkpoint_operator.logic import limits, transfers
    from checkpoint_operator.plugin.usage import claim_capacity
    huge = "9" * 400
    with pytest.raises(limits.InvalidLimit, match="annotation ckpt.dev/max-checkpoint-size='9999"):
        limits.import_limit(2 ** 40, {"metadata": {"name": "team-a", "annotations": {
            limits.NAMESPACE_LIMIT_ANNOTATION: huge}}}, None)
    # spec.maxSize: the schema's pattern allows a quantity beyond int64: it lowers no limit
    assert limits.import_limit(2 ** 40, None, "9" * 60 + "Ei") == 2 ** 40
    checkpoint = Checkpoint.model_validate({
        "metadata": {"name": "c", "namespace": "ns", "uid": "u", "annotations": {
            "ckpt.dev/upload-requested": "r1", "ckpt.dev/upload-digest": "sha256:" + "a" * 64,
            "ckpt.dev/volume-size": huge}},
        "spec": {"source": {"upload": {}}}})
    refusal = transfers.upload_request(checkpoint)
    assert isinstance(refusal, str) and refusal.startswith("annotation ckpt.dev/volume-size: '9999") and \
        len(refusal) < 300, refusal
    assert claim_capacity({"status": {"capacity": {"storage": "9" * 5000 + "Ei"}}}) is None
