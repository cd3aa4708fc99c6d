"""Static checks of the Dockerfile, .dockerignore and the Podman settings in e2e/image/.

The image itself is built by e2e/image/build.sh and run for real, as a cluster runs it, by the
image tier (tests/image, `python -m pytest -m image`, which .ci/run runs); the kind suite in e2e/
installs it with the chart. These checks need no engine and run in the default suite.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
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


def test_the_dependency_layer_leaves_no_stub_build_behind(stages):
    """The dependencies are installed from a stub package first (a cached layer). setuptools' build/
    of that stub must go with it: build/lib/ kept the stub's empty __init__.py, newer than the real
    one copied next, and the wheel shipped it (the image's operator failed to import; found by the
    image tier)."""
    runs = [i.args for i in stages[0].all("RUN")]
    stub = next(r for r in runs if "touch operator/checkpoint_operator/__init__.py" in r)
    assert re.search(r"rm -rf (\S+ )*build\b", stub) and re.search(r"rm -rf (\S+ )*operator\b", stub), stub
    # the real import, not only --help (whose imports are lazy), is tried at build time
    assert "import checkpoint_operator.main" in " ".join(runs)
    # only pyproject.toml reaches that layer: code and README edits keep it cached
    keywords = [(i.keyword, i.args) for i in stages[0].instructions]
    stub_at = keywords.index(("RUN", stub))
    assert [args for keyword, args in keywords[:stub_at] if keyword == "COPY"] == ["pyproject.toml ./"]


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


# --- e2e/image: one set of Podman settings for build.sh, podman.py and the tests ----------------

IMAGE_DIR = ROOT / "e2e" / "image"


def _shell(script: str, **env: str) -> str:
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_podman_env_sh_and_podman_py_agree(monkeypatch, tmp_path):
    sys.path.insert(0, str(IMAGE_DIR))
    try:
        import podman
    finally:
        sys.path.remove(str(IMAGE_DIR))
    for work_dir in (None, str(tmp_path / "my podman")):  # the default, and a path with a space
        monkeypatch.delenv("CKPT_PODMAN_DIR", raising=False)
        setting = "unset CKPT_PODMAN_DIR"
        if work_dir:
            monkeypatch.setenv("CKPT_PODMAN_DIR", work_dir)
            setting = f"export CKPT_PODMAN_DIR={shlex.quote(work_dir)}"
        out = _shell(f"{setting}; source {IMAGE_DIR / 'podman-env.sh'}; "
                     'printf "%s\\n" "$CKPT_PODMAN_DIR" "$CONTAINERS_CONF" "$CKPT_PODMAN_FLAGS" '
                     '"$CKPT_BASE_IMAGE" "$CKPT_OPERATOR_IMAGE" "$CKPT_TRAIN_IMAGE" "${CKPT_PODMAN_ARGS[@]}"'
                     ).splitlines()
        assert out[0] == str(podman.work_dir()) == (work_dir or "/var/tmp/ckpt-podman")
        assert out[1] == podman.env()["CONTAINERS_CONF"] == str(IMAGE_DIR / "containers.conf")
        assert shlex.split(out[2]) == out[6:] == podman.global_args()
        assert podman.global_args()[:4] == ["--root", f"{out[0]}/root", "--runroot", f"{out[0]}/run"]
        assert out[3:6] == [podman.BASE_IMAGE, podman.OPERATOR_IMAGE, podman.TRAIN_IMAGE]


def test_containers_conf_has_the_settings_these_machines_need():
    conf = tomllib.loads((IMAGE_DIR / "containers.conf").read_text())
    assert conf["engine"]["runtime"] == "runc"  # crun refuses hybrid cgroups
    assert conf["engine"]["cgroup_manager"] == "cgroupfs"
    ulimits = dict(u.split("=") for u in conf["containers"]["default_ulimits"])
    assert ulimits["nofile"] == "20000:20000"  # Podman's default is above the hard limit here


def test_build_script_takes_the_mirror_from_the_hosts_apt_sources(tmp_path):
    lists = tmp_path / "sources.list.d"
    lists.mkdir()
    (lists / "debian.sources").write_text(
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n")
    (lists / "nodesource.sources").write_text("Types: deb\nURIs: https://deb.nodesource.com/node_20.x\n"
                                              "Suites: nodistro\nComponents: main\n")
    (lists / "other.list.disabled").write_text("deb http://wrong.example/debian bookworm main\n")
    script = f"source {IMAGE_DIR / 'build.sh'}; debian_mirror bookworm; debian_source_files bookworm"
    out = _shell(script, CKPT_APT_ETC=str(tmp_path)).splitlines()
    assert out == ["http://mirror.example/debian", str(lists / "debian.sources")]
    # the one-line form, with options
    (lists / "debian.sources").unlink()
    (lists / "main.list").write_text("deb-src http://src.example/debian bookworm main\n"
                                     "deb [signed-by=/usr/share/keyrings/k.gpg] http://one.example/debian bookworm main\n")
    assert _shell(script, CKPT_APT_ETC=str(tmp_path)).splitlines() == ["http://one.example/debian", str(lists / "main.list")]
