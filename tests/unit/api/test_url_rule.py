"""One URL rule for the CRD and the agent (hostile1 D3, D4, D12): random URLs fed to the CRD's
generated CEL rules (evaluated with a CEL library, RE2 semantics), to their Python twins and to
the agent's validator must meet the same fate; a URL the rule accepts parses without error in
the agent (urllib, the port, IDNA), and nothing the agent is given raises anything but its one
line (before: a fullwidth '＠', an unclosed '[::1' or an empty label 'a..b' ended in a traceback
and "a bug: please report it").

The tables of the two sides (api/urls.py, agent/urls.py and agent/names.py) are copies, kept
equal here; the invisible characters are checked against Unicode's own property (the `regex`
package knows Default_Ignorable_Code_Point)."""

from __future__ import annotations

import functools
import ipaddress
import urllib.parse

import cel
import pytest
import regex
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from checkpoint_operator.agent import names, urls as agent_urls
from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.api import urls as api_urls
from .test_rules import load_crd, open_api_schema

FIELD = ("spec", "source", "http")  # a URL field whose only other rule is its scheme


@functools.lru_cache(maxsize=None)
def url_rules_of_the_crd() -> list[dict]:
    node = open_api_schema(load_crd("Checkpoint"))
    for name in ("spec", "source", "http"):
        node = node["properties"][name]
    rules = [r for r in node["x-kubernetes-validations"] if "self.url.matches" in r["rule"]]
    assert len(rules) == 3
    return rules


@functools.lru_cache(maxsize=None)
def _program(rule: str):
    return cel.compile(rule)


def crd_accepts(url: str) -> bool:
    return all(_program(r["rule"]).execute({"self": {"url": url}}) for r in url_rules_of_the_crd())


def agent_accepts(url: str) -> bool:
    return agent_urls.url_problem(url) is None


def the_agent_parses(url: str) -> None:
    """What the agent does with a URL before any byte moves: never an exception but its line."""
    try:
        parsed = agent_urls.parse_url(url, "the import source")
    except AgentError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("the import source '")
        return
    assert parsed.scheme


# --- the pieces URLs are made of -------------------------------------------------------------------

INVISIBLE = "\u200b\u200c\u200d\u00ad\u2060\u034f\ufe0f\ufeff\u202e\u2066\u061c\u3164\U000e0041\u2028\x85\x00\t\n\x7f"
ODD = "＠[]:@%.-_/?#&=\\ ~+!$'()*,;éｕ" + INVISIBLE
labels = st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True), st.just("a" * 64), st.just(""),
                   st.text(alphabet="abc0-_" + ODD, min_size=1, max_size=6), st.just("xn--mnchen-3ya"))
hosts = st.one_of(
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.ip_addresses(v=6).map(lambda a: f"[{a}"),                 # unclosed
    st.ip_addresses(v=6).map(lambda a: f"[{a.exploded}:1]"),      # nine groups
    st.sampled_from(["[::1]", "[::ffff:1.2.3.4]", "[1.2.3.4]", "[v1.x]", "[fe80::1%25eth0]", "[::1", "::1]",
                     "ｕ＠127.0.0.1", "u@h", "u:p@h", "a..b", ".a", "a.", "h\\@evil", "[]", ""]),
)
ports = st.one_of(st.just(""), st.integers(0, 70000).map(lambda p: f":{p}"), st.sampled_from([":", ":x", ":-1",
                                                                                               ":０", ":65535"]))
credential_names = st.sampled_from(api_urls.CREDENTIAL_PARAMETERS + ("sv", "se", "versionId", "sigma", "tokens",
                                                                     "x-amz-date"))


@st.composite
def spelled(draw, name: str) -> str:
    """A query parameter name in random case, letters sometimes percent-encoded."""
    out = []
    for ch in name:
        ch = draw(st.sampled_from([ch.lower(), ch.upper()]))
        if draw(st.integers(0, 4)) == 0:
            out.append(f"%{ord(ch):02{draw(st.sampled_from(['x', 'X']))}}")
        else:
            out.append(ch)
    return "".join(out)


def encoded(text: str) -> str:
    return urllib.parse.quote(text, safe="")


queries = st.one_of(
    st.just(""),
    st.lists(st.tuples(credential_names.flatmap(spelled), st.text(alphabet="abcXYZ012%+/=", max_size=5)),
             max_size=3).map(lambda ps: "?" + "&".join(f"{k}={v}" for k, v in ps) if ps else ""),
    st.sampled_from(["?a=1#x&sig=2", "#?sig=1", "?sig", "?&token=x", "?TOKEN=x", "?to\u212aen=x", "?to%E2%84%AAen=x",
                     "?%C3sig=x", "?si%67=1", "?s%69g=1", "?x=1&X-Amz-Signature=2"]),
)
paths = st.one_of(
    st.just(""), st.just("/"),
    st.text(alphabet="/abc.%20" + ODD, max_size=12).map(lambda p: "/" + p),
    st.text(max_size=6).map(lambda t: "/" + encoded(t)),          # any code point, percent-encoded
    st.sampled_from(["/a%E2%80%AE.tar", "/%0D%0APASS", "/a%e2%80%8bb", "/%C2%85", "/%F3%A0%81%81", "/%ED%A0%80",
                     "/%E2%80", "/caf%C3%A9.tar", "/%EF%BB%BF", "/%E1%85%9F"]),
)
schemes = st.sampled_from(["http", "https", "ftp", "ftps", "s3", "gs", "az", "hf", "git", "git+https", "HTTP", "1x", ""])


