"""Content-addressed storage on the s3 store (objectstore/blobs.py) against a real S3 server
(SeaweedFS on 127.0.0.1): each file once per namespace, uploads that skip present blobs with a
HEAD, downloads and verify of both layouts, and the collection of unused blobs, interleaved with
uploads in flight."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from checkpoint_operator.agent.download import download_prefix
from checkpoint_operator.agent.upload import Uploader, upload_dir
from checkpoint_operator.agent.verify import verify_s3
from checkpoint_operator.objectstore import blobs
from checkpoint_operator.objectstore.s3 import AgentError, delete_prefix, make_client, read_manifest
from checkpoint_operator.protocol.manifest import MANIFEST_NAME

MiB = 1024 * 1024


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def keys(s3, prefix: str = "") -> dict[str, int]:
    client = s3.client()
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=s3.key(prefix)):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(s3.key()):]] = obj["Size"]
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def shard() -> bytes:
    return os.urandom(6 * MiB + 3)  # past the tests' 5 MiB part size: a multipart blob


def test_blob_round_trip_and_second_upload_sends_nothing(s3, tmp_path, shard):
    files = {"model.safetensors": shard, "config.json": b'{"a": 1}', "tok/vocab.txt": b"x" * 100,
             "copy-of-config.json": b'{"a": 1}', "empty": b""}
    src = tree(tmp_path / "ck", files)
    ns = s3.uri("ns/")
    first = upload_dir(str(src), ns + "job-aaaaaaaa/dirs/ck/", blobs=blobs.blob_root_of(ns + "job-aaaaaaaa/"))
    stored = keys(s3)
    blob_keys = {k for k in stored if k.startswith("ns/blobs/sha256/")}
    # each distinct content once, under its sha256; the checkpoint's prefix holds only its manifest
    assert blob_keys == {f"ns/blobs/sha256/{sha(d)}" for d in files.values()}
    assert [k for k in stored if k.startswith("ns/job-aaaaaaaa/")] == [f"ns/job-aaaaaaaa/dirs/ck/{MANIFEST_NAME}"]
    manifest = read_manifest(ns + "job-aaaaaaaa/dirs/ck/")
    assert manifest.blobs == "../../../blobs/sha256/"
    assert first.uploaded_files == 4 and first.skipped_files == 1  # the identical config went once

    # the same files in another Checkpoint of the namespace: nothing sent, one HEAD each
    second = upload_dir(str(src), ns + "other-bbbbbbbb/", blobs=blobs.blob_root_of(ns + "other-bbbbbbbb/"))
    assert second.uploaded_files == 0 and second.skipped_bytes == sum(len(d) for d in files.values())
    assert {k for k in keys(s3) if k.startswith("ns/blobs/sha256/")} == blob_keys

    for uri in (ns + "job-aaaaaaaa/dirs/ck/", ns + "other-bbbbbbbb/"):
        dst = tmp_path / ("dl-" + uri.rstrip("/").rsplit("/", 1)[-1])
        got = download_prefix(uri, str(dst), digest=first.manifest.digest)
        assert got.manifest.digest == first.manifest.digest
        assert {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*")
                if p.is_file() and p.name != MANIFEST_NAME} == files
        assert verify_s3(uri, first.manifest.digest).verified


def test_a_blob_replaced_in_the_bucket_is_a_refused_download_naming_the_file(s3, tmp_path):
    src = tree(tmp_path / "ck", {"weights.bin": b"w" * 1000, "config.json": b"{}"})
    uri = s3.uri("ns/ck-cccccccc/")
    upload_dir(str(src), uri, blobs=blobs.blob_root_of(uri))
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key(f"ns/blobs/sha256/{sha(b'w' * 1000)}"), Body=b"v" * 1000)
    with pytest.raises(AgentError, match="weights.bin"):
        download_prefix(uri, str(tmp_path / "dl"))
    assert not (tmp_path / "dl" / "weights.bin").exists()
    problems = verify_s3(uri).problems
    assert [p.path for p in problems] == ["weights.bin"] and "sha256" in problems[0].line()


def _overwrite(s3, key: str, data: bytes, *, multipart: bool = False) -> None:
    """Other bytes under a blob's name, written as a tenant with the namespace's credentials could:
    with their own (correct) SHA-256 checksum, so the store accepts them."""
    client = s3.client()
    if not multipart:
        client.put_object(Bucket=s3.bucket, Key=key, Body=data,
                          ChecksumSHA256=blobs.hex_to_checksum(sha(data)))
        return
    upload = client.create_multipart_upload(Bucket=s3.bucket, Key=key, ChecksumAlgorithm="SHA256")
    parts = []
    for number, start in enumerate(range(0, len(data), 5 * MiB), 1):
        body = data[start:start + 5 * MiB]
        checksum = blobs.digest_to_checksum(hashlib.sha256(body).digest())
        etag = client.upload_part(Bucket=s3.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number,
                                  Body=body, ChecksumSHA256=checksum)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag, "ChecksumSHA256": checksum})
    client.complete_multipart_upload(Bucket=s3.bucket, Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})


@pytest.mark.parametrize("how", ["small, with its checksum", "small, without a checksum", "multipart, same layout"])
def test_a_blob_changed_behind_the_operator_is_sent_again_not_trusted_by_its_name(s3, tmp_path, shard, how):
    """hostile5 F1: a later upload of the same bytes skipped a blob by its name after one HEAD, so a
    new Checkpoint became Ready on bytes the store did not hold (and its output volume, the only good
    copy, was released). Now the store's SHA-256 checksum must vouch for the blob, or it is sent again."""
    data = shard if how.startswith("multipart") else b"w" * 1000
    src = tree(tmp_path / "ck", {"weights.bin": data, "config.json": b"{}"})
    ns = s3.uri("ns/")
    upload_dir(str(src), ns + "first-aaaaaaaa/", blobs=blobs.blob_root_of(ns + "first-aaaaaaaa/"))
    key = s3.key(f"ns/blobs/sha256/{sha(data)}")
    altered = data[:-1] + bytes([data[-1] ^ 1])
    if how == "small, without a checksum":
        s3.client().put_object(Bucket=s3.bucket, Key=key, Body=altered)
    else:
        _overwrite(s3, key, altered, multipart=how.startswith("multipart"))

    again = upload_dir(str(src), ns + "second-bbbbbbbb/", blobs=blobs.blob_root_of(ns + "second-bbbbbbbb/"))
    assert again.uploaded_files == 1 and again.skipped_files == 1  # the weights sent again, config.json trusted
    got = download_prefix(ns + "second-bbbbbbbb/", str(tmp_path / "dl"), digest=again.manifest.digest)
    assert (tmp_path / "dl" / "weights.bin").read_bytes() == data  # and the store holds the real bytes again
    assert verify_s3(ns + "first-aaaaaaaa/").verified  # which repaired the first Checkpoint too
    assert got.manifest.digest == again.manifest.digest
    # now vouched for: a third upload sends nothing
    third = upload_dir(str(src), ns + "third-cccccccc/", blobs=blobs.blob_root_of(ns + "third-cccccccc/"))
    assert third.uploaded_files == 0


