"""The real Gemma 3 270M: ours against transformers on the same GGUF, and cached against uncached.

Float32 noise floor (REFERENCE.md): transformers' own eager and SDPA paths differ by up to
1.9e-4 and its cached and uncached logits by up to 2.9e-4 here, with logits near 140.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.quants import dequantize

from gemma3_minimal.assets import gguf_path
from gemma3_minimal.config import get_config
from gemma3_minimal.course.reference import check_same_as_gguf, reference_dir
from gemma3_minimal.gguf_checkpoint import expected_names, gguf_name_to_ours, read_tensors
from gemma3_minimal.generate import generate_ids

TEXT = (Path(__file__).parent / "data" / "long_text.txt").read_text()
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "Die Hauptstadt von Deutschland ist",
]


@pytest.fixture(scope="module")
def long_ids(hf_real):
    _, tok = hf_real
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :1100]  # <bos> + text, twice the 512 window
    assert ids.shape[1] == 1100
    return ids


def test_logits_equal_transformers_past_the_window(real_model, hf_real, long_ids):
    hf, _ = hf_real
    ids = long_ids[:, :700]
    with torch.no_grad():
        ours = real_model(ids)
        ref = hf(ids).logits
    assert ref.abs().max() > 10  # real logits, not a degenerate model
    torch.testing.assert_close(ours, ref, atol=1e-3, rtol=0)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_greedy_generation_equals_transformers(real_model, hf_real):
    """Our 32 greedy tokens are transformers' greedy tokens: at every step, the token we chose is the
    argmax of transformers' logits for the same prefix (one forward over prompt + tokens gives them all)."""
    hf, tok = hf_real
    stop_ids = real_model.config.stop_token_ids
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        assert ids[0, 0] == 2  # <bos>
        ours = list(generate_ids(real_model, ids[0].tolist(), max_new_tokens=32))
        assert len(ours) == 32 or ours[-1] in stop_ids
        assert not any(t in stop_ids for t in ours[:-1])
        with torch.no_grad():
            logits = hf(torch.tensor([ids[0].tolist() + ours])).logits[0, ids.shape[1] - 1:-1]  # [len(ours), vocab]
        theirs = logits.argmax(-1).tolist()
        assert ours == theirs, (prompt, tok.decode(ours), tok.decode(theirs))


def test_token_by_token_decoding_equals_full_forward(real_model, long_ids):
    """A 300-token prefill, then 750 positions one token at a time through the cache: the ring
    buffers of the local layers wrap around twice (at 512 and 1,024), as in any long generation.

    Each step runs the blocks on one token with the cache; the tied head (63% of the bytes a step
    reads) is applied once to all the steps' final hidden states, which gives the same logits.
    """
    ids = long_ids[:, :1050]
    prompt = 300
    cache = real_model.new_cache(max_len=ids.shape[1])
    text = real_model.text_model
    with torch.no_grad():
        full = real_model(ids)
        hidden = [text(text.embed(ids[:, :prompt]), cache=cache)]  # the prompt in one chunk
        hidden += [text(text.embed(ids[:, i:i + 1]), cache=cache) for i in range(prompt, ids.shape[1])]
        steps = real_model.lm_head(torch.cat(hidden, dim=1))  # [1, 1050, vocab]
    assert full.abs().max() > 10
    torch.testing.assert_close(steps, full, atol=1e-3, rtol=0)
    window = real_model.config.sliding_window
    for layer, kind in zip(cache.layers, real_model.config.layer_types):
        if kind == "sliding_attention":
            assert layer.k.shape[2] == window and layer.v.shape[2] == window
            assert sorted(layer.pos.tolist()) == list(range(1050 - window, 1050))
        else:
            assert layer.k.shape[2] == 1050


def test_the_saved_reference_is_checked_against_the_gguf_reading(hf_real):
    """The saved transformers folder is compared with the GGUF-loaded model when it is built
    (`check_same_as_gguf`): one edited weight is named, and nothing else differs."""
    hf, tok = hf_real
    folder = reference_dir()
    weight = hf.model.layers[0].mlp.down_proj.weight
    original = weight[0, 0].item()
    with torch.no_grad():
        weight[0, 0] = original + 1e-3
    try:
        with pytest.raises(RuntimeError, match=r"in \['model\.layers\.0\.mlp\.down_proj\.weight'\]$"):
            check_same_as_gguf(folder, hf, tok)
    finally:
        with torch.no_grad():
            weight[0, 0] = original


def test_gguf_tensors_read_by_us_dequantize_as_transformers_reads_them(hf_real):
    """`read_tensors` (our reader of the GGUF's tensor table) gives bytes that dequantize to transformers'
    weights, in every block format of the file: an independent reading of offsets, shapes and formats."""
    hf, _ = hf_real
    theirs = hf.state_dict()
    tensors = read_tensors(gguf_path())
    assert len(tensors) == len(expected_names(get_config("270m")))
    seen = set()
    for t in tensors:
        if t.tensor_type.name in seen:
            continue
        seen.add(t.tensor_type.name)
        name = gguf_name_to_ours(t.name)
        ours = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
        expected = theirs[name] + (1.0 if name.endswith("norm.weight") else 0.0)  # the file stores 1 + w
        assert torch.equal(ours, expected), (t.name, t.tensor_type.name)
    assert seen == {"F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"}
