"""Build the Kubernetes objects of a TrainingJob: output PVC, the workload (a batch/v1 Job or a
JobSet: logic/engines.py), the rendezvous Service, agent pods.

Pure functions: typed objects in, manifests out. The user's pod template is copied and only
gains volumes, mounts and environment variables (and, for a distributed job, its pods' subdomain).
What differs between stores (input volumes, agent commands) is passed in by the caller, so this
module knows no store.
"""

from __future__ import annotations

import copy
import posixpath
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from checkpoint_operator import API_VERSION
from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointHead
from checkpoint_operator.api.common import parse_quantity
from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobHead
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import node_cache, agent_commands, engines, import_sources, kueue, rendezvous
from checkpoint_operator.protocol.manifest import MANIFESTS_DIR
from checkpoint_operator.logic import group_resume, live_sealing
from checkpoint_operator.logic.agent_pods import (AGENT_DATA_MOUNT, AGENT_OUTPUT_MOUNT, INPUT_VOLUME_PREFIX,
                                                  OUTPUT_VOLUME, STAGING_VOLUME, InputVolumes, agent_container,
                                                  agent_pod)
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.logic.naming import MAX_LABEL_NAME, agent_pod_name, bounded_name, child_name
from checkpoint_operator.logic.rendezvous import Rendezvous
from checkpoint_operator.logic.security_context import fit_injected_container, trainer_identity
from checkpoint_operator.logic.workers import WORKER_INDEX_LABEL

LABEL_TRAINING_JOB = "ckpt.dev/trainingjob"
LABEL_TRAINING_JOB_UID = "ckpt.dev/trainingjob-uid"
LABEL_CHECKPOINT = "ckpt.dev/checkpoint"
LABEL_COMPONENT = "ckpt.dev/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "checkpoint-operator"
IMPORT_DIR = "data"

CONTRACT_VARIABLES = ("CHECKPOINT_INPUT_DIR", "CHECKPOINT_OUTPUT_DIR", "CHECKPOINT_INPUT_PATH",
                      "CHECKPOINT_INPUT_NAMES", "FLEXAI_INPUT_CHECKPOINT_DIR", "FLEXAI_OUTPUT_CHECKPOINT_DIR",
                      "ML_CHECKPOINT_PATH")


class InvalidSpec(ValueError):
    """The spec cannot be run as written; the message names the field and what is allowed."""


@dataclass
class BuiltJob:
    job: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def owner_reference(obj: TrainingJobHead | CheckpointHead, controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": obj.apiVersion or API_VERSION, "kind": obj.kind, "name": obj.metadata.name,
            "uid": obj.metadata.uid, "controller": controller, "blockOwnerDeletion": True}


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """`obj` lists the object of `uid` among its owners: the operator made it for that object
    (a namesake, such as a user's own PVC that happens to have the name, never does)."""
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def foreign_claim_message(claim: str, kind: str, name: str, uid: str) -> str:
    return (f"PersistentVolumeClaim {claim} exists and does not belong to {kind} {name} (uid {uid}): it is not "
            f"mounted nor written. Waiting for it to go (an earlier {kind}'s claim is garbage-collected); if it "
            f"is someone's data, delete this {kind} and use another name")


def training_job_labels(tj: TrainingJob, component: str) -> dict[str, str]:
    """The labels of an object the operator makes for a TrainingJob (`component`: what it is)."""
    return {LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: component,
            LABEL_TRAINING_JOB: bounded_name(tj.metadata.name, MAX_LABEL_NAME),
            LABEL_TRAINING_JOB_UID: tj.metadata.uid}


def checkpoint_labels(checkpoint: Checkpoint, component: str) -> dict[str, str]:
    """The labels of an object the operator makes for a Checkpoint."""
    return {LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: component,
            LABEL_CHECKPOINT: bounded_name(checkpoint.metadata.name, MAX_LABEL_NAME)}


