"""The TrainingJob resource: runs the user's pod template on read-only input checkpoints
and turns what it writes into new Checkpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import Field

from checkpoint_operator.api.common import (MAX_VOLUME_SNAPSHOT_RECORDS, QUANTITY_PATTERN, ZERO_QUANTITY, Condition,
                                             Phase, PinnedCheckpoint, VolumeSnapshotRecord, is_zero_quantity,
                                             ready_reason)
from checkpoint_operator.api.meta import ApiObject
from checkpoint_operator.api.rules import (DNS1123_LABEL, DNS1123_MESSAGE, DNS1123_SUBDOMAIN, INT64_MAX, MAX_NAME, ApiModel,
                                           Count, Digest, Message, Name, Path, Rule, Short, Timestamp, Uid,
                                           has_exactly_one, is_dns1123, is_dns1123_label)



class TrainingJobPhase(Phase):
    """Pending -> Running -> Snapshotting -> Succeeded | Failed; Queued while the workload is
    suspended (waiting for Kueue to admit it, or preempted), between Pending and Running."""

    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SNAPSHOTTING = "Snapshotting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def is_finished(self) -> bool:
        """The pods are done and the output is snapshotted: the job no longer uses its inputs."""
        return self in (TrainingJobPhase.SUCCEEDED, TrainingJobPhase.FAILED)

    is_settled = is_finished


SelectPolicy = Literal["latest", "latestResumable", "final", "best"]
Engine = Literal["Job", "JobSet"]
MAX_REPLICAS = 100000  # the Job API's limit of completions of an Indexed Job
MAX_NPROC_PER_NODE = 1024
MAX_WORKER_VOLUMES = 128  # volumePerWorker: one replicated job (a pod template) per worker in one JobSet
WaitPolicy = Literal["Available", "Finished"]
PublishMode = Literal["OnCompletion", "Continuous"]
METRIC_PATTERN = r"^[A-Za-z0-9_.\-/]{1,63}$"  # agent/metrics_files.py METRIC_NAME
MAX_RETIRED_LISTED = 1000
# status.live.retiredPaths: directories whose Checkpoint was deleted and that left status.live.retired (removed
# by the sidecar, or dropped past its bound); at most this many, and at most MAX_RETIRED_PATHS_BYTES of names
# together (logic/live_sealing.remember_retired_paths drops the oldest past either).
MAX_RETIRED_PATHS = 2000
MAX_RETIRED_PATHS_BYTES = 64 * 1024
DNS1123_CEL = DNS1123_SUBDOMAIN.replace("\\", "\\\\")
MAX_INPUTS = 64  # maxItems of spec.checkpoints: bounds the CEL cost of the per-item rules
MAX_CONTAINERS = 64  # maxItems of spec.template.spec.containers and initContainers, which CEL rules read
JOB_RESTART_POLICIES = ("OnFailure", "Never")  # what batch/v1 accepts in a Job's pod template (JobSet's Jobs too)
# Directories of a container that its runtime or its image owns: a volume mounted at or under one
# (spec.inputDir, spec.outputDir) hides what the runtime mounts there (/proc, /sys, /dev, /dev/shm,
# /etc/hosts, /etc/resolv.conf, /etc/hostname, /run and /var/run/secrets: the service account token)
# or the image's programs, libraries and configuration (/bin, /sbin, /lib*, /usr, /etc), so the
# container fails to start or a Checkpoint is made of the runtime's stubs (hostile5 F2). /boot is the
# host's kernel in many base images. docs/training-code.md lists them.
SYSTEM_DIRS = ("/proc", "/sys", "/dev", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr",
               "/run", "/var/run", "/boot")


def _dns_rule(field: str, where: str) -> Rule:
    return Rule(f"!has(self.{field}) || (size(self.{field}) <= 253 && self.{field}.matches('{DNS1123_CEL}'))",
                f"{where}.{field} must be {DNS1123_MESSAGE}",
                lambda s: field not in s or is_dns1123(s[field]), field_path=f".{field}")


class CheckpointRef(ApiModel):
    """An input: a Checkpoint by name or uid, the latest Checkpoint produced by a TrainingJob, or a
    ClusterCheckpoint of the catalog."""

    cel_rules = (
        Rule("[has(self.name), has(self.uid), has(self.fromTrainingJob), has(self.clusterCheckpoint)]"
             ".filter(x, x).size() == 1",
             "spec.checkpoints[] must set exactly one of name, uid, fromTrainingJob, clusterCheckpoint",
             lambda s: has_exactly_one(s, ("name", "uid", "fromTrainingJob", "clusterCheckpoint"))),
        Rule("!has(self.select) || has(self.fromTrainingJob)",
             "spec.checkpoints[].select is only allowed with fromTrainingJob",
             lambda s: "select" not in s or "fromTrainingJob" in s, field_path=".select"),
        Rule("!has(self.wait) || has(self.fromTrainingJob)",
             "spec.checkpoints[].wait is only allowed with fromTrainingJob",
             lambda s: "wait" not in s or "fromTrainingJob" in s, field_path=".wait"),
        _dns_rule("name", "spec.checkpoints[]"),
        _dns_rule("fromTrainingJob", "spec.checkpoints[]"),
        _dns_rule("clusterCheckpoint", "spec.checkpoints[]"),
        _dns_rule("mountName", "spec.checkpoints[]"),
    )

    # maxLength bounds the API server's CEL cost estimate of the matches() rules (with an
    # unbounded string and list, the CRD is refused: "estimated rule cost exceeds budget").
    name: Optional[str] = Field(None, max_length=253, description="Name of a Checkpoint in the same namespace.")
    uid: Optional[str] = Field(None, max_length=128, description="UID of a Checkpoint in the same namespace.")
    fromTrainingJob: Optional[str] = Field(None, max_length=253, description="Name of a TrainingJob whose output to use.")
    clusterCheckpoint: Optional[str] = Field(
        None, max_length=253, description="Name of a ClusterCheckpoint (a catalog entry of the cluster), used read-only.")
    select: Optional[SelectPolicy] = Field(
        None, description="Which output of fromTrainingJob: latest (default) = the highest step, then the newest, "
                          "of the Ready checkpoints found complete (status.complete true), or when none was, of those "
                          "not checked (complete absent); never one found incomplete; latestResumable = the same "
                          "among those with optimizer state; final = the root-files checkpoint (named <prefix> alone); "
                          "best = the best by the producer's spec.output.retention.keepBest metric (complete ones "
                          "first, in the same way).")
    wait: Optional[WaitPolicy] = Field(
        None, description="Available (default): take the selected checkpoint as soon as one exists, also while "
                          "a producer with publish: Continuous is still running; Finished: wait until the producer "
                          "has finished, then select among all its outputs.")
    mountName: Optional[str] = Field(
        None, max_length=253, description="Directory name under inputDir (default: the Checkpoint's name).")


class KeepBest(ApiModel):
    """Keep the `count` best checkpoints by a metric they record (status.metrics)."""

    metric: str = Field(max_length=63, pattern=METRIC_PATTERN,
                        description="Name of the metric: a key of metrics.json, or of the trainer_state.json "
                                    "log_history entry of the checkpoint's step (eval_loss, ...), or best_metric.")
    mode: Literal["min", "max"] = Field("min", description="min: lower is better (a loss); max: higher is better.")
    count: int = Field(1, ge=1, le=1000, description="How many of the best to keep.")


class RetentionSpec(ApiModel):
    """Which of the job's Checkpoints to keep; applied as each one seals (publish: Continuous) and
    at the end. A checkpoint is kept when any rule keeps it; the newest, checkpoints without a
    step and Checkpoints labelled ckpt.dev/keep=true are always kept; the others are deleted
    (one in use by another job only once it is released)."""

    keepLatest: Optional[int] = Field(None, ge=1, le=100000, description="Keep the N highest steps.")
    keepEvery: Optional[int] = Field(None, ge=1, le=1000000000,
                                     description="Keep every checkpoint whose step is a multiple of K.")
    keepBest: Optional[KeepBest] = Field(None, description="Keep the best by a metric.")


class OutputSpec(ApiModel):
    """What happens to the output directory."""

    cel_rules = (
        Rule(f"!has(self.size) || !self.size.matches('{ZERO_QUANTITY}')",
             "spec.output.size must be greater than zero (a quantity such as 10Gi), as a PersistentVolumeClaim's "
             "storage request",
             lambda s: "size" not in s or not is_zero_quantity(s["size"]), field_path=".size"),
        Rule("!has(self.keep) || self.keep >= 1", "spec.output.keep must be at least 1 (or unset to keep all)",
             lambda s: s.get("keep") is None or s["keep"] >= 1, field_path=".keep"),
        Rule("!has(self.keep) || !has(self.retention) || !has(self.retention.keepLatest)",
             "spec.output.keep is the short form of spec.output.retention.keepLatest: set one of them",
             lambda s: "keep" not in s or "keepLatest" not in (s.get("retention") or {}), field_path=".keep"),
        Rule("!has(self.namePrefix) || (size(self.namePrefix) <= 200 && "
             "self.namePrefix.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))",
             "spec.output.namePrefix must be lowercase letters, digits and '-', starting and ending "
             "alphanumeric, at most 200 characters",
             lambda s: "namePrefix" not in s or (len(s["namePrefix"]) <= 200 and is_dns1123(s["namePrefix"])
                                                and "." not in s["namePrefix"]),
             field_path=".namePrefix"),
        Rule("!(has(self.volumePerWorker) && self.volumePerWorker && has(self.perWorker) && self.perWorker)",
             "spec.output.volumePerWorker and perWorker are exclusive: volumePerWorker assembles one Checkpoint per "
             "directory across workers, perWorker keeps each worker's own",
             lambda s: not (s.get("volumePerWorker") and s.get("perWorker")), field_path=".perWorker"),
        Rule("!has(self.enabled) || self.enabled || !((has(self.volumePerWorker) && self.volumePerWorker) || "
             "(has(self.perWorker) && self.perWorker))",
             "spec.output.volumePerWorker and perWorker need spec.output.enabled: with no output there is no volume "
             "per worker (leave them out)",
             lambda s: s.get("enabled", True) is not False or not (s.get("volumePerWorker") or s.get("perWorker")),
             field_path=".enabled"),
    )

    enabled: bool = Field(True, description="Create an output volume and snapshot it into Checkpoints.")
    size: Optional[Short] = Field(None, description="Size of the output volume (a Kubernetes quantity); default: "
                                                  "the operator's (Helm value storage.defaultSize, 10Gi).",
                      pattern=QUANTITY_PATTERN)
    storageClassName: Optional[Name] = Field(None, description="StorageClass of the output volume; default: the operator's.")
    layout: Literal["auto", "directories", "files"] = Field(
        "auto", description="auto: each subdirectory and the root files are checkpoints; directories: subdirectories "
                            "only; files: each root file is a checkpoint.")
    keep: Optional[int] = Field(None, le=100000,
                                description="Keep only the N checkpoints with the highest steps (the short form "
                                            "of retention.keepLatest).")
    retention: Optional[RetentionSpec] = Field(None, description="Which Checkpoints to keep (keepLatest, keepEvery, "
                                                                 "keepBest).")
    publish: Optional[PublishMode] = Field(
        None, description="OnCompletion: Checkpoints are made when the pods have finished; Continuous: a sidecar "
                          "seals each checkpoint as soon as it is complete and it becomes a Ready Checkpoint while "
                          "the job runs (needs Kubernetes 1.29+, native sidecars). Default: the operator's setting "
                          "(OnCompletion unless CKPT_DEFAULT_PUBLISH says otherwise).")
    namePrefix: Optional[Name] = Field(None, description="Prefix of the new Checkpoints' names (default: the job's name).")
    volumePerWorker: Optional[bool] = Field(
        None, description="Each worker gets its own output volume (<job>-output-<uid5>-<i>, ReadWriteOnce: block "
                           "storage across nodes; needs engine JobSet). A directory of the same name written by "
                           "several workers (DCP, DeepSpeed, Orbax multi-host) becomes one Checkpoint, the union of "
                           "their files; the same path with different bytes in two workers is refused by name.")
    perWorker: Optional[bool] = Field(
        None, description="Each worker's output becomes its own Checkpoints, <prefix>-worker-<i>-<directory> "
                           "(a volume per worker, as volumePerWorker; needs engine JobSet).")

    @property
    def parts_per_worker(self) -> bool:
        """Each worker writes its own volume (volumePerWorker or perWorker)."""
        return bool(self.volumePerWorker or self.perWorker)


def _container_names_rule(kind: str) -> Rule:
    return Rule(f"!has(self.spec) || !has(self.spec.{kind}) || self.spec.{kind}.all(c, has(c.name) && "
                f"size(c.name) <= 63 && c.name.matches('{DNS1123_LABEL}'))",
                f"spec.template.spec.{kind}[].name must be a DNS-1123 label (lowercase a-z, 0-9 and '-', starting "
                "and ending alphanumeric, at most 63 characters), as the API server requires of a container's name",
                lambda s: all(is_dns1123_label(c.get("name")) for c in (s.get("spec") or {}).get(kind) or []),
                field_path=f".spec.{kind}")


def _containers_schema(what: str) -> dict[str, Any]:
    """A list of core/v1 Containers as the CRD declares it: opaque but for the name, which a rule reads."""
    return {"type": "array", "description": f"{what} of the pod (core/v1 Container).", "maxItems": MAX_CONTAINERS,
            "items": {"type": "object", "additionalProperties": True, "properties": {
                "name": {"type": "string", "maxLength": MAX_NAME, "description": "The container's name."}}}}


class PodTemplate(ApiModel):
    """A PodTemplateSpec; the operator only adds volumes, mounts and environment variables."""

    model_config = ApiModel.model_config | {"extra": "allow", "json_schema_extra": {
        "x-kubernetes-preserve-unknown-fields": True}}
    cel_rules = (
        Rule("has(self.spec) && has(self.spec.containers) && size(self.spec.containers) > 0",
             "spec.template.spec.containers must list at least one container",
             lambda s: bool(s.get("spec", {}).get("containers"))),
        # hostile5 F3: what kube-apiserver refuses in the Job (or JobSet) the operator would build is
        # refused here, when the TrainingJob is created, rather than by the cluster later.
        Rule("!has(self.spec) || !has(self.spec.restartPolicy) || self.spec.restartPolicy in "
             f"{list(JOB_RESTART_POLICIES)}",
             "spec.template.spec.restartPolicy must be OnFailure or Never (the default), as in a Job's pod template: "
             "a Job never runs pods with restartPolicy Always",
             lambda s: (s.get("spec") or {}).get("restartPolicy", "Never") in JOB_RESTART_POLICIES,
             field_path=".spec.restartPolicy"),
        _container_names_rule("containers"),
        # Init containers too: with engine JobSet a refused child Job leaves the JobSet without pods
        # (the JobSet controller only logs it), where engine Job fails the TrainingJob with the line.
        _container_names_rule("initContainers"),
    )

    metadata: Optional[dict[str, Any]] = Field(None, description="Labels and annotations of the pods.")
    # `containers` is declared so that the CEL rule may read it: the API server hides fields
    # kept only by x-kubernetes-preserve-unknown-fields from CEL (the rule would not compile).
    spec: dict[str, Any] = Field(description="A PodSpec.", json_schema_extra={"properties": {
        "containers": _containers_schema("Containers"),
        "initContainers": _containers_schema("Init containers"),
        # Declared for the rule that a Job's pods restart OnFailure or Never.
        "restartPolicy": {"type": "string", "maxLength": 64,
                          "description": "OnFailure or Never (the default): a Job's pods never restart Always."},
        # Declared for the rule that a distributed job's pods are named by the operator.
        "hostname": {"type": "string", "maxLength": 63, "description": "The pods' host name (one replica only)."},
        "subdomain": {"type": "string", "maxLength": 63,
                      "description": "The pods' subdomain (one replica only: the operator sets it for more)."},
        # Declared for the rules that live sealing's sidecar keeps its processes to itself.
        "shareProcessNamespace": {"type": "boolean",
                                  "description": "Not with publish: Continuous (the sidecar's output is its channel)."},
        "hostPID": {"type": "boolean",
                    "description": "Not with publish: Continuous (the sidecar's output is its channel)."}}})


def _absolute(field: str) -> Rule:
    return Rule(f"self.{field}.startsWith('/') && !self.{field}.matches('(^|/)[.][.]?(/|$)') "
                f"&& !self.{field}.contains('//') && (self.{field} == '/' || !self.{field}.endsWith('/'))",
                f"spec.{field} must be an absolute, normalized path (start with /, no '.' or '..', "
                "no // or trailing /)",
                lambda s: _is_clean_absolute(s.get(field, "/x")), field_path=f".{field}")


def _outside_system_dirs(field: str) -> Rule:
    return Rule(f"!{list(SYSTEM_DIRS)}.exists(d, self.{field} == d || self.{field}.startsWith(d + '/'))",
                f"spec.{field} must not be at or under a system directory ({', '.join(SYSTEM_DIRS)}): the container "
                "runtime mounts there or the image keeps its programs there; use a directory of its own, such as "
                f"the default /{'input' if field == 'inputDir' else 'output'}-checkpoint",
                lambda s: not in_system_dir(s.get(field, "/x")), field_path=f".{field}")


def in_system_dir(path: str) -> bool:
    """At or under one of SYSTEM_DIRS (exactly the CEL expression: the path rules refuse unnormalized paths)."""
    return any(path == d or path.startswith(d + "/") for d in SYSTEM_DIRS)


def _is_clean_absolute(path: str) -> bool:
    parts = path.split("/")
    return path.startswith("/") and "//" not in path and (path == "/" or not path.endswith("/")) and not any(
        p in (".", "..") for p in parts)


def _not_nested(a: str, b: str) -> bool:
    # Exactly the CEL expression (no normalization here: the path rules refuse unnormalized paths).
    return a != b and not a.startswith(b + "/") and not b.startswith(a + "/")


class TrainingJobSpec(ApiModel):
    """Desired state of a TrainingJob: its inputs, its pods and what to do with their output.
    Immutable, like a Job's template: a run is what it was started with."""

    cel_rules = (
        # A transition rule: only the API server can check it (it needs the stored object).
        Rule("self == oldSelf", "spec is immutable (spec.checkpoints, spec.output, spec.template, ...): "
                                "delete and re-create the TrainingJob to change it", None),
        _absolute("inputDir"),
        _absolute("outputDir"),
        _outside_system_dirs("inputDir"),
        _outside_system_dirs("outputDir"),
        Rule("self.inputDir != self.outputDir && !self.inputDir.startsWith(self.outputDir + '/') "
             "&& !self.outputDir.startsWith(self.inputDir + '/') && self.inputDir != '/' && self.outputDir != '/'",
             "spec.inputDir and spec.outputDir must differ and neither may be inside the other (nor be /)",
             lambda s: "/" not in (s["inputDir"], s["outputDir"]) and _not_nested(s["inputDir"], s["outputDir"]),
             field_path=".outputDir"),
        Rule("self.replicas >= 1", "spec.replicas must be at least 1",
             lambda s: s["replicas"] >= 1, field_path=".replicas"),
        Rule("self.replicas <= 1 || (!has(self.template.spec.hostname) && !has(self.template.spec.subdomain))",
             "spec.template.spec.hostname and subdomain are set by the operator when spec.replicas is more than 1 "
             "(worker i is <job>-<i>.<service>): remove them",
             lambda s: s["replicas"] <= 1 or not ({"hostname", "subdomain"} & set(s["template"].get("spec") or {})),
             field_path=".template.spec"),
        Rule("!has(self.output) || !((has(self.output.volumePerWorker) && self.output.volumePerWorker) || "
             "(has(self.output.perWorker) && self.output.perWorker)) || self.engine == 'JobSet'",
             "spec.output.volumePerWorker and perWorker need spec.engine: JobSet (each worker is its own replicated "
             "job with its own volume; an Indexed Job's pods share one template, so one claim)",
             lambda s: not ((s.get("output") or {}).get("volumePerWorker") or (s.get("output") or {}).get("perWorker"))
             or s.get("engine", "Job") == "JobSet", field_path=".output"),
        Rule("!has(self.output) || !has(self.output.perWorker) || !self.output.perWorker || "
             "!has(self.output.publish) || self.output.publish != 'Continuous'",
             "spec.output.perWorker is published OnCompletion: live sealing of each worker's own checkpoints is "
             "not supported yet (set output.publish: OnCompletion)",
             lambda s: not (s.get("output") or {}).get("perWorker") or (s.get("output") or {}).get("publish") != "Continuous",
             field_path=".output.publish"),
        Rule("!has(self.output) || !((has(self.output.volumePerWorker) && self.output.volumePerWorker) || "
             f"(has(self.output.perWorker) && self.output.perWorker)) || self.replicas <= {MAX_WORKER_VOLUMES}",
             f"spec.replicas must be at most {MAX_WORKER_VOLUMES} with spec.output.volumePerWorker or perWorker "
             "(each worker is a replicated job of the one JobSet object, with its own pod template)",
             lambda s: not ((s.get("output") or {}).get("volumePerWorker") or (s.get("output") or {}).get("perWorker"))
             or s.get("replicas", 1) <= MAX_WORKER_VOLUMES, field_path=".replicas"),
        Rule("!has(self.output) || !has(self.output.publish) || self.output.publish != 'Continuous' || "
             "!has(self.template.spec.shareProcessNamespace) || !self.template.spec.shareProcessNamespace",
             "spec.template.spec.shareProcessNamespace must not be true with spec.output.publish: Continuous: the "
             "training code could then write into the live-sealing sidecar's output, the channel the operator "
             "believes about what was sealed (docs/guarantees.md)",
             lambda s: (s.get("output") or {}).get("publish") != "Continuous"
             or not ((s.get("template") or {}).get("spec") or {}).get("shareProcessNamespace"),
             field_path=".template.spec.shareProcessNamespace"),
        Rule("!has(self.output) || !has(self.output.publish) || self.output.publish != 'Continuous' || "
             "!has(self.template.spec.hostPID) || !self.template.spec.hostPID",
             "spec.template.spec.hostPID must not be true with spec.output.publish: Continuous: the training code "
             "could then write into the live-sealing sidecar's output, the channel the operator believes about "
             "what was sealed (docs/guarantees.md)",
             lambda s: (s.get("output") or {}).get("publish") != "Continuous"
             or not ((s.get("template") or {}).get("spec") or {}).get("hostPID"),
             field_path=".template.spec.hostPID"),
        Rule("!has(self.output) || !has(self.output.volumePerWorker) || !self.output.volumePerWorker || "
             "self.replicas >= 2",
             "spec.output.volumePerWorker needs spec.replicas of 2 or more: one worker has nothing to assemble "
             "(leave it out)",
             lambda s: not (s.get("output") or {}).get("volumePerWorker") or s.get("replicas", 1) >= 2,
             field_path=".output.volumePerWorker"),
    )

    checkpoints: list[CheckpointRef] = Field(
        default_factory=list, max_length=MAX_INPUTS, json_schema_extra={"default": []},
        description="Input checkpoints, each mounted read-only at <inputDir>/<name>.")
    # The CRD defaults `output` to {} so that the API server fills in its fields' defaults too,
    # and stores what the model sees.
    output: OutputSpec = Field(default_factory=OutputSpec, json_schema_extra={"default": {}},
                               description="The output volume and its snapshot.")
    inputDir: Path = Field("/input-checkpoint", description="Where inputs are mounted (CHECKPOINT_INPUT_DIR).")
    outputDir: Path = Field("/output-checkpoint", description="Where the code writes checkpoints (CHECKPOINT_OUTPUT_DIR).")
    replicas: int = Field(1, le=MAX_REPLICAS, description=(
        "Number of worker pods (nodes). More than 1: a distributed job: the workers share one ReadWriteMany output "
        "volume, reach each other through a headless Service (worker i is <job>-<i>.<service>, or "
        "<jobset>-node-0-<i>.<jobset> with engine JobSet), get the rendezvous variables of torchrun (PET_*), "
        "init_process_group (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK) and JAX (JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID), and fail, restart and succeed as a group."))
    nprocPerNode: int = Field(1, ge=1, le=MAX_NPROC_PER_NODE, description=(
        "Processes per worker pod that torchrun starts (PET_NPROC_PER_NODE; one per GPU). WORLD_SIZE and RANK "
        "count pods (one process each); torchrun gives each of its processes its own RANK and "
        "WORLD_SIZE = replicas x nprocPerNode."))
    engine: Engine = Field("Job", description=(
        "What runs the workers: Job (a batch/v1 Indexed Job; the operator restarts the group) or JobSet (a "
        "jobset.x-k8s.io/v1alpha2 JobSet, which restarts the group itself; needs JobSet installed)."))
    backoffLimit: Optional[int] = Field(None, ge=0, le=10000, description=(
        "Retries before the job counts as failed (default 6, as a Job's). With more than one replica, or with "
        "engine JobSet, each retry restarts the whole group: every worker is stopped and all start again."))
    activeDeadlineSeconds: Optional[int] = Field(None, ge=1, le=INT64_MAX, description=(
        "Time limit in seconds: of the whole job with engine Job (a restarted group gets what is left), of each "
        "attempt with engine JobSet."))
    template: PodTemplate = Field(description="Pod template of the training workers.")


