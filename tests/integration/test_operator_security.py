"""No same-namespace back doors (issue 23), through the real operator against the emulated API:

- Pod Security "restricted" enforced on the namespace (item 3): a job whose template meets it
  runs, is snapshotted and consumed (every operator pod admitted); one whose template does not is
  refused by admission, and the TrainingJob says so in the API server's words;
"""

from __future__ import annotations

import copy

import pytest

from checkpoint_operator.local.pod_security import ENFORCE_LABEL
from conftest import CKPT, NS, TJ, training_job, write_checkpoint

pytestmark = pytest.mark.timeout(180)

RESTRICTED_SPEC = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "trainer", "image": "trainer:1", "command": ["train"],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}


def restricted_job(name: str, **spec) -> dict:
    body = training_job(name, **spec)
    body["spec"]["template"] = {"spec": copy.deepcopy(RESTRICTED_SPEC)}
    return body


async def enforce(api, level: str) -> None:
    await api.patch("v1/namespaces", None, NS, {"metadata": {"labels": {ENFORCE_LABEL: level}}})


async def status_of(api, resource: str, name: str) -> dict:
    return ((await api.get(resource, NS, name)) or {}).get("status") or {}


async def test_restricted_namespace_runs_compliant_jobs_and_names_the_refusal_of_others(
        api, operator, cluster, trainer, wait_for):
    await enforce(api, "restricted")

    def produce(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1", {"model.safetensors": b"w" * 10})
        return 0
    trainer.behaviours["producer"] = produce
    trainer.behaviours["consumer"] = lambda attempt, env: 0
    await api.create(TJ, NS, restricted_job("producer", output={"publish": "Continuous"}))

    async def succeeded(name):
        status = await status_of(api, TJ, name)
        return status if status.get("phase") == "Succeeded" else None
    done = await wait_for(lambda: succeeded("producer"), timeout=60)
    assert done["outputCheckpoints"] == ["producer-step-1"]
    await api.create(TJ, NS, restricted_job("consumer", checkpoints=[{"name": "producer-step-1"}]))
    await wait_for(lambda: succeeded("consumer"), timeout=60)

    # The same job, but the template sets nothing: every pod of its Job is refused by admission.
    await api.create(TJ, NS, training_job("loose"))

    async def refused():
        status = await status_of(api, TJ, "loose")
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        return ready if ready.get("reason") == "PodsRefused" else None
    condition = await wait_for(refused, timeout=60)
    assert 'violates PodSecurity "restricted:latest"' in condition["message"]
    assert 'container "trainer" must set securityContext.allowPrivilegeEscalation=false' in condition["message"]
    assert (await status_of(api, TJ, "loose"))["phase"] == "Running"
    assert not [p for p in await api.list("v1/pods", NS) if p["metadata"]["name"].startswith("loose")]
    assert (await api.get(CKPT, NS, "producer-step-1"))["status"]["phase"] == "Ready"