def job_name(tj: TrainingJob) -> str:
    """The Job's or JobSet's name (logic/rendezvous.py: a label value, and a Service's name when the
    workers need one)."""
    return rendezvous.workload_name(tj)


def output_claim_name(tj: TrainingJob) -> str:
    """Unique per run: the output of an earlier TrainingJob of the same name belongs to its
    Checkpoints and must never be mounted read-write again."""
    return output_claim_name_for(tj.metadata.name, tj.metadata.uid)


def output_claim_name_for(name: str, uid: str) -> str:
    return child_name(name, f"output-{uid[:5]}")


def worker_claim_name(tj: TrainingJob, index: int) -> str:
    """Worker `index`'s own output volume (output.volumePerWorker / perWorker)."""
    return child_name(tj.metadata.name, f"output-{tj.metadata.uid[:5]}-{index}")


def output_claim_names(tj: TrainingJob) -> list[str]:
    """Every output volume of the job: one per worker with volumePerWorker/perWorker, else the one shared."""
    if tj.spec.output.parts_per_worker:
        return [worker_claim_name(tj, i) for i in range(tj.spec.replicas)]
    return [output_claim_name(tj)]




def snapshot_pod_name(tj: TrainingJob) -> str:
    return agent_pod_name(tj.metadata.name, "snapshot")


def scan_pod_name(checkpoint: Checkpoint) -> str:
    return agent_pod_name(checkpoint.metadata.name, "scan")


def import_pod_name(checkpoint: Checkpoint) -> str:
    return agent_pod_name(checkpoint.metadata.name, "import")


# --- environment -------------------------------------------------------------------------------

def contract_env(tj: TrainingJob, inputs: list[ResolvedInput], live: bool = False) -> dict[str, str]:
    """The variables of DESIGN §2 that every container gets (and CHECKPOINT_RESUME_PATH with
    live sealing: a path that exists once this job has sealed a checkpoint)."""
    input_dir, output_dir = tj.spec.inputDir, tj.spec.outputDir
    env = {"CHECKPOINT_INPUT_DIR": input_dir, "FLEXAI_INPUT_CHECKPOINT_DIR": input_dir,
           "CHECKPOINT_INPUT_NAMES": ",".join(i.mount_name for i in inputs)}
    if tj.output_enabled:
        env["CHECKPOINT_OUTPUT_DIR"] = output_dir
        env["FLEXAI_OUTPUT_CHECKPOINT_DIR"] = output_dir
    if live and not tj.spec.output.parts_per_worker:
        env[live_sealing.RESUME_ENV] = live_sealing.resume_path(output_dir)
    elif tj.output_enabled and group_resume.has_resume_copy(tj):  # a volume per worker, after a resume step
        assert tj.status.resume is not None and tj.status.resume.digest is not None
        env[live_sealing.RESUME_ENV] = group_resume.resume_path(output_dir, tj.status.resume.digest)
    if inputs:
        first = posixpath.join(input_dir, inputs[0].mount_name)
        env["CHECKPOINT_INPUT_PATH"] = first
        env["ML_CHECKPOINT_PATH"] = first
    return env


def merge_env(container: dict[str, Any], contract: dict[str, str],
              extra: tuple[dict[str, Any], ...] = ()) -> list[str]:
    """Put the contract variables (and `extra` env entries: the rendezvous, some from the downward
    API) into the container; ours win. Returns a warning per conflict."""
    ours = {name: {"name": name, "value": value} for name, value in sorted(contract.items())}
    ours.update({entry["name"]: entry for entry in extra})
    warnings = []
    kept = []
    for var in container.get("env", []) or []:
        if var.get("name") in ours:
            if var != ours[var["name"]]:
                wanted = ours[var["name"]]
                shown = repr(wanted["value"]) if "value" in wanted else "the pod's index"
                warnings.append(f"container {container.get('name')}: env {var['name']} is set by the operator "
                                f"to {shown}; the template's value is ignored")
            continue
        kept.append(var)
    container["env"] = kept + [copy.deepcopy(entry) for entry in ours.values()]
    return warnings


