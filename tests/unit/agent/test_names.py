"""The one rule for the file names of a checkpoint (protocol/names.py), and the manifest's self-checks."""

from __future__ import annotations

import hashlib

import pytest

from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import (
    MANIFEST_NAME, FileEntry, Manifest, digest_of, manifest_problem, parse_manifest, paths_problem,
)
from checkpoint_operator.protocol.names import (
    BIDI_CONTROLS, MAX_COMPONENT_BYTES, MAX_PATH_BYTES, check_path, path_problem, printable,
)


@pytest.mark.parametrize("rel", [
    "a.bin", "sub/dir/model.safetensors", ".hidden", "dir/.hidden/x", "données/模型权重.json",
    "rng state.pt", "é" * 127, "a" * MAX_COMPONENT_BYTES, "/".join(["d" * 200] * 20),
    "x..y", "...", "-rf", "\u00a0nbsp", "emoji-\U0001f642",
])
def test_valid_names(rel):
    assert path_problem(rel) is None


@pytest.mark.parametrize("rel,rule", [
    ("", "empty"),
    ("/etc/hostname", "absolute"),
    ("a//b", "empty component"),
    ("a/", "empty component"),
    ("./a", "'.' or '..'"),
    ("a/../../etc", "'.' or '..'"),
    ("..", "'.' or '..'"),
    ("shard\\0.bin", "backslash"),
    ("line\nbreak", "control character U+000A"),
    ("tab\there", "control character U+0009"),
    ("esc\x1b[31m", "control character U+001B"),
    ("del\x7f", "control character U+007F"),
    ("csi\x9b", "control character U+009B"),
    ("ls\u2028sep", "line separator U+2028"),
    ("nul\x00", "NUL"),
    ("bad\udcff.bin", "not valid UTF-8"),
    ("a" * (MAX_COMPONENT_BYTES + 1), "longer than 255 bytes"),
    ("é" * 128, "longer than 255 bytes"),
    ("/".join(["d" * 200] * 21), "longer than 4096 bytes"),
    # hostile1 D12: invisible characters (Default_Ignorable_Code_Point) make display twins of names
    ("model\u200b.safetensors", "invisible character U+200B"),
    ("model\u00ad.bin", "invisible character U+00AD"),
    ("model\u2060.bin", "invisible character U+2060"),
    ("model\u034f.bin", "invisible character U+034F"),
    ("model\ufe0f.bin", "invisible character U+FE0F"),
    ("\ufeffmodel.bin", "invisible character U+FEFF"),
    ("ZWNJ\u200cname", "invisible character U+200C"),
    ("tag\U000e0041", "invisible character U+E0041"),
    ("hangul\u3164filler", "invisible character U+3164"),
    (".ckpt-download-0123abcd", "reserved"),
    ("sub/.ckpt-download-x.parts", "reserved"),
])
def test_invalid_names_name_the_rule(rel, rule):
    problem = path_problem(rel)
    assert problem is not None and rule in problem, problem


def test_check_path_is_one_line_naming_the_file():
    with pytest.raises(AgentError) as err:
        check_path("evil\nname", "the manifest of s3://b/p/")
    message = str(err.value)
    assert "\n" not in message
    assert "'evil\\nname'" in message and "the manifest of s3://b/p/" in message and "U+000A" in message


def test_printable_escapes_what_would_break_a_line_or_a_terminal():
    assert printable("ok/é.bin") == "ok/é.bin"
    assert printable("a\nb\x1b\\c\udcff") == "a\\nb\\x1b\\\\c\\xff"
    assert printable("x\u2028") == "x\\u2028"


def test_path_limit_matches_the_constants():
    assert MAX_PATH_BYTES == 4096 and MAX_COMPONENT_BYTES == 255


# ---- the manifest's own consistency ----

def _entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _manifest(entries: list[FileEntry], **over) -> Manifest:
    fields = dict(path=".", files=entries, sizeBytes=sum(e.size for e in entries), fileCount=len(entries),
                  digest=digest_of(entries))
    fields.update(over)
    return Manifest.model_construct(**fields)


def test_consistent_manifest_has_no_problem():
    entries = [_entry("a.bin", b"a"), _entry("sub/b.bin", b"bb")]
    assert manifest_problem(_manifest(entries)) is None


@pytest.mark.parametrize("change,words", [
    ({"fileCount": 3}, "fileCount 3"),
    ({"sizeBytes": 10 ** 15}, "sizeBytes 1000000000000000"),
    ({"digest": "sha256:" + "0" * 64}, "digest"),
])
def test_fake_totals_are_refused(change, words):
    entries = [_entry("a.bin", b"a"), _entry("sub/b.bin", b"bb")]
    problem = manifest_problem(_manifest(entries, **change))
    assert problem is not None and words in problem, problem


