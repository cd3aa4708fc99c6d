"""The operator image run as a cluster runs it, with real data, a real S3 server and a real HTTP server.

Every container runs with CLUSTER_FLAGS (user 65532, read-only root, tmpfs /tmp, no
capabilities, no privilege escalation) and `--network none` unless it talks to SeaweedFS or the
HTTP server on the host's loopback (`--network host`). Volumes are bind mounts, as a PVC would be.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from image_helpers import CLUSTER_FLAGS, ROOT, USER, Image, podman, require_engine

pytestmark = pytest.mark.image
require_engine()

MANIFEST = ".checkpoint-manifest.json"
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION",
          "AWS_EC2_METADATA_DISABLED", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "CKPT_S3_PART_SIZE",
          "CKPT_S3_MAX_ATTEMPTS", "CKPT_S3_CONNECT_TIMEOUT")


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The agent's failure contract: exit 1 and one `error: ...` line on stderr, no traceback."""
    assert result.returncode == 1, f"exit {result.returncode}\nstderr: {result.stderr}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def writable_by_the_user(path: Path) -> Path:
    """A volume the pod's user may write (what fsGroup does for a PVC)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, *USER)
    return path


@pytest.fixture
def output(tmp_path) -> Path:
    """A training job's output as the operator finds it: two checkpoints, one unfinished write,
    files readable by anyone (the pod's user reads them)."""
    out = tmp_path / "output"
    contents = {
        "step-100/model.safetensors": os.urandom(300_000),
        "step-100/trainer_state.json": b'{"global_step": 100}',
        "step-100/optimizer.bin": os.urandom(70_000),
        "step-200/model.safetensors": os.urandom(6 * 1024 * 1024 + 17),  # > one 5 MiB part
        "step-200/trainer_state.json": b'{"global_step": 200}',
        "step-200/tokenizer/vocab.txt": "a b c\nno ascii: é ü\n".encode(),
        "step-300.tmp/model.safetensors": b"half written",
    }
    for rel, data in contents.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in [out, *out.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out


def host_scan(directory: Path) -> dict:
    result = ok(subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "scan", str(directory), "--json"],
                               capture_output=True, text=True, timeout=120))
    return json.loads(result.stdout)


def readme_digest(directory: Path) -> str:
    """The documented recipe (docs/concepts.md), run by bash and coreutils on the host."""
    recipe = ("find . -type f ! -name .checkpoint-manifest.json -printf '%P\\0' | LC_ALL=C sort -z "
              "| xargs -0 sha256sum | sha256sum")
    documented = (ROOT / "docs" / "concepts.md").read_text()
    assert recipe in documented, "the digest recipe of docs/concepts.md changed: update this test"
    out = ok(subprocess.run(["bash", "-c", recipe], cwd=directory, capture_output=True, text=True)).stdout
    return "sha256:" + out.split()[0]


# --- the image as built ---------------------------------------------------------------------------

def test_the_cli_starts_read_only_as_the_non_root_user(image: Image):
    main = ok(image.run("--help"))
    assert main.stdout.startswith("usage: checkpoint-operator")
    listed = set(re.findall(r"^    (\w+) ", main.stdout, re.M))  # the commands argparse lists
    assert {"run", "agent", "crds", "ckpt"} <= listed
    assert "local" not in listed  # local mode is not in the image
    run = ok(image.run("run", "--help"))
    assert run.stdout.startswith("usage: checkpoint-operator run")
    assert "--liveness-port" in run.stdout
    agent = ok(image.run("agent", "--help"))
    for command in ("scan", "snapshot", "upload", "download", "import"):
        assert command in agent.stdout
    # nothing complains about a read-only root (bytecode, caches, a home directory)
    assert main.stderr == run.stderr == agent.stderr == ""


