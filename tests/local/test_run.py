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


@pytest.mark.slow
def test_examples_run_locally_and_state_persists(tmp_path):
    state = tmp_path / "state"
    # The process runtime whatever this machine has (tests/containers runs the same with Podman).
    first = local_run("-f", "examples/local/", "-o", "json", "--runtime", "process", state_dir=state)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.startswith("runtime: process (--runtime process): pod commands run as host processes\n")
    report = json.loads(first.stdout)
    jobs = {j["name"]: j for j in report["trainingJobs"]}
    assert jobs["pretrain"]["phase"] == "Succeeded" and jobs["finetune"]["phase"] == "Succeeded"
    assert sorted(jobs["pretrain"]["outputCheckpoints"]) == ["pretrain.step-200", "pretrain.step-300"]  # keep: 2
    ckpts = {c["name"]: c for c in report["checkpoints"]}
    latest = ckpts["pretrain.step-300"]
    assert jobs["finetune"]["inputs"] == [{"name": "pretrain.step-300", "digest": latest["digest"]}]
    resumed = ckpts["finetune.step-400"]
    assert resumed["step"] == 400 and resumed["format"] == "safetensors" and resumed["resumable"] is True
    assert [p["name"] for p in resumed["parents"]] == ["pretrain.step-300"]
    assert resumed["producedBy"]["name"] == "finetune"

    # A second run sees the first run's Checkpoints and can build on them by name.
    extra = tmp_path / "3-from-200.yaml"
    extra.write_text((ROOT / "examples/local/2-finetune.yaml").read_text()
                     .replace("name: finetune", "name: branch")
                     .replace("- fromTrainingJob: pretrain\n      select: latest", "- name: pretrain.step-200"))
    second = local_run("-f", str(extra), "-o", "table", "--runtime", "process", state_dir=state)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "branch.step-250" in second.stdout and "pretrain.step-300" in second.stdout


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


@pytest.mark.slow
def test_examples_run_on_three_nodes_with_block_storage_and_volume_snapshots(tmp_path):
    """--nodes 3 --storage-class block --volume-snapshot-class block-snapshots: the examples give the same
    results; the checkpoints are in snapshot copies and the output volumes are released."""
    state = tmp_path / "state"
    result = local_run("-f", "examples/local/1-pretrain.yaml", "-f", "examples/local/2-finetune.yaml", "-o", "json",
                       "--runtime", "process", "--nodes", "3", "--storage-class", "block",
                       "--volume-snapshot-class", "block-snapshots", state_dir=state)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    jobs = {j["name"]: j for j in report["trainingJobs"]}
    assert sorted(jobs["pretrain"]["outputCheckpoints"]) == ["pretrain.step-200", "pretrain.step-300"]
    assert jobs["finetune"]["phase"] == "Succeeded"
    assert [i["name"] for i in jobs["finetune"]["inputs"]] == ["pretrain.step-300"]
    copies = list((state / "cluster" / "snapshots").iterdir())
    assert len(copies) == 2  # pretrain's output and finetune's: one end-of-job snapshot each
    assert any((c / "step-300").is_dir() for c in copies)
    volumes = state / "cluster" / "volumes" / "default"
    assert not any(p.name.startswith(("pretrain-output-", "finetune-output-")) for p in volumes.iterdir())


@pytest.mark.parametrize("flags, problem", [
    (["--volume-snapshot-class", "block-snapshots"], "it snapshots the volumes of block, block-multireader; "
                                                     "add --storage-class block"),
    (["--storage-class", "gp3"], "--storage-class gp3: the local cluster's classes are standard, block, "
                                 "block-multireader"),
    (["--storage-class", "block", "--volume-snapshot-class", "ebs"], "the local cluster's VolumeSnapshotClass is "
                                                                     "block-snapshots"),
])
def test_storage_flags_that_cannot_work_are_refused_in_one_line(tmp_path, flags, problem):
    result = local_run("-f", "examples/local/1-pretrain.yaml", *flags, state_dir=tmp_path / "state")
    assert result.returncode == 2 and problem in result.stderr and result.stderr.count("\n") == 1


def test_nodes_must_be_a_count(tmp_path):
    result = local_run("-f", "examples/local/1-pretrain.yaml", "--nodes", "0", state_dir=tmp_path / "state")
    assert result.returncode == 2 and "--nodes 0: a whole number from 1 to 64" in result.stderr


def job(name: str, code: str = "print(1)", **spec: object) -> str:
    """A TrainingJob manifest whose one container runs `python -c code`."""
    import yaml
    body = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {**spec, "template": {"spec": {"containers": [
                {"name": "trainer", "image": "ignored", "command": ["python", "-c", code]}]}}}}
    return yaml.safe_dump(body)


