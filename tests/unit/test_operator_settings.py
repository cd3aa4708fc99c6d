"""main.configure_settings: what kopf asks the API server for (issue 22 item 4)."""

from __future__ import annotations

import kopf
from kopf._cogs.structs.references import Resource

from checkpoint_operator import main


def _selectors(settings: kopf.OperatorSettings, group: str, version: str, plural: str, kind: str) -> list[str]:
    """The label selectors kopf's LIST and watch of `plural` send (kopf's own collect, as they call it)."""
    resource = Resource(group=group, version=version, plural=plural, kind=kind, singular=kind.lower(), namespaced=True)
    return settings.watching.label_selectors.collect(resource)


def test_only_the_operator_s_own_pods_jobs_and_jobsets_stream_and_lists_come_in_pages():
    """Every handler of pods, Jobs and JobSets is for the operator's own (labels=MANAGED); the watch
    streamed every pod of the namespace, each event a pass through kopf (about 0.5 ms of CPU here).
    Claims stream whole: a Checkpoint may adopt a user's claim, and its event wakes that Checkpoint."""
    settings = kopf.OperatorSettings()
    main.configure_settings(settings)
    managed = ["app.kubernetes.io/managed-by=checkpoint-operator"]
    assert _selectors(settings, "", "v1", "pods", "Pod") == managed
    assert _selectors(settings, "batch", "v1", "jobs", "Job") == managed
    assert _selectors(settings, "jobset.x-k8s.io", "v1alpha2", "jobsets", "JobSet") == managed
    assert _selectors(settings, "", "v1", "persistentvolumeclaims", "PersistentVolumeClaim") == []
    assert _selectors(settings, "ckpt.dev", "v1alpha1", "checkpoints", "Checkpoint") == []
    assert _selectors(settings, "ckpt.dev", "v1alpha1", "trainingjobs", "TrainingJob") == []
    assert settings.watching.chunk_size == main.LIST_CHUNK
    # The selector is the one the handlers filter on: nothing a handler wants is filtered out.
    assert main.MANAGED_SELECTOR == ",".join(f"{k}={v}" for k, v in main.MANAGED.items())
