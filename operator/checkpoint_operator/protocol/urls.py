"""What a URL the agent is given may hold: one rule for every URL (the import's SOURCE, every
--endpoint-url and AWS_ENDPOINT_URL, every s3:// URI), checked before anything is fetched, and
one parser (`parse_url`) behind it that never raises anything but the rule's one line.

Refused, naming the URL (credentials and the query hidden, what would break a line escaped) and
the rule, in this order:
- control characters (C0, DEL, C1), line and paragraph separators, bidirectional controls and
  invisible characters (the names rule, agent/names.py), as they are or percent-encoded
  (`%0D%0A`, `%E2%80%AE`): a URL is quoted in messages, events and logs, and its decoded path
  becomes protocol commands (FTP's `RETR`) and file names;
- credentials: before the host (`scheme://user:secret@host`), or in the query as the parameters
  that carry them (`sig` of an Azure SAS, `X-Amz-Signature`/`X-Amz-Credential`/
  `X-Amz-Security-Token` of an S3 presigned URL, `X-Goog-Signature`, `token`, `access_token`...,
  also percent-encoded): they go in a Secret the operator mounts (each source's `secretRef`),
  never in a URL, which is quoted in statuses and events;
- anything but `scheme://host[:port]` before the path: a host is ASCII DNS labels (1-63 of
  letters, digits, `-`, `_`; an internationalized name in its `xn--` form), an IPv4 address or an
  IPv6 literal in brackets; a port is 0-65535. What Python's URL and IDNA codecs would raise on
  (a fullwidth `＠`, an unclosed `[::1`, an empty label `a..b`) never reaches them.

The CRD refuses the same set in every URL field of a spec (api/sources.py `url_rules`): the
patterns below are its patterns, and tests/unit/api/test_url_rule.py feeds random URLs to both.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Optional

from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.names import char_problem, printable

SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*"
# `scheme://` then anything but '/', '?' or '#' up to an '@': the authority holds userinfo.
USERINFO = re.compile(rf"^{SCHEME}://[^/?#]*@")
_H16 = r"[0-9A-Fa-f]{1,4}"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_LS32 = rf"({_H16}:{_H16}|{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET})"
# RFC 3986 IPv6address, alternative by alternative (at most 7 groups beside a '::').
IPV6 = "(" + "|".join([
    rf"({_H16}:){{6}}{_LS32}",
    rf"::({_H16}:){{5}}{_LS32}",
    rf"({_H16})?::({_H16}:){{4}}{_LS32}",
    rf"(({_H16}:){{0,1}}{_H16})?::({_H16}:){{3}}{_LS32}",
    rf"(({_H16}:){{0,2}}{_H16})?::({_H16}:){{2}}{_LS32}",
    rf"(({_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
    rf"(({_H16}:){{0,4}}{_H16})?::{_LS32}",
    rf"(({_H16}:){{0,5}}{_H16})?::{_H16}",
    rf"(({_H16}:){{0,6}}{_H16})?::",
]) + ")"
_LABEL = r"[A-Za-z0-9_-]{1,63}"
PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9][0-9]|6[0-4][0-9][0-9][0-9]|[1-5][0-9][0-9][0-9][0-9]|[0-9]{1,4})"
AUTHORITY = rf"({_LABEL}(\.{_LABEL})*\.?|\[{IPV6}\])(:{PORT}?)?"
# (credentials before the host are the credentials rule's: the shape passes over them)
URL = rf"^{SCHEME}://([^/?#]*@)?{AUTHORITY}([/?#].*)?$"
# Query parameters that carry a credential (compared case-insensitively, after percent-decoding).
CREDENTIAL_PARAMETERS = ("sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
                         "x-goog-signature", "x-goog-credential", "token", "access_token", "api_key", "apikey",
                         "password")
MAX_SHOWN = 300  # characters of a refused URL quoted in the message

URL_RULE_MESSAGE = ("must be scheme://host[:port]/...: a host of ASCII DNS labels (letters, digits, '-', '_'; "
                    "an internationalized name in its xn-- form), an IPv4 address or a bracketed IPv6 literal, "
                    "a port of 0-65535")
USERINFO_MESSAGE = "carries user:password@: credentials in the URL are refused (put them in a Secret: secretRef)"
QUERY_MESSAGE = ("carries a credential in its query ({}=): signed or tokenised URLs are refused (put the credential "
                 "in a Secret: secretRef, e.g. AZURE_STORAGE_SAS_TOKEN)")


def _unsafe_char(text: str) -> Optional[str]:
    for ch in text:
        if ch == "\\":
            continue  # a backslash breaks no line; the sources refuse it where it matters (names)
        problem = char_problem(ch)
        if problem:
            return "bytes that are not valid UTF-8" if problem.startswith("is ") else problem.removeprefix("has ")
    return None


def _query_credential(url: str) -> Optional[str]:
    query = url.split("#", 1)[0].partition("?")[2]
    for part in query.split("&"):
        name = urllib.parse.unquote(part.partition("=")[0], errors="replace")
        if "=" in part and name.isascii() and name.lower() in CREDENTIAL_PARAMETERS:
            return name.lower()
    return None


def url_problem(url: str) -> Optional[str]:
    """Why `url` is refused (see the module doc), or None."""
    problem = _unsafe_char(url)
    if problem:
        return f"holds {problem}: control and invisible characters are not allowed in a URL"
    decoded = urllib.parse.unquote(url, errors="replace")
    if decoded != url:
        problem = _unsafe_char(decoded)
        if problem:
            return f"holds {problem}, percent-encoded: control and invisible characters are not allowed in a URL"
    if USERINFO.match(url):
        return USERINFO_MESSAGE
    parameter = _query_credential(url)
    if parameter:
        return QUERY_MESSAGE.format(parameter)
    if not re.fullmatch(URL[1:-1], url):
        return URL_RULE_MESSAGE
    return None


@dataclass(frozen=True)
class ParsedUrl:
    scheme: str
    netloc: str
    hostname: str   # lower-cased, IPv6 without its brackets
    port: Optional[int]
    path: str       # still percent-encoded
    query: str
    fragment: str


def parse_url(url: str, what: str) -> ParsedUrl:
    """`url` checked (check_url) and split; what Python's parsers raise on becomes the rule's line."""
    check_url(url, what)
    try:
        parts = urllib.parse.urlsplit(url)
        hostname, port = parts.hostname or "", parts.port
        if hostname and not hostname.startswith("["):
            hostname.encode("idna")
    except (ValueError, UnicodeError):
        raise AgentError(f"{what} '{shown(url)}' {URL_RULE_MESSAGE}") from None
    return ParsedUrl(parts.scheme, parts.netloc, hostname, port, parts.path, parts.query, parts.fragment)


def scheme_of(url: str) -> str:
    """The scheme of a URL a server sent (a redirect): '' when it is not a URL at all."""
    match = re.match(rf"({SCHEME}):", url)
    return match.group(1).lower() if match else ""


def shown(url: str) -> str:
    """`url` for a message: credentials and the query hidden, what would break a line escaped, bounded."""
    hidden = re.sub(rf"^({SCHEME}://)[^/?#]*@", r"\1***@", url)
    base, mark, _ = hidden.partition("?")
    text = printable(base + ("?..." if mark else ""))
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def check_url(url: str, what: str) -> str:
    """`url` when it passes the rule, else AgentError: one line naming `what` and the rule."""
    problem = url_problem(url)
    if problem:
        raise AgentError(f"{what} '{shown(url)}' {problem}")
    return url
