"""The credential watch of the tests (tests/credentials.py) sees what it must: a helper that
looked nowhere would pass every test."""

from __future__ import annotations

import logging

import credentials
from agentrun import run_agent


def test_a_registered_credential_is_found_in_any_form():
    credentials.register("hf+token/x")
    witness = credentials.Witness()
    witness.saw("status", "message: s3://AKIA:ckpt-test-secret-0123456789@bucket/")
    witness.saw("event", "login ftp-secret-0123 refused")
    witness.saw("log", "GET /api?token=hf%2Btoken%2Fx")  # percent-encoded
    witness.saw("clean", "nothing here")
    found = witness.leaks(credentials.SECRETS)
    assert sorted(f.split(":")[0] for f in found) == ["event", "log", "status"], found


async def test_pod_logs_objects_log_lines_and_agent_output_are_watched(api, emulator_server):
    witness, handler = credentials.start()
    try:
        credentials.watch_emulator(witness, emulator_server.emulator)
        await api.create("v1/pods", "default", {"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "i"}]}})
        await api.write_log("default", "p", "c", "leaked ftp-secret-0123 in a pod log")
        await api.create("v1/configmaps", "default", {"metadata": {"name": "m"}, "data": {"x": "ckpt-test-secret-0123456789"}})
        await api.create("v1/secrets", "default", {"metadata": {"name": "s"}, "stringData": {"x": "ckpt-test-secret-0123456789"}})
        logging.getLogger("checkpoint_operator.test").warning("a log line with %s", credentials.AZURITE_KEY)
        run_agent("import", "ftp://u:ftp-secret-0123@127.0.0.1:1/x.tar", "/nonexistent/dest")
        credentials.emulator_objects(witness, emulator_server.call(emulator_server.emulator.export_state))
    finally:
        credentials.stop(handler)
    found = "\n".join(witness.leaks(credentials.SECRETS))
    assert "pod log default/p c" in found and "ConfigMap default/m" in found and "log checkpoint_operator.test" in found
    assert "Secret default/s" not in found  # a Secret is where a credential belongs
    assert "agent import" not in found  # the agent hid the password it was given in the URL
