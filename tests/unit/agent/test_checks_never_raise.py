"""Every file check returns a verdict on every input, and never fails on its own: random bytes,
every truncation of a good file of each kind, and good files with bytes changed (hypothesis).
A check that raised would lose the step's verdict (`check_file` keeps a last-resort "not
checked", which must never be what a check answers here), and the checkpoint-level verdict of
the same bytes is a verdict too."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoint_operator.agent import formats
from checkpoint_operator.agent.file_checks import CHECK_FAILED, KINDS, Structure, check_file, kind_of
from checkpoint_operator.agent.safe_read import list_files
from formats_files import (gguf_bytes, hdf5_bytes, legacy_torch_bytes, msgpack_bytes, ocdbt_bytes, safetensors_bytes,
                           tar_bytes, torch_zip_bytes, zip_bytes)

# A file name of each kind (kind_of gives it that kind) and a good file of it.
GOOD: dict[str, tuple[str, bytes]] = {
    "safetensors": ("model.safetensors", safetensors_bytes({"w": 16, "b": 4})),
    "torch": ("model.pt", torch_zip_bytes({"step": 3, "w": [1, 2]})),
    "bin": ("weights.bin", legacy_torch_bytes([("0", "FloatStorage", 4, 4), ("1", "LongStorage", 2, 8)])),
    "zip": ("model.keras", zip_bytes({"config.json": b"{}", "model.weights.h5": hdf5_bytes(512)})),
    "tar": ("model.nemo", tar_bytes({"model_config.yaml": b"a: 1\n", "model_weights.ckpt": b"\0" * 100})),
    "gguf": ("model.gguf", gguf_bytes([("t", [8], 0), ("u", [4, 2], 1)])),
    "hdf5": ("tf_model.h5", hdf5_bytes(256, version=2)),
    "hdf5-or-other": ("model.mdl", hdf5_bytes(256)),
    "msgpack": ("flax_model.msgpack", msgpack_bytes({"params": {"w": b"\0" * 32, "n": [1, 2, None]}})),
    "ocdbt": ("manifest.ocdbt", ocdbt_bytes()),
}


def test_every_kind_has_a_good_file_that_passes(tmp_path):
    assert set(GOOD) == set(KINDS)
    for kind, (name, data) in GOOD.items():
        assert kind_of(name) == kind
        (tmp_path / name).write_bytes(data)
        result = check_file(str(tmp_path / name), kind)
        assert (result.ok, result.checked) == (True, True), (kind, result)


def _check(directory: str, kind: str, data: bytes) -> Structure:
    name = GOOD[kind][0]
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    result = check_file(path, kind)
    assert isinstance(result, Structure)
    assert CHECK_FAILED not in result.why, (kind, result, data[:64])
    assert result.ok or result.why, (kind, data[:64])  # a broken file says why
    assert "\n" not in result.why
    return result


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_every_truncation_of_a_good_file_is_a_verdict_and_never_whole(tmp_path, kind):
    name, data = GOOD[kind]
    # Every cut of the first KiB and around every 512-byte block (tar's unit), then every 7th byte:
    # the unit tier stays fast for the larger good files.
    cuts = sorted({c for c in range(1, len(data)) if c < 1024 or c % 512 in (0, 1, 511) or c % 7 == 0})
    for cut in cuts:
        result = _check(str(tmp_path), kind, data[:cut])
        if kind not in ("tar", "ocdbt", "hdf5", "hdf5-or-other", "gguf"):  # these may end in padding
            assert not (result.ok and result.checked), (kind, cut, result)


def test_an_hdf5_file_cut_inside_its_superblock_is_cut_short(tmp_path):
    data = hdf5_bytes(4096)
    for cut in range(8, 40):
        result = _check(str(tmp_path), "hdf5", data[:cut])
        assert (result.ok, result.checked) == (False, True), (cut, result)
        assert "cut short" in result.why, (cut, result)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(GOOD)), data=st.binary(max_size=1024))
def test_random_bytes_under_every_kind_get_a_verdict(kind, data):
    with tempfile.TemporaryDirectory() as directory:
        _check(directory, kind, data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(GOOD)),
       changes=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
                        min_size=1, max_size=6),
       cut=st.integers(min_value=0, max_value=64))
def test_good_files_with_changed_bytes_get_a_verdict(kind, changes, cut):
    data = bytearray(GOOD[kind][1])
    for at, value in changes:
        data[at % len(data)] = value
    with tempfile.TemporaryDirectory() as directory:
        _check(directory, kind, bytes(data[:len(data) - cut] if cut < len(data) else data))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(GOOD)), data=st.binary(max_size=512),
       length=st.integers(min_value=0, max_value=2**64 - 1))
def test_random_lengths_in_headers_get_a_verdict(kind, data, length):
    """The first 8 bytes (a safetensors header length, a GGUF/OCDBT magic and length) set to any
    value, the rest random."""
    with tempfile.TemporaryDirectory() as directory:
        _check(directory, kind, GOOD[kind][1][:4] + struct.pack("<Q", length) + data)
        _check(directory, kind, struct.pack("<Q", length) + data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(GOOD)), data=st.binary(max_size=512))
def test_a_checkpoint_of_such_a_file_gets_a_verdict(kind, data):
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory) / "step-1"
        root.mkdir()
        (root / GOOD[kind][0]).write_bytes(data)
        d = formats.describe_checkpoint(root, list_files(root), root.name)
        assert d.complete in (True, False, None)
        assert d.complete is None or d.completeReason, (kind, d)
        assert CHECK_FAILED not in (d.completeReason or "")
