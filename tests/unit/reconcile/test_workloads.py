"""Which pods are a TrainingJob's workers (issue 23 item 9): those an object the operator created
controls, with either engine (reconcile/workloads.worker_controllers, Indexes.worker_pods)."""

from __future__ import annotations

from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.kube import JOBS
from checkpoint_operator.reconcile import workloads
from checkpoint_operator.reconcile.context import Context
from factories import indexes, training_job


class ListingKube:
    """Answers the one call worker_controllers makes: a list of Jobs by label."""

    def __init__(self, jobs: list[dict]):
        self.jobs, self.calls = jobs, []

    def list(self, resource, namespace, label_selector=None, field_selector=None):
        self.calls.append((resource, namespace, label_selector))
        key, _, value = (label_selector or "").partition("=")
        return [j for j in self.jobs if (j["metadata"].get("labels") or {}).get(key) == value]


def child_job(name: str, uid: str, controller_uid: str, jobset: str = "ddp") -> dict:
    return {"metadata": {"name": name, "uid": uid, "labels": {"jobset.sigs.k8s.io/jobset-name": jobset},
                         "ownerReferences": [{"kind": "JobSet", "name": jobset, "uid": controller_uid,
                                              "controller": True}]}}


def job(engine: str, job_uid: str | None) -> TrainingJob:
    body = training_job("ddp", replicas=2, engine=engine, phase="Running")
    body["status"].update({"jobName": "ddp", **({"jobUid": job_uid} if job_uid else {})})
    return TrainingJob.model_validate(body)


def test_engine_job_trusts_the_recorded_job_only():
    kube = ListingKube([])
    ctx = Context(kube=kube, config=OperatorConfig())
    assert workloads.worker_controllers(ctx, job("Job", "job-uid")) == {"job-uid"}
    assert workloads.worker_controllers(ctx, job("Job", None)) == frozenset()  # nothing recorded: nothing trusted
    assert kube.calls == []


def test_engine_jobset_trusts_the_child_jobs_of_the_recorded_jobset_only():
    kube = ListingKube([child_job("ddp-node-0", "child-now", "js-uid"),
                        child_job("ddp-node-0-old", "child-old", "js-uid"),  # an earlier attempt's, still deleting
                        child_job("ddp-node-0", "forged", "another-jobset"),  # the same labels, another controller
                        child_job("other-node-0", "other-child", "js-uid", jobset="other")])
    ctx = Context(kube=kube, config=OperatorConfig())
    assert workloads.worker_controllers(ctx, job("JobSet", "js-uid")) == {"child-now", "child-old"}
    assert kube.calls == [(JOBS, "default", "jobset.sigs.k8s.io/jobset-name=ddp")]
    assert workloads.worker_controllers(ctx, job("JobSet", None)) == frozenset()


def worker(name: str, controller_uid: str | None) -> dict:
    meta: dict = {"name": name, "namespace": "default",
                  "labels": {"ckpt.dev/component": "worker", "ckpt.dev/trainingjob-uid": "u-ddp"}}
    if controller_uid:
        meta["ownerReferences"] = [{"kind": "Job", "uid": controller_uid, "controller": True}]
    return {"metadata": meta, "status": {"phase": "Running"}}


def test_only_pods_a_trusted_controller_controls_are_workers():
    found = indexes(pods=[worker("ddp-0", "child-now"), worker("impostor", "tenant-job"), worker("bare", None)])
    assert [p.name for p in found.worker_pods("default", "u-ddp", {"child-now"})] == ["ddp-0"]
    assert found.worker_pods("default", "u-ddp", frozenset()) == []
