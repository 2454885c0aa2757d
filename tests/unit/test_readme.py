"""The README's links within itself lead somewhere (its contents list among them)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_readme_section_names_a_heading():
    text = README.read_text()
    outside_code = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    anchors = {github_anchor(m.group(1))
               for m in re.finditer(r"^#{1,6} (.+)$", outside_code, flags=re.MULTILINE)}
    links = re.findall(r"\]\(#([^)]+)\)", outside_code)
    assert len(links) >= 15  # the contents list alone has one per section
    assert sorted(set(links) - anchors) == []
