"""The repository's own design docs are what its comments and docs point to.

1. No tracked source, config or doc file names a design document that is not in the repository (the
   briefs the project started from): every reference goes to docs/.
2. Every `docs/<name>.md §N` reference (and every `[x.md](x.md) §N` link inside docs/) points to a file
   that exists and has a heading for section N ("## §3. Prompt and score", "### §2.1. ...", "## 8. Cost").
3. The section numbers the references use exist in the three design docs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = (".py", ".md", ".yaml", ".config", ".toml", ".sh")

# The names are assembled from pieces so that this file does not contain them itself (it is scanned too).
_OUTSIDE_DOCS = ("SP" + "EC", "DES" + "IGN", "STACK" + "_NOTES")
FORBIDDEN = re.compile(
    r"\b(?:" + "|".join(_OUTSIDE_DOCS[:2]) + r")(?:\.md)?\b|\b" + _OUTSIDE_DOCS[2] + r"(?:\.md)?\b"
)
SECTION = r"(\d+[a-z]?(?:\.\d+)*)"
DOC_REF = re.compile(r"\bdocs/([\w\-]+\.md) ?§ ?" + SECTION + r"(?:[–-]" + SECTION + r")?")
LOCAL_LINK_REF = re.compile(r"\]\(([\w\-]+\.md)\) ?§ ?" + SECTION + r"(?:[–-]" + SECTION + r")?")
HEADING = re.compile(r"^#{1,6}\s+(?:§\s*)?" + SECTION + r"\.?(?=\s|$)", re.MULTILINE)


def tracked_files() -> list[Path]:
    """Tracked text files of the kinds that carry comments and docs."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout (no `git ls-files`): the tracked files cannot be listed")
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    names = [n for n in out.split("\0") if n]
    picked = [n for n in names if n.endswith(SUFFIXES) or n.rsplit("/", 1)[-1] == "Makefile"]
    return [REPO / n for n in picked if (REPO / n).is_file()]


def section_headings(path: Path) -> set[str]:
    """The section numbers a markdown file has headings for ("3", "2.1", "7b")."""
    return set(HEADING.findall(path.read_text(encoding="utf-8")))


def test_heading_parser_reads_numbered_headings() -> None:
    text = "# Title\n## §3. Prompt and score\n### §2.1. CF backbone\n## 8. Cost\n## §7b. Measured\n## Notes\n"
    assert set(HEADING.findall(text)) == {"3", "2.1", "8", "7b"}


def test_forbidden_pattern_spares_longer_words() -> None:
    spec, design, notes = _OUTSIDE_DOCS
    assert FORBIDDEN.search(f"see {spec} §3") and FORBIDDEN.search(f"{design}.md") and FORBIDDEN.search(notes)
    assert not FORBIDDEN.search(f"{spec}IAL_TOKENS {spec}_EXAMPLE {design}ER spec design")


def test_no_reference_to_documents_outside_the_repository() -> None:
    hits = []
    for path in tracked_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()[:120]}")
    assert not hits, (
        f"{len(hits)} line(s) refer to design documents that are not in the repository; "
        "point them to docs/method.md, docs/architecture.md or docs/platform_notes.md:\n" + "\n".join(hits)
    )


def test_every_docs_section_reference_has_a_heading() -> None:
    broken, seen = [], 0
    headings: dict[Path, set[str]] = {}
    for path in tracked_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        refs = [(REPO / "docs" / m.group(1), m) for m in DOC_REF.finditer(text)]
        if path.parent == REPO / "docs":
            refs += [(path.parent / m.group(1), m) for m in LOCAL_LINK_REF.finditer(text)]
        for target, m in refs:
            seen += 1
            lineno = text.count("\n", 0, m.start()) + 1
            where = f"{path.relative_to(REPO)}:{lineno}: {m.group(0)}"
            if not target.is_file():
                broken.append(f"{where} (no file {target.relative_to(REPO)})")
                continue
            if target not in headings:
                headings[target] = section_headings(target)
            for number in (m.group(2), m.group(3)):
                if number is not None and number not in headings[target]:
                    broken.append(f"{where} (no heading for section {number} in {target.relative_to(REPO)})")
    assert not broken, "references to sections that do not exist:\n" + "\n".join(broken)
    assert seen > 0, (
        "no docs/<name>.md §N reference found at all: the pattern no longer matches the repository"
    )


@pytest.mark.parametrize(
    ("doc", "sections"),
    [
        ("method.md", ["1", "2", "2.1", "2.2", "2.3", "2.4", "3", "4", "5", "6", "7", "7b", "8"]),
        (
            "architecture.md",
            ["1", "2", "3", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "4", "5", "5.1", "5.2", "6", "7"],
        ),
        ("platform_notes.md", ["1", "2", "3", "4", "5", "6"]),
    ],
)
def test_design_docs_have_their_numbered_sections(doc: str, sections: list[str]) -> None:
    path = REPO / "docs" / doc
    assert path.is_file(), f"docs/{doc} is missing"
    missing = [s for s in sections if s not in section_headings(path)]
    assert not missing, f"docs/{doc} has no heading for section(s) {missing}"
