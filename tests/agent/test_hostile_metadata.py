"""Hostile metadata fails nothing but its own checkpoint (issue 23 item 7).

Every reader of tenant-written metadata (JSON, pickles, safetensors headers, torch DCP metadata,
GGUF key-values, zips, msgpack, HDF5, OCDBT) runs over a corpus of hostile files: deep nesting,
huge numbers, huge strings, truncated files, wrong types, garbage. Each must give a reason, never
an exception; and a scan of an output holding all of them beside a healthy checkpoint finishes,
the healthy one complete.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Callable

import pytest

from checkpoint_operator.agent import formats, safe_pickle
from checkpoint_operator.agent.completeness import MAX_REASON_CHARS
from checkpoint_operator.agent.live_watch import STATE_FILE, Watcher, read_annotation_file
from checkpoint_operator.agent.safe_read import MAX_METADATA_BYTES, list_files
from checkpoint_operator.agent.scan import scan_directory
from formats_files import dcp_metadata_bytes, safetensors_bytes, torch_zip_bytes, write

DEEP = 200_000


def deep_json(kind: str = "[") -> bytes:
    close = "]" if kind == "[" else "}"
    inner = "[" * DEEP + "]" * DEEP if kind == "[" else '{"a":' * DEEP + "1" + close * DEEP
    return ('{"global_step": 1, "log_history": ' + inner + ', "weight_map": {"a": "b"}}').encode()


# Hostile JSON payloads: each is the whole content of a file a reader parses as JSON.
JSON_PAYLOADS: dict[str, bytes] = {
    "deep arrays": deep_json("["),
    "deep objects": deep_json("{"),
    "400-digit number": b'{"global_step": 1' + b"0" * 400 + b', "loss": 1' + b"0" * 400 + b"}",
    "5000-digit number": b'{"global_step": ' + b"9" * 5000 + b"}",
    "1e999": b'{"global_step": 1e999, "loss": 1e999, "eval_loss": -1e999}',
    "NaN and Infinity": b'{"global_step": NaN, "loss": Infinity, "best_metric": -Infinity}',
    "huge string": b'{"global_step": "' + b"x" * (4 * 1024 * 1024) + b'"}',
    "truncated": b'{"global_step": 10, "log_history": [{"step": 10, "lo',
    # Each escaped quote of an unterminated string once started a scan to the end: quadratic.
    "unterminated escapes": b'{"global_step": "' + b'\\"' * 200_000,
    "wrong types": b'{"global_step": "10", "log_history": {"a": 1}, "weight_map": [1, 2], "item_handlers": [3], '
                   b'"commit_timestamp_nsecs": "x", "tree_metadata": [], "shape": "x", "best_metric": [1]}',
    "a list": b"[1, 2, 3]",
    "a string": b'"trainer_state"',
    "null": b"null",
    "not UTF-8": b'{"global_step": "\xff\xfe"}',
    "garbage": bytes(range(256)) * 4,
    "empty": b"",
}

BIG_ZEROS = "sparse file past the read cap"


def _write_payload(path: Path, payload: bytes | str) -> None:
    if payload == BIG_ZEROS:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(MAX_METADATA_BYTES + 1)
    else:
        write(path, payload)


def healthy_weights(root: Path) -> None:
    write(root / "model.safetensors", safetensors_bytes({"w": 16}))


# Where each JSON reader looks, and the files that make the reader run.
JSON_TARGETS: dict[str, Callable[[Path, bytes | str], None]] = {
    "trainer_state.json": lambda root, p: (write(root / "config.json", "{}"), healthy_weights(root),
                                           _write_payload(root / "trainer_state.json", p)),
    "metrics.json": lambda root, p: (healthy_weights(root), _write_payload(root / "metrics.json", p)),
    "config.json": lambda root, p: (healthy_weights(root), _write_payload(root / "config.json", p)),
    "model.safetensors.index.json": lambda root, p: (
        write(root / "config.json", "{}"), healthy_weights(root),
        _write_payload(root / "model.safetensors.index.json", p)),
    "_CHECKPOINT_METADATA": lambda root, p: (write(root / "commit_success.txt", "ok"),
                                             _write_payload(root / "_CHECKPOINT_METADATA", p)),
    "_METADATA": lambda root, p: (write(root / "commit_success.txt", "ok"),
                                  _write_payload(root / "default" / "_METADATA", p)),
    ".zarray": lambda root, p: (write(root / "commit_success.txt", "ok"), _write_payload(root / "w" / ".zarray", p)),
    "keras config.json": lambda root, p: write(root / "m.keras", _zip({"config.json": p, "model.weights.h5": b"h"})),
    "safetensors header": lambda root, p: write(root / "model.safetensors", _safetensors_with_header(p)),
}


def _zip(members: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, b"" if data == BIG_ZEROS else data)
    return buffer.getvalue()


def _safetensors_with_header(payload: bytes | str) -> bytes:
    header = b"" if payload == BIG_ZEROS else payload
    return struct.pack("<Q", len(header)) + header


# Text files read for a step or a tag.
TEXT_PAYLOADS: dict[str, bytes] = {
    "5000 digits": b"9" * 5000,
    "superscript digits": "\u00b2\u00b3".encode(),
    "a path": b"../../etc/passwd",
    "newlines and controls": b"global_step1\n\x1b[31mred\r\n",
    "20 digits": b"99999999999999999999",
    "garbage": bytes(range(256)),
}
TEXT_TARGETS: dict[str, Callable[[Path, bytes | str], None]] = {
    "deepspeed latest": lambda root, p: (write(root / "latest", p), write(root / "global_step1" / "mp_rank_00_model_states.pt",
                                                                          torch_zip_bytes({}))),
    "deepspeed tag": lambda root, p: (write(root / "latest", b"global_step" + (p if isinstance(p, bytes) else b"")),
                                      write(root / "zero_to_fp32.py", "#")),
    "megatron tracker": lambda root, p: (write(root / "latest_checkpointed_iteration.txt", p),
                                         write(root / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt",
                                               torch_zip_bytes({"iteration": 1}))),
}


def _deep_tuple_key_pickle() -> bytes:
    """A dict whose key is a tuple nested 100,000 deep (hashing it would recurse)."""
    return b"\x80\x02}" + b"K\x01" + b"\x85" * 100_000 + b"K\x02s."


def _huge_long_pickle() -> bytes:
    digits = b"9" * 5000
    return b"\x80\x02}X\x04\x00\x00\x00stepL" + digits + b"L\ns."  # LONG as text: int() refuses 5000 digits


def _big_int_pickle() -> bytes:
    return pickle.dumps({"step": 10**400, "global_step": 2**70, "optimizer": {"state": {}, "param_groups": []}})


def _deep_list_pickle() -> bytes:
    return b"\x80\x02" + b"]" * 50_000 + b"a" * 49_999 + b"."  # 50,000 lists, each appended to the one before


def _stack_global_pickle() -> bytes:
    return b"\x80\x04]\x8c\x01x\x93)R."  # STACK_GLOBAL with a list as its module


PICKLE_PAYLOADS: dict[str, bytes] = {
    "deep tuple key": _deep_tuple_key_pickle(),
    "5000-digit LONG": _huge_long_pickle(),
    "ints beyond int64": _big_int_pickle(),
    "deep lists": _deep_list_pickle(),
    "STACK_GLOBAL of a list": _stack_global_pickle(),
    "truncated": pickle.dumps({"optimizer": {"state": {}}, "step": 1})[:-3],
    "garbage": b"\x80\x02" + bytes(range(256)),
    "empty": b"",
}
PICKLE_TARGETS: dict[str, Callable[[Path, bytes], None]] = {
    "torch.save data.pkl": lambda root, p: write(root / "ckpt.pt", _zip({"ckpt/data.pkl": p, "ckpt/version": b"3"})),
    "lightning .ckpt": lambda root, p: write(root / "last.ckpt", _zip({"last/data.pkl": p})),
    "DCP .metadata": lambda root, p: (write(root / ".metadata", p), write(root / "__0_0.distcp", b"\0" * 8)),
    "legacy torch.save": lambda root, p: write(root / "model.pt", pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
                                               + pickle.dumps(1001, protocol=2) + p),
}


def _dcp_with_storage(offset: int, length: int) -> bytes:
    return dcp_metadata_bytes(["model.w"], [("__0_0.distcp", offset, length)])


OTHER_CASES: dict[str, Callable[[Path], None]] = {
    "DCP offsets beyond int64": lambda root: (write(root / ".metadata", _dcp_with_storage(2**70, 2**70)),
                                              write(root / "__0_0.distcp", b"\0")),
    "DCP negative length": lambda root: (write(root / ".metadata", _dcp_with_storage(0, -5)),
                                         write(root / "__0_0.distcp", b"\0")),
    "gguf 2^64 key-values": lambda root: write(root / "m.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 2**64 - 1) + b"\0" * 99),
    "gguf nested arrays": lambda root: write(root / "m.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
                                             + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9)
                                             + (struct.pack("<IQ", 9, 2**40)) * 6),
    "gguf huge dimensions": lambda root: write(root / "m.gguf", b"GGUF" + struct.pack("<IQQ", 3, 1, 0)
                                               + struct.pack("<Q", 1) + b"t" + struct.pack("<I4QIQ", 4, *[2**64 - 1] * 4, 0, 0)),
    "msgpack 2^32 items": lambda root: write(root / "flax_model.msgpack", b"\xdd\xff\xff\xff\xff" + b"\x90" * 10),
    "sparse trainer_state past the cap": lambda root: (write(root / "config.json", "{}"), healthy_weights(root),
                                                       _write_payload(root / "trainer_state.json", BIG_ZEROS)),
    "step in the name beyond int64": lambda root: healthy_weights(root),
    "h5 claiming a 2^64 end": lambda root: write(root / "tf_model.h5", b"\x89HDF\r\n\x1a\n" + bytes([0, 0, 0, 0, 0, 8, 8, 0])
                                                 + struct.pack("<HHI", 4, 16, 0) + struct.pack("<QQQQ", 0, 0, 2**63, 0)),
}


def _cases() -> list[tuple[str, Callable[[Path], None]]]:
    cases: list[tuple[str, Callable[[Path], None]]] = []
    for target, make in JSON_TARGETS.items():
        for what, payload in {**JSON_PAYLOADS, BIG_ZEROS: BIG_ZEROS}.items():
            cases.append((f"{target} / {what}", lambda root, make=make, payload=payload: make(root, payload)))
    for target, make in TEXT_TARGETS.items():
        for what, payload in TEXT_PAYLOADS.items():
            cases.append((f"{target} / {what}", lambda root, make=make, payload=payload: make(root, payload)))
    for target, make_pickle in PICKLE_TARGETS.items():
        for what, payload in PICKLE_PAYLOADS.items():
            cases.append((f"{target} / {what}", lambda root, m=make_pickle, payload=payload: m(root, payload)))
    cases.extend(OTHER_CASES.items())
    return cases


CASES = _cases()


def _checkpoint_name(case: str) -> str:
    if case == "step in the name beyond int64":
        return "step-99999999999999999999"
    return "case-" + chr(ord("a") + CASES.index(next(c for c in CASES if c[0] == case)) % 26) + \
        str(CASES.index(next(c for c in CASES if c[0] == case)))  # no step in the name: the data is read for it


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_every_reader_gives_a_reason_not_an_exception(tmp_path, case):
    root = tmp_path / _checkpoint_name(case)
    root.mkdir()
    dict(CASES)[case](root)
    d = formats.describe_checkpoint(root, list_files(root), root.name)
    assert d.completeReason and "\n" not in d.completeReason and len(d.completeReason) <= MAX_REASON_CHARS, d
    assert d.step is None or 0 <= d.step < 2**63
    assert d.metrics is None or all(abs(v) < 1e300 for v in d.metrics.values())


@pytest.mark.parametrize("case, file", [
    ("trainer_state.json / deep arrays", "trainer_state.json: nested"),
    ("metrics.json / deep objects", "metrics.json: nested"),
    ("metrics.json / 400-digit number", "metrics.json: metric global_step: 10000000000000000000... (401 characters)"),
    ("metrics.json / NaN and Infinity", "metrics.json: metric global_step: NaN is not a finite number"),
    ("trainer_state.json / 5000-digit number", "global_step 99999999999999999999... (5000 characters) is beyond int64"),
    ("trainer_state.json / truncated", "trainer_state.json: not valid JSON"),
    ("config.json / not UTF-8", "config.json: not UTF-8 text"),
    ("_CHECKPOINT_METADATA / deep arrays", "_CHECKPOINT_METADATA: nested"),
    ("safetensors header / deep objects", "model.safetensors: header: nested"),
    ("keras config.json / deep arrays", "m.keras: config.json: nested"),
    ("megatron tracker / 5000 digits", "latest_checkpointed_iteration.txt"),
    ("deepspeed tag / 20 digits", "beyond int64"),
    ("torch.save data.pkl / 5000-digit LONG", "ckpt.pt: member ckpt/data.pkl: not a readable pickle"),
    ("torch.save data.pkl / ints beyond int64", "is beyond int64: not used as the step"),
    ("DCP .metadata / truncated", ".metadata is not a readable torch DCP metadata pickle"),
    ("DCP offsets beyond int64", ".metadata: a storage entry has no valid relative_path, offset or length"),
    ("sparse trainer_state past the cap", f"trainer_state.json: larger than {MAX_METADATA_BYTES} bytes, not read"),
    ("step in the name beyond int64", "step 99999999999999999999 in the checkpoint's name is beyond int64"),
])
def test_the_reason_names_the_file_and_what_is_wrong(tmp_path, case, file):
    root = tmp_path / _checkpoint_name(case)
    root.mkdir()
    dict(CASES)[case](root)
    d = formats.describe_checkpoint(root, list_files(root), root.name)
    assert file in (d.completeReason or ""), d.completeReason


def test_a_scan_of_every_hostile_checkpoint_beside_a_healthy_one(tmp_path):
    out = tmp_path / "out"
    scanned = [(case, make) for case, make in CASES if BIG_ZEROS not in case and "past the cap" not in case]
    for case, make in scanned:  # (the 16 MiB files, cheap to write sparse, are costly to hash)
        root = out / _checkpoint_name(case)
        root.mkdir(parents=True)
        make(root)
    healthy = out / "healthy-step-7"  # the only step in a name
    write(healthy / "config.json", "{}")
    healthy_weights(healthy)
    write(healthy / "metrics.json", json.dumps({"loss": 0.5}))
    result = scan_directory(out)
    found = {m.path: m for m in result.checkpoints}
    assert len(found) == len(scanned) + 1, "every checkpoint is reported, none fails the scan"
    assert (found["healthy-step-7"].complete, found["healthy-step-7"].step, found["healthy-step-7"].metrics) == \
        (True, 7, {"loss": 0.5})
    assert all(m.completeReason for m in found.values())
    json.dumps(result.model_dump(mode="json"), allow_nan=False)  # nothing the API server would refuse


def test_a_reader_that_fails_unforeseen_fails_only_its_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "out"
    for name in ("step-1", "step-2"):
        write(out / name / "config.json", "{}")
        healthy_weights(out / name)
    real = formats.describe_checkpoint

    def flaky(root, sizes, name="", skipped=None):
        if name == "step-1":
            raise RecursionError("a reader this test breaks on purpose")
        return real(root, sizes, name, skipped)

    monkeypatch.setattr(formats, "describe_checkpoint", flaky)
    found = {m.path: m for m in scan_directory(out).checkpoints}
    assert (found["step-1"].complete, found["step-1"].completeReason) == (
        None, "not checked: its files could not be read safely (RecursionError)")
    assert found["step-2"].complete is True


def test_safe_pickle_keeps_deep_keys_opaque_and_walks_deep_objects_boundedly():
    obj = safe_pickle.loads(_deep_tuple_key_pickle())
    assert isinstance(obj, dict) and [type(k).__name__ for k in obj] == ["Opaque"]
    deep = safe_pickle.loads(_deep_list_pickle())
    assert sum(1 for _ in safe_pickle.walk(deep)) == safe_pickle.MAX_WALK_DEPTH + 1


def test_the_live_watcher_reads_its_state_and_annotations_safely(tmp_path):
    out = tmp_path / "out"
    write(out / ".ckpt-live" / STATE_FILE, deep_json("["))
    Watcher(str(out), emit=lambda line: None)  # loads the state: a tenant can write it
    write(out / ".ckpt-live" / STATE_FILE, json.dumps([{"path": ["x"], "digest": 1, "resumable": "yes"},
                                                       {"path": "a", "digest": "d", "resumable": True, "stats": 3}]))
    assert Watcher(str(out), emit=lambda line: None).sealed == {}
    annotations = tmp_path / "annotations"
    write(annotations, 'a=' + "[" * DEEP + '\nb="ok"\n')
    assert read_annotation_file(str(annotations)) == {"b": "ok"}
    assert os.path.exists(out / ".ckpt-live" / STATE_FILE)


def test_a_checkpoint_crafted_to_be_slow_to_check_stops_at_its_work_limit(tmp_path, monkeypatch):
    """Each file within the per-file caps, but many of them: the checkpoint's checks share one
    budget of parsing steps (agent/work_limit.py), and what is past it is not checked."""
    from checkpoint_operator.agent import work_limit

    monkeypatch.setattr(work_limit, "MIN_STEPS", 200_000)
    slow = b"\x80\x02(" + b"N" * 60_000 + b"l."  # a list of 60,000 Nones: 60,002 opcodes
    root = tmp_path / "many"
    for i in range(20):
        write(root / f"w{i:02d}.pt", pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
              + pickle.dumps(1001, protocol=2) + pickle.dumps({}, protocol=2) + slow + pickle.dumps([], protocol=2))
    d = formats.describe_checkpoint(root, list_files(root), "")
    assert d.complete is None
    assert "work limit (200000 steps)" in d.completeReason, d.completeReason
