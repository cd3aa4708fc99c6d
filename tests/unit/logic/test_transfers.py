"""The pure parts of push, pull and verify (logic/transfers.py): requests read from annotations,
the pods that serve them (their commands parsed by the agent's real parser), results read back."""

from __future__ import annotations


from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.cli import build_parser
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import transfers
from checkpoint_operator.logic.agent_pods import AGENT_DATA_MOUNT
from checkpoint_operator.protocol import channel
from checkpoint_operator.protocol.results import CheckpointSummary, Problem, TransferReport

CONFIG = OperatorConfig()
DIGEST = "sha256:" + "a" * 64


def checkpoint(annotations=None, status=None, source=None) -> Checkpoint:
    return Checkpoint.model_validate({
        "metadata": {"name": "c", "namespace": "ns", "uid": "uid-1", "annotations": annotations or {}},
        "spec": {"source": source or {"upload": {}}}, "status": status or {}})


def parse(command):
    assert command[:2] == ["checkpoint-operator", "agent"]
    return build_parser().parse_args(command[1:])


def test_an_upload_request_needs_a_valid_digest_and_says_which_annotation():
    assert transfers.upload_request(checkpoint()) is None
    missing = transfers.upload_request(checkpoint({"ckpt.dev/upload-requested": "r1"}))
    assert missing.startswith("annotation ckpt.dev/upload-digest is missing")
    bad = transfers.upload_request(checkpoint({"ckpt.dev/upload-requested": "r1", "ckpt.dev/upload-digest": "md5:x"}))
    assert bad.startswith("annotation ckpt.dev/upload-digest is 'md5:x'")
    ok = transfers.upload_request(checkpoint({"ckpt.dev/upload-requested": "r1", "ckpt.dev/upload-digest": DIGEST,
                                              "ckpt.dev/volume-size": "2Gi"}))
    assert ok == transfers.UploadRequest("r1", DIGEST, 2 * 1024 ** 3)


def test_the_receiver_pod_mounts_the_checkpoints_own_claim_and_carries_its_request():
    request = transfers.UploadRequest("r1", DIGEST, 10 * 1024 ** 3)
    pod = transfers.build_receiver_pod(checkpoint(), CONFIG, request, 5000)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "c-upload" and meta["annotations"]["ckpt.dev/request"] == "r1"
    assert meta["labels"]["ckpt.dev/component"] == "upload" and meta["ownerReferences"][0]["uid"] == "uid-1"
    assert spec["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "c-data-uid-1"}}]
    args = parse(spec["containers"][0]["command"])
    assert (args.agent_command, args.dir, args.digest, args.max_size) == ("receive", transfers.UPLOAD_DIR, DIGEST,
                                                                          "5000")
    assert spec["activeDeadlineSeconds"] == 3600 + 600  # the base plus per GiB of the declared size
    assert parse(transfers.push_command(None, "step-9")).name == "step-9"
    assert parse(transfers.inventory_command()).single


def test_the_s3_upload_check_reads_the_assigned_prefix_with_the_stores_credentials():
    env = [{"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s", "key": "AWS_ACCESS_KEY_ID"}}}]
    pod = transfers.build_upload_check_pod(checkpoint(), CONFIG, transfers.UploadRequest("r2", DIGEST), "s3://b/p/",
                                           env, 99)
    container = pod["spec"]["containers"][0]
    args = parse(container["command"])
    assert (args.agent_command, args.location, args.digest, args.result) == ("verify", "s3://b/p/", DIGEST, True)
    assert container["env"] == env and pod["spec"]["volumes"] == []


def test_verify_and_pull_pods_see_exactly_the_checkpoints_files_read_only():
    root_files = checkpoint(status={"phase": "Ready", "digest": DIGEST, "sizeBytes": 10, "location": {"volume": {
        "claimName": "out", "path": ".", "items": ["model.bin", "sub/cfg.json"]}}},
        source={"trainingJob": {"name": "j", "uid": "u", "directory": "."}})
    pod = transfers.build_verify_pod(root_files, CONFIG, "v1", [])
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert mounts == [{"name": "data", "readOnly": True, "mountPath": f"{AGENT_DATA_MOUNT}/model.bin",
                       "subPath": "model.bin"},
                      {"name": "data", "readOnly": True, "mountPath": f"{AGENT_DATA_MOUNT}/sub/cfg.json",
                       "subPath": "sub/cfg.json"}]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "out", "readOnly": True}
    assert parse(pod["spec"]["containers"][0]["command"]).digest == DIGEST
    directory = checkpoint(status={"phase": "Ready", "digest": DIGEST, "location": {"volume": {
        "claimName": "out", "path": "step-10"}}})
    pull = transfers.build_pull_pod(directory, CONFIG, "p1")
    main = pull["spec"]["containers"][0]
    assert main["volumeMounts"][0] == {"name": "data", "readOnly": True, "mountPath": AGENT_DATA_MOUNT,
                                       "subPath": "step-10"}
    assert parse(main["command"]).agent_command == "hold"
    assert parse(transfers.pull_command()).session_dir == transfers.PULL_WORK_DIR
    assert parse(transfers.pull_command()).manifest is None
    assert pull["metadata"]["labels"]["ckpt.dev/component"] == "pull"
    s3 = checkpoint(status={"phase": "Ready", "digest": DIGEST, "location": {"s3": {"uri": "s3://b/x/"}}})
    assert parse(transfers.build_verify_pod(s3, CONFIG, "v", [])["spec"]["containers"][0]["command"]).location == \
        "s3://b/x/"


