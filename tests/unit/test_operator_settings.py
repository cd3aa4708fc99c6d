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
    """Every wake-up of pods, Jobs and JobSets is for the operator's own; a watch of every pod of the
    namespace cost a pass through the handlers for each. Claims stream whole: a Checkpoint may adopt a
    user's claim, and its event wakes that Checkpoint. The child kinds are the informer's
    (reconcile/informer.py), as are the custom resources (whole)."""
    managed = "app.kubernetes.io/managed-by=checkpoint-operator"
    selectors = {resource.plural: (selector, optional) for resource, selector, optional in main.CHILDREN}
    assert selectors == {"pods": (managed, False), "jobs": (managed, False), "jobsets": (managed, True),
                         "persistentvolumeclaims": (None, False)}
    settings = kopf.OperatorSettings()
    main.configure_settings(settings)
    assert _selectors(settings, "ckpt.dev", "v1alpha1", "checkpoints", "Checkpoint") == []
    assert _selectors(settings, "ckpt.dev", "v1alpha1", "trainingjobs", "TrainingJob") == []
    assert settings.watching.chunk_size == main.LIST_CHUNK
    # The selector is the one the wake-ups filter on: nothing a wake-up wants is filtered out.
    assert main.MANAGED_SELECTOR == ",".join(f"{k}={v}" for k, v in main.MANAGED.items())


def test_kopf_watches_nothing_of_the_operator_s():
    """Every kind's events go through the informer alone (the custom resources too, issue 22 item 4): a
    kopf handler left on one of them would bring its watch stream and its per-event machinery back
    (and deliver every event twice). kopf keeps peering, the probes, start-up and clean-up."""
    registry = kopf.get_default_registry()
    resource_handlers = [h for handlers in (registry._indexing, registry._watching, registry._changing,
                                            registry._spawning, registry._webhooks)
                         for h in handlers.get_all_handlers()]
    assert resource_handlers == []
    assert {h.id for h in registry._activities.get_all_handlers()} >= {"start_queue", "stop_queue", "informer"}
    custom = {(resource.plural, selector, optional) for resource, selector, optional in main.CUSTOM}
    assert custom == {("trainingjobs", None, True), ("checkpoints", None, True), ("clustercheckpoints", None, True)}
