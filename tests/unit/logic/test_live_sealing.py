"""The operator's side of live sealing as pure functions: the sidecar it adds, the log lines it
trusts, selection from a running producer, the removal annotation."""

from __future__ import annotations

import json

from checkpoint_operator.agent import live_watch
from checkpoint_operator.api.trainingjob import CheckpointRef, TrainingJob, TrainingJobPhase
from checkpoint_operator.cli import build_parser
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import live_sealing, workload
from checkpoint_operator.logic.inputs import CheckpointInfo, TrainingJobInfo, resolve_ref, select_output
from checkpoint_operator.api.checkpoint import CheckpointPhase
from checkpoint_operator.storage import store_for
from factories import training_job

DIGEST = "sha256:" + "ab" * 32


def line(kind, **fields):
    """One line of the sidecar's log, as the agent writes it (protocol/channel.py: kind and version first)."""
    return json.dumps({"kind": kind, "version": 1, **fields}, separators=(",", ":"))


def sealed_line(path="step-1", digest=DIGEST, **extra):
    return line("sealed", checkpoint={"path": path, "digest": digest, "sizeBytes": 3, "fileCount": 1,
                                      "format": "unknown", "step": 1, "resumable": False, **extra})


def test_the_constants_the_sidecar_and_the_operator_share_agree():
    assert live_sealing.REMOVE_ANNOTATION == live_watch.REMOVE_ANNOTATION
    from checkpoint_operator.agent.live_sealing import LIVE_DIR
    assert live_sealing.LIVE_DIR == LIVE_DIR


