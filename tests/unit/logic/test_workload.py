import pytest

from checkpoint_operator.api.checkpoint import Checkpoint, Location, S3Location, VolumeLocation
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import workload
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.storage import store_for
from checkpoint_operator.cli import build_parser
from factories import training_job

CONFIG = OperatorConfig()


# The builders take typed objects and the store's parts, as the handlers call them.
def build_job(tj: dict, inputs: list, config: OperatorConfig = CONFIG) -> workload.BuiltJob:
    typed = TrainingJob.model_validate(tj)
    return workload.build_workload(typed, inputs, store_for(config).input_volumes(typed, inputs))


def output_claim(tj: dict, config: OperatorConfig = CONFIG) -> dict:
    return workload.build_output_claim(TrainingJob.model_validate(tj), config)


def snapshot_pod(tj: dict, config: OperatorConfig = CONFIG) -> dict:
    typed, store = TrainingJob.model_validate(tj), store_for(config)
    return workload.build_snapshot_pod(typed, store.snapshot_command(typed, "/checkpoint-output"), store.agent_env(),
                                       config, read_only=not store.snapshot_writes_output)


def import_pod(checkpoint: dict, config: OperatorConfig = CONFIG) -> dict:
    typed = Checkpoint.model_validate(checkpoint)
    return workload.build_import_pod(typed, config, store_for(config).import_containers(typed, config.max_checkpoint_bytes))


def _input(name, path=None, claim="data", items=None):
    location = Location(volume=VolumeLocation(claimName=claim, path=path or name, items=items or None))
    return ResolvedInput(name=name, uid="u-" + name, digest="sha256:x", mount_name=name, location=location)


def _env(container):
    return {e["name"]: e.get("value") for e in container["env"]}


