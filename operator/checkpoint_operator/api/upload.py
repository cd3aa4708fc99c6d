"""The `upload` source: a Checkpoint whose data a user pushes with `kubectl ckpt push`.

The spec says only that the data will be pushed (`upload: {}`); the push protocol goes through
annotations (what the user's plugin declares) and `status.upload` (where the operator takes
the data). docs/sources.md "Pushing data: the upload source" describes the protocol.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from checkpoint_operator.api.rules import ApiModel, Name, Uri

# Written by the plugin (or by hand), read by the operator.
UPLOAD_DIGEST_ANNOTATION = "ckpt.dev/upload-digest"        # the digest the pushed data must have
UPLOAD_REQUEST_ANNOTATION = "ckpt.dev/upload-requested"    # volume: open a receiver; s3: the data is there
VERIFY_REQUEST_ANNOTATION = "ckpt.dev/verify-requested"    # re-read the data and record condition Verified
PULL_REQUEST_ANNOTATION = "ckpt.dev/pull-requested"        # volume: a pod to stream the data from
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


class UploadSource(ApiModel):
    """The data is pushed by a user (`kubectl ckpt push DIR --name NAME`); the Checkpoint waits
    for it, then verifies it against the manifest the push sends."""


class UploadStatus(ApiModel):
    """Where the operator takes the data of an upload Checkpoint (cleared once it is Ready)."""

    store: Literal["s3", "volume"] = Field(description="The store the data goes to: s3 or volume.")
    uri: Optional[Uri] = Field(
        None, description="s3 store: push the files and their manifest under this prefix (s3://bucket/prefix/), then "
                          f"set the annotation {UPLOAD_REQUEST_ANNOTATION}.")
    endpoint: Optional[Uri] = Field(None, description="s3 store: the store's endpoint as the operator reaches it.")
    claimName: Optional[Name] = Field(None, description="volume store: the PersistentVolumeClaim the data lands on.")
    pod: Optional[Name] = Field(
        None, description="volume store: the pod that receives the data (a push streams it in with exec), while a "
                          "push is requested.")
