"""Generate the learner notebooks `notebooks/exercises/NN_*.ipynb` from the worked solutions.

The solutions in `notebooks/exercises/solutions/` are the one source of truth. In each code cell,
the lines from `# BEGIN SOLUTION` to `# END SOLUTION` become one `raise NotImplementedError(...)`
at the marker's indentation; outputs and execution counts are cleared, so learners start fresh.

    python tools/make_exercises.py      # rewrite every learner notebook

`tests/test_exercises.py` checks that the committed learner notebooks equal this script's output.
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
STUB = 'raise NotImplementedError("replace this line with your code")'


def learner_source(source: str) -> str:
    """The cell source with every solution block replaced by a stub.

    "def f():\\n    # BEGIN SOLUTION\\n    return 1\\n    # END SOLUTION" -> "def f():\\n    raise NotImplementedError(...)"
    """
    out: list[str] = []
    inside = False
    for number, line in enumerate(source.splitlines(), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"line {number}: {BEGIN} inside a solution block")
            inside = True
            out.append(re.match(r"\s*", line).group(0) + STUB)
        elif marker == END:
            if not inside:
                raise ValueError(f"line {number}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN} without {END}")
    return "\n".join(out)


def learner_notebook(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of `solution` with solution blocks stubbed and every code cell unrun."""
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


def learner_text(solution_path: Path) -> str:
    """The learner notebook of `solution_path`, as the file's text."""
    return nbformat.writes(learner_notebook(nbformat.read(solution_path, as_version=4))) + "\n"


def main() -> None:
    for solution_path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        target = EXERCISES / solution_path.name
        target.write_text(learner_text(solution_path), encoding="utf-8")
        print(f"{solution_path.relative_to(ROOT)} -> {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
