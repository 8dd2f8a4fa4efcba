"""Small stand-in models for tests that need a causal LM but not Gemma 3."""

import torch
from torch import nn


class Bigram(nn.Module):
    """A stub causal LM: the logits at a position depend on that position's token only."""

    def __init__(self, vocab: int, scale: float = 1.0) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        nn.init.normal_(self.table.weight, std=scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table(input_ids)  # [b, T, V]
