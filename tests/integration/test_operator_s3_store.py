"""The operator lifecycle again with `storage.type: s3`, against a real S3 server (SeaweedFS on
127.0.0.1): snapshots upload, inputs download and verify in an init container, deletion
removes owned data, imports land in the store. Agent pods get credentials only from a Secret."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from checkpoint_operator.objectstore.s3 import manifest_exists, read_manifest
from checkpoint_operator.config import OperatorConfig
from conftest import CKPT, NS, TJ, training_job, write_checkpoint
from formats_files import safetensors_bytes, torch_file, weights

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def operator_config(s3) -> OperatorConfig:  # noqa: F811
    return OperatorConfig(reconcile_interval=0.2, agent_image="checkpoint-operator:test", storage_type="s3",
                          s3_endpoint=s3.endpoint, s3_bucket=s3.bucket, s3_prefix=s3.root.rstrip("/"),
                          s3_secret_name="store-credentials")


@pytest.fixture
async def store_secret(api, s3):  # noqa: F811
    def b64(text):
        return base64.b64encode(text.encode()).decode()
    await api.create("v1/secrets", NS, {"metadata": {"name": "store-credentials"}, "data": {
        "AWS_ACCESS_KEY_ID": b64(s3.server.access_key), "AWS_SECRET_ACCESS_KEY": b64(s3.server.secret_key)}})


async def wait_phase(api, wait_for, resource, name, phase, timeout=60):
    async def reached():
        obj = await api.get(resource, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") == phase else None
    return await wait_for(reached, timeout=timeout)


async def test_s3_store_lifecycle(api, store_secret, operator, trainer, wait_for, s3):  # noqa: F811
    def pretrain(attempt, env):
        for step in (10, 20):
            write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], f"step-{step}", {
                "model.safetensors": weights(os.urandom(7 * 1024 * 1024)) if step == 20 else weights(b"small"),
                "trainer_state.json": b'{"global_step": %d}' % step, "optimizer.pt": torch_file()})
        return 0
    trainer.behaviours["pre"] = pretrain
    seen = {}

    def finetune(attempt, env):
        src = env["CHECKPOINT_INPUT_PATH"]
        seen["files"] = sorted(os.listdir(src))
        seen["size"] = os.path.getsize(os.path.join(src, "model.safetensors"))
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-30", {"model.safetensors": weights(b"tuned")})
        return 0
    trainer.behaviours["tune"] = finetune

    await api.create(TJ, NS, training_job("pre"))
    tj = await wait_phase(api, wait_for, TJ, "pre", "Succeeded")
    assert sorted(tj["status"]["outputCheckpoints"]) == ["pre.step-10", "pre.step-20"]
    step20 = await api.get(CKPT, NS, "pre.step-20")
    uri = step20["status"]["location"]["s3"]["uri"]
    assert uri.startswith(f"s3://{s3.bucket}/{s3.root}") and step20["status"]["owned"] is True
    assert manifest_exists(uri) and read_manifest(uri).digest == step20["status"]["digest"]
    assert step20["status"]["step"] == 20 and step20["status"]["resumable"] is True
    # The output volume is released once the data is in the store.
    await wait_for(lambda: _gone(api, "v1/persistentvolumeclaims", tj["status"]["outputClaim"]))

    await api.create(TJ, NS, training_job("tune", checkpoints=[{"fromTrainingJob": "pre", "select": "latest"}]))
    tuned = await wait_phase(api, wait_for, TJ, "tune", "Succeeded")
    assert seen["size"] == len(weights(b"\0" * 7 * 1024 * 1024)) and "model.safetensors" in seen["files"]
    assert tuned["status"]["inputs"][0]["digest"] == step20["status"]["digest"]
    job = await api.get("batch/v1/jobs", NS, "tune")
    init = job["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"][:3] == ["checkpoint-operator", "agent", "download"]

    # Deleting an owned checkpoint deletes its data in the store (and nothing else).
    await api.delete(CKPT, NS, "pre.step-20")
    await wait_for(lambda: _gone(api, CKPT, "pre.step-20"), timeout=20)
    assert not manifest_exists(uri)
    other = (await api.get(CKPT, NS, "pre.step-10"))["status"]["location"]["s3"]["uri"]
    assert manifest_exists(other)


async def test_s3_store_imports_an_external_tree(api, store_secret, operator, wait_for, s3):  # noqa: F811
    client = s3.client()
    for rel, data in {"config.json": b"{}", "model-00001.safetensors": b"a" * 100, "sub/x.bin": b"x"}.items():
        client.put_object(Bucket=s3.bucket, Key=s3.key(f"external/llama/{rel}"), Body=data)
    await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                                "metadata": {"name": "llama", "namespace": NS},
                                "spec": {"source": {"s3": {"uri": s3.uri("external/llama/"), "endpoint": s3.endpoint,
                                                           "secretRef": {"name": "store-credentials"}}}}})
    ckpt = await wait_phase(api, wait_for, CKPT, "llama", "Ready")
    assert ckpt["status"]["fileCount"] == 3 and ckpt["status"]["format"] == "huggingface"
    uri = ckpt["status"]["location"]["s3"]["uri"]
    assert "external" not in uri and manifest_exists(uri)


def condition(obj: dict, kind: str) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


async def test_a_consumer_download_is_pinned_to_the_digest(api, store_secret, operator, trainer, wait_for, s3,  # noqa: F811
                                                           tmp_path):
    """Another holder of the bucket's write credentials rewrites a Ready Checkpoint's prefix
    (objects and a manifest consistent with them): the consumer's init container refuses it
    before a byte moves, the training code never runs, and the job says which input and why."""
    trainer.behaviours["pre"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1",
                                                                 {"model.safetensors": b"the real weights"}) or 0
    ran = []
    trainer.behaviours["victim"] = lambda a, env: ran.append(env) or 0
    await api.create(TJ, NS, training_job("pre"))
    await wait_phase(api, wait_for, TJ, "pre", "Succeeded")
    pinned = (await api.get(CKPT, NS, "pre.step-1"))["status"]
    uri, digest = pinned["location"]["s3"]["uri"], pinned["digest"]

    write_checkpoint(str(tmp_path / "evil"), ".", {"model.safetensors": b"forged weights"})
    swap = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "upload", str(tmp_path / "evil"), uri],
                          capture_output=True, text=True, timeout=120)
    assert swap.returncode == 0, swap.stderr
    assert read_manifest(uri).digest != digest  # the prefix now holds other, self-consistent bytes

    await api.create(TJ, NS, training_job("victim", checkpoints=[{"name": "pre.step-1"}], backoffLimit=0,
                                          output={"enabled": False}))
    failed = await wait_phase(api, wait_for, TJ, "victim", "Failed")
    message = condition(failed, "Ready")["message"]
    assert "input pre.step-1 could not be downloaded" in message, message
    assert f"not the pinned {digest}" in message and uri in message, message  # the agent's own line
    assert failed["status"]["inputs"][0]["digest"] == digest
    assert ran == []  # the training code never saw the forged bytes


async def test_a_retained_output_volume_stays_on_the_s3_store_until_released(api, store_secret, operator,  # noqa: F811
                                                                              trainer, wait_for, s3):  # noqa: F811
    """What was not stored is never deleted: a skipped entry beside a stored checkpoint, and a
    non-empty output that gave no checkpoint, keep their volumes (which the s3 store otherwise
    releases) until the annotation releases them."""
    def partly(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-50", {"model.pt": b"complete"})
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-60.tmp", {"model.pt": b"half"})
        return 1
    trainer.behaviours["partly"] = partly
    trainer.behaviours["nothing"] = lambda a, env: write_checkpoint(
        env["CHECKPOINT_OUTPUT_DIR"], "step-70.tmp", {"model.pt": b"half"}) or 1
    await api.create(TJ, NS, training_job("partly", backoffLimit=0))
    await api.create(TJ, NS, training_job("nothing", backoffLimit=0))

    partly_tj = await wait_phase(api, wait_for, TJ, "partly", "Failed")
    assert partly_tj["status"]["outputCheckpoints"] == ["partly.step-50"]
    stored = (await api.get(CKPT, NS, "partly.step-50"))["status"]["location"]["s3"]["uri"]
    assert manifest_exists(stored)
    retained = condition(partly_tj, "OutputRetained")
    assert retained["status"] == "True" and "step-60.tmp" in retained["message"]
    claim = await api.get("v1/persistentvolumeclaims", NS, partly_tj["status"]["outputClaim"])
    assert claim is not None and [o["kind"] for o in claim["metadata"]["ownerReferences"]] == ["TrainingJob"]

    nothing = await wait_phase(api, wait_for, TJ, "nothing", "Failed")
    assert not nothing["status"].get("outputCheckpoints") and "kept no checkpoints" in nothing["status"]["message"]
    assert condition(nothing, "OutputRetained")["status"] == "True"
    claim_name = nothing["status"]["outputClaim"]
    assert await api.get("v1/persistentvolumeclaims", NS, claim_name) is not None

    await api.patch(TJ, NS, "nothing", {"metadata": {"annotations": {"ckpt.dev/release-output": "true"}}})
    await wait_for(lambda: _gone(api, "v1/persistentvolumeclaims", claim_name), timeout=20)

    async def released():
        tj = await api.get(TJ, NS, "nothing")
        return tj if condition(tj, "OutputRetained")["reason"] == "Released" else None
    released_tj = await wait_for(released, timeout=20)
    assert condition(released_tj, "OutputRetained")["status"] == "False"
    # The other job's volume was not asked for: it stays.
    assert await api.get("v1/persistentvolumeclaims", NS, partly_tj["status"]["outputClaim"]) is not None


async def _gone(api, resource, name):
    return await api.get(resource, NS, name) is None


async def test_a_refused_final_status_does_not_wedge_the_snapshot(api, store_secret, operator, trainer, wait_for,  # noqa: F811
                                                                  emulator_server):
    """The output volume is gone once uploaded: if the snapshot pod were deleted before the final
    status is written, a retry would start a snapshot pod that can never run. The pod's result is
    read again instead, and the pod is deleted once the status is recorded (found by the fault matrix)."""
    import kmock
    trainer.behaviours["pre"] = lambda a, env: write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-1",
                                                                 {"model.safetensors": b"weights"}) or 0
    emulator = emulator_server.emulator

    def final_status(request) -> bool:
        data = request.data if isinstance(request.data, dict) else {}
        return request.url.path.endswith("/trainingjobs/pre/status") and \
            (data.get("status") or {}).get("phase") == "Succeeded"
    emulator_server.call(lambda: emulator[kmock.method.PATCH, final_status][:1] << 500)
    await api.create(TJ, NS, training_job("pre"))
    tj = await wait_phase(api, wait_for, TJ, "pre", "Succeeded", timeout=90)
    assert tj["status"]["outputCheckpoints"] == ["pre.step-1"]
    assert (await api.get(CKPT, NS, "pre.step-1"))["status"]["phase"] == "Ready"
    await wait_for(lambda: _gone(api, "v1/pods", tj["status"]["snapshotPod"]), timeout=30)


async def test_live_sealing_on_the_s3_store_uploads_each_checkpoint_once(api, store_secret, operator, trainer,
                                                                         wait_for, s3):  # noqa: F811
    """publish: Continuous on the s3 store: the sidecar uploads each sealed checkpoint at once, under
    a prefix named by its digest; the Checkpoint is Ready (on S3) while the job runs; the end-of-job
    snapshot finds the sealed copy and uploads nothing again; retention deletes the dropped one's data."""
    release = __import__("threading").Event()

    def train(attempt, env):
        out = env["CHECKPOINT_OUTPUT_DIR"]
        for step in (1, 2):
            # A valid safetensors file (random bytes are not one: the sealing rule holds them back).
            weights = safetensors_bytes({"w": 1024 * 1024})[:-1024 * 1024] + os.urandom(1024 * 1024)
            write_checkpoint(out, f"step-{step}.tmp", {"model.safetensors": weights, "optimizer.pt": torch_file()})
            os.rename(os.path.join(out, f"step-{step}.tmp"), os.path.join(out, f"step-{step}"))
            if step == 1:
                assert release.wait(90)
        return 0
    trainer.behaviours["s3live"] = train
    await api.create(TJ, NS, training_job("s3live", output={"publish": "Continuous", "keep": 1}))

    async def ready(name):
        obj = await api.get(CKPT, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") == "Ready" else None
    first = await wait_for(lambda: ready("s3live.step-1"), timeout=90)
    assert (await api.get(TJ, NS, "s3live"))["status"]["phase"] == "Running"
    uri = first["status"]["location"]["s3"]["uri"]
    assert "/sealed/step-1/" in uri and uri.rstrip("/").endswith(first["status"]["digest"].split(":")[1])
    assert manifest_exists(uri, endpoint_url=s3.endpoint)
    assert read_manifest(uri, endpoint_url=s3.endpoint).digest == first["status"]["digest"]
    release.set()

    tj = await wait_phase(api, wait_for, TJ, "s3live", "Succeeded", timeout=90)
    assert tj["status"]["outputCheckpoints"] == ["s3live.step-2"]
    second = await api.get(CKPT, NS, "s3live.step-2")
    assert "/sealed/step-2/" in second["status"]["location"]["s3"]["uri"]
    keys = [o["Key"] for o in s3.server.client().list_objects_v2(Bucket=s3.bucket, Prefix=s3.root).get("Contents", [])]
    assert not any("/dirs/" in k for k in keys), f"uploaded again, or left in the store unowned: {keys}"

    async def step1_data_gone():
        return await api.get(CKPT, NS, "s3live.step-1") is None and not manifest_exists(uri, endpoint_url=s3.endpoint)
    await wait_for(step1_data_gone, timeout=60)


async def test_checkpoints_share_blobs_and_deletion_collects_only_unused_ones(api, api_url, store_secret, operator,
                                                                             trainer, wait_for, s3,  # noqa: F811
                                                                             tmp_path):
    """Content-addressed storage through the real operator: two checkpoints of a run with a frozen
    base shard store it once; deleting one Checkpoint deletes its own blob, never the shared one."""
    import hashlib

    from checkpoint_operator.agent.download import download_prefix
    # the default grace period (an hour): the deleted Checkpoint's own blobs go at once all the same
    base = weights(os.urandom(3 * 1024 * 1024))
    heads = {10: weights(os.urandom(1000)), 20: weights(os.urandom(2000))}

    def run(attempt, env):
        for step, head in heads.items():
            write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], f"step-{step}", {
                "base.safetensors": base, "head.safetensors": head,
                "trainer_state.json": b'{"global_step": %d}' % step})
        return 0
    trainer.behaviours["ft"] = run
    await api.create(TJ, NS, training_job("ft"))
    await wait_phase(api, wait_for, TJ, "ft", "Succeeded")
    client = s3.client()
    blob_prefix = f"{s3.key()}{NS}/blobs/sha256/"

    def blob_names() -> set[str]:
        listing = client.list_objects_v2(Bucket=s3.bucket, Prefix=blob_prefix).get("Contents", [])
        return {o["Key"][len(blob_prefix):] for o in listing}

    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()
    before = blob_names()
    assert sha(base) in before and sha(heads[10]) in before and sha(heads[20]) in before
    stored = sum(o["Size"] for o in client.list_objects_v2(Bucket=s3.bucket, Prefix=blob_prefix)["Contents"])
    assert stored < 2 * len(base)  # the base once
    # kubectl ckpt du: stored (a listing of the namespace's prefix) below referenced, by about the base's size
    from plugin_helpers import Plugin, write_kubeconfig
    du = await Plugin(write_kubeconfig(tmp_path / "kubeconfig", api_url))("du", "-o", "json", "--endpoint-url",
                                                                         s3.endpoint)
    assert du.code == 0, du.err
    row = next(r for r in json.loads(du.out)["namespaces"] if r["namespace"] == NS)
    assert row["checkpoints"] == 2 and row["referencedBytes"] >= 2 * len(base)
    assert row["storedBytes"] < row["referencedBytes"] and row["savedBytes"] >= len(base) - 10_000

    await api.delete(CKPT, NS, "ft.step-20")
    await wait_for(lambda: _gone(api, CKPT, "ft.step-20"), timeout=20)
    after = blob_names()
    assert sha(heads[20]) not in after and sha(base) in after and sha(heads[10]) in after
    kept = (await api.get(CKPT, NS, "ft.step-10"))["status"]
    got = download_prefix(kept["location"]["s3"]["uri"], str(tmp_path / "dl"), digest=kept["digest"])
    assert got.manifest.fileCount == 3


