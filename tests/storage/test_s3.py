"""The s3 store as the operator uses it, against a real S3 server: commit check, deletion of
owned data only, and only inside the Checkpoint's namespace's prefix."""

from __future__ import annotations

import pytest

from checkpoint_operator.protocol.manifest import MANIFEST_NAME
from checkpoint_operator.api.checkpoint import CheckpointStatus, Location, S3Location, VolumeLocation
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.storage import ForeignLocation, MissingUpload, store_for
from factories import training_job


def test_committed_only_with_a_manifest_and_only_owned_data_is_deleted(s3):  # noqa: F811
    store = store_for(OperatorConfig(storage_type="s3", s3_bucket=s3.bucket, s3_endpoint=s3.endpoint,
                                     s3_prefix=s3.root.rstrip("/")))
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key=s3.key("team/ckpt/model.bin"), Body=b"x")
    location = Location(s3=S3Location(uri=s3.uri("team/ckpt/")))
    assert store.is_committed(location) is False
    client.put_object(Bucket=s3.bucket, Key=s3.key(f"team/ckpt/{MANIFEST_NAME}"), Body=b"{}")
    assert store.is_committed(location) is True

    assert store.delete_owned_data(CheckpointStatus(owned=False, location=location), "team") is None  # points to: kept
    assert client.list_objects_v2(Bucket=s3.bucket, Prefix=s3.key("team/ckpt/"))["KeyCount"] == 2
    # Another namespace's Checkpoint claiming this location (a status written by someone else):
    with pytest.raises(ForeignLocation, match="outside"):
        store.delete_owned_data(CheckpointStatus(owned=True, location=location), "other")
    with pytest.raises(ForeignLocation):
        store.delete_owned_data(CheckpointStatus(owned=True, location=Location(s3=S3Location(uri=s3.uri("other/../team/ckpt/")))),
                                "other")
    assert client.list_objects_v2(Bucket=s3.bucket, Prefix=s3.key("team/ckpt/"))["KeyCount"] == 2
    assert store.delete_owned_data(CheckpointStatus(owned=True, location=location), "team") == s3.uri("team/ckpt/")
    assert client.list_objects_v2(Bucket=s3.bucket, Prefix=s3.key("team/ckpt/"))["KeyCount"] == 0
    assert store.delete_owned_data(CheckpointStatus(owned=True, location=location), "team") == s3.uri("team/ckpt/")  # again
    assert store.is_committed(location) is False


def test_an_upload_is_accepted_only_under_the_prefix_the_operator_gave():
    store = store_for(OperatorConfig(storage_type="s3", s3_bucket="b", s3_prefix="ckpts"))
    tj = TrainingJob.model_validate(training_job("train"))
    own = store.prefix_for("default", "train", tj.metadata.uid)
    assert own == f"s3://b/ckpts/default/train-{tj.metadata.uid[:8]}/"
    from checkpoint_operator.protocol.results import CheckpointSummary
    m = CheckpointSummary(path="step-1", sizeBytes=0, fileCount=0, digest="sha256:" + "0" * 64)
    assert store.snapshot_location(tj, "c", m.model_copy(update={"uri": own + "dirs/step-1/"}), "auto") == \
        Location(s3=S3Location(uri=own + "dirs/step-1/"))
    for elsewhere in ("s3://b/ckpts/team-b/x/dirs/step-1/", own + "../../team-b/x/"):
        with pytest.raises(MissingUpload, match="outside"):
            store.snapshot_location(tj, "c", m.model_copy(update={"uri": elsewhere}), "auto")
    with pytest.raises(MissingUpload, match="did not upload"):
        store.snapshot_location(tj, "c", m, "auto")


def test_volume_store_deletes_nothing_itself():
    store = store_for(OperatorConfig())
    location = Location(volume=VolumeLocation(claimName="c", path="p"))
    assert store.delete_owned_data(CheckpointStatus(owned=True, location=location), "default") is None
    assert store.is_committed(location)
