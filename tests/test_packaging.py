"""The operator, its agent and the kubectl plugin run with only the package's own dependencies:
local mode (checkpoint_operator/local/ and the `local` extra: kmock's API emulator, the CEL
library) is for development machines, and the operator image goes without it (.dockerignore).

Run as a script, this file is the probe: it makes every third-party module that the base
dependencies of pyproject.toml do not bring unimportable (as on a machine where only
`pip install checkpoint-operator` ran), imports every module outside local/, and runs commands.
The forbidden contract in pyproject.toml (import-linter) says the same of the import graph."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import json
import pkgutil
import subprocess
import sys
import tomllib
import types
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def base_requirement_closure() -> set[str]:
    """Normalized names of the distributions `pip install checkpoint-operator` (no extras) brings,
    read from pyproject.toml, then from each installed dependency's metadata, recursively."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = [Requirement(text) for text in project["dependencies"]]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue  # an optional dependency that is not installed: nothing of it can be imported either
        for text in requires:
            nested = Requirement(text)
            if nested.marker is None or nested.marker.evaluate({"extra": ""}):
                pending.append(nested)
    return seen


def importable_top_levels(closure: set[str]) -> set[str]:
    """Top-level import names provided by those distributions."""
    from packaging.utils import canonicalize_name

    return {module for module, dists in metadata.packages_distributions().items()
            if any(canonicalize_name(d) in closure for d in dists)}


class OnlyBaseDependencies(importlib.abc.MetaPathFinder):
    """Stands in front of the import system's finders and finds nothing that a base install would
    not have: third-party modules outside the closure, and checkpoint_operator.local too when the
    image is played (its .dockerignore leaves it out). Not found, not failing: code that probes
    for an optional module (`find_spec`) sees it absent, as it would be."""

    def __init__(self, finders: list, allowed: set[str], without_local_package: bool) -> None:
        self.finders = finders
        self.allowed = allowed
        self.without_local_package = without_local_package
        self.refused: set[str] = set()

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        top = fullname.split(".")[0]
        if top.startswith("_sysconfigdata"):  # the interpreter's own build data (sysconfig), named per platform
            top = "sysconfig"
        local = fullname == "checkpoint_operator.local" or fullname.startswith("checkpoint_operator.local.")
        if (top not in self.allowed and top not in sys.stdlib_module_names and top != "checkpoint_operator") \
                or (local and self.without_local_package):
            self.refused.add(fullname)
            return None
        for finder in self.finders:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                return spec
        return None


def non_local_modules() -> list[str]:
    import checkpoint_operator

    names = []
    for info in pkgutil.walk_packages(checkpoint_operator.__path__, "checkpoint_operator.",
                                      onerror=lambda name: None):
        if info.name.startswith("checkpoint_operator.local") or info.name.endswith(".__main__"):
            continue
        names.append(info.name)
    return names


def probe(without_local_package: bool, scan_dir: str) -> dict[str, object]:
    """In a fresh interpreter: import everything outside local/ and run the CLI's commands."""
    import contextlib
    import io

    closure = base_requirement_closure()
    blocker = OnlyBaseDependencies(list(sys.meta_path), importable_top_levels(closure), without_local_package)
    sys.meta_path[:] = [blocker]
    imported = []
    for name in non_local_modules():
        importlib.import_module(name)
        imported.append(name)

    from checkpoint_operator.cli import build_parser, main

    import argparse

    commands = sorted(next(action.choices for action in build_parser()._actions
                           if isinstance(action, argparse._SubParsersAction)))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        scan = main(["agent", "scan", scan_dir, "--json"])
        local = main(["local", "run", "-f", "examples/local/"]) if "local" in commands else None
    return {"closure": sorted(closure), "imported": imported, "commands": commands, "scan": scan,
            "scanned": json.loads(out.getvalue().splitlines()[0]), "local": local, "stderr": err.getvalue(),
            "refused": sorted(blocker.refused)}


def run_probe(tmp_path: Path, without_local_package: bool) -> dict:
    checkpoint = tmp_path / "out" / "step-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    args = [sys.executable, __file__, str(tmp_path / "out")] + (["--without-local-package"] if without_local_package else [])
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def test_a_base_install_runs_the_operator_agent_and_plugin_and_says_what_local_mode_needs(tmp_path: Path) -> None:
    report = run_probe(tmp_path, without_local_package=False)
    assert "kmock" not in report["closure"] and "common-expression-language" not in report["closure"]
    assert {"kopf", "kubernetes", "boto3", "pydantic"} <= set(report["closure"])
    for module in ("checkpoint_operator.main", "checkpoint_operator.agent.cli", "checkpoint_operator.plugin.cli",
                   "checkpoint_operator.reconcile.trainingjob", "checkpoint_operator.storage.s3"):
        assert module in report["imported"]
    assert {"run", "agent", "crds", "ckpt", "local"} <= set(report["commands"])
    assert report["scan"] == 0 and [c["path"] for c in report["scanned"]["checkpoints"]] == ["step-1"]
    # local mode, asked for without its extra: one line naming what to install
    assert report["local"] == 2
    assert report["stderr"].startswith("error: local mode needs the 'local' extra (not installed: kmock, cel)")
    assert "pip install 'checkpoint-operator[local]'" in report["stderr"]
    assert report["stderr"].count("\n") == 1
    assert "kmock" in report["refused"]


def test_the_image_without_the_local_package_has_no_local_command(tmp_path: Path) -> None:
    report = run_probe(tmp_path, without_local_package=True)
    assert "local" not in report["commands"] and {"run", "agent", "crds", "ckpt"} <= set(report["commands"])
    assert report["scan"] == 0 and report["local"] is None


def test_the_local_extra_holds_what_local_mode_imports_and_dev_includes_it() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"kmock==0.8", "common-expression-language>=0.10"} <= set(extras["local"])
    assert "checkpoint-operator[local]" in extras["dev"]
    base = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert "kmock" not in base and "common-expression-language" not in base


def test_the_readmes_first_command_installs_local_mode_and_the_second_the_tests() -> None:
    """The two commands of the README: what tests/local/test_run.py runs needs the `local`
    extra, and .ci/run's default tier is the second command exactly."""
    readme = (ROOT / "README.md").read_text()
    first = "pip install -e '.[local]' && checkpoint-operator local run -f examples/local/"
    second = "pip install -e '.[dev]' && python -m pytest"
    assert f"\n{first}\n" in readme and f"\n{second}\n" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install --quiet -e '.[dev]'" in ci and "\n    python -m pytest\n" in ci


def test_the_image_build_context_leaves_local_mode_out() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "operator/checkpoint_operator/local/" in ignored
    assert ignored.index("operator/checkpoint_operator/local/") > ignored.index("!operator/")


if __name__ == "__main__":
    print(json.dumps(probe("--without-local-package" in sys.argv[2:], sys.argv[1])))
