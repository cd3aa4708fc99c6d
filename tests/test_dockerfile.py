"""Static checks of the Dockerfile and .dockerignore.

No container engine exists on the machines that run these tests, so the image is not built
here: the build itself (and running the image with a read-only root filesystem as user 65532)
is covered by the e2e suite (e2e/run.sh, .github/workflows/e2e.yaml), which builds the image,
loads it into kind and installs the chart with it.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"

    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name, instructions=[]))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, got {keyword}"
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


@pytest.fixture(scope="module")
def final(stages) -> Stage:
    return stages[-1]


def test_multi_stage_with_slim_python_final(stages, final):
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    assert final.base == "python:3.11-slim"
    assert all(s.base.startswith("python:3.11") for s in stages), "the venv must be built on the same Python"


def test_final_stage_takes_only_the_venv_from_the_builder(final):
    copies = final.all("COPY")
    assert copies, "the final stage copies nothing"
    for copy in copies:
        assert copy.args.startswith("--from=builder "), f"final stage copies from the build context: {copy.args}"
    assert not final.all("ADD")
    assert "/opt/venv" in copies[0].args


def test_runs_as_numeric_non_root_user(final):
    users = final.all("USER")
    assert users, "the final stage sets no USER"
    user = users[-1].args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid (Kubernetes runAsNonRoot), got {user}"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert int(uid) == 65532


def test_nothing_runs_as_root_after_user_or_writes_outside_tmp(final):
    keywords = [i.keyword for i in final.instructions]
    user_at = len(keywords) - 1 - keywords[::-1].index("USER")
    after = final.instructions[user_at + 1:]
    assert all(i.keyword not in {"RUN", "COPY", "ADD", "USER"} for i in after), \
        f"instructions after USER: {[i.keyword for i in after]}"
    # the final stage runs no commands at all: everything is built in the builder
    assert not final.all("RUN")
    workdirs = [i.args for i in final.all("WORKDIR")]
    assert all(w == "/tmp" for w in workdirs), workdirs


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', instruction.args):
            env[key] = value.strip('"')
    return env


def test_works_with_a_read_only_root_filesystem(final):
    env = _env(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("HOME") == "/tmp"
    assert env.get("TMPDIR", "/tmp") == "/tmp"
    assert env.get("PATH", "").startswith("/opt/venv/bin:")
    assert not final.all("VOLUME"), "a VOLUME would be written by the runtime, not by us"


def test_bytecode_is_compiled_at_build_time(stages):
    runs = " ".join(i.args for i in stages[0].all("RUN"))
    assert "compileall" in runs


def test_entrypoint_and_cmd(final):
    entrypoint = final.all("ENTRYPOINT")[-1].args
    cmd = final.all("CMD")[-1].args
    # exec form: the operator is PID 1 and receives SIGTERM itself
    assert json.loads(entrypoint) == ["checkpoint-operator"]
    assert json.loads(cmd) == ["run"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "checkpoint-operator" in scripts


def test_exposes_the_metrics_and_health_ports(final):
    ports = {int(p) for i in final.all("EXPOSE") for p in i.args.split()}
    assert ports == {8080, 8081}


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*") or \
                (pattern.startswith("**/") and (fnmatch.fnmatch(path, pattern[3:]) or
                                               fnmatch.fnmatch(path, "*/" + pattern[3:]) or
                                               fnmatch.fnmatch(path, "*/" + pattern[3:] + "/*"))):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest(stages):
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = []
    for copy in stages[0].all("COPY"):
        parts = [p for p in copy.args.split() if not p.startswith("--")]
        sources += parts[:-1]
    assert "pyproject.toml" in sources and "operator" in sources
    for source in sources:
        assert not _ignored(source, patterns), f"{source} is copied by the Dockerfile but excluded by .dockerignore"
    # the readme pyproject.toml names must reach the build (setuptools reads it)
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("readme")
    if readme:
        assert readme in sources
    for path in (".git/config", "tests/test_chart.py", "e2e/run.sh", "charts/checkpoint-operator/Chart.yaml",
                 ".venv/bin/python", "operator/checkpoint_operator/__pycache__/cli.cpython-311.pyc"):
        assert _ignored(path, patterns), f"{path} would be sent to the build context"
    assert not _ignored("operator/checkpoint_operator/cli.py", patterns)
