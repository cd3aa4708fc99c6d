"""The TrainingJob's decisions (logic/trainingjob_flow.py, logic/protection.py), without an API."""

from checkpoint_operator.api.trainingjob import TrainingJob, TrainingJobPhase, TrainingJobStatus
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import engines
from checkpoint_operator.logic import trainingjob_flow as flow
from checkpoint_operator.logic.agent_pods import PodProblem, downloaded_input, pod_failure, pod_problem
from checkpoint_operator.logic.inputs import InputWait
from checkpoint_operator.logic.protection import blocking_users, label_patch, used_by_status, used_uids
from checkpoint_operator.logic.results import Fail, Wait
from checkpoint_operator.protocol.errors import REFUSED_EXIT_CODE
from checkpoint_operator.logic.status import StatusChange, apply_change, should_post_event, status_patch
from factories import training_job


def tj(**kw) -> TrainingJob:
    body = training_job("t", **{k: v for k, v in kw.items() if k != "status"})
    if "status" in kw:
        body["status"] = kw["status"]
    return TrainingJob.model_validate(body)


def job(**status):
    return {"metadata": {"name": "t"}, "status": status}


def test_job_outcome_waits_for_the_final_condition_and_no_running_pod():
    def outcome(**status):
        return engines.JOB.read(job(**status)).outcome
    assert outcome(active=1) is None
    assert outcome(conditions=[{"type": "FailureTarget", "status": "True"}]) is None
    assert outcome(terminating=1, conditions=[{"type": "Failed", "status": "True"}]) is None
    assert outcome(conditions=[{"type": "Complete", "status": "True"}]) is True
    assert outcome(conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]) is False
    assert flow.job_failure_message(None) == "was deleted before it finished"


def test_after_the_job_a_snapshot_follows_unless_there_is_no_output():
    change, snapshot = flow.after_job(tj(), True, "succeeded", "now")
    assert snapshot and change.phase == "Snapshotting" and change.fields.jobSucceeded is True
    change, snapshot = flow.after_job(tj(output={"enabled": False}), True, "succeeded", "now")
    assert not snapshot and change.phase == "Succeeded" and change.ready
    change, snapshot = flow.after_job(tj(output={"enabled": False}), False, "failed: x", "now")
    assert not snapshot and change.phase == "Failed" and change.stalled and change.reason == "JobFailed"


def test_running_names_a_stuck_pod_then_goes_back_to_running():
    running = tj(status={"phase": "Running", "jobName": "t", "conditions": [
        {"type": "Ready", "status": "False", "reason": "Running", "message": "", "lastTransitionTime": "x"}]})
    assert flow.running_wait(running, []) == Wait()  # quiet: nothing to record
    stuck = flow.running_wait(running, [PodProblem("ImagePullBackOff", "pod t-1 container trainer: ...")])
    assert stuck.reason == "ImagePullBackOff" and "t-1" in stuck.message
    was_stuck = tj(status={"phase": "Running", "jobName": "t", "conditions": [
        {"type": "Ready", "status": "False", "reason": "Unschedulable", "message": "", "lastTransitionTime": "x"}]})
    assert flow.running_wait(was_stuck, []).reason == "Running"


def test_pod_problems_and_failures_are_named():
    unschedulable = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: gpu"}]}}
    assert pod_problem(unschedulable) == PodProblem("Unschedulable", "pod p cannot be scheduled: 0/3 nodes: gpu")
    pull = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "initContainerStatuses": [
        {"name": "download-input-0", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]}}
    assert pod_problem(pull).reason == "ImagePullBackOff" and "download-input-0" in pod_problem(pull).message
    assert pod_problem({"metadata": {"name": "p"}, "status": {"phase": "Running"}}) is None
    deadline = {"metadata": {"name": "p"}, "spec": {"activeDeadlineSeconds": 60},
                "status": {"phase": "Failed", "reason": "DeadlineExceeded"}}
    assert pod_failure(deadline, "snapshot").message == "snapshot pod p exceeded its deadline of 60 s"
    init_failed = {"metadata": {"name": "p"}, "status": {"phase": "Failed", "initContainerStatuses": [
        {"name": "import", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}], "containerStatuses": [
        {"name": "upload", "state": {"waiting": {"reason": "PodInitializing"}}}]}}
    failure = pod_failure(init_failed, "import")
    assert failure.container == "import" and "container import failed (Error, exit code 1)" in failure.message


