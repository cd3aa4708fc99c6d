"""Every import source against bad inputs (issue 18 item 9): each failure a user causes is one line
that names the input and what is allowed: no traceback, no "a bug: please report it", no path
of the import's staging directory, no credential. The agent runs in the test's process through
its real entry point (agentrun.py), against real servers on 127.0.0.1.

Failed before: an FTP URL with %0D%0A crashed the agent with a traceback (ftplib refuses a CR/LF
in a command); a redirect loop gave three lines; a tar with `x` as a file and then `x/y` (or a
zip with `x/y` and then `x`) leaked the staging path; s3://KEY:SECRET@bucket/ was quoted whole;
an FTP server's reply quoting the password was copied into the error line."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from agentrun import run_agent
from ftpserver import PASSWORD, USER, ftp_server  # noqa: F401  (fixtures)
from gitserver import git_http  # noqa: F401  (fixture)
from hubserver import mini_hub  # noqa: F401  (fixture)
from layouts import tiny_model
from webserver import web  # noqa: F401  (fixture)

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("credential_watch")]

AWS_SECRET = "wJalrXUtnFEMI-example-secret"


def tar_of(*members: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_of(*members: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buffer.getvalue()


def one_line(run, dest, *words: str) -> str:
    """The import failed with one `error:` line holding `words`; nothing of the staging area shows."""
    line = run.error  # asserts exactly one error line and no traceback
    assert "please report" not in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert ".ckpt-import-" not in run.stderr and "/tree/" not in run.stderr, run.stderr
    for word in words:
        assert word in line, (word, line)
    assert not dest.exists()
    return line


CONTROL = "holds a control character"


def test_http(web, tmp_path):  # noqa: F811
    (web.root / "xy.tar").write_bytes(tar_of(("x", b"file"), ("x/y", b"under a file")))
    (web.root / "yx.tar").write_bytes(tar_of(("x/y", b"a"), ("x", b"a file over a directory")))
    (web.root / "yx.zip").write_bytes(zip_of(("x/y", b"a"), ("x", b"a file over a directory")))
    (web.root / "junk.tar").write_bytes(b"this is not a tar archive" * 40)
    cases = [
        (web.url("a%0D%0Ab.tar"), ["'http://127.0.0.1", CONTROL, "U+000D", "percent-encoded"]),
        (web.url("a\nb.tar"), [CONTROL, "U+000A", "a\\nb.tar"]),
        (web.url("a%00.tar"), ["holds a NUL byte, percent-encoded"]),
        (web.url("loop/0.tar"), ["too many redirects (a redirect loop"]),
        (web.url("to-file/x.tar"), ["redirected to 'file:///etc/passwd': only http(s) redirects are followed"]),
        (web.url("xy.tar"), ["member 'x/y' needs 'x' to be a directory, but the archive has it as a file"]),
        (web.url("yx.tar"), ["member 'x' would replace a directory"]),
        (web.url("yx.zip"), ["member 'x' would replace a directory"]),
        (web.url("junk.tar"), ["junk.tar: not a readable tar archive"]),
        (web.url("absent.tar"), ["HTTP 404"]),
        (f"http://user:{AWS_SECRET}@127.0.0.1:{web.port}/m.tar", ["credentials in the URL are refused"]),
        ("http://127.0.0.1:9/m.tar", ["cannot fetch"]),
    ]
    for i, (url, words) in enumerate(cases):
        dest = tmp_path / f"d{i}"
        line = one_line(run_agent("import", url, str(dest)), dest, *words)
        assert AWS_SECRET not in line


@pytest.mark.parametrize("member", [".checkpoint-manifest.json", "./.checkpoint-manifest.json",
                                    ".checkpoint-upload-journal.json"])
def test_an_archive_holding_the_agent_s_own_names_is_refused(web, tmp_path, member):  # noqa: F811
    """hostile1 D9: a tar of a pulled (then edited) checkpoint carried its .checkpoint-manifest.json;
    the import left it in DEST silently and verify and pull later took it as the manifest. Every
    writer of DEST now refuses the reserved names, archives as Git and the Hub do (failed before:
    imported, rc 0)."""
    (web.root / "m.tar").write_bytes(tar_of(("config.json", b"{}"), (member, b'{"digest": "sha256:00"}')))
    dest = tmp_path / "d"
    one_line(run_agent("import", web.url("m.tar"), str(dest)), dest, "m.tar", "is reserved for the agent's own use")


def test_a_dest_that_cannot_be_written_names_dest_not_the_staging_directory(web):  # noqa: F811
    """hostile1 D11: the line named `/proc/.ckpt-import-<hash>-<random>`, a path the user never sees."""
    (web.root / "m.tar").write_bytes(tar_of(("config.json", b"{}")))
    run = run_agent("import", web.url("m.tar"), "/proc/ckpt-dest")
    assert run.error == ("error: /proc/ckpt-dest: cannot import there: No such file or directory (creating the "
                         "import's staging directory in /proc)")
    assert ".ckpt-import-" not in run.stderr


def test_ftp(ftp_server, tmp_path):  # noqa: F811
    (ftp_server.root / "m.tar").write_bytes(tar_of(("config.json", b"{}")))
    login = tmp_path / "login"
    login.mkdir()
    (login / "username").write_text(USER)
    (login / "password").write_text(PASSWORD)
    base = ftp_server.url("")
    cases = [
        (f"{base}dir%0D%0APASS%20x/m.tar", {}, [CONTROL, "U+000D", "percent-encoded"]),  # crashed before
        (f"{base}%00/m.tar", {}, ["holds a NUL byte, percent-encoded"]),
        (f"{base}absent.tar", {}, ["no such file"]),
        (f"{base}", {}, ["give a file"]),
        (f"ftp://{USER}:{PASSWORD}@127.0.0.1:{ftp_server.port}/m.tar", {}, ["credentials in the URL are refused"]),
        # a server's reply quoting the password (550, not 530): the line names the refusal, not the password
        (ftp_server.echo_url("m.tar"), {"CKPT_SOURCE_SECRET_DIR": str(login)}, ["the server refused", "***"]),
    ]
    for i, (url, env, words) in enumerate(cases):
        dest = tmp_path / f"d{i}"
        line = one_line(run_agent("import", url, str(dest), env=env), dest, *words)
        assert PASSWORD not in line


@pytest.mark.parametrize("user, password", [
    (USER, "pa\\ss-word-0123"),                        # printable() doubled the backslash: not the password
    (USER, "tab\tin-password"),                         # a tab became \x09
    (USER, "quote'in\"password"),
    ("u" * 240, "longsecretpassword-0123456789"),      # the reply was cut at 300 characters inside it
    (USER, "pässwörd-ünïcode-0123"),
    (USER, "esc\x1b[31m-red-0123"),
])
def test_an_echoed_password_never_leaks_escaped_or_cut(ftp_server, tmp_path, user, password):  # noqa: F811
    """hostile1 D10: the agent masked the credential in the line it wrote, but only after escaping
    and cutting the server's reply; a backslash, a control character or a cut made the credential
    another string (failed before: `pa\\\\ss-word-0123`, `tab\\x09in-password`,
    `longsecretpassword-012345678` in the line)."""
    login = tmp_path / "login"
    login.mkdir()
    (login / "username").write_text(user)
    (login / "password").write_text(password)
    dest = tmp_path / "d"
    run = run_agent("import", ftp_server.echo_url("m.tar"), str(dest), env={"CKPT_SOURCE_SECRET_DIR": str(login)})
    line = one_line(run, dest, "the server refused", "***")
    unescaped = line.replace("\\\\", "\\")
    server_words = "550 Login of refused: password is not accepted here"
    for n in range(6, len(password) + 1):  # no piece of it of 6 characters or more, escaped or not
        for piece in {password[:n], password[-n:]} - {w for w in [password[-n:]] if w in server_words}:
            assert piece not in run.stderr and piece not in unescaped, (piece, line)


def test_s3(s3, tmp_path):  # noqa: F811
    cases = [
        (s3.uri("a%0D%0Ab/"), [], ["the import source", CONTROL, "percent-encoded"]),
        (s3.uri("a\tb.tar"), [], [CONTROL, "U+0009"]),
        (f"s3://AKIAEXAMPLE:{AWS_SECRET}@{s3.bucket}/x/", [], ["credentials in the URL are refused", "s3://***@"]),
        (s3.uri("absent.tar"), [], ["not found: s3://"]),
        (s3.uri("nothing-here/"), [], ["no objects to import"]),
        (s3.uri("x/"), ["--endpoint-url", f"http://AKIA:{AWS_SECRET}@127.0.0.1:1"], ["--endpoint-url",
                                                                                    "credentials in the URL"]),
        (s3.uri("x/"), ["--endpoint-url", "http://127.0.0.1:1/%0a"], ["--endpoint-url", CONTROL]),
    ]
    for i, (uri, args, words) in enumerate(cases):
        dest = tmp_path / f"d{i}"
        line = one_line(run_agent("import", uri, str(dest), *args), dest, *words)
        assert AWS_SECRET not in line
    dest = tmp_path / "env"  # the endpoint from the environment is checked the same way
    run = run_agent("import", s3.uri("x/"), str(dest), env={"AWS_ENDPOINT_URL": f"http://u:{AWS_SECRET}@127.0.0.1:1"})
    one_line(run, dest, "the S3 endpoint", "credentials in the URL are refused")


def test_gcs_and_azure(s3, azure_blob, tmp_path):  # noqa: F811
    connection = {"AZURE_STORAGE_CONNECTION_STRING": azure_blob.server.connection_string}
    cases = [
        (f"gs://{s3.bucket}/a%0D%0A/", {}, [CONTROL]),
        (f"gs://{s3.bucket}/a\r/", {}, [CONTROL, "U+000D"]),
        (azure_blob.uri("x%0A/"), connection, [CONTROL, "percent-encoded"]),
        (azure_blob.uri("a\x1b[31m/"), connection, [CONTROL, "U+001B"]),
        (f"az://{azure_blob.server.account}/absent/m/", connection, ["no such container 'absent'"]),
    ]
    for i, (uri, env, words) in enumerate(cases):
        dest = tmp_path / f"d{i}"
        one_line(run_agent("import", uri, str(dest), env=env), dest, *words)


def test_git(git_http, tmp_path):  # noqa: F811
    git_http.add_repo("model", tiny_model())
    cases = [
        (git_http.url("model%0D%0A"), [CONTROL]),
        (f"git+https://user:{AWS_SECRET}@example.com/r.git", ["credentials in the URL are refused"]),
        (f"git+{git_http.url('model')}@v9", ["no revision 'v9'"]),
        (f"git+{git_http.url('absent')}", ["repository not found"]),
    ]
    for i, (uri, words) in enumerate(cases):
        uri = uri if uri.startswith("git") else f"git+{uri}"
        dest = tmp_path / f"d{i}"
        line = one_line(run_agent("import", uri, str(dest)), dest, *words)
        assert AWS_SECRET not in line


def test_hugging_face(mini_hub, tmp_path):  # noqa: F811
    mini_hub.add_repo("org/model", tiny_model())
    cases = [
        ("hf://org/model", ["--endpoint-url", f"http://user:{AWS_SECRET}@127.0.0.1:1"], {},
         ["--endpoint-url", "credentials in the URL are refused"]),
        ("hf://org/model", ["--endpoint-url", f"{mini_hub.endpoint}/%0d%0a"], {}, [CONTROL]),
        ("hf://org/model", [], {"HF_ENDPOINT": f"{mini_hub.endpoint}/\u202e"}, ["the Hub endpoint", "bidirectional"]),
        ("hf://org/model@v9", ["--endpoint-url", mini_hub.endpoint], {}, ["no revision 'v9'"]),
        ("hf://org/absent", ["--endpoint-url", mini_hub.endpoint], {}, ["repository not found"]),
    ]
    for i, (uri, args, env, words) in enumerate(cases):
        dest = tmp_path / f"d{i}"
        line = one_line(run_agent("import", uri, str(dest), *args, env=env), dest, *words)
        assert AWS_SECRET not in line


TWINS = {"config.json": b"{}", "model.bin": b"1", "model\u200b.bin": b"2"}  # shows as model.bin twice


def test_invisible_twins_are_refused_by_every_source(web, git_http, mini_hub, tmp_path):  # noqa: F811
    """hostile1 D12: a zero-width space made a second `model.bin` in tables and events; tar, zip,
    Git and the Hub imported both (failed before: rc 0 each)."""
    (web.root / "twins.tar").write_bytes(tar_of(*TWINS.items()))
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        for name, data in TWINS.items():
            z.writestr(name, data)
    (web.root / "twins.zip").write_bytes(zipped.getvalue())
    git_http.add_repo("twins", TWINS)
    mini_hub.add_repo("org/twins", TWINS)
    for i, (uri, args) in enumerate([(web.url("twins.tar"), []), (web.url("twins.zip"), []),
                                     (f"git+{git_http.url('twins')}", []),
                                     ("hf://org/twins", ["--endpoint-url", mini_hub.endpoint])]):
        dest = tmp_path / f"d{i}"
        one_line(run_agent("import", uri, str(dest), *args), dest, "model\\u200b.bin", "invisible character U+200B")


def test_one_line_whatever_the_message(tmp_path):
    """The agent's last guard: a failure whose text has line breaks (a server's reply) is still
    printed as one line."""
    from checkpoint_operator.protocol.errors import one_line as join
    assert join("The HTTP server returned a redirect error\nThe last 30x error message was:\r\nFound") == \
        "The HTTP server returned a redirect error; The last 30x error message was:; Found"