def test_a_multipart_blob_stored_in_another_part_layout_is_still_vouched_for(s3, tmp_path):
    """hostile6 S2: a blob stored with another part size (another agent's setting, an upgrade) was sent
    again on every upload, with a warning that it may have been changed behind the operator. The blob's
    own layout is read from its first part (one HEAD) and the local file hashed in it."""
    data = os.urandom(13 * MiB)
    src = tree(tmp_path / "ck", {"big.bin": data})
    ns = s3.uri("ns/")
    upload_dir(str(src), ns + "five-aaaaaaaa/", blobs=blobs.blob_root_of(ns + "five-aaaaaaaa/"), part_size=5 * MiB)
    said: list[str] = []
    again = upload_dir(str(src), ns + "six-bbbbbbbb/", blobs=blobs.blob_root_of(ns + "six-bbbbbbbb/"),
                       part_size=6 * MiB, log=said.append)
    assert again.uploaded_files == 0 and again.skipped_files == 1
    assert not [line for line in said if "changed behind" in line], said


def test_a_manifest_naming_blobs_outside_the_bucket_is_refused(s3, tmp_path):
    src = tree(tmp_path / "ck", {"a": b"a"})
    uri = s3.uri("ns/ck-dddddddd/")
    result = upload_dir(str(src), uri, blobs=blobs.blob_root_of(uri))
    bad = result.manifest.model_copy(update={"blobs": "../../../../../../x/"})
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key(f"ns/ck-dddddddd/{MANIFEST_NAME}"), Body=bad.to_json())
    with pytest.raises(AgentError, match="leaves the bucket"):
        download_prefix(uri, str(tmp_path / "dl"))


