"""A group restarted with a volume per worker resumes from the latest checkpoint complete over the
workers' parts (agent/resume_parts.py), on real files: the union is copied into every worker's
volume under `.ckpt-resume/latest`, each file checked against its sha256; a newer step that is
incomplete or conflicting is passed over by name; the workers' own files are never touched."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from checkpoint_operator.agent import resume_parts
from checkpoint_operator.agent.parts import scan_parts
from checkpoint_operator.protocol.errors import AgentError
from agentrun import agent_process
from .test_parts import dcp_rank, write


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def own_files(output: Path) -> dict[str, bytes]:
    return {k: v for k, v in files_of(output).items() if "/.ckpt-resume/" not in k}


def resume(output: Path, parts: int = 2) -> subprocess.CompletedProcess:
    return agent_process("resume-parts", str(output), "--parts", str(parts))


def test_every_worker_gets_the_latest_union_complete_over_the_parts(tmp_path):
    output = tmp_path / "out"
    for step in (1, 2, 3):
        for rank in (0, 1):
            dcp_rank(output, f"step-{step}", rank, size=64 + step)
    (output / "worker-1" / "step-3" / "__1_0.distcp").unlink()  # step 3: rank 1's shard lost
    before = own_files(output)
    proc = resume(output)
    assert proc.returncode == 0, proc.stderr
    assert "passed over step-3: not complete over the workers' parts: __1_0.distcp" in proc.stdout, proc.stdout
    assert "resume: step-2 (step 2, 4 files" in proc.stdout
    union = {**files_of(output / "worker-0" / "step-2"), **files_of(output / "worker-1" / "step-2")}
    assert sorted(union) == [".metadata", "__0_0.distcp", "__1_0.distcp", "config.json"]
    for worker in (0, 1):
        latest = output / f"worker-{worker}" / ".ckpt-resume" / "latest"
        assert latest.is_symlink() and files_of(latest.resolve()) == union
    assert own_files(output) == before  # the workers' own files as they wrote them
    # the copies are the operator's, not checkpoints: the snapshot's scan neither lists nor skips them
    result = scan_parts(str(output), 2).result
    assert [c.path for c in result.checkpoints] == ["step-1", "step-2", "step-3"]
    assert not [s for s in result.skipped if "ckpt-resume" in s.path]


def test_a_conflicting_newer_step_is_passed_over_by_name_and_a_later_run_moves_latest_on(tmp_path):
    output = tmp_path / "out"
    for rank in (0, 1):
        dcp_rank(output, "step-10", rank)
        dcp_rank(output, "step-20", rank, config=b'{"writer": %d}' % rank)  # every rank its own config.json
    proc = resume(output)
    assert proc.returncode == 0, proc.stderr
    assert "passed over step-20: conflicting parts, not made into a Checkpoint: 'config.json' differs between " \
           "worker 0" in proc.stdout, proc.stdout
    first = (output / "worker-0" / ".ckpt-resume" / "latest").resolve()
    assert (first / "__1_0.distcp").read_bytes() == bytes([1]) * 64
    for rank in (0, 1):
        dcp_rank(output, "step-30", rank, size=99)
    assert resume(output).returncode == 0
    for worker in (0, 1):
        resume_dir = output / f"worker-{worker}" / ".ckpt-resume"
        latest = (resume_dir / "latest").resolve()
        assert (latest / "__0_0.distcp").read_bytes() == bytes([0]) * 99
        assert sorted(p.name for p in resume_dir.iterdir()) == sorted(["latest", latest.name])  # the old copy gone


def test_no_complete_union_writes_nothing(tmp_path):
    output = tmp_path / "out"
    dcp_rank(output, "step-1", 0)  # rank 1 never wrote its part
    (output / "worker-1").mkdir()
    proc = resume(output)
    assert proc.returncode == 0 and "nothing written" in proc.stdout, proc.stdout
    assert not list(output.rglob(".ckpt-resume"))
    (output / "worker-1").rmdir()
    proc = resume(output)
    assert proc.returncode == 1 and proc.stderr == f"error: {output}/worker-1: not a directory (worker 1's volume " \
                                                   f"is mounted there)\n", proc.stderr


def test_a_file_that_changed_since_it_was_hashed_fails_and_latest_stays(tmp_path, monkeypatch):
    output = tmp_path / "out"
    for rank in (0, 1):
        dcp_rank(output, "step-1", rank)
    union, _ = resume_parts.latest_union(str(output), 2)
    assert union is not None
    resume_parts.write_union(str(output), 2, union)
    old = (output / "worker-1" / ".ckpt-resume" / "latest").resolve()
    for rank in (0, 1):
        dcp_rank(output, "step-2", rank)
    union, _ = resume_parts.latest_union(str(output), 2)
    assert union is not None and union.manifest.path == "step-2"
    write(output / "worker-1" / "step-2" / "__1_0.distcp", b"rewritten after the hash")
    with pytest.raises(AgentError, match=r"step-2/__1_0.distcp \(worker 1\): changed since it was hashed"):
        resume_parts.write_union(str(output), 2, union)
    for worker in (0, 1):  # worker 0's copy was whole, but no worker moves on alone: all stay on step-1
        resume_dir = output / f"worker-{worker}" / ".ckpt-resume"
        assert (resume_dir / "latest").resolve().name == old.name
        assert sorted(p.name for p in resume_dir.iterdir()) == sorted(["latest", old.name])


@pytest.mark.parametrize("planted", ["link", "file"])
def test_a_planted_resume_directory_is_refused_and_no_worker_s_files_are_touched(tmp_path, planted):
    """A worker's .ckpt-resume that is a link (to another worker's checkpoint: every volume is mounted
    in the resume pod) would get the copies and the removal of 'earlier copies' there (failed before:
    worker 1's step-1 files removed). Refused, naming it; nothing is written or removed anywhere."""
    output = tmp_path / "out"
    for rank in (0, 1):
        dcp_rank(output, "step-1", rank)
    write(output / "worker-1" / "step-1" / "notes.txt", b"worker 1's own")
    target = output / "worker-0" / ".ckpt-resume"
    if planted == "link":
        target.symlink_to(output / "worker-1" / "step-1")
    else:
        write(target, b"not a directory")
    before = files_of(output)
    proc = resume(output)
    assert proc.returncode == 1 and "worker 0's .ckpt-resume is a link or a file" in proc.stderr, proc.stderr
    assert files_of(output) == before
    assert not (output / "worker-1" / ".ckpt-resume").exists()


def test_only_the_step_s_own_names_are_removed_and_the_kept_copy_stays(tmp_path):
    """hostile6 R1: the removal of earlier copies took everything in `.ckpt-resume/` that was not the new
    copy (a file of the trainer's own went without a line). Now only the names this step writes go, the
    copy named by --keep (the one the operator recorded last) stays, and anything else is said."""
    output = tmp_path / "out"
    for rank in (0, 1):
        dcp_rank(output, "step-1", rank)
    first = resume(output)
    assert first.returncode == 0, first.stderr
    earlier = (output / "worker-0" / ".ckpt-resume" / "latest").resolve().name
    for rank in (0, 1):
        dcp_rank(output, "step-2", rank, size=70)
    (output / "worker-1" / ".ckpt-resume" / "notes.txt").write_text("the trainer's own")
    stray = output / "worker-0" / ".ckpt-resume" / ("f" * 64)  # a copy of an older run: the step's name
    stray.mkdir()
    proc = agent_process("resume-parts", str(output), "--parts", "2", "--keep", f"sha256:{earlier}")
    assert proc.returncode == 0, proc.stderr
    newer = (output / "worker-0" / ".ckpt-resume" / "latest").resolve().name
    assert newer != earlier
    for worker in (0, 1):
        names = sorted(p.name for p in (output / f"worker-{worker}" / ".ckpt-resume").iterdir())
        assert names == sorted([earlier, newer, "latest"] + (["notes.txt"] if worker else []))
    assert "left notes.txt in worker 1's .ckpt-resume: not written by the resume step" in proc.stdout


def test_a_latest_that_is_not_a_link_is_refused_before_anything_is_written(tmp_path):
    """hostile6 R2: a directory where worker 1's `latest` goes failed the step after worker 0 had switched."""
    output = tmp_path / "out"
    for rank in (0, 1):
        dcp_rank(output, "step-1", rank)
    (output / "worker-1" / ".ckpt-resume" / "latest").mkdir(parents=True)
    proc = resume(output)
    assert proc.returncode != 0 and "worker 1's .ckpt-resume/latest was not written by the resume step" in proc.stderr
    assert not (output / "worker-0" / ".ckpt-resume").exists()  # nothing written anywhere


# --- H9-3: parts sealed for a union never published are given back -----------------------------------

def test_only_parts_of_directories_without_a_checkpoint_are_reopened():
    sealed = {0: ["step-1", "step-2", "../x", ".ckpt-live"], 1: ["step-1"], 2: []}
    assert resume_parts.parts_to_reopen(sealed, ["step-1"]) == {0: ["step-2"]}
    assert resume_parts.parts_to_reopen(sealed, []) == {0: ["step-1", "step-2"], 1: ["step-1"]}
    assert resume_parts.parts_to_reopen(sealed, ["step-1", "step-2"]) == {}


def test_a_reopened_entry_gets_back_the_write_bits_it_had_and_nothing_else():
    assert resume_parts.reopened_mode(0o100444, 0o644) == 0o644
    assert resume_parts.reopened_mode(0o40555, 0o775) == 0o775
    assert resume_parts.reopened_mode(0o104555, 0o4777) == 0o4777   # its setuid is its own, kept; none added
    assert resume_parts.reopened_mode(0o100444, 0o4666) == 0o666    # only write bits come from the record
    assert resume_parts.reopened_mode(0o100444, None) == 0o644      # no record (an older sidecar): the owner's
    assert resume_parts.reopened_mode(0o100640, 0o600) == 0o640     # nothing is taken away


def _seal_part(volume: Path, directory: str, worker: int, umask_modes: tuple[int, int] = (0o775, 0o664)) -> None:
    from checkpoint_operator.agent.live_watch import Watcher
    root = volume / directory
    write(root / "model.bin", bytes([worker]) * 64)
    write(root / "sub" / "opt.bin", b"o" * 32)
    for d in (root, root / "sub"):
        d.chmod(umask_modes[0])
    for f in (root / "model.bin", root / "sub" / "opt.bin"):
        f.chmod(umask_modes[1])
    watcher = Watcher(str(volume), part=worker, emit=lambda e: None)
    listed = __import__("checkpoint_operator.agent.live_sealing", fromlist=["list_one"]).list_one(
        str(volume), directory, __import__("checkpoint_operator.agent.tree", fromlist=["EntryBudget"]).EntryBudget(1000))
    assert watcher.seal(listed, "renamed into place") is not None


def modes_of(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mode & 0o7777 for p in [root, *sorted(root.rglob("*"))]}


def test_the_resume_step_gives_back_unpublished_parts_as_the_trainer_had_them_and_leaves_published_ones(tmp_path):
    """H9-3 on real files: worker 0 sealed its part of step-1 (published) and of step-2 (worker 1 died
    before its part: no Checkpoint); the resume step gives step-2 back with the modes it had (0775/0664)
    and drops it from the sidecar's record (a restarted sidecar would seal it again at its start);
    step-1 stays sealed and recorded; no byte changes."""
    out = tmp_path / "out"
    _seal_part(out / "worker-0", "step-1", 0)
    _seal_part(out / "worker-0", "step-2", 0)
    _seal_part(out / "worker-1", "step-1", 1)
    (out / "worker-1" / "step-2").mkdir()  # cut short: never sealed
    assert all(m & 0o222 == 0 for m in modes_of(out / "worker-0" / "step-2").values())
    before = {k: v for k, v in own_files(out).items() if "/.ckpt-live/" not in k}
    proc = agent_process("resume-parts", str(out), "--parts", "2", "--published", "step-1")
    assert proc.returncode == 0, proc.stderr
    assert "worker 0: step-2" in proc.stdout
    assert modes_of(out / "worker-0" / "step-2") == {".": 0o775, "sub": 0o775, "model.bin": 0o664,
                                                     "sub/opt.bin": 0o664}
    for worker in (0, 1):
        assert all(m & 0o222 == 0 for m in modes_of(out / f"worker-{worker}" / "step-1").values())
    assert {k: v for k, v in own_files(out).items() if "/.ckpt-live/" not in k} == before
    import json
    records = json.loads((out / "worker-0" / ".ckpt-live" / "sealed.json").read_text())
    assert [r["path"] for r in records] == ["step-1"]


def test_a_link_in_place_of_an_unpublished_part_sends_no_chmod_elsewhere(tmp_path):
    out = tmp_path / "out"
    _seal_part(out / "worker-0", "step-2", 0)
    _seal_part(out / "worker-1", "step-1", 1)  # published
    import shutil
    shutil.rmtree(out / "worker-0" / "step-2", onerror=lambda f, p, e: (os_chmod_parent(p), f(p)))
    (out / "worker-0" / "step-2").symlink_to(out / "worker-1" / "step-1")
    proc = agent_process("resume-parts", str(out), "--parts", "2", "--published", "step-1")
    assert proc.returncode == 0, proc.stderr
    assert all(m & 0o222 == 0 for m in modes_of(out / "worker-1" / "step-1").values())


def os_chmod_parent(path: str) -> None:
    import os
    os.chmod(os.path.dirname(path), 0o755)


def test_only_the_write_bits_the_sidecar_took_are_given_back_and_an_older_record_gets_the_owner_s(tmp_path):
    """The s3 store's sidecar takes no write bits (its record's modes are empty): nothing changes there;
    a record of an older sidecar (no modes at all) gets the owner's write bit back."""
    import json
    out = tmp_path / "out"
    _seal_part(out / "worker-0", "step-2", 0)
    _seal_part(out / "worker-0", "step-3", 0)
    state = out / "worker-0" / ".ckpt-live" / "sealed.json"
    records = json.loads(state.read_text())
    for record in records:
        if record["path"] == "step-2":
            record["modes"] = {}
        else:
            del record["modes"]
    state.write_text(json.dumps(records))
    (out / "worker-1").mkdir()
    proc = agent_process("resume-parts", str(out), "--parts", "2")
    assert proc.returncode == 0, proc.stderr
    assert all(m & 0o222 == 0 for m in modes_of(out / "worker-0" / "step-2").values())
    assert modes_of(out / "worker-0" / "step-3") == {".": 0o755, "sub": 0o755, "model.bin": 0o644,
                                                     "sub/opt.bin": 0o644}
    assert json.loads(state.read_text()) == []


# --- hostile10: what the give-back must never touch, and what the restarted sidecar must not take -----

def _mode(p: Path) -> int:
    import os
    import stat
    return stat.S_IMODE(os.lstat(p).st_mode)


def _take_write_bits(*paths: Path) -> None:
    for p in paths:
        p.chmod(_mode(p) & ~0o222)


def _record(worker: Path, records: list) -> None:
    import json
    (worker / ".ckpt-live").mkdir(exist_ok=True)
    (worker / ".ckpt-live" / "sealed.json").write_text(json.dumps(records))


def test_a_file_hard_linked_into_a_published_part_stays_read_only(tmp_path, capsys):
    """H10-3: step-9/rank-0.bin is a hard link of published step-1/rank-0.bin (a dedup of an unchanged
    shard), sealed first while still 0644: giving step-9 back must not make the published bytes writable."""
    import os
    w0 = tmp_path / "worker-0"
    (w0 / "step-1").mkdir(parents=True)
    (w0 / "step-9").mkdir()
    (w0 / "step-1" / "rank-0.bin").write_bytes(b"published bytes")
    os.link(w0 / "step-1" / "rank-0.bin", w0 / "step-9" / "rank-0.bin")
    (w0 / "step-9" / "own.bin").write_bytes(b"step 9's own")
    _record(w0, [{"path": "step-9", "digest": "sha256:" + "9" * 64,
                  "modes": {".": 0o755, "rank-0.bin": 0o644, "own.bin": 0o644}},
                 {"path": "step-1", "digest": "sha256:" + "1" * 64, "modes": {".": 0o755, "rank-0.bin": 0o444}}])
    _take_write_bits(w0 / "step-1" / "rank-0.bin", w0 / "step-9" / "own.bin", w0 / "step-1", w0 / "step-9")
    assert resume_parts.reopen_unpublished(str(tmp_path), 1, ["step-1"]) == ["worker 0: step-9"]
    assert _mode(w0 / "step-1" / "rank-0.bin") & 0o222 == 0
    assert _mode(w0 / "step-9" / "own.bin") == 0o644 and _mode(w0 / "step-9") == 0o755  # the rest is given back
    assert "rank-0.bin read-only: it has 2 hard links" in capsys.readouterr().out


@pytest.mark.parametrize("published, forged", [
    ("step-1", "step-1/model"),   # a directory inside a published one
    ("run/step-1", "run"),        # the container of a published one
])
def test_a_forged_record_inside_or_containing_a_published_part_is_not_given_back(tmp_path, published, forged):
    """H10-4: sealed.json is tenant-writable; a record of a path inside a published directory, or one
    containing it, is not string-equal to it but would walk into its files."""
    w0 = tmp_path / "worker-0"
    inner = w0 / published / "model"
    inner.mkdir(parents=True)
    f = inner / "weights.bin"
    f.write_bytes(b"published")
    _take_write_bits(f, inner, w0 / published)
    _record(w0, [{"path": published, "digest": "sha256:" + "1" * 64, "modes": {}},
                 {"path": forged, "digest": "sha256:" + "2" * 64}])  # no modes: the owner's write bit
    assert resume_parts.reopen_unpublished(str(tmp_path), 1, [published]) == []
    assert _mode(f) & 0o222 == 0 and _mode(inner) & 0o222 == 0
    assert resume_parts.parts_to_reopen({0: [forged, "step-10", "run-2"]}, [published]) == {0: ["run-2", "step-10"]}


def test_the_record_of_many_parts_is_read_once_each_not_once_per_part(tmp_path, monkeypatch):
    """H10-6: sealed.json is tenant-writable and read up to 256 MiB: each reopened path's record is found
    by a lookup, not by a scan of all the records (quadratic: 20,000 records took seconds). Counted:
    how often a record's path is read."""
    reads = [0]

    class Counted(dict):
        def __getitem__(self, key):
            if key == "path":
                reads[0] += 1
            return super().__getitem__(key)

    n = 2000
    (tmp_path / "worker-0" / ".ckpt-live").mkdir(parents=True)
    monkeypatch.setattr(resume_parts, "_sealed_records", lambda d: [Counted(path=f"s-{i}") for i in range(n)])
    resume_parts.reopen_unpublished(str(tmp_path), 1, [])
    assert reads[0] <= 10 * n, f"{reads[0]} reads of a record's path for {n} records (quadratic: ~{n * n // 2})"


def _two_workers_step1_published_step2_part0_only(tmp_path: Path) -> Path:
    import time
    out = tmp_path / "out"
    dcp_rank(out, "step-1", 0)
    dcp_rank(out, "step-1", 1)
    w0 = out / "worker-0"
    (w0 / "step-2").mkdir()
    (w0 / "step-2" / "rank-0.bin").write_bytes(b"worker 0's part of step 2")
    _record(w0, [{"path": "step-1", "digest": "sha256:" + "1" * 64, "modes": {}},
                 {"path": "step-2", "digest": "sha256:" + "2" * 64, "modes": {".": 0o755, "rank-0.bin": 0o644}}])
    (out / "worker-1" / ".ckpt-live").mkdir()
    time.sleep(0.2)
    _take_write_bits(w0 / "step-2" / "rank-0.bin", w0 / "step-2")  # sealed (worker 1 died before its part)
    time.sleep(0.2)
    return out


def test_a_part_given_back_by_the_resume_step_is_not_taken_for_a_rename_by_the_restarted_sidecar(tmp_path):
    """H10-2: the resume step gives step-2 back (its chmod moves the directory's ctime) and writes the
    resume copy (its mkdir of .ckpt-resume moves the volume root's mtime): to the ctime rule that is a
    rename into place. The restarted sidecar must not seal step-2 again at its first look (the restarted
    trainer writing it would get EACCES: H9-3 undone): the step records what it gave back, by inode."""
    from checkpoint_operator.agent import live_sealing
    from checkpoint_operator.agent.live_watch import Watcher
    from checkpoint_operator.agent.tree import EntryBudget, entry_limit
    out = _two_workers_step1_published_step2_part0_only(tmp_path)
    union, _ = resume_parts.latest_union(str(out), 2)
    assert resume_parts.reopen_unpublished(str(out), 2, ["step-1"]) == ["worker 0: step-2"]
    assert union is not None
    resume_parts.write_union(str(out), 2, union)
    assert (out / "worker-0" / ".ckpt-resume").is_dir() and _mode(out / "worker-0" / "step-2") & 0o200
    listed = live_sealing.list_one(str(out / "worker-0"), "step-2", EntryBudget(entry_limit(None), what="t"))
    assert listed is not None and listed.renamed_by_ctime  # what the ctime rule alone says: a rename
    watcher = Watcher(str(out / "worker-0"), part=0, emit=lambda e: None)
    assert watcher.given_back == {"step-2": listed.inode[1]}
    assert not live_sealing.renamed_at_first_look(listed, watcher.given_back)
    # A directory renamed into place since is another inode: the rename sign holds for it again.
    assert live_sealing.renamed_at_first_look(listed, {"step-2": listed.inode[1] + 1})
    assert live_sealing.given_back_inodes([{"path": "a", "inode": 3}, {"path": "b", "inode": True},
                                           {"path": 1, "inode": 2}, "x"]) == {"a": 3}


def test_a_path_swapped_for_a_symlink_after_its_lstat_is_not_given_back(tmp_path):
    """The volume is the trainer's: between the lstat and the chmod, a part's file swapped for a
    symlink into a published checkpoint gave that published file its write bits (chmod follows
    links). Now the file is opened without following links and checked to be the one seen."""
    import os
    import stat
    from checkpoint_operator.agent.resume_parts import chmod_same_inode
    published = tmp_path / "step-1" / "rank-0.bin"
    published.parent.mkdir()
    published.write_bytes(b"published")
    published.chmod(0o444)
    part = tmp_path / "step-2" / "rank-0.bin"
    part.parent.mkdir()
    part.write_bytes(b"part")
    part.chmod(0o444)
    seen = os.lstat(part)
    part.unlink()
    part.symlink_to(published)  # the swap
    with pytest.raises(OSError):
        chmod_same_inode(str(part), seen, 0o644)
    assert stat.S_IMODE(published.stat().st_mode) == 0o444
    other = tmp_path / "step-2" / "other.bin"  # replaced by another file: not the inode seen
    other.write_bytes(b"x")
    seen_other = os.lstat(other)
    other.rename(tmp_path / "step-2" / "kept.bin")  # (kept: its inode number is not reused)
    other.write_bytes(b"y")
    other.chmod(0o444)
    with pytest.raises(OSError):
        chmod_same_inode(str(other), seen_other, 0o644)
    assert stat.S_IMODE(other.stat().st_mode) == 0o444
    fresh = os.lstat(other)
    chmod_same_inode(str(other), fresh, 0o644)
    assert stat.S_IMODE(other.stat().st_mode) == 0o644


def _two_workers_one_published(tmp_path):
    out = tmp_path / "out"
    _seal_part(out / "worker-0", "step-1", 0)
    _seal_part(out / "worker-0", "step-2", 0)
    _seal_part(out / "worker-1", "step-1", 1)
    (out / "worker-1" / "step-2").mkdir()  # cut short: never sealed
    return out


def test_3000_published_directories_in_the_one_argument_the_operator_passes(tmp_path):
    """trust2 B: the command the operator builds with 3,000 published directories (one argument,
    protocol/published.py) runs: step-1 (among them) stays sealed, step-2 (not published) is given back.
    Failed before: 3,000 `--published=DIR` arguments, refused by the admission policy past 300."""
    from checkpoint_operator.logic import agent_commands
    out = _two_workers_one_published(tmp_path)
    published = [f"step-{i}" for i in range(3, 3002)] + ["step-1"]
    command = agent_commands.resume_parts(str(out), parts=2, published=published)
    assert len(published) == 3000 and len(command) < 300
    proc = agent_process(*command[command.index("resume-parts"):])
    assert proc.returncode == 0, proc.stderr
    assert modes_of(out / "worker-0" / "step-2")["model.bin"] == 0o664
    for worker in (0, 1):
        assert all(m & 0o222 == 0 for m in modes_of(out / f"worker-{worker}" / "step-1").values())


def test_keep_sealed_gives_nothing_back_and_a_broken_list_fails_the_step(tmp_path):
    """--keep-sealed (the list did not fit): every sealed part stays sealed. A list that does not decode is
    never read as "nothing published" (which would give published parts back): the step fails."""
    out = _two_workers_one_published(tmp_path)
    proc = agent_process("resume-parts", str(out), "--parts", "2", "--keep-sealed")
    assert proc.returncode == 0, proc.stderr
    assert all(m & 0o222 == 0 for m in modes_of(out / "worker-0" / "step-2").values())
    for broken in ("eNoDAAAAAAE-cut", "not-zlib", "e" * 10):
        proc = agent_process("resume-parts", str(out), "--parts", "2", f"--published-list={broken}")
        assert proc.returncode != 0 and "--published-list" in proc.stderr + proc.stdout, (broken, proc.stdout)
    assert all(m & 0o222 == 0 for m in modes_of(out / "worker-0" / "step-2").values())
