"""The project's own files agree with each other: pyproject.toml, environment.yml, constraints."""

import ast
import importlib.metadata
import json
import re
import sys
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


def imports(source: str, package: str = "") -> set[str]:
    """Modules `source` imports, dotted (relative ones resolved against `package`)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


def notebook_imports(path: Path) -> set[str]:
    """Top-level packages a notebook needs: what its code cells import (shell and magic lines skipped),
    and what the modules of gemma3_minimal it imports import in turn."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    source = "\n".join(line for c in cells for line in "".join(c["source"]).splitlines()
                       if not line.lstrip().startswith(("%", "!")))
    todo, seen = imports(source), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        file = ROOT / (module.replace(".", "/") + ".py")
        if module.startswith("gemma3_minimal") and file.is_file():
            todo |= imports(file.read_text(), module.rsplit(".", 1)[0])
    return {m.split(".")[0] for m in seen}


def test_what_the_notebooks_import_comes_with_tasks_py_lab():
    """`python3 tasks.py lab` installs the base dependencies and the `course` extra: every package a
    notebook imports must be among them (the test tools are not there for a learner)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lab = {name(r) for r in project["dependencies"] + project["optional-dependencies"]["course"]}
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for path in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        for module in notebook_imports(path) - set(sys.stdlib_module_names) - {"gemma3_minimal"}:
            provided = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
            if not provided & lab:
                missing.setdefault(module, []).append(path.name)
    # IPython and ipykernel come with jupyterlab, which the base dependencies name
    missing = {m: nbs for m, nbs in missing.items() if m not in {"IPython", "ipykernel"}}
    assert not missing, f"notebooks import packages that `tasks.py lab` does not install: {missing}"
