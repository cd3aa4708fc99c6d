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

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]  # whole `local run`s: the slow tier


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
    assert jobs["finetune"]["inputs"] == [{"name": "pretrain.step-300", "digest": on_s3["pretrain.step-300"]["digest"]}]

    # A second run (a new SeaweedFS process, new ports) finds the first run's data in the state dir.
    branch = tmp_path / "branch.yaml"
    branch.write_text((ROOT / "examples/local/2-finetune.yaml").read_text()
                      .replace("name: finetune", "name: branch")
                      .replace("- fromTrainingJob: pretrain\n      select: latest", "- name: pretrain.step-200"))
    again = local_run("-f", str(branch), "--store", "s3", state_dir=tmp_path / "s3")
    assert again.returncode == 0, again.stderr[-3000:]
    branched = by_name(json.loads(again.stdout))
    assert branched["branch.step-250"]["parents"][0]["digest"] == on_s3["pretrain.step-200"]["digest"]
    assert branched["branch.step-250"]["store"] == "s3"
    # --fresh starts over: nothing of the earlier runs is left.
    fresh = local_run("-f", str(branch), "--store", "s3", "--fresh", "--timeout", "5", state_dir=tmp_path / "s3")
    assert fresh.returncode == 1, fresh.stderr[-3000:]
    assert "input Checkpoint pretrain.step-200 does not exist" in fresh.stderr  # the earlier runs' data is gone
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


def weeds_serving(data_dir: Path) -> list[int]:
    """The pids of weed processes serving `data_dir` (from /proc: whoever started them)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and args and os.path.basename(args[0]) == b"weed" and f"-dir={data_dir}".encode() in args:
            found.append(int(entry))
    return found


def wait_gone(data_dir: Path, timeout: float = 20) -> list[int]:
    import time
    deadline = time.monotonic() + timeout
    while (left := weeds_serving(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "SIGKILL"])
def test_seaweedfs_never_outlives_its_run(tmp_path, how):
    """hostile3 F2: weed ran in its own session and was stopped only by the run's `finally`, which
    SIGTERM/SIGHUP/SIGKILL skipped: the orphan wedged the state dir. Failed before (all three)."""
    import signal
    import time
    state = tmp_path / "st"
    proc = subprocess.Popen([sys.executable, "-m", "checkpoint_operator", "local", "run", "--state-dir", str(state),
                             "--runtime", "process", "-f", "examples/local/1-pretrain.yaml", "--store", "s3"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        seen = ""
        while "store: s3, SeaweedFS on" not in seen and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, seen
            seen += line
        assert weeds_serving(state / "s3" / "data"), seen
        proc.send_signal(getattr(signal, how))
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = wait_gone(state / "s3" / "data")
    for pid in left:  # never leave one behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"weed {left} outlived its run ({how})"
    if how != "SIGKILL":
        assert not (state / "s3" / s3store.PID_FILE).exists()  # stopped, and said so


def test_a_leftover_seaweedfs_is_stopped_and_an_early_exit_says_why(tmp_path):
    """hostile3 F2: an orphan from an earlier run (its run gone) is stopped at the next start; a weed
    the pid file does not know holds the data's lock, and the start says SeaweedFS exited, with its
    log's fatal line and the log's path, not "Could not connect to the endpoint URL"."""
    import signal
    data = tmp_path / "s3"
    first = s3store.LocalSeaweedFS(data)
    first.ports = dict(zip(s3store.PORT_FLAGS, s3store._free_ports(len(s3store.PORT_FLAGS))))
    (data / "data").mkdir(parents=True)
    orphan = subprocess.Popen(first.command("weed"), cwd=data, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        import time
        time.sleep(3)  # it takes the data's lock
        (data / s3store.PID_FILE).write_text(json.dumps({"pid": orphan.pid, "parent": 2 ** 22 + 1}))  # a run long gone
        again = s3store.LocalSeaweedFS(data)
        try:
            again.start()
            assert orphan.poll() is not None  # the leftover was stopped, and this start serves the data
        finally:
            again.stop()
        assert not weeds_serving(data / "data")

        stranger = subprocess.Popen(first.command("weed"), cwd=data, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            time.sleep(3)
            with pytest.raises(s3store.LocalStoreError) as refused:
                s3store.LocalSeaweedFS(data).start()
            message = str(refused.value)
            assert message.startswith("SeaweedFS exited (code ") and f"its log: {data / 'weed.log'}" in message, message
            assert "\n" not in message
        finally:
            stranger.kill()
            stranger.wait()
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()
    for pid in weeds_serving(data / "data"):
        os.kill(pid, signal.SIGKILL)


def test_the_store_s_files_and_apis_are_no_one_else_s(tmp_path):
    """hostile3 F1: the data directory was 0755, credentials.json written then chmod-ed, the filer's and
    volume server's HTTP APIs read and wrote every object without credentials, and the unix sockets
    stayed in /tmp. Now: 0700/0600, JWT-signed HTTP APIs (401 unsigned), sockets under the state dir or
    removed. Failed before."""
    import glob
    import stat
    import urllib.error
    import urllib.request

    def status(url: str, data: bytes | None = None) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data, method="PUT" if data else "GET"),
                                        timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
    weed = s3store.LocalSeaweedFS(tmp_path / "s3")
    try:
        settings = weed.start()
        client = s3store.client(settings)
        client.put_object(Bucket=settings.bucket, Key="_catalog/x-12345678/secret.txt", Body=b"catalog-bytes")
        assert client.get_object(Bucket=settings.bucket, Key="_catalog/x-12345678/secret.txt")["Body"].read() == \
            b"catalog-bytes"  # the S3 API, with the credentials, works
        filer = f"http://127.0.0.1:{weed.ports['filer.port']}/buckets/{settings.bucket}/_catalog/x-12345678/"
        assert status(filer + "secret.txt") == 401
        assert status(filer + "planted.txt", b"evil") == 401
        assert (tmp_path / "s3" / "sock" / "filer.sock").exists()
        ports = list(weed.ports.values())
    finally:
        weed.stop()
    for directory in (tmp_path / "s3", tmp_path / "s3" / "data"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for secret in ("credentials.json", "security.toml"):
        assert stat.S_IMODE((tmp_path / "s3" / secret).stat().st_mode) == 0o600, secret
    assert not [p for port in ports for p in glob.glob(f"/tmp/seaweedfs-*-{port}.sock")]
