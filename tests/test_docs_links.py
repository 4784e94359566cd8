"""Every relative link in the README and docs/ points at a file that exists, and at a heading that exists.

Docs are a newcomer's way in: a link to a results file not yet written, or to a section since renamed,
is a dead end. Links to web addresses are not followed (no internet here); code spans and code blocks
are not links.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#{1,6}\s+(.+?)\s*$", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def dead_links(pages: list[Path], root: Path = ROOT) -> list[str]:
    dead = []
    for page in pages:
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"^[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path) if path else page
            if not dest.exists():
                dead.append(f"{page.relative_to(root)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
                dead.append(f"{page.relative_to(root)}: {target} (no such heading)")
    return dead


def test_every_relative_link_in_the_docs_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    assert len(pages) > 5
    assert dead_links(pages) == []


def test_the_link_check_finds_a_dead_file_and_a_dead_heading(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# Real heading\n")
    page.write_text("[ok](b.md#real-heading) [gone](c.md) [moved](b.md#old) `[code](x.md)`\n")
    assert dead_links([page], tmp_path) == ["a.md: c.md (no such file)", "a.md: b.md#old (no such heading)"]
