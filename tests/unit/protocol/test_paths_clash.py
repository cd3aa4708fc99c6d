"""protocol/manifest.py paths_clash: the names rule over a checkpoint's paths (file and directory,
Unicode-normalisation twins), the same answer as a pair-by-pair reference, in time linear in the
paths whatever their depth (hostile4 D5: the prefix-by-prefix walk was depth² per path)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import unicodedata

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from checkpoint_operator.protocol.manifest import paths_clash

# Components chosen to collide: NFC/NFD spellings of é, KELVIN SIGN (K after NFC), prefixes of each other.
COMPONENTS = ["a", "ab", "K", "\u212a", "caf\u00e9", "cafe\u0301", "e", "x"]


def reference_problem(paths: list[str]) -> bool:
    """Whether any two paths clash, pair by pair, prefix by prefix (what the rule says)."""
    if len(set(paths)) != len(paths):
        return True
    for p, q in itertools.permutations(paths, 2):
        if q.startswith(p + "/"):
            return True  # p is a file and a directory
        ps, qs = p.split("/"), q.split("/")
        for k in range(1, min(len(ps), len(qs)) + 1):
            a, b = "/".join(ps[:k]), "/".join(qs[:k])
            if a != b and unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b):
                return True
    return False


paths_lists = st.lists(st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4).map("/".join),
                       min_size=1, max_size=8)


@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths_lists)
@example(["caf\u00e9/x/a", "caf\u00e9/x", "cafe\u0301/b"])  # the twins are not neighbours in byte order
@example(["a/K/x", "a/ab", "a/\u212a/y"])
@example(["x", "x/a", "x/ab"])
def test_the_answer_is_the_pair_by_pair_rule(paths):
    clash = paths_clash(paths)
    assert (clash is not None) == reference_problem(paths), (paths, clash)
    if clash is not None and clash.other is not None:
        assert {clash.path, clash.other} <= set(paths)  # both named as listed: a caller can say where each came from


def test_the_clash_names_both_paths():
    clash = paths_clash(["stepb/x", "other", "stepb/x/y"])
    assert clash is not None and (clash.path, clash.other) == ("stepb/x", "stepb/x/y")
    assert clash.problem == "'stepb/x' is both a file and a directory ('stepb/x/y')"
    twin = paths_clash(["caf\u00e9", "z", "cafe\u0301"])
    assert twin is not None and (twin.path, twin.other) == ("cafe\u0301", "caf\u00e9")
    assert "after Unicode normalization (NFC)" in twin.problem


DEEP = """
import hashlib, json, resource, sys
from checkpoint_operator.protocol.manifest import FileEntry, digest_of, parse_manifest
limit, depth, count = map(int, sys.argv[1:])
resource.setrlimit(resource.RLIMIT_CPU, (limit, limit))
prefix = "/".join(["a"] * depth)
files = [FileEntry(f"{prefix}/f{i}", 0, hashlib.sha256(b"").hexdigest()) for i in range(count)]
body = json.dumps({"version": 1, "path": ".", "files": [f.model_dump() for f in files], "sizeBytes": 0,
                   "fileCount": count, "digest": digest_of(files)})
print(len(parse_manifest(body, "deep").files))
"""


def test_a_deep_manifest_parses_within_a_generous_cpu_budget():
    """2,000 files at depth 1,000 (a 4 MB manifest the scanner writes): ~0.2 s of CPU here, 17 s
    before (bench/manifest_depth.py). The bound is the kernel's CPU limit on the process, 50x the
    figure: load on the machine does not count, only the work done (not a timed assertion)."""
    limit = 10
    proc = subprocess.run([sys.executable, "-c", DEEP, str(limit), "1000", "2000"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"killed past {limit} s of CPU (signal {-proc.returncode}): {proc.stderr[-500:]}"
    assert proc.stdout.split() == ["2000"]
