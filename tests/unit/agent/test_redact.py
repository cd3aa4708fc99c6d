"""No credential leaves the agent, escaped or cut (agent/redact.py, hostile1 D10)."""

from __future__ import annotations

import io
import json

import pytest

from checkpoint_operator.agent.names import printable
from checkpoint_operator.agent.redact import MASK, RedactingStream, known_secrets, quoted

SECRETS = ["pa\\ss-word", "tab\tin-pw", "quo'te\"pw", "ünï-cödé-pw", "esc\x1b[0m-pw", "plain-secret-0123"]


@pytest.mark.parametrize("secret", SECRETS)
def test_every_written_form_of_a_secret_is_masked(secret):
    secrets = known_secrets({"HF_TOKEN": secret})
    for form in (secret, printable(secret), json.dumps(secret)[1:-1], repr(secret)[1:-1],
                 secret.encode("unicode_escape").decode()):
        out = io.StringIO()
        RedactingStream(out, secrets).write(f"error: the server said {form} was wrong\n")
        assert out.getvalue() == f"error: the server said {MASK} was wrong\n", form


@pytest.mark.parametrize("secret", SECRETS)
def test_quoted_masks_before_it_escapes_and_cuts(secret):
    secrets = known_secrets({"HF_TOKEN": secret})
    reply = "550 " + "u" * 280 + f" password {secret} is not accepted"  # the cut falls inside it
    line = quoted(reply, 300, secrets)
    assert line.endswith("...") and len(line) == 303
    assert not any(secret[:n] in line or printable(secret)[:n] in line for n in range(4, len(secret) + 1))
    assert quoted(f"said {secret}\nnext", 300, secrets) == f"said {MASK}\\nnext"
