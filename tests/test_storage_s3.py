"""The s3 store as the operator uses it, against a real S3 server: commit check and deletion
of owned data only."""

from __future__ import annotations

from checkpoint_operator.agent.manifest import MANIFEST_NAME
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.storage import store_for
from s3server import s3, seaweedfs  # noqa: F401  (fixtures)


def test_committed_only_with_a_manifest_and_only_owned_data_is_deleted(s3):  # noqa: F811
    store = store_for(OperatorConfig(storage_type="s3", s3_bucket=s3.bucket, s3_endpoint=s3.endpoint))
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key=s3.key("ckpt/model.bin"), Body=b"x")
    location = {"s3": {"uri": s3.uri("ckpt/")}}
    assert store.is_committed(location) is False
    client.put_object(Bucket=s3.bucket, Key=s3.key(f"ckpt/{MANIFEST_NAME}"), Body=b"{}")
    assert store.is_committed(location) is True

    assert store.delete_owned_data({"owned": False, "location": location}) is None  # points to: never deleted
    assert client.list_objects_v2(Bucket=s3.bucket, Prefix=s3.key("ckpt/"))["KeyCount"] == 2
    assert store.delete_owned_data({"owned": True, "location": location}) == s3.uri("ckpt/")
    assert client.list_objects_v2(Bucket=s3.bucket, Prefix=s3.key("ckpt/"))["KeyCount"] == 0
    assert store.delete_owned_data({"owned": True, "location": location}) == s3.uri("ckpt/")  # idempotent
    assert store.is_committed(location) is False


def test_volume_store_deletes_nothing_itself():
    store = store_for(OperatorConfig())
    assert store.delete_owned_data({"owned": True, "location": {"volume": {"claimName": "c", "path": "p"}}}) is None
    assert store.is_committed({"volume": {"claimName": "c", "path": "p"}})
