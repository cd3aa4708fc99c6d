"""What live sealing needs of the local kubelet, as a kubelet does it: a deleted pod's sidecars are
stopped only after its regular containers have exited; a downwardAPI file follows the pod's
annotations while it runs; a sidecar's log can be read while it runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from checkpoint_operator.local.cluster import LocalCluster
from checkpoint_operator.local.server import ApiClient
from test_cluster import host_dir, python_container

NS = "default"

# The sidecar: on SIGTERM, records whether the main container had exited already.
ORDERED_SIDECAR = """
import pathlib, signal, sys, time
marks = pathlib.Path(sys.argv[1])
def stop(*_):
    (marks / "sidecar-saw").write_text("main exited first" if (marks / "main-exited").exists() else "main still running")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(marks / "sidecar-running").write_text("yes")
while True:
    time.sleep(0.05)
"""

# The main container: on SIGTERM, takes its time (a save in the grace period), then exits.
SLOW_TO_STOP = """
import pathlib, signal, sys, time
marks = pathlib.Path(sys.argv[1])
def stop(*_):
    time.sleep(0.5)
    (marks / "main-exited").write_text("yes")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
(marks / "main-running").write_text("yes")
while True:
    time.sleep(0.05)
"""


async def test_a_deleted_pod_s_sidecar_is_stopped_after_its_containers(api: ApiClient, cluster: LocalCluster,
                                                                       wait_for, tmp_path: Path) -> None:
    volumes, mounts = host_dir(tmp_path)
    await api.create("v1/pods", NS, {"metadata": {"name": "preempted"}, "spec": {
        "restartPolicy": "Never", "volumes": volumes, "terminationGracePeriodSeconds": 30,
        "initContainers": [python_container("sidecar", ORDERED_SIDECAR, args=["/marks"], volumeMounts=mounts,
                                            restartPolicy="Always")],
        "containers": [python_container("main", SLOW_TO_STOP, args=["/marks"], volumeMounts=mounts)]}})
    marks = tmp_path / "marks"
    await wait_for(lambda: (marks / "main-running").exists() and (marks / "sidecar-running").exists(), timeout=30)
    await api.delete("v1/pods", NS, "preempted")
    await wait_for(lambda: (marks / "sidecar-saw").exists(), timeout=30)
    assert (marks / "sidecar-saw").read_text() == "main exited first"


WATCH_ANNOTATIONS = """
import pathlib, sys, time
marks, path = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def mark(name, text):  # whole or not at all: the test reads the mark once it exists
    (marks / (name + ".tmp")).write_text(text)
    (marks / (name + ".tmp")).rename(marks / name)
mark("first", path.read_text())
while 'ckpt.dev/live-remove="[1,2]"' not in path.read_text():
    time.sleep(0.05)
mark("second", path.read_text())
"""


async def test_a_downward_api_file_follows_the_pod_s_annotations(api: ApiClient, cluster: LocalCluster,
                                                                 wait_for, tmp_path: Path) -> None:
    volumes, mounts = host_dir(tmp_path)
    volumes.append({"name": "meta", "downwardAPI": {"items": [
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}})
    mounts = [*mounts, {"name": "meta", "mountPath": "/meta"}]
    await api.create("v1/pods", NS, {"metadata": {"name": "annotated", "annotations": {"a": 'say "hi"'}}, "spec": {
        "restartPolicy": "Never", "volumes": volumes,
        "containers": [python_container("main", WATCH_ANNOTATIONS, args=["/marks", "/meta/annotations"],
                                        volumeMounts=mounts)]}})
    marks = tmp_path / "marks"
    await wait_for(lambda: (marks / "first").exists(), timeout=30)
    assert (marks / "first").read_text() == 'a="say \\"hi\\""\n'
    await api.patch("v1/pods", NS, "annotated", {"metadata": {"annotations": {"ckpt.dev/live-remove": "[1,2]"}}})
    await wait_for(lambda: (marks / "second").exists(), timeout=30)
    assert (marks / "second").read_text() == 'a="say \\"hi\\""\nckpt.dev/live-remove="[1,2]"\n'


PRINTS_THEN_WAITS = """
import pathlib, sys, time
print("first line", flush=True)
while not pathlib.Path(sys.argv[1], "go").exists():
    time.sleep(0.05)