# --- mounts --------------------------------------------------------------------------------------

def _is_at_or_inside(path: str, directory: str) -> bool:
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def is_operator_volume(name: Optional[str]) -> bool:
    """A volume name the operator adds to a workload's pods (its output, the inputs, the s3 store's
    staging, the live-sealing sidecar's): a template may neither declare nor mount one."""
    return bool(name) and (name in (OUTPUT_VOLUME, STAGING_VOLUME, live_sealing.META_VOLUME, node_cache.CACHE_VOLUME)
                           or str(name).startswith(INPUT_VOLUME_PREFIX))


OPERATOR_VOLUMES = (f"{OUTPUT_VOLUME}, {STAGING_VOLUME}, {live_sealing.META_VOLUME}, {node_cache.CACHE_VOLUME}, "
                    f"{INPUT_VOLUME_PREFIX}*")
CONTAINER_KINDS = ("initContainers", "containers", "ephemeralContainers")


def check_user_mounts(template_spec: dict[str, Any], tj: TrainingJob) -> None:
    """Refuse user mounts at or inside the operator's directories (the operator's would hide them
    or vice versa), and user mounts of the operator's own volumes by name: a snapshot input is an
    ephemeral claim with no volume-level readOnly, so such a mount would write the pinned input."""
    reserved = {"spec.inputDir": tj.spec.inputDir}
    if tj.output_enabled:
        reserved["spec.outputDir"] = tj.spec.outputDir
    for kind in CONTAINER_KINDS:
        for container in template_spec.get(kind, []) or []:
            for mount in container.get("volumeMounts", []) or []:
                if is_operator_volume(mount.get("name")):
                    raise InvalidSpec(
                        f"spec.template.spec.{kind}[{container.get('name')}].volumeMounts {mount.get('name')!r} names "
                        f"a volume the operator adds ({OPERATOR_VOLUMES}); mount inputs through spec.checkpoints "
                        f"and write the output to spec.outputDir")
                for field_name, directory in reserved.items():
                    if _is_at_or_inside(mount.get("mountPath", ""), directory):
                        raise InvalidSpec(
                            f"spec.template.spec.{kind}[{container.get('name')}].volumeMounts "
                            f"{mount.get('name')!r} at {mount.get('mountPath')!r} is at or inside {field_name} "
                            f"{directory!r}, which the operator mounts; move it elsewhere")
    user_volumes = {v.get("name") for v in template_spec.get("volumes", []) or []}
    ours = [v for v in user_volumes if is_operator_volume(v)]
    if ours:
        raise InvalidSpec(f"spec.template.spec.volumes {sorted(ours)} use names reserved by the operator "
                          f"({OPERATOR_VOLUMES}); rename them")
    for kind in ("initContainers", "containers"):
        for reserved_name, what in ((live_sealing.SIDECAR, "sealing sidecar"),
                                    (node_cache.HOLD_CONTAINER, "node-cache sidecar")):
            if any(c.get("name") == reserved_name for c in template_spec.get(kind, []) or []):
                raise InvalidSpec(f"spec.template.spec.{kind} has a container named {reserved_name!r}, a name "
                                  f"reserved for the operator's {what}; rename it")


# --- objects -----------------------------------------------------------------------------------

def build_output_claims(tj: TrainingJob, config: OperatorConfig) -> list[dict[str, Any]]:
    """The output volume, or one per worker (ReadWriteOnce: each is written by one pod)."""
    if not tj.spec.output.parts_per_worker:
        return [build_output_claim(tj, config)]
    claims = []
    for index, name in enumerate(output_claim_names(tj)):
        claim = build_output_claim(tj, config)
        claim["metadata"]["name"] = name
        claim["metadata"]["labels"][WORKER_INDEX_LABEL] = str(index)
        claim["spec"]["accessModes"] = ["ReadWriteOnce"]
        claims.append(claim)
    return claims


