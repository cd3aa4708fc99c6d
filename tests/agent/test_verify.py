"""`agent verify`: every file of a checkpoint read again where it lives (a directory, or an S3
prefix of the real SeaweedFS on 127.0.0.1) and checked against its manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import MANIFEST_NAME
from checkpoint_operator.agent.scan import scan_directory
from checkpoint_operator.agent.upload import upload_dir
from checkpoint_operator.agent.verify import MAX_PROBLEMS, verify_directory, verify_location, verify_s3


def make(root, files):
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return scan_directory(root, single=True).checkpoints[0]


def test_a_directory_with_its_manifest_names_every_difference(tmp_path):
    manifest = make(tmp_path, {"a.bin": b"aaaa", "sub/b.bin": b"bb", "c.bin": b"c"})
    (tmp_path / MANIFEST_NAME).write_text(manifest.to_json())
    ok = verify_directory(str(tmp_path), manifest.digest)
    assert ok.verified and ok.checked_bytes == 7
    (tmp_path / "a.bin").write_bytes(b"aaaX")
    (tmp_path / "sub" / "b.bin").write_bytes(b"b")
    (tmp_path / "c.bin").unlink()
    (tmp_path / "extra.txt").write_text("new")
    bad = verify_directory(str(tmp_path), manifest.digest)
    assert not bad.verified
    assert [p.line() for p in bad.problems] == [
        f"'a.bin': sha256 {__import__('hashlib').sha256(b'aaaX').hexdigest()}, the manifest says "
        f"{manifest.files[0].sha256}",
        "'c.bin': missing", "'sub/b.bin': size 1 bytes, the manifest says 2", "'extra.txt': not in the manifest"]
    # A stored manifest of another digest is not this checkpoint's (it came with the data: hostile1
    # D9): it is not trusted, the files are read as they are and compared with the recorded digest.
    replaced = verify_directory(str(tmp_path), "sha256:" + "9" * 64)
    assert [p.problem for p in replaced.problems] == [
        f"the data has digest {replaced.manifest.digest} (3 files, 8 bytes), not the recorded sha256:{'9' * 64}; no "
        f"manifest of that digest is stored with it, so the file that differs cannot be named"]


def test_a_manifest_that_came_with_the_data_is_not_trusted(tmp_path):
    """A pulled checkpoint's manifest left in a directory whose files were then edited: verify of the
    recorded digest (the edited files' own) passes instead of crying 'replaced' (failed before)."""
    root = tmp_path / "ckpt"
    stale = make(root, {"config.json": b'{"a": 1}', "model.safetensors": b"w" * 64})
    (root / MANIFEST_NAME).write_text(stale.to_json())
    (root / "config.json").write_bytes(b'{"a": 2}')
    edited = verify_directory(str(root))  # no recorded digest: the stored manifest is all there is
    assert not edited.verified
    recorded = make(tmp_path / "copy", {"config.json": b'{"a": 2}', "model.safetensors": b"w" * 64}).digest
    assert verify_directory(str(root), recorded).verified


def test_a_directory_without_a_manifest_compares_the_digest(tmp_path):
    manifest = make(tmp_path, {"w.bin": b"weights"})
    assert verify_directory(str(tmp_path), manifest.digest).verified
    (tmp_path / "w.bin").write_bytes(b"Weights")
    bad = verify_directory(str(tmp_path), manifest.digest)
    assert not bad.verified and "no manifest of that digest is stored with it, so the file that differs cannot be " \
        "named" in bad.problems[0].problem
    with pytest.raises(AgentError, match="not a directory"):
        verify_directory(str(tmp_path / "nope"))


def test_the_command_prints_one_json_line_and_exits_0_with_json(tmp_path):
    manifest = make(tmp_path / "c", {"x": b"x"})
    run = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "verify", str(tmp_path / "c"),
                          "--digest", "sha256:" + "0" * 64, "--json"], capture_output=True, text=True)
    out = json.loads(run.stdout)
    assert run.returncode == 0 and out["verified"] is False and out["problemCount"] == 1
    assert out["checkpoints"][0]["digest"] == manifest.digest
    plain = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "verify", str(tmp_path / "c"),
                            "--digest", manifest.digest], capture_output=True, text=True)
    assert plain.returncode == 0 and plain.stdout.startswith("verified: 1 files")


