"""The agent's one exception type: a failure the user sees as one line (what, and why).

Kept apart from s3.py so that commands which never touch S3 (scan) do not import boto3.
"""

from __future__ import annotations


class AgentError(Exception):
    """A failure the user must see as one line: what (URI or file) and why. It may not happen again
    (a store that was down, a network that broke): the operator may run the pod again."""


# The agent's exit code for a Refusal (an AgentError, or any other failure, exits 1; SIGTERM 143).
REFUSED_EXIT_CODE = 3


class Refusal(AgentError):
    """A refusal of the data or the request for what it is (a file the names rule refuses, a key S3
    cannot hold, more checkpoints than a report takes): the same run on the same data refuses it
    again, so the operator fails with this line at once instead of running the pod again."""

    exit_code = REFUSED_EXIT_CODE


class Terminated(KeyboardInterrupt):
    """SIGTERM (a pod being stopped): unwinds like Ctrl-C, so every command cleans up the same way."""

    exit_code = 143


def one_line(text: str) -> str:
    """`text` as the one line a failure is (a pod's last line becomes the status message): line
    breaks a message may carry (a server's reply, an exception's text) joined with '; '."""
    if "\n" not in text and "\r" not in text:
        return text
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def yaml_problem(exc: BaseException) -> str:
    """A YAML parser's error (several lines, quoting the text) as one line: what and where."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML ({one_line(str(problem))}{where})"
