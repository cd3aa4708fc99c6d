"""One rule for symlinks, whatever writes DEST (issue 18 item 3): every import source, and every
archive a source brings, plants links that each look harmless (`c -> .`, `b -> c/..`,
`e -> b/..`: lexically inside, really the parent of the checkpoint) or that resolve inside only
because of the staging directory's own name (`x -> c/../tree/f`). The import is refused naming
the link (not the link dropped: a checkpoint must not silently lack a path its source has), DEST
is never made, and nothing outside it is readable through what was imported.

The rule is agent/tree.py's `check_written_tree` (resolve_link's, hop by hop from the link's own
directory and never above the root: what the scan, the upload and a pod reading the mounted
checkpoint follow), run by the importer on every staged tree. Sources that write only regular
files (the Hub, Azure/GCS/S3 trees) cannot plant a link themselves; an archive they serve can,
so each is tested with one."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from agentrun import run_agent
from ftpserver import ftp_server  # noqa: F401  (fixture)
from gitserver import git_http  # noqa: F401  (fixture)
from hubserver import mini_hub  # noqa: F401  (fixture)
from layouts import read_tree, tiny_model
from webserver import web  # noqa: F401  (fixture)

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("credential_watch")]

# name -> target: each link alone looks inside; `b` and `e` lead to the checkpoint's parent.
CHAIN = {"c": ".", "b": "c/..", "e": "b/.."}
# Lexically inside (`tree/config.json`), and by realpath inside only while the staging tree is
# named `tree`: once committed as DEST, `x` is DEST/../tree/config.json, outside.
STAGING_NAME = {"c": ".", "x": "c/../tree/config.json"}


def tar_with_links(links: dict[str, str], files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def zip_with_links(links: dict[str, str], files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return buffer.getvalue()


def refused(run, dest: Path, link_names) -> str:
    """The import failed with one line naming one of the links, and left nothing."""
    line = run.error
    assert any(f"symlink '{name}'" in line for name in link_names), line
    assert "resolves outside the checkpoint" in line or "leads outside" in line, line
    assert not dest.exists(), list(dest.rglob("*"))
    assert not [p for p in dest.parent.iterdir() if ".ckpt-import-" in p.name]
    assert ".ckpt-import-" not in run.stderr
    return line


MODEL = {"config.json": b'{"model_type": "gpt2"}', "model.safetensors": b"w" * 64}


@pytest.mark.parametrize("links", [CHAIN, STAGING_NAME], ids=["chain", "staging-name"])
@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_http_archives(web, tmp_path, links, kind):
    data = tar_with_links(links, MODEL) if kind == "tar.gz" else zip_with_links(links, MODEL)
    (web.root / f"m.{kind}").write_bytes(data)
    dest = tmp_path / "out" / "ckpt"
    refused(run_agent("import", web.url(f"m.{kind}"), str(dest)), dest, links)


def test_s3_object(s3, tmp_path):  # noqa: F811
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key("links/m.tar.gz"), Body=tar_with_links(CHAIN, MODEL))
    dest = tmp_path / "ckpt"
    refused(run_agent("import", s3.uri("links/m.tar.gz"), str(dest)), dest, CHAIN)


def test_gcs_object(s3, tmp_path):  # noqa: F811
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key("gcs/m.tar.gz"), Body=tar_with_links(STAGING_NAME, MODEL))
    env = {"AWS_ACCESS_KEY_ID": s3.server.access_key, "AWS_SECRET_ACCESS_KEY": s3.server.secret_key,
           "AWS_ENDPOINT_URL": None, "AWS_DEFAULT_REGION": None}
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"gs://{s3.bucket}/{s3.key('gcs/m.tar.gz')}", str(dest), "--endpoint-url", s3.endpoint,
                    env=env)
    refused(run, dest, STAGING_NAME)


def test_azure_blob(azure_blob, tmp_path):  # noqa: F811
    azure_blob.upload("m.tar.gz", tar_with_links(CHAIN, MODEL))
    dest = tmp_path / "ckpt"
    run = run_agent("import", azure_blob.uri("m.tar.gz"), str(dest),
                    env={"AZURE_STORAGE_CONNECTION_STRING": azure_blob.server.connection_string})
    refused(run, dest, CHAIN)


def test_ftp(ftp_server, tmp_path):  # noqa: F811
    (ftp_server.root / "m.tar.gz").write_bytes(tar_with_links(CHAIN, MODEL))
    dest = tmp_path / "ckpt"
    refused(run_agent("import", ftp_server.url("m.tar.gz"), str(dest)), dest, CHAIN)


@pytest.mark.parametrize("links", [CHAIN, STAGING_NAME], ids=["chain", "staging-name"])
def test_git(git_http, tmp_path, links):  # noqa: F811
    """Failed before: git.py checked each link lexically (`c/..` is `.`), so the chain was kept."""
    git_http.add_repo("linked", MODEL, links=links)
    dest = tmp_path / "ckpt"
    refused(run_agent("import", f"git+{git_http.url('linked')}", str(dest)), dest, links)


def test_git_links_that_stay_inside_are_kept(git_http, tmp_path):  # noqa: F811
    git_http.add_repo("fine", MODEL, links={"weights": "model.safetensors", "sub/up": "../config.json", "self": "."})
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"git+{git_http.url('fine')}", str(dest))
    assert run.code == 0, run.stderr
    assert os.readlink(dest / "weights") == "model.safetensors" and (dest / "sub" / "up").read_bytes() == MODEL["config.json"]


def test_hub_files_are_regular_files_and_an_archive_stays_one(mini_hub, tmp_path):  # noqa: F811
    """The Hub lists files only, and a repository's archive is a file of the checkpoint, never
    extracted: no link can arrive from it."""
    files = {**tiny_model(), "extra/links.tar.gz": tar_with_links(CHAIN, MODEL)}
    mini_hub.add_repo("org/links", files)
    dest = tmp_path / "ckpt"
    run = run_agent("import", "hf://org/links", str(dest), "--endpoint-url", mini_hub.endpoint)
    assert run.code == 0, run.stderr
    assert read_tree(dest) == files
    assert not [p for p in dest.rglob("*") if p.is_symlink()]