class RetiredCheckpoint(ApiModel):
    path: str = Field(max_length=4096, description="The output directory of a Checkpoint that retention deleted.")
    digest: str = Field(max_length=128, description="Its digest (the directory is removed only if it still holds it).")


class LiveStatus(ApiModel):
    """Live sealing (publish: Continuous)."""

    sealedCount: Optional[Count] = Field(None, description="Checkpoints sealed while the job ran.")
    lastSealTime: Optional[str] = Field(None, max_length=64, description="When the last one was sealed.")
    retired: Optional[list[RetiredCheckpoint]] = Field(
        None, max_length=MAX_RETIRED_LISTED,
        description="Deleted by retention, their directories not yet removed from the output volume.")
    retiredPaths: Optional[list[Annotated[str, Field(max_length=4096)]]] = Field(
        None, max_length=MAX_RETIRED_PATHS,
        description="Directories whose Checkpoint was deleted and that are no longer in `retired` (removed from the "
                    "output volume, or past its bound), oldest first: a directory written again under one of these "
                    f"names is never published (the name was the deleted Checkpoint's). At most {MAX_RETIRED_PATHS} "
                    f"names and {MAX_RETIRED_PATHS_BYTES // 1024} KiB of them; past that the oldest are forgotten "
                    "(one RetiredNotTracked warning).")


