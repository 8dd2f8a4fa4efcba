"""Attention masks as boolean tensors: True where a query may attend to a key.

Every mask here is a function of positions, so the same code serves a full forward pass,
a chunked prefill and a ring-buffer KV cache whose slots hold positions in any order.

    causal_mask(4)                  sliding_window_mask(5, 2)
    1 0 0 0                         1 0 0 0 0
    1 1 0 0                         1 1 0 0 0
    1 1 1 0                         0 1 1 0 0
    1 1 1 1                         0 0 1 1 0
                                    0 0 0 1 1
"""

from __future__ import annotations

from typing import Optional

import torch


def attention_mask(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    sliding_window: Optional[int] = None,
    q_image_ids: Optional[torch.Tensor] = None,
    k_image_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Which keys each query sees, from positions.

    Args:
        q_pos: [..., Tq] absolute positions of the queries.
        k_pos: [..., Tk] absolute positions of the keys; negative marks an empty cache slot.
        sliding_window: a local layer sees keys with `q - window < k` (the query itself included).
        q_image_ids, k_image_ids: [..., Tq] / [..., Tk] image ids (-1 for text); tokens of one image see
            each other in both directions, also in local layers, where the window still applies:
            AND(window, OR(causal, same image)), as transformers does. The report's text does not
            say this; it comes from the released implementations (transformers' Gemma 3 among them).
    Returns:
        [..., Tq, Tk] bool.
    """
    q = q_pos.unsqueeze(-1)  # [..., Tq, 1]
    k = k_pos.unsqueeze(-2)  # [..., 1, Tk]
    allowed = k <= q
    if q_image_ids is not None and k_image_ids is not None:
        same_image = (q_image_ids.unsqueeze(-1) == k_image_ids.unsqueeze(-2)) & (q_image_ids.unsqueeze(-1) >= 0)
        allowed = allowed | same_image
    if sliding_window is not None:
        if sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
        allowed = allowed & (k > q - sliding_window)
    return allowed & (k >= 0)


def causal_mask(seq_len: int) -> torch.Tensor:
    """[seq, seq] bool: token i sees tokens 0..i."""
    pos = torch.arange(seq_len)
    return attention_mask(pos, pos)


def sliding_window_mask(seq_len: int, window: int) -> torch.Tensor:
    """[seq, seq] bool: token i sees tokens max(0, i - window + 1)..i."""
    pos = torch.arange(seq_len)
    return attention_mask(pos, pos, sliding_window=window)


def image_groups(token_is_image: torch.Tensor) -> torch.Tensor:
    """Number each run of consecutive image tokens: [..., T] bool -> [..., T] long, -1 for text.

    image_groups(tensor([0, 1, 1, 0, 1, 1]).bool()) -> tensor([-1, 0, 0, -1, 1, 1])
    """
    is_image = token_is_image.bool()
    starts = is_image & ~torch.nn.functional.pad(is_image, (1, 0))[..., :-1]
    ids = torch.cumsum(starts.long(), dim=-1) - 1
    return torch.where(is_image, ids, torch.full_like(ids, -1))
