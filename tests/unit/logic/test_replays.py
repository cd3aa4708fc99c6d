"""logic/replays.py: a snapshot Checkpoint applied again from a deleted one's saved YAML is never its job's."""
from checkpoint_operator.api.checkpoint import CheckpointPhase
from checkpoint_operator.logic.inputs import CheckpointInfo
from checkpoint_operator.logic.replays import JobView, refusal, still_owning

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def info(name, uid, directory, digest, phase=CheckpointPhase.PENDING, deleting=False):
    return CheckpointInfo(name=name, uid=uid, phase=phase, producer_name="job", producer_uid="job-uid",
                          directory=directory, deleting=deleting, digest=digest)


def test_a_retired_directory_and_digest_is_refused_while_the_job_runs_and_whatever_holds_it():
    running = JobView(finished=False, retired=frozenset({("checkpoint-1", D1)}))
    for held in (False, True):
        why = refusal("job", "checkpoint-1", D1, running, held=held)
        assert why and "retired by TrainingJob job" in why and "saved YAML" in why and "\n" not in why


def test_the_same_directory_sealed_again_with_other_bytes_is_not_the_retired_one():
    running = JobView(finished=False, retired=frozenset({("checkpoint-1", D1)}))
    assert refusal("job", "checkpoint-1", D2, running, held=False) is None


def test_one_never_handed_its_bytes_waits_while_the_job_runs_and_fails_once_it_ended_or_is_gone():
    assert refusal("job", "checkpoint-1", D1, JobView(finished=False, retired=frozenset()), held=False) is None
    finished = refusal("job", "checkpoint-1", D1, JobView(finished=True, retired=frozenset()), held=False)
    assert finished and "has finished and never handed checkpoint-1" in finished
    gone = refusal("job", "checkpoint-1", D1, None, held=False)
    assert gone and "no longer exists" in gone


def test_one_its_job_handed_the_bytes_to_is_its_own():
    assert refusal("job", "checkpoint-1", D1, JobView(finished=True, retired=frozenset()), held=True) is None
    assert refusal("job", "checkpoint-1", D1, None, held=True) is None


def test_the_end_of_job_hand_over_skips_a_copy_whose_directory_is_gone():
    owning = info("job.checkpoint-2", "u2", "checkpoint-2", D2)
    replay = info("job.checkpoint-1", "copy", "checkpoint-1", D1)  # not an owner, not on the output any more
    kept = still_owning([owning, replay], set(), holders={"job-uid", "u2"}, present=set(), retired=set())
    assert kept == [owning]


def test_the_end_of_job_hand_over_keeps_ready_ones_and_one_created_just_before_a_crash():
    ready_one = info("job.checkpoint-3", "u3", "checkpoint-3", D1, phase=CheckpointPhase.READY)
    crashed = info("job.checkpoint-4", "u4", "checkpoint-4", D2)  # created, not handed over yet: on the output
    kept = still_owning([ready_one, crashed], set(), holders=set(), present={("checkpoint-4", D2)}, retired=set())
    assert kept == [ready_one, crashed]


def test_the_end_of_job_hand_over_never_goes_to_a_retired_planned_or_deleting_one():
    retired = info("job.checkpoint-1", "u1", "checkpoint-1", D1)
    planned = info("job.checkpoint-2", "u2", "checkpoint-2", D2)
    deleting = info("job.checkpoint-3", "u3", "checkpoint-3", D2, phase=CheckpointPhase.READY, deleting=True)
    kept = still_owning([retired, planned, deleting], {"job.checkpoint-2"}, holders={"u1", "u2", "u3"},
                        present={("checkpoint-1", D1), ("checkpoint-2", D2), ("checkpoint-3", D2)},
                        retired={("checkpoint-1", D1)})
    assert kept == []