def test_results_read_back_and_become_the_verified_condition():
    ok = TransferReport(verified=True, checkpoint=CheckpointSummary(path=".", sizeBytes=0, fileCount=0, digest=DIGEST))
    result = channel.find_result("receive: waiting\n" + channel.encode(ok) + "\n", (TransferReport,),
                                 limit_bytes=1 << 20)
    assert result.verified and result.received and result.checkpoint.digest == DIGEST
    condition = transfers.verified_condition(result, "s3://b/x/")
    assert (condition.status, condition.reason) == ("True", "Verified") and DIGEST in condition.message
    bad = TransferReport(verified=False, problemCount=5, problems=[Problem(path="a", problem="missing"),
                                                                   Problem(path=".", problem="digest differs")])
    condition = transfers.verified_condition(bad, "volume out:step")
    assert condition.status == "False" and condition.message == \
        "5 problems at volume out:step: 'a': missing; digest differs; and 3 more"


def test_a_stored_manifest_is_mounted_alone_and_given_to_verify_and_pull():
    """The volume store keeps a checkpoint's full manifest beside its directory (.ckpt-manifests/
    at the volume's root): verify and pull pods mount that one file, read-only, and are told."""
    stored = ".ckpt-manifests/sha256-" + "a" * 64 + ".json"
    ready = checkpoint(status={"phase": "Ready", "digest": DIGEST, "location": {"volume": {
        "claimName": "out", "path": "step-10", "manifest": stored}}})
    pod = transfers.build_verify_pod(ready, CONFIG, "v1", [])
    container = pod["spec"]["containers"][0]
    assert {"name": "data", "readOnly": True, "mountPath": transfers.MANIFEST_MOUNT,
            "subPath": stored} in container["volumeMounts"]
    assert parse(container["command"]).manifest == transfers.MANIFEST_MOUNT
    volume = ready.status.location.volume
    assert parse(transfers.pull_command(volume)).manifest == transfers.MANIFEST_MOUNT
    pull = transfers.build_pull_pod(ready, CONFIG, "p1")
    assert transfers.MANIFEST_MOUNT in {m["mountPath"] for m in pull["spec"]["containers"][0]["volumeMounts"]}


def test_ready_requests_wake_a_settled_checkpoint():
    assert transfers.has_ready_request({"ckpt.dev/verify-requested": "t"})
    assert transfers.has_ready_request({"ckpt.dev/pull-requested": "t"})
    assert not transfers.has_ready_request({"ckpt.dev/upload-requested": "t"})
    assert not transfers.has_ready_request(None)


def test_verify_and_pull_of_a_union_in_workers_snapshots_restore_each_and_see_one_directory():
    """issue 19: a checkpoint assembled across workers' volumes, each kept in its own VolumeSnapshot:
    the pod restores a volume from each and mounts every part's items into the one data directory."""
    from checkpoint_operator.api.checkpoint import Location
    location = Location.model_validate({"snapshotParts": [
        {"volumeSnapshotName": "w0-snap", "path": "step-1", "items": [".metadata", "__0_0.distcp"],
         "restoreSize": "10Gi", "worker": 0},
        {"volumeSnapshotName": "w1-snap", "path": "step-1", "items": ["__1_0.distcp"], "restoreSize": "10Gi",
         "worker": 1}]})
    volumes, mounts = transfers.location_volumes(location, labels={"ckpt.dev/component": "verify"})
    assert [(v["name"], v["ephemeral"]["volumeClaimTemplate"]["spec"]["dataSource"]["name"]) for v in volumes] == [
        ("data", "w0-snap"), ("data-1", "w1-snap")]
    assert [(m["name"], m["mountPath"], m["subPath"], m["readOnly"]) for m in mounts] == [
        ("data", f"{AGENT_DATA_MOUNT}/.metadata", "step-1/.metadata", True),
        ("data", f"{AGENT_DATA_MOUNT}/__0_0.distcp", "step-1/__0_0.distcp", True),
        ("data-1", f"{AGENT_DATA_MOUNT}/__1_0.distcp", "step-1/__1_0.distcp", True)]
    assert transfers.stored_manifest(location) is None  # read from the data alone, as one snapshot's
    assert transfers.describe_location(location) == "2 VolumeSnapshots (w0-snap:step-1, ...)"
