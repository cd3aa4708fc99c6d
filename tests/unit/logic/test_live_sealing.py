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


def sealed_line(path="step-1", digest=DIGEST, **extra):
    return json.dumps({"event": "sealed", "checkpoint": {"path": path, "digest": digest, "sizeBytes": 3,
                                                         "fileCount": 1, "format": "unknown", "step": 1,
                                                         "resumable": False, **extra}})


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
        "2026-01-01T00:00:00.123Z " + json.dumps({"event": "warning", "message": "hello"}),
        json.dumps({"event": "changed", "path": "step-1", "digest": DIGEST}),
    ])
    events = live_sealing.parse_log(text, sealed_prefix=prefix)
    assert [m.path for m in events.sealed] == ["step-1"]
    assert events.uris == {"step-1": good_uri} and events.reasons["step-1"] == "complete: x"
    assert events.warnings == ["hello"] and events.last_timestamp == "2026-01-01T00:00:00.123Z"
    assert set(events.changed) == {"step-1"}


def test_a_removal_is_final_across_pods():
    first = live_sealing.parse_log(sealed_line())
    second = live_sealing.parse_log(json.dumps({"event": "removed", "path": "step-1", "digest": DIGEST}))
    merged = live_sealing.merge(live_sealing.merge(live_sealing.LogEvents(), first), second)
    assert merged.sealed == [] and merged.removed == {("step-1", DIGEST)}


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