def test_old_layout_and_blob_layout_side_by_side(s3, tmp_path):
    """A checkpoint uploaded before blobs (each file under its prefix) still downloads and verifies,
    and the collector never touches it."""
    src = tree(tmp_path / "ck", {"a.bin": b"a" * 10, "b.bin": b"b" * 20})
    old = s3.uri("ns/old-eeeeeeee/")
    upload_dir(str(src), old)  # no blobs: the older layout
    assert read_manifest(old).blobs is None and "blobs" not in json.loads(
        s3.client().get_object(Bucket=s3.bucket, Key=s3.key(f"ns/old-eeeeeeee/{MANIFEST_NAME}"))["Body"].read())
    new = s3.uri("ns/new-ffffffff/")
    upload_dir(str(src), new, blobs=blobs.blob_root_of(new))
    blobs.collect(make_client(), s3.uri("ns/"), grace=0)
    for uri in (old, new):
        dst = tmp_path / uri.rstrip("/").rsplit("/", 1)[-1]
        assert download_prefix(uri, str(dst)).manifest.fileCount == 2
        assert (dst / "b.bin").read_bytes() == b"b" * 20
        assert verify_s3(uri).verified


def test_collection_deletes_only_blobs_no_manifest_names(s3, tmp_path):
    shared, only_a, only_b = b"s" * 5000, b"a" * 300, b"b" * 400
    ns = s3.uri("ns/")
    a, b = ns + "a-11111111/", ns + "b-22222222/"
    upload_dir(str(tree(tmp_path / "a", {"base.bin": shared, "head.bin": only_a})), a, blobs=blobs.blob_root_of(a))
    upload_dir(str(tree(tmp_path / "b", {"base.bin": shared, "head.bin": only_b})), b, blobs=blobs.blob_root_of(b))
    # another namespace's blob of the same content is not this namespace's to count or delete
    other = s3.uri("team-b/x-33333333/")
    upload_dir(str(tree(tmp_path / "o", {"head.bin": only_a})), other, blobs=blobs.blob_root_of(other))
    delete_prefix(a)
    client = make_client()
    young = blobs.collect(client, ns)  # default grace: just written, so kept
    assert young.deleted == [] and young.kept_young == 1
    done = blobs.collect(client, ns, grace=0)
    assert done.deleted == [s3.uri(f"ns/blobs/sha256/{sha(only_a)}")]
    assert done.manifests == 1 and done.referenced == 2
    assert s3.key(f"team-b/blobs/sha256/{sha(only_a)}") in {s3.key(k) for k in keys(s3, "team-b/")}
    assert download_prefix(b, str(tmp_path / "dl")).manifest.fileCount == 2
    # the markers an upload looks at: one `done`, no run left behind
    assert set(keys(s3, "ns/blobs/gc/")) == {"ns/blobs/gc/done"}
    # cost of a deletion: a few requests, whatever the number of blobs deleted per batch
    assert done.requests <= 10, done


def test_an_unreadable_manifest_stops_the_collection(s3, tmp_path):
    ns = s3.uri("ns/")
    a = ns + "a-44444444/"
    upload_dir(str(tree(tmp_path / "a", {"x": b"x" * 10})), a, blobs=blobs.blob_root_of(a))
    b = ns + "b-55555555/"
    upload_dir(str(tree(tmp_path / "b", {"y": b"y" * 10})), b, blobs=blobs.blob_root_of(b))
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key(f"ns/b-55555555/{MANIFEST_NAME}"), Body=b"{not json")
    delete_prefix(a)
    done = blobs.collect(make_client(), ns, grace=0)
    assert done.deleted == [] and "not JSON" in done.problems[0]
    assert len(keys(s3, "ns/blobs/sha256/")) == 2


