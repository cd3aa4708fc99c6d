"""Build the Kubernetes objects of a TrainingJob: output PVC, batch/v1 Job, agent pods.

Pure functions: objects in, manifests out. The user's pod template is copied and only
gains volumes, mounts and environment variables.
"""

from __future__ import annotations

import copy
import posixpath
from dataclasses import dataclass, field
from typing import Optional

from checkpoint_operator import API_VERSION
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.logic.naming import MAX_LABEL_NAME, bounded_name, child_name

LABEL_TRAINING_JOB = "ckpt.dev/trainingjob"
LABEL_TRAINING_JOB_UID = "ckpt.dev/trainingjob-uid"
LABEL_CHECKPOINT = "ckpt.dev/checkpoint"
LABEL_COMPONENT = "ckpt.dev/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "checkpoint-operator"

OUTPUT_VOLUME = "ckpt-output"
INPUT_VOLUME_PREFIX = "ckpt-in-"
STAGING_VOLUME = "ckpt-inputs"        # s3 store: the emptyDir the init container downloads into
AGENT_OUTPUT_MOUNT = "/checkpoint-output"
AGENT_DATA_MOUNT = "/checkpoint-data"
STAGING_MOUNT = "/checkpoint-inputs"

CONTRACT_VARIABLES = ("CHECKPOINT_INPUT_DIR", "CHECKPOINT_OUTPUT_DIR", "CHECKPOINT_INPUT_PATH",
                      "CHECKPOINT_INPUT_NAMES", "FLEXAI_INPUT_CHECKPOINT_DIR", "FLEXAI_OUTPUT_CHECKPOINT_DIR",
                      "ML_CHECKPOINT_PATH")


class InvalidSpec(ValueError):
    """The spec cannot be run as written; the message names the field and what is allowed."""


@dataclass
class BuiltJob:
    job: dict
    warnings: list[str] = field(default_factory=list)


def owner_reference(obj: dict, controller: bool = True) -> dict:
    return {"apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj["kind"],
            "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": controller, "blockOwnerDeletion": True}


def _labels(tj: dict, component: str) -> dict:
    name = tj["metadata"]["name"]
    return {LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: component,
            LABEL_TRAINING_JOB: bounded_name(name, MAX_LABEL_NAME),
            LABEL_TRAINING_JOB_UID: tj["metadata"]["uid"]}


def job_name(tj: dict) -> str:
    # A Job's name becomes a label value of its pods, so it must fit 63 characters.
    return bounded_name(tj["metadata"]["name"], MAX_LABEL_NAME)


def output_claim_name(tj: dict) -> str:
    return child_name(tj["metadata"]["name"], "output")


def snapshot_pod_name(tj: dict) -> str:
    return child_name(tj["metadata"]["name"], "snapshot")


# --- environment -------------------------------------------------------------------------------

def contract_env(spec: dict, inputs: list[ResolvedInput]) -> dict[str, str]:
    """The variables of DESIGN §2 that every container gets."""
    input_dir, output_dir = spec["inputDir"], spec["outputDir"]
    env = {"CHECKPOINT_INPUT_DIR": input_dir, "FLEXAI_INPUT_CHECKPOINT_DIR": input_dir,
           "CHECKPOINT_INPUT_NAMES": ",".join(i.mount_name for i in inputs)}
    if spec.get("output", {}).get("enabled", True):
        env["CHECKPOINT_OUTPUT_DIR"] = output_dir
        env["FLEXAI_OUTPUT_CHECKPOINT_DIR"] = output_dir
    if inputs:
        first = posixpath.join(input_dir, inputs[0].mount_name)
        env["CHECKPOINT_INPUT_PATH"] = first
        env["ML_CHECKPOINT_PATH"] = first
    return env


def merge_env(container: dict, contract: dict[str, str]) -> list[str]:
    """Put the contract variables into the container; ours win. Returns a warning per conflict."""
    warnings = []
    kept = []
    for var in container.get("env", []) or []:
        if var.get("name") in contract:
            if var.get("value") != contract[var["name"]]:
                warnings.append(f"container {container.get('name')}: env {var['name']} is set by the operator "
                                f"to {contract[var['name']]!r}; the template's value is ignored")
            continue
        kept.append(var)
    container["env"] = kept + [{"name": k, "value": v} for k, v in sorted(contract.items())]
    return warnings


# --- mounts --------------------------------------------------------------------------------------