def test_a_continuous_job_gets_the_sidecar_its_volume_and_the_resume_path():
    tj = TrainingJob.model_validate(training_job(output={"publish": "Continuous"}, replicas=2,
                                                 template={"spec": {"securityContext": {"fsGroup": 7}, "containers": [
                                                     {"name": "trainer", "image": "t", "securityContext": {
                                                         "runAsUser": 1000, "runAsGroup": 1000}}]}}))
    config = OperatorConfig(agent_image="op:1")
    sidecar = workload.build_live_sidecar(tj, config, None, [])
    built = workload.build_workload(tj, [], store_for(config).input_volumes(tj, []), sidecar).job
    spec = built["spec"]["template"]["spec"]
    side = spec["initContainers"][0]
    assert (side["name"], side["restartPolicy"], side["image"]) == ("ckpt-live", "Always", "op:1")
    assert side["securityContext"] == {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True,
                                       "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    args = build_parser().parse_args(side["command"][1:])
    assert (args.dir, args.shared, args.upload_to, args.annotations_file) == (
        "/output-checkpoint", True, None, "/ckpt-live-meta/annotations")
    assert {m["mountPath"] for m in side["volumeMounts"]} == {"/output-checkpoint", "/ckpt-live-meta"}
    assert {"name": "ckpt-live-meta", "downwardAPI": {"items": [
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}} in spec["volumes"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["CHECKPOINT_RESUME_PATH"] == "/output-checkpoint/.ckpt-live/resume"


def test_the_s3_store_s_sidecar_uploads_under_the_job_s_prefix():
    config = OperatorConfig(storage_type="s3", s3_bucket="b")
    tj = TrainingJob.model_validate(training_job(output={"publish": "Continuous"}))
    store = store_for(config)
    side, _ = workload.build_live_sidecar(tj, config, store.live_upload_prefix(tj), store.agent_env())
    args = build_parser().parse_args(side["command"][1:])
    assert args.upload_to == store.live_upload_prefix(tj) and args.upload_concurrency == 2
    assert "--reuse-sealed" in store.snapshot_command(tj.model_copy(update={"status": tj.status.model_copy(
        update={"publish": "Continuous"})}), "/o")


def test_log_lines_are_checked_before_they_are_trusted():
    prefix = "s3://b/p/ns/job-1/sealed/"
    good_uri = f"{prefix}step-1/{'ab' * 32}/"
    text = "\n".join([
        "some output of the agent",
        sealed_line(uri=good_uri, sealReason="complete: x"),
        sealed_line(path="../escape", uri=good_uri),
        sealed_line(path="step-2", digest="sha256:short"),
        sealed_line(path="step-3", uri="s3://other-bucket/anything/"),
        "2026-01-01T00:00:00.123Z " + line("warning", message="hello"),
        line("changed", path="step-1", digest=DIGEST),
        json.dumps({"event": "sealed", "checkpoint": {"path": "step-4", "digest": DIGEST}}),  # no kind: not a line
        sealed_line(path="step-5", uri=f"{prefix}step-5/{'ab' * 32}/").replace('"version":1', '"version":2'),
    ])
    events = live_sealing.parse_log(text, sealed_prefix=prefix)
    assert [m.path for m in events.sealed] == ["step-1"]
    assert events.uris == {"step-1": good_uri} and events.reasons["step-1"] == "complete: x"
    assert events.warnings == ["hello"] and events.last_timestamp == "2026-01-01T00:00:00.123Z"
    assert set(events.changed) == {"step-1"}
    assert events.refused == 2  # the short digest (the model refuses it) and the newer version


def test_a_removal_is_final_across_pods():
    first = live_sealing.parse_log(sealed_line())
    second = live_sealing.parse_log(line("removed", path="step-1", digest=DIGEST))
    merged = live_sealing.merge(live_sealing.merge(live_sealing.LogEvents(), first), second)
    assert merged.sealed == [] and merged.removed == {("step-1", DIGEST)}


def stamped(second, nanos, text):
    return f"2026-01-01T00:00:{second:02d}.{nanos:09d}Z {text}".replace(".000000000Z", "Z")


def test_the_log_is_read_in_pieces_from_where_the_last_read_ended():
    """sinceTime goes to the kubelet in whole seconds: a read repeats up to a second of lines, and
    the cursor skips those already taken, however their timestamps are written."""
    log = [stamped(1, 0, "a"), stamped(1, 500_000_000, "b"), stamped(1, 500_000_000, "c"), stamped(2, 10, "d")]
    first = live_sealing.new_lines("\n".join(log[:2]) + "\n", live_sealing.LogCursor(), limit_bytes=1 << 20)
    assert first.text == "a\nb" and first.cursor.since_time() == "2026-01-01T00:00:01Z"
    # The next read starts at the whole second: a, b again, then what is new (c has b's very timestamp).
    second = live_sealing.new_lines("\n".join(log) + "\n", first.cursor, limit_bytes=1 << 20)
    assert second.text == "c\nd" and second.cursor.since_time() == "2026-01-01T00:00:02Z"
    third = live_sealing.new_lines(log[3] + "\n", second.cursor, limit_bytes=1 << 20)
    assert third.text == "" and third.cursor == second.cursor


def test_a_line_the_byte_limit_cuts_is_read_next_time_and_a_flood_cannot_stall_the_reader():
    text = stamped(1, 0, "a") + "\n" + stamped(1, 1, "partial li")
    piece = live_sealing.new_lines(text, live_sealing.LogCursor(), limit_bytes=len(text))
    assert piece.text == "a" and piece.warning is None
    # More than the limit within one second: nothing new fits in a read, so the reader moves on
    # a second (what it skips the end-of-job snapshot finds) instead of reading it forever.
    flood = stamped(1, 0, "a") + "\n" + stamped(1, 0, "x" * 100)
    stuck = live_sealing.new_lines(flood, piece.cursor, limit_bytes=len(flood))
    assert stuck.text == "" and stuck.cursor.since_time() == "2026-01-01T00:00:02Z"
    assert "more than" in stuck.warning and "within one second" in stuck.warning
    first_read = live_sealing.new_lines(stamped(5, 0, "y" * 100), live_sealing.LogCursor(), limit_bytes=60)
    assert first_read.cursor.since_time() == "2026-01-01T00:00:06Z"


def test_removal_annotation_asks_only_for_directories_whose_checkpoint_is_gone():
    value = json.loads(live_sealing.removal_annotation([("a", "d1"), ("b", "d2")], [("b", "d2")]))
    assert value == [{"path": "a", "digest": "d1"}]


def info(name, step, *, metrics=(), phase=CheckpointPhase.READY, complete=None):
    return CheckpointInfo(name=name, uid=f"u-{name}", phase=phase, step=step, producer_name="p", producer_uid="pu",
                          directory=name, complete=complete, metrics=tuple(metrics))


class Lookup:
    def __init__(self, producer, outputs):
        self.producer, self.outputs = producer, outputs

    def training_job(self, namespace, name):
        return self.producer

    def checkpoints_of(self, namespace, uid):
        return self.outputs


def test_select_best_by_the_producer_s_metric():
    outputs = [info("s1", 1, metrics=[("eval_loss", 0.5)]), info("s2", 2, metrics=[("eval_loss", 0.3)]),
               info("s3", 3), info("s4", 4, metrics=[("eval_loss", 0.3)], complete=False)]
    assert select_output(outputs, "best", ("eval_loss", "min")).name == "s2"
    assert select_output(outputs, "best", ("eval_loss", "max")).name == "s1"
    assert select_output(outputs, "best", ("accuracy", "max")) is None


def test_latest_of_a_running_producer_depends_on_how_it_publishes_and_on_wait():
    outputs = [info("s1", 1), info("s2", 2)]
    live_producer = TrainingJobInfo("p", "pu", TrainingJobPhase.RUNNING, publishes_live=True)
    at_end = TrainingJobInfo("p", "pu", TrainingJobPhase.RUNNING, publishes_live=False)
    ref = CheckpointRef(fromTrainingJob="p")
    assert resolve_ref(ref, "ns", Lookup(live_producer, outputs)).name == "s2"
    assert resolve_ref(ref, "ns", Lookup(at_end, outputs)).reason == "WaitingForTrainingJob"
    waiting = resolve_ref(CheckpointRef(fromTrainingJob="p", wait="Finished"), "ns", Lookup(live_producer, outputs))
    assert waiting.reason == "WaitingForTrainingJob" and "has not finished" in waiting.message
    none_yet = resolve_ref(ref, "ns", Lookup(live_producer, []))
    assert none_yet.reason == "WaitingForTrainingJob" and "no such Ready checkpoint yet" in none_yet.message
    final = resolve_ref(CheckpointRef(fromTrainingJob="p", select="final"), "ns", Lookup(live_producer, outputs))
    assert final.reason == "WaitingForTrainingJob"
    no_metric = resolve_ref(CheckpointRef(fromTrainingJob="p", select="best"), "ns", Lookup(live_producer, outputs))
    assert no_metric.reason == "NoBestMetric" and no_metric.terminal


def test_a_sealed_line_that_says_synced_is_recorded_with_its_digest():
    """agent watch --sync: the sealed checkpoint says "synced"; only those are snapshotted while the job runs."""
    events = live_sealing.parse_log(sealed_line("step-1", synced="syncfs") + "\n" + sealed_line("step-2"))
    assert events.synced == {("step-1", DIGEST)}
    merged = live_sealing.merge(live_sealing.LogEvents(), events)
    assert merged.synced == {("step-1", DIGEST)}


def test_live_sealing_refuses_a_template_that_could_write_the_sidecar_s_channels():
    """hostile7 E2, H1: with its processes shared, the trainer could print into the sidecar's output (what
    the operator believes sealed); a template carrying ckpt.dev/live-remove would ask the sidecar to remove
    sealed directories. Refused when the sidecar is built (also when Continuous is the operator's default,
    which the CRD cannot know), one line naming the field."""
    import pytest
    config = OperatorConfig(agent_image="op:1")
    container = [{"name": "trainer", "image": "t"}]
    shared = TrainingJob.model_validate(training_job(template={"spec": {"shareProcessNamespace": True,
                                                                        "containers": container}}))
    with pytest.raises(workload.InvalidSpec, match="spec.template.spec.shareProcessNamespace must not be true"):
        workload.build_live_sidecar(shared, config, None, [])
    host = TrainingJob.model_validate(training_job(template={"spec": {"hostPID": True, "containers": container}}))
    with pytest.raises(workload.InvalidSpec, match="spec.template.spec.hostPID must not be true"):  # hostile8 P3
        workload.build_live_sidecar(host, config, None, [])
    asking = TrainingJob.model_validate(training_job(template={
        "metadata": {"annotations": {live_sealing.REMOVE_ANNOTATION: "[]"}}, "spec": {"containers": container}}))
    with pytest.raises(workload.InvalidSpec, match="must not have ckpt.dev/live-remove"):
        workload.build_live_sidecar(asking, config, None, [])
    plain = TrainingJob.model_validate(training_job(template={"metadata": {"annotations": {"team": "a"}},
                                                              "spec": {"containers": container}}))
    assert workload.build_live_sidecar(plain, config, None, [])


def test_a_pod_s_sidecar_is_the_operator_s_only_if_it_is_the_one_built_into_the_template():
    """hostile8 F1: owner references and labels are whatever a pod's creator wrote; the sidecar's image,
    command, environment and claims are compared with the templates the operator built. An admission
    plugin's ServiceAccount token mount does not count; shared processes never pass."""
    import copy
    tj = TrainingJob.model_validate(training_job(output={"publish": "Continuous"}))
    config = OperatorConfig(agent_image="op:1")
    built = workload.build_workload(tj, [], store_for(config).input_volumes(tj, []),
                                    workload.build_live_sidecar(tj, config, None, [])).job
    expected = live_sealing.built_sidecars([built])
    assert len(expected) == 1
    pod = copy.deepcopy(built["spec"]["template"]["spec"])
    pod["volumes"].append({"name": "kube-api-access-x", "projected": {"sources": []}})
    for c in pod["initContainers"] + pod["containers"]:
        c.setdefault("volumeMounts", []).append({"name": "kube-api-access-x", "mountPath": "/var/run/secrets/x"})
    assert live_sealing.sidecar_identity(pod) in expected
    forged = copy.deepcopy(pod)
    forged["initContainers"][0]["command"] = ["python", "-c", "print('{\"kind\": \"sealed\"}')"]
    assert live_sealing.sidecar_identity(forged) not in expected
    elsewhere = copy.deepcopy(pod)
    next(v for v in elsewhere["volumes"] if "persistentVolumeClaim" in v)["persistentVolumeClaim"]["claimName"] = "mine"
    assert live_sealing.sidecar_identity(elsewhere) not in expected
    for field in ("shareProcessNamespace", "hostPID"):
        assert live_sealing.sidecar_identity({**pod, field: True}) is None
    assert live_sealing.sidecar_identity({**pod, "initContainers": []}) is None


def test_a_part_belongs_to_the_worker_of_the_template_its_sidecar_was_built_into():
    """hostile8 F4: with a volume per worker each replicated job's sidecar watches its own claim; a pod's
    worker is the one whose template its sidecar matches (the template's label, the operator's), never
    the pod's own label."""
    tj = TrainingJob.model_validate(training_job(replicas=2, engine="JobSet", output={
        "publish": "Continuous", "volumePerWorker": True}))
    config = OperatorConfig(agent_image="op:1")
    built = workload.build_workload(tj, [], store_for(config).input_volumes(tj, []),
                                    workload.build_live_sidecar(tj, config, None, [])).job
    workers = live_sealing.built_sidecar_workers([built])
    assert sorted(workers.values()) == [0, 1]
    templates = live_sealing.pod_templates(built)
    for index, template in enumerate(templates):
        assert workers[live_sealing.sidecar_identity(template["spec"])] == index


def test_an_indexed_job_s_pods_run_the_sidecar_built_into_its_template():
    """review4 F1: the Job controller adds JOB_COMPLETION_INDEX to every container of an Indexed Job's
    pods; that is not a forged sidecar (a 2-replica Continuous job's sidecars were all refused)."""
    from checkpoint_operator.local.jobs import build_job_pod
    tj = TrainingJob.model_validate(training_job(replicas=2, output={"publish": "Continuous"}))
    config = OperatorConfig(agent_image="op:1")
    built = workload.build_workload(tj, [], store_for(config).input_volumes(tj, []),
                                    workload.build_live_sidecar(tj, config, None, [])).job
    built["metadata"].update(name="j", namespace="ns", uid="u1")
    expected = live_sealing.built_sidecars([built])
    for index in (0, 1):
        pod = build_job_pod(built, index)
        sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == live_sealing.SIDECAR)
        assert {"name": "JOB_COMPLETION_INDEX", "value": str(index)} in sidecar["env"]
        assert live_sealing.sidecar_identity(pod["spec"]) in expected


IRSA_ENV = [{"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"},
            {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"}, {"name": "AWS_REGION", "value": "us-east-1"},
            {"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::111122223333:role/train"},
            {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"}]


def _built_live_pod():
    import copy
    tj = TrainingJob.model_validate(training_job(output={"publish": "Continuous"}))
    config = OperatorConfig(agent_image="ghcr.io/ckpt-dev/checkpoint-operator:1.0")
    built = workload.build_workload(tj, [], store_for(config).input_volumes(tj, []),
                                    workload.build_live_sidecar(tj, config, None, [])).job
    return live_sealing.built_sidecars([built]), copy.deepcopy(built["spec"]["template"]["spec"])


def _sidecar(pod):
    return next(c for c in pod["initContainers"] if c["name"] == live_sealing.SIDECAR)


def test_what_common_mutating_admission_adds_to_every_container_is_not_a_forged_sidecar():
    """hostile9 H9-6: EKS IRSA adds AWS_* variables and a token mount to every container, Datadog's
    admission DD_* variables, Kyverno's verifyImages pins the tag to its digest: the operator's own
    sidecar must still be recognised (live sealing published nothing on those clusters)."""
    expected, pod = _built_live_pod()
    for c in pod["initContainers"] + pod["containers"]:
        c["env"] = [*(c.get("env") or []), *IRSA_ENV, {"name": "DD_AGENT_HOST", "valueFrom": {"fieldRef": {
            "fieldPath": "status.hostIP"}}}]
        c.setdefault("volumeMounts", []).append({"name": "aws-iam-token", "readOnly": True,
                                                 "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount"})
    pod["volumes"].append({"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "sts.amazonaws.com", "path": "token"}}]}})
    _sidecar(pod)["image"] += "@sha256:" + "ab" * 32
    assert live_sealing.sidecar_identity(pod) in expected
    preloaded = {**pod, "initContainers": [{**_sidecar(pod), "env": [*_sidecar(pod)["env"],
                                                                      {"name": "LD_PRELOAD", "value": "/x.so"}]}]}
    assert live_sealing.sidecar_identity(preloaded) not in expected  # anything else still counts
    other_image = {**pod, "initContainers": [{**_sidecar(pod), "image": "evil/agent:1.0@sha256:" + "ab" * 32}]}
    assert live_sealing.sidecar_identity(other_image) not in expected


def test_a_sidecar_with_other_mounts_a_working_directory_or_hooks_is_not_the_one_built():
    """hostile9 H9-5: a copy of the built sidecar with an emptyDir nested over a checkpoint directory of
    the output or over the agent's code, its removal channel replaced, or a hook of its own, seals bytes
    of its creator's choosing: not the sidecar built."""
    expected, pod = _built_live_pod()
    assert live_sealing.sidecar_identity(pod) in expected
    forgeries = []
    for path in ("/output-checkpoint/checkpoint-7", "/usr/local/bin"):
        forged = {**pod, "volumes": [*pod["volumes"], {"name": "fake", "emptyDir": {}}],
                  "initContainers": [{**_sidecar(pod), "volumeMounts": [*_sidecar(pod)["volumeMounts"],
                                                                        {"name": "fake", "mountPath": path}]}]}
        forgeries.append(forged)
    channel = next((v for v in pod["volumes"] if "downwardAPI" in v), None)
    assert channel is not None, "the sidecar's removal channel is a downwardAPI volume"
    forgeries.append({**pod, "volumes": [v if v is not channel else {"name": v["name"], "emptyDir": {}}
                                         for v in pod["volumes"]]})
    forgeries.append({**pod, "initContainers": [{**_sidecar(pod), "workingDir": "/tmp"}]})
    forgeries.append({**pod, "initContainers": [{**_sidecar(pod), "lifecycle": {
        "postStart": {"exec": {"command": ["sh", "-c", "echo"]}}}}]})
    for forged in forgeries:
        assert live_sealing.sidecar_identity(forged) not in expected


# --- status.live.retired, bounded (hostile9 H9-7) ----------------------------------------------------

def _entries(n, start=0):
    return [(f"checkpoint-{i}", "sha256:" + "a" * 64) for i in range(start, start + n)]


def test_the_retired_list_never_grows_past_the_crd_s_limit_dropping_the_oldest():
    current = _entries(1000)
    bounded, dropped = live_sealing.bounded_retired(current, _entries(3, 1000), [], 1000)
    assert len(bounded) == 1000 and dropped == 3
    assert bounded[:2] == _entries(2, 3) and bounded[-3:] == _entries(3, 1000)  # the newest are all kept


def test_under_the_limit_nothing_is_dropped_and_nothing_is_listed_twice():
    bounded, dropped = live_sealing.bounded_retired(_entries(5), _entries(3, 3), [], 1000)
    assert bounded == _entries(6) and dropped == 0


def test_a_checkpoint_still_being_deleted_keeps_its_entry_past_older_ones():
    current = _entries(10)
    bounded, dropped = live_sealing.bounded_retired(current, _entries(2, 10), deleting=[current[0]], limit=10)
    assert dropped == 2 and current[0] in bounded and current[1] not in bounded and current[2] not in bounded
    assert len(bounded) == 10


def test_more_being_deleted_than_the_limit_still_fits_the_limit():
    bounded, dropped = live_sealing.bounded_retired(_entries(4), _entries(2, 4), deleting=_entries(6), limit=4)
    assert bounded == _entries(4, 2) and dropped == 2


def test_the_bound_s_warning_says_what_is_lost_in_one_line():
    message = live_sealing.retired_dropped_message(3, 1000)
    assert "at most 1000" in message and "3 oldest" in message and "published again" in message
    assert "\n" not in message


def test_a_retired_directory_that_could_not_be_removed_goes_behind_the_others_and_is_given_up_after_3(
        monkeypatch):
    """The annotation names the oldest retired directories (100): one never removable (a root trainer's
    files) held every newer one out for good. One that failed goes behind those that have not, fewest
    failures first; one that failed MAX_REMOVAL_FAILURES times is asked no more."""
    monkeypatch.setattr(live_sealing, "MAX_REMOVALS_ANNOTATED", 2)
    retired = [("a", "d1"), ("b", "d2"), ("c", "d3"), ("d", "d4")]

    def asked(failures):
        return [e["path"] for e in json.loads(live_sealing.removal_annotation(retired, [("d", "d4")], failures))]
    assert asked({}) == ["a", "b"]                              # before: a and b, whatever happens to them
    assert asked({("a", "d1"): 1, ("b", "d2"): 1}) == ["c", "a"]  # c gets its turn; then the fewest failures
    assert asked({("a", "d1"): 2, ("b", "d2"): 1, ("c", "d3"): 1}) == ["b", "c"]
    assert asked({("a", "d1"): 3, ("b", "d2"): 3, ("c", "d3"): 3}) == []  # given up: the annotation stops changing


def test_removal_failures_are_counted_only_for_entries_still_retired():
    counts = live_sealing.count_removal_failures({("gone", "d0"): 2, ("a", "d1"): 1}, [("a", "d1"), ("b", "d2"),
                                                                                      ("x", "d9")],
                                                 [("a", "d1"), ("b", "d2")])
    assert counts == {("a", "d1"): 2, ("b", "d2"): 1}
    message = live_sealing.not_removed_message({("a", "d1"): 3, ("b", "d2"): 1}, "could not remove a: EACCES")
    assert message.startswith("2 retired directories could not be removed by the sealing sidecar (the latest: "
                              "could not remove a: EACCES)")
    assert "1 that failed 3 times are asked no more" in message


def test_a_removal_that_failed_is_read_from_the_log_as_such_not_as_a_warning_of_its_own():
    text = "\n".join([line("warning", message="could not remove step-1: uid 0", notRemoved={"path": "step-1",
                                                                                            "digest": DIGEST}),
                      line("warning", message="other")])
    events = live_sealing.parse_log(text)
    assert events.not_removed == {("step-1", DIGEST): "could not remove step-1: uid 0"}
    assert events.warnings == ["other"]
    merged = live_sealing.merge(live_sealing.LogEvents(), events)
    assert merged.not_removed == events.not_removed


def test_a_retired_directory_found_again_with_other_bytes_is_said_once_for_all():
    """H10-1: what a removal that failed in part left (another digest under a retired name), or a
    checkpoint written again under that name: named in ONE warning, never published; the retired bytes
    themselves (a removal still pending) are not news."""
    retired = [("checkpoint-20", "sha256:a"), ("checkpoint-30", "sha256:b")]
    found = [("checkpoint-20", "sha256:c"), ("checkpoint-30", "sha256:b"), ("checkpoint-40", "sha256:d"),
             ("checkpoint-20", "sha256:c")]
    assert live_sealing.retired_found_again(found, retired) == ["checkpoint-20"]
    message = live_sealing.found_again_message(["checkpoint-20"])
    assert "1 directory" in message and "checkpoint-20" in message and "never published again" in message
    many = live_sealing.found_again_message([f"step-{i}" for i in range(8)], shown=5)
    assert "8 directories" in many and "step-4 and 3 more" in many and "step-5" not in many


def test_a_union_whose_create_failed_is_no_longer_kept_sealed_for_the_resume_step():
    """Also noticed in hostile10: LiveMemory.publishing was never cleared after a failed create (the
    name taken meanwhile): the resume step kept that step's parts read-only though it has no Checkpoint."""
    from checkpoint_operator.logic import group_resume
    memory = live_sealing.LiveMemory()
    memory.creating("step-2")
    memory.creating("step-3")
    memory.created("step-2", None)
    memory.created("step-3", {"metadata": {"name": "t.step-3"}})
    assert memory.publishing == {"step-3"}
    assert "step-2" not in group_resume.kept_sealed([], [], memory.publishing, None)


def test_never_again_is_the_retired_list_and_the_removed_names_whatever_their_bytes():
    """trust2 A: a retired directory the sidecar removed leaves `retired` for `retiredPaths`; both are
    never published again, and anything found under a removed name is "found again" (one warning)."""
    from checkpoint_operator.api.trainingjob import LiveStatus, RetiredCheckpoint
    live = LiveStatus(retired=[RetiredCheckpoint(path="checkpoint-30", digest="sha256:b")],
                      retiredPaths=["checkpoint-10", "checkpoint-30"])
    assert live_sealing.never_again(live) == [("checkpoint-30", "sha256:b"), ("checkpoint-10", "")]
    assert live_sealing.never_again(None) == []
    found = [("checkpoint-10", "sha256:c"), ("checkpoint-30", "sha256:b"), ("checkpoint-40", "sha256:d")]
    assert live_sealing.retired_found_again(found, live_sealing.never_again(live)) == ["checkpoint-10"]


def test_the_removed_names_are_bounded_by_count_and_bytes_dropping_the_oldest():
    """status.live.retiredPaths never outgrows the CRD's maxItems (a longer list is refused, and every
    status write with it) nor its byte budget (one etcd object); the newest are kept."""
    names = [f"checkpoint-{i}" for i in range(2500)]
    kept, dropped = live_sealing.remember_retired_paths([], names, max_items=2000, max_bytes=1 << 20)
    assert kept == names[500:] and dropped == 500
    long = ["x" * 4000 + str(i) for i in range(40)]  # 40 names of 4 KB: 160 KB
    kept, dropped = live_sealing.remember_retired_paths(["step-1"], long, max_items=2000, max_bytes=64 * 1024)
    assert sum(len(p) for p in kept) <= 64 * 1024 and kept == long[-len(kept):] and dropped == 41 - len(kept)
    kept, dropped = live_sealing.remember_retired_paths(["a", "b", "c"], ["b", "d"], max_items=10, max_bytes=100)
    assert (kept, dropped) == (["a", "c", "b", "d"], 0), "no name twice; one added again moves to the end"
    message = live_sealing.retired_paths_dropped_message(3, 2000, 64 * 1024)
    assert "3 oldest" in message and "deleted Checkpoint's name" in message and "\n" not in message


def test_the_crd_bounds_the_removed_names():
    from checkpoint_operator.api.trainingjob import MAX_RETIRED_PATHS, LiveStatus
    import pydantic
    import pytest
    with pytest.raises(pydantic.ValidationError):
        LiveStatus(retiredPaths=[f"s-{i}" for i in range(MAX_RETIRED_PATHS + 1)])
