"""Set up the course and run it: `python3 tasks.py lab` or `python3 tasks.py test`.

Each command creates `.venv` (if missing), installs the package with pinned versions
(`requirements/constraints.txt`), then opens JupyterLab on `notebooks/` or runs the whole
test suite (pytest + nbval on every notebook). Needs only Python 3.10+.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"

PYTEST_ARGS = [
    "-n", "2", "--dist", "loadfile",
    "--nbval", "--nbval-current-env", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg",
    "tests", "notebooks",
]


def run(*cmd: str | Path, **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def setup(extra: str) -> None:
    """A virtual environment with the package (editable) and its pinned dependencies."""
    if sys.version_info < (3, 10):
        sys.exit(f"Python 3.10+ is needed, this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    spec = f".[{extra}]" if extra else "."
    run(PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "-c", CONSTRAINTS, "-e", spec)


def lab() -> None:
    setup("")
    os.execv(str(PYTHON), [str(PYTHON), "-m", "jupyter", "lab", f"--ServerApp.root_dir={ROOT / 'notebooks'}"])


def test() -> None:
    setup("test")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MPLBACKEND", None)  # breaks %matplotlib inline in the notebooks' kernels
    result = subprocess.run([str(PYTHON), "-m", "pytest", *PYTEST_ARGS, *sys.argv[2:]], cwd=ROOT, env=env)
    sys.exit(result.returncode)


if __name__ == "__main__":
    commands = {"lab": lab, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit("usage: python3 tasks.py lab | test [extra pytest arguments]")
    commands[sys.argv[1]]()
