"""agent import: archives and trees from S3 (SeaweedFS on 127.0.0.1) and from http on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from test_archive import http_dir  # noqa: F401  (fixture)

from checkpoint_operator.agent.importer import import_checkpoint
from checkpoint_operator.objectstore.s3 import AgentError
from checkpoint_operator.agent.upload import upload_dir

pytestmark = pytest.mark.usefixtures("credential_watch")

FILES = {
    "config.json": b'{"model_type": "gpt2"}',
    "model.safetensors": os.urandom(1024 * 1024 + 3),
    "tokenizer/vocab.json": b'{"a": 1}',
    "tokenizer/empty.txt": b"",
    "données/模型.bin": os.urandom(1000),
}


def build_archive(path: Path) -> Path:
    name = path.name
    if name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for rel, data in FILES.items():
                zf.writestr(rel, data)
        return path
    mode = {".gz": "w:gz", ".tgz": "w:gz", ".bz2": "w:bz2", ".tar": "w"}[path.suffix]
    with tarfile.open(path, mode) as tar:
        dirs = sorted({str(Path(rel).parent) for rel in FILES if "/" in rel})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for rel, data in FILES.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def assert_imported(dest: Path) -> None:
    found = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert found == FILES
    assert not [p for p in dest.parent.iterdir() if ".ckpt-import-" in p.name]


@pytest.mark.parametrize("name", ["ckpt.tar.gz", "ckpt.zip", "ckpt.tar.bz2", "ckpt.tgz", "ckpt.tar"])
def test_archive_from_s3(name, s3, tmp_path):
    archive = build_archive(tmp_path / name)
    s3.client().upload_file(str(archive), s3.bucket, s3.key(f"archives/{name}"))
    dest = tmp_path / "out" / "ckpt"
    result = import_checkpoint(s3.uri(f"archives/{name}"), str(dest))
    assert result["extracted"] is True and result["fileCount"] == len(FILES)
    assert_imported(dest)


@pytest.mark.parametrize("name", ["ckpt.tar.gz", "ckpt.zip", "ckpt.tar.bz2"])
def test_archive_from_http(name, http_dir, tmp_path):  # noqa: F811
    www, base = http_dir
    build_archive(www / name)
    dest = tmp_path / "out" / "ckpt"
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "import", f"{base}/{name}",
                           str(dest)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fileCount"] == len(FILES)
    assert_imported(dest)


def test_plain_file_from_http_lands_under_its_name(http_dir, tmp_path):  # noqa: F811
    www, base = http_dir
    (www / "model.ckpt").write_bytes(b"weights" * 1000)
    dest = tmp_path / "ckpt"
    result = import_checkpoint(f"{base}/model.ckpt?download=1", str(dest))
    assert result["extracted"] is False
    assert (dest / "model.ckpt").read_bytes() == b"weights" * 1000


def test_http_404_is_clear_and_leaves_nothing(http_dir, tmp_path):  # noqa: F811
    _, base = http_dir
    dest = tmp_path / "ckpt"
    with pytest.raises(AgentError, match=r"missing.tar.gz: HTTP 404"):
        import_checkpoint(f"{base}/missing.tar.gz", str(dest))
    assert not dest.exists() and [p.name for p in tmp_path.iterdir()] == ["www"]


def test_tree_from_s3_prefix_without_manifest(s3, tmp_path):
    client = s3.client()
    for rel, data in FILES.items():
        client.put_object(Bucket=s3.bucket, Key=s3.key(f"tree/{rel}"), Body=data)
    client.put_object(Bucket=s3.bucket, Key=s3.key("tree-sibling/x"), Body=b"not part of it")
    dest = tmp_path / "ckpt"
    result = import_checkpoint(s3.uri("tree/"), str(dest))
    assert result["fileCount"] == len(FILES)
    assert_imported(dest)


def test_tree_from_s3_prefix_with_manifest_is_verified(s3, tmp_path):
    src = tmp_path / "src"
    for rel, data in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    upload_dir(str(src), s3.uri("uploaded/"))
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key("uploaded/config.json"), Body=b'{"model_type": "evil"}')
    dest = tmp_path / "ckpt"
    with pytest.raises(AgentError, match="config.json: sha256 mismatch"):
        import_checkpoint(s3.uri("uploaded/"), str(dest))
    assert not dest.exists()
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key("uploaded/config.json"), Body=FILES["config.json"])
    import_checkpoint(s3.uri("uploaded/"), str(dest))
    assert_imported(dest)


def test_an_earlier_imports_output_is_replaced_only_with_the_flag_and_its_marker(s3, tmp_path):
    """The operator's import pod deleted unread after a restart may have committed its output on
    the Checkpoint's own claim: the next import (--replace-earlier-import) starts afresh instead of
    failing 'exists and is not empty' for good. Only an import's own output (its marker beside
    DEST) is removed; without the flag, or in a DEST nobody's import made, the refusal stands."""
    from checkpoint_operator.agent.importer import imported_marker, replace_earlier_import
    archive = build_archive(tmp_path / "a.tar.gz")
    s3.client().upload_file(str(archive), s3.bucket, s3.key("a.tar.gz"))
    claim = tmp_path / "claim"
    claim.mkdir()
    dest = claim / "data"
    import_checkpoint(s3.uri("a.tar.gz"), str(dest))
    assert os.path.isfile(imported_marker(str(dest)))
    with pytest.raises(AgentError, match="exists and is not empty"):
        import_checkpoint(s3.uri("a.tar.gz"), str(dest))
    assert replace_earlier_import(str(dest)) and not dest.exists()
    import_checkpoint(s3.uri("a.tar.gz"), str(dest))
    assert_imported(dest)
    # Someone else's directory: no marker, nothing removed.
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.bin").write_bytes(b"theirs")
    assert not replace_earlier_import(str(other / "."))
    assert not replace_earlier_import(str(other)) and (other / "keep.bin").read_bytes() == b"theirs"
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "import", s3.uri("a.tar.gz"),
                           str(dest), "--replace-earlier-import"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "removed an earlier import's output" in proc.stderr
    assert_imported(dest)


def test_import_into_existing_empty_dir_and_refusals(s3, tmp_path):
    archive = build_archive(tmp_path / "a.tar.gz")
    s3.client().upload_file(str(archive), s3.bucket, s3.key("a.tar.gz"))
    dest = tmp_path / "mount"
    dest.mkdir()  # e.g. a freshly mounted volume
    import_checkpoint(s3.uri("a.tar.gz"), str(dest))
    assert_imported(dest)
    with pytest.raises(AgentError, match="exists and is not empty"):
        import_checkpoint(s3.uri("a.tar.gz"), str(dest))
    with pytest.raises(AgentError, match="not found: s3://"):
        import_checkpoint(s3.uri("nope.tar.gz"), str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()
    with pytest.raises(AgentError, match="unsupported source"):
        import_checkpoint("gopher://x/y", str(tmp_path / "other"))
