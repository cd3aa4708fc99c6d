"""TrainingJobs that wait on each other (issue 18 item 6): logic/wait_cycles.py and its use in
resolution (logic/inputs.py), from the operator's real index functions."""

from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.logic.inputs import TrainingJobInfo, resolve_inputs
from checkpoint_operator.logic.wait_cycles import MAX_VISITED, find_wait_cycle
from factories import indexes, training_job


def graph(edges: dict[str, list[str]]):
    return lambda name: edges.get(name, [])


def test_two_jobs_waiting_on_each_other():
    cycle = find_wait_cycle("a", graph({"a": ["b"], "b": ["a"]}))
    assert cycle.cycle == ("a", "b", "a") and cycle.includes_start
    assert "TrainingJobs a -> b -> a wait on each other's output" in cycle.message()
    assert find_wait_cycle("b", graph({"a": ["b"], "b": ["a"]})).cycle == ("b", "a", "b")  # every job names it


def test_a_job_waiting_on_itself_and_a_longer_cycle():
    assert find_wait_cycle("a", graph({"a": ["a"]})).cycle == ("a", "a")
    edges = {"a": ["b"], "b": ["c"], "c": ["d"], "d": ["a"]}
    assert find_wait_cycle("c", graph(edges)).cycle == ("c", "d", "a", "b", "c")


def test_the_shortest_cycle_through_the_job_is_named():
    edges = {"a": ["b", "z"], "b": ["c"], "c": ["a"], "z": ["a"]}
    assert find_wait_cycle("a", graph(edges)).cycle == ("a", "z", "a")


def test_a_job_waiting_on_a_cycle_it_is_not_part_of():
    cycle = find_wait_cycle("a", graph({"a": ["b"], "b": ["c"], "c": ["b"]}))
    assert not cycle.includes_start and cycle.path == ("a", "b") and cycle.cycle == ("b", "c", "b")
    assert "a -> b, then b -> c -> b" in cycle.message()


def test_no_cycle():
    assert find_wait_cycle("a", graph({"a": ["b", "c"], "b": ["c"], "c": []})) is None
    assert find_wait_cycle("a", graph({})) is None
    # a diamond is no cycle, and each job is looked at once
    calls: list[str] = []
    edges = {f"n{i}": [f"n{i + 1}", f"m{i + 1}"] for i in range(50)} | {f"m{i}": [f"n{i}"] for i in range(1, 51)}

    def counted(name):
        calls.append(name)
        return edges.get(name, [])
    assert find_wait_cycle("n0", counted) is None
    assert len(calls) <= 2 * len(set(calls)) and len(set(calls)) <= 102


def test_the_search_is_bounded_whatever_the_graph():
    chain = graph({f"j{i}": [f"j{i + 1}"] for i in range(3 * MAX_VISITED)})
    assert find_wait_cycle("j0", chain) is None  # ends after MAX_VISITED jobs, without recursion


# --- through resolution ------------------------------------------------------------------------

def pending(name: str, *producers: str) -> dict:
    return training_job(name, checkpoints=[{"fromTrainingJob": p} for p in producers])


def resolve(job: dict, others: list[dict]):
    return resolve_inputs(TrainingJob.model_validate(job), indexes([], [job, *others]))


def test_the_index_keeps_what_a_pending_job_waits_on():
    assert TrainingJobInfo.from_body(pending("a", "b", "c", "b")).waits_on == ("b", "c")
    running = {**pending("a", "b"), "status": {"phase": "Running"}}
    assert TrainingJobInfo.from_body(running).waits_on == ()  # started: it waits on nothing any more


def test_jobs_waiting_on_each_others_latest_are_stalled_naming_the_cycle():
    a, b = pending("a", "b"), pending("b", "a")
    for job, other, arrows in ((a, b, "a -> b -> a"), (b, a, "b -> a -> b")):
        res = resolve(job, [other])
        [wait] = res.waits
        assert wait.reason == "InputCycle" and wait.terminal and arrows in wait.message


def test_a_job_behind_a_cycle_is_stalled_too_and_a_plain_wait_is_not():
    a, b, c = pending("a", "b"), pending("b", "c"), pending("c", "b")
    [wait] = resolve(a, [b, c]).waits
    assert wait.reason == "InputCycle" and "b -> c -> b" in wait.message
    running_b = {**pending("b", "c"), "status": {"phase": "Running"}}
    [wait] = resolve(a, [running_b, c]).waits
    assert wait.reason == "WaitingForTrainingJob" and not wait.terminal


def test_a_stored_job_that_takes_itself_is_a_cycle_of_one():
    """The CRD refuses it at creation (api/trainingjob.py); one stored before that rule is Stalled,
    not Pending forever. The model refuses it too, so it is checked here on the wire form."""
    job = pending("a", "a")
    cycle = find_wait_cycle("a", lambda n: TrainingJobInfo.from_body(job).waits_on)
    assert cycle.cycle == ("a", "a")
