"""Argo CD health checks (deploy/argocd/*.lua), run with lupa's Lua 5.1 — the language version of
gopher-lua, which Argo CD embeds — on sample objects, one per branch.

The Lua files are the one source; deploy/argocd/health-checks.yaml embeds them for argocd-cm.
When a Lua file changes, regenerate the YAML with `python tests/test_health_lua.py`.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ARGOCD_DIR = ROOT / "deploy" / "argocd"
HEALTH_CHECKS = ARGOCD_DIR / "health-checks.yaml"
SCRIPTS = {  # argocd-cm key suffix (group_Kind) -> Lua file
    "ckpt.dev_Checkpoint": "checkpoint-health.lua",
    "ckpt.dev_TrainingJob": "trainingjob-health.lua",
    # A catalog entry has a Checkpoint's phases and conditions (it is imported the same way).
    "ckpt.dev_ClusterCheckpoint": "checkpoint-health.lua",
}
HEADER = """\
# Generated from checkpoint-health.lua and trainingjob-health.lua by `python tests/test_health_lua.py`;
# edit the .lua files, not this one. Argo CD health checks for checkpoint-operator's kinds:
# merge them into the argocd-cm ConfigMap, e.g.
#   kubectl -n argocd patch configmap argocd-cm --patch-file deploy/argocd/health-checks.yaml
# or add these keys to the Argo CD Helm chart's `configs.cm` values.
"""


def render_health_checks() -> str:
    lines = [HEADER.rstrip("\n"), "apiVersion: v1", "kind: ConfigMap", "metadata:", "  name: argocd-cm",
             "  namespace: argocd", "  labels:", "    app.kubernetes.io/name: argocd-cm",
             "    app.kubernetes.io/part-of: argocd", "data:"]
    for suffix, filename in SCRIPTS.items():
        lines.append(f"  resource.customizations.health.{suffix}: |")
        for line in (ARGOCD_DIR / filename).read_text().splitlines():
            lines.append(f"    {line}" if line else "")
    return "\n".join(lines) + "\n"


# --- running the scripts --------------------------------------------------------------------

def _lua_runtime():
    try:  # lupa ships several Lua versions; 5.1 is the one that matches Argo CD
        import lupa.lua51 as lupa
    except ImportError:
        import lupa
    return lupa.LuaRuntime(unpack_returned_tuples=True)


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run the health script of `kind` (as embedded in argocd-cm) on `obj`: (status, message)."""
    suffix = f"ckpt.dev_{kind}"
    script = yaml.safe_load(HEALTH_CHECKS.read_text())["data"][f"resource.customizations.health.{suffix}"]
    lua = _lua_runtime()
    lua.globals().obj = lua.table_from(copy.deepcopy(obj), recursive=True)
    result = lua.execute(script)
    status, message = result["status"], result["message"]
    assert status in {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
    assert isinstance(message, str) and message
    return status, message


def condition(type_: str, status: str, reason: str, message: str, generation: int = 1) -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"}


def checkpoint(phase: str | None, *conditions: dict, generation: int = 1, observed: int | None = 1,
               deleting: bool = False, used_by: list[str] | None = None) -> dict:
    obj: dict[str, Any] = {
        "apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
        "metadata": {"name": "llama-step-2000", "namespace": "ml", "generation": generation,
                     "finalizers": ["ckpt.dev/in-use-protection"]},
        "spec": {"source": {"s3": {"uri": "s3://models/llama/"}}},
    }
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    if phase is not None or conditions:
        obj["status"] = {"conditions": list(conditions)}
        if phase is not None:
            obj["status"]["phase"] = phase
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
        if used_by:
            obj["status"]["usedBy"] = [{"name": n, "uid": f"uid-{n}"} for n in used_by]
    return obj


def training_job(phase: str | None, *conditions: dict, generation: int = 1, observed: int | None = 1) -> dict:
    obj: dict[str, Any] = {
        "apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "finetune", "namespace": "ml", "generation": generation},
        "spec": {"template": {"spec": {"containers": [{"name": "train", "image": "python:3.11"}]}}},
    }
    if phase is not None:
        obj["status"] = {"phase": phase, "conditions": list(conditions)}
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


# --- the YAML embeds exactly the Lua files --------------------------------------------------

def test_health_checks_yaml_is_generated_from_the_lua_files():
    assert HEALTH_CHECKS.read_text() == render_health_checks(), \
        "deploy/argocd/health-checks.yaml is stale: run `python tests/test_health_lua.py`"
    data = yaml.safe_load(HEALTH_CHECKS.read_text())["data"]
    for suffix, filename in SCRIPTS.items():
        assert data[f"resource.customizations.health.{suffix}"] == (ARGOCD_DIR / filename).read_text()


def test_health_checks_yaml_is_a_valid_configmap():
    document = yaml.safe_load(HEALTH_CHECKS.read_text())
    kubernetes_validate.validate(document, "1.34.0", strict=True)
    assert document["metadata"]["name"] == "argocd-cm"
    assert set(document["data"]) == {f"resource.customizations.health.{s}" for s in SCRIPTS}


def test_a_catalog_entry_has_a_checkpoint_s_health():
    entry = checkpoint("Ready", condition("Ready", "True", "Ready", "8 files, 12.0Mi"))
    entry.update(kind="ClusterCheckpoint", spec={"source": {"huggingFace": {"repo": "org/tiny"}}})
    del entry["metadata"]["namespace"]
    assert health("ClusterCheckpoint", entry)[0] == "Healthy"
    failed = checkpoint("Failed", condition("Ready", "False", "ImportFailed", "hf://org/tiny: 404"))
    failed["kind"] = "ClusterCheckpoint"
    assert health("ClusterCheckpoint", failed) == ("Degraded", "hf://org/tiny: 404")


# --- Checkpoint -----------------------------------------------------------------------------

def test_checkpoint_ready_is_healthy():
    status, message = health("Checkpoint", checkpoint("Ready", condition("Ready", "True", "Ready", "2 files, 1.2 GiB")))
    assert (status, message) == ("Healthy", "2 files, 1.2 GiB")


def test_checkpoint_ready_condition_without_phase_is_healthy():
    obj = checkpoint(None, condition("Ready", "True", "Ready", "verified"))
    assert health("Checkpoint", obj)[0] == "Healthy"


def test_checkpoint_ready_phase_without_conditions_is_healthy():
    assert health("Checkpoint", checkpoint("Ready"))[0] == "Healthy"


def test_checkpoint_failed_is_degraded_with_the_reason():
    obj = checkpoint("Failed", condition("Ready", "False", "ImportFailed", "s3://models/llama/: access denied"))
    assert health("Checkpoint", obj) == ("Degraded", "s3://models/llama/: access denied")


def test_checkpoint_stalled_is_degraded_even_before_failing():
    obj = checkpoint("Importing", condition("Ready", "False", "Importing", "copying"),
                     condition("Stalled", "True", "SecretMissing", "Secret ml/s3-creds not found"))
    assert health("Checkpoint", obj) == ("Degraded", "Secret ml/s3-creds not found")


def test_checkpoint_stalled_false_does_not_degrade():
    obj = checkpoint("Importing", condition("Ready", "False", "Importing", "copying 3/10 files"),
                     condition("Stalled", "False", "Progressing", ""))
    assert health("Checkpoint", obj) == ("Progressing", "copying 3/10 files")


@pytest.mark.parametrize("phase", ["Pending", "Importing"])
def test_checkpoint_on_the_way_is_progressing_with_the_condition_message(phase):
    obj = checkpoint(phase, condition("Ready", "False", phase, f"{phase}: waiting for the agent pod"))
    assert health("Checkpoint", obj) == ("Progressing", f"{phase}: waiting for the agent pod")


def test_checkpoint_progressing_without_a_message_says_what_it_waits_for():
    status, message = health("Checkpoint", checkpoint("Importing"))
    assert status == "Progressing" and "mport" in message


def test_checkpoint_without_status_is_progressing():
    assert health("Checkpoint", checkpoint(None))[0] == "Progressing"


def test_checkpoint_with_unobserved_generation_is_progressing():
    obj = checkpoint("Ready", condition("Ready", "True", "Ready", "ok"), generation=3, observed=2)
    status, message = health("Checkpoint", obj)
    assert status == "Progressing" and "generation 3" in message


def test_checkpoint_blocked_deletion_names_the_jobs():
    obj = checkpoint("Ready", condition("Ready", "True", "Ready", "ok"), deleting=True, used_by=["finetune", "eval"])
    assert health("Checkpoint", obj) == ("Progressing", "Deletion blocked: in use by finetune, eval")


def test_checkpoint_deletion_without_users_is_progressing():
    obj = checkpoint("Ready", condition("Ready", "True", "Ready", "ok"), deleting=True)
    assert health("Checkpoint", obj)[0] == "Progressing"


# --- TrainingJob ----------------------------------------------------------------------------

def test_training_job_succeeded_is_healthy():
    obj = training_job("Succeeded", condition("Ready", "True", "Succeeded", "3 checkpoints written"))
    assert health("TrainingJob", obj) == ("Healthy", "3 checkpoints written")


def test_training_job_failed_is_degraded():
    obj = training_job("Failed", condition("Ready", "False", "BackoffLimitExceeded", "pod exited with code 1"))
    assert health("TrainingJob", obj) == ("Degraded", "pod exited with code 1")


@pytest.mark.parametrize("phase", ["Pending", "Running", "Snapshotting"])
def test_training_job_on_the_way_is_progressing(phase):
    obj = training_job(phase, condition("Ready", "False", phase, f"{phase} since 10:00"))
    assert health("TrainingJob", obj) == ("Progressing", f"{phase} since 10:00")
    # without a condition message the script still explains itself
    status, message = health("TrainingJob", training_job(phase))
    assert status == "Progressing" and message


def test_training_job_with_unobserved_generation_is_progressing_even_when_succeeded():
    obj = training_job("Succeeded", condition("Ready", "True", "Succeeded", "done"), generation=2, observed=1)
    status, message = health("TrainingJob", obj)
    assert status == "Progressing" and "generation 2" in message


def test_training_job_without_status_is_progressing():
    assert health("TrainingJob", training_job(None))[0] == "Progressing"


if __name__ == "__main__":
    HEALTH_CHECKS.write_text(render_health_checks())
    print(f"wrote {HEALTH_CHECKS.relative_to(ROOT)}", file=sys.stderr)
