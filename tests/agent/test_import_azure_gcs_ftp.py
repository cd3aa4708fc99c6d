"""agent import from Azure Blob (Azurite), Google Cloud Storage's S3-compatible XML API (SeaweedFS)
and FTP/FTPS (pyftpdlib), all on 127.0.0.1; the agent runs in the test process (agentrun.py)."""

from __future__ import annotations


import pytest

from agentrun import run_agent
from ftpserver import PASSWORD, USER, ftp_server  # noqa: F401  (fixture)
from layouts import read_tree, tar_gz, tiny_model

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("credential_watch")]


def nothing_left(dest) -> bool:
    return not dest.exists() and not [p for p in dest.parent.iterdir() if ".ckpt-import-" in p.name]


# --- Azure Blob (Azurite) -------------------------------------------------------------------------

def upload_tree(azure_blob, prefix: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        azure_blob.upload(prefix + rel, data)


@pytest.mark.parametrize("credential", ["connection-string", "account-key"])
def test_azure_tree(azure_blob, tmp_path, credential):
    files = tiny_model()
    upload_tree(azure_blob, "runs/llama/", files)
    azure_blob.upload("runs/llama-other/config.json", b"{}")  # a sibling prefix stays out
    server = azure_blob.server
    if credential == "connection-string":
        args, env = (), {"AZURE_STORAGE_CONNECTION_STRING": server.connection_string}
    else:
        args, env = ("--endpoint-url", server.blob_endpoint), {"AZURE_STORAGE_KEY": server.key}
    dest = tmp_path / "ckpt"
    run = run_agent("import", azure_blob.uri("runs/llama/"), str(dest), *args, env=env)
    assert run.result["provenance"] == {"uri": azure_blob.uri("runs/llama/")}
    assert read_tree(dest) == files


def test_azure_archive_blob_is_extracted(azure_blob, tmp_path):
    azure_blob.upload("model.tar.gz", tar_gz(tiny_model()))
    dest = tmp_path / "ckpt"
    run = run_agent("import", azure_blob.uri("model.tar.gz"), str(dest),
                    env={"AZURE_STORAGE_CONNECTION_STRING": azure_blob.server.connection_string})
    assert run.result["extracted"] is True and read_tree(dest) == tiny_model()


@pytest.mark.parametrize("case,words", [
    ("no-credentials", "no credentials were given"),
    ("wrong-key", "the credentials were refused"),
    ("missing-container", "no such container 'absent'"),
    ("missing-blob", "not found: az://devstoreaccount1/"),
    ("over-size", "past the size limit of 1000"),
    ("other-account", "is for account 'devstoreaccount1', not 'someoneelse'"),
])
def test_azure_bad_input(azure_blob, tmp_path, case, words):
    upload_tree(azure_blob, "m/", tiny_model())
    server = azure_blob.server
    env = {"AZURE_STORAGE_CONNECTION_STRING": server.connection_string}
    uri, args = azure_blob.uri("m/"), ["--endpoint-url", server.blob_endpoint]
    if case == "no-credentials":
        env = {}
    elif case == "wrong-key":
        env = {"AZURE_STORAGE_KEY": "d3Jvbmcta2V5"}
    elif case == "missing-container":
        uri = f"az://{server.account}/absent/m/"
    elif case == "missing-blob":
        uri = azure_blob.uri("absent.tar.gz")
    elif case == "over-size":
        args += ["--max-size", "1000"]
    elif case == "other-account":
        uri = "az://someoneelse/c/m/"
    dest = tmp_path / "ckpt"
    run = run_agent("import", uri, str(dest), *args, env=env)
    assert words in run.error, run.error
    assert "d3Jvbmcta2V5" not in run.stderr and server.key not in run.stderr
    assert nothing_left(dest)


def test_azure_unsafe_blob_names_are_refused(azure_blob, tmp_path):
    upload_tree(azure_blob, "m/", {"config.json": b"{}", "sub/.ckpt-download-x.bin": b"x"})
    dest = tmp_path / "ckpt"
    run = run_agent("import", azure_blob.uri("m/"), str(dest),
                    env={"AZURE_STORAGE_CONNECTION_STRING": azure_blob.server.connection_string})
    assert "has a component starting with '.ckpt-download-'" in run.error and "refusing to import it" in run.error
    assert nothing_left(dest)


# --- Google Cloud Storage's XML API (SeaweedFS speaks the same S3 protocol) -------------------------

def gcs_env(s3) -> dict:
    """An HMAC key as GCS gives one, in the variables the agent reads; no S3 endpoint in the
    environment (the GCS endpoint is the source's own)."""
    return {"AWS_ACCESS_KEY_ID": s3.server.access_key, "AWS_SECRET_ACCESS_KEY": s3.server.secret_key,
            "AWS_ENDPOINT_URL": None, "AWS_DEFAULT_REGION": None}


def put_tree(s3, prefix: str, files: dict[str, bytes]) -> None:
    client = s3.client()
    for rel, data in files.items():
        client.put_object(Bucket=s3.bucket, Key=s3.key(prefix + rel), Body=data)


def test_gcs_tree_with_an_hmac_key(s3, tmp_path):
    put_tree(s3, "gcs/llama/", tiny_model())
    uri = f"gs://{s3.bucket}/{s3.key('gcs/llama/')}"
    dest = tmp_path / "ckpt"
    run = run_agent("import", uri, str(dest), "--endpoint-url", s3.endpoint, env=gcs_env(s3))
    assert run.result["provenance"] == {"uri": uri}
    assert read_tree(dest) == tiny_model()


def test_gcs_archive_object(s3, tmp_path):
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key("gcs/model.tar.gz"), Body=tar_gz(tiny_model()))
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"gs://{s3.bucket}/{s3.key('gcs/model.tar.gz')}", str(dest),
                    "--endpoint-url", s3.endpoint, env=gcs_env(s3))
    assert run.result["extracted"] is True and read_tree(dest) == tiny_model()


