"""local/stuck.py: which jobs of a `local run` can never finish, and why (issue 18 item 8b)."""

from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.local.stuck import stuck_jobs
from factories import checkpoint, training_job


def jobs(*bodies):
    return [TrainingJob.model_validate(b) for b in bodies]


def ckpts(*names):
    return [Checkpoint.model_validate(checkpoint(n)) for n in names]


def stuck(job_bodies, checkpoint_names=()):
    return {s.name: s.why for s in stuck_jobs(jobs(*job_bodies), ckpts(*checkpoint_names))}


def test_a_producer_that_does_not_exist():
    found = stuck([training_job("a", checkpoints=[{"fromTrainingJob": "nosuch"}])])
    assert "no TrainingJob nosuch exists, and none was applied" in found["a"]


def test_a_checkpoint_name_no_job_would_write():
    found = stuck([training_job("a", checkpoints=[{"name": "ghost.step-1"}])])
    assert "input Checkpoint ghost.step-1 does not exist" in found["a"] and "prefix 'ghost'" in found["a"]
    assert "uid" in stuck([training_job("a", checkpoints=[{"uid": "no-such-uid"}])])["a"]


def test_inputs_that_can_still_come_are_not_stuck():
    producer = training_job("pretrain")
    prefixed = training_job("other", output={"namePrefix": "llama"})
    assert stuck([training_job("a", checkpoints=[{"name": "pretrain.step-1"}]), producer]) == {}
    assert stuck([training_job("a", checkpoints=[{"name": "llama.step-1"}]), prefixed]) == {}
    assert stuck([training_job("a", checkpoints=[{"fromTrainingJob": "pretrain"}]), producer]) == {}
    assert stuck([training_job("a", checkpoints=[{"name": "base"}])], ["base"]) == {}  # it exists
    assert stuck([training_job("a", phase="Running", checkpoints=[{"name": "gone"}])]) == {}  # started already


def test_a_finished_producer_writes_nothing_more():
    done = training_job("pretrain", phase="Succeeded")
    assert "prefix 'pretrain'" in stuck([training_job("a", checkpoints=[{"name": "pretrain.step-9"}]), done])["a"]
    waiting = training_job("b", checkpoints=[{"fromTrainingJob": "pretrain"}])
    waiting["status"] = {"phase": "Pending", "conditions": [
        {"type": "Ready", "status": "False", "reason": "InputNotFound", "lastTransitionTime": "t",
         "message": "input latest checkpoint of TrainingJob pretrain: TrainingJob pretrain produced no such Ready "
                    "checkpoint"}]}
    assert "produced no such Ready checkpoint" in stuck([waiting, done])["b"]


def test_what_the_operator_says_is_stalled_and_what_waits_on_it():
    cycle = training_job("a", checkpoints=[{"fromTrainingJob": "b"}])
    cycle["status"] = {"phase": "Pending", "conditions": [
        {"type": "Stalled", "status": "True", "reason": "InputCycle", "lastTransitionTime": "t",
         "message": "TrainingJobs a -> b -> a wait on each other's output"}]}
    behind = training_job("c", checkpoints=[{"fromTrainingJob": "a"}])
    by_name = training_job("d", checkpoints=[{"name": "a.step-1"}])  # only a would write it
    found = stuck([cycle, behind, by_name])
    assert "a -> b -> a" in found["a"]
    assert found["c"].startswith("it takes from TrainingJob a, which can never finish")
    assert found["d"].startswith("it takes from TrainingJob a, which can never finish")


def test_a_chain_of_waits_is_bounded_and_found_whole():
    chain = [training_job(f"j{i}", checkpoints=[{"fromTrainingJob": f"j{i + 1}"}]) for i in range(200)]
    found = stuck(chain)  # j199 takes from j200, which does not exist
    assert len(found) == 200 and all(len(why) < 300 for why in found.values())


def test_a_job_that_takes_its_own_future_output_by_name():
    """It would be written only after the job has run; an earlier run's Checkpoint of that name is fine."""
    found = stuck([training_job("a", checkpoints=[{"name": "a.step-1"}])])
    assert "only this job would write it" in found["a"]
    assert stuck([training_job("a", checkpoints=[{"name": "a.step-1"}])], ["a.step-1"]) == {}
    prefixed = training_job("b", output={"namePrefix": "llama"}, checkpoints=[{"name": "llama"}])
    assert "only this job would write it" in stuck([prefixed])["b"]


def test_a_catalog_input_is_not_taken_for_a_missing_uid():
    """A ClusterCheckpoint input (main's catalog) is imported on its own: before this case the job
    was reported as waiting on 'Checkpoint with uid None' (tests/local/test_run_catalog.py failed)."""
    assert stuck([training_job("a", checkpoints=[{"clusterCheckpoint": "tiny-gpt2"}])]) == {}
