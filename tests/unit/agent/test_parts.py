"""Checkpoints assembled across workers' volumes (agent/parts.py), on real files: the union is
what one shared directory holding every worker's files would be (same digest, format, step and
completeness as a scan of that directory), a conflict is refused by name, and identical
duplicates are one file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoint_operator.protocol.errors import REFUSED_EXIT_CODE
from checkpoint_operator.agent.parts import scan_parts
from checkpoint_operator.agent.scan import scan_directory
from formats_files import dcp_metadata_bytes
from agentrun import agent_process

CONFIG = b'{"model": "tiny"}'


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def dcp_rank(output: Path, directory: str, rank: int, ranks: int = 2, size: int = 64,
             config: bytes = CONFIG) -> Path:
    """Rank `rank`'s part of a torch DCP save in worker `rank`'s output: its shard (and rank 0 the
    `.metadata` naming every rank's), plus a config.json every rank writes."""
    root = output / f"worker-{rank}" / directory
    if rank == 0:
        storage = [(f"__{r}_0.distcp", 0, size) for r in range(ranks)]
        write(root / ".metadata", dcp_metadata_bytes(["model.w", "optim.state.w.exp_avg"], storage))
    write(root / f"__{rank}_0.distcp", bytes([rank]) * size)
    write(root / "config.json", config)
    return root


def merged(output: Path, tmp: Path) -> Path:
    """One directory holding every worker's files, as a shared volume would."""
    shared = tmp / "shared"
    for part in sorted(output.iterdir()):
        shutil.copytree(part, shared, dirs_exist_ok=True)
    return shared


def test_a_directory_written_by_two_workers_is_one_checkpoint_the_union(tmp_path):
    output = tmp_path / "out"
    for rank in (0, 1):
        dcp_rank(output, "step-100", rank)
    result = scan_parts(str(output), 2)
    [m] = result.result.checkpoints
    assert m.path == "step-100"
    assert [f.path for f in m.files] == [".metadata", "__0_0.distcp", "__1_0.distcp", "config.json"]
    assert (m.format, m.step, m.complete, m.resumable) == ("torch-dcp", 100, True, True)
    # The worker each file is read from: config.json (the same bytes in both) from the first.
    assert result.sources["step-100"] == [0, 0, 1, 0]
    # Exactly what one shared directory with every worker's files would be.
    [shared] = scan_directory(merged(output, tmp_path)).checkpoints
    assert (m.digest, m.sizeBytes, m.fileCount, m.completeReason) == \
        (shared.digest, shared.sizeBytes, shared.fileCount, shared.completeReason)
    assert result.result.skipped == []


def test_completeness_is_decided_over_the_union_and_a_missing_rank_shard_is_named(tmp_path):
    output = tmp_path / "out"
    dcp_rank(output, "step-100", 0)
    (output / "worker-1").mkdir(parents=True)  # rank 1 wrote nothing
    [m] = scan_parts(str(output), 2).result.checkpoints
    assert m.complete is False
    assert m.completeReason == "__1_0.distcp is named by .metadata but missing"
    # Rank 1 alone (its shard, no .metadata) is not a checkpoint of its own either: it is a part.
    dcp_rank(output, "step-200", 0)
    dcp_rank(output, "step-200", 1)
    by_path = {c.path: c for c in scan_parts(str(output), 2).result.checkpoints}
    assert by_path["step-200"].complete is True and set(by_path) == {"step-100", "step-200"}


def test_the_same_path_with_different_bytes_is_refused_by_name_and_the_others_are_made(tmp_path):
    output = tmp_path / "out"
    dcp_rank(output, "step-100", 0)
    dcp_rank(output, "step-100", 1, config=b'{"model": "other"}')
    for rank in (0, 1):
        dcp_rank(output, "step-200", rank)
    result = scan_parts(str(output), 2)
    assert [c.path for c in result.result.checkpoints] == ["step-200"]
    [skipped] = result.result.skipped
    assert skipped.path == "step-100"
    assert skipped.reason.startswith("conflicting parts, not made into a Checkpoint: 'config.json' differs "
                                     "between worker 0 (sha256 ")
    assert "and worker 1 (sha256 " in skipped.reason
    assert result.result.skippedCount == 1


def test_many_conflicts_are_one_bounded_entry(tmp_path):
    output = tmp_path / "out"
    for i in range(50):
        write(output / "worker-0" / "d" / f"f{i}", b"a")
        write(output / "worker-1" / "d" / f"f{i}", b"b")
    [skipped] = scan_parts(str(output), 2).result.skipped
    assert skipped.reason.count("differs between") == 3 and skipped.reason.endswith("; and 47 more")


def test_per_worker_keeps_each_worker_s_checkpoints_its_own(tmp_path):
    output = tmp_path / "out"
    dcp_rank(output, "step-100", 0)
    dcp_rank(output, "step-100", 1)
    write(output / "worker-1" / "final.safetensors", b"x")
    result = scan_parts(str(output), 2, per_worker=True)
    by_path = {c.path: c for c in result.result.checkpoints}
    assert set(by_path) == {"worker-0/step-100", "worker-1/step-100", "worker-1"}
    # Each worker's part alone, as perWorker asks: rank 1's shard is in worker 1's part, and that
    # part has no .metadata.
    assert by_path["worker-0/step-100"].completeReason == "__1_0.distcp is named by .metadata but missing"
    assert by_path["worker-1/step-100"].completeReason == \
        "no .metadata beside the .distcp files (torch DCP writes it last)"
    assert result.sources["worker-1/step-100"] == [1, 1]
    assert [f.path for f in by_path["worker-1"].files] == ["final.safetensors"]


def test_skipped_entries_of_a_part_name_the_worker(tmp_path):
    output = tmp_path / "out"
    write(output / "worker-0" / "step-1" / "w.bin", b"x")
    (output / "worker-1" / "step-1.tmp").mkdir(parents=True)
    write(output / "worker-1" / "step-1.tmp" / "w.bin", b"x")
    result = scan_parts(str(output), 2)
    assert [c.path for c in result.result.checkpoints] == ["step-1"]
    assert [s.path for s in result.result.skipped] == ["worker-1/step-1.tmp"]


def test_the_agent_command_prints_the_union_and_the_sources(tmp_path):
    output = tmp_path / "out"
    for rank in (0, 1):
        dcp_rank(output, "step-100", rank)
    printed = agent_process("scan", str(output), "--parts", "2", "--json", check=True).stdout
    data = json.loads(printed.strip().splitlines()[-1])
    assert [c["path"] for c in data["checkpoints"]] == ["step-100"]
    assert data["sources"] == {"step-100": [0, 0, 1, 0]}


def test_the_operator_s_result_carries_each_worker_s_share_and_the_manifest_beside_the_data(tmp_path):
    """`agent scan --parts --result --part-manifests`: the bounded result names, per checkpoint, the
    items each worker's volume provides (never its files), and the union's full manifest is written
    to the first providing worker's volume, outside the checkpoint's directory."""
    from checkpoint_operator.protocol import channel
    from checkpoint_operator.protocol.manifest import parse_manifest, stored_manifest_name
    from checkpoint_operator.protocol.results import ScanReport
    output = tmp_path / "out"
    for rank in (0, 1):
        dcp_rank(output, "step-100", rank)
    write(output / "worker-1" / "final" / "w.bin", b"w")
    before = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}
    printed = agent_process("scan", str(output), "--parts", "2", "--result", "--part-manifests", check=True).stdout
    report = channel.find_result(printed, (ScanReport,), limit_bytes=1 << 20)
    by_path = {c.path: c for c in report.checkpoints}
    step = by_path["step-100"]
    assert [(p.worker, p.items) for p in step.parts] == [(0, [".metadata", "__0_0.distcp", "config.json"]),
                                                        (1, ["__1_0.distcp"])]
    assert [(p.worker, p.items) for p in by_path["final"].parts] == [(1, None)]  # one worker's whole directory
    assert step.manifestStored and by_path["final"].manifestStored
    stored = parse_manifest((output / "worker-0" / ".ckpt-manifests" / stored_manifest_name(step.digest)).read_bytes(),
                            "stored")
    assert stored.digest == step.digest and [f.path for f in stored.files] == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "config.json"]
    assert (output / "worker-1" / ".ckpt-manifests" / stored_manifest_name(by_path["final"].digest)).is_file()
    assert {p: p.read_bytes() for p in before} == before  # every checkpoint's bytes as written


