"""Exercise checkers for notebook 02: The sliding-window mask."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from ... import masks
from .engine import Case, CheckResult, Mistake, run_check


def _window_cases(n_random: int = 8, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    pairs = [(8, 4), (6, 3), (5, 1), (4, 4), (3, 5), (1, 1)]
    pairs += [(rng.randint(2, 40), rng.randint(1, 12)) for _ in range(n_random)]
    return [Case(f"seq_len={t}, window={w}", (t, w)) for t, w in pairs]


def _positions(seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.arange(seq_len)
    return pos[:, None], pos[None, :]  # queries down the rows, keys along the columns


def _mask_one_too_many(seq_len: int, window: int) -> torch.Tensor:
    q, k = _positions(seq_len)
    return (k <= q) & (k >= q - window)


def _mask_one_too_few(seq_len: int, window: int) -> torch.Tensor:
    q, k = _positions(seq_len)
    return (k <= q) & (k > q - window + 1)


def _mask_not_causal(seq_len: int, window: int) -> torch.Tensor:
    q, k = _positions(seq_len)
    return (q - k).abs() < window


SLIDING_WINDOW_MISTAKES = (
    Mistake("off_by_one_window_too_many", "off by one: each query sees `window` keys *including itself*, "
            "so key k is visible when q - window < k <= q (yours lets in one key too many).", _mask_one_too_many),
    Mistake("off_by_one_window_too_few", "off by one: each query sees `window` keys *including itself*, "
            "so key k is visible when q - window < k <= q (yours sees one key too few).", _mask_one_too_few),
    Mistake("not_causal", "a query must never see a later key: keep the causal condition k <= q as well.", _mask_not_causal),
    Mistake("causal_only", "the window is missing: also drop keys at or before q - window.",
            lambda seq_len, window: masks.causal_mask(seq_len)),
    Mistake("transposed", "rows are queries and columns are keys: mask[q, k]. Yours is transposed.",
            lambda seq_len, window: masks.sliding_window_mask(seq_len, window).T),
)


def check_sliding_window_mask(fn: Callable[[int, int], torch.Tensor]) -> CheckResult:
    """`fn(seq_len, window) -> [seq_len, seq_len] bool`: True where query q may attend to key k."""
    return run_check("sliding_window_mask", fn, _window_cases(), masks.sliding_window_mask,
                     "gemma3_minimal.masks.sliding_window_mask", SLIDING_WINDOW_MISTAKES,
                     "write the condition for one (q, k) pair first, then compare positions as tensors.")
