"""The documentation's links resolve: every relative link of README.md and docs/*.md names a
file of the repository, and every ``#anchor`` (in the same page or another) names a heading
of that page, by GitHub's rules for heading anchors. Every page of docs/ is reachable from the
README. Pure Python: no rig, no network."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
# An inline link or image: [text](target) or ![alt](target "title"). Link texts in these docs
# hold no brackets of their own, and targets no spaces or parentheses.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
# A reference definition: [label]: target
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# A scheme (https:, mailto:) or a protocol-relative //host: not a file of the repository.
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")


@dataclass(frozen=True)
class Link:
    page: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: {self.target}"


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1: a link or a ``#`` inside a code
    block is an example, not a link or a heading."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        opened = FENCE.match(line)
        if fence is None:
            if opened:
                fence = opened[1]
            else:
                yield number, line
        elif opened and opened[1][0] == fence[0] and len(opened[1]) >= len(fence):
            fence = None


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading, before duplicates are counted: its text as rendered
    (code spans, links and emphasis reduced to their text), lowercased, every character but
    letters, digits, spaces, ``-`` and ``_`` dropped, each space turned into ``-``."""
    text = CODE_SPAN.sub(lambda m: m[2].strip(), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("*", "")  # emphasis (an underscore stays: GitHub keeps it)
    kept = "".join(c for c in text.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a page; the second heading with a slug gets ``-1``, the third
    ``-2``, as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(text):
        if heading := HEADING.match(line):
            base = slug(heading[2])
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> Iterator[Link]:
    for number, line in prose_lines(page.read_text()):
        if definition := REFERENCE.match(line):
            yield Link(page, number, definition[1])
            continue
        prose = CODE_SPAN.sub("", line)  # `[x](y)` in a code span is text
        for match in INLINE_LINK.finditer(prose):
            yield Link(page, number, match[1])


def broken(link: Link) -> str | None:
    """Why the link does not resolve, or None where it does."""
    if EXTERNAL.match(link.target):
        return None
    path_part, _, anchor = link.target.partition("#")
    target = (link.page.parent / unquote(path_part)).resolve() if path_part else link.page
    if ROOT not in (target, *target.parents):
        return "points outside the repository"
    if not target.exists():
        return f"no file {target.relative_to(ROOT)}"
    if anchor:
        if target.is_dir() or target.suffix != ".md":
            return "an anchor into something that is not a Markdown page"
        if unquote(anchor) not in anchors(target.read_text()):
            return f"no heading with the anchor #{anchor} in {target.relative_to(ROOT)}"
    return None


# --- the checker itself ---


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Fair share", "fair-share"),
        ("The live view and `GET /events`", "the-live-view-and-get-events"),
        ("Host keys are the container's own", "host-keys-are-the-containers-own"),
        ("No GPU here?", "no-gpu-here"),
        ("Trying it: `make run`", "trying-it-make-run"),
        ("`max_gpus` and `gpu_ids`", "max_gpus-and-gpu_ids"),
        ("From a terminal: `deepdock`", "from-a-terminal-deepdock"),
        ("A [linked](x.md) *word*", "a-linked-word"),
        ("Ünïcode stays", "ünïcode-stays"),
    ],
)  # fmt: skip
def test_a_heading_gets_githubs_anchor(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_repeated_headings_are_numbered_and_code_blocks_are_not_headings() -> None:
    text = "# Notes\n\n## Errors\n\n```sh\n# Errors\n```\n\n## Errors\n\n### Errors\n"

    assert anchors(text) == {"notes", "errors", "errors-1", "errors-2"}


def test_a_broken_link_or_anchor_is_caught() -> None:
    page = DOCS / "api.md"
    cases = {
        "security.md": None,
        "security.md#tokens": None,
        "#errors": None,
        "#no-such-heading": "no heading with the anchor #no-such-heading in docs/api.md",
        "no-such-page.md": "no file docs/no-such-page.md",
        "security.md#no-such-heading": "no heading with the anchor #no-such-heading",
        "../../etc/passwd": "points outside the repository",
        "dashboard.png#x": "not a Markdown page",
        "https://example.org/nope": None,
        "mailto:someone@example.org": None,
    }
    for target, problem in cases.items():
        reason = broken(Link(page, 1, target))
        if problem is None:
            assert reason is None, (target, reason)
        else:
            assert reason is not None, target
            assert problem in reason, (target, reason)


def test_links_are_read_from_prose_only(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        'See [a](a.md) and ![b](b.png "title"), not `[c](c.md)`.\n'
        "```md\n[d](d.md)\n```\n"
        "[e]: e.md\n"
    )

    assert [link.target for link in links(page)] == ["a.md", "b.png", "e.md"]


# --- the documentation ---


def test_every_relative_link_and_anchor_resolves() -> None:
    found = [link for page in pages() for link in links(page)]
    problems = [f"{link}: {reason}" for link in found if (reason := broken(link))]

    assert len(found) > 50, "the link reader found too few links: is it still reading them?"
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_page_of_docs_is_linked_from_the_readme() -> None:
    linked = {
        (README.parent / link.target.partition("#")[0]).resolve()
        for link in links(README)
        if not EXTERNAL.match(link.target) and link.target.partition("#")[0]
    }

    assert set(DOCS.glob("*.md")) - linked == set()