def test_a_blob_written_by_an_upload_in_flight_is_not_collected(s3, tmp_path, shard):
    """Rule 1: between the blobs and the commit, a collection keeps what the upload wrote (young)."""
    uri = s3.uri("ns/job-66666666/")
    seen: list[blobs.Collection] = []
    upload = Uploader(str(tree(tmp_path / "ck", {"w.bin": shard, "c.json": b"{}"})), uri,
                      blobs=blobs.blob_root_of(uri),
                      before_commit=lambda: seen.append(blobs.collect(make_client(), s3.uri("ns/"))))
    result = upload.run()
    assert seen[0].deleted == [] and seen[0].kept_young == 2 and seen[0].manifests == 0
    assert result.repaired_files == 0
    assert download_prefix(uri, str(tmp_path / "dl")).manifest.fileCount == 2


def _skip_old_blob_then_collect(s3, tmp_path, shard, *, confirm: bool, monkeypatch) -> tuple[str, Uploader]:
    """A blob of a deleted Checkpoint, unreferenced and old (grace 0), that a new upload finds
    present and skips; then, before the upload commits, a collection deletes it."""
    ns = s3.uri("ns/")
    old = ns + "old-77777777/"
    upload_dir(str(tree(tmp_path / "old", {"base.bin": shard})), old, blobs=blobs.blob_root_of(old))
    delete_prefix(old)  # the Checkpoint is deleted; its blob not collected yet
    time.sleep(2.5)  # ages it past the collection's grace of 2 s (the new upload's own blobs stay young)
    if not confirm:
        monkeypatch.setattr(Uploader, "_confirm_blobs", lambda self, files, before: None)
    new = ns + "new-88888888/"
    upload = Uploader(str(tree(tmp_path / "new", {"base.bin": shard, "head.bin": b"h" * 10})), new,
                      blobs=blobs.blob_root_of(new),
                      before_commit=lambda: blobs.collect(make_client(), ns, grace=2))
    upload.run()
    return new, upload


def test_a_collection_between_the_skip_and_the_commit_is_repaired(s3, tmp_path, shard, monkeypatch):
    """Rule 2: the blob was skipped as present, then collected before the commit: after its commit
    the upload sees the collection's `done`, finds the blob gone and sends it again."""
    new, upload = _skip_old_blob_then_collect(s3, tmp_path, shard, confirm=True, monkeypatch=monkeypatch)
    # base.bin's blob, and on a loaded machine head.bin's too (written more than the 2 s grace before the
    # collection: an upload slower than that), were collected and are sent again.
    assert upload.result.skipped_files == 1 and upload.result.repaired_files in (1, 2)
    assert download_prefix(new, str(tmp_path / "dl")).manifest.fileCount == 2


def test_without_the_check_after_the_commit_the_race_loses_data(s3, tmp_path, shard, monkeypatch):
    """The race rule 2 closes is real: without the check, the committed manifest names a deleted blob."""
    new, _ = _skip_old_blob_then_collect(s3, tmp_path, shard, confirm=False, monkeypatch=monkeypatch)
    with pytest.raises(AgentError, match="base.bin"):
        download_prefix(new, str(tmp_path / "dl"))


def test_a_collection_running_across_the_commit_is_waited_for(s3, tmp_path, shard):
    """The collection lists (the manifest is not there yet), the upload commits, then the collection
    deletes the blob it found unreferenced: the upload, which saw the run's marker after its commit,
    waits for the run to end, then checks and sends the blob again."""
    ns = s3.uri("ns/")
    old = ns + "old-99999999/"
    upload_dir(str(tree(tmp_path / "old", {"base.bin": shard})), old, blobs=blobs.blob_root_of(old))
    delete_prefix(old)
    new = ns + "new-aaaaaaaa/"
    listed, events = threading.Event(), []

    def hold_until_committed(doomed: list[str]) -> None:
        events.append(("gc listed", list(doomed)))
        listed.set()
        client = make_client()
        while True:  # the deletion happens only after the upload's commit
            try:
                client.head_object(Bucket=s3.bucket, Key=s3.key(f"ns/new-aaaaaaaa/{MANIFEST_NAME}"))
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.05)
        time.sleep(0.3)  # the upload has looked at the markers by now (and waits)
        events.append(("gc deletes", None))

    results: list[blobs.Collection] = []
    runner = threading.Thread(target=lambda: results.append(
        blobs.collect(make_client(), ns, grace=0, before_delete=hold_until_committed)))

    def start_collection() -> None:
        runner.start()
        assert listed.wait(30)

    upload = Uploader(str(tree(tmp_path / "new", {"base.bin": shard})), new, blobs=blobs.blob_root_of(new),
                      before_commit=start_collection)
    upload.run()
    runner.join(30)
    assert results[0].deleted == [s3.uri(f"ns/blobs/sha256/{sha(shard)}")]  # it did delete the blob
    assert events[1] == ("gc deletes", None)
    assert upload.result.repaired_files == 1
    assert (ns + f"blobs/sha256/{sha(shard)}")[len(s3.uri()):] in keys(s3, "ns/blobs/sha256/")
    assert download_prefix(new, str(tmp_path / "dl")).manifest.fileCount == 1


