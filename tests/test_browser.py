"""The course as a learner uses it: JupyterLab in headless Chromium runs a notebook, a slider of its
ipywidgets explorer moves, and the figure is redrawn. A screenshot is left in artifacts/browser/.

Needs Chromium: Debian's `chromium` package is installed here when missing (as root, with apt-get);
playwright drives it through `executable_path`, since playwright cannot download its own browser.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    "07": Explorer("07_pan_and_scan.ipynb", slider=0),  # width
}
EXPLORER = EXPLORERS["02"]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of a Chromium binary; installs Debian's package when it is missing and we may."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-q"]
        subprocess.run([*apt, "update"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*apt, "install", "-y", "chromium"], check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        return shutil.which("chromium")
    pytest.skip("needs Chromium: install your system's chromium package (Debian: apt-get install chromium)")


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
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
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


def test_a_slider_redraws_the_explorer_in_a_real_browser(chromium, lab):
    from playwright.sync_api import sync_playwright

    explorer = EXPLORER
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
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
            browser.close()
