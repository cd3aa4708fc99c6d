"""Local mode's API refuses what a cluster would (issue 23 item 3): a pod in a namespace labelled
pod-security.kubernetes.io/enforce=baseline|restricted is checked by local/pod_security.py and
refused with the API server's 403; the operator's own pod shapes are admitted."""

from __future__ import annotations

import copy
import re

import pytest

import pod_shapes
from checkpoint_operator.local import pod_security
from checkpoint_operator.local.server import ApiClient, ApiError

AGENT_PODS = pod_shapes.agent_pods()
TRAINING_PODS = pod_shapes.training_pods()


async def _namespace(api: ApiClient, name: str, level: str | None) -> None:
    labels = {pod_security.ENFORCE_LABEL: level} if level else {}
    await api.create("v1/namespaces", None, {"metadata": {"name": name, "labels": labels}})


async def test_a_restricted_namespace_refuses_a_pod_that_breaks_the_profile(api: ApiClient):
    await _namespace(api, "strict", "restricted")
    with pytest.raises(ApiError) as caught:
        await api.create("v1/pods", "strict", {"metadata": {"name": "loose"},
                                               "spec": {"containers": [{"name": "app", "image": "i"}]}})
    assert caught.value.status == 403 and caught.value.reason == "Forbidden"
    assert caught.value.body["message"].startswith(
        'pods "loose" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false')
    assert await api.get("v1/pods", "strict", "loose") is None
    for name, shape in [*AGENT_PODS.items(), *TRAINING_PODS.items()][::5]:
        body = copy.deepcopy(shape)
        body["metadata"].update(name=re.sub(r"[^a-z0-9-]", "-", name.lower()), namespace="strict")
        body["metadata"].pop("ownerReferences", None)
        await api.create("v1/pods", "strict", body)


async def test_a_baseline_namespace_refuses_only_baseline_violations(api: ApiClient):
    await _namespace(api, "base", "baseline")
    await api.create("v1/pods", "base", {"metadata": {"name": "plain"},
                                         "spec": {"containers": [{"name": "app", "image": "i"}]}})
    with pytest.raises(ApiError) as caught:
        await api.create("v1/pods", "base", {"metadata": {"name": "priv"}, "spec": {"containers": [
            {"name": "app", "image": "i", "securityContext": {"privileged": True}}]}})
    assert caught.value.status == 403
    assert 'violates PodSecurity "baseline:latest": privileged (container "app" must not set ' \
           'securityContext.privileged=true)' in caught.value.body["message"]


async def test_an_unlabelled_namespace_admits_any_pod(api: ApiClient):
    await _namespace(api, "open", None)
    await api.create("v1/pods", "open", {"metadata": {"name": "priv"}, "spec": {"containers": [
        {"name": "app", "image": "i", "securityContext": {"privileged": True}}], "hostNetwork": True}})
    assert await api.get("v1/pods", "open", "priv") is not None