def output_storage_class(tj: TrainingJob, config: OperatorConfig) -> Optional[str]:
    """The StorageClass of a job's output volume (None: the cluster's default class)."""
    return tj.spec.output.storageClassName or config.default_storage_class


def build_output_claim(tj: TrainingJob, config: OperatorConfig) -> dict[str, Any]:
    output = tj.spec.output
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany" if tj.spec.replicas > 1 else "ReadWriteOnce"],
        "resources": {"requests": {"storage": output.size or config.default_output_size}},
    }
    storage_class = output_storage_class(tj, config)
    if storage_class:
        claim_spec["storageClassName"] = storage_class
    return {"metadata": {"name": output_claim_name(tj), "namespace": tj.metadata.namespace,
                         "labels": training_job_labels(tj, "output"), "ownerReferences": [owner_reference(tj)]},
            "spec": claim_spec}


def build_pod_template(tj: TrainingJob, inputs: list[ResolvedInput], staged: InputVolumes,
                       sidecar: Optional[tuple[dict[str, Any], dict[str, Any]]] = None,
                       rendezvous_at: Optional[Rendezvous] = None) -> tuple[dict[str, Any], list[str]]:
    """The user's pod template with the inputs, the output, the contract's variables (and, for a
    distributed job, the launchers' variables pointing at `rendezvous_at` and the pods' subdomain).
    `staged`: how the store makes the inputs visible (Store.input_volumes); `sidecar`: the live
    sealing sidecar and its volume (logic/live_sealing.py), with publish: Continuous. Returns it
    and a warning per variable of the template the operator's value replaces."""
    spec = tj.spec
    template = copy.deepcopy(spec.template.to_wire())
    pod_spec = template.setdefault("spec", {})
    check_user_mounts(pod_spec, tj)
    if rendezvous.needs_service(tj):
        refusal = rendezvous.check_template(pod_spec)
        if refusal:
            raise InvalidSpec(refusal)
        pod_spec["subdomain"] = rendezvous.service_name(tj)

    volumes, mounts, init_containers = list(staged.volumes), list(staged.mounts), list(staged.init_containers)
    if tj.output_enabled:
        volumes.append({"name": OUTPUT_VOLUME, "persistentVolumeClaim": {"claimName": output_claim_name(tj)}})
        mounts.append({"name": OUTPUT_VOLUME, "mountPath": spec.outputDir})

    env = contract_env(tj, inputs, live=sidecar is not None)
    launchers: tuple[dict[str, Any], ...] = ()
    if rendezvous.is_distributed(tj):
        launchers = tuple(rendezvous.variables(rendezvous_at or rendezvous.rendezvous_of(tj)))
    warnings: list[str] = []
    for kind in ("initContainers", "containers"):
        for container in pod_spec.get(kind, []) or []:
            warnings += merge_env(container, env, launchers)
            container["volumeMounts"] = (container.get("volumeMounts") or []) + copy.deepcopy(mounts)
    # The input downloads keep "restricted" and still start under the user's pod-level settings.
    init_containers = [fit_injected_container(c, pod_spec) for c in init_containers]
    if sidecar is not None:  # after the input downloads, before the user's init containers
        container, volume = copy.deepcopy(sidecar)
        volumes.append(volume)
        init_containers.append(container)
    pod_spec["volumes"] = (pod_spec.get("volumes") or []) + volumes
    pod_spec["initContainers"] = init_containers + (pod_spec.get("initContainers") or [])
    if not pod_spec["initContainers"]:
        del pod_spec["initContainers"]
    pod_spec.setdefault("restartPolicy", "Never")

    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **training_job_labels(tj, "worker")}
    return template, warnings


