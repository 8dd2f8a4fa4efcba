"""The course as a learner uses it, in headless Chromium: the README's `python3 tasks.py lab` starts
JupyterLab, the overview notebook opened from the file browser runs and draws its figure, and the
server stops with no process left; a slider of an ipywidgets explorer moves and its figure is
redrawn. Screenshots are left in artifacts/browser/.

Needs Chromium: Debian's `chromium` package is installed here when missing (as root, with apt-get);
playwright drives it through `executable_path`, since playwright cannot download its own browser.
Every path that finds no Chromium skips with the reason.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import Browser, sync_playwright

import tasks

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SCREENSHOTS = ROOT / "artifacts" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000  # per browser step; the whole test takes about 30 s on 2 cores


@dataclass(frozen=True)
class Explorer:
    """A notebook whose `interactive` explorer draws a matplotlib figure from its sliders."""

    notebook: str
    slider: int  # which slider the test moves (0: the first)


# 02: the sequence slider (its default layer is global, so moving the window alone changes nothing).
EXPLORERS = {
    "02": Explorer("02_attention_masks.ipynb", slider=0),
    "09": Explorer("09_pan_and_scan.ipynb", slider=0),  # width
}
EXPLORER = EXPLORERS["02"]


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)


def chromium_or_skip() -> str:
    """Path of a Chromium binary; installs Debian's package when it is missing and we may, else skips."""
    if path := find_chromium():
        return path
    how = "install your system's chromium package (Debian: apt-get install chromium)"
    if not (shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0):
        pytest.skip(f"needs Chromium: {how}")
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-q"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["update"], ["install", "-y", "chromium"]):
        try:
            subprocess.run([*apt, *step], check=True, capture_output=True, text=True, env=env, timeout=900)
        except subprocess.CalledProcessError as error:
            pytest.skip(f"needs Chromium, and `apt-get {' '.join(step)}` failed: {error.stderr[-500:]}; {how}")
        except (OSError, subprocess.TimeoutExpired) as error:
            pytest.skip(f"needs Chromium, and `apt-get {' '.join(step)}` failed: {error}; {how}")
    if path := find_chromium():
        return path
    pytest.skip(f"needs Chromium: apt-get installed the chromium package but no chromium is on PATH; {how}")


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_or_skip()


@pytest.fixture(scope="module")
def browser(chromium) -> Iterator[Browser]:
    """One headless Chromium for every test of this file."""
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Never save the notebook under test, and no news toast over the screenshot.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}


@dataclass(frozen=True)
class Lab:
    url: str
    token: str
    log: Path


