"""The README and docs/ link only to files inside the repository, and those files exist;
the architecture document is there and names what it promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Paths written in backticks that look like repository files (folder/file.ext or a known top file).
_PATH = re.compile(r"`((?:\.\./|[\w.-]+/)+[\w.-]+\.(?:md|py|toml|yaml|cfg|txt))`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_and_file_reference_resolves_inside_the_repository(doc):
    text = doc.read_text(encoding="utf-8")
    targets = [t for t in _LINK.findall(text) if not re.match(r"[a-z]+://|#|mailto:", t)]
    targets += _PATH.findall(text)
    assert targets or doc.name != "README.md"
    for target in targets:
        name = target.split("#")[0]
        # relative to the document, else from the repository root or the package (`ir/io.py`)
        candidates = [(base / name).resolve() for base in (doc.parent, ROOT, ROOT / "presso")]
        path = next((c for c in candidates if c.exists()), candidates[0])
        assert path.is_relative_to(ROOT), f"{doc.name} points outside the repository: {target}"
        assert path.exists(), f"{doc.name} refers to a missing file: {target}"


def test_architecture_document_covers_layers_flow_and_extension():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for heading in ("## Layers", "### Import rule", "## The flow of a model", "## Writing models",
                    "## How to add a pass", "## How to add a target", "## How to add a backend"):
        assert heading in text, heading
    for module in re.findall(r"`((?:ir|passes|backends|tools)/[\w/]+\.py)`", text):
        assert (ROOT / "presso" / module).exists(), module
