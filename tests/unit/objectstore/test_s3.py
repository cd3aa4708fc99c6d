"""objectstore/s3.py: what an S3 URI may be, and the one line that says so."""
import pytest

from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.objectstore.s3 import parse_s3_uri


def test_a_uri_parses_into_bucket_and_key():
    location = parse_s3_uri("s3://bucket/a/b/")
    assert (location.bucket, location.key) == ("bucket", "a/b/")


@pytest.mark.parametrize("given", ["/data/upload-here", "data/x", "gs://bucket/x", "https://host/bucket"])
def test_anything_but_s3_is_named_with_what_is_expected(given):
    """A local path where a URI goes is the likely mistake: the message says what a URI looks like
    (it was the generic URL rule, 'must be scheme://host[:port]/...', which names no s3://)."""
    with pytest.raises(AgentError) as refused:
        parse_s3_uri(given)
    assert str(refused.value) == f"not an S3 URI: {given!r} (expected s3://bucket/prefix/)"


def test_a_bucket_that_is_no_host_name_is_refused_by_the_url_rule():
    with pytest.raises(Exception, match="S3 URI"):
        parse_s3_uri("s3://bad bucket/x")
