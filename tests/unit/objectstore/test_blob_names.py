"""The blob layout's names (objectstore/blobs.py): where blobs go, how a manifest names them, and
what the collector takes from a manifest's text."""

from __future__ import annotations

import io
import json

import pytest

from checkpoint_operator.objectstore import blobs
from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import FileEntry, Manifest, digest_of


def test_blobs_sit_beside_the_owner_prefix_under_the_namespace() -> None:
    assert blobs.blob_root_of("s3://b/p/q/team-a/job-1234abcd/") == "s3://b/p/q/team-a/blobs/sha256/"
    assert blobs.blob_root_of("s3://b/p/_catalog/gpt-1234abcd/") == "s3://b/p/_catalog/blobs/sha256/"
    assert blobs.blob_root_of("s3://b/x/") == "s3://b/blobs/sha256/"
    with pytest.raises(AgentError, match="parent"):
        blobs.blob_root_of("s3://b/")
    assert blobs.gc_root("s3://b/p/team-a/blobs/sha256/") == "s3://b/p/team-a/blobs/gc/"


@pytest.mark.parametrize("checkpoint", ["s3://b/p/ns/job-1234abcd/dirs/ckpt/", "s3://b/p/ns/job-1234abcd/dirs/a/b/c/",
                                        "s3://b/p/ns/up-1234abcd/", "s3://b/p/ns/job-1234abcd/sealed/d/abcdef/"])
def test_a_relative_reference_resolves_back(checkpoint: str) -> None:
    root = "s3://b/p/ns/blobs/sha256/"
    ref = blobs.relative_ref(checkpoint, root)
    assert ref.startswith("../") and ref.endswith("blobs/sha256/")
    assert blobs.resolve_ref(checkpoint, ref) == root


@pytest.mark.parametrize("ref", ["../../../../x/", "/abs/", "..\\x/", "../../blobs", "../../", "../../../"])
def test_a_reference_leaving_the_bucket_or_not_a_directory_is_refused(ref: str) -> None:
    with pytest.raises(AgentError):
        blobs.resolve_ref("s3://b/ns/ck-1234abcd/", ref)


def test_object_location_per_layout() -> None:
    entry = FileEntry(path="w/model.bin", size=1, sha256="a" * 64)
    plain = Manifest(path=".", files=[entry], sizeBytes=1, fileCount=1, digest=digest_of([entry]))
    assert blobs.object_uri("s3://b/ns/ck-1/", plain, entry.path, entry.sha256) == "s3://b/ns/ck-1/w/model.bin"
    blob = plain.model_copy(update={"blobs": "../blobs/sha256/"})
    assert blobs.object_uri("s3://b/ns/ck-1/", blob, entry.path, entry.sha256) == "s3://b/ns/blobs/sha256/" + "a" * 64
    assert "blobs" not in json.loads(plain.to_json()) and json.loads(blob.to_json())["blobs"] == "../blobs/sha256/"


class Chunky(io.BytesIO):
    """A body that hands out at most `n` bytes per read, to cut keys at every place."""

    def __init__(self, data: bytes, n: int) -> None:
        super().__init__(data)
        self.n = n

    def read(self, size: int | None = -1) -> bytes:
        return super().read(min(self.n, size if size and size > 0 else self.n))


def _manifest(count: int, ref: str | None = "../blobs/sha256/") -> tuple[bytes, set[bytes]]:
    entries = [FileEntry(path=f'f"{i}', size=i, sha256=f"{i:064x}") for i in range(count)]
    m = Manifest(path=".", files=entries, sizeBytes=sum(e.size for e in entries), fileCount=count,
                 digest=digest_of(entries), blobs=ref)
    return m.to_json().encode(), {bytes.fromhex(e.sha256) for e in entries}


@pytest.mark.parametrize("chunk", [1 << 20, 7, 61, 100, 3000])
def test_the_collector_reads_every_name_whatever_the_chunking(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobs, "_CHUNK", chunk)
    body, names = _manifest(50)
    ref, found, whole = blobs.manifest_refs(Chunky(body, chunk))
    assert (ref, found, whole) == ("../blobs/sha256/", names, True)


def test_a_path_cannot_fake_a_name_and_a_cut_manifest_is_not_whole() -> None:
    fake = "f" * 64  # valid hex: only the escaping keeps it from counting
    entry = FileEntry(path=f'"sha256":"{fake}" "blobs":"../x/"', size=0, sha256="b" * 64)
    m = Manifest(path=".", files=[entry], sizeBytes=0, fileCount=1, digest=digest_of([entry]), blobs="../b/")
    ref, found, whole = blobs.manifest_refs(io.BytesIO(m.to_json().encode()))
    assert found == {bytes.fromhex("b" * 64)} and ref == "../b/" and whole
    body, _ = _manifest(5)
    assert blobs.manifest_refs(io.BytesIO(body[:-10]))[2] is False
    assert blobs.manifest_refs(io.BytesIO(b""))[2] is False
    assert blobs.manifest_refs(io.BytesIO(_manifest(3, ref=None)[0]))[0] is None


def test_a_long_blobs_reference_cut_by_a_chunk_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = "../" * 300 + "blobs/sha256/"  # 913 characters: a checkpoint 300 directories deep
    body, names = _manifest(3, ref=ref)
    for chunk in (50, 500, 999):
        monkeypatch.setattr(blobs, "_CHUNK", chunk)
        assert blobs.manifest_refs(Chunky(body, chunk))[:2] == (ref, names)


def test_a_stored_checksum_vouches_for_a_blob_only_when_it_is_the_blob_s_own() -> None:
    import hashlib
    data = b"weights"
    name = hashlib.sha256(data).hexdigest()
    own = blobs.hex_to_checksum(name)
    verdict = blobs.checksum_verdict
    assert verdict(own, name) is blobs.ChecksumVerdict.MATCHES
    assert verdict(blobs.hex_to_checksum(hashlib.sha256(b"other").hexdigest()), name) is blobs.ChecksumVerdict.DIFFERS
    assert verdict("", name) is blobs.ChecksumVerdict.MISSING  # an older blob, or a store without checksums
    # multipart: compared by hashing the local file in the blob's own parts
    assert verdict("abc=-3", name) is blobs.ChecksumVerdict.NEEDS_PART_DIGESTS
    assert verdict("abc=-x", name) is blobs.ChecksumVerdict.DIFFERS and verdict("abc=-0", name) is blobs.ChecksumVerdict.DIFFERS
    assert blobs.composite_parts("abc=-3") == 3 and blobs.composite_parts("abc=") is None
    # the stored layout, from the first part's length: every part but the last of that size
    assert blobs.uniform_part_size(13, 3, 5) == 5 and blobs.uniform_part_size(13, 2, 5) is None
    assert blobs.uniform_part_size(10, 2, 5) == 5 and blobs.uniform_part_size(10, 1, 10) == 10
    assert blobs.uniform_part_size(10, 2, 0) is None
    # S3's composite: sha256 of the parts' digests, then the count
    parts = [hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()]
    assert blobs.composite_checksum(parts) == blobs.digest_to_checksum(hashlib.sha256(parts[0] + parts[1]).digest()) + "-2"