"""


async def test_a_sidecar_s_log_is_served_while_it_runs(api: ApiClient, cluster: LocalCluster, wait_for,
                                                       tmp_path: Path) -> None:
    volumes, mounts = host_dir(tmp_path)
    await api.create("v1/pods", NS, {"metadata": {"name": "logging"}, "spec": {
        "restartPolicy": "Never", "volumes": volumes,
        "initContainers": [python_container("sidecar", PRINTS_THEN_WAITS, args=["/marks"], volumeMounts=mounts,
                                            restartPolicy="Always")],
        "containers": [python_container("main", PRINTS_THEN_WAITS, args=["/marks"], volumeMounts=mounts)]}})

    async def sidecar_log() -> str:
        try:
            return await api.read_log(NS, "logging", container="sidecar")
        except Exception:  # noqa: BLE001 - not started yet
            return ""
    assert await wait_for(sidecar_log, timeout=30) == "first line\n"

    async def running() -> bool:
        # The sidecar prints before the main container starts; the pod is Pending until it has (as a kubelet
        # reports it): wait for the phase rather than read it once.
        pod = await api.get("v1/pods", NS, "logging")
        return pod["status"]["phase"] == "Running"
    assert await wait_for(running, timeout=30)
    (tmp_path / "marks" / "go").write_text("")


# Records the pid of each of its starts (a restart adds a line), then runs until killed.
RECORDS_ITS_STARTS = """
import os, pathlib, sys, time
with open(pathlib.Path(sys.argv[1], "starts"), "a") as fh:
    fh.write(f"{os.getpid()}\\n")
while True:
    time.sleep(0.05)
"""


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has ended


async def test_stopping_the_kubelet_leaves_no_sidecar_running_nor_restarts_one(
        api: ApiClient, cluster: LocalCluster, wait_for, tmp_path: Path) -> None:
    """`local run --serve` stopped (SIGTERM) while a sidecar ran: every container is killed and the sidecar is
    not restarted after its kill (its keep-running loop restarted it, and the new container outlived local
    mode: hostile7 L1)."""
    volumes, mounts = host_dir(tmp_path)
    await api.create("v1/pods", NS, {"metadata": {"name": "live"}, "spec": {
        "restartPolicy": "Never", "volumes": volumes,
        "initContainers": [python_container("sidecar", RECORDS_ITS_STARTS, args=["/marks"], volumeMounts=mounts,
                                            restartPolicy="Always")],
        "containers": [python_container("main", PRINTS_THEN_WAITS, args=["/marks"], volumeMounts=mounts)]}})

    async def running() -> bool:
        return (await api.get("v1/pods", NS, "live"))["status"].get("phase") == "Running"
    await wait_for(running, timeout=30)
    # Running says the processes were started, not that the sidecar's interpreter got to record its
    # start (under load it had not: no pid to check); stopping before that would test nothing
    # (the file exists from its open() on, before the pid line is written: wait for the line itself)
    starts = tmp_path / "marks" / "starts"
    await wait_for(lambda: starts.exists() and starts.read_text().endswith("\n"), timeout=30)
    sidecar_loops = [t for t in asyncio.all_tasks() if t.get_name() == "sidecar sidecar"]  # the kubelet's loop
    assert len(sidecar_loops) == 1
    await cluster.kubelet.stop()  # what local mode's shutdown does to its kubelets
    assert all(loop.done() for loop in sidecar_loops)  # nothing left to start the sidecar again
    pids = [int(line) for line in starts.read_text().split()]
    assert pids and not [pid for pid in pids if alive(pid)]