def test_job_gets_inputs_read_only_output_and_the_env_contract_in_every_container():
    tj = training_job(containers=[{"name": "a", "image": "x"}, {"name": "b", "image": "y"}])
    built = build_job(tj, [_input("base", path="models/base"), _input("other", claim="data2")], CONFIG)
    pod = built.job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    for container in pod["containers"]:
        env = _env(container)
        assert env["CHECKPOINT_INPUT_DIR"] == env["FLEXAI_INPUT_CHECKPOINT_DIR"] == "/input-checkpoint"
        assert env["CHECKPOINT_OUTPUT_DIR"] == env["FLEXAI_OUTPUT_CHECKPOINT_DIR"] == "/output-checkpoint"
        assert env["CHECKPOINT_INPUT_PATH"] == env["ML_CHECKPOINT_PATH"] == "/input-checkpoint/base"
        assert env["CHECKPOINT_INPUT_NAMES"] == "base,other"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/input-checkpoint/base"]["readOnly"] is True
        assert mounts["/input-checkpoint/base"]["subPath"] == "models/base"
        assert mounts["/input-checkpoint/other"]["readOnly"] is True
        assert "readOnly" not in mounts["/output-checkpoint"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"] for v in pod["volumes"]}
    assert claims["data"]["readOnly"] and claims["data2"]["readOnly"]
    assert claims["train-output-u-tra"].get("readOnly") is not True
    assert built.job["metadata"]["ownerReferences"][0]["uid"] == "u-train"


def test_root_file_checkpoints_mount_file_by_file():
    built = build_job(training_job(), [_input("final", path=".", items=["config.json", "model.safetensors"])],
                               CONFIG)
    mounts = {m["mountPath"]: m for m in built.job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/input-checkpoint/final/config.json"]["subPath"] == "config.json"
    assert mounts["/input-checkpoint/final/model.safetensors"]["readOnly"] is True
    assert "/input-checkpoint/final" not in mounts


def test_operator_env_wins_and_each_conflict_is_reported():
    tj = training_job(containers=[{"name": "t", "image": "x", "env": [
        {"name": "CHECKPOINT_OUTPUT_DIR", "value": "/elsewhere"}, {"name": "KEEP", "value": "1"}]}])
    built = build_job(tj, [], CONFIG)
    env = _env(built.job["spec"]["template"]["spec"]["containers"][0])
    assert env["CHECKPOINT_OUTPUT_DIR"] == "/output-checkpoint" and env["KEEP"] == "1"
    assert len(built.warnings) == 1 and "CHECKPOINT_OUTPUT_DIR" in built.warnings[0]
    assert "CHECKPOINT_INPUT_PATH" not in env  # no inputs, no input path


@pytest.mark.parametrize("mount_path", ["/output-checkpoint", "/output-checkpoint/logs", "/input-checkpoint/x"])
def test_user_mount_at_or_inside_operator_dirs_is_refused(mount_path):
    tj = training_job(containers=[{"name": "t", "image": "x",
                                   "volumeMounts": [{"name": "scratch", "mountPath": mount_path}]}],
                      volumes=[{"name": "scratch", "emptyDir": {}}])
    with pytest.raises(workload.InvalidSpec, match="volumeMounts 'scratch'"):
        build_job(tj, [], CONFIG)


def test_user_mount_beside_operator_dirs_is_fine():
    tj = training_job(containers=[{"name": "t", "image": "x",
                                   "volumeMounts": [{"name": "scratch", "mountPath": "/output-checkpoint-2"}]}],
                      volumes=[{"name": "scratch", "emptyDir": {}}])
    build_job(tj, [], CONFIG)


def test_reserved_volume_names_are_refused():
    tj = training_job(volumes=[{"name": "ckpt-output", "emptyDir": {}}])
    with pytest.raises(workload.InvalidSpec, match="reserved"):
        build_job(tj, [], CONFIG)


def test_replicas_make_an_indexed_job_and_a_shared_volume():
    tj = training_job(replicas=4, backoffLimit=2, activeDeadlineSeconds=600)
    job = build_job(tj, [], CONFIG).job["spec"]
    assert (job["completions"], job["parallelism"], job["completionMode"]) == (4, 4, "Indexed")
    # The first failed worker fails the attempt (the Job stops the others); the operator restarts
    # the group up to spec.backoffLimit times (logic/engines.py).
    assert (job["backoffLimit"], job["activeDeadlineSeconds"]) == (0, 600)
    assert output_claim(tj, CONFIG)["spec"]["accessModes"] == ["ReadWriteMany"]
    single = training_job(backoffLimit=2)
    assert "completionMode" not in build_job(single, [], CONFIG).job["spec"]
    assert build_job(single, [], CONFIG).job["spec"]["backoffLimit"] == 2  # one pod: the Job retries it
    assert output_claim(single, CONFIG)["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_output_claim_size_and_class():
    tj = training_job(output={"size": "50Gi", "storageClassName": "fast"})
    claim = output_claim(tj, OperatorConfig(default_storage_class="slow"))
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert output_claim(training_job(), OperatorConfig(default_storage_class="slow"))[
        "spec"]["storageClassName"] == "slow"


def test_long_job_names_fit_the_label_limit():
    tj = training_job("x" * 200)
    assert len(build_job(tj, [], CONFIG).job["metadata"]["name"]) <= 63


def test_snapshot_pod_runs_the_agent_scan_writing_the_manifests_beside_the_data():
    """Volume store: the scan writes each full manifest to .ckpt-manifests/ at the output's root
    (outside every checkpoint directory), so it mounts the output read-write; its result line is
    the bounded one. The s3 store's snapshot pod only reads the output."""
    pod = snapshot_pod(training_job(output={"layout": "directories"}), CONFIG)
    container = pod["spec"]["containers"][0]
    assert container["command"][:3] == ["checkpoint-operator", "agent", "scan"]
    args = build_parser().parse_args(container["command"][1:])
    assert (args.result, args.json, args.layout) == (True, False, "directories")
    assert args.manifests_dir == "/checkpoint-output/.ckpt-manifests"
    assert container["volumeMounts"][0]["readOnly"] is False
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["readOnly"] is False
    assert container["image"] == CONFIG.agent_image
    s3 = snapshot_pod(training_job(), OperatorConfig(storage_type="s3", s3_bucket="b"))
    assert s3["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] is True


def test_s3_store_downloads_inputs_in_an_init_container():
    config = OperatorConfig(storage_type="s3", s3_bucket="b", s3_endpoint="http://s3:9000", s3_secret_name="creds")
    tj = training_job()
    inp = ResolvedInput(name="base", uid="u", digest="sha256:" + "a" * 64, mount_name="base",
                        location=Location(s3=S3Location(uri="s3://b/ckpt/default/base/")))
    pod = build_job(tj, [inp], config).job["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["command"][:5] == ["checkpoint-operator", "agent", "download", "s3://b/ckpt/default/base/",
                                   "/checkpoint-inputs/base"]
    env = {e["name"]: e for e in init["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://s3:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "creds"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/input-checkpoint/base")
    assert mount["readOnly"] is True and mount["subPath"] == "base"


def test_s3_store_snapshot_pod_uploads_to_a_prefix_of_its_own_with_the_store_credentials():
    config = OperatorConfig(storage_type="s3", s3_bucket="b", s3_prefix="ckpts", s3_secret_name="creds")
    pod = snapshot_pod(training_job(), config)
    container = pod["spec"]["containers"][0]
    assert container["command"][:4] == ["checkpoint-operator", "agent", "snapshot", "/checkpoint-output"]
    assert container["command"][-1] == "s3://b/ckpts/default/train-u-train/"
    assert {e["name"] for e in container["env"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_imports_fetch_with_the_source_credentials_and_store_with_the_store_ones():
    checkpoint = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                  "metadata": {"name": "llama", "namespace": "default", "uid": "abcdef0123"},
                  "spec": {"source": {"s3": {"uri": "s3://ext/llama/", "endpoint": "http://ext:9000",
                                             "secretRef": {"name": "ext-creds"}}}}}
    volume_pod = import_pod(checkpoint, CONFIG)
    fetch = volume_pod["spec"]["containers"][0]
    # sh -c SCRIPT DEST SOURCE DEST FLAGS...: the arguments are passed to the script, never inside it
    assert fetch["command"][3:6] == ["/checkpoint-data/data", "s3://ext/llama/", "/checkpoint-data/data"]
    assert fetch["command"][6:8] == ["--max-size", "536870912000"] and '"$@"' in fetch["command"][2]
    assert volume_pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "llama-data-abcdef01"
    env = {e["name"]: e for e in fetch["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://ext:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "ext-creds"

    s3_config = OperatorConfig(storage_type="s3", s3_bucket="store", s3_secret_name="store-creds")
    s3_pod = import_pod(checkpoint, s3_config)
    init, upload = s3_pod["spec"]["initContainers"][0], s3_pod["spec"]["containers"][0]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in init["env"] if "valueFrom" in e} == {"ext-creds"}
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in upload["env"] if "valueFrom" in e} == {"store-creds"}
    assert upload["command"][-1] == "s3://store/checkpoints/default/llama-abcdef01/"
    # the staging volume is capped at the size limit (500Gi by default)
    assert s3_pod["spec"]["volumes"] == [{"name": "data", "emptyDir": {"sizeLimit": "536870912000"}}]
    assert "--max-size" in init["command"] and init["command"][init["command"].index("--max-size") + 1] == "536870912000"


@pytest.mark.parametrize("kind", ["containers", "initContainers", "ephemeralContainers"])
@pytest.mark.parametrize("volume", ["ckpt-in-0", "ckpt-inputs", "ckpt-output", "ckpt-live-meta", "ckpt-in-17"])
def test_a_user_mount_naming_an_operator_volume_is_refused(kind, volume):
    """hostile4 D3: a mount naming `ckpt-in-0` got a snapshot input's restored claim read-write
    (an ephemeral volume has no volume-level readOnly); `ckpt-inputs`, the s3 store's verified
    downloads. Refused in one line naming the container and the volume, wherever the container is."""
    spec = {"containers": [{"name": "trainer", "image": "x"}]}
    spec.setdefault(kind, []).append({"name": "side", "image": "x", "volumeMounts": [{"name": volume, "mountPath": "/rw"}]})
    tj = training_job(containers=spec["containers"])
    tj["spec"]["template"]["spec"].update({k: v for k, v in spec.items() if k != "containers"})
    with pytest.raises(workload.InvalidSpec) as refused:
        build_job(tj, [_input("a")], CONFIG)
    assert str(refused.value).startswith(f"spec.template.spec.{kind}[side].volumeMounts {volume!r} names a volume "
                                         "the operator adds")
    assert "\n" not in str(refused.value)


def test_a_user_mount_of_a_similar_name_is_fine():
    tj = training_job(containers=[{"name": "t", "image": "x", "volumeMounts": [{"name": "ckpt-cache", "mountPath": "/c"}]}],
                      volumes=[{"name": "ckpt-cache", "emptyDir": {}}])
    build_job(tj, [], CONFIG)
