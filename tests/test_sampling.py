"""Sampling the next token: seeded, and top-k / top-p keep exactly the tokens they should."""

import torch

from gemma3_minimal import sample_next


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
