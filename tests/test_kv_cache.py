"""The KV cache: token-by-token decoding with ring buffers on local layers equals the full forward."""

import pytest
import torch

from gemma3_minimal import get_config
from hf_reference import random_pair

TINY = get_config("tiny")


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
