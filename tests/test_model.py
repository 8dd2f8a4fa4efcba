"""Our Gemma 3 text model against transformers' with random weights (tiny config, sliding layers)."""

import pytest
import torch

from gemma3_minimal import get_config
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
