"""A group with a volume per worker is restarted by the operator, which runs the resume step between
two attempts (logic/engines.py, logic/group_resume.py, logic/workload.py): the JobSet it builds, how it
reads the attempt, the resume pod, what the result records and what the workers are told."""

from __future__ import annotations

import hashlib


from checkpoint_operator.agent import resume_parts
from checkpoint_operator.agent.scan import RESUME_DIR
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import engines, group_resume, workload
from checkpoint_operator.logic import trainingjob_flow as flow
from checkpoint_operator.logic.engines import WorkloadState
from checkpoint_operator.logic.status import set_fields
from checkpoint_operator.protocol import channel
from checkpoint_operator.protocol import published as published_list
from checkpoint_operator.protocol.results import ResumeReport
from checkpoint_operator.storage import store_for
from factories import training_job
from agentrun import agent_process
from unit.agent.test_parts import dcp_rank

CONFIG = OperatorConfig()
DIGEST = "sha256:" + "ab" * 32
OLDER = "sha256:" + "cd" * 32


def typed(status: dict | None = None, **spec) -> TrainingJob:
    body = training_job("ddp", **{"engine": "JobSet", "replicas": 2, "backoffLimit": 2,
                                  "output": {"volumePerWorker": True}, **spec})
    if status:
        body["status"] = status
    return TrainingJob.model_validate(body)


def build(tj: TrainingJob, attempt: int = 0) -> dict:
    return workload.build_workload(tj, [], store_for(CONFIG).input_volumes(tj, []), attempt=attempt).job


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def test_only_a_jobset_with_a_volume_per_worker_is_restarted_by_the_operator_with_a_resume_step():
    assert engines.resumes_parts(typed()) and engines.operator_restarts(typed())
    shared = typed(output={})
    assert not engines.resumes_parts(shared) and not engines.operator_restarts(shared)  # JobSet restarts it
    assert not engines.resumes_parts(typed(output={"perWorker": True}))  # each worker's own Checkpoints: no union
    job = typed(engine="Job", output={})
    assert engines.operator_restarts(job) and not engines.resumes_parts(job)


def test_its_jobset_never_restarts_by_itself_and_carries_the_attempt_on_every_pod():
    js = build(typed(), attempt=2)
    assert js["spec"]["failurePolicy"]["maxRestarts"] == 0  # a failed worker fails the set
    assert js["metadata"]["labels"]["ckpt.dev/restart-attempt"] == "2"
    for rjob in js["spec"]["replicatedJobs"]:
        assert rjob["template"]["spec"]["template"]["metadata"]["labels"]["ckpt.dev/restart-attempt"] == "2"
    # read back: the operator's attempt (plus JobSet's own restarts, none here)
    js["status"] = {"restarts": 0, "conditions": [{"type": "Failed", "status": "True", "reason": "FailedJobs"}]}
    state = engines.JOBSET.read(js)
    assert (state.attempt, state.outcome) == (2, False)
    # a shared output's JobSet is JobSet's to restart, as before: no attempt label
    shared = build(typed(output={}), attempt=0)
    assert shared["spec"]["failurePolicy"]["maxRestarts"] == 2
    assert "ckpt.dev/restart-attempt" not in shared["metadata"]["labels"]


def test_a_failed_attempt_restarts_the_group_and_says_where_it_resumes_from():
    tj = typed({"phase": "Running", "restarts": 0})
    failed = WorkloadState(kind="JobSet", name="ddp", attempt=0, suspended=False, outcome=False, stopped=True,
                           failure="FailedJobs: jobset failed due to one or more job failures")
    change = flow.restart_change(tj, failed, engines.JOBSET.max_restarts(tj), None)
    assert change is not None and set_fields(change.fields)["restarts"] == 1
    assert "complete over the workers' volumes (CHECKPOINT_RESUME_PATH" in change.message
    assert flow.engine_restarts_change(tj, failed, 2) is None  # JobSet did not restart it


def test_the_resume_step_runs_once_before_each_restarted_attempt():
    assert not group_resume.needs_resume_step(typed(), 0)  # the first attempt starts from nothing
    assert group_resume.needs_resume_step(typed(), 1)
    done = typed({"resume": {"attempt": 1, "message": "m"}})
    assert not group_resume.needs_resume_step(done, 1) and group_resume.needs_resume_step(done, 2)


