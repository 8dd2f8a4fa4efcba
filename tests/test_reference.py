"""The saved transformers reference is trusted only as written: a damaged, edited, incomplete or
padded copy is rebuilt with a warning, and an interrupted build leaves nothing behind. That the copy
loads back to transformers' own reading of the GGUF is checked when it is built (`check_same_as_gguf`,
tested in test_real_model.py, where the reference is loaded anyway)."""

from __future__ import annotations

import json

import pytest

from gemma3_minimal import assets
from gemma3_minimal.course import reference


@pytest.fixture
def fake_build(tmp_path, monkeypatch) -> list[str]:
    """reference_dir in an empty cache folder, with a build that writes two small files; returns the builds."""
    monkeypatch.setenv("GEMMA3_MINIMAL_CACHE", str(tmp_path))
    builds: list[str] = []

    def build(folder):
        builds.append(folder.name)
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "gemma3_text"}')
        (folder / "model.safetensors").write_bytes(b"weights" * 100)
        sums = {p.name: assets.sha256_file(p) for p in folder.iterdir()}
        (folder / "sha256.json").write_text(json.dumps(sums))

    monkeypatch.setattr(reference, "_build", build)
    return builds


def test_built_once_then_reused(fake_build):
    folder = reference.reference_dir()
    assert reference.reference_dir() == folder and len(fake_build) == 1
    assert folder.name.startswith("transformers-") and assets.expected_sha256()[:16] in folder.name


@pytest.mark.parametrize("damage, words", [
    (lambda f: (f / "model.safetensors").write_bytes(b"weightz" * 100), "does not match its recorded sha256"),
    (lambda f: (f / "config.json").unlink(), "has files"),
    (lambda f: (f / "extra.bin").write_bytes(b"?"), "has files"),
    (lambda f: (f / "sha256.json").unlink(), "incomplete"),
    (lambda f: (f / "sha256.json").write_text("{not json"), "unreadable checksum record"),
])
def test_a_damaged_copy_is_rebuilt_with_a_warning(fake_build, damage, words):
    folder = reference.reference_dir()
    damage(folder)
    with pytest.warns(UserWarning, match=words):
        assert reference.reference_dir() == folder
    assert len(fake_build) == 2 and reference._check(folder) is None


def test_an_interrupted_build_leaves_nothing(fake_build, monkeypatch, tmp_path):
    def failing(folder):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(reference, "_build", failing)
    with pytest.raises(KeyboardInterrupt):
        reference.reference_dir()
    assert list(tmp_path.iterdir()) == []
