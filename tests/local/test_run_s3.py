"""`checkpoint-operator local run --store s3`: the same examples give the same Checkpoints as on the volume
store (digests, formats, completeness), the SeaweedFS it starts keeps its data between runs under the state
dir and listens on loopback only, and `--s3-endpoint/--s3-bucket` use a store the user names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoint_operator.local import s3store
from s3server import seaweedfs  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(420)


def local_run(*args: str, state_dir: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "checkpoint_operator", "local", "run", "--state-dir", str(state_dir),
                           "--runtime", "process", "-o", "json", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checkpoints"]}


def test_the_examples_give_the_same_checkpoints_on_both_stores(tmp_path):
    volume = local_run("-f", "examples/local/", state_dir=tmp_path / "volume")
    assert volume.returncode == 0, volume.stderr[-3000:]
    s3 = local_run("-f", "examples/local/", "--store", "s3", state_dir=tmp_path / "s3")
    assert s3.returncode == 0, s3.stderr[-3000:]
    assert "store: s3, SeaweedFS on http://127.0.0.1:" in s3.stderr and str(tmp_path / "s3" / "s3") in s3.stderr
    on_volume, on_s3 = by_name(json.loads(volume.stdout)), by_name(json.loads(s3.stdout))
    assert set(on_volume) == set(on_s3) and len(on_s3) >= 6
    for name, checkpoint in on_s3.items():
        assert checkpoint["store"] == "s3" and on_volume[name]["store"] == "volume"
        for key in ("phase", "digest", "format", "complete", "step", "fileCount", "sizeBytes", "resumable"):
            assert checkpoint[key] == on_volume[name][key], (name, key)
    jobs = {j["name"]: j for j in json.loads(s3.stdout)["trainingJobs"]}
    assert jobs["finetune"]["inputs"] == [{"name": "pretrain-step-300", "digest": on_s3["pretrain-step-300"]["digest"]}]

    # A second run (a new SeaweedFS process, new ports) finds the first run's data in the state dir.
    branch = tmp_path / "branch.yaml"
    branch.write_text((ROOT / "examples/local/2-finetune.yaml").read_text()
                      .replace("name: finetune", "name: branch")
                      .replace("- fromTrainingJob: pretrain\n      select: latest", "- name: pretrain-step-200"))
    again = local_run("-f", str(branch), "--store", "s3", state_dir=tmp_path / "s3")
    assert again.returncode == 0, again.stderr[-3000:]
    branched = by_name(json.loads(again.stdout))
    assert branched["branch-step-250"]["parents"][0]["digest"] == on_s3["pretrain-step-200"]["digest"]
    assert branched["branch-step-250"]["store"] == "s3"
    # --fresh starts over: nothing of the earlier runs is left.
    fresh = local_run("-f", str(branch), "--store", "s3", "--fresh", "--timeout", "5", state_dir=tmp_path / "s3")
    assert fresh.returncode == 1, fresh.stderr[-3000:]
    assert "input Checkpoint pretrain-step-200 does not exist" in fresh.stderr  # the earlier runs' data is gone
    assert [c["name"] for c in json.loads(fresh.stdout)["checkpoints"]] == []


def test_a_store_the_user_names(tmp_path, seaweedfs):  # noqa: F811
    bucket = "local-mode-named"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **seaweedfs.env()}
    result = local_run("-f", "examples/local/1-pretrain.yaml", "--store", "s3", "--s3-endpoint", seaweedfs.endpoint,
                       "--s3-bucket", bucket, state_dir=tmp_path / "state", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"store: s3 at {seaweedfs.endpoint}, bucket {bucket}" in result.stderr
    keys = [o["Key"] for o in seaweedfs.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.startswith("checkpoints/default/pretrain-") and k.endswith(".checkpoint-manifest.json") for k in keys)
    no_keys = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    refused = local_run("-f", "examples/local/1-pretrain.yaml", "--store", "s3", "--s3-endpoint", seaweedfs.endpoint,
                        state_dir=tmp_path / "other", env=no_keys)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the credentials of bucket "
                                           "checkpoints; the agent pods get them through a Secret of the local cluster)")


def test_seaweedfs_is_started_on_loopback_with_every_port_given_and_telemetry_off(tmp_path):
    weed = s3store.LocalSeaweedFS(tmp_path)
    weed.ports = dict(zip(s3store.PORT_FLAGS, range(20000, 20000 + len(s3store.PORT_FLAGS))))
    command = weed.command("weed")
    assert "-master.telemetry=false" in command and "-ip.bind=127.0.0.1" in command and "-ip=127.0.0.1" in command
    for flag in s3store.PORT_FLAGS:
        assert sum(arg.startswith(f"-{flag}=") for arg in command) == 1, flag
    assert f"-dir={tmp_path / 'data'}" in command
    access, secret = weed.credentials()
    assert weed.credentials() == (access, secret)  # made once, kept with the data
    assert oct((tmp_path / "credentials.json").stat().st_mode & 0o777) == "0o600"