def test_the_resume_pod_mounts_every_worker_s_volume_read_write_and_runs_resume_parts():
    tj = typed(output={"volumePerWorker": True, "layout": "directories"}, replicas=3)
    pod = workload.build_resume_pod(tj, CONFIG)
    assert pod["metadata"]["name"] == workload.resume_pod_name(tj) == "ddp-resume"
    assert pod["metadata"]["labels"]["ckpt.dev/component"] == "resume"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["checkpoint-operator", "agent", "resume-parts", "/checkpoint-output",
                                    "--parts", "3", "--layout", "directories"]
    claims = [v["persistentVolumeClaim"] for v in pod["spec"]["volumes"]]
    assert [c["claimName"] for c in claims] == workload.output_claim_names(tj)
    assert not any(c.get("readOnly") for c in claims)
    assert [m["mountPath"] for m in container["volumeMounts"]] == [f"/checkpoint-output/worker-{i}" for i in range(3)]
    assert not any(m.get("readOnly") for m in container["volumeMounts"])
    # its deadline: the base plus the time to copy a volume's worth (10Gi) into each of the 3 volumes
    assert pod["spec"]["activeDeadlineSeconds"] == int(CONFIG.agent_deadline_seconds
                                                       + 30 * CONFIG.agent_deadline_seconds_per_gib)


def test_the_result_is_recorded_and_the_workers_get_the_resume_path_once_a_copy_exists():
    tj = typed({"phase": "Running", "restarts": 1})
    report = ResumeReport(path="step-1", digest=DIGEST, step=1, fileCount=3, sizeBytes=200,
                          passed=["step-2: not complete over the workers' parts: __1_0.distcp is missing"],
                          passedCount=1)
    change = group_resume.resumed_change(tj, 1, report)
    assert (change.reason, change.event) == ("Resuming", "Normal")
    assert "attempt 2 resumes every worker from step-1 (step 1), " + DIGEST in change.message
    assert "passed over step-2: not complete" in change.message
    resume = set_fields(change.fields)["resume"]
    assert (resume["attempt"], resume["directory"], resume["digest"], resume["step"]) == (1, "step-1", DIGEST, 1)

    def worker_env(tj: TrainingJob) -> dict:
        js = build(tj, attempt=1)
        return env_of(js["spec"]["replicatedJobs"][1]["template"]["spec"]["template"]["spec"]["containers"][0])
    assert "CHECKPOINT_RESUME_PATH" not in worker_env(tj)  # no copy yet
    resumed = typed({"phase": "Running", "restarts": 1, "resume": resume})
    # the copy named by its digest, one name for every worker (hostile6 R2: `latest` is switched volume by
    # volume, and a failure between two left the workers on different steps)
    assert worker_env(resumed)["CHECKPOINT_RESUME_PATH"] == f"/output-checkpoint/{RESUME_DIR}/{DIGEST.split(':')[1]}"
    # the next step keeps that copy beside its own (the workers' fallback if its result is lost)
    assert build_resume_args(resumed)[-2:] == ["--keep", DIGEST]
    assert group_resume.RESUME_DIR == RESUME_DIR and group_resume.LATEST == resume_parts.LATEST  # the agent's names


def test_nothing_complete_keeps_the_earlier_copy_and_says_so():
    earlier = {"attempt": 1, "directory": "step-1", "digest": OLDER, "step": 1, "message": "m"}
    change = group_resume.resumed_change(typed({"resume": earlier}), 2, ResumeReport(passed=["a", "b", "c", "d"],
                                                                                      passedCount=7))
    assert (change.reason, change.event) == ("Resuming", "Warning")
    assert "no newer checkpoint is complete" in change.message and f"earlier copy of step-1 ({OLDER})" in change.message
    assert "passed over a; b; c; and 4 more" in change.message
    resume = set_fields(change.fields)["resume"]
    assert (resume["attempt"], resume["directory"], resume["digest"]) == (2, "step-1", OLDER)
    none = group_resume.resumed_change(typed(), 1, ResumeReport())
    assert "no checkpoint is complete" in none.message and set_fields(none.fields)["resume"].get("digest") is None
    assert not group_resume.has_resume_copy(typed({"resume": set_fields(none.fields)["resume"]}))


def test_a_failed_resume_pod_starts_the_attempt_from_what_was_there():
    earlier = {"attempt": 1, "directory": "step-1", "digest": OLDER, "step": 1, "message": "m"}
    change = group_resume.resume_failed_change(typed({"resume": earlier}), 2,
                                               "resume pod ddp-resume failed: No space left on device " + "x" * 5000)
    assert (change.reason, change.event) == ("ResumeFailed", "Warning")
    assert "No space left on device" in change.message and "earlier copy of step-1" in change.message
    resume = set_fields(change.fields)["resume"]
    assert (resume["attempt"], resume["digest"]) == (2, OLDER) and len(resume["message"]) <= 4000