def test_a_pod_the_node_failed_is_named_by_the_node_s_reason():
    """An evicted pod's containers exit 137 ("Error"): the eviction is the cause, not the exit code."""
    evicted = {"metadata": {"name": "p"}, "status": {
        "phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory.",
        "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}}
    assert pod_failure(evicted, "training").message == \
        "training pod p failed: Evicted: The node was low on resource: memory."
    oom = {"metadata": {"name": "p"}, "status": {"phase": "Failed", "containerStatuses": [
        {"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}
    assert "container trainer failed (OOMKilled, exit code 137)" in pod_failure(oom, "training").message


def test_an_agent_refusal_is_told_apart_and_fails_the_snapshot_at_once():
    """The agent exits REFUSED_EXIT_CODE when it refuses the data for what it is: the snapshot fails at
    once with its line (before: retried 3 times with the same result). An OOM kill, an eviction, a
    plain failure (exit 1: a store that was down) are retried as before."""
    def failed(code: int, reason: str = "Error") -> dict:
        return {"metadata": {"name": "p"}, "status": {"phase": "Failed", "containerStatuses": [
            {"name": "snapshot", "state": {"terminated": {"exitCode": code, "reason": reason}}}]}}
    refused = pod_failure(failed(REFUSED_EXIT_CODE), "snapshot")
    assert refused.agent_refused and "container snapshot failed (Error, exit code 3)" in refused.message
    assert not pod_failure(failed(1), "snapshot").agent_refused
    assert not pod_failure(failed(REFUSED_EXIT_CODE, "OOMKilled"), "snapshot").agent_refused  # the kernel's
    assert flow.snapshot_retry(1, "line", refused=True) == Fail(
        "SnapshotFailed", "snapshot refused the output (not retried: the same output is refused again): line")
    assert flow.snapshot_retry(1, "line") is None


def test_a_failed_job_names_what_its_pods_say():
    assert flow.worker_failures([]) == []
    assert flow.worker_failures(["training pod a: OOMKilled"]) == ["training pod a: OOMKilled"]
    assert flow.worker_failures(["pod a: x", "pod b: y", "pod c: z"]) == ["pod a: x (and 2 more failed pod(s))"]


def test_snapshot_attempts_and_the_retained_output():
    assert flow.snapshot_retry(1, "x") is None
    assert flow.snapshot_retry(3, "boom") == Fail("SnapshotFailed", "snapshot failed 3 times; last: boom")
    done = flow.snapshot_done(tj(status={"phase": "Snapshotting", "jobSucceeded": False}), [], "now",
                              "1 output entry skipped: 'x': y", "t-output", 1)
    assert done.phase == "Failed" and done.conditions[0].type == "OutputRetained"
    assert done.conditions[0].status == "True" and "ckpt.dev/release-output=true" in done.conditions[0].message
    retained = tj(status={"phase": "Failed", "conditions": [
        {"type": "OutputRetained", "status": "True", "reason": "NotAllStored", "message": "", "lastTransitionTime": "x"}]})
    assert not flow.wants_output_released(retained)
    released = retained.model_copy(update={"metadata": retained.metadata.model_copy(
        update={"annotations": {flow.RELEASE_OUTPUT_ANNOTATION: "true"}})})
    assert flow.wants_output_released(released)
    assert flow.released_change("c", True).conditions[0].reason == "Released"


def test_input_waits_are_stalled_only_when_they_cannot_end():
    wait = flow.input_wait([InputWait("InputNotFound", "a"), InputWait("InputFailed", "b")])
    assert wait.reason == "InputNotFound" and wait.message == "a; b" and wait.stalled
    assert not flow.input_wait([InputWait("InputNotReady", "a")]).stalled
    assert flow.input_wait([InputWait("InputNotReady", "a")]).requeue_after is None  # the input's event wakes it


def test_uses_labels_and_bounded_used_by():
    assert label_patch({"x": "1"}, ["u1"]) == {"uses.ckpt.dev/u1": "true"}
    assert label_patch({"uses.ckpt.dev/u1": "true", "uses.ckpt.dev/u2": "true"}, ["u1"]) == {"uses.ckpt.dev/u2": None}
    assert label_patch({"uses.ckpt.dev/u1": "true"}, ["u1"]) == {}
    assert used_uids({"uses.ckpt.dev/b": "true", "uses.ckpt.dev/a": "true", "other": "x"}) == ["a", "b"]
    status = used_by_status([(f"job-{i:04d}", f"u{i}") for i in range(1000)])
    assert status.usedByCount == 1000 and len(status.usedBy) == 20 and status.usedBy[0].name == "job-0000"
    bodies = [training_job("a", phase="Running"), training_job("b", phase="Succeeded"), training_job("c")]
    assert blocking_users(bodies) == ["a", "c"]


def test_status_changes_apply_once_and_post_one_event():
    def settled(phase):
        return phase in ("Succeeded", "Failed")
    change = StatusChange(phase="Pending", reason="InputNotFound", message="input x does not exist", event="Warning")
    first = apply_change({}, change, generation=1, now="t1", is_settled=settled)
    assert {c["type"] for c in first["conditions"]} == {"Ready", "Reconciling"}
    assert should_post_event({}, change) and not should_post_event(first, change)
    again = apply_change(first, change, generation=1, now="t2", is_settled=settled)
    assert status_patch(first, again) == {}  # a no-op is not written
    failed = apply_change(first, StatusChange(phase="Failed", reason="X", message="m", stalled=True,
                                              fields=TrainingJobStatus(completionTime="t3")), generation=1, now="t3",
                          is_settled=settled)
    assert {c["type"] for c in failed["conditions"]} == {"Ready", "Stalled"}
    removed = apply_change(failed, StatusChange(fields=TrainingJobStatus(completionTime=None)), generation=1, now="t4",
                           is_settled=settled)
    assert "completionTime" not in removed and status_patch(failed, removed) == {"completionTime": None}


def test_a_refused_input_download_is_named_in_the_final_message():
    assert downloaded_input("download-input-1", ["a", "b"]) == "b"
    assert downloaded_input("trainer", ["a"]) is None and downloaded_input("download-input-7", ["a"]) is None
    cause = flow.input_download_failure("b", "error: s3://x/: ... not the pinned sha256:0")
    change, snapshot_follows = flow.after_job(tj(), False, f"failed: BackoffLimitExceeded; {cause}", "now")
    assert snapshot_follows and change.fields.jobFailure.endswith(cause)
    done = flow.snapshot_done(tj(status={"phase": "Snapshotting", "jobSucceeded": False,
                                         "jobFailure": change.fields.jobFailure}), [], "now", None, "c", 0)
    assert done.reason == "JobFailed" and done.message == f"Job failed: BackoffLimitExceeded; {cause}; kept no " \
                                                          "checkpoints in the output"


def test_an_unbound_claim_is_explained_by_its_latest_warning_event():
    from checkpoint_operator.logic.agent_pods import claim_problem
    claim = {"metadata": {"name": "out"}, "spec": {"storageClassName": "fast"}, "status": {"phase": "Pending"}}
    events = [{"type": "Normal", "reason": "ExternalProvisioning", "message": "waiting", "lastTimestamp": "2026-01-01T00:00:03Z"},
              {"type": "Warning", "reason": "ProvisioningFailed", "message": 'storageclass "fast" not found',
               "lastTimestamp": "2026-01-01T00:00:01Z"}]
    problem = claim_problem(claim, events)
    assert problem.reason == "VolumeNotBound"
    assert problem.message == 'PersistentVolumeClaim out is Pending: ProvisioningFailed: storageclass "fast" not found'
    assert "storageClassName fast" in claim_problem(claim, []).message  # no event yet: what it asks for
    assert claim_problem(claim, [{"type": "Normal", "reason": "WaitForFirstConsumer", "message": "m"}]) is None
    assert claim_problem({**claim, "status": {"phase": "Bound"}}, events) is None and claim_problem(None, []) is None


def test_a_claim_being_provisioned_is_not_stuck():
    """A WaitForFirstConsumer claim gets its volume once its pod is scheduled; the provisioner's progress
    events (Normal) say it is under way, which a restore from a volume snapshot may take minutes in.
    It was reported as VolumeNotBound (a Warning) before."""
    from checkpoint_operator.logic.agent_pods import claim_problem
    claim = {"metadata": {"name": "out"}, "spec": {"storageClassName": "gp3"}, "status": {"phase": "Pending"}}
    for reason in ("ExternalProvisioning", "Provisioning", "WaitForPodScheduled"):
        events = [{"type": "Normal", "reason": "WaitForFirstConsumer", "message": "m", "lastTimestamp": "2026-01-01T00:00:01Z"},
                  {"type": "Normal", "reason": reason, "message": "m", "lastTimestamp": "2026-01-01T00:00:02Z"}]
        assert claim_problem(claim, events) is None, reason


def test_a_nested_key_left_out_is_removed_by_the_patch():
    """A merge patch merges objects: status.upload without its `pod` must say pod: null."""
    before = {"upload": {"store": "volume", "claimName": "c", "pod": "c-upload"}, "phase": "Importing"}
    after = {"upload": {"store": "volume", "claimName": "c"}, "phase": "Pending"}
    assert status_patch(before, after) == {"upload": {"pod": None}, "phase": "Pending"}
    assert status_patch(before, {"phase": "Importing"}) == {"upload": None}


def test_a_failed_snapshot_attempt_waits_before_the_next():
    """A short outage of the store must not use up the three attempts in seconds."""
    from datetime import datetime, timezone
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first, delay = flow.snapshot_retry_at(1, now)
    assert (first, delay) == ("2026-01-01T00:00:10Z", 10.0)
    assert flow.snapshot_retry_at(2, now) == ("2026-01-01T00:00:30Z", 30.0)
    assert flow.snapshot_wait(first, now) == 10.0
    assert flow.snapshot_wait(first, datetime(2026, 1, 1, 0, 0, 10, tzinfo=timezone.utc)) is None
    assert flow.snapshot_wait(None, now) is None


def test_the_message_of_a_snapshot_of_thousands_of_checkpoints_names_a_few_and_counts_the_rest():
    """5,000 names made a message past the 32 KiB a status message may have: the status write failed."""
    from checkpoint_operator.api.trainingjob import TrainingJobStatus
    names = [f"train-checkpoint-{i * 100}" for i in range(5000)]
    done = flow.snapshot_done(tj(status={"phase": "Snapshotting", "jobSucceeded": True}), names, "now", None, "c", 0)
    assert done.message.startswith("Job succeeded; 5000 checkpoint(s): train-checkpoint-0, train-checkpoint-100, ")
    assert done.message.endswith(" and 4980 more") and done.fields.outputCheckpoints == names
    TrainingJobStatus.model_validate({**done.fields.to_wire(), "message": done.message})


def test_a_pod_waiting_to_attach_a_volume_names_the_claim_and_the_controller_s_message():
    """hostile4 D9: a consumer held in ContainerCreating by a Multi-Attach error said nothing."""
    from checkpoint_operator.logic.agent_pods import attach_problem, failed_attach, pod_claims
    events = [{"reason": "FailedAttachVolume", "lastTimestamp": "2026-01-01T00:00:01Z", "message": "old"},
              {"reason": "Scheduled", "lastTimestamp": "2026-01-01T00:00:03Z", "message": "assigned"},
              {"reason": "FailedAttachVolume", "lastTimestamp": "2026-01-01T00:00:02Z",
               "message": 'Multi-Attach error for volume "pvc-2" Volume is already used by pod(s) reader-b-x'}]
    event = failed_attach(events)
    assert event is events[2] and failed_attach(events[1:2]) is None
    problem = attach_problem("reader-c-y", event, {"pvc-1": "other", "pvc-2": "producer-output-ab12c"})
    assert (problem.reason, problem.message) == ("VolumeAttachWait", (
        'pod reader-c-y waits to attach PersistentVolumeClaim producer-output-ab12c: Multi-Attach error for volume '
        '"pvc-2" Volume is already used by pod(s) reader-b-x'))
    limit = attach_problem("p", {"message": "AttachVolume.Attach failed: " + "x" * 5000}, {})
    assert limit.message.startswith("pod p waits to attach a volume: AttachVolume.Attach failed") \
        and len(limit.message) < 600
    pod = {"metadata": {"name": "p"}, "spec": {"volumes": [
        {"name": "ckpt-in-0", "ephemeral": {"volumeClaimTemplate": {}}},
        {"name": "ckpt-output", "persistentVolumeClaim": {"claimName": "out"}}, {"name": "tmp", "emptyDir": {}}]}}
    assert pod_claims(pod) == ["p-ckpt-in-0", "out"]


def test_a_scheduled_pod_s_events_are_read_for_a_failed_attach_only_once_it_has_waited_the_grace():
    """Issue 22.4: every pass of a job whose pod was ContainerCreating listed that pod's Events (3.9
    requests per lifecycle in bench/scale.py, for pods that start in a second). Now only once the pod
    has waited ATTACH_GRACE since it was scheduled; the pass before looks again when the grace ends,
    so a pod that stays waiting still gets its explanation."""
    from datetime import datetime, timezone
    from checkpoint_operator.logic.workers import worker_pod
    at = lambda seconds: datetime.fromtimestamp(  # noqa: E731
        datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() + seconds, timezone.utc)
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:10Z"}
    pod = worker_pod({"metadata": {"name": "w", "creationTimestamp": "2026-01-01T00:00:00Z"},
                      "status": {"phase": "Pending", "conditions": [scheduled]}})
    assert pod.scheduled_at == "2026-01-01T00:00:10Z"  # the binding, not the creation
    assert flow.attach_grace_left(pod, at(11)) == flow.ATTACH_GRACE - 1
    assert flow.attach_grace_left(pod, at(10 + flow.ATTACH_GRACE)) == 0.0
    assert flow.attach_grace_left(pod, at(100)) == 0.0
    unbound = worker_pod({"metadata": {"name": "w", "creationTimestamp": "2026-01-01T00:00:00Z"},
                          "status": {"phase": "Pending", "conditions": [{**scheduled, "status": "False"}]}})
    assert unbound.scheduled_at == "2026-01-01T00:00:00Z"  # not scheduled yet: since its creation
    assert flow.attach_grace_left(unbound, at(2)) == flow.ATTACH_GRACE - 2
    # Unknown or unreadable: read now (no explanation is ever held back for want of a time).
    assert flow.attach_grace_left(worker_pod({"metadata": {"name": "w"}, "status": {"phase": "Pending"}}), at(0)) == 0.0
    odd = worker_pod({"metadata": {"name": "w", "creationTimestamp": "yesterday"}, "status": {"phase": "Pending"}})
    assert flow.attach_grace_left(odd, at(0)) == 0.0


def test_the_wait_for_a_job_s_checkpoints_is_bounded_and_names_them():
    """A Checkpoint that never becomes Ready (its bytes never handed over, deleted again and again) must not
    hold its job forever: quiet until the operator's publish_timeout after the snapshot pod ended, then a
    failure naming it."""
    from datetime import datetime, timezone
    ended = "2026-01-01T00:00:00Z"
    at = lambda seconds: datetime.fromtimestamp(  # noqa: E731
        datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() + seconds, timezone.utc)
    pending = [("t.step-1", "Pending"), ("t.step-2", "changed after sealing, not Failed yet")]
    limit = OperatorConfig().publish_timeout
    assert limit == 600.0
    early = flow.publish_wait(pending, ended, at(5), recheck=2.0, limit=limit)
    assert isinstance(early, Wait) and early.requeue_after == 2.0 and not early.reason
    assert flow.publish_wait(pending, ended, at(limit - 0.5), recheck=2.0, limit=limit).requeue_after == 0.5
    late = flow.publish_wait(pending, ended, at(limit), recheck=2.0, limit=limit)
    assert isinstance(late, Fail) and late.reason == "CheckpointsNotReady"
    assert "t.step-1 (Pending), t.step-2 (changed after sealing, not Failed yet)" in late.message and "600 s" in late.message
    many = flow.publish_wait([(f"c{i}", "Pending") for i in range(50)], ended, at(700), recheck=2.0, limit=limit)
    assert isinstance(many, Fail) and "and 30 more" in many.message and "c20 " not in many.message
    assert isinstance(flow.publish_wait(pending, "", at(0), recheck=2.0, limit=limit), Fail)  # nothing to count from
    # Another setting, another bound.
    assert isinstance(flow.publish_wait(pending, ended, at(61), recheck=2.0, limit=60.0), Fail)
    assert isinstance(flow.publish_wait(pending, ended, at(59), recheck=2.0, limit=60.0), Wait)


def test_a_preempted_group_with_a_volume_per_worker_runs_a_new_attempt_a_restart_does_not_count_it():
    """hostile7 R1: with a volume per worker each preemption is an attempt of its own (made again after
    the resume step); without, an attempt is a group restart only. JobSet's own restart count is not
    read for a group the operator restarts (its attempt label is higher than status.restarts then)."""
    parts = {"volumePerWorker": True}
    per_worker = tj(replicas=2, engine="JobSet", output=parts, status={"restarts": 1, "preemptions": 2})
    assert flow.attempt_of(per_worker) == 3
    shared = tj(replicas=2, engine="JobSet", status={"restarts": 1, "preemptions": 2})
    assert flow.attempt_of(shared) == 1
    running = engines.WorkloadState(kind="JobSet", name="t", attempt=3, suspended=False, outcome=None, stopped=False)
    assert flow.engine_restarts_change(per_worker, running, 6) is None
    assert flow.engine_restarts_change(shared, running, 6).fields.restarts == 3
    preempted = tj(replicas=2, engine="JobSet", output=parts, status={"phase": "Running"})
    suspended = engines.WorkloadState(kind="JobSet", name="t", attempt=0, suspended=True, outcome=None, stopped=False)
    change = flow.suspension_change(preempted, suspended, "team-a", "2026-12-07T00:00:00Z")
    assert change is not None and change.fields.preemptions == 1
    assert "the resume step copies the latest checkpoint complete over the workers' volumes" in change.message


def test_the_wait_for_checkpoints_counts_from_their_creation_or_the_operator_s_start_if_later():
    """hostile7 P1: a VolumeSnapshot ready 11 minutes after the snapshot pod ended (its Checkpoints created
    then), or an operator down for that long, must not fail the job on its first look at them."""
    ended, made, started = "2026-01-01T00:00:00Z", "2026-01-01T00:11:00Z", "2025-12-31T00:00:00Z"
    assert flow.publish_wait_since(ended, [made, None, "not a time"], started) == made
    assert flow.publish_wait_since(ended, [], "2026-01-01T00:20:00Z") == "2026-01-01T00:20:00Z"
    assert flow.publish_wait_since(ended, [], started) == ended
    from datetime import datetime, timezone
    now = datetime(2026, 1, 1, 0, 11, 5, tzinfo=timezone.utc)
    since = flow.publish_wait_since(ended, [made], started)
    assert isinstance(flow.publish_wait([("t.step-1", "Pending")], since, now, recheck=2.0, limit=600.0), Wait)
    assert isinstance(flow.publish_wait([("t.step-1", "Pending")], ended, now, recheck=2.0, limit=600.0), Fail)  # as before


def test_a_group_with_a_volume_per_worker_suspended_by_its_user_is_made_again_suspended():
    """review4 F4: without Kueue, a user's spec.suspend on the JobSet of a group with a volume per worker
    is a preemption too (the group is made again after the resume step); the new JobSet is created
    suspended, as its user left the last one, and the message says how to resume it. Queued in
    Kueue it is created suspended for Kueue; a running job's next attempt (a group restart) is not."""
    parts = {"volumePerWorker": True}
    running = tj(replicas=2, engine="JobSet", output=parts, status={"phase": "Running"})
    suspended = engines.WorkloadState(kind="JobSet", name="t", attempt=0, suspended=True, outcome=None, stopped=False)
    change = flow.suspension_change(running, suspended, None, "2026-12-07T00:00:00Z")
    assert change is not None and change.phase == TrainingJobPhase.QUEUED and change.fields.preemptions == 1
    assert "it is made suspended, as its user left it: set its spec.suspend to false to resume" in change.message
    queued = tj(replicas=2, engine="JobSet", output=parts, status={"phase": "Queued", "preemptions": 1})
    assert engines._suspend(queued) and not engines._suspend(running)
    kueued = tj(replicas=2, engine="JobSet", output=parts, status={"phase": "Running"})
    kueued.metadata.labels = {"kueue.x-k8s.io/queue-name": "q"}
    assert engines._suspend(kueued)
    plain = tj(replicas=2, status={"phase": "Running"})
    change = flow.suspension_change(plain, suspended, None, "2026-12-07T00:00:00Z")
    assert "when its spec.suspend is set to false" in change.message


def test_a_next_attempt_found_unrecorded_and_suspended_for_kueue_is_queued_not_preempted():
    """review4 F4: an operator that stopped between creating a restarted group's workload (suspended for
    Kueue) and recording it finds a Running job with a suspended workload: that is the next attempt
    queued, not a preemption of the running one. A first start (no earlier workload recorded) or a
    workload not queued in Kueue is only recorded."""
    running = tj(replicas=2, status={"phase": "Running", "jobUid": "old", "suspendTransition": "2026-12-07T00:00:00Z"})
    suspended = engines.WorkloadState(kind="Job", name="t", attempt=1, suspended=True, outcome=None, stopped=False)
    change = flow.adopted_workload_change(running, suspended, "new", "team-a")
    assert change.phase == TrainingJobPhase.QUEUED and change.reason == "Queued" and not change.fields.preemptions
    assert change.fields.jobUid == "new" and change.fields.suspendTransition is None
    after = tj(replicas=2, status=apply_change(running.status.model_dump(exclude_none=True), change, generation=1,
                                              now="t1", is_settled=lambda phase: False))
    assert after.phase == TrainingJobPhase.QUEUED
    assert flow.suspension_change(after, suspended, "team-a", "2026-12-07T00:01:00Z") is None  # not Preempted
    for job, queue in ((tj(replicas=2, status={"phase": "Running"}), "team-a"), (running, None)):
        change = flow.adopted_workload_change(job, suspended, "new", queue)
        assert change.phase is None and change.fields.jobUid == "new"
