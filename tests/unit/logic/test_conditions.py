from checkpoint_operator.logic.conditions import kstatus_conditions, set_condition


def test_transition_time_moves_only_when_status_changes():
    c1 = set_condition(None, "Ready", "False", "Waiting", "a", 1, "t1")
    c2 = set_condition(c1, "Ready", "False", "Waiting", "b", 2, "t2")
    assert c2[0]["lastTransitionTime"] == "t1" and c2[0]["message"] == "b" and c2[0]["observedGeneration"] == 2
    c3 = set_condition(c2, "Ready", "True", "Ready", "ok", 2, "t3")
    assert c3[0]["lastTransitionTime"] == "t3"


def test_reconciling_and_stalled_are_present_only_while_true():
    running = kstatus_conditions(None, ready=False, reason="Running", message="m", generation=1, now="t",
                                 reconciling=True)
    assert {c["type"] for c in running} == {"Ready", "Reconciling"}
    failed = kstatus_conditions(running, ready=False, reason="JobFailed", message="m", generation=1, now="t",
                                stalled=True)
    assert {c["type"]: c["status"] for c in failed} == {"Ready": "False", "Stalled": "True"}
    done = kstatus_conditions(failed, ready=True, reason="Succeeded", message="m", generation=1, now="t")
    assert [(c["type"], c["status"]) for c in done] == [("Ready", "True")]
