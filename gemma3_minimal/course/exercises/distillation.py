"""Exercise checkers for notebook 08: the sampled distillation target."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...distill import sample_teacher_targets
from .engine import Case, CheckResult, Mistake, run_check


def _dense_target_reference(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    ids, weights = sample_teacher_targets(teacher_logits, num_samples, torch.Generator().manual_seed(seed))
    return torch.zeros(teacher_logits.shape).scatter_add_(-1, ids, weights)


def _draws(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """The draws every version starts from: the exact call the exercise gives the learner."""
    probs = torch.softmax(teacher_logits.float(), dim=-1)
    return torch.multinomial(probs, num_samples, replacement=True, generator=torch.Generator().manual_seed(seed))


def _target_teacher_probs(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    drawn = torch.zeros(teacher_logits.shape).scatter_(-1, _draws(teacher_logits, num_samples, seed), 1.0) > 0
    p = torch.softmax(teacher_logits.float(), dim=-1) * drawn
    return p / p.sum(-1, keepdim=True)


def _target_counts(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    draws = _draws(teacher_logits, num_samples, seed)
    return torch.zeros(teacher_logits.shape).scatter_add_(-1, draws, torch.ones(draws.shape))


def _target_uniform(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    drawn = torch.zeros(teacher_logits.shape).scatter_(-1, _draws(teacher_logits, num_samples, seed), 1.0)
    return drawn / drawn.sum(-1, keepdim=True)


SAMPLED_TARGET_MISTAKES = (
    Mistake("teacher_probs_renormalized", "weight each id by how often it was drawn (count / num_samples): that "
            "is an unbiased estimate of the teacher. Keeping the teacher's probabilities of the drawn ids and "
            "renormalizing inflates them (every likely id is drawn).", _target_teacher_probs),
    Mistake("counts_not_normalized", "divide the counts by num_samples, so each token's target sums to 1.", _target_counts),
    Mistake("uniform_over_drawn", "an id drawn 3 times weighs 3 times as much as one drawn once: count repeats.",
            _target_uniform),
)


def _target_cases(seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [((1, 6), 4), ((2, 10), 8), ((3, 50), 256), ((4, 100), 16), ((1, 1000), 256)]
    cases = [Case("teacher_logits = [[0, 0, 0, 0, 0, 8]] (one likely id), num_samples=16, seed=1",
                  (torch.tensor([[0.0, 0, 0, 0, 0, 8]]), 16, 1))]
    for i, (shape, k) in enumerate(shapes):
        logits = 3 * torch.randn(*shape, generator=gen)
        cases.append(Case(f"teacher_logits of shape {list(shape)}, num_samples={k}, seed={i}", (logits, k, i)))
    return cases


def check_sampled_target(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> CheckResult:
    """`fn(teacher_logits [N, V], num_samples, seed) -> [N, V]`: the dense sampled-distillation target."""
    return run_check("sampled_target", fn, _target_cases(), _dense_target_reference,
                     "gemma3_minimal.distill.sample_teacher_targets", SAMPLED_TARGET_MISTAKES,
                     "count how many times each id was drawn, per token, and divide by num_samples.")