PART_WRITER = """
import json, os
out, rank = os.environ["CHECKPOINT_OUTPUT_DIR"], int(os.environ["RANK"])
for step in ("step-1", "step-2"):
    os.makedirs(os.path.join(out, step), exist_ok=True)
    with open(os.path.join(out, step, f"shard-{rank}.bin"), "wb") as f:
        f.write(bytes([rank]) * 16)
    with open(os.path.join(out, step, "config.json"), "w") as f:  # step-2: each rank its own bytes
        json.dump({"rank": rank} if step == "step-2" else {"layers": 2}, f)
"""


async def test_a_volume_per_worker_uploads_the_union_and_keeps_every_volume_of_a_conflict(  # noqa: F811
        api, store_secret, operator, wait_for, s3):  # noqa: F811
    """s3 store, output.volumePerWorker: step-1 (both ranks' shards) is uploaded as ONE checkpoint
    from both workers' volumes; step-2 (config.json differs) is not stored, so both volumes are
    kept (owned by the job) until the release annotation, which releases both."""
    await api.create(TJ, NS, training_job("vpw", replicas=2, engine="JobSet", backoffLimit=0,
                                          output={"volumePerWorker": True},
                                          command=[sys.executable, "-c", PART_WRITER]))
    tj = await wait_phase(api, wait_for, TJ, "vpw", "Succeeded", timeout=90)
    assert tj["status"]["outputCheckpoints"] == ["vpw.step-1"]
    uri = (await api.get(CKPT, NS, "vpw.step-1"))["status"]["location"]["s3"]["uri"]
    union = read_manifest(uri)
    assert sorted(f.path for f in union.files) == ["config.json", "shard-0.bin", "shard-1.bin"]
    # the union's files are blobs, as any checkpoint's on the s3 store
    assert union.blobs is not None
    blob_prefix = f"{s3.key()}{NS}/blobs/sha256/"
    client = s3.client()
    stored = {o["Key"][len(blob_prefix):] for o in
              client.list_objects_v2(Bucket=s3.bucket, Prefix=blob_prefix).get("Contents", [])}
    assert {f.sha256 for f in union.files} <= stored
    retained = condition(tj, "OutputRetained")
    assert retained["status"] == "True" and "'config.json' differs between worker 0" in retained["message"]
    claims = [f"vpw-output-{tj['metadata']['uid'][:5]}-{i}" for i in range(2)]
    for name in claims:
        claim = await api.get("v1/persistentvolumeclaims", NS, name)
        assert [o["kind"] for o in claim["metadata"]["ownerReferences"]] == ["TrainingJob"]
    await api.patch(TJ, NS, "vpw", {"metadata": {"annotations": {"ckpt.dev/release-output": "true"}}})
    for name in claims:
        await wait_for(lambda name=name: _gone(api, "v1/persistentvolumeclaims", name), timeout=20)


