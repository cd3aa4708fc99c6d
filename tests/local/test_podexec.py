"""pods/exec on the local cluster: the emulator proxies the websocket to the local kubelet's exec
server, which runs the command in the running container's view. Clients are the `kubernetes`
package's own `stream()` (what `kubectl ckpt` and most Python tools use) and a raw websocket
client speaking v4 (no stdin close)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp
import kubernetes
import pytest
from kubernetes.stream import stream

from checkpoint_operator.local.podexec import exit_status, parse_bool

NS = "default"
pytestmark = pytest.mark.timeout(60)


def core(api_url: str) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(kubernetes.client.Configuration(host=api_url)))


def holder_pod(name: str, *, containers: int = 1, volume_dir: str | None = None) -> dict:
    """A pod whose containers sleep (a `python` command: the process runtime runs this interpreter)."""
    mounts = [{"name": "data", "mountPath": "/data"}] if volume_dir else []
    spec: dict = {"restartPolicy": "Never", "containers": [
        {"name": f"c{i}", "image": "img", "command": ["python", "-c", "import time; time.sleep(60)"],
         "env": [{"name": "GREETING", "value": f"hello from c{i}"}], "volumeMounts": mounts}
        for i in range(containers)]}
    if volume_dir:
        spec["volumes"] = [{"name": "data", "hostPath": {"path": volume_dir}}]
    return {"metadata": {"name": name}, "spec": spec}


async def running(api, wait_for, name: str) -> dict:
    async def is_running():
        pod = await api.get("v1/pods", NS, name)
        return pod if pod and pod.get("status", {}).get("phase") == "Running" else None
    return await wait_for(is_running, timeout=20)


def run_exec(api_url: str, pod: str, command: list[str], stdin: bytes | None = None, container: str | None = None):
    """(stdout, stderr, returncode) through kubernetes.stream.stream with binary channels."""
    kwargs = {"container": container} if container else {}
    ws = stream(core(api_url).connect_get_namespaced_pod_exec, pod, NS, command=command, stdin=stdin is not None,
                stdout=True, stderr=True, tty=False, _preload_content=False, binary=True, **kwargs)
    out, err = bytearray(), bytearray()
    if stdin is not None:
        for i in range(0, len(stdin), 256 * 1024):
            ws.write_stdin(stdin[i:i + 256 * 1024])
        ws.close_channel(0)
    while ws.is_open():
        ws.update(timeout=5)
        out += ws.read_stdout() or b""
        err += ws.read_stderr() or b""
    out += ws.read_stdout() or b""
    err += ws.read_stderr() or b""
    return bytes(out), bytes(err), ws.returncode


async def test_exec_runs_in_the_container_with_its_env_and_mounts(api, cluster, wait_for, api_url, tmp_path):
    (tmp_path / "vol").mkdir()
    (tmp_path / "vol" / "seen.txt").write_text("on the volume")
    await api.create("v1/pods", NS, holder_pod("p1", volume_dir=str(tmp_path / "vol")))
    await running(api, wait_for, "p1")
    # Container paths in whole arguments are translated into the container's view (as the kubelet does
    # for a container's own command line).
    script = "import os, sys; print(os.environ['GREETING']); print(open(sys.argv[1]).read()); " \
             "sys.stderr.write('to stderr'); sys.exit(3)"
    out, err, code = await asyncio.to_thread(run_exec, api_url, "p1", ["python", "-c", script, "/data/seen.txt"])
    assert out.decode().splitlines() == ["hello from c0", "on the volume"]
    assert err == b"to stderr"
    assert code == 3


async def test_stdin_streams_binary_data_through_and_eof_ends_it(api, cluster, wait_for, api_url):
    await api.create("v1/pods", NS, holder_pod("p2"))
    await running(api, wait_for, "p2")
    data = os.urandom(3 * 1024 * 1024) + bytes(range(256))
    script = "import sys, hashlib; d = sys.stdin.buffer.read(); print(len(d), hashlib.sha256(d).hexdigest())"
    out, _, code = await asyncio.to_thread(run_exec, api_url, "p2", ["python", "-c", script], stdin=data)
    import hashlib
    assert out.decode().split() == [str(len(data)), hashlib.sha256(data).hexdigest()]
    assert code == 0
    # and binary stdout the other way, bytes unchanged
    out, _, code = await asyncio.to_thread(run_exec, api_url, "p2", [
        "python", "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4096)"])
    assert out == bytes(range(256)) * 4096 and code == 0


async def test_the_container_is_chosen_by_name(api, cluster, wait_for, api_url):
    await api.create("v1/pods", NS, holder_pod("p3", containers=2))
    await running(api, wait_for, "p3")
    out, _, _ = await asyncio.to_thread(run_exec, api_url, "p3", ["python", "-c", "import os; print(os.environ['GREETING'])"],
                                        container="c1")
    assert out.decode().strip() == "hello from c1"
    with pytest.raises(kubernetes.client.ApiException) as refused:
        await asyncio.to_thread(run_exec, api_url, "p3", ["true"])
    assert "a container name must be specified for pod p3" in str(refused.value)


async def test_refusals_are_statuses_naming_what_is_wrong(api, cluster, wait_for, api_url):
    async with aiohttp.ClientSession() as session:
        async def get(path):
            async with session.get(api_url + path, headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                            "Sec-WebSocket-Version": "13",
                                                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                            "Sec-WebSocket-Protocol": "v4.channel.k8s.io"}) as r:
                return r.status, await r.json()
        status, body = await get(f"/api/v1/namespaces/{NS}/pods/nope/exec?command=true")
        assert status == 404 and body["message"] == 'pods "nope" not found'
        await api.create("v1/pods", NS, {"metadata": {"name": "done"}, "spec": {"restartPolicy": "Never", "containers": [
            {"name": "c", "image": "i", "command": ["true"]}]}})
        await wait_for(lambda: _phase(api, "done", "Succeeded"), timeout=20)
        status, body = await get(f"/api/v1/namespaces/{NS}/pods/done/exec?command=true")
        assert status == 400 and "cannot exec into a container in a completed pod; current phase is Succeeded" \
            in body["message"]
        await api.create("v1/pods", NS, holder_pod("p4"))
        await running(api, wait_for, "p4")
        status, body = await get(f"/api/v1/namespaces/{NS}/pods/p4/exec?command=true&container=zz")
        assert status == 400 and body["message"] == "container zz is not valid for pod p4"
        status, body = await get(f"/api/v1/namespaces/{NS}/pods/p4/exec")
        assert status == 400 and "at least one command" in body["message"]
        async with session.get(api_url + f"/api/v1/namespaces/{NS}/pods/p4/exec?command=true") as plain:
            assert plain.status == 400 and "Upgrade request required" in (await plain.json())["message"]


async def test_the_exec_fence_refuses_a_process_of_ones_own_in_an_agent_pod(api, cluster, wait_for, api_url):
    """hostile5 H4: a pod named as an import pod runs nothing but what the chart's exec fence
    allows there (nothing); a pod of another name is not fenced (logic/exec_fence.py)."""
    for name in ("imp1-import", "imp1-importer"):
        await api.create("v1/pods", NS, holder_pod(name))
        await running(api, wait_for, name)
    with pytest.raises(kubernetes.client.ApiException) as refused:
        await asyncio.to_thread(run_exec, api_url, "imp1-import", ["python", "-c", "print('in')"])
    assert "Handshake status 403" in str(refused.value)
    assert "denied request: exec into the checkpoint operator's agent pod imp1-import is refused" \
        in str(refused.value)
    out, _, code = await asyncio.to_thread(run_exec, api_url, "imp1-importer", ["python", "-c", "print('in')"])
    assert (out, code) == (b"in\n", 0)


async def _phase(api, name, phase):
    pod = await api.get("v1/pods", NS, name)
    return pod and pod.get("status", {}).get("phase") == phase


async def test_v4_client_and_the_command_killed_when_the_client_leaves(api, cluster, wait_for, api_url, tmp_path):
    """v4 has no stdin close: a client that leaves ends the command (its process is gone)."""
    await api.create("v1/pods", NS, holder_pod("p5"))
    await running(api, wait_for, "p5")
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); print('up', flush=True); " \
             f"time.sleep(60)"
    url = api_url.replace("http", "ws") + f"/api/v1/namespaces/{NS}/pods/p5/exec"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, params=[("command", "python"), ("command", "-c"), ("command", script),
                                                   ("stdout", "true")], protocols=["v4.channel.k8s.io"]) as ws:
            assert ws.protocol == "v4.channel.k8s.io"
            msg = await ws.receive(timeout=20)
            assert msg.data == bytes([1]) + b"up\n"
    pid = int(pid_file.read_text())

    def gone():
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split()[2] == "Z"
        except (ProcessLookupError, FileNotFoundError):
            return True
    await wait_for(gone, timeout=10)


async def test_an_exec_ends_when_its_container_stops(api, cluster, wait_for, api_url):
    await api.create("v1/pods", NS, {"metadata": {"name": "short"}, "spec": {"restartPolicy": "Never", "containers": [
        {"name": "c", "image": "i", "command": ["python", "-c", "import time; time.sleep(3)"]}]}})
    await running(api, wait_for, "short")
    out, _, code = await asyncio.to_thread(run_exec, api_url, "short", ["python", "-c", "import time; time.sleep(60)"])
    assert code != 0  # killed with its container, as in a pod
    assert await _phase(api, "short", "Succeeded")


def test_exit_status_and_flags_read_as_the_real_kubelet_and_api_write_them():
    assert exit_status(["x"], 0) == {"metadata": {}, "status": "Success"}
    failure = exit_status(["sh", "-c", "exit 3"], 3)
    assert failure["details"]["causes"][0]["message"] == "3" and failure["reason"] == "NonZeroExitCode"
    assert json.loads(json.dumps(failure))["status"] == "Failure"
    assert [parse_bool(v) for v in ("True", "true", "1", "t", "false", None, "")] == [True, True, True, True, False,
                                                                                       False, False]
    assert sys.executable  # the process runtime runs `python` as this interpreter


async def test_the_exec_fence_refuses_the_live_sealing_sidecar_of_any_pod(api, cluster, wait_for, api_url):
    """hostile7 E2: a training pod's sidecar (container ckpt-live) runs nothing of anyone's: its output is
    what the operator believes sealed. The pod's other containers are the user's own."""
    pod = holder_pod("train-0", containers=2)
    pod["spec"]["containers"][1]["name"] = "ckpt-live"
    await api.create("v1/pods", NS, pod)
    await running(api, wait_for, "train-0")
    with pytest.raises(kubernetes.client.ApiException) as refused:
        await asyncio.to_thread(run_exec, api_url, "train-0", ["python", "-c", "print('in')"], container="ckpt-live")
    assert "Handshake status 403" in str(refused.value)
    assert "into the live-sealing sidecar (container ckpt-live) of pod train-0 is refused" in str(refused.value)
    out, _, code = await asyncio.to_thread(run_exec, api_url, "train-0", ["python", "-c", "print('in')"],
                                           container="c0")
    assert (out, code) == (b"in\n", 0)
