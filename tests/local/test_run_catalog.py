"""examples/catalog/ in local mode, as a platform team and a tenant try it: the catalog entry is imported
from a Hub (here the local mini Hub standing in for huggingface.co, the example's only change) and the
tenant's TrainingJob fine-tunes from it, pinned to its digest; on both stores (s3: the catalog prefix of the
SeaweedFS local mode starts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hubserver import mini_hub  # noqa: F401  (fixture)
from layouts import tiny_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "catalog"
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # whole `local run`s: the slow tier


@pytest.mark.parametrize("store", ["volume", "s3"])
def test_the_catalog_example_runs_locally(tmp_path, mini_hub, store):  # noqa: F811
    docs = {path.name: yaml.safe_load(path.read_text()) for path in sorted(EXAMPLES.glob("*.yaml"))}
    entry = docs["1-clustercheckpoint-tiny-gpt2.yaml"]
    source = entry["spec"]["source"]["huggingFace"]
    commit = mini_hub.add_repo(source["repo"], tiny_model())
    source["endpoint"] = mini_hub.endpoint
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for name, doc in docs.items():
        (manifests / name).write_text(yaml.safe_dump(doc))
    result = subprocess.run([sys.executable, "-m", "checkpoint_operator", "local", "run", "-f", str(manifests),
                             "--runtime", "process", "--state-dir", str(tmp_path / "state"), "-o", "json",
                             "--store", store],
                            cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    (imported,) = report["clusterCheckpoints"]
    assert imported["phase"] == "Ready" and imported["format"] == "huggingface"
    assert imported["license"] == entry["spec"]["license"]
    assert imported["source"] == f"hf://{source['repo']}@main" and imported["commit"] == commit
    (job,) = report["trainingJobs"]
    assert job["phase"] == "Succeeded"
    assert job["inputs"] == [{"name": "tiny-gpt2", "digest": imported["digest"]}]
    (output,) = report["checkpoints"]
    assert output["store"] == store
    assert output["parents"][0]["kind"] == "ClusterCheckpoint" and output["parents"][0]["name"] == "tiny-gpt2"
    assert imported["store"] == store and output["fileCount"] == 2  # (finetune.py fails without the entry's config)
    if store == "volume":  # the job's output is a file of the local cluster's volume, what it read named there
        started_from = next((tmp_path / "state" / "cluster").rglob("step-1/started_from.json"))
        assert set(json.loads(started_from.read_text())) >= {"config.json", "model.safetensors"}
