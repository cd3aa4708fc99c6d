"""Names derived from a job's output (issue 18 item 11): an injective, deterministic function of
(prefix, directory) that depends on nothing else (logic/naming.py)."""

import itertools
import random
import re

import pytest

from checkpoint_operator.logic.naming import (AGENT_POD_COMPONENTS, MAX_NAME, NAME_HASH_LENGTH, agent_pod_name, bounded_name,
                                             checkpoint_name, sanitize)

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_valid(name: str) -> bool:
    return len(name) <= MAX_NAME and DNS1123_SUBDOMAIN.match(name) is not None


@pytest.mark.parametrize("directory,expected", [
    ("step-2000", "job.step-2000"),
    ("checkpoint-100", "job.checkpoint-100"),
    ("best", "job.best"),
    ("0", "job.0"),
])
def test_a_clean_directory_is_named_as_it_is(directory, expected):
    assert checkpoint_name("job", directory) == expected


def test_the_root_files_are_named_by_the_prefix_alone():
    assert checkpoint_name("job", ".") == "job"
    assert checkpoint_name("llama-sft", ".") == "llama-sft"


@pytest.mark.parametrize("directory,readable", [
    ("Step_2000", "step-2000"),
    ("global_step20", "global-step20"),
    ("model.v2", "model-v2"),
    ("step-1-", "step-1"),
    ("-step-1", "step-1"),
    ("ümlaut dir", "mlaut-dir"),
    ("___", "x"),
    ("模型", "x"),
])
def test_any_other_directory_gets_a_readable_part_and_a_hash(directory, readable):
    name = checkpoint_name("job", directory)
    head, part, digest = name.split(".")
    assert (head, part) == ("job", readable)
    assert re.fullmatch(f"[0-9a-f]{{{NAME_HASH_LENGTH}}}", digest)
    assert is_valid(name)


def test_the_example_of_the_issue_no_longer_collides():
    # prefix x + directory a-b and prefix x-a + directory b both derived x-a-b before.
    assert checkpoint_name("x", "a-b") == "x.a-b"
    assert checkpoint_name("x-a", "b") == "x-a.b"


def test_names_do_not_depend_on_what_exists_or_on_order():
    dirs = ["step-1", "Step_1", "STEP.1", "step_1"]
    first = [checkpoint_name("job", d) for d in dirs]
    assert first == [checkpoint_name("job", d) for d in dirs]  # the same in every run
    assert len(set(first)) == len(dirs)
    assert first[0] == "job.step-1"  # the clean one keeps its plain name whatever else is there


def test_a_layout_files_entry_reads_without_its_extension_and_stays_distinct():
    pt, binary = checkpoint_name("job", "step-100.pt", is_file=True), checkpoint_name("job", "step-100.bin", is_file=True)
    assert pt.startswith("job.step-100.") and binary.startswith("job.step-100.") and pt != binary
    assert checkpoint_name("job", "step-100", is_file=True) == "job.step-100"  # a file without extension: clean


def test_long_names_are_bounded_keep_the_hash_and_stay_distinct():
    prefix = "p" * 253  # a TrainingJob's name may be this long
    names = {checkpoint_name(prefix, d) for d in ("step-1", "step-2", "Step_1", ".")}
    assert len(names) == 4 and all(is_valid(n) for n in names)
    assert checkpoint_name(prefix, ".") == prefix
    a = checkpoint_name("p" * 240, "step-" + "1" * 30)
    b = checkpoint_name("p" * 240, "step-" + "1" * 29 + "2")
    assert a != b and is_valid(a) and is_valid(b) and a.count(".") == 2
    # two long prefixes that share their first 240 characters still differ (the hash covers the prefix)
    assert checkpoint_name("q" * 241 + "a", "Step_1") != checkpoint_name("q" * 241 + "b", "Step_1")


def test_the_three_forms_are_told_apart_by_their_dots():
    assert checkpoint_name("job", ".").count(".") == 0
    assert checkpoint_name("job", "a-b").count(".") == 1
    assert checkpoint_name("job", "A.B").count(".") == 2
    # a clean directory that looks like a hash is still the one-dot form, never the two-dot one
    digest = checkpoint_name("job", "Step_1").split(".")[-1]
    assert checkpoint_name("job", digest) == f"job.{digest}"


def test_injective_over_many_prefixes_and_directories():
    rng = random.Random(18)
    alphabet = "ab-_.A1é"
    prefixes = ["x", "x-a", "a", "a-b", "x-a-b", "p" * 250, "p" * 249, "job"]
    directories = {"."} | {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(3000)}
    directories = {d for d in directories if d not in ("..",) and not d.startswith(".") or d == "."}
    seen: dict[str, tuple[str, str]] = {}
    for prefix, directory in itertools.product(prefixes, sorted(directories)):
        name = checkpoint_name(prefix, directory)
        assert is_valid(name), (prefix, directory, name)
        assert seen.setdefault(name, (prefix, directory)) == (prefix, directory), name
    assert len(seen) == len(prefixes) * len(directories)


def test_bounded_name_keeps_short_names_and_shortens_long_ones():
    assert bounded_name("short", 63) == "short"
    long = bounded_name("x" * 100, 63)
    assert len(long) == 63 and long != bounded_name("x" * 99 + "y", 63)


def test_sanitize():
    assert sanitize("--A b__C--") == "a-b-c"


def test_the_docs_examples_are_the_names_the_code_makes():
    """docs/concepts.md's table of names: each full example there is what checkpoint_name gives."""
    from pathlib import Path
    page = (Path(__file__).resolve().parents[3] / "docs" / "concepts.md").read_text()
    examples = re.findall(r"`([A-Za-z0-9_.-]+)` → `(pretrain\.[a-z0-9.-]+)`", page)
    assert ("Step_300", "pretrain.step-300.b47a04cb4b") in examples
    for directory, name in examples:
        assert checkpoint_name("pretrain", directory) == name, directory


@pytest.mark.parametrize("component", AGENT_POD_COMPONENTS)
def test_an_agent_pod_name_always_ends_with_its_component(component):
    """The chart's exec fence knows agent pods by that suffix alone (a pods/exec request has the
    pod's name, not its labels): a long Checkpoint name must not cut it off (hostile5 H3/H4)."""
    assert agent_pod_name("ckpt-a", component) == f"ckpt-a-{component}"
    names = {agent_pod_name(parent, component) for parent in ("x" * 253, "x" * 252 + "y", "y" * 240)}
    assert len(names) == 3
    for name in names:
        assert len(name) <= MAX_NAME and name.endswith(f"-{component}")
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name)


def test_the_pods_a_push_verify_or_pull_is_served_by_keep_their_suffix():
    from checkpoint_operator.logic import transfers
    long = "a" * 250
    assert [transfers.upload_pod_name(long)[-7:], transfers.verify_pod_name(long)[-7:],
            transfers.pull_pod_name(long)[-5:]] == ["-upload", "-verify", "-pull"]
