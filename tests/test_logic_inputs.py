from checkpoint_operator.logic.inputs import is_live_user, resolve_inputs, select_latest
from factories import checkpoint, training_job


def test_select_latest_prefers_highest_step_then_newest():
    items = [checkpoint("a", step=100, produced_by="t"), checkpoint("b", step=300, produced_by="t"),
             checkpoint("c", step=300, produced_by="t", created="2026-02-01T00:00:00Z"),
             checkpoint("d", step=900, produced_by="other"), checkpoint("e", step=1000, produced_by="t", phase="Failed"),
             checkpoint("f", step=2000, produced_by="t", deleting=True)]
    assert select_latest(items, "t")["metadata"]["name"] == "c"


def test_select_latest_ranks_checkpoints_with_steps_above_those_without():
    items = [checkpoint("final", produced_by="t", created="2026-03-01T00:00:00Z"), checkpoint("s", step=5, produced_by="t")]
    assert select_latest(items, "t")["metadata"]["name"] == "s"


def test_resolve_by_name_uid_and_latest():
    a = checkpoint("base")
    produced = checkpoint("t-step-5", step=5, produced_by="t")
    jobs = [training_job("t", phase="Succeeded")]
    res = resolve_inputs([{"name": "base"}, {"fromTrainingJob": "t", "select": "latest"}], [a, produced], jobs)
    assert res.ready and [i.name for i in res.inputs] == ["base", "t-step-5"]
    res = resolve_inputs([{"uid": a["metadata"]["uid"]}], [a], [])
    assert res.ready and res.inputs[0].name == "base" and res.inputs[0].digest == "sha256:base"


def test_waits_name_the_input_and_the_reason():
    cases = [
        ([{"name": "missing"}], [], [], "InputNotFound", "missing"),
        ([{"name": "c"}], [checkpoint("c", phase="Importing")], [], "InputNotReady", "Importing"),
        ([{"name": "c"}], [checkpoint("c", deleting=True)], [], "InputDeleting", "being deleted"),
        ([{"fromTrainingJob": "t"}], [], [training_job("t", phase="Running")], "WaitingForTrainingJob", "Running"),
        ([{"fromTrainingJob": "t"}], [], [], "InputNotFound", "does not exist"),
        ([{"fromTrainingJob": "t"}], [], [training_job("t", phase="Succeeded")], "InputNotFound", "no Ready"),
    ]
    for refs, ckpts, jobs, reason, fragment in cases:
        res = resolve_inputs(refs, ckpts, jobs)
        assert not res.ready
        assert res.waits[0].reason == reason, (refs, res.waits)
        assert fragment in res.waits[0].message


def test_two_inputs_on_the_same_mount_directory_are_refused():
    a = checkpoint("a")
    res = resolve_inputs([{"name": "a"}, {"uid": a["metadata"]["uid"]}], [a], [])
    assert res.waits and res.waits[0].reason == "DuplicateInput" and "mountName" in res.waits[0].message


def test_live_user():
    job = training_job("t", phase="Running")
    assert is_live_user(job, "u-t")
    assert not is_live_user(job, "other-uid")          # re-created namesake
    assert not is_live_user(None, "u-t")               # gone
    assert not is_live_user(training_job("t", phase="Failed"), "u-t")


def test_latest_is_of_this_incarnation_of_the_job():
    earlier = checkpoint("t-step-9", step=9, produced_by="t")
    earlier["status"]["producedBy"]["uid"] = "an-earlier-run"
    current = checkpoint("t-step-3", step=3, produced_by="t")
    res = resolve_inputs([{"fromTrainingJob": "t"}], [earlier, current], [training_job("t", phase="Succeeded")])
    assert [i.name for i in res.inputs] == ["t-step-3"]


def test_a_registered_job_may_keep_using_an_input_that_is_being_deleted():
    from checkpoint_operator.logic.inputs import resolve_one
    c = checkpoint("c", deleting=True, used_by=[{"name": "t", "uid": "u-t"}])
    assert resolve_one({"name": "c"}, [c], [], job_uid="u-t").name == "c"
    assert resolve_one({"name": "c"}, [c], [], job_uid="someone-else").reason == "InputDeleting"


def test_failed_inputs_are_terminal_waits():
    res = resolve_inputs([{"name": "c"}], [checkpoint("c", phase="Failed")], [])
    assert res.waits[0].reason == "InputFailed" and res.waits[0].terminal
    assert not resolve_inputs([{"name": "x"}], [], []).waits[0].terminal