CLASH_WRITER = """
import os
out, rank = os.environ["CHECKPOINT_OUTPUT_DIR"], int(os.environ["RANK"])
def w(rel, data):
    path = os.path.join(out, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
w(f"step-ok/shard-{rank}.bin", bytes([rank]) * 8)
if rank == 0:
    w("stepb/x", b"a file in worker 0")
    w("stepa/caf\\u00e9", b"nfc")
else:
    w("stepb/x/y", b"a directory in worker 1")
    w("stepa/cafe\\u0301", b"nfd")
"""


async def test_a_volume_per_worker_union_that_breaks_the_names_rule_is_not_uploaded(  # noqa: F811
        api, store_secret, operator, wait_for, s3):  # noqa: F811
    """hostile4 D2 on the s3 store: the unions `stepb` (file `x` and `x/y`) and `stepa` (NFC/NFD
    twins) were uploaded and Ready, and every download refused their manifests (failed before).
    Now neither is uploaded nor a Checkpoint; the conflict names the file and both workers."""
    await api.create(TJ, NS, training_job("hs", replicas=2, engine="JobSet", backoffLimit=0,
                                          output={"volumePerWorker": True},
                                          command=[sys.executable, "-c", CLASH_WRITER]))
    tj = await wait_phase(api, wait_for, TJ, "hs", "Succeeded", timeout=90)
    assert tj["status"]["outputCheckpoints"] == ["hs.step-ok"]
    assert sorted(c["metadata"]["name"] for c in await api.list(CKPT, NS)) == ["hs.step-ok"]
    uri = (await api.get(CKPT, NS, "hs.step-ok"))["status"]["location"]["s3"]["uri"]
    assert sorted(f.path for f in read_manifest(uri).files) == ["shard-0.bin", "shard-1.bin"]
    assert not manifest_exists(uri.replace("/dirs/step-ok/", "/dirs/stepb/"), endpoint_url=s3.endpoint)
    assert not manifest_exists(uri.replace("/dirs/step-ok/", "/dirs/stepa/"), endpoint_url=s3.endpoint)
    retained = condition(tj, "OutputRetained")
    assert retained["status"] == "True" and "'x' is a file in worker 0 and a directory in worker 1" in \
        retained["message"], retained["message"]


