"""The fault matrix (issue 8): the real operator process against the emulated API and SeaweedFS,
with faults injected at every step of a TrainingJob's life, and for each case a verdict.

Each case runs in a fresh set of processes as bench/scale.py starts them (the emulator and
`checkpoint-operator run` each in a process of its own; this process hosts the local cluster
and plays the training containers; the operator's agent pods run for real). Faults:

- operator SIGKILLed right after a given API write succeeded (the emulator's fault layer holds
  every later request of the operator until the bench has killed it; then a new operator starts);
- the API answering 409 (writes), 429, 500 or a timeout (the connection dropped, before or after the
  write took effect) on a fraction of the operator's requests, for a whole lifecycle;
- SeaweedFS killed while an agent uploads, downloads, imports or the operator deletes, and restarted;
- agent and training pods exiting 1, OOM-killed (137, OOMKilled), evicted, or stuck Pending
  (unschedulable, image pull back-off: the bench's kubelet does not start them);
- items of issues 8 and 18 driven end to end (issue 18: deep output, cycles of waits, a name held by another job);
- volume snapshots (storage.volume.snapshotClassName, on three nodes and the block StorageClass):
  the operator SIGKILLed right after it took, handed over or released something, and the local
  cluster's CSI side (snapshot controller, provisioner) stopped in the middle of a snapshot's or a
  restore's copy and started again, as local mode killed there would.

The fault layer lives only in this file's emulator process (`FaultLayer`, in front of the
emulator's handler, off unless a case asks for it); it affects only the operator's requests
(User-Agent kopf/ or the Kubernetes client's), never the local cluster's nor the bench's.

Every case is then counted: checkpoints lost (a directory the job wrote that is neither in a Ready
Checkpoint with the same bytes nor kept on a retained volume), duplicated (two Checkpoints for one
output directory), orphaned (agent pods, PVCs, Jobs without a live owner; S3 objects under the
store's prefix outside every Checkpoint's location; VolumeSnapshots no live object owns, contents
without their snapshot, snapshot copies without their content, restored claims left after their
job), Ready while partial (the bytes in the store or
on the volume not matching the Checkpoint's digest or what the job wrote), and whether the object
reached the right phase with a message naming the cause. No timed assertions: waits have generous
limits, and a limit reached is a failed case, not a figure.

    python bench/faults.py                  # every case (a few minutes)
    python bench/faults.py --quick          # one case of each kind
    python bench/faults.py --only kill,api  # by group or case name (comma-separated, prefixes)
    python bench/faults.py --list

Exits 1 when any count is non-zero or any message is not clear.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scale import CKPT, NS, TJ, Emulator, Operator  # noqa: E402
from checkpoint_operator.local.runtime import host_command  # noqa: E402

# This checkout's CLI (never the `checkpoint-operator` first on PATH, which may be another checkout's).
OPERATOR_CLI = [sys.executable, "-m", "checkpoint_operator"]

PODS, PVCS, JOBS = "v1/pods", "v1/persistentvolumeclaims", "batch/v1/jobs"
SNAPSHOTS = "snapshot.storage.k8s.io/v1/volumesnapshots"
CONTENTS = "snapshot.storage.k8s.io/v1/volumesnapshotcontents"
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator")  # kopf's and the kubernetes client's User-Agent
WAIT = float(os.environ.get("FAULTS_WAIT", 240))  # seconds: the most any phase of a case may take (a limit reached fails the case)


# --- the emulator process and its fault layer ---------------------------------------------------

class FaultLayer:
    """In front of the emulator's handler: `GET/PUT /_faults` reads/sets the plan.

    plan = {"crash_after": {"method", "path" (regex), "body" (substring), "count"},  # then freeze
            "errors": ["409"|"429"|"500"|"timeout"], "rate": 0.1, "seed": 1}
    Frozen: every request of the operator is held (until its process is killed).
    """

    def __init__(self) -> None:
        self.plan: dict = {}
        self.seen = 0
        self.frozen = False
        self.injected: Counter = Counter()
        self.rng = random.Random(1)

    async def handle(self, raw, inner):
        import aiohttp.web
        if raw.path == "/_faults":
            if raw.method == "PUT":
                self.plan = json.loads(await raw.read() or b"{}")
                self.seen, self.frozen, self.rng = 0, False, random.Random(self.plan.get("seed", 1))
            return aiohttp.web.json_response({"plan": self.plan, "frozen": self.frozen, "seen": self.seen,
                                              "injected": dict(self.injected)})
        if not raw.headers.get("User-Agent", "").startswith(OPERATOR_AGENTS):
            return await inner(raw)
        watch = raw.query.get("watch") in ("true", "1")
        if self.frozen and not watch:
            await asyncio.Event().wait()  # held: the operator is about to be killed
        errors, rate = self.plan.get("errors") or [], self.plan.get("rate", 0)
        if errors and not watch and self.rng.random() < rate:
            kind = self.rng.choice(errors)
            if kind == "409" and raw.method in ("GET", "POST"):
                kind = ""  # a real API server answers 409 to a create only when the object exists
            if kind:
                self.injected[kind] += 1
            if kind in ("409", "429", "500"):
                code = int(kind)
                reason = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError"}[code]
                message = {409: "Operation cannot be fulfilled: the object has been modified; please apply your "
                                "changes to the latest version and try again",
                           429: "too many requests, please try again later",
                           500: "Internal error occurred: etcdserver: request timed out"}[code]
                headers = {"Retry-After": "1"} if code == 429 else None
                return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                  "message": message, "reason": reason, "code": code},
                                                 status=code, headers=headers)
            if kind == "timeout":  # the connection drops: half before the request took effect, half after
                if self.rng.random() < 0.5:
                    raw.transport.abort()
                    return aiohttp.web.Response(status=504)
                response = await inner(raw)
                raw.transport.abort()
                return response
        response = await inner(raw)
        crash = self.plan.get("crash_after")
        if crash and not self.frozen and not watch and response.status < 400 and raw.method == crash["method"] \
                and re.search(crash["path"], raw.path) and crash.get("body", "") in (await raw.read()).decode():
            self.seen += 1
            if self.seen >= crash.get("count", 1):
                self.frozen = True
        return response


def serve_emulator(url_file: str) -> None:
    """`bench/faults.py --serve-emulator FILE`: the emulator with the fault layer (until stdin closes)."""
    from checkpoint_operator.local.emulator import Emulator as Base
    from checkpoint_operator.local.server import EmulatorServer
    layer = FaultLayer()

    class FaultyEmulator(Base):
        async def __call__(self, raw_request):
            return await layer.handle(raw_request, super().__call__)

    with EmulatorServer(FaultyEmulator()) as server:
        Path(url_file).write_text(server.url)
        sys.stdin.read()


def faults(url: str, plan: dict | None = None) -> dict:
    """Set (plan given) or read the emulator's fault plan and state."""
    data = None if plan is None else json.dumps(plan).encode()
    request = urllib.request.Request(url + "/_faults", data=data, method="GET" if data is None else "PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


# --- SeaweedFS, shared by the s3 cases ------------------------------------------------------------

class Store:
    """One SeaweedFS (tests/s3server.py) for the run; each case works under a prefix of its own."""

    bucket = "ckpt-faults"

    def __init__(self) -> None:
        from s3server import SeaweedFS
        self.dir = tempfile.mkdtemp(prefix="faults-weed-")
        self.server = SeaweedFS(self.dir)
        self.restarts: list[asyncio.Task] = []
        self.server.start()
        self.server.client().create_bucket(Bucket=self.bucket)

    def env(self) -> dict:
        return {**self.server.env(), "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def keys(self, prefix: str) -> list[str]:
        client, keys, token = self.server.client(), [], None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = client.list_objects_v2(**kwargs)
            keys += [o["Key"] for o in page.get("Contents") or []]
            if not page.get("IsTruncated"):
                return keys
            token = page["NextContinuationToken"]

    def named_blobs(self, prefixes: list[str]) -> set[str]:
        """The sha256 of every file the manifests at these prefixes list (blobs in their namespace)."""
        from checkpoint_operator.protocol.manifest import MANIFEST_NAME
        client, named = self.server.client(), set()
        for prefix in prefixes:
            try:
                body = client.get_object(Bucket=self.bucket, Key=prefix + MANIFEST_NAME)["Body"].read()
            except client.exceptions.NoSuchKey:
                continue
            named |= {f["sha256"] for f in json.loads(body)["files"]}
        return named

    def outage(self, seconds: float) -> asyncio.Task:
        """Kill the server now (SIGKILL), start it again after `seconds`."""
        self.server.kill()

        async def restart():
            await asyncio.sleep(seconds)
            await asyncio.to_thread(self.server.start)
        task = asyncio.create_task(restart())
        self.restarts.append(task)
        return task

    async def back(self) -> None:
        """Wait for every outage's restart: a case can end (a fast failure) while the store is down."""
        while self.restarts:
            await self.restarts.pop()

    def close(self) -> None:
        self.server.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the training code and the agents' faults -----------------------------------------------------

def tree_digest(root: Path) -> str | None:
    """digest_of the regular files under root, as the agent computes it (None: no such directory)."""
    from checkpoint_operator.protocol.manifest import RESERVED_ROOT_NAMES, FileEntry, digest_of
    if not root.is_dir():
        return None
    from checkpoint_operator.agent import fstree  # Path.rglob recurses once per level (issue 18 item 5)
    entries = []
    for top, _, names in fstree.walk(str(root)):
        for name in names:
            path = Path(top) / name
            if path.is_file() and not path.is_symlink() and path.relative_to(root).as_posix() not in RESERVED_ROOT_NAMES:
                entries.append(FileEntry(path=path.relative_to(root).as_posix(), size=path.stat().st_size,
                                         sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    entries.sort(key=lambda e: e.path)
    try:
        return digest_of(entries)
    except UnicodeEncodeError:  # a name that is not UTF-8: no Checkpoint can have this digest
        return "undecodable:" + hashlib.sha256(repr([(e.path, e.sha256) for e in entries]).encode()).hexdigest()


Rule = Callable[[dict, dict, dict], Awaitable[Any]]  # (pod, container, env) -> exit code | (code, reason) | None


class Runner:
    """The local kubelet's container runner: plays the training code (writes `steps` checkpoints),
    and applies the case's rules to any container first (agent pods run for real otherwise)."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.training: dict[str, Callable[[dict], int]] = {}  # job -> code(env) -> exit code
        self.written: dict[str, dict[str, str]] = {}  # job -> output directory -> digest of what was written

    async def __call__(self, pod: dict, container: dict, env: dict, mounts: dict):
        for rule in self.rules:
            played = await rule(pod, container, env)
            if played is not None:
                return played
        labels = pod["metadata"].get("labels") or {}
        if labels.get("ckpt.dev/component") != "worker" or container["name"] != "trainer":
            return None
        job = labels.get("ckpt.dev/trainingjob", "")
        out = Path(env["CHECKPOINT_OUTPUT_DIR"])
        code = await asyncio.to_thread(self.training.get(job, steps(2)), env)  # an int or (code, reason)
        for entry in out.iterdir() if out.is_dir() else []:
            if entry.is_dir() and not entry.name.startswith("."):
                self.written.setdefault(job, {})[entry.name] = tree_digest(entry)
        return code


def steps(n: int, size: int = 64, exit_code: int = 0) -> Callable[[dict], int]:
    def train(env: dict) -> int:
        for step in range(1, n + 1):
            directory = Path(env["CHECKPOINT_OUTPUT_DIR"]) / f"step-{step}"
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "model.safetensors").write_bytes(os.urandom(size))
            (directory / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        return exit_code
    return train


def component(pod: dict) -> str:
    return (pod["metadata"].get("labels") or {}).get("ckpt.dev/component", "")


def on_pod(match: Callable[[dict, dict], bool], action: Callable[[dict, dict, int], Awaitable[Any]],
           times: int = 1) -> Rule:
    """A rule: for the first `times` containers matching `match(pod, container)`, run the action."""
    count = 0

    async def rule(pod, container, env):
        nonlocal count
        if not match(pod, container) or count >= times:
            return None
        count += 1
        return await action(pod, container, count)
    return rule


def is_agent(kind: str) -> Callable[[dict, dict], bool]:
    """Containers of the operator's agent pods of one kind (snapshot, import, ...), by name prefix."""
    return lambda pod, container: component(pod) == kind


def is_download(pod: dict, container: dict) -> bool:
    return component(pod) == "worker" and container["name"].startswith("download-input-")


def is_trainer(pod: dict, container: dict) -> bool:
    return component(pod) == "worker" and container["name"] == "trainer"


def exits(code: int, reason: str | None = None):
    async def action(pod, container, n):
        return (code, reason) if reason else code
    return action


# --- one case's processes ------------------------------------------------------------------------

class Harness:
    """A fresh emulator (with the fault layer), the local cluster with the Runner, one operator at a
    time (restartable), and when the case uses the s3 store a prefix of its own in the shared store."""

    def __init__(self, name: str, store: Store | None, s3_store: bool = True, snapshots: bool = False,
                 cache: str = "") -> None:
        self.name, self.store, self.s3_store = name, store, s3_store and store is not None
        self.snapshots = snapshots  # the volume store with volume snapshots, on three nodes
        self.cache = cache  # the node-local input cache's capacity (cache.enabled), or "" without it
        self.work = Path(tempfile.mkdtemp(prefix=f"bench-faults-{name}-"))
        self.emulator = Emulator(self.work, script=__file__)
        self.url = self.emulator.url
        self.runner = Runner()
        self.operator: Operator | None = None
        self.starts = 0
        self.prefix = f"case-{name}-{os.getpid()}"
        self.events: list[str] = []

    def operator_env(self) -> dict:
        env = {"CKPT_RECONCILE_INTERVAL": "0.5"}
        if self.snapshots:
            env.update(CKPT_DEFAULT_STORAGE_CLASS="block", CKPT_VOLUME_SNAPSHOT_CLASS="block-snapshots")
        if self.s3_store:
            env.update(self.store.env(), CKPT_STORAGE_TYPE="s3", CKPT_S3_ENDPOINT=self.store.server.endpoint,
                       CKPT_S3_BUCKET=self.store.bucket, CKPT_S3_PREFIX=self.prefix,
                       CKPT_S3_SECRET_NAME="store-credentials")
        if self.cache:
            env.update(CKPT_CACHE_ENABLED="true", CKPT_CACHE_CAPACITY=self.cache)
        return env

    async def __aenter__(self) -> "Harness":
        from checkpoint_operator.local.cluster import LocalCluster
        from checkpoint_operator.local.server import ApiClient
        self.api = ApiClient(self.url)
        self.cluster = LocalCluster(self.url, self.work / "cluster", [NS], container_runner=self.runner,
                                    nodes=3 if self.snapshots else 1)
        await self.cluster.__aenter__()
        # Pods the bench's scheduler/kubelet does not start: component -> the status it reports instead.
        self.stuck: dict[str, dict] = {}
        self._stuck_reported: set[str] = set()
        self.hold_stuck_pods()
        if self.store is not None:
            b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
            await self.api.create("v1/secrets", NS, {"metadata": {"name": "store-credentials"}, "data": {
                "AWS_ACCESS_KEY_ID": b64(self.store.server.access_key),
                "AWS_SECRET_ACCESS_KEY": b64(self.store.server.secret_key)}})
        await asyncio.to_thread(self.start_operator)
        return self

    def hold_stuck_pods(self) -> None:
        """Every node's kubelet leaves the pods of a `stuck` component unstarted and reports their
        status instead (the cluster's kubelets, one per node: each is wrapped)."""
        for kubelet in self.cluster.kubelets.values():
            def reconcile(pod, uid, _kubelet=kubelet, _reconcile=kubelet.reconcile, **kw):
                status = self.stuck.get(component(pod)) if pod else None
                if status is None or pod["metadata"].get("deletionTimestamp") or uid in _kubelet.workers:
                    return _reconcile(pod, uid, **kw)
                if uid in self._stuck_reported:
                    return None
                self._stuck_reported.add(uid)
                return self.api.patch(PODS, NS, pod["metadata"]["name"], {"status": status}, subresource="status")
            kubelet.reconcile = reconcile

    def start_operator(self) -> None:
        self.starts += 1
        self.operator = Operator(self.work, self.url, f"{self.name}-{self.starts}", extra_env=self.operator_env())

    async def kill_operator_when_frozen(self, timeout: float = WAIT) -> bool:
        """Wait until the fault layer froze the operator (its crash point passed), SIGKILL it, lift the
        plan and start a new one. False when the crash point was never reached."""
        deadline = time.monotonic() + timeout
        while not faults(self.url)["frozen"]:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        self.operator.proc.kill()
        self.operator.proc.wait()
        self.events.append(f"SIGKILLed after {faults(self.url)['seen']} matching write(s)")
        faults(self.url, {})
        await asyncio.to_thread(self.start_operator)
        return True

    async def restart_cluster(self) -> None:
        """Stop the local cluster (its controllers and kubelets; a copy under way is cut short) and
        start a new one on the same data, as a killed local mode is started again."""
        from checkpoint_operator.local.cluster import LocalCluster
        await self.cluster.__aexit__(None, None, None)
        self.cluster = LocalCluster(self.url, self.work / "cluster", [NS], container_runner=self.runner,
                                    nodes=3 if self.snapshots else 1)
        await self.cluster.__aenter__()
        self.hold_stuck_pods()

    async def __aexit__(self, *exc: object) -> None:
        if self.operator is not None:
            self.operator.stop()
        await self.cluster.__aexit__(None, None, None)
        await self.api.close()
        self.emulator.stop()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {self.work}", file=sys.stderr)
        else:
            from checkpoint_operator.agent import fstree  # shutil.rmtree recurses once per level
            fstree.remove_tree(str(self.work), ignore_errors=True, make_writable=True)

    # -- objects ---------------------------------------------------------------------------------

    async def create_job(self, name: str, *, inputs: list | None = None, train=None, **spec) -> None:
        if train is not None:  # the runner knows a job by its pods' label (a long name is cut)
            from checkpoint_operator.logic.naming import MAX_LABEL_NAME, bounded_name
            self.runner.training[bounded_name(name, MAX_LABEL_NAME)] = train
        body = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name, "namespace": NS},
                "spec": {"checkpoints": inputs or [], "backoffLimit": 0, "template": {"spec": {"containers": [
                    {"name": "trainer", "image": "trainer:1", "command": ["train"]}]}}, **spec}}
        await self.api.create(TJ, NS, body)

    async def until(self, resource: str, name: str, test: Callable[[dict], bool], timeout: float = WAIT) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            obj = await self.api.get(resource, NS, name)
            if obj is not None and test(obj):
                return obj
            await asyncio.sleep(0.1)
        return None

    async def finished(self, name: str, resource: str = TJ) -> dict | None:
        terminal = ("Succeeded", "Failed") if resource == TJ else ("Ready", "Failed")
        return await self.until(resource, name, lambda o: (o.get("status") or {}).get("phase") in terminal)

    async def gone(self, resource: str, name: str, timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.api.get(resource, NS, name) is None:
                return True
            await asyncio.sleep(0.1)
        return False

    async def settle(self) -> None:
        await self.operator.settle(quiet=2.0, timeout=60)


# --- the verdict ---------------------------------------------------------------------------------

@dataclass
class Expect:
    """What the case's object must end as: phase, and words its message must contain (all of them)."""

    name: str
    phase: str
    words: tuple[str, ...] = ()
    resource: str = TJ
    condition: str | None = None  # the message of this condition instead of status.message
    seen: dict | None = None  # the object as the case saw it (it is gone since), else read at the end


@dataclass
class Verdict:
    case: str
    group: str
    lost: int = 0
    duplicated: int = 0
    orphaned: int = 0
    partial: int = 0
    clear: bool = False
    note: str = ""
    seconds: float = 0.0

    @property
    def holds(self) -> bool:
        return self.clear and not (self.lost or self.duplicated or self.orphaned or self.partial)


def items_digest(root: Path, items: list[str] | None) -> str | None:
    """The digest of a location's files: the whole directory, or only its listed items."""
    if not items:
        return tree_digest(root)
    from checkpoint_operator.agent.manifest import FileEntry, digest_of
    files = [root / i for i in items]
    if not all(f.is_file() for f in files):
        return None
    return digest_of([FileEntry(path=i, size=f.stat().st_size, sha256=hashlib.sha256(f.read_bytes()).hexdigest())
                      for i, f in zip(items, files)])


async def stored_digest(h: Harness, ckpt: dict) -> str | None:
    """The digest of the bytes a Ready Checkpoint's location holds (None: unreadable)."""
    location = (ckpt.get("status") or {}).get("location") or {}
    if "snapshot" in location:  # the snapshot's copy (local/snapshots.py): what a restore gets
        snapshot = location["snapshot"]
        copy = h.cluster.snapshot_dir(NS, snapshot["volumeSnapshotName"])
        return items_digest(Path(copy) / snapshot["path"].lstrip("/"), snapshot.get("items")) if copy else None
    if "volume" in location:
        claim = h.cluster.claim_dir(NS, location["volume"]["claimName"])
        return tree_digest(Path(claim) / location["volume"]["path"].lstrip("/")) if claim else None
    if "s3" in location:
        dest = Path(tempfile.mkdtemp(dir=h.work, prefix="verify-"))
        proc = await asyncio.create_subprocess_exec(
            *OPERATOR_CLI, "agent", "download", location["s3"]["uri"], str(dest / "d"),
            env={**os.environ, **h.store.env()}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            h.events.append(f"{ckpt['metadata']['name']}: download failed: {err.decode().strip()[-200:]}")
            return None
        return tree_digest(dest / "d")
    return None


def owners_alive(obj: dict, alive: set[str]) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return bool(refs) and any(r["uid"] in alive for r in refs)


async def assess(h: Harness, verdict: Verdict, expects: list[Expect], *, check_data: bool = True) -> Verdict:
    """Count what was lost, duplicated, orphaned, Ready while partial; and whether each expected object
    ended in its phase with a clear message."""
    await h.settle()
    checkpoints = await h.api.list(CKPT, NS)
    jobs = {j["metadata"]["name"]: j for j in await h.api.list(TJ, NS)}
    ready = [c for c in checkpoints if (c.get("status") or {}).get("phase") == "Ready"]
    notes = []
    # Ready while partial: the bytes at the location must match its digest.
    digests = {}
    for c in ready:
        found = await stored_digest(h, c)
        digests[c["metadata"]["name"]] = found
        if found != c["status"].get("digest"):
            verdict.partial += 1
            notes.append(f"{c['metadata']['name']} Ready but its data does not match")
    # Duplicated: two Checkpoints for one output directory of one job.
    produced = Counter()
    for c in checkpoints:
        source = (c.get("spec", {}).get("source") or {}).get("trainingJob")
        if source:
            produced[(source["uid"], source["directory"])] += 1
    verdict.duplicated = sum(n - 1 for n in produced.values() if n > 1)
    # Lost: each directory a job wrote is in a Ready Checkpoint with those bytes, or on its kept volume.
    if check_data:
        from checkpoint_operator.logic.naming import MAX_LABEL_NAME, bounded_name
        by_label = {bounded_name(n, MAX_LABEL_NAME): n for n in jobs}  # the runner knows a job by its pods' label
        for label, written in h.runner.written.items():
            job = by_label.get(label, label)
            tj = jobs.get(job)
            claim = (tj or {}).get("status", {}).get("outputClaim")
            claim_dir = h.cluster.claim_dir(NS, claim) if claim else None
            pvc = await h.api.get(PVCS, NS, claim) if claim else None
            for directory, digest in written.items():
                kept = [c for c in ready if ((c["spec"]["source"].get("trainingJob") or {}).get("directory") == directory
                                             and c["spec"]["source"]["trainingJob"]["name"] == job
                                             and c["status"].get("digest") == digest
                                             and digests.get(c["metadata"]["name"]) == digest)]
                retained = pvc is not None and claim_dir is not None and tree_digest(Path(claim_dir) / directory) == digest
                if not kept and not retained:
                    verdict.lost += 1
                    notes.append(f"{job}/{directory} lost")
    # Orphaned: agent pods left, pods/PVCs/Jobs without a live owner, store objects outside every Checkpoint.
    alive = {c["metadata"]["uid"] for c in checkpoints} | {j["metadata"]["uid"] for j in jobs.values()}
    batch = await h.api.list(JOBS, NS)
    alive |= {j["metadata"]["uid"] for j in batch}
    for pod in await h.api.list(PODS, NS):
        if component(pod) != "worker" or not owners_alive(pod, alive):
            verdict.orphaned += 1
            notes.append(f"pod {pod['metadata']['name']} left")
    for obj, kind in [(p, "pvc") for p in await h.api.list(PVCS, NS)] + [(j, "job") for j in batch]:
        if component(obj) == "node-cache":
            continue  # the namespace's node-cache claim has no owner: it outlives jobs (docs/node-cache.md)
        if not owners_alive(obj, alive):
            verdict.orphaned += 1
            notes.append(f"{kind} {obj['metadata']['name']} has no live owner")
    if h.snapshots:
        snapshots = await h.api.list(SNAPSHOTS, NS)
        for obj in snapshots:
            if not owners_alive(obj, alive):
                verdict.orphaned += 1
                notes.append(f"volumesnapshot {obj['metadata']['name']} has no live owner")
        contents = await h.api.list(CONTENTS, None)
        snapshot_uids = {o["metadata"]["uid"] for o in snapshots}
        for obj in contents:
            if obj["spec"]["volumeSnapshotRef"].get("uid") not in snapshot_uids:
                verdict.orphaned += 1
                notes.append(f"volumesnapshotcontent {obj['metadata']['name']} has no snapshot")
        copies = h.work / "cluster" / "snapshots"
        names = {o["metadata"]["name"] for o in contents}
        for copy in sorted(copies.iterdir()) if copies.is_dir() else []:
            if copy.name not in names:
                verdict.orphaned += 1
                notes.append(f"snapshot copy {copy.name} has no content")
    if h.s3_store:
        locations = [((c.get("status") or {}).get("location") or {}).get("s3", {}).get("uri", "") for c in checkpoints]
        prefixes = [u.split("/", 3)[3] for u in locations if u.startswith("s3://")]
        await h.store.back()
        keys = await asyncio.to_thread(h.store.keys, h.prefix + "/")
        named = await asyncio.to_thread(h.store.named_blobs, prefixes)
        stray = set()
        for key in keys:
            if any(key.startswith(p) for p in prefixes):
                continue
            directory, _, name = key.rpartition("/")
            if directory.endswith("/blobs/gc"):
                continue  # the blob collector's markers (objectstore/blobs.py)
            if directory.endswith("/blobs/sha256"):
                if name not in named:  # a file's bytes no Checkpoint's manifest names
                    stray.add(key)
                continue
            stray.add(directory)
        verdict.orphaned += len(stray)
        notes += [f"s3 {s} is named by no Checkpoint" if "/blobs/sha256/" in s else f"s3 {s}/ has no Checkpoint"
                  for s in sorted(stray)]
    # The phase and the message.
    clear = True
    for expect in expects:
        obj = expect.seen or (jobs.get(expect.name) if expect.resource == TJ
                              else await h.api.get(expect.resource, NS, expect.name))
        status = (obj or {}).get("status") or {}
        message = status.get("message") or ""
        if expect.condition:
            message = next((c.get("message", "") for c in status.get("conditions") or []
                            if c.get("type") == expect.condition), "")
        phase = status.get("phase") if expect.phase != "Gone" else ("Gone" if obj is None else "present")
        if phase != expect.phase or not all(w.lower() in message.lower() for w in expect.words):
            clear = False
            notes.append(f"{expect.name}: {phase} {message!r} (want {expect.phase} naming {', '.join(expect.words)})")
    # No credential of the store in a status, an Event or a pod (issue 23 item 8): a leak is an unclear message.
    if h.store is not None:
        written = json.dumps([checkpoints, list(jobs.values()), await h.api.list("v1/events", NS),
                              await h.api.list(PODS, NS)])
        if h.store.server.secret_key in written:
            clear = False
            notes.append("the store's secret key is in a status, an Event or a pod")
    verdict.clear = clear
    verdict.note = "; ".join(h.events + notes)[:600]
    return verdict


# --- the cases -----------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    group: str
    run: Callable[[Harness], Awaitable[list[Expect]]]
    s3: bool = False
    quick: bool = False
    origin: bool = False  # imports from an S3 origin (SeaweedFS) into the volume store
    snapshots: bool = False  # the volume store with volume snapshots, on three nodes
    cache: str = ""  # the s3 store with the node-local input cache of this capacity


CASES: list[Case] = []


def case(name: str, group: str, *, s3: bool = False, quick: bool = False, origin: bool = False,
         snapshots: bool = False, cache: str = ""):
    def register(fn):
        CASES.append(Case(name, group, fn, s3 or bool(cache), quick, origin, snapshots, cache))
        return fn
    return register


class CaseError(Exception):
    pass


async def finished(h: Harness, name: str, resource: str = TJ) -> dict:
    obj = await h.finished(name, resource)
    if obj is None:
        raise CaseError(f"{name} did not finish within {WAIT} s")
    return obj


async def producer_and_consumer(h: Harness, *, crash: dict | None = None, n: int = 3) -> list[Expect]:
    """`pre` writes one checkpoint; `job` trains on it and writes n. The fault is armed for `job`."""
    await h.create_job("pre", train=steps(1))
    await finished(h, "pre")
    if crash is not None:
        faults(h.url, {"crash_after": crash})
    await h.create_job("job", inputs=[{"name": "pre.step-1"}], train=steps(n))
    if crash is not None and not await h.kill_operator_when_frozen():
        raise CaseError(f"the crash point {crash} was never reached")
    await finished(h, "job")
    return [Expect("pre", "Succeeded", ("succeeded", "1 checkpoint(s)")),
            Expect("job", "Succeeded", ("succeeded", f"{n} checkpoint(s)"))]


def tj_write(path: str, body: str = "", method: str = "PATCH", count: int = 1) -> dict:
    return {"method": method, "path": path, "body": body, "count": count}


# The steps of a TrainingJob's life, each as the API write that ends it (the operator dies right after).
KILL_POINTS = {
    "uses-label": tj_write(r"/trainingjobs/job$", "uses.ckpt.dev/"),
    "pinned": tj_write(r"/trainingjobs/job/status$", '"inputs": [{'),
    "pvc": tj_write(r"/persistentvolumeclaims$", method="POST"),
    "job": tj_write(r"/jobs$", method="POST"),
    "running": tj_write(r"/trainingjobs/job/status$", '"Running"'),
    "snapshot-pod": tj_write(r"/pods$", method="POST"),
    "1-of-3-checkpoints": tj_write(r"/checkpoints$", method="POST"),
    "2-of-3-checkpoints": tj_write(r"/checkpoints$", method="POST", count=2),
    "handover": tj_write(r"/persistentvolumeclaims/job-"),
    "1-of-3-ready": tj_write(r"/checkpoints/job\.step-\d+/status$", '"Ready"'),
    "final-status": tj_write(r"/trainingjobs/job/status$", '"Succeeded"'),
    "snapshot-pod-deleted": tj_write(r"/pods/job-snapshot$", method="DELETE"),
}
S3_KILL_POINTS = {**KILL_POINTS, "handover": tj_write(r"/persistentvolumeclaims/job-", method="DELETE")}
S3_KILLS = ("pinned", "snapshot-pod", "2-of-3-checkpoints", "handover", "final-status", "snapshot-pod-deleted")

for _point, _crash in KILL_POINTS.items():
    case(f"kill-after-{_point}", "kill", quick=_point == "2-of-3-checkpoints")(
        lambda h, crash=_crash: producer_and_consumer(h, crash=crash))
for _point in S3_KILLS:
    case(f"s3-kill-after-{_point}", "kill", s3=True, quick=_point == "handover")(
        lambda h, crash=S3_KILL_POINTS[_point]: producer_and_consumer(h, crash=crash))


for _kind, _s3 in (("409", False), ("429", False), ("500", False), ("timeout", False), ("500", True),
                   ("timeout", True)):
    async def _api_faults(h: Harness, kind: str = _kind) -> list[Expect]:
        faults(h.url, {"errors": [kind], "rate": 0.1, "seed": 7})
        try:
            expects = await producer_and_consumer(h)
        finally:
            injected = faults(h.url)["injected"]
            faults(h.url, {})
        h.events.append(f"injected {injected.get(kind, 0)} x {kind}")
        return expects
    case(f"{'s3-' if _s3 else ''}api-{_kind}-10pct", "api", s3=_s3, quick=_kind == "500" and not _s3)(_api_faults)


async def import_with_kill(h: Harness, crash: dict) -> list[Expect]:
    """An import (from an external S3 prefix) whose operator dies at the crash point."""
    faults(h.url, {"crash_after": crash})
    await external_import(h)
    if not await h.kill_operator_when_frozen():
        raise CaseError(f"the crash point {crash} was never reached")
    await finished(h, "imported", CKPT)
    return [Expect("imported", "Ready", (), resource=CKPT)]


for _name, _crash, _s3 in (("kill-after-import-claim", tj_write(r"/persistentvolumeclaims$", method="POST"), False),
                           ("kill-after-import-pod", tj_write(r"/pods$", method="POST"), False),
                           ("s3-kill-after-import-pod", tj_write(r"/pods$", method="POST"), True),
                           ("s3-kill-after-import-ready", tj_write(r"/checkpoints/imported/status$", '"Ready"'), True)):
    case(_name, "kill", s3=_s3, origin=True)(lambda h, crash=_crash: import_with_kill(h, crash))


async def delete_with_kill(h: Harness, crash: dict) -> list[Expect]:
    """An owned Checkpoint deleted; the operator dies at the crash point of its deletion."""
    await h.create_job("pre", train=steps(2))
    await finished(h, "pre")
    faults(h.url, {"crash_after": crash})
    await h.api.delete(CKPT, NS, "pre.step-1")
    if not await h.kill_operator_when_frozen():
        raise CaseError(f"the crash point {crash} was never reached")
    if not await h.gone(CKPT, "pre.step-1"):
        raise CaseError("pre.step-1 was not deleted")
    h.runner.written["pre"].pop("step-1")  # deleted on purpose
    return [Expect("pre.step-1", "Gone", (), resource=CKPT), Expect("pre", "Succeeded", ("succeeded",))]


# The deletion's live check of users (a LIST of TrainingJobs by label), and its finalizer's removal.
for _name, _crash in (("users-check", tj_write(r"/trainingjobs$", method="GET")),
                      ("finalizer-removed", tj_write(r"/checkpoints/pre\.step-1$", '"finalizers"'))):
    case(f"kill-during-delete-{_name}", "kill")(lambda h, crash=_crash: delete_with_kill(h, crash))
    case(f"s3-kill-during-delete-{_name}", "kill", s3=True)(lambda h, crash=_crash: delete_with_kill(h, crash))


# -- agent and training pods failing, or stuck Pending --------------------------------------------------

def evict(message: str = "The node was low on resource: ephemeral-storage."):
    async def action(pod, container, n):
        from checkpoint_operator.local.server import ApiClient
        async with ApiClient(CURRENT.url) as api:
            await api.patch(PODS, NS, pod["metadata"]["name"], {"status": {
                "phase": "Failed", "reason": "Evicted", "message": message}}, subresource="status")
        return 137
    return action


CURRENT: Harness  # the running case's harness (for rules that talk to the API)


@case("snapshot-exit-1-once", "pods", quick=True)
async def _(h):
    h.runner.rules.append(on_pod(is_agent("snapshot"), exits(1)))
    return await producer_and_consumer(h)


@case("snapshot-oomkilled-always", "pods")
async def _(h):
    h.runner.rules.append(on_pod(is_agent("snapshot"), exits(137, "OOMKilled"), times=99))
    await h.create_job("job", train=steps(2))
    await finished(h, "job")
    return [Expect("job", "Failed", ("snapshot failed 3 times", "OOMKilled"))]


@case("snapshot-evicted-always", "pods")
async def _(h):
    h.runner.rules.append(on_pod(is_agent("snapshot"), evict(), times=99))
    await h.create_job("job", train=steps(2))
    await finished(h, "job")
    return [Expect("job", "Failed", ("snapshot failed 3 times", "Evicted"))]


@case("training-exit-1", "pods")
async def _(h):
    await h.create_job("job", train=steps(2, exit_code=1))
    await finished(h, "job")
    return [Expect("job", "Failed", ("failed", "kept 2 checkpoint(s)"))]


@case("training-oomkilled", "pods")
async def _(h):
    await h.create_job("job", train=steps(2, exit_code=(137, "OOMKilled")))
    await finished(h, "job")
    return [Expect("job", "Failed", ("OOMKilled", "kept 2 checkpoint(s)"))]


@case("training-evicted", "pods")
async def _(h):
    h.runner.rules.append(on_pod(is_trainer, evict(), times=99))
    await h.create_job("job", train=steps(2))
    await finished(h, "job")
    return [Expect("job", "Failed", ("Evicted",))]


def exits_after(seconds: float, code: int) -> Callable[[dict], int]:
    def train(env: dict) -> int:
        time.sleep(seconds)
        return code
    return train


@case("training-2-workers-exit-1", "pods")
async def _(h):
    """Issue 18.7: both workers of a 2-replica job exit 1 a second after start, backoffLimit 0: the job
    fails (before: the Job was Failed with `terminating: 1` for a pod that no longer existed, and the
    TrainingJob stayed Running until the timeout)."""
    await h.create_job("job", train=exits_after(1.0, 1), replicas=2)
    await finished(h, "job")
    return [Expect("job", "Failed", ("failed", "exit code 1"))]


def group_worker_fails_once(n: int = 2) -> Callable[[dict], int]:
    """Training code of a 2-replica job: worker 1 fails in the first attempt, the others write n steps
    (worker 0 only: the output is shared) and exit 0; every worker succeeds in the next attempt."""
    starts: Counter = Counter()

    def train(env: dict) -> int:
        index = env.get("JOB_COMPLETION_INDEX", "0")
        attempt = starts[index]
        starts[index] += 1
        if index == "1" and attempt == 0:
            return 1
        return steps(n)(env) if index == "0" else 0
    return train


async def group_restart(h: Harness, crash: dict | None = None) -> list[Expect]:
    if crash is not None:
        faults(h.url, {"crash_after": crash})
    await h.create_job("job", train=group_worker_fails_once(), replicas=2, backoffLimit=1)
    if crash is not None and not await h.kill_operator_when_frozen():
        raise CaseError(f"the crash point {crash} was never reached")
    tj = await finished(h, "job")
    restarts = (tj.get("status") or {}).get("restarts")
    expects = [Expect("job", "Succeeded", ("succeeded", "2 checkpoint(s)"), seen=tj)]
    if restarts != 1:
        expects.append(Expect("one-group-restart", "1", (f"status.restarts is {restarts}",)))
    return expects


case("group-restart-after-a-worker-fails", "pods", quick=True)(lambda h: group_restart(h))
for _point, _crash in (("restart-recorded", tj_write(r"/trainingjobs/job/status$", '"restarts": 1')),
                       ("failed-attempt-deleted", tj_write(r"/jobs/job$", method="DELETE"))):
    case(f"kill-after-group-{_point}", "kill")(lambda h, crash=_crash: group_restart(h, crash))


UNSCHEDULABLE = {"phase": "Pending", "conditions": [{
    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
    "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}


def image_pull_back_off(container: str) -> dict:
    return {"phase": "Pending", "containerStatuses": [{
        "name": container, "image": "trainer:1", "ready": False, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "trainer:1"'}}}]}


def ready_reason(reason: str) -> Callable[[dict], bool]:
    return lambda tj: any(c.get("type") == "Ready" and c.get("reason") == reason
                          for c in (tj.get("status") or {}).get("conditions") or [])


async def stuck(h: Harness, where: str, status: dict, reason: str, phase: str, words: tuple[str, ...]) -> list[Expect]:
    """A pod the cluster never starts: the job must say why, in a condition; then the user deletes it
    (and everything it made must go: counted as orphans otherwise)."""
    h.stuck[where] = status
    await h.create_job("job", train=steps(2))
    seen = await h.until(TJ, "job", ready_reason(reason), timeout=WAIT)
    if seen is None:
        tj = await h.api.get(TJ, NS, "job")
        raise CaseError(f"no Ready condition with reason {reason}: {(tj or {}).get('status')}")
    await h.api.delete(TJ, NS, "job")
    if not await h.gone(TJ, "job"):
        raise CaseError("the TrainingJob was not deleted")
    h.runner.written.clear()  # deleted by the user: nothing to keep
    return [Expect("job", phase, words, condition="Ready", seen=seen)]


@case("training-unschedulable", "pods", quick=True)
async def _(h):
    return await stuck(h, "worker", UNSCHEDULABLE, "Unschedulable", "Running", ("cannot be scheduled", "nvidia.com/gpu"))


@case("training-image-pull-back-off", "pods")
async def _(h):
    return await stuck(h, "worker", image_pull_back_off("trainer"), "ImagePullBackOff", "Running",
                       ("ImagePullBackOff", "trainer:1"))


@case("snapshot-unschedulable", "pods")
async def _(h):
    return await stuck(h, "snapshot", UNSCHEDULABLE, "Unschedulable", "Snapshotting", ("cannot be scheduled",))


@case("s3-download-exit-1", "pods", s3=True)
async def _(h):
    h.runner.rules.append(on_pod(is_download, exits(1), times=99))
    await h.create_job("pre", train=steps(1))
    await finished(h, "pre")
    await h.create_job("job", inputs=[{"name": "pre.step-1"}], train=steps(1))
    await finished(h, "job")
    return [Expect("job", "Failed", ("input pre.step-1 could not be downloaded",))]


async def external_import(h: Harness, name: str = "imported") -> None:
    client = h.store.server.client()
    for rel, data in {"config.json": b"{}", "model.safetensors": os.urandom(2048)}.items():
        client.put_object(Bucket=h.store.bucket, Key=f"external-{h.prefix}/{rel}", Body=data)
    await h.api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                                  "metadata": {"name": name, "namespace": NS},
                                  "spec": {"source": {"s3": {"uri": f"s3://{h.store.bucket}/external-{h.prefix}/",
                                                             "endpoint": h.store.server.endpoint,
                                                             "secretRef": {"name": "store-credentials"}}}}})


@case("s3-import-exit-1", "pods", s3=True)
async def _(h):
    h.runner.rules.append(on_pod(is_agent("import"), exits(1), times=99))
    await external_import(h)
    await finished(h, "imported", CKPT)
    return [Expect("imported", "Failed", ("import", "exit code 1"), resource=CKPT)]


# -- SeaweedFS stopped and restarted --------------------------------------------------------------------

def outage(seconds: float = 3.0):
    async def action(pod, container, n):
        CURRENT.store.outage(seconds)
        return None  # the agent runs for real, with the store gone
    return action


@case("s3-store-down-during-upload", "store", s3=True, quick=True)
async def _(h):
    h.runner.rules.append(on_pod(is_agent("snapshot"), outage()))
    await h.create_job("job", train=steps(2, size=3 * 1024 * 1024))
    await finished(h, "job")
    return [Expect("job", "Succeeded", ("succeeded", "2 checkpoint(s)"))]


@case("s3-store-down-during-download", "store", s3=True)
async def _(h):
    h.runner.rules.append(on_pod(is_download, outage()))
    await h.create_job("pre", train=steps(1, size=3 * 1024 * 1024))
    await finished(h, "pre")
    await h.create_job("job", inputs=[{"name": "pre.step-1"}], train=steps(1))
    await finished(h, "job")
    return [Expect("job", "Succeeded", ("succeeded", "1 checkpoint(s)"))]


@case("s3-store-down-during-import", "store", s3=True)
async def _(h):
    h.runner.rules.append(on_pod(is_agent("import"), outage()))
    await external_import(h)
    await finished(h, "imported", CKPT)
    return [Expect("imported", "Ready", (), resource=CKPT)]


@case("s3-store-down-during-delete", "store", s3=True)
async def _(h):
    await h.create_job("pre", train=steps(2))
    await finished(h, "pre")
    restart = h.store.outage(3.0)
    await h.api.delete(CKPT, NS, "pre.step-1")
    await restart
    if not await h.gone(CKPT, "pre.step-1"):
        raise CaseError("pre.step-1 was not deleted after the store came back")
    h.runner.written["pre"].pop("step-1")  # deleted on purpose
    return [Expect("pre.step-1", "Gone", (), resource=CKPT)]


# -- items of issue 8, end to end ----------------------------------------------------------------------

def writes(files: dict[str, bytes | str], exit_code: int = 0) -> Callable[[dict], int]:
    """Training code that writes these files (a str value: a symbolic link to it) and exits."""
    def train(env: dict) -> int:
        out = Path(env["CHECKPOINT_OUTPUT_DIR"])
        from checkpoint_operator.agent import fstree  # Path.mkdir(parents=True) recurses once per level
        for rel, data in files.items():
            path = out / rel
            fstree.make_dirs(str(path.parent))
            if isinstance(data, str):
                os.symlink(data, path)
            else:
                path.write_bytes(data)
        return exit_code
    return train


@case("issue8-1-skipped-output-kept", "issue8", s3=True, quick=True)
async def _(h):
    """s3 store: a failed job's unstorable output (no step, a .tmp, a name that is not UTF-8) stays on its volume."""
    await h.create_job("job", train=writes({
        "partial-finetune/model.safetensors": os.urandom(100), "step-500.tmp/model.safetensors": os.urandom(100),
        "step-3/model.safetensors": os.urandom(100), os.fsdecode(b"step-3/shard\xff.bin"): b"x"}, exit_code=1))
    await finished(h, "job")
    return [Expect("job", "Failed", ("failed",)), Expect("job", "Failed", ("is kept",), condition="OutputRetained")]


@case("issue8-2-names-download-refuses", "issue8", s3=True)
async def _(h):
    """A backslash and a 250-byte name: never a Ready Checkpoint that cannot be downloaded (the download
    check counts it as partial); what is not stored stays on the volume."""
    await h.create_job("job", train=writes({"step-1/model.safetensors": os.urandom(100), "step-1/a\\b.bin": b"x",
                                            "step-2/model.safetensors": os.urandom(100), "step-2/" + "n" * 250: b"y"}))
    await finished(h, "job")
    return [Expect("job", "Succeeded", ("succeeded",)), Expect("job", "Succeeded", ("is kept",), condition="OutputRetained")]


@case("issue8-4-symlink-dag-bounded", "issue8")
async def _(h):
    """Directories d0..d22 each with links a, b to the next: the scan visits each once and finishes."""
    files: dict[str, bytes | str] = {"step-1/model.safetensors": os.urandom(100)}
    for i in range(22):
        files[f"step-1/dag/d{i}/a"] = f"../d{i + 1}"
        files[f"step-1/dag/d{i}/b"] = f"../d{i + 1}"
    files["step-1/dag/d22/leaf"] = b"leaf"
    await h.create_job("job", train=writes(files))
    h.runner.written.clear()  # links are not data: the step's own files are checked through its Checkpoint
    tj = await finished(h, "job")
    return [Expect("job", "Succeeded", ("succeeded", "1 checkpoint(s)"), seen=tj)]


@case("issue8-10-names-as-the-api-server", "issue8")
async def _(h):
    """Invalid names refused on create with the field named; a valid 253-character name runs to the end."""
    unclear = []
    for bad in ("Bad_Name", "x" * 254):
        try:
            await h.create_job(bad)
            unclear.append(f"{bad[:20]} accepted")
        except Exception as exc:  # noqa: BLE001 - the API's refusal is what is checked
            if "metadata.name" not in str(exc) or getattr(exc, "status", 0) != 422:
                unclear.append(f"{bad[:20]}: {exc}")
    long = "j" * 253
    await h.create_job(long, train=steps(1))
    tj = await finished(h, long)
    h.events += unclear
    return [Expect(long, "Succeeded", ("succeeded", "1 checkpoint(s)"), seen=tj)] + \
        [Expect("refused-names", "refused", (u,)) for u in unclear]


@case("issue8-11-skipped-entries-one-event", "issue8")
async def _(h):
    """300 links out of the output: one aggregated Skipped event, not 300."""
    files: dict[str, bytes | str] = {"step-1/model.safetensors": os.urandom(100)}
    files.update({f"step-1/out-{i}": "/etc/hostname" for i in range(300)})
    await h.create_job("job", train=writes(files))
    tj = await finished(h, "job")
    await h.settle()
    events = [e for e in await h.api.list("v1/events", NS)
              if e.get("involvedObject", {}).get("name") == "job" and e.get("reason") == "Skipped"]
    h.events.append(f"{len(events)} Skipped event(s)")
    expects = [Expect("job", tj["status"]["phase"] and "Succeeded", ("succeeded",), seen=tj)]
    if len(events) != 1:
        expects.append(Expect("one-skipped-event", "one", (f"{len(events)} events",)))
    return expects


@case("issue8-6-size-limit-before-bytes-move", "issue8", s3=True)
async def _(h):
    """A namespace limit of 1Ki and a 2 KiB import: refused, naming the limit."""
    await h.api.patch("v1/namespaces", None, NS, {"metadata": {"annotations": {"ckpt.dev/max-checkpoint-size": "1Ki"}}})
    await external_import(h)
    await finished(h, "imported", CKPT)
    return [Expect("imported", "Failed", ("past the size limit of 1024",), resource=CKPT)]


# -- volume snapshots: kills while snapshots are taken, handed over, restored --------------------------

SNAPSHOT_KILL_POINTS = {
    # the end-of-job VolumeSnapshot was just created (the operator dies before it is ready)
    "snapshot-created": tj_write(r"/volumesnapshots$", method="POST"),
    # the first of the job's Checkpoints was created, in the ready snapshot, not yet its owner
    "1-of-3-checkpoints": tj_write(r"/checkpoints$", method="POST"),
    # the snapshot was handed over to the Checkpoints (the job's reference dropped)
    "snapshot-handed-over": tj_write(r"/volumesnapshots/job-output-", method="PATCH"),
    # the output volume was deleted (its checkpoints are in the snapshot)
    "output-volume-deleted": tj_write(r"/persistentvolumeclaims/job-output-", method="DELETE"),
    # the consumer's Job was created: its pods' volumes are being restored from the input's snapshot
    "restore-under-way": tj_write(r"/jobs$", method="POST"),
    # a finished pod holding a restored volume was deleted (the release of the restored inputs)
    "inputs-released": tj_write(r"/pods/job-", method="DELETE"),
}

for _point, _crash in SNAPSHOT_KILL_POINTS.items():
    case(f"snapshots-kill-after-{_point}", "snapshots", snapshots=True, quick=_point == "snapshot-handed-over")(
        lambda h, crash=_crash: producer_and_consumer(h, crash=crash))


def cut_copy_short(module: Any, function_name: str, started: asyncio.Event) -> Callable[[], None]:
    """Make the next copy of `module.function_name` (run through asyncio.to_thread) leave a partial
    tree and hang, as a process killed in the middle of it would; returns the undo."""
    original = getattr(module, function_name)
    real_to_thread = module.asyncio.to_thread

    async def to_thread(function, *args, **kwargs):
        if function is original and not started.is_set():
            target = Path(args[1] if function_name == "_copy_volume" else args[0])
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial-cut")
            partial.mkdir(exist_ok=True)
            (partial / "half-a-file").write_bytes(os.urandom(1000))
            started.set()
            await asyncio.Event().wait()
        return await real_to_thread(function, *args, **kwargs)
    module.asyncio.to_thread = to_thread
    return lambda: setattr(module.asyncio, "to_thread", real_to_thread)


async def csi_killed_during(h: Harness, module: Any, function_name: str) -> list[Expect]:
    """The local cluster (the snapshot controller and the provisioner) stops in the middle of a copy and
    starts again; the operator never notices but by waiting longer."""
    started = asyncio.Event()
    undo = cut_copy_short(module, function_name, started)
    try:
        task = asyncio.create_task(producer_and_consumer(h))
        await asyncio.wait_for(started.wait(), WAIT)
        await h.restart_cluster()
        h.events.append(f"local cluster restarted in the middle of {function_name}")
    finally:
        undo()
    return await task


@case("snapshots-csi-killed-during-snapshot-copy", "snapshots", snapshots=True, quick=True)
async def _(h):
    from checkpoint_operator.local import snapshots as local_snapshots
    return await csi_killed_during(h, local_snapshots, "_copy_volume")


@case("snapshots-csi-killed-during-restore-copy", "snapshots", snapshots=True)
async def _(h):
    from checkpoint_operator.local import storage as local_storage

    original = local_storage._make_volume_directory  # only a restore copies: an empty volume is a mkdir
    started = asyncio.Event()
    real_to_thread = local_storage.asyncio.to_thread

    async def to_thread(function, *args, **kwargs):
        if function is original and args[1] is not None and not started.is_set():
            directory = Path(args[0])
            directory.parent.mkdir(parents=True, exist_ok=True)
            partial = directory.with_name(f".{directory.name}.partial-cut")
            partial.mkdir(exist_ok=True)
            (partial / "half-a-file").write_bytes(os.urandom(1000))
            started.set()
            await asyncio.Event().wait()
        return await real_to_thread(function, *args, **kwargs)
    local_storage.asyncio.to_thread = to_thread
    try:
        task = asyncio.create_task(producer_and_consumer(h))
        await asyncio.wait_for(started.wait(), WAIT)
        await h.restart_cluster()
        h.events.append("local cluster restarted in the middle of a restore")
    finally:
        local_storage.asyncio.to_thread = real_to_thread
    expects = await task
    volumes = h.work / "cluster" / "volumes" / NS
    leftovers = [p.name for p in volumes.iterdir() if ".partial-" in p.name] if volumes.is_dir() else []
    if leftovers:
        expects.append(Expect("partial-restores", "removed", (f"left: {leftovers}",)))
    return expects


# -- items of issue 18, end to end ---------------------------------------------------------------------

DEEP = "/".join(["d"] * 1000)


@case("issue18-5-deep-output", "issue18", quick=True)
async def _(h):
    """An output nested 1,000 directories deep: snapshotted on the first attempt, and a consumer reads
    it through the kubelet's read-only copy (both raised RecursionError before)."""
    await h.create_job("job", train=writes({"step-1/model.safetensors": os.urandom(100),
                                            f"step-1/{DEEP}/leaf.bin": b"deep leaf"}))
    producer = await finished(h, "job")
    seen: dict[str, bytes] = {}

    def read(env: dict) -> int:
        leaf = Path(env["CHECKPOINT_INPUT_PATH"]) / DEEP / "leaf.bin"
        seen["leaf"] = leaf.read_bytes()
        return 0
    await h.create_job("reader", inputs=[{"name": "job.step-1"}], train=read)
    reader = await finished(h, "reader")
    if seen.get("leaf") != b"deep leaf":
        h.events.append(f"the reader saw {seen.get('leaf')!r}")
    return [Expect("job", "Succeeded", ("succeeded", "1 checkpoint(s)"), seen=producer),
            Expect("reader", "Succeeded", ("succeeded",), seen=reader)] + \
        ([] if seen.get("leaf") == b"deep leaf" else [Expect("reader-saw-the-leaf", "read", ("no",))])


@case("issue18-6-wait-cycle", "issue18")
async def _(h):
    """Jobs on each other's latest: both Stalled naming the cycle (they waited forever before); a job
    that takes itself is refused at creation, naming the field."""
    await h.create_job("ping", inputs=[{"fromTrainingJob": "pong", "select": "latest"}])
    await h.create_job("pong", inputs=[{"fromTrainingJob": "ping", "select": "latest"}])

    def stalled(o: dict) -> bool:
        return any(c.get("type") == "Stalled" and c.get("status") == "True"
                   for c in (o.get("status") or {}).get("conditions") or [])
    ping, pong = await h.until(TJ, "ping", stalled), await h.until(TJ, "pong", stalled)
    if ping is None or pong is None:
        raise CaseError("the jobs of the cycle were not Stalled")
    expects = [Expect("ping", "Pending", ("ping -> pong -> ping",), condition="Stalled", seen=ping),
               Expect("pong", "Pending", ("pong -> ping -> pong",), condition="Stalled", seen=pong)]
    try:
        await h.create_job("self", inputs=[{"fromTrainingJob": "self"}])
        expects.append(Expect("self-reference", "refused", ("accepted",)))
    except Exception as exc:  # noqa: BLE001 - the API's refusal is what is checked
        if "fromTrainingJob" not in str(exc) or getattr(exc, "status", 0) != 422:
            expects.append(Expect("self-reference", "refused", (str(exc)[:100],)))
    return expects


@case("issue18-11-name-conflict", "issue18")
async def _(h):
    """Job `other` with namePrefix `job` made job.step-1; job `job` then derives the same name: it
    waits naming the holder (never another name), its data on its volume; once the holder is
    deleted it finishes under the derived names."""
    await h.create_job("other", train=steps(1), output={"namePrefix": "job"})
    await finished(h, "other")
    await h.create_job("job", train=steps(2))

    def conflicted(o: dict) -> bool:
        return any(c.get("type") == "Ready" and c.get("reason") == "NameConflict"
                   for c in (o.get("status") or {}).get("conditions") or [])
    waiting = await h.until(TJ, "job", conflicted)
    if waiting is None:
        raise CaseError("job never reported the NameConflict")
    await h.api.delete(CKPT, NS, "job.step-1")
    if not await h.gone(CKPT, "job.step-1"):
        raise CaseError("other's job.step-1 was not deleted")
    h.runner.written["other"].pop("step-1")  # deleted on purpose
    done = await finished(h, "job")
    names = sorted(done["status"].get("outputCheckpoints") or [])
    return [Expect("job", "Snapshotting", ("Checkpoint job.step-1, which exists",), condition="Ready", seen=waiting),
            Expect("job", "Succeeded", ("succeeded", "2 checkpoint(s)"), seen=done)] + \
        ([] if names == ["job.step-1", "job.step-2"] else [Expect("derived-names", "named", (str(names),))])


# -- the counters' own check: defects made on purpose must be counted ----------------------------------

# -- the node-local input cache (cache.enabled, one node) ---------------------------------------------------

CACHE_ROOT = "/var/lib/checkpoint-operator/cache"  # cache.localPath's default: the PV's path on the node


def node_cache_dir(h: Harness, pod: dict) -> Path:
    """The node's cache directory, as local mode lays a multi-node local volume out (one per node)."""
    return h.cluster.node_dir(pod["spec"]["nodeName"]) / "local-volumes" / CACHE_ROOT.lstrip("/")


def reads_input(expected: dict[str, bytes], then: Callable[[dict], int]) -> Callable[[dict], int]:
    """Training code that checks the bytes of its input (exit 3 when they differ), then `then`."""
    def train(env: dict) -> int:
        src = Path(env["CHECKPOINT_INPUT_PATH"])
        if any((src / name).read_bytes() != data for name, data in expected.items()):
            return 3
        return then(env)
    return train


def fills_of(pods: list[dict]) -> list[dict]:
    """The node-cache fills' reports (termination messages) of the pods."""
    reports = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
            message = ((status.get("state") or {}).get("terminated") or {}).get("message")
            if status["name"].startswith("download-input-") and message:
                reports.append(json.loads(message))
    return reports


async def cache_input(h: Harness, size: int = 8 * 1024 * 1024, n: int = 1) -> dict[str, bytes]:
    """`pre` writes n checkpoints of `size` random bytes (step-1 ... step-n); returns what step-1 holds."""
    blobs = {f"step-{i}": os.urandom(size) for i in range(1, n + 1)}

    def train(env: dict) -> int:
        for step, data in blobs.items():
            directory = Path(env["CHECKPOINT_OUTPUT_DIR"]) / step
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "model.safetensors").write_bytes(data)
        return 0
    await h.create_job("pre", train=train)
    await finished(h, "pre")
    return {step: data for step, data in blobs.items()}


def kill_fill_midway(started_fills: list[str]):
    """A rule: the first fill runs for real as a process of its own (what the container would run, on the
    node's cache directory), and is SIGKILLed once its download is under way: the container ends 137."""
    async def rule(pod, container, env):
        if not is_download(pod, container) or started_fills:
            return None
        started_fills.append(pod["metadata"]["name"])
        root = node_cache_dir(CURRENT, pod)
        argv = [a for a in container["command"] if a not in ("--result-file", "/dev/termination-log")]
        argv = host_command([str(root) if a == "/checkpoint-node-cache" else a for a in argv])
        key = argv[argv.index("--key") + 1]
        staging = root / "staging" / key.replace("/", ".") / "data"
        proc = await asyncio.create_subprocess_exec(*argv, "--no-hold", env={**os.environ, **env,
                                                                                "CKPT_S3_CONCURRENCY": "1"},
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while proc.returncode is None and time.monotonic() < deadline:
            if staging.is_dir() and any(staging.iterdir()):
                proc.kill()
                CURRENT.events.append("the first fill SIGKILLed with its download under way")
                break
            await asyncio.sleep(0.002)
        await proc.wait()
        return (137, "OOMKilled")
    return rule


@case("cache-fill-killed", "cache", cache="1Gi", quick=True)
async def _(h):
    inputs = await cache_input(h, size=48 * 1024 * 1024)
    started: list[str] = []
    h.runner.rules.append(kill_fill_midway(started))
    await h.create_job("job", inputs=[{"name": "pre.step-1"}], backoffLimit=1,
                       train=reads_input({"model.safetensors": inputs["step-1"]}, steps(1)))
    await finished(h, "job")
    outcomes = [r["cache"] for r in fills_of(await h.api.list(PODS, NS))]
    if outcomes != ["miss"]:  # the retried pod's fill resumed and committed
        raise CaseError(f"the retried pod's fill reported {outcomes}, expected one miss")
    return [Expect("job", "Succeeded", ("succeeded", "1 checkpoint(s)"))]


@case("cache-entry-corrupted", "cache", cache="1Gi")
async def _(h):
    inputs = await cache_input(h)
    expected = {"model.safetensors": inputs["step-1"]}
    await h.create_job("first", inputs=[{"name": "pre.step-1"}], train=reads_input(expected, steps(1)))
    await finished(h, "first")
    first_pod = next(p for p in await h.api.list(PODS, NS) if p["metadata"]["name"].startswith("first"))
    (entry,) = (node_cache_dir(h, first_pod) / "entries" / NS).iterdir()
    cached = entry / "data" / "model.safetensors"
    cached.chmod(0o644)
    with open(cached, "r+b") as fh:  # a flipped byte: the sampled check of the next use sees it
        fh.seek(5)
        byte = fh.read(1)
        fh.seek(5)
        fh.write(bytes([byte[0] ^ 0xFF]))
    h.events.append("a byte of the cached entry flipped")
    await h.create_job("second", inputs=[{"name": "pre.step-1"}], train=reads_input(expected, steps(1)))
    await finished(h, "second")
    second = [p for p in await h.api.list(PODS, NS) if p["metadata"]["name"].startswith("second")]
    outcomes = [r["cache"] for r in fills_of(second)]
    if outcomes != ["refetched"]:
        raise CaseError(f"the second job's fill reported {outcomes}, expected refetched")
    return [Expect("first", "Succeeded", ("succeeded",)), Expect("second", "Succeeded", ("succeeded",))]


@case("cache-full-all-in-use", "cache", cache="10Mi")
async def _(h):
    inputs = await cache_input(h, size=6 * 1024 * 1024, n=2)  # one entry fits in 10Mi, two do not
    holding, release = threading.Event(), threading.Event()

    def holds(env: dict) -> int:
        holding.set()
        release.wait(WAIT)
        return steps(1)(env)
    await h.create_job("holder", inputs=[{"name": "pre.step-1"}],
                       train=reads_input({"model.safetensors": inputs["step-1"]}, holds))
    if not await asyncio.to_thread(holding.wait, WAIT):
        raise CaseError("the holder never ran")
    await h.create_job("waiter", inputs=[{"name": "pre.step-2"}],
                       train=reads_input({"model.safetensors": inputs["step-2"]}, steps(1)))

    async def fill_state() -> dict:
        for pod in await h.api.list(PODS, NS):
            if pod["metadata"]["name"].startswith("waiter"):
                for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
                    if status["name"] == "download-input-0":
                        return status.get("state") or {}
        return {}
    step2 = (await h.api.get(CKPT, NS, "pre.step-2"))["status"]["digest"].removeprefix("sha256:")
    holder_pod = next(p for p in await h.api.list(PODS, NS) if p["metadata"]["name"].startswith("holder"))
    root = node_cache_dir(h, holder_pod)
    deadline = time.monotonic() + WAIT
    while not (root / "staging" / f"{NS}.{step2}").is_dir():  # the fill has come to reserve room
        if time.monotonic() > deadline:
            raise CaseError("the waiter's fill never came to reserve room")
        await asyncio.sleep(0.1)
    await asyncio.sleep(3)  # and has had time to find the cache full
    if "terminated" in await fill_state() or (root / "entries" / NS / step2).exists():
        raise CaseError("the waiter's fill went on while the only entry was in use")
    h.events.append("the second pod waited in its fill while the first held the only entry")
    release.set()
    await finished(h, "holder")
    await finished(h, "waiter")
    waiter = [p for p in await h.api.list(PODS, NS) if p["metadata"]["name"].startswith("waiter")]
    reports = fills_of(waiter)
    if [r["evictedCount"] for r in reports] != [1]:
        raise CaseError(f"the waiter's fill reported {reports}, expected one eviction")
    return [Expect("holder", "Succeeded", ("succeeded",)), Expect("waiter", "Succeeded", ("succeeded",))]


@case("cache-eviction-under-load", "cache", cache="15Mi")
async def _(h):
    inputs = await cache_input(h, size=6 * 1024 * 1024, n=3)  # two entries fit, three do not
    names = [f"use-{i}" for i in range(9)]

    def trains_a_while(env: dict) -> int:
        time.sleep(0.3)  # the pods overlap: entries are in use while others need room
        return steps(1)(env)
    for i, name in enumerate(names):
        step = f"step-{i % 3 + 1}"
        await h.create_job(name, inputs=[{"name": f"pre.{step}"}],
                           train=reads_input({"model.safetensors": inputs[step]}, trains_a_while))
    for name in names:
        await finished(h, name)
    reports = fills_of(await h.api.list(PODS, NS))
    if not sum(r["evictedCount"] for r in reports):
        raise CaseError(f"no fill evicted anything: {[r['cache'] for r in reports]}")
    h.events.append(f"{sum(r['evictedCount'] for r in reports)} evictions, outcomes "
                    f"{sorted(Counter(r['cache'] for r in reports).items())}")
    return [Expect(name, "Succeeded", ("succeeded",)) for name in names]


async def self_check() -> str | None:
    """A finished job, then: one Ready Checkpoint's bytes changed on its volume, a directory the job
    "wrote" that no Checkpoint has, a PVC without an owner, a wrong expected message. None when each is
    counted, else what was missed."""
    async with Harness("self-check", None) as h:
        await h.create_job("job", train=steps(2))
        await finished(h, "job")
        ckpt = await h.api.get(CKPT, NS, "job.step-1")
        volume = ckpt["status"]["location"]["volume"]
        target = Path(h.cluster.claim_dir(NS, volume["claimName"])) / volume["path"].lstrip("/") / "model.safetensors"
        target.write_bytes(b"not what was written")
        h.runner.written[next(iter(h.runner.written))]["step-9"] = "sha256:" + "0" * 64
        await h.api.create(PVCS, NS, {"metadata": {"name": "stray"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
        v = await assess(h, Verdict("self-check", "check"), [Expect("job", "Succeeded", ("no such words",))])
    missed = [what for what, caught in (("the changed bytes", v.partial == 1), ("the lost directories", v.lost == 2),
                                        ("the stray PVC", v.orphaned == 1), ("the unclear message", not v.clear))
              if not caught]
    return f"missed {', '.join(missed)} ({v})" if missed else None


async def self_check_snapshots() -> str | None:
    """With volume snapshots: a Ready Checkpoint's bytes changed in its snapshot's copy, a VolumeSnapshot
    no object owns, a snapshot copy without its content. None when each is counted."""
    async with Harness("self-check-snapshots", None, snapshots=True) as h:
        await h.create_job("job", train=steps(2))
        await finished(h, "job")
        ckpt = await h.api.get(CKPT, NS, "job.step-1")
        snapshot = ckpt["status"]["location"]["snapshot"]
        copy = Path(h.cluster.snapshot_dir(NS, snapshot["volumeSnapshotName"]))
        target = copy / snapshot["path"] / "model.safetensors"
        target.chmod(0o644)
        target.write_bytes(b"not what was written")
        await h.api.create(SNAPSHOTS, NS, {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                           "metadata": {"name": "stray"}, "spec": {
                                               "volumeSnapshotClassName": "block-snapshots",
                                               "source": {"persistentVolumeClaimName": "nothing"}}})
        (copy.parent / "snapcontent-stray").mkdir()
        v = await assess(h, Verdict("self-check-snapshots", "check"), [Expect("job", "Succeeded", ("succeeded",))])
    missed = [what for what, caught in (("the changed snapshot bytes", v.partial == 1),
                                        ("the stray snapshot and copy", v.orphaned == 2)) if not caught]
    return f"missed {', '.join(missed)} ({v})" if missed else None


# --- main ---------------------------------------------------------------------------------------------

async def run_case(c: Case, store: Store | None) -> Verdict:
    global CURRENT
    verdict = Verdict(c.name, c.group)
    started = time.monotonic()
    try:
        async with Harness(c.name, store if c.s3 or c.origin else None, s3_store=c.s3, snapshots=c.snapshots,
                           cache=c.cache) as h:
            CURRENT = h
            try:
                expects = await c.run(h)
                await assess(h, verdict, expects)
            except CaseError as exc:
                verdict.note = f"{exc}; " + "; ".join(h.events)
    except Exception as exc:  # noqa: BLE001 - a broken case is a failed case, with its traceback
        verdict.note = f"error: {exc!r}"
        traceback.print_exc()
    verdict.seconds = time.monotonic() - started
    return verdict


def select(only: str | None, quick: bool) -> list[Case]:
    chosen = [c for c in CASES if not quick or c.quick]
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        chosen = [c for c in chosen if any(c.group == w or c.name.startswith(w) for w in wanted)]
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-emulator", metavar="URL_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="one case of each kind")
    parser.add_argument("--only", help="comma-separated groups (kill, api, pods, store, issue8, issue18, snapshots, cache) or "
                                       "case-name prefixes")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args()
    if args.serve_emulator:
        serve_emulator(args.serve_emulator)
        return 0
    cases = select(args.only, args.quick)
    if args.list:
        for c in cases:
            kind = '  (s3 store)' if c.s3 else '  (s3 origin)' if c.origin else '  (volume snapshots)' if c.snapshots else ''
            print(f"{c.group:8} {c.name}{kind}")
        return 0
    if not cases:
        print(f"faults: no case matches --only {args.only}", file=sys.stderr)
        return 2
    problem = asyncio.run(self_check())
    if not problem and any(c.snapshots for c in cases):
        problem = asyncio.run(self_check_snapshots())
    print(f"faults: self-check: {problem or 'the counters count defects made on purpose'}", flush=True)
    if problem:
        return 1
    store = Store() if any(c.s3 or c.origin for c in cases) else None
    verdicts = []
    try:
        for c in cases:
            verdict = asyncio.run(run_case(c, store))
            verdicts.append(verdict)
            print(f"  {'ok  ' if verdict.holds else 'FAIL'} {c.name} ({verdict.seconds:.0f} s) {verdict.note}",
                  flush=True)
    finally:
        if store is not None:
            store.close()
    print()
    print(f"{'case':44} {'group':9} {'lost':>4} {'dup':>4} {'orph':>4} {'part':>4} {'msg':>5}  note")
    for v in verdicts:
        print(f"{v.case:44} {v.group:9} {v.lost:>4} {v.duplicated:>4} {v.orphaned:>4} {v.partial:>4} "
              f"{'clear' if v.clear else 'NO':>5}  {v.note[:120]}")
    total = {k: sum(getattr(v, k) for v in verdicts) for k in ("lost", "duplicated", "orphaned", "partial")}
    clear = sum(v.clear for v in verdicts)
    print()
    print(f"faults: {len(verdicts)} cases, {total['lost']} lost, {total['duplicated']} duplicated, "
          f"{total['orphaned']} orphaned, {total['partial']} partial ready, {clear} clear messages of {len(verdicts)}")
    return 0 if all(v.holds for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