def test_the_agent_writes_the_result_the_operator_reads(tmp_path):
    output = tmp_path / "out"
    for rank in (0, 1):
        dcp_rank(output, "step-5", rank)
    dcp_rank(output, "step-6", 0)  # rank 1's part missing: passed over
    proc = agent_process("resume-parts", str(output), "--parts", "2")
    assert proc.returncode == 0, proc.stderr
    report = channel.find_result(proc.stdout, (ResumeReport,), limit_bytes=channel.RESULT_READ_BYTES, what="stdout")
    assert (report.path, report.step, report.fileCount, report.passedCount) == ("step-5", 5, 4, 1)
    latest = (output / "worker-1" / RESUME_DIR / "latest").resolve()
    assert report.digest is not None and latest.name == report.digest.split(":")[1]
    assert report.passed[0].startswith("step-6: not complete over the workers' parts")
    nothing = tmp_path / "empty"
    (nothing / "worker-0").mkdir(parents=True)
    (nothing / "worker-1").mkdir()
    proc = agent_process("resume-parts", str(nothing), "--parts", "2")
    empty = channel.find_result(proc.stdout, (ResumeReport,), limit_bytes=channel.RESULT_READ_BYTES, what="stdout")
    assert empty.path is None and empty.digest is None


def build_resume_args(tj: TrainingJob) -> list[str]:
    from checkpoint_operator.logic.workload import build_resume_pod
    return build_resume_pod(tj, CONFIG)["spec"]["containers"][0]["command"]