def test_a_share_too_many_mounts_is_skipped_with_the_reason(tmp_path):
    from checkpoint_operator.agent.parts import MAX_ITEMS, PartsStream, parts_output
    output = tmp_path / "out"
    for i in range(2 * MAX_ITEMS + 2):  # interleaved flat files: each one a mount, MAX_ITEMS + 1 each
        write(output / f"worker-{i % 2}" / "flat" / f"f{i:04d}", b"x")
    write(output / "worker-0" / "ok" / "a", b"a")
    scan = parts_output(PartsStream(str(output), 2), str(output), "auto")
    assert [c.manifest.path for c in scan.checkpoints] == ["ok"]
    assert scan.skipped[0].path == "flat" and f"more than {MAX_ITEMS} separate files" in scan.skipped[0].reason


def test_the_scan_s_item_bounds_are_the_protocol_s():
    from checkpoint_operator.agent import parts, scan
    from checkpoint_operator.protocol import results
    assert scan.MAX_ITEMS == parts.MAX_ITEMS == results.MAX_ITEMS
    assert parts.MAX_PART_ITEM == results.MAX_ITEM and parts.MAX_CHECKPOINTS == results.MAX_CHECKPOINTS


# ---- the parts contradict each other as one volume could not (hostile4 D2, D7, D12, D6) ----

