"""What a URL the agent is given may hold: one rule for every URL (the import's SOURCE, every
--endpoint-url and AWS_ENDPOINT_URL, every s3:// URI), checked before anything is fetched.

Refused, naming the URL (with what would break a line escaped) and the rule:
- control characters (C0, DEL, C1), line and paragraph separators and bidirectional controls,
  as they are or percent-encoded (`%0D%0A`): a URL is quoted in messages, events and logs, and
  its decoded path becomes protocol commands (FTP's `RETR`) and file names. ftplib raises on a
  CR or LF in a command: before this rule, an FTP URL with `%0D%0A` crashed the import;
- credentials before the host (`scheme://user:secret@host`): they go in a Secret the operator
  mounts (each source's `secretRef`), never in a URL, which the operator quotes in statuses and
  events. The CRD refuses both in every URL field of a spec (api/sources.py) with the same rule.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Optional

from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.agent.names import char_problem, printable

# `scheme://` then anything but '/', '?' or '#' up to an '@': the authority holds userinfo.
USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@")
MAX_SHOWN = 300  # characters of a refused URL quoted in the message


def _unsafe_char(text: str) -> Optional[str]:
    for ch in text:
        if ch == "\\":
            continue  # a backslash breaks no line; the sources refuse it where it matters (names)
        problem = char_problem(ch)
        if problem:
            return "bytes that are not valid UTF-8" if problem.startswith("is ") else problem.removeprefix("has ")
    return None


def url_problem(url: str) -> Optional[str]:
    """Why `url` is refused (see the module doc), or None."""
    problem = _unsafe_char(url)
    if problem:
        return f"holds {problem}: control characters are not allowed in a URL"
    decoded = urllib.parse.unquote(url, errors="replace")
    if decoded != url:
        problem = _unsafe_char(decoded)
        if problem:
            return f"holds {problem}, percent-encoded: control characters are not allowed in a URL"
    if USERINFO.match(url):
        return "carries user:password@: credentials in the URL are refused (put them in a Secret: secretRef)"
    return None


def shown(url: str) -> str:
    """`url` for a message: credentials hidden, what would break a line escaped, bounded."""
    hidden = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@", r"\1***@", url)
    text = printable(hidden)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def check_url(url: str, what: str) -> str:
    """`url` when it passes the rule, else AgentError: one line naming `what` and the rule."""
    problem = url_problem(url)
    if problem:
        raise AgentError(f"{what} '{shown(url)}' {problem}")
    return url
