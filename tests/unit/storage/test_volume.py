"""storage/volume.py: the volume store's pod parts and locations, with and without volume snapshots
(storage.volume.snapshotClassName). The Jobs built with them are validated against Kubernetes' schema."""

from __future__ import annotations

import kubernetes_validate
import pytest
from pydantic import ValidationError

from checkpoint_operator.api.checkpoint import Checkpoint, Location, VolumeLocation
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import volume_snapshots, workload
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.logic.snapshot import NotStorable
from checkpoint_operator.logic.volume_snapshots import TakenSnapshot
from checkpoint_operator.storage import store_for
from checkpoint_operator.storage.base import MissingUpload
from checkpoint_operator.storage.volume import SnapshotVolumeStore, VolumeStore
from checkpoint_operator.protocol.results import CheckpointSummary
from factories import training_job

SNAPSHOTS = OperatorConfig(volume_snapshot_class="ebs-snapshots", default_storage_class="gp3")


def tj(**kwargs) -> TrainingJob:
    return TrainingJob.model_validate(training_job(**kwargs))


def in_snapshot(name: str, snapshot: str, path: str, items: list[str] | None = None) -> ResolvedInput:
    location = volume_snapshots.snapshot_location(TakenSnapshot(snapshot, "10Gi", "gp3"), path, items)
    return ResolvedInput(name=name, uid="u-" + name, digest="sha256:x", mount_name=name, location=location)


def on_claim(name: str, claim: str, path: str) -> ResolvedInput:
    return ResolvedInput(name=name, uid="u-" + name, digest="sha256:x", mount_name=name,
                         location=Location(volume=VolumeLocation(claimName=claim, path=path)))


def manifest(path: str, files: tuple[str, ...] = ("w.bin",), items: bool = True) -> CheckpointSummary:
    """A scanned checkpoint as the result names it (the root's files as items, unless too many)."""
    return CheckpointSummary(path=path, digest="sha256:" + "0" * 64, sizeBytes=1, fileCount=len(files),
                             items=list(files) if path == "." and items else None)


def test_the_store_is_chosen_by_the_snapshot_class() -> None:
    assert type(store_for(OperatorConfig())) is VolumeStore
    assert type(store_for(SNAPSHOTS)) is SnapshotVolumeStore
    with pytest.raises(ValidationError, match="volume store"):
        OperatorConfig(storage_type="s3", s3_bucket="b", volume_snapshot_class="x")


def test_inputs_in_snapshots_get_a_restored_volume_per_snapshot_and_claims_stay_claims() -> None:
    job = tj(name="consumer")
    inputs = [in_snapshot("a", "out-snap-1", "step-100"), in_snapshot("b", "out-snap-1", "step-200"),
              in_snapshot("final", "out-snap-1", ".", ["config.json", "model.safetensors"]),
              on_claim("adopted", "team-data", "models/base")]
    parts = VolumeStore(OperatorConfig(volume_restore_access_mode="ReadOnlyMany")).input_volumes(job, inputs)
    restored, claim = parts.volumes
    assert restored["name"] == "ckpt-in-0" and claim == {
        "name": "ckpt-in-1", "persistentVolumeClaim": {"claimName": "team-data", "readOnly": True}}
    template = restored["ephemeral"]["volumeClaimTemplate"]
    assert template["spec"]["dataSource"]["name"] == "out-snap-1"
    assert template["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert template["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "checkpoint-operator", "ckpt.dev/component": "restored-input",
        "ckpt.dev/trainingjob": "consumer", "ckpt.dev/trainingjob-uid": "u-consumer"}
    assert [(m["name"], m["mountPath"], m["subPath"], m["readOnly"]) for m in parts.mounts] == [
        ("ckpt-in-0", "/input-checkpoint/a", "step-100", True),
        ("ckpt-in-0", "/input-checkpoint/b", "step-200", True),
        ("ckpt-in-0", "/input-checkpoint/final/config.json", "config.json", True),
        ("ckpt-in-0", "/input-checkpoint/final/model.safetensors", "model.safetensors", True),
        ("ckpt-in-1", "/input-checkpoint/adopted", "models/base", True)]
    built = workload.build_workload(job, inputs, parts)
    assert workload.restored_input_volumes(built.job["spec"]["template"]["spec"]["volumes"]) == 1
    kubernetes_validate.validate({"apiVersion": "batch/v1", "kind": "Job", **built.job}, "1.34.0", strict=True)