def build_workload(tj: TrainingJob, inputs: list[ResolvedInput], staged: InputVolumes,
                   sidecar: Optional[tuple[dict[str, Any], dict[str, Any]]] = None, *,
                   rendezvous_at: Optional[Rendezvous] = None, attempt: int = 0,
                   deadline: Optional[int] = None) -> BuiltJob:
    """The Job or JobSet of `spec.engine` (logic/engines.py) running the pod template above.
    `attempt`: the group's restart attempt; `deadline`: activeDeadlineSeconds (what is left of the
    job's, for a restarted group)."""
    template, warnings = build_pod_template(tj, inputs, staged, sidecar, rendezvous_at)
    meta = {"name": job_name(tj), "namespace": tj.metadata.namespace,
            "labels": {**kueue.kueue_labels(tj.metadata.labels), **training_job_labels(tj, "worker")},
            "ownerReferences": [owner_reference(tj)]}
    if deadline is None:
        deadline = tj.spec.activeDeadlineSeconds
    per_worker = [worker_template(tj, template, i) for i in range(tj.spec.replicas)] \
        if tj.output_enabled and tj.spec.output.parts_per_worker else None
    workload = engines.engine_of(tj).build(tj, template, meta, attempt, deadline, per_worker)
    return BuiltJob(workload, warnings)


COMPLETION_INDEX_VARIABLE = "JOB_COMPLETION_INDEX"


def worker_template(tj: TrainingJob, template: dict[str, Any], index: int) -> dict[str, Any]:
    """Worker `index`'s pod template when each worker has its own volume: its claim, and its rank as
    a value (each worker is its own replicated job, whose completion index is 0), also as
    JOB_COMPLETION_INDEX, which code written for an Indexed Job reads."""
    ours = copy.deepcopy(template)
    spec = ours["spec"]
    for volume in spec.get("volumes") or []:
        if volume.get("name") == OUTPUT_VOLUME:
            volume["persistentVolumeClaim"]["claimName"] = worker_claim_name(tj, index)
    for kind in ("initContainers", "containers"):
        for container in spec.get(kind) or []:
            for var in container.get("env") or []:
                if var.get("name") in rendezvous.INDEX_VARIABLES:
                    var.pop("valueFrom", None)
                    var["value"] = str(index)
            # The Job controller sets JOB_COMPLETION_INDEX (0 here) unless the container has it.
            env = [v for v in container.get("env") or [] if v.get("name") != COMPLETION_INDEX_VARIABLE]
            container["env"] = [*env, {"name": COMPLETION_INDEX_VARIABLE, "value": str(index)}]
    ours.setdefault("metadata", {}).setdefault("labels", {})[WORKER_INDEX_LABEL] = str(index)
    return ours


def build_rendezvous_service(tj: TrainingJob) -> dict[str, Any]:
    """The headless Service that names a distributed Job's workers (logic/rendezvous.py)."""
    selector = {LABEL_TRAINING_JOB_UID: tj.metadata.uid, LABEL_COMPONENT: "worker"}
    return rendezvous.build_service(tj, training_job_labels(tj, "rendezvous"), selector, owner_reference(tj))


