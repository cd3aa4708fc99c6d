"""logic/volume_snapshots.py: the VolumeSnapshots the operator builds (validated against external-snapshotter's
own CRD, schema and CEL rules: tests/schemas/external-snapshotter/), what it reads of them, the locations in
them, and the volumes restored from them (validated against Kubernetes' Pod schema)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from checkpoint_operator.api.checkpoint import Location, SnapshotLocation
from checkpoint_operator.local.admission import CustomResourceSchema
from checkpoint_operator.logic import volume_snapshots as vs
from checkpoint_operator.logic.naming import MAX_NAME

SCHEMAS = Path(__file__).parents[2] / "schemas" / "external-snapshotter"
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
JOB_OWNER = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "name": "train", "uid": "u-job",
             "controller": True, "blockOwnerDeletion": True}


def crd_schema(kind: str) -> CustomResourceSchema:
    name = {"VolumeSnapshot": "volumesnapshots", "VolumeSnapshotContent": "volumesnapshotcontents"}[kind]
    crd = yaml.safe_load((SCHEMAS / f"snapshot.storage.k8s.io_{name}.yaml").read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return CustomResourceSchema(version["schema"]["openAPIV3Schema"])


def request(claim: str = "train-output-ab12c", key: str = "final", storage_class: str | None = "gp3"):
    return vs.build_volume_snapshot("team-a", claim, key, "ebs-snapshots",
                                    {"ckpt.dev/trainingjob-uid": "u-job", "ckpt.dev/component": vs.COMPONENT_OUTPUT},
                                    JOB_OWNER, storage_class)


def test_the_volume_snapshot_is_valid_for_external_snapshotters_crd() -> None:
    built = request()
    body = copy.deepcopy(built.body)
    assert crd_schema("VolumeSnapshot").admit(body, None) == []
    assert body == built.body  # nothing pruned or defaulted: every field is one the CRD has
    assert body["apiVersion"] == "snapshot.storage.k8s.io/v1" and body["kind"] == "VolumeSnapshot"
    assert body["spec"] == {"volumeSnapshotClassName": "ebs-snapshots",
                            "source": {"persistentVolumeClaimName": "train-output-ab12c"}}
    assert body["metadata"]["ownerReferences"] == [JOB_OWNER]
    assert built.namespace == "team-a" and built.storage_class == "gp3"


def test_the_crd_refuses_what_it_should_so_the_check_above_means_something() -> None:
    bad = copy.deepcopy(request().body)
    bad["spec"]["source"]["volumeSnapshotContentName"] = "x"  # both sources: its CEL rule refuses it
    assert any("exactly one of volumeSnapshotContentName and persistentVolumeClaimName" in str(e)
               for e in crd_schema("VolumeSnapshot").admit(bad, None))
    empty_class = copy.deepcopy(request().body)
    empty_class["spec"]["volumeSnapshotClassName"] = ""
    assert crd_schema("VolumeSnapshot").admit(empty_class, None)


def test_snapshot_names_are_deterministic_valid_and_differ_by_purpose() -> None:
    assert vs.volume_snapshot_name("c", "final") == vs.volume_snapshot_name("c", "final")
    names = {vs.volume_snapshot_name("c", key) for key in ("final", "step-1@sha256:a", "step-1@sha256:b", "import")}
    assert len(names) == 4
    longest = vs.volume_snapshot_name("c" * 253, "final")
    assert len(longest) <= MAX_NAME and SUBDOMAIN.match(longest)
    assert vs.volume_snapshot_name("c" * 253, "final") != vs.volume_snapshot_name("c" * 252 + "d", "final")



def test_a_snapshot_is_created_under_a_name_no_one_can_use_first() -> None:
    """hostile4 D8: the name a snapshot is created under has a random part after its key; the
    record (key, name, uid) of the create call's answer is what later passes take."""
    body = request().named("0a1b2c3d4e")
    assert body["metadata"]["name"] == request().name + "-0a1b2c3d4e"
    assert request().body["metadata"]["name"] == request().name  # the request itself is left as it is
    longest = vs.created_name(vs.volume_snapshot_name("c" * 253, "final"), "0a1b2c3d4e")
    assert len(longest) <= MAX_NAME and SUBDOMAIN.match(longest)
    assert crd_schema("VolumeSnapshot").admit(body, None) == []