def wait_until_up(lab: Lab, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited early:\n{lab.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{lab.url}/api/status?token={lab.token}", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    raise RuntimeError(f"JupyterLab did not answer in {seconds} s:\n{lab.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """A JupyterLab server on a free localhost port, serving notebooks/, with its state in a temp dir."""
    home = tmp_path_factory.mktemp("jupyter")
    for plugin, values in LAB_SETTINGS.items():
        path = home / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    instance = Lab(f"http://127.0.0.1:{port}", token, home / "server.log")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               IPYTHONDIR=str(home / "ipython"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("MPLBACKEND", None)
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
        f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={NOTEBOOKS}", f"--LabApp.user_settings_dir={home / 'settings'}",
        f"--LabApp.workspaces_dir={home / 'workspaces'}", f"--FileCheckpoints.root_dir={home / 'checkpoints'}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    with instance.log.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home)
    try:
        wait_until_up(instance, server)
        yield instance
    finally:
        shutdown = urllib.request.Request(f"{instance.url}/api/shutdown", method="POST",
                                          headers={"Authorization": f"token {token}"})
        try:
            urllib.request.urlopen(shutdown, timeout=10)
            server.wait(timeout=20)
        except (urllib.error.URLError, ConnectionError, subprocess.TimeoutExpired):
            server.kill()
            server.wait()


RUN_ALL = """async () => {
    const app = window.jupyterapp;
    const panel = app.shell.currentWidget;
    await panel.context.ready;
    await panel.sessionContext.ready;
    await app.commands.execute("notebook:run-all-cells");
}"""

# Counts what the kernel of the open notebook reports from now on: executions, errors, figures.
WATCH_KERNEL = """async () => {
    const panel = window.jupyterapp.shell.currentWidget;
    await panel.context.ready;
    await panel.sessionContext.ready;
    const kernel = panel.sessionContext.session.kernel;
    const seen = {replies: 0, errors: [], figures: [], status: () => kernel.status};
    kernel.iopubMessage.connect((_, msg) => {
        const type = msg.header.msg_type;
        if (type === "error") seen.errors.push(`${msg.content.ename}: ${msg.content.evalue}`);
        const data = msg.content.data;
        if (type === "display_data" && "image/png" in data) seen.figures.push(data["image/png"]);
    });
    kernel.anyMessage.connect((_, args) => {
        if (args.direction === "recv" && args.msg.header.msg_type === "execute_reply") seen.replies += 1;
    });
    window.seen = seen;
    return panel.content.model.sharedModel.cells.filter((cell) => cell.cell_type === "code").length;
}"""

# To the printed URL: a later run starts in seconds (7 s on 2 cores at a load of 3, 18 s at a load of 10).
LAB_COMMAND_TIMEOUT_S = 90


def read_lines(stream, into: list[str]) -> None:
    for line in stream:
        into.append(line)


def command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""


def wait_for_url(process: subprocess.Popen, output: list[str], seconds: float) -> str:
    """The URL `tasks.py lab` prints under "Open this URL in a browser:"."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = "".join(output)
        if found := re.search(r"Open this URL in a browser:\s*\n\s*\n\s*(http\S+)\n", text):
            return found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"`tasks.py lab` printed no URL in {seconds} s:\n{''.join(output)[-4000:]}")


def test_the_readme_command_starts_the_course_as_a_newcomer_does(browser, tmp_path):
    """`python3 tasks.py lab` on a busy port, headless (as root where the suite runs as root): the URL it
    prints opens the course; 00_overview runs from the file browser with no error and draws its
    figure; Ctrl-C stops the server and its kernel, leaving no process behind."""
    if not tasks.is_up_to_date("course"):
        reason = (f"{tasks.VENV} is not set up by tasks.py for the current constraints and pyproject.toml: "
                  "`python3 tasks.py test` sets it up and then runs this test")
        if Path(sys.prefix).resolve() == tasks.VENV.resolve():
            pytest.fail(reason)  # we run in that venv: starting `lab` would reinstall under our feet
        pytest.skip(f"this suite runs outside {tasks.VENV}, which `tasks.py lab` would have to install; {reason}")
    notebook = NOTEBOOKS / "00_overview.ipynb"
    committed = notebook.read_bytes()
    settings = tmp_path / "settings"
    for plugin, values in LAB_SETTINGS.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), IPYTHONDIR=str(tmp_path / "ipython"),
               OMP_NUM_THREADS="1")
    busy = socket.socket()  # JupyterLab must move to the next free port, and print that one
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    command = [
        sys.executable, "tasks.py", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={busy_port}",
        f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        f"--FileCheckpoints.root_dir={tmp_path / 'checkpoints'}", "--LabApp.expose_app_in_browser=True",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    start = time.monotonic()
    # Its own session, as a terminal's foreground job: Ctrl-C is SIGINT to its whole process group.
    course = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
    output: list[str] = []
    reader = threading.Thread(target=read_lines, args=(course.stdout, output), daemon=True)
    reader.start()
    try:
        url = wait_for_url(course, output, LAB_COMMAND_TIMEOUT_S)
        started_s = time.monotonic() - start
        text = "".join(output)
        assert "Installing" not in text and "pip install" not in text, text  # up to date: no setup step
        assert ("passing --allow-root" in text) == (os.geteuid() == 0), text
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/lab\?token=[0-9a-f]{32,}", url), url
        assert f":{busy_port}/" not in url and f"port {busy_port} is already in use" in text, text
        processes = psutil.Process(course.pid).children(recursive=True)

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.locator(".jp-DirListing-item", has_text=notebook.name).dblclick()
            page.wait_for_function("() => window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel")
            code_cells = page.evaluate(WATCH_KERNEL)
            page.locator(".lm-MenuBar-item", has_text="Run").click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            page.wait_for_function(f"() => window.seen.replies >= {code_cells} && window.seen.status() === 'idle'",
                                   timeout=TIMEOUT_MS * 2)
            seen = page.evaluate("() => ({errors: window.seen.errors, figures: window.seen.figures})")
            assert seen["errors"] == [], seen["errors"]
            assert len(seen["figures"]) == 1  # the layer stack, drawn by this run's kernel
            figure = page.locator(".jp-OutputArea-output img").first
            figure.scroll_into_view_if_needed()
            assert figure.is_visible() and figure.evaluate("(img) => img.naturalWidth") > 100
            assert figure.get_attribute("src") == f"data:image/png;base64,{seen['figures'][0]}"
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=SCREENSHOTS / "00_overview_from_tasks_lab.png")
        finally:
            page.close()

        processes = {*processes, *psutil.Process(course.pid).children(recursive=True)}
        kernels = [p for p in processes if "ipykernel" in command_line(p)]
        assert kernels, [command_line(p) for p in processes]  # the notebook's kernel ran under this server
        os.killpg(course.pid, signal.SIGINT)  # Ctrl-C
        assert course.wait(timeout=60) == 0, "".join(output)[-3000:]
        gone, alive = psutil.wait_procs(processes, timeout=20)
        assert not alive, [command_line(p) for p in alive]
        reader.join(timeout=10)
        assert "Stopping JupyterLab" in "".join(output)
        assert notebook.read_bytes() == committed  # nothing was saved over the committed notebook
        print(f"`tasks.py lab` printed its URL after {started_s:.1f} s")
    finally:
        busy.close()
        if course.poll() is None:
            for process in psutil.Process(course.pid).children(recursive=True):
                process.kill()
            course.kill()
            course.wait()


def test_a_slider_redraws_the_explorer_in_a_real_browser(browser, lab):
    explorer = EXPLORER
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{lab.url}/lab/tree/{explorer.notebook}?token={lab.token}")
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.sessionContext")
        page.evaluate(RUN_ALL)

        widget = page.locator(".widget-interact").first
        figure = widget.locator(".widget-output img").first
        figure.wait_for()
        before = figure.get_attribute("src")
        handle = widget.locator(".widget-slider .noUi-handle").nth(explorer.slider)
        value = widget.locator(".widget-slider .widget-readout").nth(explorer.slider)
        start = value.inner_text()
        handle.focus()
        handle.press("ArrowRight")
        page.wait_for_function(
            """(old) => {
                const img = document.querySelector('.widget-interact .widget-output img');
                return img !== null && img.getAttribute('src') !== old;
            }""",
            arg=before,
        )
        assert value.inner_text() != start
        errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        assert "Traceback" not in " ".join(errors.all_inner_texts())
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        widget.scroll_into_view_if_needed()
        page.screenshot(path=SCREENSHOTS / f"{Path(explorer.notebook).stem}.png")
    finally:
        page.close()


def failed_run(*args, **kwargs):
    raise subprocess.CalledProcessError(100, args[0], stderr="E: Unable to locate package chromium")


def timed_out_run(*args, **kwargs):
    raise subprocess.TimeoutExpired(args[0], 900)


def succeeded_run(*args, **kwargs):
    return subprocess.CompletedProcess(args[0], 0, "", "")


@pytest.mark.parametrize("root, apt_get, run, reason", [
    (False, True, succeeded_run, "needs Chromium: install"),
    (True, False, succeeded_run, "needs Chromium: install"),
    (True, True, failed_run, "`apt-get update` failed: E: Unable to locate package chromium"),
    (True, True, timed_out_run, "`apt-get update` failed: Command"),
    (True, True, succeeded_run, "installed the chromium package but no chromium is on PATH"),
], ids=["not-root", "no-apt-get", "apt-fails", "apt-times-out", "installed-but-missing"])
def test_no_chromium_skips_with_the_reason(monkeypatch, root, apt_get, run, reason):
    """Every way of ending without a Chromium skips and says why (never returns None)."""
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" and apt_get else None)
    monkeypatch.setattr(os, "geteuid", lambda: 0 if root else 1000)
    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(pytest.skip.Exception, match=re.escape(reason)):
        chromium_or_skip()