def test_the_snapshot_store_syncs_before_it_snapshots() -> None:
    store = SnapshotVolumeStore(SNAPSHOTS)
    assert store.snapshot_command(tj(), "/checkpoint-output")[-1] == "--sync"
    assert "--sync" not in VolumeStore(OperatorConfig()).snapshot_command(tj(), "/checkpoint-output")
    container = store.import_containers(Checkpoint.model_validate({
        "metadata": {"name": "base", "namespace": "default", "uid": "u-base"},
        "spec": {"source": {"http": {"url": "https://example.com/m.tar"}}}}), 1 << 30)[1][0]
    assert container["command"][2].endswith('"$0" --single --result --manifests-dir "${0%/*}/.ckpt-manifests" --sync')
    sidecar, _ = workload.build_live_sidecar(tj(), SNAPSHOTS, None, [], sync=store.syncs_before_snapshots)
    assert sidecar["command"][-1] == "--sync"


def test_the_output_snapshot_belongs_to_the_job_until_its_checkpoints_take_it() -> None:
    job = tj(name="train", output={"storageClassName": "io2"})
    request = SnapshotVolumeStore(SNAPSHOTS).output_snapshot(job, "train-output-u-tra", "final")
    assert request is not None and VolumeStore(OperatorConfig()).output_snapshot(job, "c", "final") is None
    assert request.storage_class == "io2"  # the output's own class, which restores must use
    body = request.body
    assert body["spec"] == {"volumeSnapshotClassName": "ebs-snapshots",
                            "source": {"persistentVolumeClaimName": "train-output-u-tra"}}
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-train"
    assert body["metadata"]["labels"]["ckpt.dev/component"] == "output-snapshot"
    assert body["metadata"]["labels"]["ckpt.dev/trainingjob-uid"] == "u-train"


def test_locations_are_in_the_snapshot_once_it_is_taken() -> None:
    store = SnapshotVolumeStore(SNAPSHOTS)
    job = tj()
    not_yet = store.snapshot_location(job, "c", manifest("step-1"), "auto")
    assert not_yet == Location() and not store.is_committed(not_yet)  # nothing is made Ready with it
    taken = TakenSnapshot("c-snap-1", "10Gi", "gp3")
    directory = store.snapshot_location(job, "c", manifest("step-1"), "auto", taken)
    assert directory.snapshot is not None and directory.snapshot.path == "step-1" and store.is_committed(directory)
    root = store.snapshot_location(job, "c", manifest(".", ("config.json", "w.bin")), "auto", taken)
    assert root.snapshot is not None and root.snapshot.path == "." and root.snapshot.items == ["config.json", "w.bin"]
    with pytest.raises(NotStorable):  # as on the volume store, before any snapshot is taken
        store.snapshot_location(job, "c", manifest(".", ("config.json", "w.bin"), items=False), "auto")
    live = store.live_location(job, "c", manifest("step-2"), taken)
    assert live.snapshot is not None and live.snapshot.volumeSnapshotName == "c-snap-1"
    checkpoint = Checkpoint.model_validate({"metadata": {"name": "base", "namespace": "default", "uid": "u-b"},
                                            "spec": {"source": {"http": {"url": "https://example.com/m"}}}})
    with pytest.raises(MissingUpload):
        store.import_location(checkpoint, "base-data", manifest("data"))
    assert store.import_location(checkpoint, "base-data", manifest("data"), taken).to_wire()["snapshot"]["path"] == "data"
    import_request = store.import_snapshot(checkpoint, "base-data")
    assert import_request is not None
    assert import_request.body["metadata"]["ownerReferences"][0] == {
        "apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "name": "base", "uid": "u-b", "controller": True,
        "blockOwnerDeletion": True}


