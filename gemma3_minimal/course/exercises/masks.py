"""Exercise checkers for notebook 02: the sliding-window mask, and masks built from positions."""

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


# --- masks from positions (a ring-buffer cache's slots) -----------------------------------------


def _ring_positions(length: int, slots: int) -> torch.Tensor:
    """The positions a ring of `slots` holds after `length` tokens: slot p % slots holds p; -1 when empty."""
    pos = torch.full((slots,), -1, dtype=torch.long)
    for p in range(length):
        pos[p % slots] = p
    return pos


def _positions_cases(n_random: int = 6, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    cases = [
        Case("q_pos=[0..7], k_pos=[0..7], window=4 (a plain forward)", (torch.arange(8), torch.arange(8), 4)),
        Case("q_pos=[10], k_pos=ring of 4 slots after 11 tokens = [8, 9, 10, 7], window=4",
             (torch.tensor([10]), _ring_positions(11, 4), 4)),
        Case("q_pos=[2], k_pos=ring of 6 slots after 3 tokens = [0, 1, 2, -1, -1, -1], window=6",
             (torch.tensor([2]), _ring_positions(3, 6), 6)),
        Case("q_pos=[5, 6, 7], k_pos=[0..7], window=None (a global layer)", (torch.arange(5, 8), torch.arange(8), None)),
        Case("q_pos=[700], k_pos=ring of 512 slots after 701 tokens, window=512",
             (torch.tensor([700]), _ring_positions(701, 512), 512)),
    ]
    for _ in range(n_random):
        slots = rng.randint(2, 10)
        length = rng.randint(1, 30)
        window = rng.choice([slots, None])
        cases.append(Case(f"q_pos=[{length - 1}], k_pos=ring of {slots} slots after {length} tokens, window={window}",
                          (torch.tensor([length - 1]), _ring_positions(length, slots), window)))
    return cases


def _positions_reference(q_pos, k_pos, window):
    return masks.attention_mask(q_pos, k_pos, sliding_window=window)


def _positions_variant(q_pos, k_pos, window, empty=True, by_slot=False, off_by_one=False):
    q = q_pos[:, None]
    k = (torch.arange(len(k_pos)) if by_slot else k_pos)[None, :]
    allowed = k <= q
    if window is not None:
        allowed &= (k >= q - window) if off_by_one else (k > q - window)
    return allowed & (k_pos[None, :] >= 0) if empty else allowed


POSITIONS_MISTAKES = (
    Mistake("empty_slots_seen", "a slot holding position -1 is empty: it must never be seen (add `& (k_pos >= 0)`).",
            lambda q, k, w: _positions_variant(q, k, w, empty=False)),
    Mistake("slot_index_not_position", "compare *positions*, not slot indices: in a ring, slot s holds position "
            "k_pos[s], which is not s once the ring has wrapped around.",
            lambda q, k, w: _positions_variant(q, k, w, by_slot=True)),
    Mistake("window_off_by_one", "off by one: a query sees `window` keys including itself, q - window < k <= q.",
            lambda q, k, w: _positions_variant(q, k, w, off_by_one=True)),
)


def check_attention_mask(fn: Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]) -> CheckResult:
    """`fn(q_pos [Tq], k_pos [Tk], window or None) -> [Tq, Tk] bool`: the mask from positions (-1: empty slot)."""
    return run_check("attention_mask", fn, _positions_cases(), _positions_reference,
                     "gemma3_minimal.masks.attention_mask", POSITIONS_MISTAKES,
                     "write the condition for one (query position, key position) pair, then broadcast.")
