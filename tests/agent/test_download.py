"""agent download against a hostile or failing store (SeaweedFS on 127.0.0.1): pinned digests,
manifests that lie, names at the limits, links in DIR, a server killed mid-transfer."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from test_upload_download import agent, local_digest, one_error_line

from checkpoint_operator.agent.download import Downloader, download_prefix, temp_name
from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, FileEntry, Manifest, digest_of
from checkpoint_operator.protocol.names import TEMP_PREFIX
from checkpoint_operator.agent.upload import upload_dir

MiB = 1024 * 1024


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def final_files(root: Path) -> set[str]:
    """Files under their real names (temporaries and the marker left out)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(TEMP_PREFIX) and p.name != MANIFEST_NAME}


def put_manifest(s3, prefix: str, manifest: dict | bytes) -> None:
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key(prefix + MANIFEST_NAME), Body=body)


def entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def manifest_of(entries: list[FileEntry], **over) -> dict:
    fields = dict(version=1, path=".", files=[e.model_dump() for e in entries],
                  sizeBytes=sum(e.size for e in entries), fileCount=len(entries), digest=digest_of(entries))
    fields.update(over)
    return fields


# ---- names at the limits ----

def test_longest_name_round_trips_through_scan_upload_download(s3, tmp_path):
    name = "m" * 243 + ".safetensors"  # 255 bytes: `.NAME.ckpt-download` would not fit
    out = tmp_path / "out"
    write(out / "step-1" / name, os.urandom(6 * MiB))  # multipart, streamed through a temporary
    write(out / "step-1" / ("s" * 251 + ".bin"), b"small")  # one GET, written through a temporary
    scan = agent("scan", str(out), "--json")
    assert scan.returncode == 0, scan.stderr
    (checkpoint,) = json.loads(scan.stdout)["checkpoints"]
    (tmp_path / "m.json").write_text(json.dumps(checkpoint))
    uri = s3.uri("long/")
    up = agent("upload", str(out / "step-1"), uri, "--manifest", str(tmp_path / "m.json"))
    assert up.returncode == 0, up.stderr
    dst = tmp_path / "dst"
    down = agent("download", uri, str(dst), "--digest", checkpoint["digest"])
    assert down.returncode == 0, down.stderr
    assert (dst / name).read_bytes() == (out / "step-1" / name).read_bytes()
    assert local_digest(dst) == checkpoint["digest"]
    assert len(os.path.basename(temp_name(str(dst / name)))) < 64


def test_temp_names_are_short_hidden_and_reserved():
    tmp = Path(temp_name("/d/sub/" + "x" * 255))
    assert tmp.parent == Path("/d/sub") and tmp.name.startswith(TEMP_PREFIX) and len(tmp.name) < 64
    assert temp_name("/d/a") != temp_name("/d/b")


# ---- pinning and the manifest's own consistency ----

def test_pinned_download_refuses_a_replaced_checkpoint(s3, tmp_path):
    good = tmp_path / "good"
    write(good / "model.safetensors", os.urandom(7 * MiB))
    write(good / "config.json", b'{"model_type": "good"}')
    uri = s3.uri("t0/")
    pinned = upload_dir(str(good), uri).manifest.digest
    # Another tenant with write access to the bucket runs `agent upload evil s3://.../t0/`.
    evil = tmp_path / "evil"
    write(evil / "model.safetensors", os.urandom(7 * MiB))
    write(evil / "config.json", b'{"model_type": "evil"}')
    found = upload_dir(str(evil), uri).manifest.digest
    assert found != pinned

    dst = tmp_path / "dst"
    line = one_error_line(agent("download", uri, str(dst), "--digest", pinned))
    assert uri in line and pinned in line and found in line, line
    assert not dst.exists() or final_files(dst) == set()
    assert not (dst / MANIFEST_NAME).exists()
    # unpinned, the same download takes what is there (what `--digest` is for)
    assert agent("download", uri, str(tmp_path / "unpinned")).returncode == 0
    # pinned to what is there, it verifies
    assert agent("download", uri, str(tmp_path / "ok"), "--digest", found).returncode == 0


