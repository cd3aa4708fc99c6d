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


def test_every_message_of_a_status_or_an_event_is_one_line():
    """hostile1 D11: a Scanning event read `scanning c:/a` and, on a second line, `b`."""
    from checkpoint_operator.logic.conditions import one_line_message
    from checkpoint_operator.logic.status import ConditionChange, StatusChange
    assert one_line_message("scanning c:/a\nb") == "scanning c:/a\\nb"
    assert one_line_message("x\r\x1b[31m\u202e\u200b\u2028y") == "x\\x0d\\x1b[31m\\u202e\\u200b\\u2028y"
    assert one_line_message("C:\\dir caf\u00e9 \u4e2d") == "C:\\dir caf\u00e9 \u4e2d"  # unchanged
    assert StatusChange(reason="Scanning", message="scanning c:/a\nb").message == "scanning c:/a\\nb"
    assert ConditionChange("Verified", "False", "DataMismatch", "a\nb").message == "a\\nb"


def test_an_event_posted_is_one_line():
    from checkpoint_operator.config import OperatorConfig
    from checkpoint_operator.reconcile.context import Context

    class Recorder:
        bodies: list = []

        def create(self, resource, namespace, body):
            self.bodies.append(body)
            return body
    ctx = Context(kube=Recorder(), config=OperatorConfig())  # type: ignore[arg-type]
    ctx.warn({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "n"}}, "X", "a\nb\u202ec")
    assert Recorder.bodies[-1]["message"] == "a\\nb\\u202ec"