class WorkerFailure(ApiModel):
    """The worker that failed first in an attempt of a distributed job (the others were stopped)."""

    attempt: Count = Field(description="The attempt's index: 0 = the first run, then one per group restart (with "
                                       "output.volumePerWorker one per preemption too); messages count attempts "
                                       "from 1, so index 1 is `attempt 2`.")
    index: Optional[Count] = Field(None, description="The worker's index (its completion index).")
    pod: Optional[Name] = Field(None, description="The worker's pod.")
    message: Message = Field(description="Why it failed (exit code, OOMKilled, evicted, ...).")


class GroupResume(ApiModel):
    """What the latest group restart of a job with a volume per worker resumes from: the checkpoint
    complete over every worker's volume, copied into each (CHECKPOINT_RESUME_PATH)."""

    attempt: Count = Field(description="The index of the attempt that starts from it, as workerFailure.attempt "
                                       "counts (1: the second run, which messages call `attempt 2`).")
    directory: Optional[Path] = Field(None, description="The checkpoint's directory in the output (none: no "
                                                        "checkpoint was complete over the workers' volumes).")
    digest: Optional[Digest] = Field(None, description="Digest (sha256 of the manifest) of the copy resumed from.")
    step: Optional[Count] = Field(None, description="Its step.")
    message: Message = Field(description="What the resume step did.")


