"""The operator's lifecycle with every pod run by Podman: the training pods in the training image
(as a non-root user), the agent pods (snapshot, s3 upload and download) in the operator's image.
What the emulator's kubelet cannot show is checked here: the pod specs the operator builds
(mounts, subPaths, env, security context, init containers, the download's emptyDir) work in a
real container runtime, and read-only inputs are really read-only."""

from __future__ import annotations

import base64
import json

import pytest

from checkpoint_operator.objectstore.s3 import manifest_exists
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.local.engine import OPERATOR_IMAGE
from containers_support import CKPT, NS, TJ, Operator, python_job
from formats_files import torch_file, weights

pytestmark = pytest.mark.timeout(240)

# Real file formats (a checkpoint of arbitrary bytes under weight names is incomplete, and latest skips it).
PRETRAIN = """
import os, pathlib
out = pathlib.Path(os.environ["CHECKPOINT_OUTPUT_DIR"])
weights = {100: bytes.fromhex("%s"), 200: bytes.fromhex("%s")}
for step in (100, 200):
    d = out / f"step-{step}"
    d.mkdir()
    (d / "model.safetensors").write_bytes(weights[step])
    (d / "optimizer.pt").write_bytes(bytes.fromhex("%s"))
print("uid", os.getuid())
""" % (weights(b"w" * 100).hex(), weights(b"w" * 200).hex(), torch_file().hex())

CONSUME = """
import json, os, pathlib, time
src = pathlib.Path(os.environ["CHECKPOINT_INPUT_PATH"])
print(json.dumps({"uid": os.getuid(), "inputs": sorted(os.listdir(os.environ["CHECKPOINT_INPUT_DIR"])),
                  "files": sorted(os.listdir(src)), "size": (src / "model.safetensors").stat().st_size}), flush=True)
while not os.path.exists("/ctl/release"):
    time.sleep(0.1)
out = pathlib.Path(os.environ["CHECKPOINT_OUTPUT_DIR"]) / "step-300"
out.mkdir()
(out / "model.safetensors").write_bytes(b"tuned")
"""

WRITE_INPUT = """
import os, pathlib
(pathlib.Path(os.environ["CHECKPOINT_INPUT_PATH"]) / "model.safetensors").write_bytes(b"overwritten")
"""