@pytest.mark.parametrize("case,words", [
    ("anonymous", "no HMAC key was given, so the request was anonymous"),
    ("wrong-key", "check the HMAC key"),
    ("over-size", "past the size limit of 1000"),
    ("empty", "nothing under gs://"),
])
def test_gcs_bad_input(s3, tmp_path, case, words):
    put_tree(s3, "gcs/m/", tiny_model())
    env, prefix, args = gcs_env(s3), "gcs/m/", ["--endpoint-url", s3.endpoint]
    if case == "anonymous":
        env.update(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None)
    elif case == "wrong-key":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    elif case == "over-size":
        args += ["--max-size", "1000"]
    elif case == "empty":
        prefix = "gcs/none/"
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"gs://{s3.bucket}/{s3.key(prefix)}", str(dest), *args, env=env)
    assert words in run.error, run.error
    assert "s3://" not in run.error  # the user's URI, not the protocol's
    assert nothing_left(dest)


def test_anonymous_requests_are_unsigned(s3, monkeypatch):
    from checkpoint_operator.objectstore.s3 import make_client
    monkeypatch.setenv("CKPT_S3_UNSIGNED", "1")
    client = make_client(s3.endpoint)
    from botocore import UNSIGNED
    assert client.meta.config.signature_version is UNSIGNED


# --- FTP and FTPS (pyftpdlib) ---------------------------------------------------------------------

def login_dir(tmp_path, user=USER, password=PASSWORD) -> str:
    directory = tmp_path / "ftp-secret"
    directory.mkdir(exist_ok=True)
    (directory / "username").write_text(user)
    (directory / "password").write_text(password)
    return str(directory)


def test_ftp_anonymous_archive(ftp_server, tmp_path):
    (ftp_server.root / "model.tar.gz").write_bytes(tar_gz(tiny_model()))
    dest = tmp_path / "ckpt"
    run = run_agent("import", ftp_server.url("model.tar.gz"), str(dest))
    assert run.result["extracted"] is True and read_tree(dest) == tiny_model()


def test_ftps_with_the_given_ca_and_a_login(ftp_server, tmp_path):
    (ftp_server.root / "model.tar.gz").write_bytes(tar_gz(tiny_model()))
    (ftp_server.root / "config.json").write_bytes(b"{}")
    dest = tmp_path / "ckpt"
    run = run_agent("import", ftp_server.ftps_url("model.tar.gz"), str(dest), "--ca-file", str(ftp_server.ca.ca_file),
                    env={"CKPT_SOURCE_SECRET_DIR": login_dir(tmp_path)})
    assert read_tree(dest) == tiny_model(), run.stderr
    one = tmp_path / "one"
    run = run_agent("import", ftp_server.ftps_url("config.json"), str(one), "--ca-file", str(ftp_server.ca.ca_file),
                    env={"CKPT_SOURCE_SECRET_DIR": login_dir(tmp_path)})
    assert read_tree(one) == {"config.json": b"{}"}, run.stderr


@pytest.mark.parametrize("case,words", [
    ("untrusted-certificate", "the server's certificate is not trusted"),
    ("no-login", "it needs a login"),
    ("wrong-password", "check username/password in the Secret"),
    ("missing-file", "no such file on the server (550)"),
    ("over-size", "(its SIZE), past the size limit of 1000"),
    ("not-ftps", "the server does not offer FTPS"),
    ("directory", "FTP directories are not imported"),
    ("unsafe-archive", "leaves the destination ('..'); archive refused"),
])
def test_ftp_bad_input(ftp_server, tmp_path, case, words):
    import io
    import tarfile
    (ftp_server.root / "model.tar.gz").write_bytes(tar_gz(tiny_model()))
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (ftp_server.root / "evil.tar").write_bytes(evil.getvalue())
    ca = ["--ca-file", str(ftp_server.ca.ca_file)]
    login = {"CKPT_SOURCE_SECRET_DIR": login_dir(tmp_path)}
    url, args, env = ftp_server.ftps_url("model.tar.gz"), ca, login
    if case == "untrusted-certificate":
        args = []
    elif case == "no-login":
        env = {}
    elif case == "wrong-password":
        env = {"CKPT_SOURCE_SECRET_DIR": login_dir(tmp_path, password="wrong-pass")}
    elif case == "missing-file":
        url = ftp_server.url("absent.tar.gz")
    elif case == "over-size":
        url, args = ftp_server.url("model.tar.gz"), ["--max-size", "1000"]
    elif case == "not-ftps":
        url = ftp_server.url("model.tar.gz").replace("ftp://", "ftps://")
    elif case == "directory":
        url = ftp_server.url("")
    elif case == "unsafe-archive":
        url = ftp_server.url("evil.tar")
    dest = tmp_path / "ckpt"
    run = run_agent("import", url, str(dest), *args, env=env)
    assert words in run.error, run.error
    assert PASSWORD not in run.stderr and "wrong-pass" not in run.stderr
    assert nothing_left(dest)


def test_ftp_credentials_in_the_url_are_refused_and_not_echoed(tmp_path):
    run = run_agent("import", "ftp://user:hunter2@127.0.0.1/m.tar.gz", str(tmp_path / "ckpt"))
    assert "credentials in the URL are refused" in run.error and "hunter2" not in run.stderr