def test_malformed_digest_is_a_usage_error(tmp_path):
    proc = agent("download", "s3://b/p/", str(tmp_path / "d"), "--digest", "md5:abc")
    assert proc.returncode == 2 and "--digest" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("case", ["fake-size", "fake-count", "fake-digest", "file-and-dir", "duplicate",
                                  "bad-name", "not-json", "not-a-manifest"])
def test_manifests_that_contradict_themselves_are_refused(case, s3, tmp_path):
    prefix = f"bad-{case}/"
    a, b = b"a" * 10, b"b" * 20
    for rel, data in (("a.bin", a), ("b.bin", b)):
        s3.client().put_object(Bucket=s3.bucket, Key=s3.key(prefix + rel), Body=data)
    good = [entry("a.bin", a), entry("b.bin", b)]
    body = {
        "fake-size": manifest_of(good, sizeBytes=1),
        "fake-count": manifest_of(good, fileCount=1),
        "fake-digest": manifest_of(good, digest="sha256:" + "0" * 64),
        "file-and-dir": manifest_of([entry("a.bin", a), entry("a.bin/x", b)]),
        "duplicate": manifest_of([entry("a.bin", a), entry("a.bin", a)]),
        "bad-name": manifest_of([entry("a\\b.bin", a)]),
        "not-json": b"{this is not json",
        "not-a-manifest": json.dumps({"files": "nope"}).encode(),
    }[case]
    put_manifest(s3, prefix, body)
    dst = tmp_path / "dst"
    line = one_error_line(agent("download", s3.uri(prefix), str(dst)))
    assert f"invalid manifest at {s3.uri(prefix)}{MANIFEST_NAME}" in line, line
    assert "validation error" not in line
    expected = {"fake-size": "sizeBytes 1", "fake-count": "fileCount 1", "fake-digest": "digest sha256:000",
                "file-and-dir": "'a.bin' is both a file and a directory", "duplicate": "listed twice",
                "bad-name": "backslash", "not-json": "not JSON", "not-a-manifest": "Field required"}[case]
    assert expected in line, line
    assert not dst.exists() or final_files(dst) == set()


def test_a_petabyte_file_is_refused_before_anything_is_written(s3, tmp_path):
    huge = FileEntry(path="huge.bin", size=10 ** 15, sha256="0" * 64)
    put_manifest(s3, "pb/", manifest_of([huge]))
    dst = tmp_path / "dst"
    line = one_error_line(agent("download", s3.uri("pb/"), str(dst)))
    assert "free" in line and str(dst) in line and "huge.bin" in line, line
    assert not any(dst.iterdir())


# ---- what is already in DIR ----

def test_download_does_not_write_through_a_symlinked_directory(s3, tmp_path):
    src = tmp_path / "src"
    write(src / "sub" / "x.bin", b"x" * 100)
    write(src / "top.bin", b"t")
    uri = s3.uri("links/")
    upload_dir(str(src), uri)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(elsewhere, dst / "sub")
    line = one_error_line(agent("download", uri, str(dst)))
    assert "sub" in line and "symlink" in line, line
    assert list(elsewhere.iterdir()) == []
    assert not (dst / "top.bin").exists()


def test_a_file_where_a_directory_is_needed_is_refused(s3, tmp_path):
    src = tmp_path / "src"
    write(src / "sub" / "x.bin", b"x")
    uri = s3.uri("file-in-way/")
    upload_dir(str(src), uri)
    dst = tmp_path / "dst"
    write(dst / "sub", b"in the way")
    line = one_error_line(agent("download", uri, str(dst)))
    assert "sub" in line and "not a directory" in line, line


# ---- a server that dies mid-download ----

