"""`kubectl ckpt` on the volume store, against the real operator, the emulated API and the local
kubelet: push streams into the operator's receiver pod over exec, pull streams out of a pull
pod, verify runs the operator's verify pod; lineage and ls read what the operator recorded."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from conftest import CKPT, NS, training_job, write_checkpoint
from formats_files import weights
from plugin_helpers import Plugin, make_model_dir, tree_digest, write_kubeconfig

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def ckpt(api_url, tmp_path) -> Plugin:
    return Plugin(write_kubeconfig(tmp_path / "kubeconfig", api_url))


async def test_push_ready_pull_identical_verify_and_tamper(ckpt, api, operator, cluster, tmp_path):
    source = make_model_dir(tmp_path)
    pushed = await ckpt("push", str(source), "--name", "laptop-model", "--description", "from my laptop")
    assert pushed.code == 0, pushed.err
    assert "checkpoint.ckpt.dev/laptop-model Ready: 4 files" in pushed.out
    body = await api.get(CKPT, NS, "laptop-model")
    status = body["status"]
    assert status["phase"] == "Ready" and status["format"] == "huggingface" and status["step"] == 120
    assert status["owned"] is True and "upload" not in status
    claim = status["location"]["volume"]["claimName"]
    # The push's own manifest, beside the data it describes, is where verify and pull read it.
    assert status["location"]["volume"] == {"claimName": claim, "path": "data",
                                            "manifest": "data/.checkpoint-manifest.json"}
    assert "ckpt.dev/upload-requested" not in body["metadata"]["annotations"]  # served, then dropped

    pulled = await ckpt("pull", "laptop-model", str(tmp_path / "back"))
    assert pulled.code == 0, pulled.err
    assert tree_digest(tmp_path / "back") == tree_digest(source)
    assert f"digest {status['digest']}" in pulled.out

    verified = await ckpt("verify", "laptop-model")
    assert verified.code == 0, verified.err
    assert "Verified=True (Verified)" in verified.out
    condition = next(c for c in (await api.get(CKPT, NS, "laptop-model"))["status"]["conditions"]
                     if c["type"] == "Verified")
    assert condition["status"] == "True" and status["digest"] in condition["message"]

    data = cluster.claim_dir(NS, claim) / "data"
    with open(data / "tokenizer" / "tokenizer.json", "r+b") as f:  # same size, other bytes
        f.write(b"X")
    tampered = await ckpt("verify", "laptop-model", "-o", "json")
    assert tampered.code == 1
    result = json.loads(tampered.out)
    assert result["verified"] == "False" and result["reason"] == "DataMismatch"
    assert "'tokenizer/tokenizer.json': sha256" in result["message"]
    assert (await api.get(CKPT, NS, "laptop-model"))["status"]["phase"] == "Ready"  # recorded, not un-Ready


async def test_an_interrupted_push_resumes_and_sends_only_the_rest(ckpt, api, operator, cluster, tmp_path, wait_for):
    """A push cut off after one file: that file stays on the receiver's volume (verified, under its
    name), nothing is committed, and the next push sends only the others."""
    from checkpoint_operator.protocol.manifest import MANIFEST_NAME
    from checkpoint_operator.agent.tarstream import TarWriter
    from checkpoint_operator.logic import transfers
    from checkpoint_operator.plugin import commands
    from checkpoint_operator.plugin.client import connect

    source = make_model_dir(tmp_path, "step-7")
    cluster_api = connect(ckpt.kubeconfig)
    io = commands.Io(open(os.devnull, "w"), open(os.devnull, "w"))
    manifest = commands.local_manifest(str(source), io)
    body = await api.create(CKPT, NS, commands.new_upload_checkpoint("resumed", NS, manifest, None, None))
    value = "first-attempt"
    await api.patch(CKPT, NS, "resumed", {"metadata": {"annotations": {"ckpt.dev/upload-requested": value}}})
    pod = await asyncio.to_thread(commands.wait_for_pod, cluster_api, transfers.upload_pod_name("resumed"), value,
                                  body["metadata"]["uid"], 60, io)

    def cut_off_push() -> tuple[int, str]:
        session = commands.start_exec(cluster_api, pod, "receive", transfers.push_command(None, "step-7"), stdin=True)
        writer = TarWriter(session)  # the manifest and one file; the connection ends there
        writer.add_bytes(MANIFEST_NAME, manifest.to_json().encode())
        size = (source / "model.safetensors").stat().st_size
        writer.add_file("model.safetensors", str(source / "model.safetensors"), size)
        writer.close()
        session.close_stdin()
        return session.finish(), session.last_error()
    code, error = await asyncio.to_thread(cut_off_push)
    assert code == 1 and "'config.json' was neither sent nor is it in" in error
    claim_dir = cluster.claim_dir(NS, f"resumed-data-{body['metadata']['uid'][:8]}")
    assert (claim_dir / "data" / "model.safetensors").exists()  # kept: verified before it got its name
    assert not (claim_dir / ".ckpt-upload-data.commit").exists()
    assert (await api.get(CKPT, NS, "resumed"))["status"]["phase"] == "Importing"  # nothing partial is Ready

    resumed = await ckpt("push", str(source), "--name", "resumed")
    assert resumed.code == 0, resumed.err
    assert "1 files are in pod resumed-upload already (an earlier push); sending the other 3" in resumed.err
    ready = await api.get(CKPT, NS, "resumed")
    assert ready["status"]["phase"] == "Ready" and ready["status"]["digest"] == manifest.digest


async def test_a_receiver_without_a_push_gives_up_and_the_checkpoint_waits_again(api, operator, cluster, wait_for,
                                                                                  monkeypatch):
    from checkpoint_operator.logic import transfers
    monkeypatch.setattr(transfers, "IDLE_SECONDS", 1.0)  # the operator runs in this process
    await api.create(CKPT, NS, {"metadata": {"name": "idle", "annotations": {
        "ckpt.dev/upload-digest": "sha256:" + "1" * 64, "ckpt.dev/upload-requested": "r1"}},
        "spec": {"source": {"upload": {}}}})

    async def waiting_again():
        body = await api.get(CKPT, NS, "idle")
        status = body.get("status") or {}
        return body if "ended without data" in (status.get("message") or "") else None
    body = await wait_for(waiting_again, timeout=60)
    assert body["status"]["phase"] == "Pending"
    assert "no push within 1 s" in body["status"]["message"]
    await wait_for(lambda: _no_pod(api, "idle-upload"), timeout=20)

    async def request_dropped():  # after the result is recorded and the pod deleted
        body = await api.get(CKPT, NS, "idle")
        return "ckpt.dev/upload-requested" not in (body["metadata"].get("annotations") or {})
    await wait_for(request_dropped, timeout=20)


async def _no_pod(api, name):
    return await api.get("v1/pods", NS, name) is None


async def test_push_refusals_name_what_is_wrong(ckpt, api, operator, cluster, tmp_path):
    source = make_model_dir(tmp_path)
    bad = await ckpt("push", str(source), "--name", "Not_A_Name")
    assert bad.code == 1 and "Checkpoint name 'Not_A_Name' is not valid" in bad.err
    missing_ns = await ckpt("push", str(source), "--name", "x", "-n", "nowhere")
    assert missing_ns.code == 1 and "namespace 'nowhere' not found" in missing_ns.err
    assert (await ckpt("push", str(tmp_path / "none"), "--name", "x")).err.startswith("error: ")
    usage = await ckpt("push", str(source))  # --name is required: a usage error
    assert usage.code == 2
    await api.create(CKPT, NS, {"metadata": {"name": "an-import"}, "spec": {"source": {"http": {
        "url": "http://127.0.0.1:9/x.tar"}}}})
    other = await ckpt("push", str(source), "--name", "an-import")
    assert other.code == 1 and "its source is http, not upload" in other.err
    pinned = await api.create(CKPT, NS, {"metadata": {"name": "pinned", "annotations": {
        "ckpt.dev/upload-digest": "sha256:" + "0" * 64}}, "spec": {"source": {"upload": {}}}})
    assert pinned
    wrong = await ckpt("push", str(source), "--name", "pinned")
    assert wrong.code == 1 and "expects data with digest sha256:000" in wrong.err


async def test_an_upload_checkpoint_waits_and_says_what_to_do(api, operator, cluster, wait_for):
    await api.create(CKPT, NS, {"metadata": {"name": "later"}, "spec": {"source": {"upload": {}}}})

    async def waiting():
        body = await api.get(CKPT, NS, "later")
        ready = next((c for c in body.get("status", {}).get("conditions") or [] if c["type"] == "Ready"), None)
        return body if ready and ready["reason"] == "WaitingForUpload" else None
    body = await wait_for(waiting, timeout=20)
    assert body["status"]["phase"] == "Pending"
    assert "kubectl ckpt push DIR --name later -n default" in body["status"]["message"]
    claim = f"later-data-{body['metadata']['uid'][:8]}"
    assert body["status"]["upload"] == {"store": "volume", "claimName": claim}
    # nothing is provisioned until a push asks for it
    assert await api.get("v1/persistentvolumeclaims", NS, claim) is None


async def test_lineage_across_two_jobs_and_ls(ckpt, api, operator, cluster, trainer, wait_for, tmp_path):
    def pretrain(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-10", {"model.safetensors": weights(b"w10")})
        return 0

    def finetune(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-20", {"model.safetensors": weights(b"w20")})
        return 0
    trainer.behaviours.update(pre=pretrain, tune=finetune)
    pushed = await ckpt("push", str(make_model_dir(tmp_path, "base")), "--name", "base")
    assert pushed.code == 0, pushed.err
    await api.create("ckpt.dev/v1alpha1/trainingjobs", NS, training_job("pre", checkpoints=[{"name": "base"}]))
    await _finished(api, wait_for, "pre")
    await api.create("ckpt.dev/v1alpha1/trainingjobs", NS, training_job(
        "tune", checkpoints=[{"fromTrainingJob": "pre", "select": "latest"}]))
    await _finished(api, wait_for, "tune")

    up = await ckpt("lineage", "tune.step-20")
    assert up.code == 0, up.err
    lines = up.out.splitlines()
    assert lines[0].startswith("tune.step-20  Ready  sha256:") and "tj/tune" in lines[0]
    assert lines[2].startswith("└── pre.step-10  Ready  sha256:") and "tj/pre" in lines[2]
    assert lines[3].startswith("    └── base  Ready  sha256:") and "upload" in lines[3]
    down = json.loads((await ckpt("lineage", "base", "-o", "json")).out)
    assert down["parents"] == []
    assert [d["name"] for d in down["descendants"]] == ["pre.step-10"]
    assert [d["name"] for d in down["descendants"][0]["children"]] == ["tune.step-20"]
    base = await api.get(CKPT, NS, "base")
    assert down["checkpoint"]["digest"] == base["status"]["digest"]

    listed = await ckpt("ls")
    header, *rows = listed.out.splitlines()
    assert header.split() == ["NAME", "PHASE", "FORMAT", "STEP", "SIZE", "USED-BY", "PRODUCER", "AGE"]
    by_name = {r.split()[0]: r.split() for r in rows}
    assert by_name["base"][1:3] == ["Ready", "huggingface"] and by_name["base"][-2] == "upload"
    assert by_name["pre.step-10"][3] == "10" and by_name["pre.step-10"][-2] == "tj/pre"
    only = await ckpt("ls", "--job", "tune", "-o", "json")
    assert [i["metadata"]["name"] for i in json.loads(only.out)["items"]] == ["tune.step-20"]
    wide = (await ckpt("ls", "-o", "wide")).out.splitlines()[0].split()
    assert wide[-5:] == ["COMPLETE", "RESUMABLE", "FILES", "VERIFIED", "DIGEST"]
    gone = await ckpt("lineage", "nope")
    assert gone.code == 1 and 'Checkpoint "nope" not found in namespace default' in gone.err


async def _finished(api, wait_for, name):
    async def done():
        tj = await api.get("ckpt.dev/v1alpha1/trainingjobs", NS, name)
        return tj if tj and tj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None
    tj = await wait_for(done, timeout=60)
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    return tj



async def test_root_files_of_an_output_verify_and_pull_with_the_stored_manifest(ckpt, api, operator, cluster,
                                                                              trainer, wait_for, tmp_path):
    """A snapshot stores each full manifest beside the data (.ckpt-manifests/ at the output's
    root, outside every checkpoint): verify and pull read it there, so a changed file is named;
    a pull keeps nothing of a file that is not what the manifest says."""
    files = {"model.safetensors": os.urandom(200_000), "config.json": b'{"model_type": "gpt2"}'}

    def train(attempt, env):
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], ".", files)
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-5", {"w.bin": b"five"})
        return 0
    trainer.behaviours["rooted"] = train
    await api.create("ckpt.dev/v1alpha1/trainingjobs", NS, training_job("rooted"))
    await _finished(api, wait_for, "rooted")
    final = await api.get(CKPT, NS, "rooted")
    assert sorted(final["status"]["location"]["volume"]["items"]) == ["config.json", "model.safetensors"]
    assert final["status"]["location"]["volume"]["manifest"].startswith(".ckpt-manifests/sha256-")

    assert (await ckpt("verify", "rooted")).code == 0
    pulled = await ckpt("pull", "rooted", str(tmp_path / "final"))
    assert pulled.code == 0, pulled.err
    assert {k: (tmp_path / "final" / k).read_bytes() for k in files} == files
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == [".checkpoint-manifest.json", "config.json",
                                                                      "model.safetensors"]  # nothing else of the output

    claim = cluster.claim_dir(NS, final["status"]["location"]["volume"]["claimName"])
    (claim / "config.json").write_bytes(b'{"model_type": "gpt3"}')
    tampered = await ckpt("verify", "rooted")
    assert tampered.code == 1 and "'config.json': sha256" in tampered.out and "the manifest says" in tampered.out
    refused = await ckpt("pull", "rooted", str(tmp_path / "again"))
    assert refused.code == 1 and "config.json" in refused.err and "the manifest says" in refused.err
    assert not any((tmp_path / "again").rglob("*.json"))


async def test_a_manifest_that_came_with_the_data_is_never_trusted(ckpt, api, operator, cluster, trainer, wait_for,
                                                                   tmp_path):
    """hostile1 D9: a trainer copied a downloaded checkpoint's directory into its output (the
    download left its .checkpoint-manifest.json) and changed a file. The scan left the manifest out
    (it is the agent's own name), but verify and the pull took it as THE manifest: Ready, then
    'the data there was replaced' on verify and every pull refused (failed before: both rc 1). Now
    a stored manifest is used only when it has the recorded digest."""
    source = make_model_dir(tmp_path)
    proc = await asyncio.create_subprocess_exec("checkpoint-operator", "agent", "scan", str(source), "--single",
                                                "--json", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    stale = json.dumps(json.loads(out)["checkpoints"][0]).encode()

    def train(attempt, env):  # the download's directory copied whole (its manifest too), then edited
        target = os.path.join(env["CHECKPOINT_OUTPUT_DIR"], "step-9")
        for path in source.rglob("*"):
            if path.is_file():
                rel = path.relative_to(source).as_posix()
                write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-9", {rel: path.read_bytes()})
        write_checkpoint(env["CHECKPOINT_OUTPUT_DIR"], "step-9", {".checkpoint-manifest.json": stale,
                                                                  "config.json": b'{"edited": true}'})
        assert os.path.isdir(target)
        return 0
    trainer.behaviours["copier"] = train
    await api.create("ckpt.dev/v1alpha1/trainingjobs", NS, training_job("copier"))
    await _finished(api, wait_for, "copier")
    ready = (await api.get(CKPT, NS, "copier.step-9"))["status"]
    assert ready["phase"] == "Ready" and ready["digest"] != json.loads(stale)["digest"]

    verified = await ckpt("verify", "copier.step-9")
    assert verified.code == 0, verified.out + verified.err
    pulled = await ckpt("pull", "copier.step-9", str(tmp_path / "back"))
    assert pulled.code == 0, pulled.err
    assert (tmp_path / "back" / "config.json").read_bytes() == b'{"edited": true}'
    assert f"digest {ready['digest']}" in pulled.out


async def test_a_push_of_a_file_that_changed_says_what_to_do(ckpt, api, operator, cluster, tmp_path, monkeypatch):
    from plugin_helpers import push_of_a_file_changed_after_hashing
    await push_of_a_file_changed_after_hashing(ckpt, api, tmp_path, monkeypatch, "racy")