class TrainingJobStatus(ApiModel):
    """Observed state of a TrainingJob, written by the operator."""

    phase: Optional[TrainingJobPhase] = Field(
        None, description="Pending, Queued, Running, Snapshotting, Succeeded or Failed.")
    message: Optional[Message] = Field(None, description="Why the job is in this phase.")
    jobName: Optional[Name] = Field(None, description="The batch/v1 Job or the JobSet running the pods.")
    rendezvous: Optional[Name] = Field(None, description="Where worker 0 listens (MASTER_ADDR:MASTER_PORT).")
    restarts: Optional[Count] = Field(None, description="Group restarts so far (every worker stopped and "
                                                            "started again after one failed).")
    preemptions: Optional[Count] = Field(None, description="Times the running workload was suspended (Kueue "
                                                               "preemption) and queued again.")
    suspendTransition: Optional[Timestamp] = Field(
        None, description="The lastTransitionTime of the workload's Suspended condition at its latest resume seen: a "
                          "later one is a preemption undone before the operator looked, counted once.")
    workerFailure: Optional[WorkerFailure] = Field(None, description="The worker that failed first in the latest "
                                                                     "failed attempt, and why.")
    resume: Optional[GroupResume] = Field(None, description="output.volumePerWorker: the checkpoint the latest "
                                                           "group restart resumes every worker from.")
    resumePodUid: Optional[Uid] = Field(
        None, description="UID of the resume pod (between two attempts) the operator created, recorded before its "
                          "result is read.")
    unionPodUid: Optional[Uid] = Field(
        None, description="output.volumePerWorker with publish: Continuous: UID of the pod that assembles a "
                          "directory from the workers' sealed parts while the job runs, recorded before its result "
                          "is read.")
    outputClaim: Optional[Name] = Field(None, description="The PersistentVolumeClaim of the output directory.")
    snapshotPod: Optional[Name] = Field(None, description="The pod that scans the output.")
    snapshotPodUid: Optional[Uid] = Field(
        None, description="UID of the snapshot pod the operator created, recorded before its result is read: a pod of "
                          "that name with another UID is not trusted.")
    jobUid: Optional[Uid] = Field(
        None, description="UID of the Job (of the current attempt) or JobSet the operator created: only pods it "
                          "controls (a JobSet: its child Jobs) are this job's workers.")
    inputs: Optional[list[PinnedCheckpoint]] = Field(None, description="Inputs as resolved and pinned at start.")
    inputCount: Optional[Count] = Field(None, description="Number of inputs (for kubectl get).")
    restoredInputs: Optional[Count] = Field(
        None, description="Volumes restored from VolumeSnapshots for each pod (inputs kept in snapshots): the pods "
                          "that hold them are deleted when the job's pods are over, and the volumes with them.")
    outputCheckpoints: Optional[list[Name]] = Field(None, description="Checkpoints created from the output.")
    outputCount: Optional[Count] = Field(None, description="Number of output checkpoints (for kubectl get).")
    jobSucceeded: Optional[bool] = Field(None, description="Whether the pods succeeded (recorded before the snapshot).")
    jobFailure: Optional[Message] = Field(None, description="Why the pods failed (the Job's condition; an input whose "
                                                        "download was refused, with the agent's error).")
    snapshotStartTime: Optional[Timestamp] = Field(None, description="When the snapshot of the output started.")
    snapshotAttempts: Optional[Count] = Field(None, description="Failed snapshot pods so far (retried up to 3 times).")
    snapshotRetryAt: Optional[Timestamp] = Field(
        None, description="After a failed snapshot pod: when the next attempt starts (a backoff, so that a short "
                          "outage of the store does not use up the attempts).")
    skippedCount: Optional[Count] = Field(None, description="Entries of the output the snapshot skipped (see events).")
    publish: Optional[PublishMode] = Field(None, description="How the output is published (as resolved at start).")
    live: Optional[LiveStatus] = Field(None, description="Live sealing, with publish: Continuous.")
    volumeSnapshots: Optional[list[VolumeSnapshotRecord]] = Field(
        None, max_length=MAX_VOLUME_SNAPSHOT_RECORDS,
        description="VolumeSnapshots the operator created of the output (storage.volume.snapshotClassName), by UID.")
    startTime: Optional[Timestamp] = Field(None, description="When the pods were started.")
    completionTime: Optional[Timestamp] = Field(None, description="When the job finished.")
    conditions: Optional[list[Condition]] = Field(None, description="Standard conditions (Ready).")
    observedGeneration: Optional[Count] = Field(None, description="The .metadata.generation last reconciled.")


