"""`checkpoint-operator local run`, as a user runs it: the README's first command on the
examples, state kept between runs, and bad manifests refused with the field named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(240)


def local_run(*args: str, state_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "checkpoint_operator", "local", "run", "--state-dir", str(state_dir),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=200)


def test_examples_run_locally_and_state_persists(tmp_path):
    state = tmp_path / "state"
    # The process runtime whatever this machine has (tests/containers runs the same with Podman).
    first = local_run("-f", "examples/local/", "-o", "json", "--runtime", "process", state_dir=state)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.startswith("runtime: process (--runtime process): pod commands run as host processes\n")
    report = json.loads(first.stdout)
    jobs = {j["name"]: j for j in report["trainingJobs"]}
    assert jobs["pretrain"]["phase"] == "Succeeded" and jobs["finetune"]["phase"] == "Succeeded"
    assert sorted(jobs["pretrain"]["outputCheckpoints"]) == ["pretrain-step-200", "pretrain-step-300"]  # keep: 2
    ckpts = {c["name"]: c for c in report["checkpoints"]}
    latest = ckpts["pretrain-step-300"]
    assert jobs["finetune"]["inputs"] == [{"name": "pretrain-step-300", "digest": latest["digest"]}]
    resumed = ckpts["finetune-step-400"]
    assert resumed["step"] == 400 and resumed["format"] == "safetensors" and resumed["resumable"] is True
    assert [p["name"] for p in resumed["parents"]] == ["pretrain-step-300"]
    assert resumed["producedBy"]["name"] == "finetune"

    # A second run sees the first run's Checkpoints and can build on them by name.
    extra = tmp_path / "3-from-200.yaml"
    extra.write_text((ROOT / "examples/local/2-finetune.yaml").read_text()
                     .replace("name: finetune", "name: branch")
                     .replace("- fromTrainingJob: pretrain\n      select: latest", "- name: pretrain-step-200"))
    second = local_run("-f", str(extra), "-o", "table", "--runtime", "process", state_dir=state)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "branch-step-250" in second.stdout and "pretrain-step-300" in second.stdout


def test_bad_manifest_is_refused_with_the_field_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: ckpt.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: x}\n"
                   "spec: {replicas: 0, template: {spec: {containers: [{name: c}]}}}\n")
    result = local_run("-f", str(bad), state_dir=tmp_path / "state")
    assert result.returncode == 2
    assert "spec.replicas must be at least 1" in result.stderr


@pytest.mark.parametrize("text, words", [
    (": [\n", "not valid YAML (expected <block end>, but found ':' at line 1, column 1)"),
    ("- a\n- b\n", "a document is a list, not a Kubernetes object"),
    (b"\xff\xfe".decode("latin-1"), "cannot be read as UTF-8 text"),
])
def test_a_file_that_is_no_manifest_is_one_line_naming_it(tmp_path, text, words):
    """hostile1 D11: `local run -f` of a file that is not YAML printed the parser's five lines
    without the file's name (or a traceback for a list)."""
    bad = tmp_path / "notyaml.yaml"
    bad.write_bytes(text.encode("latin-1"))
    result = local_run("-f", str(bad), state_dir=tmp_path / "state")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {bad}: {words}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_runtime_choice_says_why(monkeypatch):
    """Without --runtime: the first engine that runs the agent image, else processes, with the reasons."""
    from checkpoint_operator.local import engine
    # Which engines work is this machine's business (tests/containers runs the real one); the
    # decision and its message are what is tested here.
    monkeypatch.setattr(engine, "probe", lambda name, image: (None, f"{name} is not installed"))
    runtime, why = engine.choose_runtime(None, "localhost/checkpoint-operator:dev", None)
    assert runtime.name == "process"
    assert why == ("runtime: process (no container engine works: podman is not installed; docker is not installed): "
                   "pod commands run as host processes")
    with pytest.raises(RuntimeError, match="--runtime podman: podman is not installed"):
        engine.choose_runtime("podman", "localhost/checkpoint-operator:dev", None)


def test_missing_engine_for_an_explicit_runtime_is_a_usage_error(tmp_path):
    result = local_run("-f", "examples/local/", "--runtime", "docker", "--agent-image", "localhost/not-built:1",
                       state_dir=tmp_path / "state")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --runtime docker: docker ")
