"""A volume per worker (output.volumePerWorker / perWorker): the claims, the JobSet with one
replicated job per worker (validated against JobSet's published CRD and Kubernetes' schema), the
snapshot pod that reads every worker's volume, the locations of checkpoints assembled from parts,
how a consumer mounts them as one directory, and the per-worker Checkpoints' names."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from checkpoint_operator.protocol import channel
from checkpoint_operator.protocol.results import CheckpointSummary, PartSummary, ScanReport
from checkpoint_operator.api.checkpoint import Location, VolumeLocation
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import parts, rendezvous, workers, workload
from checkpoint_operator.logic.agent_pods import AGENT_OUTPUT_MOUNT
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.logic.snapshot import NotStorable, plan_snapshot
from checkpoint_operator.storage import store_for
from factories import training_job
from test_jobset_schema import validate_jobset

CONFIG = OperatorConfig()
S3 = OperatorConfig(storage_type="s3", s3_bucket="b", s3_endpoint="http://s3:9000", s3_secret_name="creds")
DIGEST = "sha256:" + "0" * 64


def typed(replicas: int = 2, **output) -> TrainingJob:
    body = training_job("llama", replicas=replicas, engine="JobSet", output=output or {"volumePerWorker": True})
    return TrainingJob.model_validate(body)


def summary(path: str, *parts: tuple[int, "list[str] | None"], stored: bool = False) -> CheckpointSummary:
    """A checkpoint of the scan's result, with each worker's share as the agent reports it."""
    return CheckpointSummary(path=path, digest=DIGEST, sizeBytes=1, fileCount=1, manifestStored=stored,
                             parts=[PartSummary(worker=w, items=items) for w, items in parts] or None)


def validate_kubernetes(obj: dict) -> None:
    for version in ("1.29.0", "1.34.0"):
        kubernetes_validate.validate(copy.deepcopy(obj), version, strict=True)


# --- the workload ------------------------------------------------------------------------------------

def test_each_worker_gets_its_own_read_write_once_claim_owned_by_the_job():
    tj = typed(3)
    claims = workload.build_output_claims(tj, CONFIG)
    assert [c["metadata"]["name"] for c in claims] == [f"llama-output-{tj.metadata.uid[:5]}-{i}" for i in range(3)]
    assert workload.output_claim_names(tj) == [c["metadata"]["name"] for c in claims]
    for i, claim in enumerate(claims):
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert claim["metadata"]["labels"][workers.WORKER_INDEX_LABEL] == str(i)
        assert claim["metadata"]["ownerReferences"][0]["uid"] == tj.metadata.uid
        validate_kubernetes({"apiVersion": "v1", "kind": "PersistentVolumeClaim", **claim})
    shared = TrainingJob.model_validate(training_job("llama", replicas=3, engine="JobSet"))
    assert [c["spec"]["accessModes"] for c in workload.build_output_claims(shared, CONFIG)] == [["ReadWriteMany"]]


def test_the_jobset_runs_each_worker_as_its_own_replicated_job_with_its_claim_and_rank():
    tj = typed(2)
    at = rendezvous.rendezvous_of(tj)
    js = workload.build_workload(tj, [], store_for(CONFIG).input_volumes(tj, []), rendezvous_at=at).job
    validate_jobset(js)
    name = js["metadata"]["name"]
    replicated = js["spec"]["replicatedJobs"]
    assert [r["name"] for r in replicated] == ["node-0", "node-1"]
    assert js["spec"]["coordinator"] == {"replicatedJob": "node-0", "jobIndex": 0, "podIndex": 0}
    assert at.address == f"{name}-node-0-0-0.{name}"  # JobSet's host name of worker 0's one pod
    for i, rjob in enumerate(replicated):
        job_spec = rjob["template"]["spec"]
        assert (rjob["replicas"], job_spec["completions"], job_spec["parallelism"]) == (1, 1, 1)
        pod = job_spec["template"]
        validate_kubernetes({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}"}, "spec": pod["spec"]})
        [output] = [v for v in pod["spec"]["volumes"] if v["name"] == "ckpt-output"]
        assert output["persistentVolumeClaim"]["claimName"] == workload.worker_claim_name(tj, i)
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        for var in rendezvous.INDEX_VARIABLES:  # the Job's completion index is 0 for every worker
            assert env[var] == {"name": var, "value": str(i)}
        assert env["JOB_COMPLETION_INDEX"] == {"name": "JOB_COMPLETION_INDEX", "value": str(i)}
        assert env["WORLD_SIZE"]["value"] == env["PET_NNODES"]["value"] == "2"
        assert env["MASTER_ADDR"]["value"] == at.address
        assert pod["metadata"]["labels"][workers.WORKER_INDEX_LABEL] == str(i)
    # The failure report reads the worker from its label, not the (always 0) completion index.
    pod_body = {"metadata": {"name": "p", "labels": {workers.WORKER_INDEX_LABEL: "1"},
                             "annotations": {workers.COMPLETION_INDEX: "0"}}, "status": {"phase": "Failed"}}
    assert workers.worker_pod(pod_body).index == 1


def test_every_pod_name_of_a_per_worker_jobset_fits():
    tj = TrainingJob.model_validate(training_job("x" * 63, replicas=128, engine="JobSet",
                                                 output={"volumePerWorker": True}))
    name = workload.job_name(tj)
    longest = f"{name}-node-127-0-0-abcde"
    assert len(longest) <= 63 and len(rendezvous.worker_host(tj, 127).split(".")[0]) <= 63


def test_the_engine_job_cannot_give_each_worker_a_claim():
    body = training_job("llama", replicas=2, output={"volumePerWorker": True})
    with pytest.raises(ValueError, match="spec.output.volumePerWorker and perWorker need spec.engine: JobSet"):
        TrainingJob.model_validate(body)  # the CRD's rule (its Python twin)
    tj = typed(2)
    tj = tj.model_copy(update={"spec": tj.spec.model_copy(update={"engine": "Job"})})  # the builder refuses it too
    with pytest.raises(ValueError, match="needs engine JobSet"):
        workload.build_workload(tj, [], store_for(CONFIG).input_volumes(tj, []))


@pytest.mark.parametrize("config", [CONFIG, S3], ids=["volume", "s3"])
def test_the_snapshot_pod_reads_every_worker_s_volume_side_by_side(config):
    tj = typed(2, perWorker=True)
    store = store_for(config)
    command = store.snapshot_command(tj, AGENT_OUTPUT_MOUNT)
    assert command[command.index("--parts") + 1] == "2" and "--per-worker" in command
    pod = workload.build_snapshot_pod(tj, command, store.agent_env(), config)
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert [(m["mountPath"], m["readOnly"]) for m in mounts if m["name"].startswith("ckpt-output")] == \
        [(f"{AGENT_OUTPUT_MOUNT}/worker-{i}", True) for i in range(2)]
    claims = [v["persistentVolumeClaim"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"claimName": workload.worker_claim_name(tj, i), "readOnly": True} for i in range(2)]


def test_the_operator_s_default_publish_applies_to_a_volume_per_worker_but_not_to_per_worker():
    from checkpoint_operator.logic import trainingjob_flow as flow
    assert flow.publish_mode(typed(2), "Continuous") == "Continuous"  # live unions (logic/live_unions.py)
    assert flow.publish_mode(typed(2, perWorker=True), "Continuous") == "OnCompletion"


@pytest.mark.parametrize("config", [CONFIG, S3], ids=["volume", "s3"])
def test_each_worker_s_sidecar_seals_its_own_part_and_uploads_nothing(config):
    """Each worker's pod gets the sealing sidecar on its own volume, as `--part` (its index is the
    JOB_COMPLETION_INDEX the worker's template sets); on the s3 store the union pod uploads the union,
    not the sidecar a part. No CHECKPOINT_RESUME_PATH of live sealing: a part is nothing to resume from."""
    tj = typed(2, volumePerWorker=True, publish="Continuous")
    store = store_for(config)
    sidecar = workload.build_live_sidecar(tj, config, store.live_upload_prefix(tj), store.agent_env())
    built = workload.build_workload(tj, [], store.input_volumes(tj, []), sidecar)
    for i, replicated in enumerate(built.job["spec"]["replicatedJobs"]):
        spec = replicated["template"]["spec"]["template"]["spec"]
        [watch] = [c for c in spec["initContainers"] if c["name"] == "ckpt-live"]
        assert "--part" in watch["command"] and "--shared" not in watch["command"]
        assert "--upload-to" not in watch["command"]
        assert {"name": "JOB_COMPLETION_INDEX", "value": str(i)} in watch["env"]
        [claim] = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
        assert claim == workload.worker_claim_name(tj, i)
        for container in spec["containers"]:
            assert "CHECKPOINT_RESUME_PATH" not in {e["name"] for e in container.get("env") or []}
    validate_jobset(built.job)


@pytest.mark.parametrize("config", [CONFIG, S3], ids=["volume", "s3"])
def test_the_union_pod_is_the_snapshot_pod_for_one_directory_of_sealed_parts(config):
    from checkpoint_operator.logic.live_unions import Assemble, union_args, union_of_command
    tj = typed(2, volumePerWorker=True, publish="Continuous")
    store = store_for(config)
    union = Assemble("step-2", ((0, DIGEST), (1, DIGEST)))
    command = store.snapshot_command(tj, AGENT_OUTPUT_MOUNT) + union_args(union)
    pod = workload.build_union_pod(tj, command, store.agent_env(), config)
    snapshot = workload.build_snapshot_pod(tj, command, store.agent_env(), config)
    assert pod["metadata"]["name"] == "llama-union" != snapshot["metadata"]["name"]
    assert pod["spec"] == snapshot["spec"] and pod["metadata"]["labels"] == snapshot["metadata"]["labels"]
    assert union_of_command(pod["spec"]["containers"][0]["command"]) == ("step-2", union.parts)
    validate_kubernetes({"apiVersion": "v1", "kind": "Pod", **pod})


# --- locations and consumers ---------------------------------------------------------------------------

def test_grouped_items_mount_a_directory_once_when_one_worker_holds_all_of_it():
    files = [(".metadata", 0), ("__0_0.distcp", 0), ("__1_0.distcp", 1), ("config.json", 0),
             ("ocdbt.process_0/d/a", 0), ("ocdbt.process_0/manifest", 0), ("ocdbt.process_1/d/b", 1),
             ("mixed/x", 0), ("mixed/y", 1), ("mixed/sub/z", 1)]
    assert parts.grouped_items(files) == [
        (".metadata", 0), ("__0_0.distcp", 0), ("__1_0.distcp", 1), ("config.json", 0), ("mixed/sub", 1),
        ("mixed/x", 0), ("mixed/y", 1), ("ocdbt.process_0", 0), ("ocdbt.process_1", 1)]


def test_a_worker_s_share_is_its_items_or_its_whole_directory():
    from checkpoint_operator.protocol.parts import shares
    files = [(".metadata", 0), ("__0_0.distcp", 0), ("__1_0.distcp", 1), ("config.json", 0)]
    assert shares(files, whole_directory=True) == [(0, [".metadata", "__0_0.distcp", "config.json"]),
                                                   (1, ["__1_0.distcp"])]
    assert shares([("w", 1)], whole_directory=True) == [(1, None)]
    assert shares([("a.pt", 0)], whole_directory=False) == [(0, ["a.pt"])]  # root files: one by one


def test_a_union_lives_in_parts_each_worker_s_items_from_its_own_claim():
    tj = typed(2)
    m = summary("step-100", (0, [".metadata", "__0_0.distcp", "config.json"]), (1, ["__1_0.distcp"]), stored=True)
    location = store_for(CONFIG).snapshot_location(tj, "unused", m, "auto")
    assert location.volume is None
    assert location.volumeParts == [
        VolumeLocation(claimName=workload.worker_claim_name(tj, 0), path="step-100",
                       items=[".metadata", "__0_0.distcp", "config.json"],
                       manifest=".ckpt-manifests/sha256-" + "0" * 64 + ".json"),  # in the first part's claim
        VolumeLocation(claimName=workload.worker_claim_name(tj, 1), path="step-100", items=["__1_0.distcp"])]
    # Held by one worker alone: its whole directory.
    alone = store_for(CONFIG).snapshot_location(tj, "unused", summary("final", (1, None)), "auto")
    assert alone.volumeParts == [VolumeLocation(claimName=workload.worker_claim_name(tj, 1), path="final")]
    # Per worker: the directory inside the worker's own volume.
    per = typed(2, perWorker=True)
    own = store_for(CONFIG).snapshot_location(per, "unused", summary("worker-1/step-100", (1, None)), "auto")
    assert own.volumeParts == [VolumeLocation(claimName=workload.worker_claim_name(per, 1), path="step-100")]
    root = store_for(CONFIG).snapshot_location(per, "unused", summary("worker-0", (0, ["a.pt"])), "auto")
    assert root.volumeParts == [VolumeLocation(claimName=workload.worker_claim_name(per, 0), path=".", items=["a.pt"])]


def test_a_report_that_does_not_match_the_job_is_not_storable():
    tj = typed(2)
    with pytest.raises(NotStorable, match="reported no workers' parts"):
        parts.volume_parts(tj, summary("step-1"), "auto")
    with pytest.raises(NotStorable, match="named worker 5, the job has 2"):
        parts.volume_parts(tj, summary("step-1", (0, ["a"]), (5, ["b"])), "auto")
    with pytest.raises(NotStorable, match="named no files of worker 1"):
        parts.volume_parts(tj, summary("step-1", (0, ["a"]), (1, None)), "auto")
    with pytest.raises(NotStorable, match="reported no workers' parts"):  # a volume per worker, parts not reported
        store_for(CONFIG).snapshot_location(tj, "unused", summary("step-1"), "auto")


def test_a_consumer_mounts_the_parts_side_by_side_into_one_directory():
    consumer = TrainingJob.model_validate(training_job("next", checkpoints=[{"name": "llama-step-100"}]))
    location = Location(volumeParts=[
        VolumeLocation(claimName="llama-output-abcde-0", path="step-100", items=[".metadata", "__0_0.distcp"]),
        VolumeLocation(claimName="llama-output-abcde-1", path="step-100", items=["__1_0.distcp", "extra"])])
    item = ResolvedInput(name="llama-step-100", uid="u", digest="sha256:x", mount_name="ckpt", location=location)
    staged = store_for(CONFIG).input_volumes(consumer, [item])
    assert [v["persistentVolumeClaim"] for v in staged.volumes] == [
        {"claimName": "llama-output-abcde-0", "readOnly": True}, {"claimName": "llama-output-abcde-1", "readOnly": True}]
    assert [(m["name"], m["mountPath"], m["subPath"], m["readOnly"]) for m in staged.mounts] == [
        ("ckpt-in-0", "/input-checkpoint/ckpt/.metadata", "step-100/.metadata", True),
        ("ckpt-in-0", "/input-checkpoint/ckpt/__0_0.distcp", "step-100/__0_0.distcp", True),
        ("ckpt-in-1", "/input-checkpoint/ckpt/__1_0.distcp", "step-100/__1_0.distcp", True),
        ("ckpt-in-1", "/input-checkpoint/ckpt/extra", "step-100/extra", True)]


# --- the plan -------------------------------------------------------------------------------------------

def test_the_agent_s_parts_reach_the_plan_and_per_worker_checkpoints_are_named_per_worker():
    tj = typed(2, perWorker=True)
    line = channel.encode(ScanReport(checkpoints=[
        summary("worker-0/step-100", (0, None)), summary("worker-1/step-100", (1, None)),
        summary("worker-1", (1, ["w"]))]))
    scan = channel.find_result(line, (ScanReport,), limit_bytes=len(line) + 1)
    store = store_for(CONFIG)
    plan = plan_snapshot(tj, scan, lambda name: None, lambda m: store.snapshot_location(tj, "unused", m, "auto"))
    assert {p.directory: p.name for p in plan.checkpoints} == {
        "worker-0/step-100": "llama-worker-0.step-100", "worker-1/step-100": "llama-worker-1.step-100",
        "worker-1": "llama-worker-1"}
    assert {p.name: p.location.volumeParts[0].claimName for p in plan.checkpoints} == {
        "llama-worker-0.step-100": workload.worker_claim_name(tj, 0),
        "llama-worker-1.step-100": workload.worker_claim_name(tj, 1), "llama-worker-1": workload.worker_claim_name(tj, 1)}


def test_per_worker_names_follow_the_naming_rule_with_the_worker_in_the_prefix():
    from checkpoint_operator.logic.naming import checkpoint_name, per_worker_checkpoint_name
    assert per_worker_checkpoint_name("llama", "worker-12/step-100") == "llama-worker-12.step-100"
    assert per_worker_checkpoint_name("llama", "worker-3") == "llama-worker-3"
    assert per_worker_checkpoint_name("llama", "worker-0/Step_1") == checkpoint_name("llama-worker-0", "Step_1")
    assert per_worker_checkpoint_name("llama", "worker-0/m.pt", is_file=True) == \
        checkpoint_name("llama-worker-0", "m.pt", is_file=True)
    assert per_worker_checkpoint_name("llama", "worker-01/x") == checkpoint_name("llama", "worker-01/x")


def test_verify_and_pull_pods_see_the_parts_as_one_directory():
    from checkpoint_operator.logic import transfers
    from checkpoint_operator.logic.agent_pods import AGENT_DATA_MOUNT
    parts_location = [VolumeLocation(claimName="c-0", path="step-1", items=[".metadata", "__0_0.distcp"]),
                      VolumeLocation(claimName="c-1", path="step-1", items=["__1_0.distcp"]),
                      VolumeLocation(claimName="c-0", path="step-1/more")]
    volumes, mounts = transfers.location_volumes(Location(volumeParts=parts_location))
    assert volumes == [{"name": "data", "persistentVolumeClaim": {"claimName": "c-0", "readOnly": True}},
                       {"name": "data-1", "persistentVolumeClaim": {"claimName": "c-1", "readOnly": True}}]
    assert [(m["name"], m["mountPath"], m["subPath"]) for m in mounts] == [
        ("data", f"{AGENT_DATA_MOUNT}/.metadata", "step-1/.metadata"),
        ("data", f"{AGENT_DATA_MOUNT}/__0_0.distcp", "step-1/__0_0.distcp"),
        ("data-1", f"{AGENT_DATA_MOUNT}/__1_0.distcp", "step-1/__1_0.distcp"),
        ("data", AGENT_DATA_MOUNT, "step-1/more")]
    # One location: what it always was.
    assert transfers.location_volumes(Location(volume=VolumeLocation(claimName="c", path="step-1"))) == (
        [{"name": "data", "persistentVolumeClaim": {"claimName": "c", "readOnly": True}}],
        [{"name": "data", "readOnly": True, "mountPath": AGENT_DATA_MOUNT, "subPath": "step-1"}])
    assert transfers.describe_location(Location(volumeParts=parts_location)) == "3 volumes (c-0:step-1, ...)"


def test_verify_and_pull_read_the_union_s_stored_manifest_from_the_part_that_holds_it():
    from checkpoint_operator.logic import transfers
    parts_location = Location(volumeParts=[
        VolumeLocation(claimName="c-0", path="step-1", items=["a"]),
        VolumeLocation(claimName="c-1", path="step-1", items=["b"], manifest=".ckpt-manifests/sha256-x.json")])
    _, mounts = transfers.location_volumes(parts_location)
    assert mounts[-1] == {"name": "data-1", "readOnly": True, "mountPath": transfers.MANIFEST_MOUNT,
                          "subPath": ".ckpt-manifests/sha256-x.json"}
    assert transfers.stored_manifest(parts_location) == transfers.MANIFEST_MOUNT
    assert transfers.stored_manifest(Location(volumeParts=[VolumeLocation(claimName="c", path="s")])) is None