def test_the_image_carries_no_local_mode(image: Image):
    """Local mode (an API emulator, the CEL library: the `local` extra) is for development
    machines; the operator and its agent pods need none of it."""
    probe = ("import importlib.util as u; "
             "print(sorted(m for m in ('checkpoint_operator.local', 'kmock', 'cel') if u.find_spec(m)))")
    result = ok(image.run("-c", probe, entrypoint="python"))
    assert result.stdout.strip() == "[]"


def test_the_image_runs_as_65532_by_default_with_the_operator_as_entrypoint(image: Image):
    config = json.loads(ok(podman.run("image", "inspect", image.name)).stdout)[0]["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["checkpoint-operator"]
    assert config["Cmd"] == ["run"]
    assert config["WorkingDir"] == "/tmp"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HOME"] == "/tmp" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    # no --user: the image's own user
    ids = ok(image.run("-u", entrypoint="id", flags=["--read-only", "--tmpfs", "/tmp"])).stdout.strip()
    assert ids == "65532"
    assert ok(image.run("-g", entrypoint="id", flags=["--read-only", "--tmpfs", "/tmp"])).stdout.strip() == "65532"


def test_the_ca_bundle_mounted_for_the_build_is_not_in_the_image(image: Image):
    """build.sh mounts the host's CA bundle so that pip reaches the index; the image keeps the base's."""
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    inside = ok(image.run(bundle, entrypoint="sha256sum")).stdout.split()[0]
    base = ok(Image(podman.BASE_IMAGE).run("sha256sum", bundle)).stdout.split()[0]
    assert inside == base


WRITE_PROBE = r"""
import errno, json, os, sys
result = {}
for path in sys.argv[1:]:
    try:
        with open(path, "wb") as f:
            f.write(b"x")
        result[path] = "written"
    except OSError as exc:
        result[path] = errno.errorcode[exc.errno]
print(json.dumps(result))
"""


def test_the_root_filesystem_is_read_only_and_only_tmp_is_writable(image: Image):
    targets = ["/probe", "/etc/probe", "/opt/venv/probe", "/opt/venv/lib/python3.11/site-packages/probe.py",
               "/var/tmp/probe", "/tmp/probe"]
    result = json.loads(ok(image.run("-c", WRITE_PROBE, *targets, entrypoint="python")).stdout)
    assert result == {**{t: "EROFS" for t in targets[:-1]}, "/tmp/probe": "written"}


def test_without_a_read_only_root_the_user_still_cannot_change_the_venv(image: Image):
    # A cluster that does not set readOnlyRootFilesystem: the venv and the system belong to root.
    targets = ["/opt/venv/probe", "/opt/venv/bin/checkpoint-operator", "/usr/lib/python3.11/probe.py", "/etc/probe"]
    result = json.loads(ok(image.run("-c", WRITE_PROBE, *targets, entrypoint="python",
                                     flags=writable_root())).stdout)
    assert result == {t: "EACCES" for t in targets}


def writable_root() -> list[str]:
    return [f for f in CLUSTER_FLAGS if not f.startswith("--read-only")]


def root_changes(image: Image, output: Path, script: str) -> list[str]:
    """`podman diff` of a container that ran `sh -c SCRIPT` with a writable root (and /tmp a tmpfs)."""
    name = f"ckpt-image-test-{os.getpid()}"
    try:
        ok(podman.run("run", "--name", name, *writable_root(), "--network", "none", "--volume",
                      f"{output}:/data:ro", "--entrypoint", "sh", image.name, "-c", script, timeout=180))
        return ok(podman.run("diff", name)).stdout.splitlines()
    finally:
        podman.run("rm", "--force", name, timeout=60)


def test_nothing_is_written_outside_tmp(image: Image, output: Path):
    """A writable root this time, and `podman diff` afterwards: beyond what the runtime itself
    changes (the mount point, the user in /etc/passwd), the commands wrote nothing there."""
    runtime = root_changes(image, output, "true")
    assert "A /data" in runtime
    commands = root_changes(image, output, "checkpoint-operator --help >/dev/null && "
                                           "checkpoint-operator run --help >/dev/null && "
                                           "checkpoint-operator agent scan /data --json >/dev/null && "
                                           "checkpoint-operator agent scan /data/step-100 --single >/dev/null")
    assert commands == runtime


# --- agent commands on real data --------------------------------------------------------------

def test_scan_of_a_read_only_output_matches_the_host_and_the_readme_recipe(image: Image, output: Path):
    before = files_under(output)
    result = ok(image.run("agent", "scan", "/data", "--json", volumes=[(output, "/data", "ro")]))
    inside = json.loads(result.stdout)
    assert inside == host_scan(output)
    by_path = {c["path"]: c for c in inside["checkpoints"]}
    assert set(by_path) == {"step-100", "step-200"}
    assert [s["path"] for s in inside["skipped"]] == ["step-300.tmp"]
    for name, checkpoint in by_path.items():
        assert checkpoint["digest"] == readme_digest(output / name)
        for entry in checkpoint["files"]:
            assert entry["sha256"] == sha256(before[f"{name}/{entry['path']}"])
    assert files_under(output) == before


def test_a_write_into_a_read_only_mount_fails(image: Image, output: Path):
    before = files_under(output)
    targets = ["/data/step-100/model.safetensors", "/data/new-file", "/data/step-100/new-file"]
    result = json.loads(ok(image.run("-c", WRITE_PROBE, *targets, entrypoint="python",
                                     volumes=[(output, "/data", "ro")])).stdout)
    assert result == {t: "EROFS" for t in targets}
    # the agent fails the same way, with its one-line error
    error = one_error_line(image.run("agent", "upload", "/data/step-100", "/data/upload-here",
                                     volumes=[(output, "/data", "ro")]))
    assert "s3://" in error
    assert files_under(output) == before


def test_upload_to_and_download_from_seaweedfs_on_the_host(image: Image, output: Path, s3, tmp_path):
    uri = s3.uri("ckpt/step-200/")
    ok(image.run("agent", "upload", "/data/step-200", uri, volumes=[(output, "/data", "ro")],
                 network="host", env_from_host=S3_ENV))

    # what the server holds: every file and the manifest (written last), equal to the host's scan
    client = s3.client()
    listing = client.list_objects_v2(Bucket=s3.bucket, Prefix=s3.key("ckpt/step-200/"))["Contents"]
    keys = {obj["Key"][len(s3.key("ckpt/step-200/")):] for obj in listing}
    source = files_under(output / "step-200")
    # nothing else: the upload journal (multipart sha256s, model.safetensors is over one part)
    # goes once the manifest is committed
    assert keys == set(source) | {MANIFEST}
    manifest = json.loads(client.get_object(Bucket=s3.bucket, Key=s3.key("ckpt/step-200/" + MANIFEST))["Body"].read())
    expected = next(c for c in host_scan(output)["checkpoints"] if c["path"] == "step-200")
    assert manifest["digest"] == expected["digest"] == readme_digest(output / "step-200")
    assert manifest["files"] == expected["files"]

    # download into a volume, as the init container of a consuming pod does: the digest pinned
    volume = writable_by_the_user(tmp_path / "volume")
    wrong = "sha256:" + "0" * 64
    error = one_error_line(image.run("agent", "download", uri, "/volume/step-200", "--digest", wrong,
                                     volumes=[(volume, "/volume", "rw")], network="host", env_from_host=S3_ENV))
    assert wrong in error and manifest["digest"] in error
    assert files_under(volume) == {}
    ok(image.run("agent", "download", uri, "/volume/step-200", "--digest", manifest["digest"],
                 volumes=[(volume, "/volume", "rw")], network="host", env_from_host=S3_ENV))
    got = files_under(volume / "step-200")
    assert set(got) == {e["path"] for e in manifest["files"]} | {MANIFEST}, "extra or missing files"
    for entry in manifest["files"]:
        assert len(got[entry["path"]]) == entry["size"]
        assert sha256(got[entry["path"]]) == entry["sha256"]
        assert got[entry["path"]] == source[entry["path"]]
    assert json.loads(got[MANIFEST])["digest"] == manifest["digest"]
    assert {p.stat().st_uid for p in (volume / "step-200").rglob("*")} == {USER[0]}


def test_download_of_a_tampered_object_fails_and_leaves_no_file_under_its_name(image: Image, output: Path, s3,
                                                                              tmp_path):
    uri = s3.uri("ckpt/step-100/")
    ok(image.run("agent", "upload", "/data/step-100", uri, volumes=[(output, "/data", "ro")],
                 network="host", env_from_host=S3_ENV))
    original = (output / "step-100" / "optimizer.bin").read_bytes()
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key("ckpt/step-100/optimizer.bin"),
                           Body=bytes([original[0] ^ 1]) + original[1:])
    volume = writable_by_the_user(tmp_path / "volume")
    error = one_error_line(image.run("agent", "download", uri, "/volume/in", volumes=[(volume, "/volume", "rw")],
                                     network="host", env_from_host=S3_ENV))
    assert "optimizer.bin" in error and "sha256" in error
    landed = files_under(volume)
    assert "in/optimizer.bin" not in landed and f"in/{MANIFEST}" not in landed


