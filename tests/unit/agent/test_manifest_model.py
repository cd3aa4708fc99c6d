"""The manifest's classes are plain dataclasses (agent start-up: no pydantic on the agent's path);
they must refuse what the pydantic models refused, and read what they read."""

import hashlib
import json

import pytest

from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.agent.manifest import FileEntry, Manifest, ManifestInvalid, digest_of, parse_manifest
from agentrun import agent_process

SHA = hashlib.sha256(b"a").hexdigest()


def body(**over) -> dict:
    files = [{"path": "a.bin", "size": 1, "sha256": SHA}]
    data = {"version": 1, "path": ".", "files": files, "sizeBytes": 1, "fileCount": 1,
            "digest": digest_of([FileEntry(**files[0])])}
    data.update(over)
    return data


def test_a_manifest_round_trips_through_its_json():
    manifest = Manifest.model_validate(body(step=7, complete=True, completeReason="ok", metrics={"loss": 1}))
    assert manifest.files == [FileEntry(path="a.bin", size=1, sha256=SHA)]
    assert manifest.metrics == {"loss": 1.0} and isinstance(manifest.metrics["loss"], float)
    again = Manifest.model_validate_json(manifest.model_dump_json())
    assert again == manifest
    # version first, as the stored JSON had it; an absent blobs (every store but s3's blob layout) left out
    assert list(manifest.model_dump()) == [f for f in Manifest.model_fields if f != "blobs"]
    named = manifest.model_copy(update={"blobs": "../blobs/sha256/"})
    assert list(named.model_dump()) == list(Manifest.model_fields)
    assert parse_manifest(manifest.to_json(), "X") == manifest


def test_unknown_fields_are_ignored_and_defaults_filled():
    manifest = Manifest.model_validate(body(newerField={"x": 1}))
    assert (manifest.format, manifest.step, manifest.resumable, manifest.complete) == ("unknown", None, False, None)


@pytest.mark.parametrize("over,words", [
    ({"path": None}, "path: a string is required"),
    ({"sizeBytes": "1"}, "sizeBytes: a whole number is required"),  # no coercion of "1"
    ({"fileCount": True}, "fileCount: a whole number is required"),  # JSON true is no number
    ({"fileCount": 1.0}, "fileCount: a whole number is required"),
    ({"files": "nope"}, "files: a list is required"),
    ({"files": ["a.bin"]}, "files[0]: an object is required"),
    ({"files": [{"path": "a.bin", "size": -1, "sha256": SHA}]}, "files[0].size: must be 0 or more"),
    ({"files": [{"path": "a.bin", "size": 1, "sha256": SHA.upper()}]}, "files[0].sha256: 64 lowercase hex"),
    ({"files": [{"path": "a.bin", "size": 1}]}, "files[0].sha256: Field required"),
    ({"resumable": "yes"}, "resumable: true or false is required"),
    ({"complete": 1}, "complete: true or false is required"),
    ({"metrics": {"loss": "low"}}, "metrics.loss: a number is required"),  # the metric named (hostile4 D15)
    ({"metrics": {"loss": "0.5"}}, "metrics.loss: a number is required"),
    ({"metrics": {"ok": 1, "best": True}}, "metrics.best: a number is required"),
    ({"metrics": {"loss": 10 ** 400}}, "metrics.loss: a number within float range is required"),  # hostile4 D1
    ({"metrics": [1]}, "metrics: an object of numbers is required"),
])
def test_wrong_types_and_values_are_refused_with_the_field_named(over, words):
    with pytest.raises(ManifestInvalid, match="^" + words.replace("[", r"\[").replace("]", r"\]")):
        Manifest.model_validate(body(**over))
    with pytest.raises(AgentError, match="invalid manifest at X: "):
        parse_manifest(json.dumps(body(**over)), "X")


def test_missing_fields_are_named_in_the_fields_order():
    with pytest.raises(ManifestInvalid, match="^path: Field required"):
        Manifest.model_validate({"files": "nope"})
    with pytest.raises(ManifestInvalid, match="^manifest: an object is required"):
        Manifest.model_validate([])


def test_a_step_an_int64_cannot_hold_is_no_step():
    assert Manifest.model_validate(body(step=2**63)).step is None
    assert Manifest.model_validate(body(step=-1)).step is None
    assert Manifest.model_validate(body(step=2**63 - 1)).step == 2**63 - 1


def test_built_from_a_dump_the_files_are_entries_again_and_checked():
    manifest = Manifest.model_validate(body())
    rebuilt = Manifest(**{**manifest.model_dump(), "complete": True})
    assert rebuilt.files == manifest.files and rebuilt.complete is True
    with pytest.raises(ManifestInvalid, match=r"files\[0\].size"):
        Manifest(**{**manifest.model_dump(), "files": [{"path": "a", "size": -5, "sha256": SHA}]})
    assert manifest.model_copy(update={"format": "gguf"}).format == "gguf" and manifest.format == "unknown"
    assert "files" not in manifest.model_dump(exclude={"files", "version"})


def test_blobs_round_trips_and_is_left_out_when_absent():
    """The s3 store's content-addressed layout names its blob directory; a manifest without one is
    stored byte for byte as before (no `"blobs": null`)."""
    plain = Manifest.model_validate(body())
    assert plain.blobs is None and "blobs" not in plain.model_dump() and '"blobs"' not in plain.to_json()
    named = Manifest.model_validate(body(blobs="../../blobs/sha256/"))
    assert named.blobs == "../../blobs/sha256/" and '"blobs":"../../blobs/sha256/"' in named.to_json()
    assert parse_manifest(named.to_json(), "X") == named
    assert named.digest == plain.digest  # where the bytes are is not part of what they are


@pytest.mark.parametrize("blobs", [5, True, "", "x" * 1025, 'a"b/', "a\\b/", "é/", "a\nb/"])
def test_blobs_the_collector_could_not_read_is_refused(blobs):
    # the collector finds a manifest's blobs by scanning its stored JSON unescaped (objectstore/blobs.py):
    # a value it would not see would leave the manifest's blobs unreferenced, so collectable
    with pytest.raises(ManifestInvalid, match="^blobs: "):
        Manifest.model_validate(body(blobs=blobs))


def test_a_huge_integer_metric_in_a_stored_manifest_is_one_line_from_the_agent_command(tmp_path):
    """hostile4 D1: 10**400 is valid JSON but no float; `agent verify --json` printed a traceback
    (OverflowError) and no JSON. Now the one-line refusal names the metric, and --json ends with
    one JSON line."""
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / ".checkpoint-manifest.json").write_text(json.dumps(body(metrics={"loss": 10 ** 400})))
    proc = agent_process("verify", str(tmp_path), "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["verified"] is False
    assert "metrics.loss: a number within float range is required" in summary["problems"][0]["problem"]
