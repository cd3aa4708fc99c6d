"""The manifest: size and sha256 of every file of a checkpoint, and the digest that names it.

The digest is `sha256:` + sha256 of the text `sha256sum` prints for the files sorted by path
(`<hex>  <path>\\n` each), so anyone can check a checkpoint with coreutils:
`cd CKPT && find . -type f ! -path ./.checkpoint-manifest.json -printf '%P\\n' | LC_ALL=C sort |
xargs -r -d '\\n' sha256sum | sha256sum` (hidden files inside a checkpoint are content; only the
manifest at its root is not). For the root-files checkpoint "." hash just the root files it lists. The command
matches when the checkpoint has no symlinks (`agent scan` follows those that stay inside) and
no file name holds a backslash or a newline (`sha256sum` escapes those; the digest does not).
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional

from pydantic import BaseModel, Field

MANIFEST_VERSION = 1
# Object name of the manifest next to the data in object storage. Hidden, so a scan of a
# downloaded checkpoint never mistakes it for checkpoint content; written last = commit marker.
MANIFEST_NAME = ".checkpoint-manifest.json"


class FileEntry(BaseModel):
    path: str = Field(description="path relative to the checkpoint root, '/'-separated")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    """One checkpoint as `agent scan` reports it and as it is stored beside the data."""

    version: int = MANIFEST_VERSION
    path: str = Field(description="directory relative to the scanned dir, '.' for the root files")
    files: list[FileEntry]
    sizeBytes: int
    fileCount: int
    digest: str
    format: str = "unknown"
    step: Optional[int] = None
    resumable: bool = False
    # None: no completeness rule for this format (treated as complete). The reason is one line
    # a user reads: what decided it (agent/completeness.py).
    complete: Optional[bool] = None
    completeReason: Optional[str] = None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=None, separators=(",", ":"), sort_keys=True)


def sha256sum_text(files: list[FileEntry]) -> str:
    """The text `sha256sum` prints for these files, sorted by path (byte order, as LC_ALL=C sort)."""
    ordered = sorted(files, key=lambda f: f.path.encode())
    return "".join(f"{f.sha256}  {f.path}\n" for f in ordered)


def digest_of(files: list[FileEntry]) -> str:
    return "sha256:" + hashlib.sha256(sha256sum_text(files).encode()).hexdigest()