def build_live_sidecar(tj: TrainingJob, config: OperatorConfig, upload_to: Optional[str],
                       env: list[dict[str, Any]], sync: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sealing sidecar of a publish: Continuous job (logic/live_sealing.py), for build_workload.
    `sync`: it syncs the filesystem once a directory is sealed (a volume snapshot of it follows)."""
    # Not a CRD rule: declaring the template's annotations for CEL would bound what users may put there.
    if live_sealing.REMOVE_ANNOTATION in ((tj.spec.template.metadata or {}).get("annotations") or {}):
        raise InvalidSpec(f"spec.template.metadata.annotations must not have {live_sealing.REMOVE_ANNOTATION}: the "
                          f"operator alone writes it (its requests to the live-sealing sidecar to remove sealed "
                          f"directories)")
    for shared in ("shareProcessNamespace", "hostPID"):  # publish: Continuous by the operator's default
        if not tj.spec.template.spec.get(shared):
            continue
        raise InvalidSpec(f"spec.template.spec.{shared} must not be true with live sealing (publish: "
                          "Continuous, the operator's default here): the training code could then write into the "
                          "live-sealing sidecar's output, the channel the operator believes about what was sealed")
    # A volume per worker: each worker's sidecar seals its own parts; the operator's union pod assembles
    # them (and, on the s3 store, uploads the union: a part alone is not a checkpoint to upload).
    part = tj.spec.output.parts_per_worker
    upload_to = None if part else upload_to
    command = agent_commands.watch(tj.spec.outputDir, interval=config.live_watch_interval,
                                   annotations_file=live_sealing.annotations_file(), upload_to=upload_to,
                                   shared=tj.spec.replicas > 1 and not part, part=part,
                                   upload_concurrency=config.live_upload_concurrency if upload_to else None,
                                   # volume store: the sealed manifests beside the data (the store is the volume)
                                   manifests_dir=None if upload_to else posixpath.join(tj.spec.outputDir, MANIFESTS_DIR),
                                   sync=sync)
    return live_sealing.sidecar_parts(tj, command, config.agent_image, config.agent_image_pull_policy,
                                    copy.deepcopy(config.live_sidecar_resources), env, OUTPUT_VOLUME,
                                    tj.spec.template.spec)


def _restored(volume: dict[str, Any]) -> bool:
    return bool((volume.get("ephemeral") or {}).get("volumeClaimTemplate", {}).get("spec", {})
                .get("dataSource", {}).get("kind") == "VolumeSnapshot")


def restored_input_volumes(volumes: list[dict[str, Any]]) -> int:
    """How many of a pod's volumes are restored from snapshots (a claim of each pod's own)."""
    return sum(1 for v in volumes if _restored(v))


def workload_pod_spec(obj: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The pod spec of a Job's template, or of a JobSet's (one) replicated job's template."""
    job_spec = (obj or {}).get("spec") or {}
    if "replicatedJobs" in job_spec:
        job_spec = ((job_spec.get("replicatedJobs") or [{}])[0].get("template") or {}).get("spec") or {}
    return ((job_spec.get("template") or {}).get("spec")) or {}


def restored_input_claims(obj: Optional[dict[str, Any]], pod: str) -> list[str]:
    """The claims of a workload's pod's volumes restored from snapshots: generic ephemeral volumes,
    whose claims are named <pod>-<volume>."""
    return [f"{pod}-{v['name']}" for v in workload_pod_spec(obj).get("volumes") or [] if _restored(v)]


def build_snapshot_pod(tj: TrainingJob, command: list[str], env: list[dict[str, Any]], config: OperatorConfig,
                       read_only: bool = True) -> dict[str, Any]:
    """The pod that scans the output volume (every worker's, with a volume per worker) and writes
    the checkpoints found as its result line (on the s3 store `command` uploads them first).
    Read-only unless the store keeps the full manifests on the volume (`read_only` False: the agent
    writes only .ckpt-manifests/ at its root). Its deadline is the base one: the output's size is
    what it finds out."""
    metadata = {"name": snapshot_pod_name(tj), "namespace": tj.metadata.namespace,
                "labels": training_job_labels(tj, "snapshot"), "ownerReferences": [owner_reference(tj)]}
    if tj.spec.output.parts_per_worker:  # every worker's volume, at <mount>/worker-<i> (agent/parts.py)
        names = [f"{OUTPUT_VOLUME}-{i}" for i in range(tj.spec.replicas)]
        mounts = [{"name": n, "mountPath": posixpath.join(AGENT_OUTPUT_MOUNT, f"worker-{i}"), "readOnly": read_only}
                  for i, n in enumerate(names)]
        volumes = [{"name": n, "persistentVolumeClaim": {"claimName": c, "readOnly": read_only}}
                   for n, c in zip(names, output_claim_names(tj))]
    else:
        mounts = [{"name": OUTPUT_VOLUME, "mountPath": AGENT_OUTPUT_MOUNT, "readOnly": read_only}]
        volumes = [{"name": OUTPUT_VOLUME, "persistentVolumeClaim": {"claimName": output_claim_name(tj),
                                                                     "readOnly": read_only}}]
    container = agent_container("snapshot", command, config, mounts=mounts, env=env)
    pod = agent_pod(metadata, config, [container], volumes, identity=trainer_identity(tj.spec.template.spec))
    return pod if read_only else _trainers_group_only(pod, tj)


