"""Shared fixtures: the real 270M (ours and transformers', same GGUF), loaded once per test process."""

import pytest
import torch


@pytest.fixture(scope="session")
def real_model():
    from gemma3_minimal.pretrained import load_model

    return load_model("270m")


@pytest.fixture(scope="session")
def hf_real():
    """transformers' Gemma3ForCausalLM and tokenizer from the same GGUF file, float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gemma3_minimal.assets import gguf_path

    path = gguf_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tok
