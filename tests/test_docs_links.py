"""The documentation holds together: every relative link in README.md, CONTRIBUTING.md and docs/*.md points at
a file that exists (and an ``#anchor`` at a heading there), the README stays a front door, and ``.ci/run``
runs exactly the README's install and test commands. Fast, no network.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def prose(text: str) -> str:
    """The text without fenced code blocks (their ``#`` lines are not headings, their brackets not links)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters, digits, ``-``, ``_`` and
    spaces kept), spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.lower().replace("`", "")
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(prose(path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def relative_links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", prose(path.read_text(encoding="utf-8")))
    return [target for target in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)]


def test_the_link_finder_and_slugs_work_on_known_cases():
    assert slug("OpenAI Realtime endpoint (`/v1/realtime`)") == "openai-realtime-endpoint-v1realtime"
    assert slug("Recording (only with consent)") == "recording-only-with-consent"
    assert slug("Soak: 30 minutes at capacity (CPU profile)") == "soak-30-minutes-at-capacity-cpu-profile"
    text = 'See [a](docs/a.md#x), ![img](img/p.png "t"), <https://example.org>, [web](https://x.y), `[no](t.md)`.'
    found = LINK.findall(INLINE_CODE.sub("", text))
    assert found == ["docs/a.md#x", "img/p.png", "https://x.y"]
    assert prose("a\n```bash\n# not a heading [x](y.md)\n```\nb\n") == "a\n\nb\n"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_every_relative_link_resolves(doc: Path):
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / unquote(file_part)).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


def test_the_docs_have_links_to_check():
    # A link syntax the finder missed would make the test above pass on nothing.
    assert len(relative_links(REPO / "README.md")) >= 10


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"


def test_ci_runs_exactly_the_readme_install_and_test_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    for section in ("Install", "Test"):
        block = re.search(rf"^## {section}\n.*?^```bash\n(.*?)^```", readme, re.M | re.S)
        assert block, f"README has no bash block under '## {section}'"
        commands = [c.strip() for c in block.group(1).splitlines() if c.strip() and not c.startswith("#")]
        assert commands
        for command in commands:
            assert command in ci, f".ci/run does not run the README's {section} command {command!r}"
