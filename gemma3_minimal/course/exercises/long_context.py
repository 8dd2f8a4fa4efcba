"""Exercise checkers for the long-context notebook: what a local layer sees, and scoring a pass key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from ..long_context import answer_log_prob, visible_positions
from .engine import Case, CheckResult, Mistake, run_check


def _visible_cases() -> list[Case]:
    pairs = [(5_000, 512), (5_000, None), (0, 512), (3, 512), (510, 512), (511, 512), (512, 512), (513, 512),
             (10, 1), (40, 8), (7, None), (1_000, 1_024), (32_767, 512)]
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        q = int(torch.randint(0, 3_000, (1,), generator=generator))
        pairs.append((q, int(torch.randint(1, 700, (1,), generator=generator))))
    return [Case(f"query_pos={q:,}, window={w}", (q, w)) for q, w in pairs]


def _window(first: Callable[[int, int], int], last: Callable[[int], int], clamp: bool = True):
    def visible(query_pos: int, window: Optional[int]) -> torch.Tensor:
        if window is None:
            return torch.arange(query_pos + 1)
        lo = first(query_pos, window)
        return torch.arange(max(lo, 0) if clamp else lo, last(query_pos))
    return visible


VISIBLE_MISTAKES = (
    Mistake("window_plus_one", "the window counts the query itself: a local layer sees `window` positions, "
            "query_pos - window + 1 to query_pos, not window + 1 of them.",
            _window(lambda q, w: q - w, lambda q: q + 1)),
    Mistake("query_not_seen", "a query attends to its own position too: the last visible position is "
            "query_pos itself (and the window still holds `window` positions).",
            _window(lambda q, w: q - w, lambda q: q)),
    Mistake("negative_positions", "near the start the window reaches before position 0: there is nothing "
            "there, so start at max(0, query_pos - window + 1).",
            _window(lambda q, w: q - w + 1, lambda q: q + 1, clamp=False)),
)


def check_visible_positions(fn: Callable[[int, Optional[int]], torch.Tensor]) -> CheckResult:
    """`fn(query_pos, window) -> int64 tensor`: the positions a query sees (window None: a global layer)."""
    return run_check("visible_positions", fn, _visible_cases(), visible_positions,
                     "gemma3_minimal.course.long_context.visible_positions", VISIBLE_MISTAKES,
                     "list the positions k with k <= query_pos and query_pos - k < window, in increasing order.")


def _score_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    shapes = [(6, 11, 3), (2, 5, 1), (9, 7, 8), (5, 3, 1), (12, 50, 6), (30, 262, 25)]
    cases = []
    for T, vocab, start in shapes:
        logits = torch.randn(T, vocab, generator=generator) * 3
        ids = torch.randint(0, vocab, (T,), generator=generator)
        cases.append(Case(f"logits [{T}, {vocab}], ids [{T}], start={start}", (logits, ids, start)))
    return cases


ANSWER_MISTAKES = (
    Mistake("logits_not_shifted", "the logits at position t predict token t + 1: score ids[start:] with "
            "logits[start - 1 : -1], one row earlier.",
            lambda lg, ids, s: torch.log_softmax(lg[s:], -1).gather(-1, ids[s:, None]).sum()),
    Mistake("raw_logits", "logits are not log-probabilities: take log_softmax over the vocabulary first.",
            lambda lg, ids, s: lg[s - 1:-1].gather(-1, ids[s:, None]).sum()),
    Mistake("mean_not_sum", "the probabilities of the answer's tokens multiply, so their logs add up: "
            "sum them, do not average.",
            lambda lg, ids, s: torch.log_softmax(lg[s - 1:-1], -1).gather(-1, ids[s:, None]).mean()),
)


def check_answer_log_prob(fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> CheckResult:
    """`fn(logits [T, vocab], ids [T], start) -> scalar`: log p(ids[start:] | ids[:start])."""
    return run_check("answer_log_prob", fn, _score_cases(), answer_log_prob,
                     "gemma3_minimal.course.long_context.answer_log_prob", ANSWER_MISTAKES,
                     "score token t (t >= start) with log_softmax(logits[t - 1])[ids[t]], and add them up.")
