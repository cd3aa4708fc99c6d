"""Every agent command line the operator builds parses with the agent's real parser."""

import shlex


from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.cli import build_parser
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import agent_commands, workload
from checkpoint_operator.protocol import published as published_list
from checkpoint_operator.api.checkpoint import Location, S3Location
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.storage import store_for
from factories import training_job

S3 = OperatorConfig(storage_type="s3", s3_bucket="b")
VOLUME = OperatorConfig()
IMPORT = Checkpoint.model_validate({"metadata": {"name": "imp", "namespace": "default", "uid": "u-imp"},
                                    "spec": {"source": {"http": {"url": "https://example.test/m.tar"}}}})
INPUT = ResolvedInput("base", "u-base", "sha256:" + "a" * 64, "base", Location(s3=S3Location(uri="s3://b/x/base/")), 10)


def parse(command: list[str]):
    assert command[:1] == ["checkpoint-operator"], command
    return build_parser().parse_args(command[1:])


def pod_commands() -> list[list[str]]:
    """The commands of every pod the operator builds, on both stores."""
    tj = TrainingJob.model_validate(training_job())
    commands = []
    for config in (S3, VOLUME):
        store = store_for(config)
        commands.append(store.snapshot_command(tj, "/checkpoint-output"))
        if config is S3:
            commands += [c["command"] for c in store.input_volumes(tj, [INPUT]).init_containers]
        init, containers, _ = store.import_containers(IMPORT, 1000)
        for container in init + containers:
            command = container["command"]
            if command[:2] == ["sh", "-c"]:  # the volume store's import-then-scan script
                # $0 is DEST, "$@" the import's arguments (passed to the script, never inside it)
                script = command[2].replace('"$0"', shlex.quote(command[3])).replace('"$@"', shlex.join(command[4:]))
                commands += [shlex.split(part) for part in script.split(" && ")]
            else:
                commands.append(command)
    commands.append(workload.build_volume_scan_pod(Checkpoint.model_validate(
        {"metadata": {"name": "v", "namespace": "default", "uid": "u"},
         "spec": {"source": {"volume": {"claimName": "c", "path": "/x"}}}}), VOLUME)["spec"]["containers"][0]["command"])
    return commands


def test_every_built_command_parses():
    commands = pod_commands()
    assert {c[2] for c in commands} == {"scan", "snapshot", "download", "import"}
    for command in commands:
        parse(command)


def test_builders_put_the_values_where_the_parser_reads_them():
    args = parse(agent_commands.import_("s3://src/k", "/d", max_size=123, max_files=7))
    assert (args.source, args.dest, args.max_size, args.max_files) == ("s3://src/k", "/d", "123", 7)
    args = parse(agent_commands.snapshot("/o", "s3://b/p/", layout="files"))
    assert (args.dir, args.upload_to, args.layout, args.single) == ("/o", "s3://b/p/", "files", False)
    args = parse(agent_commands.scan("/o", single=True))
    assert args.single and args.result and not args.json and args.manifests_dir is None
    args = parse(agent_commands.scan("/o", single=True, result=False, manifests_dir="/m"))
    assert args.json and not args.result and args.manifests_dir == "/m"
    assert parse(agent_commands.verify("/d", manifest="/m.json")).manifest == "/m.json"
    assert parse(agent_commands.pack("/d", manifest="/m.json")).manifest == "/m.json"


def test_download_is_always_pinned_to_the_digest():
    command = agent_commands.download("s3://b/x/", "/d", digest="sha256:" + "a" * 64)
    assert parse(command).digest == "sha256:" + "a" * 64
    built = store_for(S3).input_volumes(TrainingJob.model_validate(training_job()), [INPUT]).init_containers
    assert built[0]["command"][-2:] == ["--digest", INPUT.digest]


def test_agent_commands_load_neither_the_operator_nor_the_plugin(tmp_path):
    """Agent pods start often (every input, snapshot, import): `agent ...` must not pay for kopf,
    the Kubernetes client or the kubectl plugin (issue 12: start-up)."""
    import json
    import subprocess
    import sys
    probe = ("import json, sys\nfrom checkpoint_operator.cli import main\n"
             f"main(['agent', 'scan', {str(tmp_path)!r}, '--json'])\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('kopf', 'kubernetes', 'boto3', 's3transfer') or m.startswith('checkpoint_operator.plugin.commands'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == []


# What `agent scan` may load besides the standard library: every agent pod pays each module's
# import (bench/scan.py, start-up). A module added here should be one the scan really uses.
SCAN_MODULES = {
    "checkpoint_operator", "checkpoint_operator.cli", "checkpoint_operator.agent", "checkpoint_operator.agent.cli",
    "checkpoint_operator.agent.redact", "checkpoint_operator.agent.errors", "checkpoint_operator.agent.scan",
    "checkpoint_operator.agent.manifest", "checkpoint_operator.agent.names", "checkpoint_operator.agent.tree",
    "checkpoint_operator.agent.hashing", "checkpoint_operator.agent.live_sealing",
    "checkpoint_operator.agent.containers", "checkpoint_operator.agent.formats",
    "checkpoint_operator.agent.completeness", "checkpoint_operator.agent.file_checks",
    "checkpoint_operator.agent.metadata", "checkpoint_operator.agent.metrics_files",
    "checkpoint_operator.agent.safe_read", "checkpoint_operator.agent.safe_pickle",
    "checkpoint_operator.agent.work_limit",
    # what the agent shares with the operator (protocol/): the manifest and names, never the results' models
    "checkpoint_operator.protocol", "checkpoint_operator.protocol.errors", "checkpoint_operator.protocol.manifest",
    "checkpoint_operator.protocol.names",
}


def test_agent_scan_imports_the_standard_library_and_its_own_modules_only(tmp_path):
    """No third-party package (pydantic's import and schemas were two thirds of the agent's start),
    and of the project only the modules a scan uses: not the local mode's or the plugin's parsers."""
    import json
    import subprocess
    import sys
    (tmp_path / "step-1").mkdir()
    (tmp_path / "step-1" / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    probe = ("import json, sys\nbefore = set(sys.modules)\nfrom checkpoint_operator.cli import main\n"
             f"main(['agent', 'scan', {str(tmp_path)!r}, '--json'])\n"
             "print(json.dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.splitlines()[0])["checkpoints"][0]["format"] == "safetensors"
    loaded = json.loads(out.splitlines()[-1])
    third_party = sorted({m.split(".")[0] for m in loaded if not m.startswith("_sysconfigdata")}  # stdlib's too
                         - set(sys.stdlib_module_names) - {"checkpoint_operator"})
    assert third_party == []
    assert sorted(m for m in loaded if m.startswith("checkpoint_operator") and m not in SCAN_MODULES) == []


def test_a_published_directory_named_like_an_option_is_one_argument_of_the_resume_pod():
    """H10-5: a Checkpoint's directory may start with '-' ('--ckpt-5', '-1': the scan takes it): the
    resume pod's `--published DIR` must still parse (each is `--published=DIR`, one argument)."""
    names = ["-1", "--help-me", "-x", "step-2"]
    args = parse(agent_commands.resume_parts("/checkpoint-output", parts=2, published=names))
    assert published_list.decode(args.published_list) == sorted(names) and not args.keep_sealed