# --- import over HTTP from the host's loopback --------------------------------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A directory served over HTTP on 127.0.0.1 (a thread of this process); yields (dir, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def archive(kind: str, members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_import_of_an_archive_served_on_the_loopback(image: Image, http_dir, tmp_path, kind):
    served, base = http_dir
    members = {"config.json": b'{"model_type": "llama"}', "model.safetensors": os.urandom(2 * 1024 * 1024),
               "tokenizer/tokenizer.json": b'{"version": "1.0"}'}
    (served / f"model.{kind}").write_bytes(archive(kind, members))
    volume = writable_by_the_user(tmp_path / "volume")
    result = image.run("agent", "import", f"{base}/model.{kind}", "/volume/model", "--max-size", "64MiB",
                       volumes=[(volume, "/volume", "rw")], network="host")
    ok(result)
    assert files_under(volume / "model") == members


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_import_refuses_an_archive_that_leaves_its_destination(image: Image, http_dir, tmp_path, kind):
    served, base = http_dir
    (served / f"evil.{kind}").write_bytes(archive(kind, {"ok.txt": b"fine", "../escaped.txt": b"gotcha"}))
    volume = writable_by_the_user(tmp_path / "volume")
    result = image.run("agent", "import", f"{base}/evil.{kind}", "/volume/model",
                       volumes=[(volume, "/volume", "rw")], network="host")
    assert "escaped.txt" in one_error_line(result)
    assert files_under(volume) == {}