async def wait_phase(api, wait_for, resource, name, phases, timeout=90):
    phases = (phases,) if isinstance(phases, str) else phases

    async def reached():
        obj = await api.get(resource, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") in phases else None
    return await wait_for(reached, timeout=timeout)


async def trainer_log(api, job_name):
    [pod] = [p for p in await api.list("v1/pods", NS, label_selector=f"job-name={job_name}")]
    return await api.read_log(NS, pod["metadata"]["name"], container="trainer")


async def _gone(api, resource, name):
    return await api.get(resource, NS, name) is None


async def test_volume_store_lifecycle_in_containers(api, operator, cluster, wait_for, tmp_path):
    control = tmp_path / "ctl"
    control.mkdir()
    await api.create(TJ, NS, python_job("pretrain", PRETRAIN))
    tj = await wait_phase(api, wait_for, TJ, "pretrain", ("Succeeded", "Failed"))
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    assert sorted(tj["status"]["outputCheckpoints"]) == ["pretrain.step-100", "pretrain.step-200"]
    assert (await trainer_log(api, "pretrain")).strip() == "uid 1000"  # runAsUser honoured
    step200 = await api.get(CKPT, NS, "pretrain.step-200")
    assert step200["status"]["fileCount"] == 2
    assert step200["status"]["sizeBytes"] == len(weights(b"w" * 200)) + len(torch_file())

    await api.create(TJ, NS, python_job("finetune", CONSUME, control=control,
                                        checkpoints=[{"fromTrainingJob": "pretrain", "select": "latest"}]))
    await wait_phase(api, wait_for, TJ, "finetune", "Running")

    async def consumer_output():
        pods = await api.list("v1/pods", NS, label_selector="job-name=finetune")
        return pods and pods[0]["status"].get("phase") == "Running" and pods[0]
    await wait_for(consumer_output, timeout=60)
    await api.delete(CKPT, NS, "pretrain.step-200")

    async def blocked():
        obj = await api.get(CKPT, NS, "pretrain.step-200")
        return obj and any(c.get("reason") == "DeletionBlocked" for c in obj["status"].get("conditions", []))
    await wait_for(blocked, timeout=30)
    (control / "release").write_text("go")
    done = await wait_phase(api, wait_for, TJ, "finetune", ("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded", done["status"]
    seen = json.loads((await trainer_log(api, "finetune")).splitlines()[0])
    assert seen == {"uid": 1000, "inputs": ["pretrain.step-200"], "files": ["model.safetensors", "optimizer.pt"],
                    "size": len(weights(b"w" * 200))}
    assert done["status"]["outputCheckpoints"] == ["finetune.step-300"]
    await wait_for(lambda: _gone(api, CKPT, "pretrain.step-200"), timeout=30)  # released, then deleted


async def test_job_that_writes_into_its_input_fails(api, operator, cluster, wait_for):
    await api.create(TJ, NS, python_job("producer", PRETRAIN))
    await wait_phase(api, wait_for, TJ, "producer", "Succeeded")
    await api.create(TJ, NS, python_job("writer", WRITE_INPUT, backoffLimit=0,
                                        checkpoints=[{"name": "producer.step-100"}]))
    failed = await wait_phase(api, wait_for, TJ, "writer", ("Succeeded", "Failed"))
    assert failed["status"]["phase"] == "Failed"
    log = await trainer_log(api, "writer")
    assert "OSError: [Errno 30] Read-only file system" in log, log
    claim = (await api.get(CKPT, NS, "producer.step-100"))["status"]["location"]["volume"]["claimName"]
    assert (cluster.claim_dir(NS, claim) / "step-100" / "model.safetensors").read_bytes() == weights(b"w" * 100)


@pytest.fixture
def s3_operator_config(s3) -> OperatorConfig:  # noqa: F811
    return OperatorConfig(reconcile_interval=0.2, agent_image=OPERATOR_IMAGE, storage_type="s3",
                          s3_endpoint=s3.endpoint, s3_bucket=s3.bucket, s3_prefix=s3.root.rstrip("/"),
                          s3_secret_name="store-credentials")


async def test_s3_store_lifecycle_in_containers(api, s3, s3_operator_config, api_url, cluster, wait_for):  # noqa: F811
    def b64(text):
        return base64.b64encode(text.encode()).decode()
    await api.create("v1/secrets", NS, {"metadata": {"name": "store-credentials"}, "data": {
        "AWS_ACCESS_KEY_ID": b64(s3.server.access_key), "AWS_SECRET_ACCESS_KEY": b64(s3.server.secret_key)}})
    op = Operator(api_url, s3_operator_config)
    await op.start()
    try:
        await api.create(TJ, NS, python_job("pre", PRETRAIN))
        tj = await wait_phase(api, wait_for, TJ, "pre", ("Succeeded", "Failed"))
        assert tj["status"]["phase"] == "Succeeded", tj["status"]
        step200 = await api.get(CKPT, NS, "pre.step-200")
        uri = step200["status"]["location"]["s3"]["uri"]
        assert manifest_exists(uri)  # uploaded by the snapshot pod, in the operator's image

        read = "import os, json; p = os.environ['CHECKPOINT_INPUT_PATH']; print(json.dumps(sorted(os.listdir(p))))"
        await api.create(TJ, NS, python_job("tune", read, checkpoints=[{"fromTrainingJob": "pre", "select": "latest"}]))
        tuned = await wait_phase(api, wait_for, TJ, "tune", ("Succeeded", "Failed"))
        assert tuned["status"]["phase"] == "Succeeded", tuned["status"]
        # Downloaded by the init container (operator image) into the emptyDir, mounted by subPath.
        # The download also leaves its manifest beside the files (the volume store's inputs have none).
        assert json.loads(await trainer_log(api, "tune")) == [".checkpoint-manifest.json", "model.safetensors",
                                                               "optimizer.pt"]
        await api.delete(CKPT, NS, "pre.step-200")
        await wait_for(lambda: _gone(api, CKPT, "pre.step-200"), timeout=30)
        assert not manifest_exists(uri)
    finally:
        await op.stop()