def test_every_message_of_an_attempt_names_it_as_the_others_do_counted_from_1():
    """F5: the resume step said `attempt 1` of the attempt the GroupStarted event and the Queued
    message call `attempt 2` (the status index + 1), and the Running message counted only the
    restarts (a preemption of such a group is a new attempt too). The status fields are the truth
    (workerFailure.attempt and resume.attempt: the index, 0 for the first run; restarts;
    preemptions); every message names the attempt of index i as `attempt i+1`."""
    tj = typed({"phase": "Running", "restarts": 1, "preemptions": 1, "jobName": "ddp",
                "conditions": [{"type": "Ready", "status": "False", "reason": "Resuming", "message": "m",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
               backoffLimit=3)
    index = flow.attempt_of(tj)
    assert index == 2  # one restart and one preemption: the third run
    named = f"attempt {index + 1}"
    report = ResumeReport(path="step-1", digest=DIGEST, step=1, fileCount=3, sizeBytes=200)
    resumed = group_resume.resumed_change(tj, index, report)
    assert resumed.message.startswith(f"{named} resumes every worker from step-1"), resumed.message
    assert set_fields(resumed.fields)["resume"]["attempt"] == index
    assert group_resume.resumed_change(tj, index, ResumeReport()).message.startswith(f"{named}: no checkpoint")
    with_copy = typed({**tj.to_wire()["status"], "resume": set_fields(resumed.fields)["resume"]})
    assert group_resume.resumed_change(with_copy, index, ResumeReport()).message.startswith(f"{named}: no newer")
    assert group_resume.resume_failed_change(tj, index, "boom").message.startswith(f"{named}: the resume step failed")
    queued = flow.attempt_started_change(tj, "JobSet", "ddp", None, "q")
    assert queued.message.startswith(f"{named}: JobSet ddp is queued in Kueue"), queued.message
    running = flow.running_wait(tj, [])
    assert running.message == f"Job ddp is running ({named}, after 1 group restart(s) and 1 preemption(s))"
    # A preempted group with no restart is in its second attempt too.
    preempted = typed({"phase": "Running", "preemptions": 1, "jobName": "ddp",
                       "conditions": [{"type": "Ready", "status": "False", "reason": "Resuming", "message": "m",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    assert flow.running_wait(preempted, []).message == \
        "Job ddp is running (attempt 2, after 0 group restart(s) and 1 preemption(s))"
    # The restart names the attempt it starts: the next index (the restarts, the preemptions, + 1).
    failed = WorkloadState(kind="JobSet", name="ddp", attempt=index, suspended=False, outcome=False, stopped=True)
    restart = flow.restart_change(tj, failed, 3, None)
    assert restart is not None and f"(restart 2 of 3, attempt {index + 2})" in restart.message, restart.message
    assert set_fields(restart.fields)["restarts"] == 2


def test_a_restart_by_jobset_itself_names_the_attempt_it_starts():
    """A shared output: JobSet restarts the group (status.restarts = JobSet's restarts = the index)."""
    tj = typed({"phase": "Running", "restarts": 0}, output={})
    again = WorkloadState(kind="JobSet", name="ddp", attempt=1, suspended=False, outcome=None, stopped=True)
    change = flow.engine_restarts_change(tj, again, 2)
    assert change is not None and "(restart 1 of 2, attempt 2)" in change.message, change.message
    assert set_fields(change.fields)["restarts"] == 1


def test_the_resume_step_keeps_sealed_the_parts_of_every_directory_with_a_checkpoint_or_on_its_way_to_one():
    """H9-3: what stays sealed is what is or may become published bytes: the job's Checkpoints, its
    retired unions, what this operator is publishing (the index may not show it yet) and the directory
    a union pod is assembling now; nothing else (a part sealed for a union never published)."""
    kept = group_resume.kept_sealed(["step-1", None, "step-2"], ["step-0"], {"step-3"}, "step-4")
    assert kept == ["step-0", "step-1", "step-2", "step-3", "step-4"]
    assert group_resume.kept_sealed([], [], set(), None) == []
    assert "step-5" not in group_resume.kept_sealed(["step-1"], [], set(), None)


def test_the_resume_pod_names_the_directories_whose_parts_stay_sealed():
    tj = typed(output={"volumePerWorker": True, "publish": "Continuous"}, replicas=2)
    command = workload.build_resume_pod(tj, CONFIG, published=["step-2", "step-1"])["spec"]["containers"][0]["command"]
    assert command[-1].startswith("--published-list=")
    assert published_list.decode(command[-1].split("=", 1)[1]) == ["step-1", "step-2"]
    assert not any(a.startswith("--published") for a in
                   workload.build_resume_pod(tj, CONFIG)["spec"]["containers"][0]["command"])


def test_3000_published_directories_are_one_bounded_argument_of_the_resume_pod():
    """trust2 B: one `--published=DIR` argument per directory met the admission policy's 300 arguments
    (~290 published Checkpoints and the group could not restart). Now they are one argument, whatever
    their count, well under Linux's 128 KiB per argument; and exactly the directories come back."""
    tj = typed(output={"volumePerWorker": True, "publish": "Continuous"}, replicas=2)
    names = [f"checkpoint-{50 * i}" for i in range(1, 3001)] + ["--ckpt-5", "-1", "ckpts/step-2"]
    command = workload.build_resume_pod(tj, CONFIG, published=names)["spec"]["containers"][0]["command"]
    assert len(command) < 20 and [a for a in command if a.startswith("--published")] == [command[-1]]
    assert len(command[-1]) <= published_list.MAX_ARGUMENT + len("--published-list=") < 128 * 1024
    assert published_list.decode(command[-1].split("=", 1)[1]) == sorted(names)
    assert group_resume.gives_back(names)


def test_a_list_longer_than_one_argument_keeps_every_part_sealed_and_says_so():
    """Past MAX_ARGUMENT the resume step is told --keep-sealed (nothing given back: never a published part
    made writable), and the job gets one warning saying why."""
    names = [hashlib.sha256(str(i).encode()).hexdigest()[:40] for i in range(5000)]
    assert published_list.resume_args(names) == ["--keep-sealed"]
    assert not group_resume.gives_back(names)
    message = group_resume.kept_sealed_message(5000)
    assert "5000 directories" in message and "--published-list" in message and "\n" not in message
    assert published_list.resume_args([]) == []


def test_a_group_its_user_resumes_while_its_workload_is_replaced_is_made_again_running():
    """H9-9: a user-suspended group with a volume per worker is replaced (deleted, resume step, made again);
    its user resumes the old JobSet while it is being deleted. The phase follows spec.suspend then, so
    engines._suspend makes the next one as the user wants it (it was made suspended: the resume lost)."""
    queued = typed({"phase": "Queued", "preemptions": 1})
    change = flow.replaced_suspension_change(queued, "JobSet", "ddp", False, None)
    assert change is not None and change.phase == "Running" and "resumed by its user" in change.message
    assert not engines._suspend(queued.model_copy(update={"status": queued.status.model_copy(
        update={"phase": change.phase})}))
    assert engines._suspend(queued)  # before it: made suspended
    assert flow.replaced_suspension_change(queued, "JobSet", "ddp", True, None) is None  # still suspended
    running = typed({"phase": "Running", "preemptions": 1})
    again = flow.replaced_suspension_change(running, "JobSet", "ddp", True, None)
    assert again is not None and again.phase == "Queued" and engines._suspend(running.model_copy(update={
        "status": running.status.model_copy(update={"phase": again.phase})}))
    assert flow.replaced_suspension_change(running, "JobSet", "ddp", False, None) is None  # a failure restart
    assert flow.replaced_suspension_change(queued, "JobSet", "ddp", False, "team-a") is None  # Kueue decides
    one_volume = TrainingJob.model_validate({**training_job("j", engine="JobSet", replicas=2),
                                             "status": {"phase": "Queued"}})
    assert flow.replaced_suspension_change(one_volume, "JobSet", "j", False, None) is None