def _big_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    write(src / "shard-0.bin", os.urandom(40 * MiB))  # 8 parts of 5 MiB
    write(src / "config.json", b"{}")
    return src


@pytest.mark.slow
def test_server_killed_and_restarted_mid_download_is_retried_per_part(s3, seaweedfs, tmp_path, monkeypatch):
    src = _big_source(tmp_path)
    uri = s3.uri("flaky/")
    digest = upload_dir(str(src), uri).manifest.digest
    monkeypatch.setenv("CKPT_S3_PART_ATTEMPTS", "30")
    restarter: list[threading.Thread] = []

    def restart_later() -> None:
        time.sleep(5)  # longer than botocore's own retries of one request (2 attempts here)
        seaweedfs.start()

    lock = threading.Lock()

    def kill_after_two(rel: str, index: int) -> None:
        with lock:  # called from the network threads
            if restarter or index < 1:
                return
            seaweedfs.kill()
            restarter.append(threading.Thread(target=restart_later, daemon=True))
            restarter[0].start()

    dst = tmp_path / "dst"
    result = Downloader(uri, str(dst), concurrency=2, digest=digest, on_part_done=kill_after_two).run()
    restarter[0].join(60)
    assert result.retries > 0
    assert local_digest(dst) == digest
    assert not [p for p in dst.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_server_gone_blames_the_connection_keeps_the_partial_file_and_the_rerun_resumes(
        s3, seaweedfs, tmp_path, monkeypatch):
    src = _big_source(tmp_path)
    uri = s3.uri("gone/")
    digest = upload_dir(str(src), uri).manifest.digest
    monkeypatch.setenv("CKPT_S3_PART_ATTEMPTS", "2")
    done_parts: list[int] = []

    def kill_after_three(rel: str, index: int) -> None:
        done_parts.append(index)
        if len(done_parts) == 3:
            seaweedfs.kill()

    dst = tmp_path / "dst"
    with pytest.raises(AgentError) as err:
        Downloader(uri, str(dst), concurrency=1, digest=digest, on_part_done=kill_after_three).run()
    message = str(err.value)
    assert "connection" in message and "does not match" not in message and "rerun to resume" in message, message
    assert not (dst / "shard-0.bin").exists()
    partial = [p for p in dst.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert len(partial) == 2, partial  # the data and its record of completed parts

    seaweedfs.start()
    result = download_prefix(uri, str(dst), digest=digest)
    assert result.resumed_bytes >= 3 * 5 * MiB, result
    assert result.fetched_bytes <= 40 * MiB - 3 * 5 * MiB + 2
    assert local_digest(dst) == digest
    assert not [p for p in dst.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_resume_record_that_lies_is_caught_by_the_final_sha256(s3, tmp_path):
    src = _big_source(tmp_path)
    uri = s3.uri("liar/")
    digest = upload_dir(str(src), uri).manifest.digest
    manifest = Manifest.model_validate_json(
        s3.client().get_object(Bucket=s3.bucket, Key=s3.key("liar/" + MANIFEST_NAME))["Body"].read())
    dst = tmp_path / "dst"
    dst.mkdir()
    shard = next(e for e in manifest.files if e.path == "shard-0.bin")
    tmp = temp_name(str(dst / "shard-0.bin"))
    with open(tmp, "wb") as f:
        f.truncate(shard.size)  # zeros, claimed complete below
    Path(tmp + ".parts").write_text(json.dumps({"version": 1, "path": shard.path, "size": shard.size,
                                                "sha256": shard.sha256, "done": [[0, shard.size]]}))
    with pytest.raises(AgentError, match="sha256 mismatch"):
        download_prefix(uri, str(dst), digest=digest)
    assert not (dst / "shard-0.bin").exists()
    assert not os.path.exists(tmp)  # bad bytes are not kept for the next resume
    download_prefix(uri, str(dst), digest=digest)
    assert local_digest(dst) == digest
