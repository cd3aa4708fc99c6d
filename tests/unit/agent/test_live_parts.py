"""Live sealing with a volume per worker, the agent's side, on real files: each worker's sidecar
(`agent watch --part`) seals its part of a directory by one volume's rules, its part's own
completeness holding nothing (a DCP rank's part alone is never complete); the union pod
(`--only DIR --expect W=DIGEST`) assembles exactly the sealed parts with the end-of-job union's
code: the same checkpoint, a conflict refused by name, completeness over the union, and a part
changed after its sealing refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from formats_files import dcp_metadata_bytes, write

from checkpoint_operator.agent.live_sealing import Evidence, Hold, Listed, Seal, decide
from checkpoint_operator.agent.live_watch import Watcher
from checkpoint_operator.agent.parts import PartsStream, scan_parts
from checkpoint_operator.agent.scan import Skipped, scan_directory

CONFIG = b'{"model": "tiny"}'


def dcp_part(volume: Path, directory: str, rank: int, ranks: int = 2, config: bytes = CONFIG) -> None:
    root = volume / directory
    write(root / f"__{rank}_0.distcp", bytes([rank]) * 64)
    write(root / "config.json", config)
    if rank == 0:  # torch DCP's coordinator writes .metadata once every rank's shard is written
        write(root / ".metadata", dcp_metadata_bytes(["model.w"], [(f"__{r}_0.distcp", 0, 64) for r in range(ranks)]))


def part_watcher(volume: Path, worker: int) -> tuple[Watcher, list]:
    lines: list = []
    volume.mkdir(parents=True, exist_ok=True)
    return Watcher(str(volume), part=worker, emit=lines.append), lines


def sealed(lines: list) -> dict[str, str]:
    return {e.checkpoint.path: e.checkpoint.digest for e in lines if e.kind == "sealed"}


def ticks(*watchers: Watcher, n: int = 2) -> None:
    for _ in range(n):
        for w in watchers:
            w.tick()


def test_each_worker_seals_its_part_and_the_union_of_the_sealed_parts_is_the_end_of_job_union(tmp_path):
    out = tmp_path / "out"
    w0, lines0 = part_watcher(out / "worker-0", 0)
    w1, lines1 = part_watcher(out / "worker-1", 1)
    dcp_part(out / "worker-0", "step-1", 0)
    dcp_part(out / "worker-1", "step-1", 1)
    ticks(w0, w1)
    # Rank 0's part holds .metadata (DCP's last write, after every rank's): sealed, though it lacks
    # rank 1's shard. Rank 1's part has no sign of its end yet: held, but never for being incomplete.
    assert list(sealed(lines0)) == ["step-1"] and sealed(lines1) == {}
    assert "incomplete" not in w1.holds["step-1"]
    assert lines0[0].checkpoint.part == 0 and "holds .metadata" in lines0[0].checkpoint.sealReason
    dcp_part(out / "worker-1", "step-2", 1)  # rank 1 moves on: step-1's part is done
    ticks(w1)
    assert list(sealed(lines1)) == ["step-1"] and lines1[0].checkpoint.part == 1
    assert os.stat(out / "worker-1" / "step-1" / "__1_0.distcp").st_mode & 0o222 == 0  # read-only, as one volume's
    assert not (out / "worker-0" / ".ckpt-live" / "resume").exists()  # a part is nothing to resume from

    expect = {0: sealed(lines0)["step-1"], 1: sealed(lines1)["step-1"]}
    [union] = list(PartsStream(str(out), 2, only="step-1", expect=expect))
    end_of_job = {c.path: c for c in scan_parts(str(out), 2).result.checkpoints}["step-1"]
    assert (union.manifest.digest, union.manifest.complete, union.manifest.format) == \
        (end_of_job.digest, True, "torch-dcp")
    assert [f.path for f in union.manifest.files] == [".metadata", "__0_0.distcp", "__1_0.distcp", "config.json"]


def test_a_conflict_between_sealed_parts_is_refused_by_name(tmp_path):
    out = tmp_path / "out"
    w0, lines0 = part_watcher(out / "worker-0", 0)
    w1, lines1 = part_watcher(out / "worker-1", 1)
    dcp_part(out / "worker-0", "step-1", 0)
    dcp_part(out / "worker-1", "step-1", 1, config=b'{"model": "other"}')
    ticks(w0, w1)
    dcp_part(out / "worker-1", "step-2", 1)  # rank 1 moved on: its step-1 part is done
    w1.finish()  # its pod ended: the last pass seals what is there
    stream = PartsStream(str(out), 2, only="step-1", expect={0: sealed(lines0)["step-1"], 1: sealed(lines1)["step-1"]})
    assert list(stream) == []
    [skipped] = stream.skipped
    assert skipped.path == "step-1"
    assert skipped.reason.startswith("conflicting parts, not made into a Checkpoint: 'config.json' differs between "
                                     "worker 0")


def test_completeness_is_over_the_union_of_what_exists_when_a_rank_never_wrote_its_part(tmp_path):
    out = tmp_path / "out"
    w0, lines0 = part_watcher(out / "worker-0", 0)
    (out / "worker-1").mkdir(parents=True)
    dcp_part(out / "worker-0", "step-2", 0)
    ticks(w0)
    [union] = list(PartsStream(str(out), 2, only="step-2", expect={0: sealed(lines0)["step-2"]}))
    assert union.manifest.complete is False
    assert union.manifest.completeReason == "__1_0.distcp is named by .metadata but missing"


def test_a_live_union_refuses_a_directory_with_a_part_of_a_worker_it_does_not_expect(tmp_path):
    """hostile9 H9-4: a live union (`--expect`) took the files of a worker not in `--expect` as they
    were (never sealed nor hashed by its sidecar, still writable) into a Ready Checkpoint. It is of
    the sealed parts only: a directory another worker has a part of is skipped, naming the worker,
    and left to the end-of-job snapshot (which reads every part as it is then)."""
    out = tmp_path / "out"
    w0, lines0 = part_watcher(out / "worker-0", 0)
    dcp_part(out / "worker-0", "step-1", 0)
    ticks(w0)
    dcp_part(out / "worker-1", "step-1", 1)  # worker 1's files, never sealed by its sidecar
    stream = PartsStream(str(out), 2, only="step-1", expect={0: sealed(lines0)["step-1"]})
    assert list(stream) == []
    assert stream.skipped == [Skipped(path="step-1", reason=(
        "worker 1 has a part of it that its sidecar has not sealed (a live union is of sealed parts only)"))]
    # the end-of-job union (no --expect) takes every part
    assert [c.path for c in scan_parts(str(out), 2).result.checkpoints] == ["step-1"]


def test_a_part_rewritten_after_its_sealing_is_refused_naming_the_worker(tmp_path):
    out = tmp_path / "out"
    w0, lines0 = part_watcher(out / "worker-0", 0)
    w1, lines1 = part_watcher(out / "worker-1", 1)
    dcp_part(out / "worker-0", "step-1", 0)
    dcp_part(out / "worker-1", "step-1", 1)
    ticks(w0, w1)
    dcp_part(out / "worker-1", "step-2", 1)  # rank 1 moved on: its step-1 part is done
    w1.finish()
    expect = {0: sealed(lines0)["step-1"], 1: sealed(lines1)["step-1"]}
    shard = out / "worker-1" / "step-1" / "__1_0.distcp"
    os.chmod(shard, 0o644)  # root ignores the bits: as a root trainer rewriting its shard
    shard.write_bytes(b"\xff" * 64)
    stream = PartsStream(str(out), 2, only="step-1", expect=expect)
    assert list(stream) == []
    now = scan_directory(out / "worker-1" / "step-1", single=True).checkpoints[0].digest
    assert stream.skipped == [Skipped(path="step-1", reason=(
        f"worker 1's part changed after it was sealed (sealed as {expect[1][:19]}..., now has {now[:19]}...)"))]
    w1.check_all()  # and the sidecar says so in its own line
    assert [e.path for e in lines1 if e.kind == "changed"] == ["step-1"]


def writable(directory: Path) -> bool:
    """Every file and directory of it keeps its write bits (the tests run as root, for whom
    os.access always says writable: the bits are what a non-root trainer meets)."""
    return all(os.stat(p).st_mode & 0o222 for p in [directory, *directory.rglob("*")])


def test_a_part_with_no_sign_of_its_end_at_its_pod_s_end_is_left_writable_for_the_restarted_group(tmp_path):
    """F7: a group whose step-2 save was cut short (rank 0 died before DCP's `.metadata`; rank 1's
    shard, written in place, is whole, but the union is not) is restarted by the operator from the
    union complete over the volumes (step-1), and each rank writes step-2 again. A part's own
    completeness says nothing, so at the pod's end only a sign of its writer's end seals it: rank
    1's step-1 (a newer step beside it) and rank 0's step-1 (its `.metadata`) are sealed, both
    step-2 parts are left writable (sealed read-only, a non-root trainer got PermissionError
    rewriting them), as one volume leaves a save found incomplete (hostile8 R1)."""
    out = tmp_path / "out"
    w0, lines0 = part_watcher(out / "worker-0", 0)
    w1, lines1 = part_watcher(out / "worker-1", 1)
    for rank in (0, 1):
        dcp_part(out / f"worker-{rank}", "step-1", rank)
    write(out / "worker-0" / "step-2" / "__0_0.distcp", b"\x00" * 32)  # killed mid-shard, before .metadata
    write(out / "worker-1" / "step-2" / "__1_0.distcp", b"\x01" * 64)  # whole: rank 1 was done
    write(out / "worker-1" / "step-2" / "config.json", CONFIG)
    w0.finish()
    w1.finish()
    assert list(sealed(lines0)) == ["step-1"] and list(sealed(lines1)) == ["step-1"]
    assert "holds .metadata" in lines0[0].checkpoint.sealReason
    assert lines1[0].checkpoint.sealReason == "the training containers exited (a newer step (2) appeared beside it)"
    for w, rank in ((w0, 0), (w1, 1)):
        assert "left writable for a retry" in w.holds["step-2"]
        assert writable(out / f"worker-{rank}" / "step-2")
    assert not writable(out / "worker-1" / "step-1")
    # The restarted group's rank 1 writes its part of step-2 again; a sidecar starting on the same
    # volume then seals it by the usual signs (here: step-3 beside it).
    (out / "worker-1" / "step-2" / "__1_0.distcp").write_bytes(b"\x02" * 64)
    dcp_part(out / "worker-1", "step-3", 1)
    again, lines = part_watcher(out / "worker-1", 1)
    again.announce()
    again.finish()
    assert [e.checkpoint.path for e in lines if e.kind == "sealed" and not e.checkpoint.announced] == ["step-2"]


def test_a_part_renamed_into_place_or_holding_the_save_s_last_file_is_sealed_at_its_pod_s_end(tmp_path):
    """The signs of a part's end that the pod's end keeps: a rename into place (its own save was
    whole), the file a multi-worker save writes last (every rank's shard was written before it)."""
    out = tmp_path / "out"
    w0, lines0 = part_watcher(out / "worker-0", 0)
    w1, lines1 = part_watcher(out / "worker-1", 1)
    w1.tick()
    dcp_part(out / "worker-0", "step-1", 0)  # in place: its .metadata is the sign
    write(out / "worker-1" / "step-1.tmp" / "__1_0.distcp", b"\x01" * 64)
    w1.tick()  # the unfinished name is seen
    os.rename(out / "worker-1" / "step-1.tmp", out / "worker-1" / "step-1")
    w0.finish()
    w1.finish()
    assert list(sealed(lines0)) == ["step-1"] and list(sealed(lines1)) == ["step-1"]
    assert "holds .metadata" in lines0[0].checkpoint.sealReason
    assert "renamed into place from step-1.tmp" in lines1[0].checkpoint.sealReason
    assert not writable(out / "worker-1" / "step-1")


@pytest.mark.parametrize("files, renamed, newer, sealed_as", [
    ((("__1_0.distcp", 64, 1),), None, None, None),                        # no sign: left writable
    ((("__1_0.distcp", 64, 1),), None, 3, "a newer step (3) appeared beside it"),
    ((("__1_0.distcp", 64, 1),), "renamed into place from step-2.tmp", None, "renamed into place from step-2.tmp"),
    (((".metadata", 9, 1), ("__0_0.distcp", 64, 1)), None, None, "this worker's part holds .metadata"),
])
def test_at_its_pod_s_end_a_part_is_sealed_only_with_a_sign_of_its_writer_s_end(files, renamed, newer, sealed_as):
    """The decision alone: the part's own completeness (here "complete", as a part that looks whole
    by itself) never seals it at the pod's end; its writer's signs do."""
    listed = Listed("step-2", "step-2", "/nowhere/step-2", (1, 2), files)
    for found in (Evidence(True, "looks whole", None), Evidence(None, "not checked", None),
                  Evidence(False, ".metadata missing", None)):
        decision = decide(listed, listed, found, renamed=renamed, newer=newer, writers_done=True, part=True)
        if sealed_as is None:
            assert isinstance(decision, Hold) and decision.reason.endswith("left writable for a retry")
        else:
            assert isinstance(decision, Seal) and sealed_as in decision.reason


def test_the_agent_commands_take_the_union_s_flags(tmp_path):
    out = tmp_path / "out"
    for rank in (0, 1):
        dcp_part(out / f"worker-{rank}", "step-1", rank)
        dcp_part(out / f"worker-{rank}", "step-2", rank)
    digests = {}
    for rank in (0, 1):
        w, lines = part_watcher(out / f"worker-{rank}", rank)
        w.finish()
        digests[rank] = sealed(lines)["step-1"]
    run = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "scan", str(out), "--parts", "2",
                          "--result", "--only", "step-1", "--expect", f"0={digests[0]}", "--expect",
                          f"1={digests[1]}"], capture_output=True, text=True, check=True)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert [c["path"] for c in report["checkpoints"]] == ["step-1"]  # step-2 is not looked at
    assert [p["worker"] for p in report["checkpoints"][0]["parts"]] == [0, 1]
    bad = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "scan", str(out), "--parts", "2",
                          "--result", "--only", "step-1", "--expect", "0=nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--expect '0=nope': WORKER=sha256:<64 hex digits> expected" in bad.stderr
