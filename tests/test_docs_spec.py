"""docs/SPEC.md stays the document the code cites: every "SPEC n" / "SPEC n.m" in the
sources resolves to a section (`## n.`) or an item (`### n.m`) that exists there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC_DOC = REPO / "docs" / "SPEC.md"
CITING_FOLDERS = ("fondtrain", "tests", "benchmarks", "launch")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".json", ".sh", ".sbatch", ".tsv", ".txt", ".toml"}

_REF = r"\d+(?:\.\d+)?"
# "SPEC 3", "SPEC 3.2", and lists or ranges of them: "SPEC 3-5", "SPEC 3.3-3.4", "SPEC 4, 6",
# "SPEC 1 and 3".
CITATION = re.compile(rf"\bSPEC ({_REF}(?:\s*(?:-|–|,|and)\s*{_REF})*)")
SECTION_HEADING = re.compile(r"^## (\d+)\. \S", re.M)
ITEM_HEADING = re.compile(r"^### (\d+)\.(\d+) \S", re.M)


def cited_refs(text: str) -> list[str]:
    """Every section ("3") or item ("3.2") a text cites, ranges expanded ("3-5" -> 3, 4, 5;
    "3.3-3.4" -> 3.3, 3.4)."""
    refs = []
    for match in CITATION.finditer(text):
        parts = re.split(r"\s*(,|and)\s*", match.group(1))
        for part in parts[::2]:
            ends = [p.strip() for p in re.split(r"[-–]", part)]
            if len(ends) == 2:
                refs.extend(_expand(*ends))
            else:
                refs.append(ends[0])
    return refs


def _expand(first: str, last: str) -> list[str]:
    """The references from `first` to `last` (both sections, or items of one section)."""
    a, b = first.split("."), last.split(".")
    if len(a) == len(b) == 1:
        return [str(n) for n in range(int(a[0]), int(b[0]) + 1)]
    if len(a) == len(b) == 2 and a[0] == b[0]:
        return [f"{a[0]}.{n}" for n in range(int(a[1]), int(b[1]) + 1)]
    return [first, last]


def anchors(doc: str) -> set[str]:
    """The sections ("3") and items ("3.2") a document defines by its headings."""
    return set(SECTION_HEADING.findall(doc)) | {f"{s}.{i}" for s, i in ITEM_HEADING.findall(doc)}


def unresolved(text: str, doc: str) -> list[str]:
    """The references cited in `text` that `doc` does not define."""
    defined = anchors(doc)
    return sorted({ref for ref in cited_refs(text) if ref not in defined})


def _citing_files() -> list[Path]:
    files = []
    for folder in CITING_FOLDERS:
        files += [p for p in (REPO / folder).rglob("*")
                  if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return sorted(files)


SMALL_DOC = "# t\n\n## 3. One inference step\n\n### 3.1 Sample\n\n### 3.2 Gradient\n\n## 4. Sampling\n"


@pytest.mark.parametrize(("text", "missing"), [
    ("see SPEC 3.2 and SPEC 4", []),
    ("the step (SPEC " "3.9)", ["3.9"]),  # split so that the repository scan skips it
    ("SPEC 5: the KL", ["5"]),
    ("SPEC 3-5", ["5"]),
    ("SPEC 3.1-3.3", ["3.3"]),
    ("(SPEC 4, 6)", ["6"]),
    ("(SPEC 1 and 3)", ["1"]),
    ("SPEC 3 defaults", []),
    ("SPEC 7: 1000 steps", ["7"]),
    ("no citation: the SPEC.md file, spec 9", []),
])
def test_resolver_on_small_texts(text, missing):
    assert unresolved(text, SMALL_DOC) == missing


def test_an_item_heading_is_not_a_section():
    assert anchors("### 3.2 Gradient\n") == {"3.2"}
    assert unresolved("SPEC 3", "### 3.2 Gradient\n") == ["3"]


def test_a_docstring_citing_a_missing_item_fails_against_the_real_document():
    docstring = 'def f():\n    """One step (SPEC ' '3.9): ..."""\n'
    assert unresolved(docstring, SPEC_DOC.read_text()) == ["3.9"]


def test_spec_has_sections_one_to_nine_with_consecutive_items():
    doc = SPEC_DOC.read_text()
    sections = [int(s) for s in SECTION_HEADING.findall(doc)]
    assert sections == list(range(1, 10))
    items: dict[int, list[int]] = {}
    for s, i in ITEM_HEADING.findall(doc):
        items.setdefault(int(s), []).append(int(i))
    assert set(items) == set(sections), "every section has numbered items"
    for section, numbers in items.items():
        assert numbers == list(range(1, len(numbers) + 1)), (section, numbers)
    # each item sits under its own section's heading
    current = None
    for line in doc.splitlines():
        if m := SECTION_HEADING.match(line):
            current = int(m.group(1))
        elif m := ITEM_HEADING.match(line):
            assert int(m.group(1)) == current, line


def test_every_spec_citation_in_the_repository_resolves():
    doc = SPEC_DOC.read_text()
    files = _citing_files()
    cited = {f: cited_refs(f.read_text(errors="replace")) for f in files}
    assert sum(len(refs) for refs in cited.values()) > 20, "the scan found the citations"
    bad = {str(f.relative_to(REPO)): unresolved(f.read_text(errors="replace"), doc)
           for f in files}
    bad = {f: refs for f, refs in bad.items() if refs}
    assert not bad, f"SPEC citations with no section or item in docs/SPEC.md: {bad}"