def test_records_are_kept_by_key_and_bounded() -> None:
    from checkpoint_operator.api.common import MAX_VOLUME_SNAPSHOT_RECORDS, VolumeSnapshotRecord
    one = VolumeSnapshotRecord(key="k", name="k-1", uid="u1")
    again = VolumeSnapshotRecord(key="k", name="k-2", uid="u2")
    assert vs.recorded(vs.with_record([one], again), "k") == again and vs.recorded(None, "k") is None
    many = [VolumeSnapshotRecord(key=f"k{i}", name=f"k{i}-x", uid=f"u{i}") for i in range(MAX_VOLUME_SNAPSHOT_RECORDS)]
    kept = vs.with_record(many, one)
    assert len(kept) == MAX_VOLUME_SNAPSHOT_RECORDS and kept[-1] == one and vs.recorded(kept, "k0") is None
    assert vs.without_record(kept, "k") == many[1:]


def test_a_namesake_of_a_recorded_snapshot_is_not_it() -> None:
    from checkpoint_operator.api.common import VolumeSnapshotRecord
    record = VolumeSnapshotRecord(key="k", name="k-1", uid="u1")
    body = {"metadata": {"name": "k-1", "uid": "u1"}, "spec": {"source": {"persistentVolumeClaimName": "claim"}}}
    assert vs.not_the_recorded(record, body, "claim") is None
    replaced = vs.not_the_recorded(record, {**body, "metadata": {"name": "k-1", "uid": "u9"}}, "claim")
    assert replaced == "VolumeSnapshot k-1 is not the one the operator took (uid u9, not u1): it was replaced; delete it"
    assert vs.not_the_recorded(record, body, "other-claim") is not None

@pytest.mark.parametrize("body, state", [
    (None, vs.SnapshotState(exists=False)),
    ({"metadata": {"name": "s"}, "spec": {"source": {"persistentVolumeClaimName": "c"}}},
     vs.SnapshotState(exists=True, source_claim="c")),
    ({"metadata": {"name": "s"}, "spec": {}, "status": {"readyToUse": False, "error": {"message": "quota"}}},
     vs.SnapshotState(exists=True, error="quota")),
    ({"metadata": {"name": "s"}, "spec": {}, "status": {"readyToUse": True, "restoreSize": "10Gi",
                                                        "boundVolumeSnapshotContentName": "snapcontent-1"}},
     vs.SnapshotState(exists=True, ready=True, restore_size="10Gi")),
    ({"metadata": {"name": "s", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {},
      "status": {"readyToUse": True, "restoreSize": "1Gi"}},
     vs.SnapshotState(exists=True, ready=True, restore_size="1Gi", deleting=True)),
])
def test_read_state(body, state) -> None:
    assert vs.read_state(body) == state


def test_a_snapshot_being_cut_is_read_soon_then_every_ten_seconds() -> None:
    assert vs.poll_after(0) == vs.POLL_MIN
    assert vs.poll_after(35) == 4
    assert vs.poll_after(3600) == vs.POLL_MAX


def test_a_location_in_a_snapshot_reads_back_through_the_model() -> None:
    taken = vs.TakenSnapshot("train-output-ab12c-snap-1", "10Gi", "gp3")
    location = vs.snapshot_location(taken, ".", ["config.json", "model.safetensors"])
    wire = location.to_wire()
    assert wire == {"snapshot": {"volumeSnapshotName": "train-output-ab12c-snap-1", "path": ".",
                                 "items": ["config.json", "model.safetensors"], "restoreSize": "10Gi",
                                 "storageClassName": "gp3"}}
    assert Location.model_validate(wire) == location
    assert Location.model_validate({"volume": {"claimName": "c", "path": "."}}).snapshot is None


def pod_with(volume: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "consumer"},
            "spec": {"containers": [{"name": "main", "image": "x", "volumeMounts": [
                {"name": volume["name"], "mountPath": "/input-checkpoint/base", "subPath": "step-100",
                 "readOnly": True}]}], "volumes": [volume]}}


