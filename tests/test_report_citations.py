"""Every citation of a Gemma 3 report section in the course names a section that says it.

A citation is "section N.M", "§N.M" or "report, N.M" in a paragraph that mentions the report; the nearest topic
written before it (or, failing that, just after it; tests/report_sections.py, read against the
report's text) must be one its section covers. Scanned: the package's sources and docstrings, the notebooks and exercise
notebooks (cell sources), README, docs, benchmarks and tools.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from report_sections import SECTIONS, TOPICS

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"(?:§\s?|\b[Ss]ection\s|\breport,?\s)(\d{1,2}(?:\.\d{1,2})?)(?![\d.])")
LOOK_BACK = 400  # characters before a citation in which its topic is looked for
LOOK_AHEAD = 150  # ... and after it, when nothing before it names one
# Citations known to be wrong and waiting for a fix, as (file, text); the test fails while an entry
# is listed but already fixed. None today.
PENDING: set[tuple[str, str]] = set()


def sources() -> dict[str, str]:
    files = [*ROOT.glob("gemma3_minimal/**/*.py"), *ROOT.glob("notebooks/**/*.ipynb"), ROOT / "README.md",
             *ROOT.glob("docs/*.md"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("benchmarks/*.md"),
             *ROOT.glob("tools/*.py")]
    texts = {}
    for path in files:
        if path.suffix == ".ipynb":
            cells = json.loads(path.read_text())["cells"]
            text = "\n\n".join("".join(c["source"]) for c in cells)
        else:
            text = path.read_text()
        texts[str(path.relative_to(ROOT))] = text
    return texts


def check_citation(text: str, match: re.Match) -> str | None:
    """None when the citation fits its topic (or is not a report citation), else why not."""
    start = max(text.rfind("\n\n", 0, match.start()), match.start() - LOOK_BACK, 0)
    end = text.find("\n\n", match.end())
    paragraph = text[start : end if end != -1 else len(text)]
    if "report" not in paragraph.lower() and "§" not in match.group(0):
        return None  # a section of something else (a notebook's own part, say)
    section = match.group(1)
    if section not in SECTIONS:
        return f"the report has no section {section}"
    before, after = text[start : match.start()], text[match.end() : match.end() + LOOK_AHEAD]
    nearest = max(((m.end(), pattern, sections) for pattern, sections in TOPICS
                   for m in re.finditer(pattern, before)), default=None)
    if nearest is None:  # "The report (section 2.2): 'We sample 256 logits ...'": the topic follows
        nearest = min(((m.start(), pattern, sections) for pattern, sections in TOPICS
                       for m in re.finditer(pattern, after)), default=None)
    if nearest is None:
        return f"no known topic before 'section {section}': add it to tests/report_sections.py"
    _, pattern, sections = nearest
    if section not in sections:
        return f"the topic /{pattern}/ is in section {' or '.join(sorted(sections))}, not {section}"
    return None


def line_of(text: str, position: int) -> str:
    return text[text.rfind("\n", 0, position) + 1 : text.find("\n", position)].strip()


def test_report_citations_name_the_section_that_says_it():
    wrong, pending = [], set()
    for path, text in sources().items():
        for match in CITATION.finditer(text):
            why = check_citation(text, match)
            if why is None:
                continue
            line = line_of(text, match.start())
            listed = [key for key in PENDING if key[0] == path and key[1] in line]
            if listed:
                pending.update(listed)
            else:
                wrong.append(f"{path}: {line!r}: {why}")
    assert not wrong, "\n".join(wrong)
    assert pending == PENDING, f"fixed, remove from PENDING: {sorted(PENDING - pending)}"


def test_the_check_catches_a_wrong_section():
    """The check itself: the mistakes this pass corrected are caught, the corrected text passes."""
    cases = {
        "QK-norm replaces Gemma 2's soft-capping (report, section 2.1).": False,
        "QK-norm replaces Gemma 2's soft-capping (report, section 2).": True,
        "a vocabulary of 262,144 entries (Gemma 3 report, §2.1).": False,
        "linear scaling x8 divides every frequency by 8 (Gemma 3 report, section 2.2).": False,
        "linear scaling x8 divides every frequency by 8 (Gemma 3 report, section 5.3).": True,
        "average-pools the grid 4x4 down to 16x16 (report, section 2.1).": False,
        "average-pools the grid 4x4 down to 16x16 (report, section 5.5).": True,
        "We sample 256 logits per token (report, section 2.2).": True,
        "the report's section 9.9 says so": False,
        "the notebook's section 4 below": True,  # not a report citation
        "each wrapped in an RMSNorm before and after (Gemma 3 report, 2.1)": False,
        "the Gemma 3 report 2503.19786 (section 2: QK-norm)": True,
    }
    for text, ok in cases.items():
        results = [check_citation(text, m) for m in CITATION.finditer(text)]
        assert results and all((r is None) == ok for r in results), (text, results)