def _is_at_or_inside(path: str, directory: str) -> bool:
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def check_user_mounts(template_spec: dict, spec: dict) -> None:
    """Refuse user mounts at or inside the operator's directories: the operator's would hide them or vice versa."""
    reserved = {"spec.inputDir": spec["inputDir"]}
    if spec.get("output", {}).get("enabled", True):
        reserved["spec.outputDir"] = spec["outputDir"]
    for kind in ("initContainers", "containers"):
        for container in template_spec.get(kind, []) or []:
            for mount in container.get("volumeMounts", []) or []:
                for field_name, directory in reserved.items():
                    if _is_at_or_inside(mount.get("mountPath", ""), directory):
                        raise InvalidSpec(
                            f"spec.template.spec.{kind}[{container.get('name')}].volumeMounts "
                            f"{mount.get('name')!r} at {mount.get('mountPath')!r} is at or inside {field_name} "
                            f"{directory!r}, which the operator mounts; move it elsewhere")
    user_volumes = {v.get("name") for v in template_spec.get("volumes", []) or []}
    ours = [v for v in user_volumes if v and (v == OUTPUT_VOLUME or v == STAGING_VOLUME
                                              or v.startswith(INPUT_VOLUME_PREFIX))]
    if ours:
        raise InvalidSpec(f"spec.template.spec.volumes {sorted(ours)} use names reserved by the operator "
                          f"({OUTPUT_VOLUME}, {STAGING_VOLUME}, {INPUT_VOLUME_PREFIX}*); rename them")


