"""Why a workload has no pods: the FailedCreate Events of the Jobs that make them
(reconcile/volumes.refused_pods), read Job by Job, each by its own field selector."""

from __future__ import annotations

from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.kube import EVENTS
from checkpoint_operator.reconcile import volumes
from checkpoint_operator.reconcile.context import Context


class EventsKube:
    """Answers LISTs of Events by `involvedObject.name` (the Job) and counts them."""

    def __init__(self, refused: dict[str, str]):
        self.refused, self.calls = refused, []

    def list(self, resource, namespace, label_selector=None, field_selector=None):
        assert resource == EVENTS and field_selector.startswith("involvedObject.kind=Job,")
        name = field_selector.rsplit("involvedObject.name=", 1)[1]
        self.calls.append(name)
        message = self.refused.get(name)
        return [{"reason": "FailedCreate", "message": message, "lastTimestamp": "2026-01-01T00:00:00Z"}] \
            if message else []


def test_the_first_job_with_a_refusal_is_named_and_the_rest_are_not_read():
    kube = EventsKube({"ddp-node-1-0": 'pods "ddp-node-1-0-0-x" is forbidden: violates PodSecurity'})
    problem = volumes.refused_pods(Context(kube=kube, config=OperatorConfig()), "ns",
                                   ["ddp-node-0-0", "ddp-node-1-0", "ddp-node-2-0"])
    assert problem is not None and problem.reason == "PodsRefused"
    assert problem.message == ('Job ddp-node-1-0 cannot create its pods: pods "ddp-node-1-0-0-x" is forbidden: '
                               'violates PodSecurity')
    assert kube.calls == ["ddp-node-0-0", "ddp-node-1-0"]


def test_a_pass_reads_the_events_of_a_bounded_number_of_jobs():
    """128 workers, none refused (their pods are on their way): not 128 LISTs every recheck."""
    kube = EventsKube({"ddp-node-100-0": "refused"})
    names = [f"ddp-node-{i}-0" for i in range(128)]
    assert volumes.refused_pods(Context(kube=kube, config=OperatorConfig()), "ns", names) is None
    assert kube.calls == names[:volumes.REFUSAL_JOBS_READ]