def test_agent_snapshot_uploads_blobs_beside_the_job_prefix(s3, tmp_path):
    """The s3 store's snapshot: consecutive checkpoints of a run share their frozen files."""
    from checkpoint_operator.agent.snapshot import snapshot
    out = tmp_path / "out"
    base = os.urandom(300_000)
    for step in (1, 2, 3):
        tree(out / f"checkpoint-{step}", {"base.bin": base, "adapter.bin": os.urandom(1000),
                                          "trainer_state.json": json.dumps({"global_step": step}).encode()})
    report = snapshot(str(out), "directories", s3.uri("ns/job-bbbbbbbb/"))
    assert len(report.checkpoints) == 3
    blob_bytes = sum(v for k, v in keys(s3, "ns/blobs/sha256/").items())
    assert blob_bytes < len(base) + 3 * 2000  # the base once
    for cp in report.checkpoints:
        assert download_prefix(cp.uri, str(tmp_path / "dl" / cp.path)).manifest.fileCount == 3


def test_import_from_a_prefix_in_the_blob_layout_reads_and_verifies_the_blobs(s3, tmp_path):
    """`agent import s3://.../` of another store's checkpoint (its manifest naming blobs)."""
    from checkpoint_operator.agent.importer import import_checkpoint
    files = {"config.json": b'{"model_type": "llama"}', "w/model.bin": os.urandom(70_000)}
    uri = s3.uri("other-store/ns/ck-12121212/")
    upload_dir(str(tree(tmp_path / "src", files)), uri, blobs=blobs.blob_root_of(uri))
    result = import_checkpoint(uri, str(tmp_path / "imported"))
    assert result["fileCount"] == 2
    assert (tmp_path / "imported" / "w" / "model.bin").read_bytes() == files["w/model.bin"]
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key(f"other-store/ns/blobs/sha256/{sha(files['config.json'])}"),
                           Body=b'{"model_type": "evil!"}')
    with pytest.raises(AgentError, match="config.json"):
        import_checkpoint(uri, str(tmp_path / "again"))
    assert not (tmp_path / "again").exists()


def test_agent_upload_takes_blobs_on_its_command_line(s3, tmp_path):
    import subprocess
    import sys
    src = tree(tmp_path / "ck", {"a.bin": b"a" * 100})
    uri = s3.uri("ns/cli-13131313/")
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "upload", str(src), uri,
                           "--blobs", s3.uri("ns/blobs/sha256/")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert s3.key(f"ns/blobs/sha256/{sha(b'a' * 100)}") in {s3.key(k) for k in keys(s3, "ns/blobs/")}
    assert read_manifest(uri).blobs == "../blobs/sha256/"


def test_an_abandoned_multipart_blob_upload_is_aborted_a_live_one_is_not(s3, monkeypatch):
    client = s3.client()
    key = s3.key("ns/blobs/sha256/" + "c" * 64)
    upload_id = client.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=s3.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"p" * 1000)

    def pending() -> list[str]:
        return [u["UploadId"] for u in client.list_multipart_uploads(Bucket=s3.bucket, Prefix=key).get("Uploads", [])]
    blobs.collect(make_client(), s3.uri("ns/"), grace=0)
    assert pending() == [upload_id]  # begun just now: an upload in flight
    monkeypatch.setattr(blobs, "ABANDONED_MULTIPART_SECONDS", -1.0)
    blobs.collect(make_client(), s3.uri("ns/"), grace=0)
    assert pending() == []