@pytest.mark.parametrize("mode", ["ReadWriteOnce", "ReadOnlyMany"])
def test_a_restored_volume_is_a_claim_of_each_pods_own_from_the_snapshot(mode: str) -> None:
    location = SnapshotLocation(volumeSnapshotName="snap", path="step-100", restoreSize="10Gi",
                                storageClassName="gp3")
    volume = vs.restored_volume("ckpt-in-0", location, mode, {"app.kubernetes.io/managed-by": "checkpoint-operator"})
    template = volume["ephemeral"]["volumeClaimTemplate"]
    assert template["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "checkpoint-operator",
                                              "ckpt.dev/component": vs.COMPONENT_RESTORED}
    assert template["spec"] == {"accessModes": [mode], "resources": {"requests": {"storage": "10Gi"}},
                                "storageClassName": "gp3", "dataSource": {
                                    "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}}
    kubernetes_validate.validate(pod_with(volume), "1.34.0", strict=True)


def test_a_restored_volume_needs_the_snapshots_restore_size() -> None:
    with pytest.raises(vs.SnapshotNotReady, match="snap"):
        vs.restored_volume("v", SnapshotLocation(volumeSnapshotName="snap", path="."), "ReadWriteOnce", {})
    without_class = vs.restored_volume("v", SnapshotLocation(volumeSnapshotName="s", path=".", restoreSize="1Gi"),
                                       "ReadWriteOnce", {})
    assert "storageClassName" not in without_class["ephemeral"]["volumeClaimTemplate"]["spec"]  # the default class


def checkpoint_owner(name: str, uid: str) -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "name": name, "uid": uid, "controller": False,
            "blockOwnerDeletion": True}


def test_hand_over_moves_the_snapshot_from_the_job_to_its_checkpoints() -> None:
    a, b = checkpoint_owner("a", "u-a"), checkpoint_owner("b", "u-b")
    assert vs.hand_over_owners([JOB_OWNER], [a, b], "u-job") == [a, b]
    # A Checkpoint of an earlier pass stays; one given twice is there once.
    assert vs.hand_over_owners([JOB_OWNER, a], [a, b], "u-job") == [a, b]
    # Nothing to hand over to: the job keeps it (never an object without an owner, which the GC would ignore
    # but a user would have to clean up).
    assert vs.hand_over_owners([JOB_OWNER], [], "u-job") == [JOB_OWNER]


def test_only_a_synced_report_allows_a_snapshot() -> None:
    assert vs.is_synced("syncfs") and not vs.is_synced(None) and not vs.is_synced("sync")


READY_SNAPSHOT = {"metadata": {"name": "s", "uid": "u1"}, "status": {"readyToUse": True, "restoreSize": "1Gi"}}


@pytest.mark.parametrize("body, reason, message", [
    (READY_SNAPSHOT, None, None),
    (None, vs.SNAPSHOT_LOST, "VolumeSnapshot s is gone (deleted outside the operator): the data of this Checkpoint "
                             "is lost"),
    ({**READY_SNAPSHOT, "metadata": {"name": "s", "uid": "u2"}}, vs.SNAPSHOT_LOST,
     "VolumeSnapshot s was replaced by another (uid u2, not u1): the data of this Checkpoint is lost"),
    ({**READY_SNAPSHOT, "metadata": {"name": "s", "uid": "u1", "deletionTimestamp": "2026-01-01T00:00:00Z"}},
     vs.SNAPSHOT_LOST, "VolumeSnapshot s is being deleted outside the operator: the data of this Checkpoint is lost"),
    ({**READY_SNAPSHOT, "status": {"readyToUse": False, "error": {"message": "disk gone"}}}, vs.SNAPSHOT_NOT_READY,
     "VolumeSnapshot s is not readyToUse: disk gone"),
    ({**READY_SNAPSHOT, "status": {}}, vs.SNAPSHOT_NOT_READY,
     "VolumeSnapshot s is not readyToUse: the snapshot controller gives no error"),
])
def test_what_is_wrong_with_a_ready_checkpoint_s_snapshot(body, reason, message) -> None:
    """hostile4 D4: a Ready Checkpoint's snapshot deleted, replaced or not readyToUse, one line each."""
    trouble = vs.trouble_of("s", "u1", body)
    assert (trouble.reason, trouble.message) == (reason, message) if reason else trouble is None


def test_a_location_without_uid_is_checked_by_name() -> None:
    assert vs.trouble_of("s", None, {**READY_SNAPSHOT, "metadata": {"name": "s", "uid": "other"}}) is None


@pytest.mark.parametrize("ready, waiting, body, check", [
    (True, False, READY_SNAPSHOT, False),
    (True, False, None, True),
    (True, False, {**READY_SNAPSHOT, "status": {"readyToUse": False}}, True),
    (False, True, {**READY_SNAPSHOT, "status": {"readyToUse": False}}, False),   # still waiting: nothing new
    (False, True, READY_SNAPSHOT, True),                                         # ready again
    (False, True, None, True),                                                   # now gone
])
def test_the_resync_wakes_a_checkpoint_whose_snapshot_no_longer_matches_its_phase(ready, waiting, body, check) -> None:
    assert vs.needs_check(vs.SnapshotUse("c", "s", "u1", ready, waiting), body) is check


def test_a_union_in_workers_snapshots_names_each_and_is_owned_by_whoever_needs_it() -> None:
    """issue 19: one snapshot per worker volume; a location lists the parts, each in its worker's
    snapshot; `pointing_into` says which Checkpoints are a snapshot's owners."""
    from checkpoint_operator.api.checkpoint import VolumeLocation
    taken = vs.TakenParts({1: vs.TakenSnapshot("w1", "1Gi", "gp3", "u1"), 0: vs.TakenSnapshot("w0", "2Gi", None, "u0")})
    assert [t.name for t in taken.snapshots] == ["w0", "w1"]
    union = vs.snapshot_parts_location([(0, VolumeLocation(claimName="o-0", path="step-1", items=["a"])),
                                        (1, VolumeLocation(claimName="o-1", path="step-1", items=["b"]))], taken)
    only0 = vs.snapshot_parts_location([(0, VolumeLocation(claimName="o-0", path="step-2"))], taken)
    single = vs.snapshot_location(vs.TakenSnapshot("other", "1Gi", None), "step-3")
    assert [(s.worker, s.volumeSnapshotName, s.volumeSnapshotUID, s.restoreSize, s.storageClassName, s.items)
            for s in union.snapshots] == [(0, "w0", "u0", "2Gi", None, ["a"]), (1, "w1", "u1", "1Gi", "gp3", ["b"])]
    assert union.on_volumes and only0.on_volumes and not Location().on_volumes
    locations = [union, only0, single]
    assert vs.pointing_into("w0", locations) == [0, 1]
    assert vs.pointing_into("w1", locations) == [0]
    assert vs.pointing_into("other", locations) == [2] and vs.pointing_into("none", locations) == []
    with pytest.raises(vs.SnapshotNotReady, match="worker 2"):
        vs.snapshot_parts_location([(2, VolumeLocation(claimName="o-2", path="."))], taken)


def test_the_index_keeps_a_use_per_snapshot_of_a_union() -> None:
    """The resync's LIST compares each snapshot a Ready Checkpoint is in (hostile4 D4 for N snapshots)."""
    from checkpoint_operator.logic.inputs import CheckpointInfo
    from checkpoint_operator.reconcile.indexes import checkpoint_keys
    body = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
            "metadata": {"name": "train.step-1", "namespace": "ns", "uid": "u-c"},
            "spec": {"source": {"trainingJob": {"name": "train", "uid": "u-t", "directory": "step-1"}}},
            "status": {"phase": "Ready", "location": {"snapshotParts": [
                {"volumeSnapshotName": "w0", "volumeSnapshotUID": "u0", "path": "step-1", "worker": 0},
                {"volumeSnapshotName": "w1", "volumeSnapshotUID": "u1", "path": "step-1", "worker": 1}]}}}
    assert CheckpointInfo.from_body(body).name == "train.step-1"
    uses = {k: v for k, v in checkpoint_keys(body).items() if k[0] == "in-snapshot"}
    assert sorted((k[1], v.snapshot, v.uid, v.ready) for k, v in uses.items()) == [
        ("ns", "w0", "u0", True), ("ns", "w1", "u1", True)]


