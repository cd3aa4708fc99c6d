"""protocol/manifest.py: the manifest built file by file, in canonical order, stored byte for byte."""

from __future__ import annotations

import io
import json

import pytest

from checkpoint_operator.protocol.manifest import FileEntry, Manifest, ManifestBuilder, digest_of, parse_manifest

DIGEST = "sha256:" + "ab" * 32


def test_a_manifest_is_built_file_by_file_in_canonical_order_and_stored_byte_for_byte():
    files = [("a/b", 3, "1" * 64), ("a-b", 1, "2" * 64), ("a.b", 2, "3" * 64), ("é", 4, "4" * 64)]
    ordered = sorted(files, key=lambda f: f[0].encode())
    spool = io.BytesIO()
    builder = ManifestBuilder(".", spool=spool)
    for path, size, sha in ordered:
        builder.add(path, size, sha)
    manifest = builder.manifest(format="torch", step=5)
    assert manifest.files == []  # spooled, not kept
    out = io.BytesIO()
    builder.write(out, manifest)
    entries = [FileEntry(path=p, size=s, sha256=h) for p, s, h in files]
    expected = Manifest(path=".", files=entries, sizeBytes=10, fileCount=4, digest=digest_of(entries), format="torch",
                        step=5)
    assert out.getvalue() == expected.model_copy(update={"files": sorted(entries, key=lambda e: e.path.encode())}
                                                 ).to_json().encode()
    assert parse_manifest(out.getvalue(), "stored").digest == expected.digest
    with pytest.raises(ValueError, match="files must be added in path order, once"):
        builder.add("a/b", 1, "5" * 64)
    assert json.loads(out.getvalue())["fileCount"] == 4
