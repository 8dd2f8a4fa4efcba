"""Mark the worked solutions for nbgrader and generate the learner notebooks `notebooks/exercises/NN_*.ipynb`.

The solutions in `notebooks/exercises/solutions/` are the one source of truth, and an nbgrader source
course as they stand (see docs/INSTRUCTORS.md):
- in a code cell, the lines from `# BEGIN SOLUTION` to `# END SOLUTION` are the learner's to write;
  they become one `raise NotImplementedError(...)` at the marker's indentation (`STUB`, the same
  stub that `tools/nbgrader_config.py` gives nbgrader);
- a check cell `result = check_...(fn)` ends with a `### BEGIN HIDDEN TESTS` block that asserts
  `result.passed`: nbgrader grades with it, learners never see it (so "Run all" reaches every check).

This script writes the nbgrader cell metadata into the solutions (solution cells; graded, locked
check cells with points) and the learner copies for self-study without nbgrader: solution and
hidden-test blocks removed, outputs and execution counts cleared. `nbgrader generate_assignment`
makes the same learner cells for a class.

    python tools/make_exercises.py      # mark every solution notebook, rewrite every learner notebook

`tests/test_exercises.py` checks that the committed notebooks equal this script's output.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "notebooks" / "exercises"
SOLUTIONS = EXERCISES / "solutions"
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB = 'raise NotImplementedError("replace this line with your code")'
CHECK = re.compile(r"result = (check_\w+)\((\w+)\)")
# Points of an exercise's check cell; exercises that combine several pieces count double.
POINTS = {"attention_forward": 2, "decoder_block": 2, "ring_write": 2, "generate": 2,
          "sparse_cross_entropy_and_grad": 2}
NBGRADER_SCHEMA = 3


def _blocks(source: str, begin: str, end: str, stub: str | None) -> str:
    """`source` with every begin..end block replaced by `stub` at the marker's indentation (dropped if None)."""
    out: list[str] = []
    inside = False
    for number, line in enumerate(source.splitlines(), start=1):
        marker = line.strip()
        if marker == begin:
            if inside:
                raise ValueError(f"line {number}: {begin} inside a block")
            inside = True
            if stub is not None:
                out.append(re.match(r"\s*", line).group(0) + stub)
        elif marker == end:
            if not inside:
                raise ValueError(f"line {number}: {end} without {begin}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{begin} without {end}")
    return "\n".join(out)


def learner_source(source: str) -> str:
    """The cell source with every solution block replaced by a stub and every hidden test removed.

    "def f():\\n    # BEGIN SOLUTION\\n    return 1\\n    # END SOLUTION" -> "def f():\\n    raise NotImplementedError(...)"
    """
    return _blocks(_blocks(source, BEGIN, END, STUB), BEGIN_HIDDEN, END_HIDDEN, None)


def nbgrader_metadata(source: str) -> dict | None:
    """nbgrader's metadata for a cell: a solution cell, a graded and locked check cell, or None (an ordinary cell)."""
    if BEGIN in source:
        names = re.findall(r"^def (\w+)", source, flags=re.M)  # the last one is the function checked
        if not names:
            raise ValueError(f"a solution cell without a function definition:\n{source}")
        return {"grade": False, "grade_id": names[-1], "locked": False, "schema_version": NBGRADER_SCHEMA,
                "solution": True, "task": False}
    check = CHECK.match(source)
    if check:
        if BEGIN_HIDDEN not in source:
            raise ValueError(f"a check cell without its hidden test:\n{source}")
        function = check.group(2)
        return {"grade": True, "grade_id": f"check_{function}", "locked": True, "points": POINTS.get(function, 1),
                "schema_version": NBGRADER_SCHEMA, "solution": False, "task": False}
    return None


def marked_notebook(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of `solution` whose cells carry exactly the nbgrader metadata their sources call for.

    A notebook without any graded check cell (`result = check_...` with its hidden test) is not an
    nbgrader assignment yet and stays as it is.
    """
    nb = copy.deepcopy(solution)
    if not any(cell.cell_type == "code" and CHECK.match(cell.source) for cell in nb.cells):
        return nb
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
        meta = nbgrader_metadata(cell.source) if cell.cell_type == "code" else None
        if meta is not None:
            cell.metadata["nbgrader"] = meta
    return nb


def learner_notebook(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of `solution` with solution blocks stubbed, hidden tests removed and every code cell unrun."""
    nb = copy.deepcopy(solution)
    blocks = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        blocks += cell.source.count(BEGIN)
        cell.source = learner_source(cell.source)
        cell.outputs = []
        cell.execution_count = None
    if blocks == 0:
        raise ValueError("a solution notebook without any solution block")
    return nb


def text(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def marked_text(solution_path: Path) -> str:
    """The solution notebook with its nbgrader metadata, as the file's text."""
    return text(marked_notebook(nbformat.read(solution_path, as_version=4)))


def learner_text(solution_path: Path) -> str:
    """The learner notebook of `solution_path`, as the file's text."""
    return text(learner_notebook(nbformat.read(solution_path, as_version=4)))


def main() -> None:
    for solution_path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        solution_path.write_text(marked_text(solution_path), encoding="utf-8")
        target = EXERCISES / solution_path.name
        target.write_text(learner_text(solution_path), encoding="utf-8")
        print(f"{solution_path.relative_to(ROOT)} -> {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