def test_a_job_with_the_most_worker_volumes_records_a_snapshot_of_each() -> None:
    """status.volumeSnapshots keeps one record per worker volume (and room for live ones): with fewer,
    the first records would be dropped while the last were taken, and taken again, without end."""
    from checkpoint_operator.api.checkpoint import MAX_SNAPSHOT_PARTS
    from checkpoint_operator.api.common import MAX_VOLUME_SNAPSHOT_RECORDS, VolumeSnapshotRecord
    from checkpoint_operator.api.trainingjob import MAX_WORKER_VOLUMES
    assert MAX_SNAPSHOT_PARTS == MAX_WORKER_VOLUMES and MAX_VOLUME_SNAPSHOT_RECORDS >= MAX_WORKER_VOLUMES + 32
    records: list[VolumeSnapshotRecord] = []
    for i in range(MAX_WORKER_VOLUMES):
        records = vs.with_record(records, VolumeSnapshotRecord(key=f"w{i}", name=f"w{i}-x", uid=f"u{i}"))
    assert all(vs.recorded(records, f"w{i}") is not None for i in range(MAX_WORKER_VOLUMES))


def test_the_snapshots_of_workers_volumes_are_valid_for_external_snapshotters_crd() -> None:
    from checkpoint_operator.api.trainingjob import TrainingJob
    from checkpoint_operator.config import OperatorConfig
    from checkpoint_operator.storage.volume import SnapshotVolumeStore
    from factories import training_job
    job = TrainingJob.model_validate(training_job(name="train", replicas=3, engine="JobSet",
                                                  output={"volumePerWorker": True}))
    requests = SnapshotVolumeStore(OperatorConfig(volume_snapshot_class="ebs-snapshots")).output_part_snapshots(
        job, [0, 1, 2], "final")
    for worker, built in requests.items():
        body = copy.deepcopy(built.named("0a1b2c3d4e"))
        assert crd_schema("VolumeSnapshot").admit(body, None) == [] and body == built.named("0a1b2c3d4e")
        assert body["spec"]["source"]["persistentVolumeClaimName"].endswith(f"-{worker}")
