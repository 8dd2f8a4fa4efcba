"""The project's own files agree with each other: pyproject.toml, environment.yml, constraints."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["dependencies"]) | {r for reqs in project["optional-dependencies"].values() for r in reqs}


def environment_requirements() -> set[str]:
    text = (ROOT / "environment.yml").read_text()
    items = re.findall(r"^\s{6}- (.+)$", text, flags=re.M)  # the pip: list
    return {i.strip() for i in items if i.strip() != "-e ."}


def name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, 1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    assert environment_requirements() == pyproject_requirements()


def test_every_requirement_is_pinned_in_the_constraints():
    lines = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    pinned = {name(l) for l in lines if l and not l.startswith("#")}
    assert {name(r) for r in pyproject_requirements()} <= pinned
    assert "torch==2.13.0" in lines  # the CPU wheel on this machine's disk, not a CUDA build


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 tasks.py test" in readme and "python3 tasks.py lab" in readme
    assert "python3 tasks.py test" in ci