def test_a_deleted_checkpoints_own_blobs_go_at_once_whatever_the_grace(s3, tmp_path, shard):
    """The blobs the deleted manifest named are released: collected at once when nothing else names
    them (the shared base stays), while an unrelated young orphan waits for the grace period; an
    upload in flight that skipped a released blob as present sends it again after its commit."""
    ns = s3.uri("ns/")
    a, b = ns + "a-14141414/", ns + "b-15151515/"
    upload_dir(str(tree(tmp_path / "a", {"base.bin": shard, "own.bin": b"a" * 500})), a, blobs=blobs.blob_root_of(a))
    upload_dir(str(tree(tmp_path / "b", {"base.bin": shard})), b, blobs=blobs.blob_root_of(b))
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key("ns/blobs/sha256/" + "d" * 64), Body=b"orphan")
    client = make_client()
    released = blobs.released_blobs(client, a)
    assert released == {bytes.fromhex(sha(shard)), bytes.fromhex(sha(b"a" * 500))}
    delete_prefix(a)
    c = ns + "c-16161616/"
    upload = Uploader(str(tree(tmp_path / "c", {"own.bin": b"a" * 500})), c, blobs=blobs.blob_root_of(c),
                      before_commit=lambda: seen.append(blobs.collect(client, ns, released=released)))
    seen: list[blobs.Collection] = []
    upload.run()
    assert seen[0].deleted == [s3.uri(f"ns/blobs/sha256/{sha(b'a' * 500)}")] and seen[0].kept_young == 1
    assert upload.result.skipped_files == 1 and upload.result.repaired_files == 1
    assert download_prefix(c, str(tmp_path / "dl")).manifest.fileCount == 1
    assert blobs.released_blobs(client, a) == set()  # gone: nothing to release


def test_a_collector_that_ran_too_long_deletes_nothing(s3, tmp_path, monkeypatch):
    """hostile6 S1: uploads take a running marker older than STALE_RUN_SECONDS for a dead collector and
    stop waiting for it, but a live collector that slow still deleted what it had decided from a manifest
    listing older than their commits: a Checkpoint was reported on a blob the store no longer held.
    A collector past MAX_RUN_SECONDS (half of it) now leaves the rest for the next collection."""
    ns = s3.uri("ns/")
    a = ns + "a-17171717/"
    upload_dir(str(tree(tmp_path / "a", {"own.bin": b"a" * 500})), a, blobs=blobs.blob_root_of(a))
    client = make_client()
    released = blobs.released_blobs(client, a)
    delete_prefix(a)
    monkeypatch.setattr(blobs, "MAX_RUN_SECONDS", 0.2)
    slow = blobs.collect(client, ns, released=released, before_delete=lambda doomed: time.sleep(0.5))
    assert slow.deleted == [] and "ran longer than" in slow.problems[0]
    assert f"ns/blobs/sha256/{sha(b'a' * 500)}" in keys(s3)  # left for the next collection
    monkeypatch.setattr(blobs, "MAX_RUN_SECONDS", 1800.0)
    assert blobs.collect(client, ns, released=released).deleted == [s3.uri(f"ns/blobs/sha256/{sha(b'a' * 500)}")]


def test_a_collector_that_fails_after_deleting_still_marks_its_run(s3, tmp_path, shard, monkeypatch):
    """Its `done` is written on the way out, so the upload in flight repairs what it took."""
    ns = s3.uri("ns/")
    old = ns + "old-17171717/"
    upload_dir(str(tree(tmp_path / "old", {"base.bin": shard})), old, blobs=blobs.blob_root_of(old))
    released = blobs.released_blobs(make_client(), old)
    delete_prefix(old)

    def broken(*args, **kwargs):
        raise RuntimeError("the collector dies here")
    monkeypatch.setattr(blobs, "_abort_abandoned_multipart", broken)
    failures: list[str] = []

    def collect_and_die() -> None:
        with pytest.raises(RuntimeError) as caught:
            blobs.collect(make_client(), ns, released=released)
        failures.append(str(caught.value))
    new = ns + "new-18181818/"
    upload = Uploader(str(tree(tmp_path / "new", {"base.bin": shard})), new, blobs=blobs.blob_root_of(new),
                      before_commit=collect_and_die)
    upload.run()
    assert failures == ["the collector dies here"] and upload.result.repaired_files == 1
    assert download_prefix(new, str(tmp_path / "dl")).manifest.fileCount == 1


