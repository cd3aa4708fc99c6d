"""gs://bucket/prefix/ (a tree) and gs://bucket/object (one file or archive): Google Cloud Storage
through its S3-compatible XML API, with the agent's S3 code.

Why the XML API and not google-cloud-storage: the S3 path is the agent's most exercised one
(limits from the listing before any byte moves, parallel ranged reads, verification against a
manifest found at the prefix), it needs no further dependency, and it is tested here against a
real S3 server (SeaweedFS); the cost is that credentials are HMAC keys (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY hold the HMAC access id and secret), not service-account JSON or Workload
Identity. Without a key the requests are anonymous, for public buckets (such as the ones T5X
and Orbax checkpoints are published in). The endpoint is --endpoint-url, else
https://storage.googleapis.com.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.agent.sources.base import Fetched, Limits, Options, Source, file_name

DEFAULT_ENDPOINT = "https://storage.googleapis.com"


def has_hmac_key() -> bool:
    return bool(os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("CKPT_S3_SECRET_DIR"))


@contextmanager
def _xml_api_environment() -> Iterator[bool]:
    """The S3 client's settings for GCS while the import runs: region `auto` (what GCS expects
    in SigV4) unless one is set, unsigned requests when there is no HMAC key. Yields whether
    the requests are anonymous."""
    saved = {k: os.environ.get(k) for k in ("AWS_DEFAULT_REGION", "CKPT_S3_UNSIGNED", "AWS_ENDPOINT_URL")}
    anonymous = not has_hmac_key()
    os.environ.setdefault("AWS_DEFAULT_REGION", "auto")
    os.environ.pop("AWS_ENDPOINT_URL", None)  # an S3 endpoint of the environment is not GCS's
    if anonymous:
        os.environ["CKPT_S3_UNSIGNED"] = "1"
    try:
        yield anonymous
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class GcsSource(Source):
    def __init__(self, uri: str, options: Options) -> None:
        self.uri = uri
        rest = uri[len("gs://"):]
        self.bucket, _, self.key = rest.partition("/")
        if not self.bucket:
            raise AgentError(f"{uri}: no bucket (expected gs://bucket/prefix/ or gs://bucket/object)")
        self.is_tree = self.key == "" or self.key.endswith("/")
        self.endpoint = (options.endpoint_url or DEFAULT_ENDPOINT).rstrip("/")

    def _as_gcs(self, exc: AgentError, anonymous: bool) -> AgentError:
        """The S3 code's message, in the terms of this source (gs:// URIs, HMAC keys)."""
        text = str(exc).replace(f"s3://{self.bucket}", f"gs://{self.bucket}")
        text = text.replace("check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
                            "no HMAC key was given, so the request was anonymous (a Secret with AWS_ACCESS_KEY_ID "
                            "and AWS_SECRET_ACCESS_KEY: secretRef)" if anonymous else
                            "check the HMAC key (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
        return AgentError(text.replace("the S3 endpoint", "the GCS XML API endpoint").replace("S3 error on", "GCS error on"))

    def fetch(self, tree: str, downloads: str, limits: Limits) -> Fetched:
        from checkpoint_operator.agent import importer
        s3_uri = f"s3://{self.bucket}/{self.key}"
        with _xml_api_environment() as anonymous:
            try:
                if self.is_tree:
                    importer.fetch_s3_tree(s3_uri, tree, max_size=limits.max_size, max_members=limits.max_files,
                                           endpoint_url=self.endpoint)
                    return Fetched(provenance={"uri": self.uri})
                name = file_name(self.uri, self.key)
                target = os.path.join(downloads, name)
                importer.fetch_s3_object(s3_uri, target, max_size=limits.max_size, endpoint_url=self.endpoint)
                return Fetched(provenance={"uri": self.uri}, file=target, name=name)
            except AgentError as exc:
                raise self._as_gcs(exc, anonymous) from None


SOURCE = GcsSource