def volume_input_mounts(spec: dict, inputs: list[ResolvedInput]) -> tuple[list[dict], list[dict]]:
    """Volume store: each input's PVC, read-only, with subPath at <inputDir>/<name>."""
    volumes: dict[str, dict] = {}
    mounts = []
    for item in inputs:
        location = item.location["volume"]
        claim = location["claimName"]
        volume_name = volumes.setdefault(claim, {
            "name": f"{INPUT_VOLUME_PREFIX}{len(volumes)}",
            "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})["name"]
        base = posixpath.join(spec["inputDir"], item.mount_name)
        sub_path = posixpath.normpath(location.get("path", ".").lstrip("/") or ".")
        for rel in location.get("items") or [None]:  # items: only these files (e.g. the root files)
            path = sub_path if rel is None else posixpath.join(sub_path, rel)
            mounts.append({"name": volume_name, "readOnly": True,
                           "mountPath": base if rel is None else posixpath.join(base, rel),
                           "subPath": "" if path == "." else posixpath.normpath(path)})
    return list(volumes.values()), mounts


def s3_input_mounts(spec: dict, inputs: list[ResolvedInput], config: OperatorConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """S3 store: init containers download (and verify) each input into an emptyDir that the
    training containers mount read-only, at the same paths as on the volume store."""
    if not inputs:
        return [], [], []
    volumes = [{"name": STAGING_VOLUME, "emptyDir": {}}]
    mounts, init_containers = [], []
    for index, item in enumerate(inputs):
        mounts.append({"name": STAGING_VOLUME, "readOnly": True, "subPath": item.mount_name,
                       "mountPath": posixpath.join(spec["inputDir"], item.mount_name)})
        init_containers.append(agent_container(
            f"download-input-{index}",
            ["checkpoint-operator", "agent", "download", item.location["s3"]["uri"],
             posixpath.join(STAGING_MOUNT, item.mount_name)],
            config, mounts=[{"name": STAGING_VOLUME, "mountPath": STAGING_MOUNT}]))
    return volumes, mounts, init_containers


# --- objects -----------------------------------------------------------------------------------

def build_output_claim(tj: dict, config: OperatorConfig) -> dict:
    spec = tj["spec"]
    output = spec.get("output", {})
    claim_spec = {
        "accessModes": ["ReadWriteMany" if spec.get("replicas", 1) > 1 else "ReadWriteOnce"],
        "resources": {"requests": {"storage": output.get("size") or config.default_output_size}},
    }
    storage_class = output.get("storageClassName") or config.default_storage_class
    if storage_class:
        claim_spec["storageClassName"] = storage_class
    return {"metadata": {"name": output_claim_name(tj), "namespace": tj["metadata"]["namespace"],
                         "labels": _labels(tj, "output"), "ownerReferences": [owner_reference(tj)]},
            "spec": claim_spec}


def build_job(tj: dict, inputs: list[ResolvedInput], config: OperatorConfig) -> BuiltJob:
    spec = tj["spec"]
    template = copy.deepcopy(spec["template"])
    pod_spec = template.setdefault("spec", {})
    check_user_mounts(pod_spec, spec)

    if config.storage_type == "s3":
        volumes, input_mounts, init_containers = s3_input_mounts(spec, inputs, config)
    else:
        (volumes, input_mounts), init_containers = volume_input_mounts(spec, inputs), []
    mounts = list(input_mounts)
    if spec.get("output", {}).get("enabled", True):
        volumes.append({"name": OUTPUT_VOLUME, "persistentVolumeClaim": {"claimName": output_claim_name(tj)}})
        mounts.append({"name": OUTPUT_VOLUME, "mountPath": spec["outputDir"]})

    env = contract_env(spec, inputs)
    warnings: list[str] = []
    for kind in ("initContainers", "containers"):
        for container in pod_spec.get(kind, []) or []:
            warnings += merge_env(container, env)
            container["volumeMounts"] = (container.get("volumeMounts") or []) + copy.deepcopy(mounts)
    pod_spec["volumes"] = (pod_spec.get("volumes") or []) + volumes
    pod_spec["initContainers"] = init_containers + (pod_spec.get("initContainers") or [])
    if not pod_spec["initContainers"]:
        del pod_spec["initContainers"]
    pod_spec.setdefault("restartPolicy", "Never")

    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **_labels(tj, "worker")}

    replicas = spec.get("replicas", 1)
    job_spec: dict = {"completions": replicas, "parallelism": replicas, "template": template}
    if replicas > 1:
        job_spec["completionMode"] = "Indexed"
    for key in ("backoffLimit", "activeDeadlineSeconds"):
        if spec.get(key) is not None:
            job_spec[key] = spec[key]
    job = {"metadata": {"name": job_name(tj), "namespace": tj["metadata"]["namespace"],
                        "labels": _labels(tj, "worker"), "ownerReferences": [owner_reference(tj)]},
           "spec": job_spec}
    return BuiltJob(job, warnings)


def agent_container(name: str, command: list[str], config: OperatorConfig, mounts: list[dict],
                    env: Optional[list[dict]] = None) -> dict:
    container = {"name": name, "image": config.agent_image, "imagePullPolicy": config.agent_image_pull_policy,
                 "command": command, "volumeMounts": mounts, "resources": copy.deepcopy(config.agent_resources)}
    s3_env = s3_agent_env(config)
    if s3_env or env:
        container["env"] = (env or []) + s3_env
    return container


def s3_agent_env(config: OperatorConfig) -> list[dict]:
    if config.storage_type != "s3":
        return []
    env = []
    if config.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": config.s3_endpoint})
    if config.s3_region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": config.s3_region})
    if config.s3_secret_name:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": config.s3_secret_name, "key": key}}})
    return env


def snapshot_upload_prefix(tj: dict, config: OperatorConfig) -> str:
    """s3 store: where a job's output goes, one sub-prefix per scanned directory."""
    meta = tj["metadata"]
    prefix = config.s3_prefix.strip("/")
    parts = [p for p in (prefix, meta["namespace"], f"{meta['name']}-{meta['uid'][:8]}") if p]
    return f"s3://{config.s3_bucket}/" + "/".join(parts) + "/"


def build_snapshot_pod(tj: dict, config: OperatorConfig) -> dict:
    """The pod that scans the output volume (read-only) and prints the checkpoints as JSON."""
    layout = tj["spec"].get("output", {}).get("layout", "auto")
    if config.storage_type == "s3":
        command = ["checkpoint-operator", "agent", "snapshot", AGENT_OUTPUT_MOUNT, "--layout", layout,
                   "--upload-to", snapshot_upload_prefix(tj, config)]
    else:
        command = ["checkpoint-operator", "agent", "scan", AGENT_OUTPUT_MOUNT, "--layout", layout, "--json"]
    container = agent_container("snapshot", command, config,
                                mounts=[{"name": OUTPUT_VOLUME, "mountPath": AGENT_OUTPUT_MOUNT, "readOnly": True}])
    return {"metadata": {"name": snapshot_pod_name(tj), "namespace": tj["metadata"]["namespace"],
                         "labels": _labels(tj, "snapshot"), "ownerReferences": [owner_reference(tj)]},
            "spec": {"restartPolicy": "Never", "containers": [container],
                     **({"serviceAccountName": config.agent_service_account} if config.agent_service_account else {}),
                     "volumes": [{"name": OUTPUT_VOLUME, "persistentVolumeClaim": {
                         "claimName": output_claim_name(tj), "readOnly": True}}]}}


def build_volume_scan_pod(checkpoint: dict, config: OperatorConfig) -> dict:
    """The pod that scans an adopted volume path (spec.source.volume) as one checkpoint."""
    source = checkpoint["spec"]["source"]["volume"]
    meta = checkpoint["metadata"]
    sub_path = posixpath.normpath(source.get("path", "/").lstrip("/") or ".")
    mount = {"name": "data", "mountPath": AGENT_DATA_MOUNT, "readOnly": True}
    if sub_path != ".":
        mount["subPath"] = sub_path
    container = agent_container("scan", ["checkpoint-operator", "agent", "scan", AGENT_DATA_MOUNT, "--single", "--json"],
                                config, mounts=[mount])
    return {"metadata": {"name": child_name(meta["name"], "scan"), "namespace": meta["namespace"],
                         "labels": {LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: "scan",
                                    LABEL_CHECKPOINT: bounded_name(meta["name"], MAX_LABEL_NAME)},
                         "ownerReferences": [owner_reference(checkpoint)]},
            "spec": {"restartPolicy": "Never", "containers": [container],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": source["claimName"],
                                                                            "readOnly": True}}]}}