@pytest.mark.parametrize("paths,words", [
    (["a.bin", "a.bin/x"], "'a.bin' is both a file and a directory"),
    (["d/a", "d/a/b/c"], "'d/a' is both a file and a directory"),
    (["a.bin", "a.bin"], "twice"),
    (["../etc/passwd"], "'.' or '..'"),
    ([MANIFEST_NAME], "reserved"),
    (["ok", "bad\\name"], "backslash"),
])
def test_invalid_or_conflicting_paths_are_refused(paths, words):
    entries = [_entry(p, p.encode()) for p in paths]
    problem = manifest_problem(_manifest(entries))
    assert problem is not None and words in problem, problem


def test_parse_manifest_gives_one_line_errors():
    with pytest.raises(AgentError, match=r"^invalid manifest at X: not JSON \("):
        parse_manifest(b"{not json", "X")
    with pytest.raises(AgentError) as err:
        parse_manifest(b'{"path": ".", "files": [{"path": "a", "size": -1, "sha256": "zz"}], '
                       b'"sizeBytes": 0, "fileCount": 1, "digest": "x"}', "X")
    message = str(err.value)
    assert "validation error" not in message and "\n" not in message
    assert "files[0].size" in message, message
    entries = [_entry("a.bin", b"a"), _entry("a.bin/x", b"b")]
    body = _manifest(entries).model_dump_json().encode()
    with pytest.raises(AgentError, match="'a.bin' is both a file and a directory"):
        parse_manifest(body, "X")


# ---- bidi controls and Unicode twins (issue 18 item 14) ----

@pytest.mark.parametrize("ch", sorted(BIDI_CONTROLS))
def test_bidirectional_controls_are_refused_and_shown_escaped(ch):
    name = f"evil{ch}txt.safetensors"
    problem = path_problem(f"dir/{name}")
    assert problem is not None and f"bidirectional control character U+{ord(ch):04X}" in problem, problem
    assert ch not in printable(name) and f"\\u{ord(ch):04x}" in printable(name)


def test_invisible_characters_are_refused_and_shown_by_code_point():
    """hostile1 D12: `model\u200b.bin` displayed exactly as `model.bin` beside it. Every
    Default_Ignorable_Code_Point is refused, ZWNJ and ZWJ too (the price: a Persian name that needs a
    ZWNJ, an emoji joined by a ZWJ); a format character that shows (U+0600) stays valid."""
    assert "invisible character U+200D" in path_problem("ZWJ\u200d")
    assert printable("model\u200b.bin") == "model\\u200b.bin"
    assert path_problem("arabic-number-sign-\u0600") is None


NFC_E, NFD_E, KELVIN = "caf\u00e9", "cafe\u0301", "\u212a"


@pytest.mark.parametrize("paths,shown", [
    ([NFC_E, NFD_E], "cafe\\u0301"),
    ([NFD_E, NFC_E], "caf\\u00e9"),
    ([f"{NFC_E}/a.bin", f"{NFD_E}/b.bin"], "cafe\\u0301"),  # two directories that are one on macOS
    ([NFC_E, f"{NFD_E}/x"], "cafe\\u0301"),  # a file and a directory
    (["K", KELVIN], "\\u212a"),  # a singleton: KELVIN SIGN is K after NFC
    (["d/K.bin", f"d/{KELVIN}.bin"], "d/\\u212a.bin"),
])
def test_names_equal_after_normalization_are_refused(paths, shown):
    problem = paths_problem(paths)
    assert problem is not None and "after Unicode normalization (NFC)" in problem, problem
    assert f"'{shown}'" in problem, problem


def test_case_and_distinct_unicode_names_stay_distinct():
    assert paths_problem(["A.bin", "a.bin", NFC_E, "cafe", "caf\u00e8", "x/" + NFC_E, "y/" + NFD_E]) is None


def test_the_walk_skips_both_twins_and_takes_the_rest(tmp_path):
    from checkpoint_operator.agent.scan import scan_directory
    for name in (NFC_E, NFD_E, "ok.bin"):
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / f"x{KELVIN}").write_bytes(b"k")
    (tmp_path / "d" / "xK").write_bytes(b"K")
    result = scan_directory(tmp_path, single=True)
    assert [f.path for f in result.checkpoints[0].files] == ["ok.bin"]
    skipped = {s.path: s.reason for s in result.skipped}
    assert set(skipped) == {"caf\\u00e9", "cafe\\u0301", "d/x\\u212a", "d/xK"}, skipped
    assert all("after Unicode normalization (NFC)" in r for r in skipped.values())


def test_a_manifest_with_twins_is_refused():
    entries = [_entry(NFC_E, b"1"), _entry(NFD_E, b"2")]
    with pytest.raises(AgentError, match="after Unicode normalization"):
        parse_manifest(_manifest(entries).model_dump_json().encode(), "X")
