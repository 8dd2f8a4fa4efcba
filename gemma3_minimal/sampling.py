"""Choosing the next token from the logits: greedy, temperature, top-k and top-p (nucleus) sampling.

    greedy:       next = argmax(logits)
    temperature:  p = softmax(logits / T)                      T < 1 sharpens, T > 1 flattens
    top-k:        keep the k most likely tokens
    top-p:        keep the smallest set of most likely tokens whose probability reaches p
    then draw one token from what is left, renormalized

`generate.generate_ids` calls it once per new token.
"""

from __future__ import annotations

import torch

from .checks import check_sampling


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from logits [batch, vocab] -> [batch] ids.

    temperature 0 is greedy (argmax). Otherwise logits / temperature, keep the `top_k` largest,
    then the smallest set whose probability reaches `top_p`, and sample from what is left.
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # tokens after the nucleus is complete
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