def test_without_snapshots_locations_stay_on_the_volume() -> None:
    store = VolumeStore(OperatorConfig())
    assert store.snapshot_location(tj(), "c", manifest("step-1"), "auto").to_wire() == {
        "volume": {"claimName": "c", "path": "step-1"}}
    assert store.keeps_output_claim and store.later_writes_reach_checkpoints and not store.syncs_before_snapshots
    snapshots = SnapshotVolumeStore(SNAPSHOTS)
    assert not snapshots.keeps_output_claim and snapshots.later_writes_reach_checkpoints
    # The catalog's own copy is a claim of the operator's namespace: every namespace gets its copy on both.
    assert store.copies_per_namespace and snapshots.copies_per_namespace


def test_the_restored_claims_of_a_pod_are_named_after_its_restored_volumes() -> None:
    job = tj(name="consumer")
    inputs = [on_claim("adopted", "team-data", "m"), in_snapshot("a", "snap-1", "step-1"),
              in_snapshot("b", "snap-2", "step-2")]
    built = workload.build_workload(job, inputs, VolumeStore(OperatorConfig()).input_volumes(job, inputs)).job
    assert workload.restored_input_volumes(built["spec"]["template"]["spec"]["volumes"]) == 2
    assert workload.restored_input_claims(built, "consumer-x7k2p") == ["consumer-x7k2p-ckpt-in-1",
                                                                        "consumer-x7k2p-ckpt-in-2"]
    assert workload.restored_input_claims(None, "p") == []


def test_the_restored_claims_of_a_jobset_pod_and_of_a_restarted_attempt_are_found_in_its_template() -> None:
    # A JobSet's pod template is its replicated job's: the release of restored inputs, the claim the
    # job waits on and the count recorded after a crash all read it there (before: only a Job's).
    inputs = [in_snapshot("a", "snap-1", "step-1"), on_claim("adopted", "team-data", "m")]
    for engine, attempt in (("JobSet", 0), ("Job", 2)):
        job = tj(name="consumer", replicas=2, engine=engine)
        built = workload.build_workload(job, inputs, VolumeStore(OperatorConfig()).input_volumes(job, inputs),
                                        attempt=attempt).job
        assert built["kind"] == engine
        assert workload.restored_input_volumes(workload.workload_pod_spec(built)["volumes"]) == 1
        assert workload.restored_input_claims(built, "consumer-0-x7k2p") == ["consumer-0-x7k2p-ckpt-in-0"]


# --- a volume per worker, kept in one VolumeSnapshot per worker volume (issue 19) ---------------------

def parts_manifest(path: str, parts: list[tuple[int, list[str] | None]]) -> CheckpointSummary:
    from checkpoint_operator.protocol.results import PartSummary
    return CheckpointSummary(path=path, digest="sha256:" + "0" * 64, sizeBytes=3, fileCount=3,
                             parts=[PartSummary(worker=w, items=items) for w, items in parts])


def test_a_union_is_located_in_each_workers_snapshot_once_all_are_taken() -> None:
    """Each part of a checkpoint assembled across workers' volumes lies in the snapshot of its worker's
    volume: the same directory and items as on the plain volume store, with the snapshot, not the claim."""
    store, plain = SnapshotVolumeStore(SNAPSHOTS), VolumeStore(OperatorConfig())
    job = tj(name="train", replicas=2, engine="JobSet", output={"volumePerWorker": True})
    union = parts_manifest("step-1", [(0, [".metadata", "__0_0.distcp"]), (1, ["__1_0.distcp"])])
    assert store.snapshot_location(job, "c", union, "auto") == Location()  # not taken yet: nothing Ready with it
    taken = volume_snapshots.TakenParts({0: TakenSnapshot("w0-snap", "10Gi", "gp3", "u0"),
                                         1: TakenSnapshot("w1-snap", "20Gi", "gp3", "u1")})
    located = store.snapshot_location(job, "c", union, "auto", taken)
    assert store.is_committed(located) and located.snapshot is None and located.volumeParts is None
    on_claims = plain.snapshot_location(job, "c", union, "auto").volumeParts
    assert on_claims is not None
    assert [(s.worker, s.volumeSnapshotName, s.volumeSnapshotUID, s.path, s.items, s.restoreSize)
            for s in located.snapshotParts or []] == [
        (0, "w0-snap", "u0", "step-1", [".metadata", "__0_0.distcp"], "10Gi"),
        (1, "w1-snap", "u1", "step-1", ["__1_0.distcp"], "20Gi")]
    assert [(p.path, p.items) for p in on_claims] == [(s.path, s.items) for s in located.snapshotParts or []]
    assert Location.model_validate(located.to_wire()) == located  # reads back through the model (status)
    with pytest.raises(MissingUpload, match="worker 1"):  # a worker's snapshot missing: never a partial location
        store.snapshot_location(job, "c", union, "auto", volume_snapshots.TakenParts({0: taken.by_worker[0]}))
    with pytest.raises(MissingUpload, match="one volume"):
        store.snapshot_location(job, "c", union, "auto", TakenSnapshot("c-snap", "10Gi", "gp3"))


