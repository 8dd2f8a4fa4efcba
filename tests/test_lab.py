"""tasks.py's own logic, without installing or starting anything: setup runs pip only when `.venv`
is not up to date (and says what it installs), and the URL printed last is one that works.
The README's `python3 tasks.py lab` itself is run, in a real browser, by tests/test_browser.py."""

from __future__ import annotations

import pytest

import tasks


@pytest.fixture
def fake_venv(tmp_path, monkeypatch) -> list[str]:
    """tasks.py pointed at a venv in tmp_path whose Python exists; returns the specs pip was asked for."""
    venv = tmp_path / ".venv"
    python = venv / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    for name in ("constraints.txt", "pyproject.toml"):
        (tmp_path / name).write_text(f"{name} as committed\n")
    monkeypatch.setattr(tasks, "VENV", venv)
    monkeypatch.setattr(tasks, "PYTHON", python)
    monkeypatch.setattr(tasks, "STAMP", venv / "tasks-setup.json")
    monkeypatch.setattr(tasks, "CONSTRAINTS", tmp_path / "constraints.txt")
    monkeypatch.setattr(tasks, "PYPROJECT", tmp_path / "pyproject.toml")
    installs: list[str] = []
    monkeypatch.setattr(tasks, "install", installs.append)
    return installs


def test_setup_installs_only_what_is_missing_and_says_what(fake_venv, capsys):
    tasks.setup("")  # a venv made before stamps (or whose setup was interrupted)
    said = capsys.readouterr().out
    assert fake_venv == ["."] and "no record of a finished setup" in said and tasks.INSTALLS[""] in said

    tasks.setup("")  # a later run: nothing to do, nothing said
    assert fake_venv == ["."] and capsys.readouterr().out == ""
    assert tasks.is_up_to_date("") and not tasks.is_up_to_date("test")

    tasks.setup("test")  # the test tools on top, and only they are announced
    said = capsys.readouterr().out
    assert fake_venv == [".", ".[test]"] and tasks.INSTALLS["test"] in said and tasks.INSTALLS[""] not in said
    tasks.setup("")
    tasks.setup("test")
    assert fake_venv == [".", ".[test]"] and capsys.readouterr().out == ""

    tasks.CONSTRAINTS.write_text("torch==9.9\n")  # a new pin: both commands update the venv
    assert not tasks.is_up_to_date("") and not tasks.is_up_to_date("test")
    tasks.setup("")
    said = capsys.readouterr().out
    assert fake_venv[-1] == "." and "changed since the last setup" in said
    assert tasks.is_up_to_date("") and not tasks.is_up_to_date("test")


def test_lab_installs_the_course_reference_and_test_includes_it(fake_venv, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(tasks, "serve", started.append)
    monkeypatch.setattr(tasks.sys, "argv", ["tasks.py", "lab"])
    tasks.lab()  # transformers comes with the course: notebooks 06 and 11 compare with it
    said = capsys.readouterr().out
    assert fake_venv == [".[course]"] and tasks.INSTALLS["course"] in said and len(started) == 1
    assert tasks.is_up_to_date("course") and tasks.is_up_to_date("") and not tasks.is_up_to_date("test")
    tasks.setup("test")
    assert fake_venv == [".[course]", ".[test]"] and tasks.INSTALLS["course"] not in capsys.readouterr().out
    tasks.STAMP.write_text(tasks.STAMP.read_text().replace('"course", ', ""))  # a stamp that names test only
    tasks.setup("course")  # test's packages hold course's: nothing to install
    assert fake_venv == [".[course]", ".[test]"] and capsys.readouterr().out == ""


def test_setup_does_not_trust_an_unreadable_stamp(fake_venv):
    tasks.STAMP.write_text("{not json")
    assert not tasks.is_up_to_date("")
    tasks.setup("")
    assert fake_venv == ["."] and tasks.is_up_to_date("")


TOKEN = "?token=" + "ab" * 24


@pytest.mark.parametrize("urls, shown, hint", [
    # --ip=127.0.0.1: one URL
    ([f"http://127.0.0.1:8889/lab{TOKEN}"], f"http://127.0.0.1:8889/lab{TOKEN}", None),
    # the default ip, localhost: its 127.0.0.1 twin
    ([f"http://localhost:8888/lab{TOKEN}", f"http://127.0.0.1:8888/lab{TOKEN}"],
     f"http://127.0.0.1:8888/lab{TOKEN}", None),
    # --ip=0.0.0.0 (a container): 127.0.0.1 here, and this machine's name for the others
    ([f"http://0.0.0.0:8888/lab{TOKEN}", f"http://127.0.0.1:8888/lab{TOKEN}"],
     f"http://127.0.0.1:8888/lab{TOKEN}", "from another machine"),
    # --ip=10.1.2.3: only that address answers, not 127.0.0.1
    ([f"http://10.1.2.3:8890/lab{TOKEN}", f"http://127.0.0.1:8890/lab{TOKEN}"],
     f"http://10.1.2.3:8890/lab{TOKEN}", None),
])
def test_the_banner_shows_a_url_that_answers(urls, shown, hint, capsys):
    tasks.print_banner(urls)
    lines = capsys.readouterr().out.splitlines()
    assert f"    {shown}" in lines and lines[-2] == "Stop it with Ctrl-C."
    if hint:
        assert any(hint in line for line in lines)