NFC, NFD = "caf\u00e9", "cafe\u0301"


def skipped_reasons(result) -> dict[str, str]:
    return {s.path: s.reason for s in result.result.skipped}


def test_a_file_in_one_part_and_a_directory_in_another_is_a_conflict_naming_both_workers(tmp_path):
    """hostile4 D2: worker 0's file `x` and worker 1's `x/y` were one Ready checkpoint no consumer
    could mount (failed before: both files listed)."""
    output = tmp_path / "out"
    write(output / "worker-0" / "stepb" / "x", b"file")
    write(output / "worker-1" / "stepb" / "x" / "y", b"dir")
    write(output / "worker-0" / "ok" / "a", b"a")
    result = scan_parts(str(output), 2)
    assert [m.path for m in result.result.checkpoints] == ["ok"]
    assert skipped_reasons(result)["stepb"] == (
        "conflicting parts, not made into a Checkpoint: 'x' is a file in worker 0 and a directory in worker 1 ('x/y')")


def test_names_that_are_one_after_unicode_normalization_across_parts_are_a_conflict(tmp_path):
    """hostile4 D2: `café` (NFC) from worker 0 and `café` (NFD) from worker 1, the pair one volume's
    scan refuses, were two files of one checkpoint (failed before)."""
    output = tmp_path / "out"
    write(output / "worker-0" / "stepa" / NFC, b"nfc")
    write(output / "worker-1" / "stepa" / NFD, b"nfd")
    write(output / "worker-0" / "stepd" / NFC / "a", b"1")  # two directories on the way
    write(output / "worker-1" / "stepd" / NFD / "b", b"2")
    result = scan_parts(str(output), 2)
    assert result.result.checkpoints == []
    reasons = skipped_reasons(result)
    for step in ("stepa", "stepd"):
        assert reasons[step].startswith("conflicting parts, not made into a Checkpoint: file name 'cafe\\u0301") and \
            "after Unicode normalization (NFC)" in reasons[step] and "worker 1's" in reasons[step] and \
            "worker 0's" in reasons[step], reasons[step]


def test_a_path_skipped_in_one_part_and_provided_by_another_is_a_conflict(tmp_path):
    """hostile4 D12: worker 1's fifo or link leaving the checkpoint at `config.json`/`c` was filled
    with worker 0's file (failed before: both checkpoints made)."""
    output = tmp_path / "out"
    write(output / "worker-0" / "s" / "config.json", b"A")
    (output / "worker-1" / "s").mkdir(parents=True)
    os.mkfifo(output / "worker-1" / "s" / "config.json")
    write(output / "worker-1" / "s" / "shard1", b"B")
    write(output / "worker-0" / "t" / "c", b"A")
    write(tmp_path / "outside", b"A2")
    (output / "worker-1" / "t").mkdir(parents=True)
    (output / "worker-1" / "t" / "c").symlink_to(tmp_path / "outside")
    write(output / "worker-0" / "u" / "d" / "a", b"under a link")  # worker 1's `d` is a link: what is under it
    (output / "worker-1" / "u").mkdir(parents=True)
    (output / "worker-1" / "u" / "d").symlink_to("/etc")
    write(output / "worker-0" / "v" / "fine", b"v")  # a skipped entry nobody provides is no conflict
    (output / "worker-1" / "v").mkdir(parents=True)
    os.mkfifo(output / "worker-1" / "v" / "pipe")
    result = scan_parts(str(output), 2)
    assert [m.path for m in result.result.checkpoints] == ["v"]
    reasons = skipped_reasons(result)
    prefix = "conflicting parts, not made into a Checkpoint: "
    assert reasons["s"] == prefix + "'config.json' is provided by worker 0 and skipped in worker 1 (fifo)"
    assert reasons["t"] == prefix + "'c' is provided by worker 0 and skipped in worker 1 (symlink leaves the checkpoint)"
    assert reasons["u"] == prefix + ("'d/a' is provided by worker 0 and skipped in worker 1 ('d') "
                                     "(symlink leaves the checkpoint)")