# --- imports (Checkpoints with source.s3 / source.http) ------------------------------------------

IMPORT_SIZE_ANNOTATION = "ckpt.dev/volume-size"
IMPORT_DIR = "data"


def import_claim_name(checkpoint: dict) -> str:
    return child_name(checkpoint["metadata"]["name"], "data")


def import_upload_prefix(checkpoint: dict, config: OperatorConfig) -> str:
    meta = checkpoint["metadata"]
    parts = [p for p in (config.s3_prefix.strip("/"), meta["namespace"], f"{meta['name']}-{meta['uid'][:8]}") if p]
    return f"s3://{config.s3_bucket}/" + "/".join(parts) + "/"


def build_import_claim(checkpoint: dict, config: OperatorConfig) -> dict:
    meta = checkpoint["metadata"]
    size = (meta.get("annotations") or {}).get(IMPORT_SIZE_ANNOTATION) or config.default_output_size
    claim_spec: dict = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if config.default_storage_class:
        claim_spec["storageClassName"] = config.default_storage_class
    return {"metadata": {"name": import_claim_name(checkpoint), "namespace": meta["namespace"],
                         "labels": {LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: "import",
                                    LABEL_CHECKPOINT: bounded_name(meta["name"], MAX_LABEL_NAME)},
                         "ownerReferences": [owner_reference(checkpoint)]},
            "spec": claim_spec}


def source_env(source: dict) -> list[dict]:
    """Credentials and endpoint of an s3 source (its own Secret, else the store's)."""
    s3 = source.get("s3")
    if not s3:
        return []
    env = []
    if s3.get("endpoint"):
        env.append({"name": "AWS_ENDPOINT_URL", "value": s3["endpoint"]})
    if s3.get("region"):
        env.append({"name": "AWS_DEFAULT_REGION", "value": s3["region"]})
    if s3.get("secretRef"):
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": s3["secretRef"]["name"], "key": key}}})
    return env


def build_import_pod(checkpoint: dict, config: OperatorConfig) -> dict:
    """Volume store: import into the Checkpoint's own PVC, then scan it. s3 store: import into
    an emptyDir (init container, with the source's credentials), then upload it into the store
    (with the store's credentials)."""
    meta, source = checkpoint["metadata"], checkpoint["spec"]["source"]
    uri = source["s3"]["uri"] if "s3" in source else source["http"]["url"]
    data = posixpath.join(AGENT_DATA_MOUNT, IMPORT_DIR)
    import_command = ["checkpoint-operator", "agent", "import", uri, data]
    labels = {LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: "import",
              LABEL_CHECKPOINT: bounded_name(meta["name"], MAX_LABEL_NAME)}
    mount = [{"name": "data", "mountPath": AGENT_DATA_MOUNT}]
    if config.storage_type == "s3":
        fetch = agent_container("import", import_command, config, mounts=mount)
        fetch["env"] = source_env(source)  # the source's endpoint and credentials, not the store's
        if not fetch["env"]:
            del fetch["env"]
        upload = agent_container("upload", ["checkpoint-operator", "agent", "snapshot", data, "--single",
                                            "--upload-to", import_upload_prefix(checkpoint, config)], config, mount)
        spec = {"initContainers": [fetch], "containers": [upload], "volumes": [{"name": "data", "emptyDir": {}}]}
    else:
        fetch = agent_container("import", ["sh", "-c", 'checkpoint-operator agent import "$0" "$1" && '
                                                        'checkpoint-operator agent scan "$1" --single --json',
                                           uri, data], config, mounts=mount, env=source_env(source))
        spec = {"containers": [fetch], "volumes": [{"name": "data", "persistentVolumeClaim": {
            "claimName": import_claim_name(checkpoint)}}]}
    return {"metadata": {"name": child_name(meta["name"], "import"), "namespace": meta["namespace"],
                         "labels": labels, "ownerReferences": [owner_reference(checkpoint)]},
            "spec": {"restartPolicy": "Never", **spec}}
