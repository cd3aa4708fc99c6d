"""The node-local input cache (issue 22 item 1): N TrainingJobs that read one checkpoint, on a local
cluster of K nodes, the s3 store on SeaweedFS, the real operator process (`checkpoint-operator run`) as
bench/scale.py runs it; once with the cache off, once on, in the same run.

What is measured, for each:
- the bytes the store sent, counted by a TCP proxy between every agent and SeaweedFS (so nothing the
  agents say about themselves): divided by the input's size, the copies of it read from the store;
- the time from creating the N jobs until every training container has started (each holds until
  all N have, so all N pods exist at once and the scheduler spreads them over the K nodes).

    python bench/cache.py                      # 12 jobs, 3 nodes, a 64 MiB input
    python bench/cache.py --jobs 30 --nodes 5 --size-mib 256

The last line: `cache: N jobs on K nodes read C copies of the input from the store` (goal C = K).
Local mode's process runtime copies a read-only mount into each pod's view (reflinks where the
filesystem can): both runs pay that, so the times compare the store reads and the cache's work.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from scale import CKPT, NS, TJ, WORKER, Emulator, Operator, Watch  # noqa: E402

BUCKET = "ckpt-bench-cache"
MiB = 1024 * 1024


class CountingProxy:
    """A TCP proxy to the store that counts the bytes the store sends back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.received = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            store_reader, store_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await reader.read(256 * 1024):
                    if count:
                        self.received += len(data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()
        await asyncio.gather(pipe(client_reader, store_writer, False), pipe(store_reader, client_writer, True))

    async def stop(self) -> None:
        self.server.close()


class HoldUntilAll:
    """Training containers, played in-process: read the input's size, record the start, wait for all N."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.started: dict[str, float] = {}
        self.nodes: dict[str, str] = {}
        self.all = asyncio.Event()

    async def __call__(self, pod: dict, container: dict, env: dict, mounts: dict) -> int | None:
        labels = pod["metadata"].get("labels") or {}
        if labels.get("ckpt.dev/component") != WORKER or container["name"] != "trainer":
            return None  # the operator's agent pods, the cache's sidecar and fills run for real
        path = Path(env["CHECKPOINT_INPUT_PATH"]) / "model.safetensors"
        assert path.stat().st_size > 0
        job = labels.get("ckpt.dev/trainingjob", "")
        self.started[job] = time.monotonic()
        self.nodes[job] = pod["spec"].get("nodeName", "")
        if len(self.started) >= self.jobs:
            self.all.set()
        await asyncio.wait_for(self.all.wait(), 600)
        return 0


def upload_input(store, size: int, work: Path) -> tuple[str, dict]:
    from checkpoint_operator.agent.upload import upload_dir
    source = work / "input"
    source.mkdir()
    with open(source / "model.safetensors", "wb") as fh:
        for _ in range(size // MiB):
            fh.write(os.urandom(MiB))
    (source / "config.json").write_text("{}")
    uri = f"s3://{BUCKET}/checkpoints/{NS}/base-00000000/"
    result = upload_dir(str(source), uri)
    return uri, {"digest": result.manifest.digest, "sizeBytes": result.manifest.sizeBytes,
                 "fileCount": result.manifest.fileCount}


async def one_run(store, uri: str, manifest: dict, *, cache: bool, jobs: int, nodes: int) -> dict:
    from checkpoint_operator.local.cluster import LocalCluster
    from checkpoint_operator.local.server import ApiClient
    work = Path(tempfile.mkdtemp(prefix=f"bench-cache-{'on' if cache else 'off'}-"))
    proxy = CountingProxy(int(store.endpoint.rsplit(":", 1)[1]))
    endpoint = f"http://127.0.0.1:{await proxy.start()}"
    emulator = Emulator(work, str(HERE / "scale.py"))
    trainer = HoldUntilAll(jobs)
    env = {**store.env(), "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "CKPT_STORAGE_TYPE": "s3", "CKPT_S3_ENDPOINT": endpoint, "CKPT_S3_BUCKET": BUCKET,
           "CKPT_S3_PREFIX": "checkpoints", "CKPT_S3_SECRET_NAME": "store", "CKPT_CACHE_ENABLED": str(cache).lower(),
           "CKPT_CACHE_CAPACITY": "10Gi"}
    operator = None
    api = await ApiClient(emulator.url).__aenter__()
    cluster = LocalCluster(emulator.url, work / "cluster", [NS], container_runner=trainer, nodes=nodes)
    await cluster.__aenter__()
    try:
        b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
        await api.create("v1/secrets", NS, {"metadata": {"name": "store"}, "data": {
            "AWS_ACCESS_KEY_ID": b64(store.access_key), "AWS_SECRET_ACCESS_KEY": b64(store.secret_key)}})
        await api.create(CKPT, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
                                    "metadata": {"name": "base", "namespace": NS,
                                                 "finalizers": ["ckpt.dev/in-use-protection"]},
                                    "spec": {"source": {"s3": {"uri": uri}}}})
        await api.patch(CKPT, NS, "base", {"status": {
            "phase": "Ready", "owned": False, **manifest, "location": {"s3": {"uri": uri}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "preloaded",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}, subresource="status")
        operator = Operator(work, emulator.url, "cache-on" if cache else "cache-off", extra_env=env)
        await operator.settle()
        before = proxy.received
        names = [f"use-{i:03d}" for i in range(jobs)]
        async with Watch(emulator.url, TJ) as watch:
            began = time.monotonic()
            for name in names:
                await api.create(TJ, NS, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob",
                                          "metadata": {"name": name, "namespace": NS},
                                          "spec": {"checkpoints": [{"name": "base"}], "output": {"enabled": False},
                                                   "template": {"spec": {"containers": [
                                                       {"name": "trainer", "image": "t", "command": ["train"]}]}}}})
            await asyncio.wait_for(trainer.all.wait(), 900)
            all_running = max(trainer.started.values()) - began
            await watch.until(names, ("Succeeded", "Failed"), 600)
        failed = [n for n in names if watch.phases.get(n) != "Succeeded"]
        received = proxy.received - before
        cached_on = (await api.get(CKPT, NS, "base"))["status"].get("cachedOn")
        return {"cache": cache, "jobs": jobs, "nodes_used": len(set(trainer.nodes.values())),
                "store_bytes": received, "copies": received / manifest["sizeBytes"],
                "seconds_until_all_running": all_running, "failed": len(failed), "cachedOn": cached_on}
    finally:
        if operator is not None:
            operator.stop()
        await cluster.__aexit__(None, None, None)
        await api.close()
        emulator.stop()
        await proxy.stop()
        shutil.rmtree(work, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from s3server import SeaweedFS
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    (work / "weed").mkdir()
    store = SeaweedFS(str(work / "weed"))
    store.start()
    try:
        store.client().create_bucket(Bucket=BUCKET)
        for key, value in {**store.env(), "AWS_CONFIG_FILE": os.devnull,
                           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
            os.environ[key] = value
        uri, manifest = upload_input(store, args.size_mib * MiB, work)
        runs = [await one_run(store, uri, manifest, cache=cache, jobs=args.jobs, nodes=args.nodes)
                for cache in (False, True)]
    finally:
        store.kill()
        shutil.rmtree(work, ignore_errors=True)
    off, on = runs
    if args.json:
        print(json.dumps(runs))
    size = manifest["sizeBytes"]
    print(f"input: {size / MiB:.0f} MiB, {args.jobs} jobs on {args.nodes} nodes (same run)")
    print(f"{'':10} {'copies read':>12} {'store MiB':>10} {'nodes used':>11} {'all running (s)':>16} {'failed':>7}")
    for run in runs:
        print(f"{'cache ' + ('on' if run['cache'] else 'off'):10} {run['copies']:12.2f} "
              f"{run['store_bytes'] / MiB:10.0f} {run['nodes_used']:11d} {run['seconds_until_all_running']:16.2f} "
              f"{run['failed']:7d}")
    print(f"cachedOn (cache on): {on['cachedOn']}")
    print(f"time until all running, cache on / off: {on['seconds_until_all_running'] / off['seconds_until_all_running']:.2f}")
    print(f"cache: {args.jobs} jobs on {on['nodes_used']} nodes read {round(on['copies'])} copies of the input "
          f"from the store")


if __name__ == "__main__":
    asyncio.run(main())
