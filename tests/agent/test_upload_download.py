"""agent upload / download against a real S3 server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


from checkpoint_operator.agent.download import download_prefix, temp_name
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, FileEntry, Manifest, digest_of
from checkpoint_operator.objectstore.s3 import AgentError, delete_prefix, manifest_exists, read_manifest
from checkpoint_operator.agent.upload import JOURNAL_NAME, upload_dir

MiB = 1024 * 1024


def make_tree(root: Path, small: int = 120) -> Path:
    """A realistic checkpoint: many small files, a few multi-part shards (parts are 5 MiB in
    the tests), empty files, unicode names, nested directories."""
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "trainer_state.json").write_text('{"global_step": 1200}')
    for i, size in enumerate((12 * MiB, 5 * MiB + 1, 16 * MiB)):
        (root / f"model-{i:05d}-of-00003.safetensors").write_bytes(os.urandom(size))
    (root / "empty.txt").touch()
    nested = root / "optimizer" / "state" / "shards"
    nested.mkdir(parents=True)
    (nested / "empty").touch()
    for i in range(small):
        (nested / f"part-{i:04d}.bin").write_bytes(os.urandom(i * 37 + 1))
    (root / "données-é").mkdir()
    (root / "données-é" / "模型权重.json").write_text('{"ünïcode": true}')
    (root / "rng state.pt").write_bytes(os.urandom(4097))
    return root


def local_digest(root: Path) -> str:
    entries = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            data = path.read_bytes()
            entries.append(FileEntry(path=rel, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    return digest_of(entries)


def agent(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", *args], capture_output=True,
                          text=True, timeout=120, env=env or os.environ.copy())


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_server_listens_on_loopback_only(seaweedfs):
    addresses = seaweedfs.listening()
    assert addresses, "ss found no listening sockets of weed"
    assert all(a.startswith("127.0.0.1:") for a in addresses), addresses


def test_round_trip_of_a_realistic_tree(s3, tmp_path):
    src = make_tree(tmp_path / "checkpoint-1200")
    uri = s3.uri("ns/ckpt-a/")
    up = agent("upload", str(src), uri)
    assert up.returncode == 0, up.stderr
    summary = json.loads(up.stdout.strip().splitlines()[-1])
    assert summary["uri"] == uri
    assert summary["digest"] == local_digest(src)
    assert summary["fileCount"] == 3 + 2 + 2 + 120 + 2
    assert summary["sizeBytes"] == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert "upload: done" in up.stderr  # the non-tty progress line

    manifest = read_manifest(uri)
    assert manifest.digest == summary["digest"] and manifest.path == "."
    assert manifest.step == 1200 and manifest.format == "huggingface"
    assert manifest_exists(uri)

    dst = tmp_path / "dst"
    down = agent("download", uri, str(dst))
    assert down.returncode == 0, down.stderr
    assert local_digest(dst) == summary["digest"]
    assert Manifest.model_validate_json((dst / MANIFEST_NAME).read_text()).digest == summary["digest"]
    assert not [p for p in dst.rglob(".ckpt-download-*")]
    for path in src.rglob("*"):
        if path.is_file():
            assert (dst / path.relative_to(src)).read_bytes() == path.read_bytes()

    # a rerun keeps every verified file
    again = download_prefix(uri, str(dst))
    assert again.kept_files == summary["fileCount"] and again.downloaded_files == 0


def test_upload_killed_mid_way_leaves_no_manifest_and_resumes(s3, seaweedfs, tmp_path, monkeypatch):
    src = make_tree(tmp_path / "ckpt", small=60)
    uri = s3.uri("resume/")
    done: list[str] = []

    def kill_after_some(rel: str) -> None:
        done.append(rel)
        if len(done) == 20:
            seaweedfs.kill()

    with pytest.raises(AgentError) as err:
        upload_dir(str(src), uri, concurrency=4, on_object_done=kill_after_some)
    message = str(err.value)
    assert uri in message or "s3://" in message
    assert "endpoint" in message and ("unreachable" in message or "lost" in message), message

    seaweedfs.start()
    assert not manifest_exists(uri), "an interrupted upload must not look complete"
    with pytest.raises(AgentError, match="the upload never completed"):
        read_manifest(uri)

    result = upload_dir(str(src), uri, concurrency=4)
    total_files = result.manifest.fileCount
    assert result.skipped_files >= 20, (result.skipped_files, len(done))
    assert result.uploaded_files == total_files - result.skipped_files
    assert result.manifest.digest == local_digest(src)

    # a second rerun over a complete upload skips everything, multipart shards included
    # (their sha256 comes from the committed manifest, for objects not modified since)
    third = upload_dir(str(src), uri)
    assert third.skipped_files == total_files and third.uploaded_files == 0
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=s3.key("resume/"))["Contents"]}
    assert s3.key(f"resume/{JOURNAL_NAME}") not in keys  # the manifest says it all once committed

    dst = tmp_path / "dst"
    assert download_prefix(uri, str(dst)).manifest.digest == local_digest(src)


def test_tampered_object_is_refused_by_download(s3, tmp_path):
    src = make_tree(tmp_path / "ckpt", small=5)
    uri = s3.uri("tamper/")
    upload_dir(str(src), uri)
    client = s3.client()
    big = "model-00000-of-00003.safetensors"
    data = bytearray((src / big).read_bytes())
    data[7 * MiB] ^= 0xFF  # same size, one byte flipped in the second part
    client.put_object(Bucket=s3.bucket, Key=s3.key(f"tamper/{big}"), Body=bytes(data))
    client.put_object(Bucket=s3.bucket, Key=s3.key("tamper/config.json"), Body=b'{"model_type": "evil!"}')

    dst = tmp_path / "dst"
    proc = agent("download", uri, str(dst))
    line = one_error_line(proc)
    assert "sha256 mismatch" in line and ("config.json" in line or big in line), line
    assert not (dst / MANIFEST_NAME).exists()
    assert not (dst / big).exists() and not (dst / "config.json").exists()
    refused = big if big in line else "config.json"
    assert not os.path.exists(temp_name(str(dst / refused)))  # bad bytes are not kept for a resume


def test_stale_local_file_is_replaced_not_trusted(s3, tmp_path):
    src = make_tree(tmp_path / "ckpt", small=3)
    uri = s3.uri("stale/")
    upload_dir(str(src), uri)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "config.json").write_text('{"model_type": "other"}')  # same length, other bytes
    result = download_prefix(uri, str(dst))
    assert (dst / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert result.kept_files == 0


def test_upload_with_scan_manifest_fails_naming_a_changed_file(s3, tmp_path):
    src = make_tree(tmp_path / "ckpt", small=3)
    files = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        data = path.read_bytes()
        files.append(FileEntry(path=path.relative_to(src).as_posix(), size=len(data),
                               sha256=hashlib.sha256(data).hexdigest()))
    manifest = Manifest(path="ckpt", files=files, sizeBytes=sum(f.size for f in files), fileCount=len(files),
                        digest=digest_of(files), format="safetensors", step=7)
    manifest_file = tmp_path / "scan.json"
    manifest_file.write_text(manifest.to_json())

    ok = agent("upload", str(src), s3.uri("given/"), "--manifest", str(manifest_file))
    assert ok.returncode == 0, ok.stderr
    stored = read_manifest(s3.uri("given/"))
    assert stored.digest == manifest.digest and stored.step == 7 and stored.path == "."

    shard = src / "model-00002-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    bad = agent("upload", str(src), s3.uri("changed/"), "--manifest", str(manifest_file))
    line = one_error_line(bad)
    assert "model-00002-of-00003.safetensors" in line and "changed" in line, line
    assert not manifest_exists(s3.uri("changed/"))


def test_wrong_credentials_are_a_clear_error(s3, tmp_path):
    src = make_tree(tmp_path / "ckpt", small=1)
    env = dict(os.environ, AWS_SECRET_ACCESS_KEY="not-the-secret")
    line = one_error_line(agent("upload", str(src), s3.uri("creds/"), env=env))
    assert f"access denied to {s3.uri('creds/')}" in line
    assert "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in line
    assert "not-the-secret" not in line
    env = dict(os.environ, AWS_ACCESS_KEY_ID="nobody")
    line = one_error_line(agent("download", s3.uri("creds/"), str(tmp_path / "d"), env=env))
    assert "access denied to s3://" in line


def test_secret_dir_credentials(s3, tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "AWS_ACCESS_KEY_ID").write_text(s3.server.access_key + "\n")
    (secret / "AWS_SECRET_ACCESS_KEY").write_text(s3.server.secret_key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    monkeypatch.setenv("CKPT_S3_SECRET_DIR", str(secret))
    assert manifest_exists(s3.uri("nothing/")) is False


def test_missing_manifest_and_missing_bucket(s3, tmp_path):
    line = one_error_line(agent("download", s3.uri("never/"), str(tmp_path / "d")))
    assert f"no manifest at {s3.uri('never/')}: the upload never completed" in line
    line = one_error_line(agent("download", "s3://no-such-bucket-ckpt/x/", str(tmp_path / "d")))
    assert "no such bucket 'no-such-bucket-ckpt'" in line
    src = make_tree(tmp_path / "ckpt", small=1)
    line = one_error_line(agent("upload", str(src), "s3://no-such-bucket-ckpt/x/"))
    assert "no such bucket 'no-such-bucket-ckpt'" in line


def test_unreachable_endpoint(s3, tmp_path):
    from s3server import free_port
    src = make_tree(tmp_path / "ckpt", small=1)
    proc = agent("upload", str(src), s3.uri("x/"), "--endpoint-url", f"http://127.0.0.1:{free_port()}")
    line = one_error_line(proc)
    assert "cannot reach the S3 endpoint" in line and s3.uri("x/") in line, line


def test_delete_prefix_is_idempotent(s3, tmp_path):
    src = make_tree(tmp_path / "ckpt", small=2)
    uri = s3.uri("gone/")
    upload_dir(str(src), uri)
    keep = s3.uri("gone-not/")  # a sibling prefix that shares the name's start
    upload_dir(str(src), keep)
    assert delete_prefix(uri) > 0
    assert not manifest_exists(uri)
    assert s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=s3.key("gone/")).get("KeyCount", 0) == 0
    assert delete_prefix(uri) == 0
    assert delete_prefix("s3://no-such-bucket-ckpt/x/") == 0
    assert manifest_exists(keep)
    with pytest.raises(AgentError, match="whole bucket"):
        delete_prefix(f"s3://{s3.bucket}/")


def test_temp_name_is_hidden():
    assert Path(temp_name("/d/sub/model.bin")).name.startswith(".ckpt-download-")


def test_progress_is_a_bar_on_a_tty_and_log_lines_otherwise():
    import io

    from checkpoint_operator.agent.progress import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    with Progress("upload", 2048, stream=tty) as progress:
        progress.add(1024)
        progress.add(1024)
    assert "\r" in tty.getvalue() and "[####" in tty.getvalue() and "100.0%" in tty.getvalue()

    log = io.StringIO()
    with Progress("download", 10, stream=log, interval=0.01) as progress:
        progress.add(5)
        import time
        time.sleep(0.05)
    lines = log.getvalue().splitlines()
    assert len(lines) >= 2 and "\r" not in log.getvalue()
    assert lines[-1].startswith("download: done") and "(5 of 10 bytes)" in lines[-1] and "/s" in lines[-1]


# ---- one definition of the files of a checkpoint (upload without --manifest == scan) ----

def test_upload_without_manifest_takes_exactly_the_files_scan_takes(s3, tmp_path):
    ckpt = tmp_path / "checkpoint-7"
    (ckpt / "sub" / ".hidden-dir").mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(os.urandom(6 * MiB))
    (ckpt / ".hidden").write_text("hidden files inside a checkpoint are content")
    (ckpt / "sub" / ".hidden-dir" / "state.pt").write_bytes(b"s" * 100)
    os.symlink("model.safetensors", ckpt / "alias.safetensors")  # a link to a file inside: its bytes
    os.symlink("sub", ckpt / "linked-dir")  # not followed: its files are under sub/
    os.symlink("..", ckpt / "sub" / "up")  # a loop back to the root
    os.symlink("loop-b", ckpt / "loop-a")
    os.symlink("loop-a", ckpt / "loop-b")
    os.symlink("/etc/hostname", ckpt / "outside")
    (ckpt / "bad\\name.bin").write_bytes(b"x")
    scan = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "scan", str(ckpt), "--single",
                           "--json"], capture_output=True, text=True, timeout=60)
    assert scan.returncode == 0, scan.stderr
    (scanned,) = json.loads(scan.stdout)["checkpoints"]
    up = agent("upload", str(ckpt), s3.uri("same/"))
    assert up.returncode == 0, up.stderr
    assert "Traceback" not in up.stderr
    assert json.loads(up.stdout.strip().splitlines()[-1])["digest"] == scanned["digest"]
    stored = read_manifest(s3.uri("same/"))
    assert [f.path for f in stored.files] == [f["path"] for f in scanned["files"]]
    assert (stored.step, stored.format) == (scanned["step"], scanned["format"]) == (7, "safetensors")
    for skipped in ("linked-dir", "sub/up", "loop-a", "outside", "bad\\\\name.bin"):
        assert f"upload: skipped {skipped}:" in up.stderr, (skipped, up.stderr)


def test_upload_with_a_manifest_naming_files_outside_refuses_before_reading(s3, tmp_path):
    src = make_tree(tmp_path / "ckpt", small=1)
    for path, words in (("../../../etc/hostname", "'.' or '..'"), ("/etc/hostname", "absolute"),
                        ("a\nb", "control character")):
        entries = [FileEntry(path=path, size=10, sha256="0" * 64)]
        bad = Manifest.model_construct(path=".", files=entries, sizeBytes=10, fileCount=1, digest=digest_of(entries),
                                       format="unknown", step=None, resumable=False, version=1)
        (tmp_path / "bad.json").write_text(bad.model_dump_json())
        line = one_error_line(agent("upload", str(src), s3.uri("outside/"), "--manifest", str(tmp_path / "bad.json")))
        assert "bad.json" in line and words in line, line
    (tmp_path / "garbage.json").write_text("{nope")
    line = one_error_line(agent("upload", str(src), s3.uri("outside/"), "--manifest", str(tmp_path / "garbage.json")))
    assert "not JSON" in line and "validation error" not in line, line
    assert s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=s3.key("outside/")).get("KeyCount", 0) == 0


def test_upload_with_a_manifest_refuses_a_file_replaced_by_a_link_out(s3, tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a" * 10)
    entries = [FileEntry(path="a.bin", size=10, sha256=hashlib.sha256(b"a" * 10).hexdigest())]
    manifest = Manifest(path=".", files=entries, sizeBytes=10, fileCount=1, digest=digest_of(entries))
    (tmp_path / "m.json").write_text(manifest.to_json())
    outside = tmp_path / "secret"
    outside.write_bytes(b"s" * 10)
    (src / "a.bin").unlink()
    os.symlink(outside, src / "a.bin")
    line = one_error_line(agent("upload", str(src), s3.uri("swapped/"), "--manifest", str(tmp_path / "m.json")))
    assert "a.bin" in line and "leaves the checkpoint" in line, line


def test_key_too_long_for_s3_is_refused_before_any_upload(s3, tmp_path):
    src = tmp_path / "ckpt"
    deep = src / "/".join(["d" * 200] * 5)
    deep.mkdir(parents=True)
    (deep / "x.bin").write_bytes(b"x")
    (src / "ok.bin").write_bytes(b"ok")
    line = one_error_line(agent("upload", str(src), s3.uri("long-keys/")))
    assert "1024" in line and "x.bin" in line, line
    assert s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=s3.key("long-keys/")).get("KeyCount", 0) == 0


def test_journal_is_removed_once_the_manifest_is_committed(s3, tmp_path):
    src = make_tree(tmp_path / "ckpt", small=2)  # multipart shards: their sha256 goes to the journal
    uri = s3.uri("journal/")
    upload_dir(str(src), uri)
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=s3.key("journal/"))["Contents"]}
    assert s3.key("journal/" + MANIFEST_NAME) in keys and s3.key("journal/" + JOURNAL_NAME) not in keys
