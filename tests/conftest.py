"""Shared fixtures: the real 270M (ours and transformers', same GGUF), loaded once per test process."""

import pytest
import torch


@pytest.fixture(scope="session")
def real_model():
    from gemma3_minimal.pretrained import load_model

    return load_model("270m")


@pytest.fixture(scope="session")
def hf_real():
    """transformers' Gemma3ForCausalLM and tokenizer as transformers reads the same GGUF file, float32
    (read once per machine, then loaded from its verified copy: `gemma3_minimal.course.reference`)."""
    from gemma3_minimal.course.reference import load_reference

    return load_reference(torch.float32)


def pytest_configure(config):
    """With workers (`-n`), the controlling process builds the saved transformers reference before any
    worker starts, when a machine has none yet: the workers and the notebooks' kernels then all load
    it, instead of several reading the GGUF at the same time (minutes each)."""
    if config.getoption("numprocesses", default=None) and not hasattr(config, "workerinput"):
        from gemma3_minimal.course.reference import reference_dir

        reference_dir()


# The slowest files first: `-n 2 --dist loadfile` hands out whole files in collection order, so a
# slow notebook collected last would leave one worker idle at the end of the run.
SLOWEST_FIRST = (
    "notebooks/06_assemble_gemma3.ipynb", "tests/test_real_model.py", "notebooks/11_real_model.ipynb",
    "notebooks/10_distillation.ipynb", "tests/test_tokenizer.py", "notebooks/12_quantization.ipynb",
    "tests/test_nbgrader.py", "tests/test_browser.py", "tests/test_fast.py", "tests/test_quantize.py",
    "tests/test_gguf_int8.py",
)


def pytest_collection_modifyitems(config, items):
    root = config.rootpath

    def rank(item) -> int:
        path = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        return SLOWEST_FIRST.index(path) if path in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order
