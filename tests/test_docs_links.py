"""Every relative link in the documentation leads somewhere: README.md, docs/*.md and the other
Markdown files of the repository, links to files and directories and to #headings, with GitHub's
anchor rules (github-slugger: lower case, punctuation dropped, spaces to hyphens, -1, -2 ... for
repeated headings). Links to other sites are not followed (no network here)."""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
# [text](target "title") and ![alt](target); the text may hold one level of brackets
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>\n]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)"
                         r"(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"", re.I)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def markdown_files() -> list[Path]:
    """The Markdown files git tracks or would track (new pages count before their first commit)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return sorted(ROOT / name for name in listed if (ROOT / name).is_file())


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(text.split("\n"), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not line.strip()[len(match.group(1)):].strip():
                fence = None
        else:
            out.append((number, line))
    return out


def heading_text(raw: str) -> str:
    """A heading as GitHub renders it to text: code spans keep their content, links their text,
    emphasis markers and HTML tags go."""
    text = CODE_SPAN.sub(lambda m: m.group(2).strip(), raw)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text).strip()


def slug(text: str) -> str:
    """github-slugger: lower-case, drop every character that is not a letter, mark, number,
    connector punctuation, hyphen or space, then spaces become hyphens."""
    kept = "".join(c for c in text.lower()
                   if c in " -" or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The #fragments GitHub gives a Markdown file: one per heading (repeats numbered), plus
    explicit HTML anchors."""
    text = path.read_text(encoding="utf-8")
    seen: dict[str, int] = {}
    found: set[str] = set()
    lines = prose_lines(text)
    for index, (number, line) in enumerate(lines):
        match = ATX.match(line)
        title = None
        if match:
            title = match.group(2) or ""
        elif index + 1 < len(lines) and lines[index + 1][0] == number + 1 and line.strip() \
                and re.fullmatch(r" {0,3}(=+|-+)[ \t]*", lines[index + 1][1]) \
                and not re.match(r" {0,3}([-*+>|]|\d+[.)]|#)", line):
            title = line  # a setext heading
        if title is None:
            continue
        base = slug(heading_text(title))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found.update(HTML_ANCHOR.findall(text))
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline link and reference definition outside code."""
    out = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub(lambda m: "x" * len(m.group(0)), line)
        out += [(number, m.group(1)) for m in INLINE_LINK.finditer(line)]
        out += [(number, m.group(1)) for m in REFERENCE_DEFINITION.finditer(line)]
    return [(number, target.strip("<>")) for number, target in out]


def dead_links(path: Path, anchor_cache: dict[Path, set[str]]) -> list[str]:
    problems = []
    where = path.relative_to(ROOT)
    for number, target in links(path):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue
        file_part, _, fragment = target.partition("#")
        file_part = file_part.split("?", 1)[0]
        if file_part.startswith("/"):
            resolved = (ROOT / file_part.lstrip("/")).resolve()
        else:
            resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{where}:{number}: {target}: leaves the repository")
            continue
        if not resolved.exists():
            problems.append(f"{where}:{number}: {target}: no such file {resolved.relative_to(ROOT)}")
            continue
        if fragment and resolved.suffix == ".md":
            if resolved not in anchor_cache:
                anchor_cache[resolved] = anchors(resolved)
            if fragment not in anchor_cache[resolved]:
                problems.append(f"{where}:{number}: {target}: {resolved.relative_to(ROOT)} has no heading "
                                f"#{fragment}")
    return problems


def test_documentation_has_no_dead_relative_links() -> None:
    files = markdown_files()
    assert ROOT / "README.md" in files and any(f.parent == ROOT / "docs" for f in files)
    cache: dict[Path, set[str]] = {}
    problems = [problem for path in files for problem in dead_links(path, cache)]
    assert not problems, "dead links:\n" + "\n".join(problems)


@pytest.mark.parametrize("heading, anchor", [
    ("Snapshot rules: output → Checkpoints", "snapshot-rules-output--checkpoints"),
    ("Scale: bench/scale.py", "scale-benchscalepy"),
    ("`kubectl ckpt`: the plugin", "kubectl-ckpt-the-plugin"),
    ("What the [training code](x.md) sees", "what-the-training-code-sees"),
    ("Über *fast* snake_case", "über-fast-snake_case"),
])
def test_anchor_rule_is_githubs(heading: str, anchor: str) -> None:
    assert slug(heading_text(heading)) == anchor


def test_checker_finds_dead_files_anchors_and_repeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# A\n## Same\n## Same\nSetext title\n---\n"
        "[ok](#same-1) [ok](#setext-title) [ok](../README.md#top) [ok](b.md) [web](https://x.invalid/#y)\n"
        "[dead anchor](#same-2) [dead file](c.md) [dead in other](../README.md#nope) [out](../../etc/passwd)\n"
        "`[in code](nowhere.md)`\n```\n[in fence](nowhere.md)\n```\n[ref]: missing.md\n")
    (tmp_path / "docs" / "b.md").write_text("# B\n")
    (tmp_path / "README.md").write_text("# Top\n")
    problems = dead_links(tmp_path / "docs" / "a.md", {})
    assert [p.split(": ", 1)[1] for p in problems] == [
        "#same-2: docs/a.md has no heading #same-2",
        "c.md: no such file docs/c.md",
        "../README.md#nope: README.md has no heading #nope",
        "../../etc/passwd: leaves the repository",
        "missing.md: no such file docs/missing.md",
    ]


def test_every_docs_page_is_in_the_index() -> None:
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    linked = {target.partition("#")[0] for _, target in links(ROOT / "docs" / "README.md")}
    missing = sorted(page.name for page in (ROOT / "docs").glob("*.md")
                     if page.name != "README.md" and page.name not in linked)
    assert index and not missing, f"docs/README.md does not link {missing}"