# step-1: a plain file (no format's rule finds it incomplete); checkpoint-5: a Trainer checkpoint without
# its trainer_state.json (written last: its absence means cut short), so incomplete.
WRITES = ("import os; out = os.environ['CHECKPOINT_OUTPUT_DIR']\n"
          "os.makedirs(f'{out}/step-1'); open(f'{out}/step-1/notes.txt', 'w').write('notes')\n"
          "os.makedirs(f'{out}/checkpoint-5')\n"
          "for f in ('config.json', 'model.safetensors', 'optimizer.pt'):\n"
          "    open(f'{out}/checkpoint-5/{f}', 'w').write('{}')\n")
# Flushed before it raises: a container's log holds stdout and stderr interleaved as written (one
# pipe, as a kubelet's), and Python flushes a piped stdout only after printing the traceback.
CRASHES = "for i in range(30): print('line', i)\nprint('\\x1b[31mred\\x1b[0m', flush=True)\nraise ValueError('boom')\n"


@pytest.mark.slow
def test_what_can_never_finish_is_named_at_once_and_a_failed_pod_shows_its_log(tmp_path):
    """Before: a job waiting on an input that nothing applied can make kept `local run` waiting,
    silently, for the whole --timeout (600 s); a failed pod's log was nowhere to be seen; the table
    had no completeness (issue 18 items 8b, 8d, 8f)."""
    manifests = tmp_path / "jobs.yaml"
    manifests.write_text("---\n".join([
        job("orphan", checkpoints=[{"fromTrainingJob": "nosuchjob"}]),
        job("byname", checkpoints=[{"name": "ghost.step-1"}]),
        job("waiter", checkpoints=[{"fromTrainingJob": "orphan"}]),
        job("crasher", CRASHES, backoffLimit=0),
        job("good", WRITES)]))
    state = tmp_path / "state"
    result = local_run("-f", str(manifests), "--runtime", "process", state_dir=state)  # the default --timeout: 600 s
    assert result.returncode == 1, result.stderr[-3000:]
    err = result.stderr
    assert "not everything settled" not in err
    assert "error: TrainingJob orphan can never finish: input latest checkpoint of TrainingJob nosuchjob: " \
           "no TrainingJob nosuchjob exists, and none was applied" in err
    assert "error: TrainingJob byname can never finish: input Checkpoint ghost.step-1 does not exist" in err
    assert "error: TrainingJob waiter can never finish: it takes from TrainingJob orphan" in err
    # the failed pod: why, the end of its log (escaped), and where the whole of it is
    assert "failed: container trainer exited with code 1 (Error)" in err
    assert "  | ValueError: boom\n" in err and "  | \\x1b[31mred\\x1b[0m\n" in err and "  | line 29\n" in err
    assert "  | line 9\n" not in err  # the tail only
    [full] = list((state / "logs" / "default").glob("crasher-*/trainer.log"))
    assert f"full log: {full}" in err and "line 0\nline 1\n" in full.read_text()
    # completeness, as agent scan shows it
    assert "\nincomplete (1):\n  good.checkpoint-5  " in result.stdout
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("good.")}
    assert "  NO  " in rows["good.checkpoint-5"] and "  NO  " not in rows["good.step-1"]


@pytest.mark.slow
def test_an_earlier_runs_objects_are_named_and_fresh_starts_clean(tmp_path):
    """Before: a job stuck in the state directory from an earlier run made every later run wait
    for the whole timeout, without saying why (issue 18 item 8c)."""
    state = tmp_path / "state"
    first = tmp_path / "first.yaml"
    first.write_text(job("orphan", checkpoints=[{"fromTrainingJob": "nosuchjob"}]))
    assert local_run("-f", str(first), "--runtime", "process", state_dir=state).returncode == 1
    second = tmp_path / "second.yaml"
    second.write_text(job("good", WRITES))
    again = local_run("-f", str(second), "-o", "json", "--runtime", "process", state_dir=state)
    assert again.returncode == 0, again.stderr[-3000:]  # the earlier run's job is not this run's failure
    assert "holds objects from an earlier run, which stay and take part in this one: 1 TrainingJob (orphan); " \
           "start clean with --fresh" in again.stderr
    assert "warning: TrainingJob orphan (from an earlier run: start clean with --fresh) can never finish" in again.stderr
    report = json.loads(again.stdout)
    by_name = {c["name"]: c for c in report["checkpoints"]}
    assert (by_name["good.checkpoint-5"]["complete"], by_name["good.checkpoint-5"]["terminating"]) == (False, False)
    assert by_name["good.step-1"]["complete"] is not False  # no rule for a plain file: not found incomplete
    assert by_name["good.checkpoint-5"]["completeReason"]  # why it is incomplete, as agent scan says it

    fresh = local_run("-f", str(second), "-o", "json", "--runtime", "process", "--fresh", state_dir=state)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "earlier run" not in fresh.stderr
    assert [j["name"] for j in json.loads(fresh.stdout)["trainingJobs"]] == ["good"]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    refused = local_run("-f", str(second), "--fresh", state_dir=foreign)
    assert refused.returncode == 2 and (foreign / "thesis.tex").read_text() == "years of work"
    assert "does not look like a local mode state directory (it holds thesis.tex)" in refused.stderr