def _takes_itself(obj: dict[str, Any]) -> bool:
    name = (obj.get("metadata") or {}).get("name")
    return any(ref.get("fromTrainingJob") == name for ref in (obj.get("spec") or {}).get("checkpoints") or [])


# Rules on the whole object (the root of the CRD's schema: the one place where CEL can read
# metadata.name).
NAME_WITHOUT_DOT = Rule(
    "!self.metadata.name.contains('.')",
    "metadata.name of a TrainingJob must not contain '.': it is the prefix of its Checkpoints' names "
    "(<name>.<directory>, see docs) and names its Service; use '-'",
    lambda o: "." not in str((o.get("metadata") or {}).get("name") or ""))
NOT_ITS_OWN_INPUT = Rule(
    "!has(self.spec.checkpoints) || self.spec.checkpoints.all(c, !has(c.fromTrainingJob) || "
    "c.fromTrainingJob != self.metadata.name)",
    "spec.checkpoints[].fromTrainingJob must not name the TrainingJob itself: a job cannot take its own "
    "output as its input (it would wait for itself forever)",
    lambda o: not _takes_itself(o), field_path=".spec.checkpoints")
TRAINING_JOB_RULES = (NAME_WITHOUT_DOT, NOT_ITS_OWN_INPUT)


class TrainingJobHead(ApiObject):
    """A TrainingJob without its spec: what can still be read, failed or deleted when the spec
    does not parse (stored before a CRD upgrade tightened a rule; reconcile/objects.py)."""

    kind: Literal["TrainingJob"] = "TrainingJob"
    status: TrainingJobStatus = Field(default_factory=TrainingJobStatus)

    @property
    def phase(self) -> TrainingJobPhase:
        return self.status.phase or TrainingJobPhase.PENDING

    @property
    def is_finished(self) -> bool:
        return self.phase.is_finished

    def ready_reason(self) -> Optional[str]:
        return ready_reason(self.status.conditions)


class TrainingJob(TrainingJobHead):
    # The operator refuses a job that takes itself (one stored before the CRD had the rule fails
    # with its message instead of waiting forever); a name with a '.' only at creation (the API
    # server's rule), so a job stored before that rule keeps running under its name.
    cel_rules = (NOT_ITS_OWN_INPUT,)

    spec: TrainingJobSpec

    @property
    def output_enabled(self) -> bool:
        return self.spec.output.enabled

    @property
    def publishes_live(self) -> bool:
        """Live sealing: as recorded when the job started (the operator's default may change meanwhile)."""
        return self.output_enabled and self.status.publish == "Continuous"