def test_root_files_skipped_in_one_part_and_provided_by_another_are_a_conflict(tmp_path):
    output = tmp_path / "out"
    write(output / "worker-0" / "config.json", b"A")
    (output / "worker-1").mkdir(parents=True)
    os.mkfifo(output / "worker-1" / "config.json")
    result = scan_parts(str(output), 2)
    assert result.result.checkpoints == []
    assert skipped_reasons(result)["."] == ("conflicting parts, not made into a Checkpoint: 'config.json' is "
                                            "provided by worker 0 and skipped in worker 1 (fifo)")


def test_directories_that_are_twins_across_parts_are_both_skipped_as_in_one_volume(tmp_path):
    """hostile4 D7: `gé` (NFC) in worker 0 and `gé` (NFD) in worker 1 were two silently partial
    checkpoints (failed before); one volume skips both."""
    output = tmp_path / "out"
    write(output / "worker-0" / "g\u00e9" / "a", b"a")
    write(output / "worker-1" / "ge\u0301" / "b", b"b")
    write(output / "worker-0" / "runs" / "\u212a" / "a", b"a")  # not a container: K and KELVIN SIGN in one union
    write(output / "worker-1" / "runs" / "K" / "b", b"b")
    write(output / "worker-1" / "ok" / "c", b"c")
    result = scan_parts(str(output), 2)
    reasons = skipped_reasons(result)
    assert reasons["g\\u00e9"] == ("name is the same name as 'ge\\u0301' after Unicode normalization (NFC); rename "
                                   "one of them (worker 0 has 'g\\u00e9', worker 1 the other)")
    assert reasons["ge\\u0301"].startswith("name is the same name as 'g\\u00e9' after Unicode normalization")
    assert reasons["runs"] == ("conflicting parts, not made into a Checkpoint: file name 'K' is the same name as "
                               "'\\u212a' after Unicode normalization (NFC); rename one of them ('K/b' is worker 1's, "
                               "'\\u212a/a' worker 0's)")
    assert [m.path for m in result.result.checkpoints] == ["ok"]
    # the same two directories in one volume: both skipped with the same words
    shared = scan_directory(merged(output, tmp_path))
    assert {s.path: s.reason.split(" (worker")[0] for s in shared.skipped if s.path.startswith("g")} == \
        {p: r.split(" (worker")[0] for p, r in reasons.items() if p.startswith("g")}


def test_the_entry_limit_is_for_all_parts_together(tmp_path):
    """hostile4 D6: `--max-entries` bounded each part, so N workers held N times as many entries
    (failed before: 2 x 60 files passed a limit of 100)."""
    output = tmp_path / "out"
    for worker in (0, 1):
        for i in range(60):
            write(output / f"worker-{worker}" / "step-1" / f"w{worker}-{i:03d}", b"x")
    proc = agent_process("scan", str(output), "--parts", "2", "--json", "--max-entries", "100")
    assert proc.returncode == REFUSED_EXIT_CODE and proc.stdout == ""  # a refusal: not retried
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"error: {output} (all 2 workers' volumes): more than 100 entries (at ") and \
        "--max-entries" in line, line
    assert len(scan_parts(str(output), 2, max_entries=130).result.checkpoints[0].files) == 60 + 60


def _leaves(paths: list[str]) -> list[str]:
    """The paths no other one is under (the files of one tree, or what its walk skipped)."""
    return [p for p in dict.fromkeys(paths) if not any(q.startswith(p + "/") for q in paths)]


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3)
                          .map("/".join), st.booleans()), max_size=10))
def test_skipped_in_one_worker_and_provided_by_another_is_found_as_pair_by_pair(entries):
    """_skipped_elsewhere (one sorted pass) finds a conflict exactly when some file one worker
    provides is, is under, or is above an entry another worker's scan skipped."""
    from checkpoint_operator.agent.parts import _skipped_elsewhere
    provided: dict[str, int] = {}
    lost: list[tuple[int, str, str]] = []
    for worker in range(3):  # each worker's entries form one tree's leaves, as its walk yields them
        mine = _leaves([p for w, p, _ in entries if w == worker])
        skipped = {p for w, p, s in entries if w == worker and s}
        for path in mine:
            if path in skipped:
                lost.append((worker, path, "fifo"))
            elif not any(q == path or q.startswith(path + "/") or path.startswith(q + "/") for q in provided):
                provided[path] = worker  # the union: no file above or under another (paths_clash)
    expected = any(wp != wl and (p == gone or p.startswith(gone + "/") or gone.startswith(p + "/"))
                   for p, wp in provided.items() for wl, gone, _ in lost)
    assert bool(_skipped_elsewhere(provided, lost)) == expected, (provided, lost)