def test_a_manifest_that_cannot_be_one_is_one_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("apiVersion: ckpt.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: x}\nspec: "
                    + "[" * 3000 + "]" * 3000 + "\n")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    for path, message in ((deep, "nested too deeply to be a manifest"), (listed, "a document is a list, not a Kubernetes object")):
        result = local_run("-f", str(path), state_dir=tmp_path / "state")
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


FIFO_JOB = """apiVersion: ckpt.dev/v1alpha1
kind: TrainingJob
metadata: {name: fifo-job}
spec:
  template:
    spec:
      containers:
        - name: trainer
          image: python:3.11
          command: [python, -c, "import os; d=os.path.join(os.environ['CHECKPOINT_OUTPUT_DIR'],'step-1'); os.makedirs(d); open(os.path.join(d,'w'),'w').write('x'); os.mkfifo(os.path.join(d,'pipe'))"]
"""


@pytest.mark.slow
def test_a_fifo_in_the_output_is_left_out_and_the_run_ends(tmp_path):
    """hostile4 D13: the snapshot pod's view of the output opened the FIFO to copy it and blocked
    for good: the job stayed Snapshotting and the run never exited, --timeout or not."""
    (tmp_path / "job.yaml").write_text(FIFO_JOB)
    result = local_run("-f", str(tmp_path / "job.yaml"), "-o", "json", "--runtime", "process", "--timeout", "90",
                       state_dir=tmp_path / "state")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert [(j["name"], j["phase"]) for j in report["trainingJobs"]] == [("fifo-job", "Succeeded")]
    assert [(c["name"], c["phase"], c["fileCount"]) for c in report["checkpoints"]] == [("fifo-job.step-1", "Ready", 1)]


BLOCKED = """
import os, sys, threading
from checkpoint_operator.local.cli import exit_even_if_blocked
os.mkfifo(sys.argv[1])
threading.Thread(target=lambda: open(sys.argv[1], "rb"), name="kubelet-view").start()
print("ended", flush=True)
exit_even_if_blocked(3)
"""


@pytest.mark.slow
def test_the_run_exits_with_its_code_while_a_thread_is_blocked_in_a_system_call(tmp_path):
    """hostile4 D13: `local run` printed its --timeout error, then the interpreter waited for good
    on a kubelet thread blocked in open() of a FIFO (Python joins non-daemon threads at exit)."""
    result = subprocess.run([sys.executable, "-c", BLOCKED, str(tmp_path / "pipe")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3 and result.stdout == "ended\n"
    assert "warning: 1 thread(s) still blocked (kubelet-view): exiting anyway" in result.stderr


@pytest.mark.slow
def test_a_job_that_can_never_finish_is_reported_once_and_no_empty_table(tmp_path):
    """Before: the `error:` line came twice, at once during the run and again after the tables, with an
    empty CHECKPOINT table (its header alone) between them. Now once, at once (the run goes on with the rest,
    maybe for minutes: that is when it is worth knowing), and a table with no rows is left out."""
    manifests = tmp_path / "jobs.yaml"
    manifests.write_text(job("byname", checkpoints=[{"name": "ghost.step-1"}]))
    result = local_run("-f", str(manifests), "--runtime", "process", state_dir=tmp_path / "state")
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "can never finish" in line]
    assert lines == ["error: TrainingJob byname can never finish: input Checkpoint ghost.step-1 does not exist, "
                     "and no unfinished TrainingJob would write it (none has the prefix 'ghost': a job's Checkpoints "
                     "are named <namePrefix or job name>.<directory>); the run goes on with the rest"]
    assert result.stdout.split()[:4] == ["TRAININGJOB", "PHASE", "INPUTS", "OUTPUTS"]
    assert "byname" in result.stdout and "CHECKPOINT" not in result.stdout  # no Checkpoints: no table for them
