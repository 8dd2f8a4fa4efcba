"""Exercise checkers for the distillation notebook (08): the sampled distillation target, and the
sparse cross-entropy a student learns from it, with its gradient written by hand.

The report (section 2.2) sets the teacher's target "to zero probability for non-sampled logits,
and renormalized". Its literal reading, the library's default, keeps the teacher's probabilities
of the distinct drawn ids and divides by their sum; the count-based reading weighs each id by
times drawn / num_samples. The checker accepts both and says how they differ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...distill import sample_teacher_targets, sparse_cross_entropy
from .engine import Case, CheckResult, Mistake, run_check, verdict


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


# --- Exercise 8.2: the sparse cross-entropy and its gradient ------------------------------------


def _loss_and_grad(student_logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The library's loss, and torch.autograd's gradient of it with respect to the student logits."""
    logits = student_logits.detach().clone().requires_grad_(True)
    loss = sparse_cross_entropy(logits, ids, weights)
    (grad,) = torch.autograd.grad(loss, logits)
    return loss.detach(), grad


def _hand_written(log_probs: Callable[[torch.Tensor], torch.Tensor] = lambda z: torch.log_softmax(z, dim=-1),
                  renormalize: bool = True, per_token: bool = True, sign: float = 1.0, softmax_term: bool = True,
                  repeats_add: bool = True, grad_per_token: bool = True):
    """The exercise's formula, with one piece of it switched to a typical mistake."""

    def loss_and_grad(z: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = z.shape[0]
        w = w / w.sum(dim=-1, keepdim=True) if renormalize else w
        loss = -(w * log_probs(z).gather(-1, ids)).sum() / (n if per_token else 1)
        target = torch.zeros(z.shape)
        target = target.scatter_add_(-1, ids, w) if repeats_add else target.scatter_(-1, ids, w)
        q = torch.softmax(z, dim=-1) if softmax_term else 0.0
        grad = sign * (q - target) / (n if per_token and grad_per_token else 1)
        return loss, grad

    return loss_and_grad


SPARSE_CROSS_ENTROPY_MISTAKES = (
    Mistake("probabilities_not_log", "the cross-entropy takes the log of the student's probabilities: "
            "-log q[id], with log q = torch.log_softmax(z, -1), not q itself.",
            _hand_written(log_probs=lambda z: torch.softmax(z, dim=-1))),
    Mistake("logits_as_log_probs", "logits are not log-probabilities: log q = z - logsumexp(z), which is "
            "torch.log_softmax(z, -1).", _hand_written(log_probs=lambda z: z)),
    Mistake("log_of_softmax", "torch.softmax(z).log() underflows: an id with a very low probability gets "
            "q = 0 and -log q = inf. torch.log_softmax(z, -1) computes z - logsumexp(z) without that.",
            _hand_written(log_probs=lambda z: torch.softmax(z, dim=-1).log())),
    Mistake("sum_over_tokens", "the loss is the mean over the N tokens, not their sum: divide the loss, and so "
            "the gradient too, by N.", _hand_written(per_token=False)),
    Mistake("grad_not_divided_by_n", "the loss divides by N (a mean over tokens), so each token's gradient is "
            "divided by N too.", _hand_written(grad_per_token=False)),
    Mistake("weights_not_renormalized", "divide each token's weights by their sum first, "
            "w / w.sum(-1, keepdim=True): a stored target may not sum to exactly 1, and the library's "
            "loss renormalizes it.", _hand_written(renormalize=False)),
    Mistake("gradient_sign_flipped", "the gradient of -log softmax(z)[i] is softmax(z) minus the one-hot of i: "
            "student probabilities minus target, not target minus probabilities.", _hand_written(sign=-1.0)),
    Mistake("gradient_without_softmax", "log softmax(z)[i] = z_i - logsumexp(z), and the gradient of "
            "logsumexp(z) is softmax(z): every logit gets softmax(z_n) / N, minus the target on the ids "
            "(each token's gradient sums to 0).", _hand_written(softmax_term=False)),
    Mistake("repeated_ids_overwritten", "an id listed twice gets both weights added: build the dense target "
            "with scatter_add_ (scatter_ and index assignment keep only one of them). The library's targets "
            "pad with (id 0, weight 0), so id 0 can appear twice.", _hand_written(repeats_add=False)),
)


def _sparse_cases(seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    cases = [
        Case("the notebook's example: logits [[2, 1, 0, -1]], ids [[0, 1]], weights [[0.75, 0.25]]",
             (torch.tensor([[2.0, 1.0, 0.0, -1.0]]), torch.tensor([[0, 1]]), torch.tensor([[0.75, 0.25]]))),
        Case("one token, k=1 (a one-hot target): logits [[0.5, -1, 2, 0, 1]], ids [[3]], weights [[1.0]]",
             (torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0]]), torch.tensor([[3]]), torch.tensor([[1.0]]))),
        Case("three tokens with one-hot targets (k=1), ids [[0], [2], [5]]",
             (3 * torch.randn(3, 6, generator=gen), torch.tensor([[0], [2], [5]]), torch.ones(3, 1))),
        Case("unnormalized weights: ids [[1, 2, 4], [0, 3, 4]], weights [[2, 1, 1], [0.1, 0.1, 0.3]]",
             (torch.randn(2, 5, generator=gen), torch.tensor([[1, 2, 4], [0, 3, 4]]),
              torch.tensor([[2.0, 1.0, 1.0], [0.1, 0.1, 0.3]]))),
        Case("repeated ids: ids [[2, 2, 0]], weights [[0.3, 0.3, 0.4]] (id 2 has weight 0.6 in all)",
             (torch.tensor([[1.0, 0.0, -1.0, 0.5]]), torch.tensor([[2, 2, 0]]), torch.tensor([[0.3, 0.3, 0.4]]))),
        Case("padding as the library writes it: ids [[0, 3, 0, 0]], weights [[0.6, 0.4, 0, 0]]",
             (torch.tensor([[0.0, 1.0, 2.0, 3.0]]), torch.tensor([[0, 3, 0, 0]]),
              torch.tensor([[0.6, 0.4, 0.0, 0.0]]))),
        Case("large logits: [[0, 120, -30]], ids [[0, 1]], weights [[0.5, 0.5]] (q[0] = e^-120)",
             (torch.tensor([[0.0, 120.0, -30.0]]), torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.5]]))),
    ]
    for i, (n, vocab, k) in enumerate([(4, 10, 3), (8, 50, 16), (16, 300, 64)]):
        logits = 3 * torch.randn(n, vocab, generator=gen)
        ids = torch.randint(vocab, (n, k), generator=gen)  # drawn with replacement: ids repeat
        weights = torch.rand(n, k, generator=gen) * (1 + 4 * i)  # positive, not summing to 1
        cases.append(Case(f"random logits [{n}, {vocab}], ids and weights [{n}, {k}] (seed {seed}, draw {i})",
                          (logits, ids, weights)))
    teacher, student = 3 * torch.randn(2, 6, 40, generator=gen)
    for target in ("renormalized", "counts"):
        ids, weights = sample_teacher_targets(teacher, 32, torch.Generator().manual_seed(1), target)
        cases.append(Case(f"a target from g3.sample_teacher_targets(teacher [6, 40], 32, target='{target}')",
                          (student, ids, weights)))
    return cases


def check_sparse_cross_entropy(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> CheckResult:
    """`fn(student_logits [N, V], ids [N, k], weights [N, k]) -> (loss, grad [N, V])`, the gradient by hand.

    The loss must equal `gemma3_minimal.sparse_cross_entropy` (weights renormalized per token, mean
    over tokens) and the gradient torch.autograd's gradient of it with respect to the logits.
    """
    return run_check("sparse_cross_entropy_and_grad", fn, _sparse_cases(), _loss_and_grad,
                     "gemma3_minimal.sparse_cross_entropy and torch.autograd's gradient of it",
                     SPARSE_CROSS_ENTROPY_MISTAKES,
                     "write one token first: log_q = torch.log_softmax(z[n], -1); its loss is -sum_j "
                     "w[n, j] / w[n].sum() * log_q[ids[n, j]], its gradient softmax(z[n]) minus the dense "
                     "target (the normalized weights placed at their ids), and both are divided by N.")