def test_per_worker_checkpoints_need_only_their_workers_snapshot() -> None:
    store = SnapshotVolumeStore(SNAPSHOTS)
    job = tj(name="train", replicas=2, engine="JobSet", output={"perWorker": True})
    own = parts_manifest("worker-1/step-1", [(1, None)])
    taken = volume_snapshots.TakenParts({1: TakenSnapshot("w1-snap", "10Gi", "gp3", "u1")})
    located = store.snapshot_location(job, "c", own, "auto", taken)
    assert [(s.worker, s.volumeSnapshotName, s.path, s.items) for s in located.snapshotParts or []] == [
        (1, "w1-snap", "step-1", None)]


def test_the_part_snapshots_are_of_each_workers_own_volume() -> None:
    store = SnapshotVolumeStore(SNAPSHOTS)
    job = tj(name="train", replicas=3, engine="JobSet", output={"volumePerWorker": True})
    requests = store.output_part_snapshots(job, [0, 2], "final")
    assert sorted(requests) == [0, 2]
    assert [r.body["spec"]["source"]["persistentVolumeClaimName"] for r in requests.values()] == [
        workload.worker_claim_name(job, 0), workload.worker_claim_name(job, 2)]
    assert len({r.name for r in requests.values()}) == 2  # two records, one per volume
    assert all(r.body["metadata"]["labels"]["ckpt.dev/component"] == "output-snapshot" for r in requests.values())
    assert VolumeStore(OperatorConfig()).output_part_snapshots(job, [0, 2], "final") == {}


def test_an_input_assembled_in_snapshots_gets_a_restored_volume_per_snapshot_side_by_side() -> None:
    """The consumer sees the union at its input path, as from the workers' claims: a volume restored
    from each worker's snapshot, each part's items mounted from it."""
    store, job = SnapshotVolumeStore(SNAPSHOTS), tj(name="consumer")
    taken = volume_snapshots.TakenParts({0: TakenSnapshot("w0-snap", "10Gi", "gp3"),
                                         1: TakenSnapshot("w1-snap", "10Gi", "gp3")})
    location = volume_snapshots.snapshot_parts_location([
        (0, VolumeLocation(claimName="o-0", path="step-1", items=[".metadata", "__0_0.distcp"])),
        (1, VolumeLocation(claimName="o-1", path="step-1", items=["__1_0.distcp"]))], taken)
    inputs = [ResolvedInput(name="dcp", uid="u-dcp", digest="sha256:x", mount_name="dcp", location=location)]
    parts = store.input_volumes(job, inputs)
    assert [v["ephemeral"]["volumeClaimTemplate"]["spec"]["dataSource"]["name"] for v in parts.volumes] == [
        "w0-snap", "w1-snap"]
    assert [(m["name"], m["mountPath"], m["subPath"]) for m in parts.mounts] == [
        ("ckpt-in-0", "/input-checkpoint/dcp/.metadata", "step-1/.metadata"),
        ("ckpt-in-0", "/input-checkpoint/dcp/__0_0.distcp", "step-1/__0_0.distcp"),
        ("ckpt-in-1", "/input-checkpoint/dcp/__1_0.distcp", "step-1/__1_0.distcp")]
    built = workload.build_workload(job, inputs, parts)
    assert workload.restored_input_volumes(built.job["spec"]["template"]["spec"]["volumes"]) == 2
    kubernetes_validate.validate({"apiVersion": "batch/v1", "kind": "Job", **built.job}, "1.34.0", strict=True)