def _peak_of_the_operator_s_result(output: Path) -> int:
    import tracemalloc
    from checkpoint_operator.agent.parts import PartsStream, parts_output
    tracemalloc.start()
    try:
        scan = parts_output(PartsStream(str(output), 2, workers=1), str(output), "auto")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(not c.manifest.files for c in scan.checkpoints)  # the result lists no files
    return peak


def test_the_union_scan_holds_one_checkpoint_s_manifests_at_a_time(tmp_path):
    """The snapshot of the workers' volumes streams as one volume's does: its memory follows the
    largest checkpoint directory, not the whole output (it held every part's manifests and every
    union to the end: 30 directories took 12 times the memory of one, 9.0 MB; failed before).
    100 files a directory (was 300: a third of the time, tracemalloc slows the scan fivefold): 30
    directories take 1.5-1.7 times the memory of one here, and took 3.2 times before the fix."""
    def output(directories: int) -> Path:
        root = tmp_path / f"out{directories}"
        for worker in (0, 1):
            for d in range(directories):
                rank = root / f"worker-{worker}" / f"step-{d:03d}" / f"rank-{worker}"
                rank.mkdir(parents=True)
                for i in range(100):
                    (rank / f"f{i:03d}").write_bytes(b"")
        return root
    _peak_of_the_operator_s_result(output(2))  # what the first run allocates once (lazy imports, caches)
    one, thirty = _peak_of_the_operator_s_result(output(1)), _peak_of_the_operator_s_result(output(30))
    assert thirty < 2.5 * one, (one, thirty)


def test_more_checkpoints_than_a_result_reports_keeps_the_newest_and_names_the_rest(tmp_path, monkeypatch):
    """As one volume's scan (hostile5 L3): past the checkpoints one result reports, the union scan
    failed as a whole (AgentError; the snapshot retried, the same error each time, no Checkpoint was
    made). Now the root files, those without a step and the highest steps that fit are taken, the
    rest are skipped entries with one reason (the output volumes are then kept). Failed before."""
    from checkpoint_operator.agent import parts
    monkeypatch.setattr(parts, "MAX_CHECKPOINTS", 5)
    output = tmp_path / "out"
    for i in range(6):
        write(output / f"worker-{i % 2}" / f"step-{i}" / "w.bin", bytes([i]))
        write(output / f"worker-{(i + 1) % 2}" / f"step-{i}" / f"rank-{(i + 1) % 2}.bin", bytes([i]))
    write(output / "worker-1" / "best" / "w.bin", b"b")
    write(output / "worker-0" / "final.safetensors", b"x")
    scan = parts.parts_output(parts.PartsStream(str(output), 2), str(output), "auto")
    assert [c.manifest.path for c in scan.checkpoints] == [".", "best", "step-3", "step-4", "step-5"]
    assert [c.manifest.fileCount for c in scan.checkpoints] == [1, 1, 2, 2, 2]  # each union whole
    assert [s.path for s in scan.skipped] == ["step-0", "step-1", "step-2"] and scan.skipped_count == 3
    assert all("8 checkpoints (directories and root files), more than the 5 one snapshot reports" in s.reason
               for s in scan.skipped)
    # per worker: each worker's checkpoints count, every worker's root files first
    own = parts.parts_output(parts.PartsStream(str(output), 2, per_worker=True), str(output), "auto", per_worker=True)
    assert [c.manifest.path for c in own.checkpoints] == ["worker-0", "worker-0/step-4", "worker-0/step-5",
                                                          "worker-1/best", "worker-1/step-5"]
    assert own.skipped_count == 14 - 5 and own.skipped[0].path == "worker-0/step-0"


def test_a_snapshot_of_the_workers_volumes_follows_a_sync_of_each(tmp_path, monkeypatch):
    """With volume snapshots (--sync): each worker's volume is a filesystem of its own, mounted at
    DIR/worker-<i>; a syncfs of DIR alone (before) reached none of them, so their snapshots could
    miss bytes still in the page cache. Each is synced now."""
    from checkpoint_operator.agent import durability, scan
    synced: list[str] = []
    monkeypatch.setattr(durability, "sync_filesystem", lambda path: synced.append(path) or "syncfs")
    for rank in (0, 1):
        dcp_rank(tmp_path, "step-1", rank)
    assert scan._synced(str(tmp_path), 2) == "syncfs"
    assert synced == [str(tmp_path / "worker-0"), str(tmp_path / "worker-1")]
    synced.clear()
    assert scan._synced(str(tmp_path)) == "syncfs" and synced == [str(tmp_path)]  # one volume: itself
