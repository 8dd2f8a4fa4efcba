"""Exercise checkers for the distillation notebook (08): the sampled distillation target.

The report (section 2.2) sets the teacher's target "to zero probability for non-sampled logits,
and renormalized". Its literal reading, the library's default, keeps the teacher's probabilities
of the distinct drawn ids and divides by their sum; the count-based reading weighs each id by
times drawn / num_samples. The checker accepts both and says how they differ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...distill import sample_teacher_targets
from .engine import Case, CheckResult, Mistake, verdict


def _dense_target(target: str) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    def reference(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
        ids, weights = sample_teacher_targets(teacher_logits, num_samples, torch.Generator().manual_seed(seed), target)
        return torch.zeros(teacher_logits.shape).scatter_add_(-1, ids, weights)

    return reference


def _draws(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """The draws every version starts from: the exact call the exercise gives the learner."""
    probs = torch.softmax(teacher_logits.float(), dim=-1)
    return torch.multinomial(probs, num_samples, replacement=True, generator=torch.Generator().manual_seed(seed))


def _drawn(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    return torch.zeros(teacher_logits.shape).scatter_(-1, _draws(teacher_logits, num_samples, seed), 1.0)


def _target_probs_not_renormalized(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    return torch.softmax(teacher_logits.float(), dim=-1) * _drawn(teacher_logits, num_samples, seed)


def _target_counts(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    draws = _draws(teacher_logits, num_samples, seed)
    return torch.zeros(teacher_logits.shape).scatter_add_(-1, draws, torch.ones(draws.shape))


def _target_uniform(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    drawn = _drawn(teacher_logits, num_samples, seed)
    return drawn / drawn.sum(-1, keepdim=True)


SAMPLED_TARGET_MISTAKES = (
    Mistake("probs_not_renormalized", "you kept the teacher's probabilities of the drawn ids and zeroed the rest; "
            "now renormalize: divide by their sum, per token, so each target sums to 1.", _target_probs_not_renormalized),
    Mistake("counts_not_normalized", "counting draws is the other reading of the report; divide the counts by "
            "num_samples so each token's target sums to 1.", _target_counts),
    Mistake("uniform_over_drawn", "the student learns the teacher's distribution within the samples: weight each "
            "drawn id by its teacher probability (renormalized), not all of them equally.", _target_uniform),
)

BOTH_READINGS = (
    "Two readings fit the report's words (section 2.2). The literal one (the library's default,\n"
    "target='renormalized') keeps the teacher's probabilities of the distinct drawn ids and divides\n"
    "by their sum: every likely id is drawn, the kept mass falls short of 1, so likely ids are\n"
    "inflated and the loss and gradient are biased. The count-based one (target='counts') weighs\n"
    "each id by times drawn / num_samples: an average of one-hot draws, so its expectation is the\n"
    "teacher's distribution and the loss and gradient are unbiased, only noisier. The notebook\n"
    "'Distillation with 256 sampled teacher logits' measures both on the real 270M."
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
    """`fn(teacher_logits [N, V], num_samples, seed) -> [N, V]`: the dense sampled-distillation target.

    Accepts the report's literal reading (renormalized teacher probabilities of the drawn ids) and
    the count-based one (times drawn / num_samples), and explains the other.
    """
    cases = _target_cases()
    literal = verdict("sampled_target", fn, cases, _dense_target("renormalized"),
                      "gemma3_minimal.sample_teacher_targets(..., target='renormalized')", SAMPLED_TARGET_MISTAKES,
                      "zero the teacher's probabilities of the ids never drawn, then divide by the sum of the rest.")
    result = literal
    if literal.passed:
        message = f"{literal.message}\nThat is the report's literal reading.\n{BOTH_READINGS}"
        result = CheckResult("sampled_target", True, message)
    else:
        counts = verdict("sampled_target", fn, cases, _dense_target("counts"),
                         "gemma3_minimal.sample_teacher_targets(..., target='counts')")
        if counts.passed:
            message = f"{counts.message}\nThat is the count-based reading.\n{BOTH_READINGS}"
            result = CheckResult("sampled_target", True, message)
    print(result.message)
    return result