async def test_live_sealing_with_a_volume_per_worker_uploads_each_union_once_while_the_workers_run(  # noqa: F811
        api, store_secret, operator, trainer, wait_for, s3):  # noqa: F811
    """s3 store, output.volumePerWorker with publish: Continuous: each worker's sidecar seals its part
    (uploading nothing), the union pod uploads the union of the sealed parts under the job's
    `sealed/<dir>/<digest>/` while the workers run, and the end-of-job snapshot finds it there:
    nothing uploaded again, no second Checkpoint."""
    from test_operator_live_parts import dcp_part
    release = __import__("threading").Event()

    def train(attempt, env):
        rank, out = int(env["RANK"]), env["CHECKPOINT_OUTPUT_DIR"]
        dcp_part(out, 1, rank)
        assert release.wait(90)
        return 0
    trainer.behaviours["s3parts"] = train
    await api.create(TJ, NS, training_job("s3parts", replicas=2, engine="JobSet", backoffLimit=0,
                                          output={"volumePerWorker": True, "publish": "Continuous"}))

    async def ready(name):
        obj = await api.get(CKPT, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") == "Ready" else None
    step = await wait_for(lambda: ready("s3parts.step-1"), timeout=90)
    assert (await api.get(TJ, NS, "s3parts"))["status"]["phase"] == "Running"
    uri = step["status"]["location"]["s3"]["uri"]
    assert "/sealed/step-1/" in uri and uri.rstrip("/").endswith(step["status"]["digest"].split(":")[1])
    union = read_manifest(uri, endpoint_url=s3.endpoint)
    assert sorted(f.path for f in union.files) == [".metadata", "__0_0.distcp", "__1_0.distcp", "config.json"]
    assert (union.digest, union.complete) == (step["status"]["digest"], True)
    release.set()

    tj = await wait_phase(api, wait_for, TJ, "s3parts", "Succeeded", timeout=90)
    assert tj["status"]["outputCheckpoints"] == ["s3parts.step-1"]
    assert (await api.get(CKPT, NS, "s3parts.step-1"))["status"]["location"]["s3"]["uri"] == uri
    keys = [o["Key"] for o in s3.server.client().list_objects_v2(Bucket=s3.bucket, Prefix=s3.root).get("Contents", [])]
    assert not any("/dirs/" in k for k in keys), f"uploaded again, or left in the store unowned: {keys}"


@pytest.mark.skipif(os.geteuid() != 0 or not __import__("shutil").which("chattr"),
                    reason="makes a file immutable (chattr +i)")
async def test_a_deleted_checkpoint_removed_in_part_is_not_published_again_and_its_upload_goes(
        api, store_secret, operator, trainer, wait_for, s3):  # noqa: F811
    """H10-1 on the s3 store: checkpoint-20's Checkpoint is deleted while the job runs and the sidecar
    removes all of its directory but config.json (immutable here). The end-of-job snapshot uploads what
    is left: no Checkpoint is made of it under the deleted one's name, and that upload is deleted as
    unused (nothing of checkpoint-20 stays in the store's dirs/)."""
    import threading
    go_on = threading.Event()
    volume: dict[str, str] = {}

    def trainer_checkpoint(out: str, step: int) -> None:
        write_checkpoint(out, f"checkpoint-{step}", {"config.json": b"{}", "model.safetensors": weights(b"w" * step),
                                                     "optimizer.pt": torch_file()})
        write_checkpoint(out, f"checkpoint-{step}", {"trainer_state.json": json.dumps(
            {"global_step": step, "log_history": [{"step": step, "loss": 1.0}]}).encode()})

    def train(attempt, env):
        out = volume["out"] = os.path.realpath(env["CHECKPOINT_OUTPUT_DIR"])
        trainer_checkpoint(out, 10)
        trainer_checkpoint(out, 20)
        assert go_on.wait(120)
        return 0
    trainer.behaviours["s3pr"] = train
    await api.create(TJ, NS, training_job("s3pr", output={"publish": "Continuous"}))
    pinned = None
    try:
        await wait_phase(api, wait_for, CKPT, "s3pr.checkpoint-20", "Ready", timeout=90)
        pinned = os.path.join(volume["out"], "checkpoint-20", "config.json")
        subprocess.run(["chattr", "+i", pinned], check=True)
        await api.delete(CKPT, NS, "s3pr.checkpoint-20")

        async def removed_in_part():
            d = os.path.join(volume["out"], "checkpoint-20")
            return (os.path.isdir(d) and not os.path.exists(os.path.join(d, "model.safetensors"))) or None
        await wait_for(removed_in_part, timeout=60)
        go_on.set()
        await wait_phase(api, wait_for, TJ, "s3pr", "Succeeded", timeout=120)
        assert await api.get(CKPT, NS, "s3pr.checkpoint-20") is None
        keys = [o["Key"] for o in
                s3.server.client().list_objects_v2(Bucket=s3.bucket, Prefix=s3.root).get("Contents", [])]
        assert not any("/dirs/" in k and "checkpoint-20" in k for k in keys), \
            f"the leftover's upload stays in the store, owned by nothing: {keys}"
    finally:
        if pinned:
            subprocess.run(["chattr", "-i", pinned], check=False)
        go_on.set()