def union_pod_name(tj: TrainingJob) -> str:
    # An agent pod's name: the exec fence knows it by its suffix (on the volume store it writes the
    # union's manifest into a worker's volume).
    return agent_pod_name(tj.metadata.name, "union")


def build_union_pod(tj: TrainingJob, command: list[str], env: list[dict[str, Any]], config: OperatorConfig,
                    read_only: bool = True) -> dict[str, Any]:
    """Live sealing with a volume per worker (logic/live_unions.py): the snapshot pod's shape (every
    worker's volume at <mount>/worker-<i>), run while the job runs for one directory whose parts the
    workers' sidecars sealed (`command`: the snapshot's, with --only and --expect)."""
    pod = build_snapshot_pod(tj, command, env, config, read_only=read_only)
    pod["metadata"]["name"] = union_pod_name(tj)
    return pod


def resume_pod_name(tj: TrainingJob) -> str:
    # An agent pod's name: the exec fence knows it by its suffix (it writes into every worker's volume).
    return agent_pod_name(tj.metadata.name, "resume")


def build_resume_pod(tj: TrainingJob, config: OperatorConfig, published: Sequence[str] = ()) -> dict[str, Any]:
    """Between two attempts of a group with a volume per worker (logic/group_resume.py): every worker's
    volume read-write at <mount>/worker-<i>, `agent resume-parts` copying the latest checkpoint complete
    over them into each one's .ckpt-resume/ (the workers' own files are only read, except that parts
    sealed of a directory not `published` get their write bits back: group_resume.kept_sealed)."""
    metadata = {"name": resume_pod_name(tj), "namespace": tj.metadata.namespace,
                "labels": training_job_labels(tj, "resume"), "ownerReferences": [owner_reference(tj)]}
    names = [f"{OUTPUT_VOLUME}-{i}" for i in range(tj.spec.replicas)]
    mounts = [{"name": n, "mountPath": posixpath.join(AGENT_OUTPUT_MOUNT, f"worker-{i}")} for i, n in enumerate(names)]
    volumes = [{"name": n, "persistentVolumeClaim": {"claimName": c}} for n, c in zip(names, output_claim_names(tj))]
    command = agent_commands.resume_parts(AGENT_OUTPUT_MOUNT, parts=tj.spec.replicas, layout=tj.spec.output.layout,
                                          keep=group_resume.kept_copy(tj), published=published)
    container = agent_container("resume", command, config, mounts=mounts)
    # Its deadline grows with what it may copy: at most a volume's worth into each of the volumes.
    copied = parse_quantity(tj.spec.output.size or config.default_output_size) * tj.spec.replicas
    pod = agent_pod(metadata, config, [container], volumes, size_bytes=copied,
                    identity=trainer_identity(tj.spec.template.spec))
    return _trainers_group_only(pod, tj)


def _trainers_group_only(pod: dict[str, Any], tj: TrainingJob) -> dict[str, Any]:
    """An agent pod that mounts the trainer's volumes read-write writes as the trainer: never with the
    agent's fsGroup (the kubelet would re-own every file the workers wrote), only with the one the
    workers' pods have, if any. (A read-only mount is never re-owned.)"""
    context = pod["spec"]["securityContext"]
    context.pop("fsGroup", None)
    context.pop("fsGroupChangePolicy", None)
    trainer_group = (tj.spec.template.spec.get("securityContext") or {}).get("fsGroup")
    if isinstance(trainer_group, int) and trainer_group > 0:
        context.update(fsGroup=trainer_group, fsGroupChangePolicy="OnRootMismatch")
    return pod


