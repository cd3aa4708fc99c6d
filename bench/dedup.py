"""Content-addressed storage on the s3 store: what the bucket holds against what the Checkpoints say.

Against SeaweedFS on 127.0.0.1 (tests/s3server.py; telemetry off):

(a) `trainer`: a real Transformers `Trainer` run (a tiny GPT-2 made from a config, CPU, torch)
    with `save_total_limit: 2` and `trainer.save_model()` at the end (the final model at the
    root of the output), through the real operator in local mode (`checkpoint-operator local run
    --store s3 --s3-endpoint ... --runtime process`). The Checkpoints: the kept `checkpoint-N/`
    and the root files. Printed: the bucket's bytes (blobs, manifests) against the sum of the
    Checkpoints' sizes, and what the final model costs beyond the checkpoint that holds the same
    weights (the goal: nothing).
(b) `finetune`: 10 consecutive fine-tune checkpoints, each a frozen base shard (--base), a trained
    adapter shard (--adapter) and the small files (config, tokenizer, trainer_state), through the
    same local mode: bytes in the bucket against the sum of the sizes.
(c) `upload`: the upload of a checkpoint whose blobs are all present against a fresh one (ratio
    of wall times, same files; the requests are one HEAD per file), and the older layout's
    fresh upload for reference.
(d) `gc`: the requests one Checkpoint's deletion costs (the collection of unused blobs) in a
    namespace of N checkpoints: a listing of the namespace, one GET per manifest, the blob
    listing, one batched DELETE, four marker requests.

    python bench/dedup.py [trainer] [finetune] [upload] [gc]      (all four by default)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from s3server import start_seaweedfs  # noqa: E402

MiB = 1024 * 1024

TRAINER_SCRIPT = r'''
import os, torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
torch.manual_seed(0)
out = os.environ["CHECKPOINT_OUTPUT_DIR"]
model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=64, n_embd=128, n_layer=4, n_head=4))
class Data(torch.utils.data.Dataset):
    def __len__(self): return 64
    def __getitem__(self, i):
        ids = torch.randint(0, 512, (32,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}
args = TrainingArguments(output_dir=out, max_steps=40, save_steps=10, save_total_limit=2, per_device_train_batch_size=8,
                         report_to=[], use_cpu=True, logging_steps=10, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=Data())
trainer.train()
trainer.save_model(out)  # the final model at the root: the same weights as the last checkpoint-N/
'''

FINETUNE_SCRIPT = r'''
import json, os, sys
out, base_size, adapter_size = os.environ["CHECKPOINT_OUTPUT_DIR"], int(sys.argv[1]), int(sys.argv[2])
base = os.urandom(base_size)  # frozen: the same bytes in every checkpoint
for step in range(1, 11):
    d = os.path.join(out, f"checkpoint-{step * 100}")
    os.makedirs(d)
    files = {"base.safetensors": base, "adapter.safetensors": os.urandom(adapter_size),
             "config.json": b'{"model_type": "llama", "hidden_size": 64}',
             "tokenizer.json": b'{"version": "1.0", "model": {"vocab": {}}}' * 200,
             "trainer_state.json": json.dumps({"global_step": step * 100}).encode()}
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
'''


def job_manifest(name: str, command: list[str], size: str = "2Gi") -> str:
    return json.dumps({"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
                       "spec": {"output": {"size": size},
                                "template": {"spec": {"containers": [{"name": "trainer", "image": "unused",
                                                                      "command": command}]}}}})


def bucket_usage(client, bucket: str) -> dict[str, int]:
    usage = {"blobs": 0, "blob_objects": 0, "manifests": 0, "other": 0, "objects": 0}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            usage["objects"] += 1
            if "/blobs/sha256/" in "/" + obj["Key"]:
                usage["blobs"] += obj["Size"]
                usage["blob_objects"] += 1
            elif obj["Key"].endswith(".checkpoint-manifest.json"):
                usage["manifests"] += obj["Size"]
            else:
                usage["other"] += obj["Size"]
    return usage


def manifests(client, bucket: str) -> dict[str, dict]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".checkpoint-manifest.json"):
                found[obj["Key"]] = json.loads(client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
    return found


def local_run(server, workdir: Path, manifest: str, bucket: str) -> list[dict]:
    (workdir / "job.json").write_text(manifest)
    env = {**os.environ, **server.env()}
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "local", "run", "-f", str(workdir / "job.json"),
                           "--runtime", "process", "--store", "s3", "--s3-endpoint", server.endpoint,
                           "--s3-bucket", bucket, "--state-dir", str(workdir / "state"), "-o", "json"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"local run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    return [c for c in report.get("checkpoints", []) if c.get("phase") == "Ready"]


def size_of(c: dict) -> int:
    for key in ("sizeBytes", "size"):
        if isinstance(c.get(key), int):
            return c[key]
    return int((c.get("status") or {}).get("sizeBytes") or 0)


def report(title: str, checkpoints: list[dict], usage: dict[str, int]) -> None:
    total = sum(size_of(c) for c in checkpoints)
    stored = usage["blobs"] + usage["manifests"] + usage["other"]
    print(f"{title}: {len(checkpoints)} Checkpoints, sum of their sizes {total / MiB:.2f} MiB; bucket "
          f"{stored / MiB:.2f} MiB ({usage['blobs'] / MiB:.2f} MiB in {usage['blob_objects']} blobs, "
          f"{usage['manifests'] / 1024:.1f} KiB of manifests, {usage['other']} B other); "
          f"stored/referenced = {stored / total:.3f}" if total else f"{title}: no Checkpoints")


def bench_trainer(server, client, root: Path) -> None:
    bucket = "dedup-trainer"
    client.create_bucket(Bucket=bucket)
    work = root / "trainer"
    work.mkdir()
    (work / "train.py").write_text(TRAINER_SCRIPT)
    ready = local_run(server, work, job_manifest("hf", [sys.executable, str(work / "train.py")]), bucket)
    usage = bucket_usage(client, bucket)
    report("trainer (save_total_limit 2 + final model at the root)", ready, usage)
    found = manifests(client, bucket)
    by_blob: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    for key, m in found.items():
        for f in m["files"]:
            by_blob.setdefault(f["sha256"], set()).add(key)
            sizes[f["sha256"]] = f["size"]
    for key, m in sorted(found.items()):
        own = sum(sizes[f["sha256"]] for f in {f["sha256"]: f for f in m["files"]}.values()
                  if by_blob[f["sha256"]] == {key})
        print(f"  {key.split('/', 1)[-1]}: {m['sizeBytes'] / MiB:.2f} MiB, {m['fileCount']} files; "
              f"bytes no other Checkpoint shares: {own / MiB:.3f} MiB")


def bench_finetune(server, client, root: Path, base: int, adapter: int) -> None:
    bucket = "dedup-finetune"
    client.create_bucket(Bucket=bucket)
    work = root / "finetune"
    work.mkdir()
    (work / "ft.py").write_text(FINETUNE_SCRIPT)
    ready = local_run(server, work, job_manifest("ft", [sys.executable, str(work / "ft.py"), str(base), str(adapter)]),
                      bucket)
    report(f"finetune (10 checkpoints, frozen base {base / MiB:.0f} MiB, adapter {adapter / MiB:.2f} MiB)", ready,
           bucket_usage(client, bucket))


def bench_upload(server, client, root: Path, files: int, size: int) -> None:
    from checkpoint_operator.agent.upload import upload_dir
    from checkpoint_operator.objectstore.blobs import blob_root_of
    bucket = "dedup-upload"
    client.create_bucket(Bucket=bucket)
    src = root / "upload"
    src.mkdir()
    for i in range(files):
        (src / f"shard-{i:03d}.bin").write_bytes(os.urandom(size))
    for i in range(100):
        (src / f"small-{i:03d}.json").write_bytes(os.urandom(1000 + i))
    os.environ.update(server.env())

    def timed(uri: str, blobs: bool, manifest=None) -> float:
        started = time.perf_counter()
        upload_dir(str(src), uri, blobs=blob_root_of(uri) if blobs else None, manifest=manifest, log=lambda m: None)
        return time.perf_counter() - started
    from statistics import median

    from checkpoint_operator.objectstore.s3 import read_manifest
    olds, freshes, presents, knowns = [], [], [], []
    for run in range(3):  # each in a namespace of its own: "fresh" finds no blob there
        base = f"s3://{bucket}/ns{run}/"
        olds.append(timed(base + "old-00000000/", blobs=False))
        freshes.append(timed(base + "fresh-00000000/", blobs=True))
        presents.append(timed(base + "again-00000000/", blobs=True))
        scanned = read_manifest(base + "fresh-00000000/").model_copy(update={"blobs": None})
        knowns.append(timed(base + "known-00000000/", blobs=True, manifest=scanned))  # as a snapshot: scan hashed
    old, fresh, present, known = median(olds), median(freshes), median(presents), median(knowns)
    total = files * size + sum(1000 + i for i in range(100))
    print(f"upload, medians of 3 ({files} x {size / MiB:.0f} MiB + 100 small files, {total / MiB:.0f} MiB): fresh {fresh:.2f} s; "
          f"all blobs present {present:.3f} s (ratio {present / fresh:.3f}: the files are read to hash them); "
          f"all present with the sha256 known, as in a snapshot (its scan hashed them) {known:.3f} s "
          f"(ratio {known / fresh:.3f}: one HEAD per file); older layout, fresh: {old:.2f} s")


def bench_gc(server, client, root: Path, counts: list[int]) -> None:
    from checkpoint_operator.agent.upload import upload_dir
    from checkpoint_operator.objectstore.blobs import blob_root_of, collect, released_blobs
    from checkpoint_operator.objectstore.s3 import delete_prefix, make_client
    os.environ.update(server.env())
    for n in counts:
        bucket = f"dedup-gc-{n}"
        client.create_bucket(Bucket=bucket)
        base = os.urandom(256 * 1024)
        for i in range(n):
            d = root / f"gc-{n}" / f"c{i}"
            d.mkdir(parents=True)
            (d / "base.bin").write_bytes(base)
            (d / "head.bin").write_bytes(os.urandom(4096))
            (d / "config.json").write_bytes(b"{}")
            uri = f"s3://{bucket}/ns/c{i}-{i:08x}/"
            upload_dir(str(d), uri, blobs=blob_root_of(uri), log=lambda m: None)
        client_ = make_client()
        released = released_blobs(client_, f"s3://{bucket}/ns/c0-{0:08x}/")  # 1 GET, as the operator does
        delete_prefix(f"s3://{bucket}/ns/c0-{0:08x}/")
        done = collect(client_, f"s3://{bucket}/ns/", released=released)  # the default grace: all are young
        print(f"gc: one deletion among {n} Checkpoints: {done.requests + 1} requests (the deleted manifest, "
              f"{done.manifests} manifests read, {done.blobs} blobs listed, {len(done.deleted)} deleted)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", default=["trainer", "finetune", "upload", "gc"])
    parser.add_argument("--base", type=int, default=64 * MiB)
    parser.add_argument("--adapter", type=int, default=MiB)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size", type=int, default=16 * MiB)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ckpt-dedup-"))
    (root / "weed").mkdir()
    server = start_seaweedfs(str(root / "weed"))
    try:
        client = server.client()
        if "trainer" in args.which:
            bench_trainer(server, client, root)
        if "finetune" in args.which:
            bench_finetune(server, client, root, args.base, args.adapter)
        if "upload" in args.which:
            bench_upload(server, client, root, args.files, args.size)
        if "gc" in args.which:
            bench_gc(server, client, root, [10, 100])
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
