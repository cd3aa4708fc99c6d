"""Fixtures of the e2e suite: kubectl and helm against the kind cluster e2e/run.sh prepared.

Each store (volume, s3) is one `helm upgrade` of the release; each test gets its own
namespace, deleted afterwards unless the test failed (then its state is dumped to the
artifacts directory first).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

CONTEXT = os.environ.get("E2E_KUBE_CONTEXT", "kind-ckpt-e2e")
RELEASE = os.environ.get("E2E_RELEASE", "checkpoint-operator")
RELEASE_NAMESPACE = os.environ.get("E2E_RELEASE_NAMESPACE", "ckpt-system")
CHART = os.environ.get("E2E_CHART", str(Path(__file__).resolve().parents[1] / "charts" / "checkpoint-operator"))
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))

# matches e2e/minio.yaml
S3_ENDPOINT = "http://minio.minio.svc:9000"
S3_BUCKET = "checkpoints"
S3_ACCESS_KEY = "e2e-access-key"
S3_SECRET_KEY = "e2e-secret-key-not-secret"
S3_SECRET_NAME = "ckpt-s3"


def run(*args: str, input: str | None = None, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 300) -> str:
    return run("kubectl", "--context", CONTEXT, *args, input=input, check=check, timeout=timeout).stdout


def helm(*args: str) -> str:
    return run("helm", "--kube-context", CONTEXT, *args, timeout=600).stdout


class Cluster:
    """kubectl in one namespace, with the polling the scenarios need."""

    def __init__(self, namespace: str):
        self.namespace = namespace

    def kubectl(self, *args: str, **kwargs: Any) -> str:
        return kubectl("-n", self.namespace, *args, **kwargs)

    def apply(self, manifest: dict | str) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        self.kubectl("apply", "-f", "-", input=text)

    def get(self, kind: str, name: str) -> dict | None:
        out = self.kubectl("get", kind, name, "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None

    def list(self, kind: str, selector: str | None = None) -> list[dict]:
        args = ["get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        return json.loads(self.kubectl(*args))["items"]

    def events(self, name: str, type_: str | None = None) -> list[dict]:
        selector = f"involvedObject.name={name}" + (f",type={type_}" if type_ else "")
        return json.loads(self.kubectl("get", "events", "--field-selector", selector, "-o", "json"))["items"]

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = 300, interval: float = 2) -> Any:
        """Poll until predicate() returns something truthy; return it."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    def wait_phase(self, kind: str, name: str, phases: set[str], timeout: float = 300) -> dict:
        def reached():
            obj = self.get(kind, name)
            phase = (obj or {}).get("status", {}).get("phase")
            if phase == "Failed" and "Failed" not in phases:
                raise AssertionError(f"{kind}/{name} failed: {json.dumps(obj.get('status'), indent=2)}")
            return obj if phase in phases else None
        return self.wait_for(f"{kind}/{name} in phase {sorted(phases)}", reached, timeout)

    def pod_of_job(self, job_name: str) -> dict | None:
        pods = self.list("pods", f"job-name={job_name}")
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running[0] if running else None

    def dump(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, args in {
            "describe.txt": ["describe", "trainingjobs,checkpoints,jobs,pods,pvc"],
            "objects.yaml": ["get", "trainingjobs,checkpoints,jobs,pods,pvc", "-o", "yaml"],
            "events.txt": ["get", "events", "--sort-by=.lastTimestamp"],
        }.items():
            (directory / name).write_text(self.kubectl(*args, check=False))
        for pod in self.list("pods"):
            pod_name = pod["metadata"]["name"]
            (directory / f"pod-{pod_name}.log").write_text(
                self.kubectl("logs", pod_name, "--all-containers", "--prefix", check=False))


def dump_operator(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "operator.log").write_text(kubectl(
        "-n", RELEASE_NAMESPACE, "logs", f"deployment/{RELEASE}", "--all-containers", "--tail=-1", check=False))
    (directory / "operator-describe.txt").write_text(kubectl(
        "-n", RELEASE_NAMESPACE, "describe", "deployment,pods", check=False))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session", params=["volume", "s3"])
def store(request) -> str:
    """The release configured for one store. Tests run once per store."""
    settings = ["--set", f"storage.type={request.param}"]
    if request.param == "s3":
        settings += ["--set", f"storage.s3.endpoint={S3_ENDPOINT}", "--set", f"storage.s3.bucket={S3_BUCKET}",
                     "--set", "storage.s3.prefix=e2e", "--set", f"storage.s3.namespaceSecret={S3_SECRET_NAME}",
                     "--set", f"storage.s3.operatorSecret={S3_SECRET_NAME}"]
    helm("upgrade", RELEASE, CHART, "--namespace", RELEASE_NAMESPACE, "--reuse-values", *settings,
         "--wait", "--timeout", "5m")
    kubectl("-n", RELEASE_NAMESPACE, "rollout", "status", f"deployment/{RELEASE}", "--timeout=180s")
    deployment = json.loads(kubectl("-n", RELEASE_NAMESPACE, "get", "deployment", RELEASE, "-o", "json"))
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CKPT_STORAGE_TYPE"] == request.param
    return request.param


@pytest.fixture
def cluster(request, store) -> Cluster:
    namespace = f"e2e-{store}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    cluster = Cluster(namespace)
    if store == "s3":
        # the agent pods run in the job's namespace and read the store's credentials there
        cluster.kubectl("create", "secret", "generic", S3_SECRET_NAME,
                        f"--from-literal=AWS_ACCESS_KEY_ID={S3_ACCESS_KEY}",
                        f"--from-literal=AWS_SECRET_ACCESS_KEY={S3_SECRET_KEY}")
    yield cluster
    if request.node.stash.get(_FAILED, True):
        directory = ARTIFACTS / request.node.name.replace("/", "_").replace("[", "-").rstrip("]")
        cluster.dump(directory)
        dump_operator(directory)
        print(f"\nstate of {namespace} and the operator's logs are in {directory}")
    else:
        kubectl("delete", "namespace", namespace, "--wait=false")