def build_volume_scan_pod(checkpoint: Checkpoint, config: OperatorConfig) -> dict[str, Any]:
    """The pod that scans an adopted volume path (spec.source.volume) as one checkpoint."""
    source = checkpoint.spec.source.volume
    assert source is not None
    sub_path = posixpath.normpath(source.path.lstrip("/") or ".")
    mount = {"name": "data", "mountPath": AGENT_DATA_MOUNT, "readOnly": True}
    if sub_path != ".":
        mount["subPath"] = sub_path
    container = agent_container("scan", agent_commands.scan(AGENT_DATA_MOUNT, single=True), config, mounts=[mount])
    metadata = {"name": scan_pod_name(checkpoint), "namespace": checkpoint.metadata.namespace,
                "labels": checkpoint_labels(checkpoint, "scan"), "ownerReferences": [owner_reference(checkpoint)]}
    return agent_pod(metadata, config, [container], [{"name": "data", "persistentVolumeClaim": {
        "claimName": source.claimName, "readOnly": True}}])


# --- imports (Checkpoints with source s3, http, huggingFace, gcs, azureBlob, git) ----------------

IMPORT_SIZE_ANNOTATION = "ckpt.dev/volume-size"
SOURCE_SECRET_ANNOTATION = "ckpt.dev/source-secret"  # an import pod's source Secret (the admission policy reads it)


def import_claim_name(checkpoint: Checkpoint) -> str:
    return import_claim_name_for(checkpoint.metadata.name, checkpoint.metadata.uid)


def import_claim_name_for(name: str, uid: str) -> str:
    """The claim of an import or a push (volume store). It holds the Checkpoint's uid, which the
    API server assigns when the Checkpoint is created: no pod template, Job or pod could name the
    claim before its Checkpoint existed (and from then on a template naming it is refused by name,
    docs/guarantees.md)."""
    return child_name(name, f"data-{uid[:8]}")


def import_origin(checkpoint: Checkpoint) -> str:
    """What an import fetches, as messages show it (logic/import_sources.py: no query, no userinfo)."""
    return import_sources.shown_uri(import_sources.import_spec(checkpoint).uri)


def build_import_claim(checkpoint: Checkpoint, config: OperatorConfig) -> dict[str, Any]:
    size = checkpoint.metadata.annotation(IMPORT_SIZE_ANNOTATION) or config.default_output_size
    claim_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if config.default_storage_class:
        claim_spec["storageClassName"] = config.default_storage_class
    return {"metadata": {"name": import_claim_name(checkpoint), "namespace": checkpoint.metadata.namespace,
                         "labels": checkpoint_labels(checkpoint, "import"),
                         "ownerReferences": [owner_reference(checkpoint)]},
            "spec": claim_spec}


def source_env(checkpoint: Checkpoint) -> list[dict[str, Any]]:
    """Credentials and endpoint of the source: its own Secret (in the Checkpoint's namespace),
    else none (anonymous, or the pod's cloud identity); never the store's."""
    return import_sources.import_spec(checkpoint).env


def import_data_dir() -> str:
    return posixpath.join(AGENT_DATA_MOUNT, IMPORT_DIR)


def build_import_pod(checkpoint: Checkpoint, config: OperatorConfig,
                     parts: tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]) -> dict[str, Any]:
    """Fetch the source into the store: `parts` = (init containers, containers, volumes) from
    Store.import_containers; either way the pod prints the scan as JSON."""
    init_containers, containers, volumes = parts
    metadata: dict[str, Any] = {"name": import_pod_name(checkpoint), "namespace": checkpoint.metadata.namespace,
                                "labels": checkpoint_labels(checkpoint, "import"),
                                "ownerReferences": [owner_reference(checkpoint)]}
    secret = import_sources.import_spec(checkpoint).secret
    if secret:  # the admission policy holds every Secret reference of the pod to this one
        metadata["annotations"] = {SOURCE_SECRET_ANNOTATION: secret}
    return agent_pod(metadata, config, containers, volumes, init_containers)