def test_s3_objects_are_read_again_and_checked(s3, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    manifest = make(src, {"model.safetensors": os.urandom(6 * 1024 * 1024), "config.json": b"{}", "t/v.txt": b"v"})
    uri = s3.uri("ckpt/")
    upload_dir(str(src), uri, manifest=manifest)
    ok = verify_s3(uri, manifest.digest)
    assert ok.verified and ok.checked_bytes == manifest.sizeBytes
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key=s3.key("ckpt/config.json"), Body=b"[]")
    client.delete_object(Bucket=s3.bucket, Key=s3.key("ckpt/t/v.txt"))
    bad = verify_location(uri, manifest.digest)
    assert {p.path: p.problem.split(" ")[0] for p in bad.problems} == {"config.json": "sha256", "t/v.txt": "missing"}
    other = verify_s3(uri, "sha256:" + "1" * 64)
    assert "not the recorded" in other.problems[0].problem and len(other.problems) == 1
    none = verify_s3(s3.uri("nothing/"), manifest.digest)
    assert not none.verified and none.problems[0].problem.startswith(f"no manifest at {s3.uri('nothing/')}")
    assert none.summary()["checkpoints"] == [] and MAX_PROBLEMS >= 2


@pytest.mark.parametrize("planted", [
    "[" * 100_000,  # nested too deeply
    '{"version": 1, "path": ".", "files": [], "sizeBytes": 0, "fileCount": 0, "digest": "x", '
    '"metrics": {"loss": 1' + "0" * 400 + '}}',  # a metric no float holds (hostile4 D1)
    "not json",
], ids=["deep", "huge-metric", "not-json"])
def test_an_unparseable_manifest_left_in_the_data_is_ignored_when_the_digest_is_given(tmp_path, planted):
    """hostile4 D10: training code left a `.checkpoint-manifest.json` the scan never takes; `verify
    DIR --digest D --json` failed outright (no JSON, exit 1, or a traceback). Now it is ignored with
    a note and the files are checked against the recorded digest (failed before)."""
    manifest = make(tmp_path / "c", {"w": b"a"})
    (tmp_path / "c" / MANIFEST_NAME).write_text(planted)
    run = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "verify", str(tmp_path / "c"),
                          "--digest", manifest.digest, "--json"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["verified"] is True and out["digest"] == manifest.digest, out
    [note] = out["notes"]
    assert note.startswith(f"invalid manifest at {tmp_path / 'c' / MANIFEST_NAME}: ") and "ignored" in note
    # without a recorded digest the stored manifest is all there is: not verified, the problem named, one JSON line
    alone = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "verify", str(tmp_path / "c"),
                            "--json"], capture_output=True, text=True, timeout=60)
    out = json.loads(alone.stdout.splitlines()[-1])
    assert alone.returncode == 0 and out["verified"] is False
    assert out["problems"][0]["problem"].startswith("invalid manifest at ")


def test_json_ends_with_one_json_line_when_the_check_cannot_be_made(tmp_path):
    run = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "verify", str(tmp_path / "nope"),
                          "--json"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.startswith("error: ")
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["verified"] is False and "not a directory" in out["problems"][0]["problem"]


def test_entries_the_manifest_does_not_list_are_flagged_even_a_skipped_link(tmp_path):
    """hostile4 D14: what a consumer mounts may hold entries the manifest does not list (a link
    leaving the checkpoint, skipped by the scan, inside a directory mounted whole): verify names
    each one (the behaviour docs/distributed.md describes)."""
    manifest = make(tmp_path / "c", {"r1/shard": b"s"})
    stored = tmp_path / "manifest.json"
    stored.write_text(manifest.to_json())
    (tmp_path / "c" / "r1" / "evil").symlink_to("/etc/hostname")
    (tmp_path / "c" / "r1" / "extra").write_bytes(b"x")
    result = verify_directory(str(tmp_path / "c"), manifest.digest, manifest_path=str(stored))
    assert not result.verified
    assert [p.line() for p in result.problems] == ["'r1/evil': skipped: symlink leaves the checkpoint",
                                                   "'r1/extra': not in the manifest"]
