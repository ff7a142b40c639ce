"""Every relative link in the Markdown documentation leads somewhere: the file exists, and a
#anchor names a heading of the target file (GitHub's slugs). A moved section or a renamed page
fails here, naming the file and the link, instead of leaving a reader at a dead end."""
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
            *sorted((ROOT / "examples").rglob("*.md"))]


def prose(text: str) -> str:
    """The text a reader sees as prose: code blocks and code spans hold no links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    kept = "".join(c for c in text
                   if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")  # GitHub numbers repeated headings
    return result


def shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(path.read_text())):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file {shown(dest)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {shown(dest)}")
    return broken


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(shown(p)))
def test_every_relative_link_and_anchor_resolves(path: Path):
    broken = broken_links(path)
    assert not broken, f"{shown(path)}: broken links:\n  " + "\n  ".join(broken)


def test_a_broken_link_and_a_broken_anchor_are_found(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## The `x` part: here\n\n[ok](#the-x-part-here) [self](page.md#title)"
                    " [gone](missing.md) [bad anchor](#nowhere) `[in code](nope.md)`\n"
                    "```\n[in a block](nope.md)\n```\n[web](https://example.com/x)\n")
    assert [b.split(":")[0] for b in broken_links(page)] == ["missing.md", "#nowhere"]


def test_the_readme_stays_short():
    """The README is the page a newcomer reads to the end; reference text belongs in docs/."""
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 200, f"README.md has {lines} lines: move reference text into docs/"
