"""What the local kubelet reports of each container as a kubelet does (hostile5 F4): the official
kubernetes client refuses a container status without imageID."""

from __future__ import annotations

import re

import kubernetes

from checkpoint_operator.local.kubelet import running_status, terminated_status, waiting_status, with_runtime_ids

CONTAINER = {"name": "trainer", "image": "python:3.12"}


def test_every_status_has_an_image_id_and_a_created_container_its_container_id() -> None:
    status = with_runtime_ids({
        "initContainerStatuses": [terminated_status({"name": "fetch", "image": "agent"}, 0, "t0")],
        "containerStatuses": [running_status(CONTAINER), waiting_status({"name": "b", "image": "x"}, "ImagePull")]},
        "uid-1", "podman")
    init, = status["initContainerStatuses"]
    running, waiting = status["containerStatuses"]
    for created in (init, running):
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", created["imageID"])
        assert re.fullmatch(r"podman://[0-9a-f]{64}", created["containerID"])
    assert init["state"]["terminated"]["containerID"] == init["containerID"]
    assert waiting["imageID"] == "" and "containerID" not in waiting  # not created yet: as a kubelet says it


def test_ids_are_per_image_and_per_run() -> None:
    def ids(uid: str, restarts: int, image: str = "python:3.12") -> tuple[str, str]:
        status = with_runtime_ids({"containerStatuses": [running_status({**CONTAINER, "image": image}, restarts)]},
                                  uid, "process")
        return status["containerStatuses"][0]["imageID"], status["containerStatuses"][0]["containerID"]
    assert ids("u", 0) == ids("u", 0)  # the running and the terminated report of one run agree
    assert ids("u", 0)[0] == ids("v", 1)[0]  # one image, one id
    assert ids("u", 0)[1] != ids("u", 1)[1] != ids("v", 1)[1]  # a restart or another pod: another container
    assert ids("u", 0, "other")[0] != ids("u", 0)[0]


def test_the_official_client_reads_the_statuses() -> None:
    status = with_runtime_ids({"phase": "Succeeded", "containerStatuses": [
        terminated_status(CONTAINER, 0, "2026-01-01T00:00:00Z")]}, "uid-1", "process")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [CONTAINER]},
           "status": status}
    read = kubernetes.client.V1Pod.from_dict(pod)  # without imageID: ValidationError (kubernetes 37)
    assert read.status.container_statuses[0].image_id == status["containerStatuses"][0]["imageID"]
