"""The solution notebooks work as an nbgrader source course: the real nbgrader, run headless in a
temporary course folder, makes the learner version, grades a correct and a wrong submission, and
writes feedback that carries the checker's hint (docs/INSTRUCTORS.md describes the same steps)."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from gemma3_minimal.course.exercises.masks import SLIDING_WINDOW_MISTAKES

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "notebooks" / "exercises" / "solutions"
NOTEBOOK = "02_attention_masks.ipynb"  # two exercises, fast checks: one assignment keeps the test short
ASSIGNMENT = "ex02"

spec = importlib.util.spec_from_file_location("make_exercises", ROOT / "tools" / "make_exercises.py")
make_exercises = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_exercises)

# A learner's off-by-one sliding window (one key too many), written the way a learner writes it.
WRONG_WINDOW = '''def sliding_window_mask(seq_len: int, window: int) -> torch.Tensor:
    q = torch.arange(seq_len)[:, None]
    k = torch.arange(seq_len)[None, :]
    return (k <= q) & (k >= q - window)'''


def nbgrader(course: Path, *args: str) -> None:
    """Run one nbgrader command in `course`, as an instructor would from a shell."""
    env = dict(os.environ)
    # nbgrader calls the `alembic` script of its environment to set up the gradebook.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def submit(course: Path, student: str, nb: nbformat.NotebookNode) -> None:
    folder = course / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / NOTEBOOK)


def with_answer(released: nbformat.NotebookNode, grade_id: str, source: str) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(released)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    cell.source = source
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A course folder after generate_assignment, two submissions, autograde and generate_feedback."""
    course = tmp_path_factory.mktemp("course")
    shutil.copy(ROOT / "tools" / "nbgrader_config.py", course / "nbgrader_config.py")
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    shutil.copy(SOLUTIONS / NOTEBOOK, course / "source" / ASSIGNMENT / NOTEBOOK)
    nbgrader(course, "generate_assignment", ASSIGNMENT)

    released = nbformat.read(course / "release" / ASSIGNMENT / NOTEBOOK, as_version=4)
    solution = nbformat.read(SOLUTIONS / NOTEBOOK, as_version=4)
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in solution.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    correct = released
    for grade_id, source in answers.items():
        correct = with_answer(correct, grade_id, source)
    submit(course, "correct", correct)
    wrong = with_answer(with_answer(released, "sliding_window_mask", WRONG_WINDOW),
                        "attention_mask", answers["attention_mask"])
    submit(course, "mistake", wrong)
    nbgrader(course, "autograde", ASSIGNMENT)  # adds the students it finds
    nbgrader(course, "generate_feedback", ASSIGNMENT)
    return course


def test_generate_assignment_gives_the_learner_notebook_of_make_exercises(course):
    """One way to make learner notebooks: nbgrader's cells equal tools/make_exercises.py's."""
    released = nbformat.read(course / "release" / ASSIGNMENT / NOTEBOOK, as_version=4)
    learner = make_exercises.learner_notebook(nbformat.read(SOLUTIONS / NOTEBOOK, as_version=4))
    assert [c.source for c in released.cells] == [c.source for c in learner.cells]
    graded = [c.metadata["nbgrader"] for c in released.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert [g["grade_id"] for g in graded] == ["check_sliding_window_mask", "check_attention_mask"]
    assert all(g["locked"] and g["points"] == 1 for g in graded)


def test_autograde_gives_full_points_to_the_worked_solutions_and_partial_to_a_mistake(course):
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        correct = gradebook.find_submission(ASSIGNMENT, "correct")
        wrong = gradebook.find_submission(ASSIGNMENT, "mistake")
        assert correct.max_score == wrong.max_score == 2
        assert correct.score == 2
        assert wrong.score == 1
        grades = {g.name: g.score for g in gradebook.find_submission_notebook(NOTEBOOK[:-6], ASSIGNMENT, "mistake").grades}
        assert grades == {"check_sliding_window_mask": 0, "check_attention_mask": 1}


def test_feedback_shows_the_checkers_hint(course):
    page = (course / "feedback" / "mistake" / ASSIGNMENT / NOTEBOOK.replace(".ipynb", ".html")).read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    hint = next(m.hint for m in SLIDING_WINDOW_MISTAKES if m.name == "off_by_one_window_too_many")
    assert f"Hint: {hint}" in text
    assert "sliding_window_mask(seq_len=8, window=4) is not right" in text