# --- the training image for local mode's container runtime ------------------------------------

def test_the_training_image_runs_the_example_loop_as_a_pod_would(train_image: Image, tmp_path):
    output = writable_by_the_user(tmp_path / "output")
    result = ok(train_image.run("python", "examples/local/train.py", volumes=[(output, "/output", "rw")],
                                env={"CHECKPOINT_OUTPUT_DIR": "/output", "STEPS": "20", "SAVE_EVERY": "10"}))
    assert "saved /output/step-20" in result.stdout
    scan = host_scan(output)
    assert [(c["path"], c["step"], c["format"]) for c in scan["checkpoints"]] == \
        [("step-10", 10, "safetensors"), ("step-20", 20, "safetensors")]
    assert {p.stat().st_uid for p in output.rglob("*")} == {USER[0]}


def test_the_tier_uses_the_settings_of_build_sh(engine):
    """The containers above ran with e2e/image's containers.conf and work directory."""
    assert podman.env()["CONTAINERS_CONF"] == str(ROOT / "e2e" / "image" / "containers.conf")
    assert podman.global_args()[:2] == ["--root", str(podman.work_dir() / "root")]
    info = json.loads(ok(podman.run("info", "--format", "json")).stdout)
    assert info["store"]["graphRoot"] == str(podman.work_dir() / "root")
    assert info["host"]["ociRuntime"]["name"] == "runc"