def test_a_collector_killed_outright_counts_as_a_run_once_its_marker_is_stale(s3, tmp_path, monkeypatch):
    """No `done`, its running marker left behind: once stale, an upload checks its blobs, and the
    next collection removes the marker."""
    ns = s3.uri("ns/")
    new = ns + "new-19191919/"
    data = b"w" * 2000
    gc_key = s3.key("ns/blobs/gc/running-dead")

    def killed_collector_deleted_the_blob() -> None:
        s3.client().put_object(Bucket=s3.bucket, Key=gc_key, Body=b"")
        s3.client().delete_object(Bucket=s3.bucket, Key=s3.key(f"ns/blobs/sha256/{sha(data)}"))
    monkeypatch.setattr(blobs, "STALE_RUN_SECONDS", -1.0)
    upload = Uploader(str(tree(tmp_path / "new", {"w.bin": data})), new, blobs=blobs.blob_root_of(new),
                      before_commit=killed_collector_deleted_the_blob)
    upload.run()
    assert upload.result.repaired_files == 1
    assert download_prefix(new, str(tmp_path / "dl")).manifest.fileCount == 1
    blobs.collect(make_client(), ns)
    assert "ns/blobs/gc/running-dead" not in keys(s3, "ns/blobs/gc/")


def test_a_collection_that_deletes_nothing_leaves_uploads_alone(s3, tmp_path):
    ns = s3.uri("ns/")
    new = ns + "new-20202020/"
    upload = Uploader(str(tree(tmp_path / "new", {"w.bin": b"x" * 10})), new, blobs=blobs.blob_root_of(new),
                      before_commit=lambda: blobs.collect(make_client(), ns))
    upload.run()
    assert upload.result.repaired_files == 0 and keys(s3, "ns/blobs/gc/") == {}


def test_a_blob_relied_on_and_deleted_before_the_commit_by_another_hand_is_sent_again(s3, tmp_path, shard):
    """hostile7 B2: the second upload of the same bytes finds its blobs with a HEAD and sends nothing; a
    store's operator (or the namespace's credentials) deletes one before the commit, no collection ran.
    The upload HEADs what it relied on once more after the commit and sends it again, so the checkpoint
    it reports (and whose output volume is then released) is in the store. It failed before: reported
    stored, the blob gone."""
    ns = s3.uri("ns/")
    files = {"big.bin": shard, "small.bin": b"s" * 1000}
    src = tree(tmp_path / "ck", files)
    first = ns + "first-21212121/"
    upload_dir(str(src), first, blobs=blobs.blob_root_of(first))
    second = ns + "second-22222222/"

    def deleted_behind_it() -> None:
        for data in files.values():
            s3.client().delete_object(Bucket=s3.bucket, Key=s3.key(f"ns/blobs/sha256/{sha(data)}"))
    upload = Uploader(str(src), second, blobs=blobs.blob_root_of(second), before_commit=deleted_behind_it)
    upload.run()
    assert upload.result.skipped_files == 2 and upload.result.repaired_files == 2
    assert keys(s3, "ns/blobs/gc/") == {}  # no collection ran
    got = download_prefix(second, str(tmp_path / "dl"))
    assert got.manifest.fileCount == 2 and (tmp_path / "dl" / "big.bin").read_bytes() == shard


def test_a_blob_relied_on_and_rewritten_before_the_commit_is_sent_again(s3, tmp_path, shard):
    """hostile8 B3: not deleted but rewritten with other bytes of the same size (a single PUT, and a
    multipart blob rewritten whole): the check after the commit asks for the store's checksum, as the
    skip did, and sends the file again. It failed before (existence only: reported stored)."""
    ns = s3.uri("ns/")
    files = {"big.bin": shard, "small.bin": b"s" * 1000}
    src = tree(tmp_path / "ck", files)
    first = ns + "first-31313131/"
    upload_dir(str(src), first, blobs=blobs.blob_root_of(first))
    second = ns + "second-32323232/"

    def rewritten_behind_it() -> None:
        for data in files.values():
            s3.client().put_object(Bucket=s3.bucket, Key=s3.key(f"ns/blobs/sha256/{sha(data)}"),
                                   Body=bytes(len(data)))
    upload = Uploader(str(src), second, blobs=blobs.blob_root_of(second), before_commit=rewritten_behind_it)
    upload.run()
    assert upload.result.skipped_files == 2 and upload.result.repaired_files == 2
    got = download_prefix(second, str(tmp_path / "dl"))
    assert got.manifest.fileCount == 2 and (tmp_path / "dl" / "big.bin").read_bytes() == shard