@st.composite
def built_urls(draw) -> str:
    return f"{draw(schemes)}://{draw(hosts)}{draw(ports)}{draw(paths)}{draw(queries)}"


any_urls = st.one_of(built_urls(), st.text(max_size=40), st.text(alphabet=ODD + "hts:/", max_size=30))


# --- the property -------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_urls)
@example("http://ｕ＠127.0.0.1:9/x.tar")
@example("http://[::1/x.tar")
@example("http://a..b/x")
@example("https://acct.blob.core.windows.net/models/llama/?sv=2020&sig=SECRETSIG")
@example("http://h/x.tar?X-Amz-Credential=AKIA&X-Amz-Signature=s")
@example("https://h/m%E2%80%AE.tar")
@example("http://127.0.0.1:9/x.tar")
def test_the_crd_and_the_agent_refuse_the_same_urls(url):
    agent = agent_accepts(url)
    assert crd_accepts(url) == agent, (url, agent_urls.url_problem(url))
    assert api_urls.url_ok(url) == agent
    the_agent_parses(url)


@pytest.mark.parametrize("url, words", [
    ("http://ｕ＠127.0.0.1:9/x.tar", "must be scheme://host[:port]/..."),
    ("ftp://[::1/x.tar", "must be scheme://host[:port]/..."),
    ("git://a..b/r", "must be scheme://host[:port]/..."),
    ("http://h:65536/x", "must be scheme://host[:port]/..."),
    ("https://acct.blob.core.windows.net/models/?sv=2020&sig=S", "carries a credential in its query (sig=)"),
    ("http://h/x?X-Amz-Signature=s", "carries a credential in its query (x-amz-signature=)"),
    ("https://h/x?X-Goog-Signature=s", "carries a credential in its query (x-goog-signature=)"),
    ("http://h/x?%74oken=s", "carries a credential in its query (token=)"),
    ("http://u:p@h/x", "carries user:password@"),
    ("http://h/a%E2%80%AE", "holds a bidirectional control character U+202E"),
    ("http://h/model\u200b.tar", "holds an invisible character U+200B"),
])
def test_each_refusal_is_one_line_naming_the_url_without_its_query(url, words):
    with pytest.raises(AgentError) as refused:
        agent_urls.check_url(url, "the import source")
    message = str(refused.value)
    assert words in message and "\n" not in message
    assert "=s" not in message and "SECRET" not in message and "sig=S" not in message
    assert not crd_accepts(url)


def test_a_refused_url_is_shown_without_its_query_or_userinfo():
    assert agent_urls.shown("https://u:p@h/x?sig=SECRET") == "https://***@h/x?..."


@pytest.mark.parametrize("address", ["::1", "1:2:3:4:5:6:7:8", "1::", "::", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8",
                                     "::ffff:1.2.3.4", "1:2:3:4:5:6:1.2.3.4", "fe80::1:2"])
def test_every_ipv6_literal_python_reads_is_accepted(address):
    ipaddress.IPv6Address(address)
    assert agent_accepts(f"http://[{address}]:80/x") and crd_accepts(f"http://[{address}]:80/x")


@given(st.ip_addresses(v=6))
@settings(max_examples=100, deadline=None, database=None)
def test_random_ipv6_literals_are_accepted(address):
    assert agent_accepts(f"http://[{address}]/x") and crd_accepts(f"http://[{address}]/x")
    assert agent_accepts(f"http://[{address.exploded}]/x") and crd_accepts(f"http://[{address.exploded}]/x")


def test_the_two_sides_share_their_tables():
    assert agent_urls.URL == api_urls.URL
    assert agent_urls.CREDENTIAL_PARAMETERS == api_urls.CREDENTIAL_PARAMETERS
    assert names.DEFAULT_IGNORABLE == api_urls.DEFAULT_IGNORABLE


def test_the_invisible_characters_are_unicode_s_default_ignorable_code_points():
    table = {cp for lo, hi in api_urls.DEFAULT_IGNORABLE for cp in range(lo, hi + 1)}
    every = "".join(chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)
    unicode = {ord(ch) for ch in regex.findall(r"\p{Default_Ignorable_Code_Point}", every)}
    assert table == unicode
    assert names.BIDI_CONTROLS <= {chr(cp) for cp in table}


@given(st.characters(exclude_categories=["Cs"]))
@settings(max_examples=400, deadline=None, database=None)
def test_the_percent_encoded_pattern_is_the_forbidden_characters_encoded(ch):
    forbidden = names.char_problem(ch) is not None and ch != "\\"
    assert api_urls.cel_matches(api_urls.FORBIDDEN_CHAR, encoded(ch)) == forbidden
    assert api_urls.cel_matches(api_urls.FORBIDDEN_CHAR, encoded(ch).lower()) == forbidden
    assert api_urls.cel_matches(api_urls.FORBIDDEN_CHAR, ch) == forbidden
