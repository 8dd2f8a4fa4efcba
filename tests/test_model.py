"""Our Gemma 3 text model against transformers' with random weights (tiny config, sliding layers)."""

import pytest
import torch

from gemma3_minimal import Gemma3ForCausalLM, get_config, sample_next
from hf_reference import random_pair

TINY = get_config("tiny")


def test_tiny_has_sliding_and_global_layers_and_window_shorter_than_input():
    assert "sliding_attention" in TINY.layer_types and "full_attention" in TINY.layer_types
    assert TINY.sliding_window < 40


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_equal_transformers(attn):
    ours, theirs = random_pair(TINY, seed=1, attn_implementation=attn)
    ids = torch.randint(0, TINY.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine = ours(ids)
        ref = theirs(ids).logits
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=0)


def test_scaled_rope_model_equals_transformers():
    """x8 linear scaling on global layers, as in the 4B/12B/27B models."""
    cfg = TINY.replace(rope_scaling_factor=8.0, num_hidden_layers=6)
    ours, theirs = random_pair(cfg, seed=2)
    ids = torch.randint(0, cfg.vocab_size, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [1, 3, 11])
def test_cached_decoding_equals_full_forward(chunk):
    """Feeding the sequence in chunks through the KV cache gives the full forward's logits."""
    ours, _ = random_pair(TINY, seed=3)
    ids = torch.randint(0, TINY.vocab_size, (2, 50), generator=torch.Generator().manual_seed(2))
    cache = ours.new_cache(max_len=50, batch_size=2)
    with torch.no_grad():
        full = ours(ids)
        steps = [ours(ids[:, i:i + chunk], cache) for i in range(0, 50, chunk)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    for layer, kind in zip(cache.layers, TINY.layer_types):
        held = int((layer.pos >= 0).sum())
        if kind == "sliding_attention":
            assert layer.k.shape[2] == TINY.sliding_window and held == TINY.sliding_window
            assert sorted(layer.pos.tolist()) == list(range(50 - TINY.sliding_window, 50))
        else:
            assert layer.k.shape[2] == 50 and held == 50


# Exact parameter counts (DESIGN.md); for the vision presets this is the text part.
TEXT_PARAMS = {"270m": 268_098_176, "1b": 999_885_952, "4b": 3_880_099_328}


@pytest.mark.parametrize("name", ["270m", "1b", "4b", "12b", "27b"])
def test_presets_on_the_meta_device_have_the_exact_text_parameter_count(name):
    cfg = get_config(name)
    with torch.device("meta"):
        model = Gemma3ForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters())  # the tied head is counted once
    per_layer = (
        cfg.hidden_size * cfg.head_dim * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
        + 3 * cfg.hidden_size * cfg.intermediate_size + 4 * cfg.hidden_size + 2 * cfg.head_dim
    )
    assert n == cfg.vocab_size * cfg.hidden_size + cfg.num_hidden_layers * per_layer + cfg.hidden_size
    if name in TEXT_PARAMS:
        assert n == TEXT_PARAMS[name]


def test_sampling_is_seeded_and_respects_top_k_and_top_p():
    logits = torch.tensor([[3.0, 2.9, 1.0, -5.0]])
    draws = lambda **kw: {int(sample_next(logits, generator=torch.Generator().manual_seed(s), **kw)) for s in range(200)}
    assert draws(temperature=1.0, top_k=2) == {0, 1}
    assert draws(temperature=1.0, top_p=0.4) == {0}  # token 0 alone holds 49% of the mass
    assert draws(temperature=1.0, top_p=0.9) == {0, 1}  # tokens 0 and 1 hold 93%
    assert len(draws(temperature=5.0)) == 4
    assert int(sample_next(logits)) == 0  # temperature 0: greedy
    g = lambda s: torch.Generator().manual_seed(s)
    assert sample_next(logits.repeat(8, 1), 1.0, generator=g(7)).tolist() == sample_next(logits.repeat(8, 1), 1.0, generator=g(7)).tolist()
