"""Sampled-logit distillation: both readings of the sampled target, their statistics, the training loop.

Statistical tests use exact variances computed from the teacher and student distributions, and a
tolerance of Z standard errors; with fixed seeds they are deterministic. The teacher store has its
own tests (test_teacher_store.py).
"""

import inspect
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from gemma3_minimal.distill import (
    TARGETS,
    DistillHistory,
    distill,
    full_distillation_loss,
    next_token_loss,
    sample_teacher_targets,
    sampled_distillation_loss,
    sparse_cross_entropy,
)
from stub_models import Bigram

Z = 5.0  # standard errors allowed: a false alarm per comparison has probability < 6e-7


def dense(ids: torch.Tensor, weights: torch.Tensor, vocab: int) -> torch.Tensor:
    """The sparse target as a dense distribution [..., vocab]."""
    return torch.zeros(*ids.shape[:-1], vocab, dtype=weights.dtype).scatter_add(-1, ids, weights)


def test_counts_target_counts_each_draw_once():
    teacher = torch.randn(2, 5, 50, generator=torch.Generator().manual_seed(0)) * 2
    k = 32
    ids, weights = sample_teacher_targets(teacher, k, torch.Generator().manual_seed(1), target="counts")
    draws = torch.multinomial(
        torch.softmax(teacher, -1).reshape(-1, 50), k, replacement=True, generator=torch.Generator().manual_seed(1)
    )
    counts = torch.stack([torch.bincount(row, minlength=50) for row in draws]).reshape(2, 5, 50)
    assert ids.shape == weights.shape == (2, 5, k)
    assert torch.equal(dense(ids, weights, 50), counts / k)
    used = weights > 0
    assert torch.equal(used, torch.arange(k) < used.sum(-1, keepdim=True))  # distinct ids first
    assert bool((ids[~used] == 0).all())
    assert bool(((ids[..., 1:] > ids[..., :-1]) | ~used[..., 1:]).all())  # ascending, no repeats


def test_renormalized_target_is_the_teacher_probabilities_of_the_distinct_draws():
    """The report's reading, by hand: p of each distinct drawn id, zero elsewhere, divided by their sum."""
    teacher = torch.randn(2, 5, 50, generator=torch.Generator().manual_seed(0)) * 2
    k = 32
    ids, weights = sample_teacher_targets(teacher, k, torch.Generator().manual_seed(1))  # the default
    assert torch.equal(ids, sample_teacher_targets(teacher, k, torch.Generator().manual_seed(1), target="counts")[0])
    p = torch.softmax(teacher, -1).reshape(-1, 50)
    draws = torch.multinomial(p, k, replacement=True, generator=torch.Generator().manual_seed(1))
    for n, (row, got) in enumerate(zip(draws.tolist(), dense(ids, weights, 50).reshape(-1, 50))):
        drawn = sorted(set(row))
        kept_mass = sum(p[n, v].item() for v in drawn)
        expected = torch.zeros(50)
        for v in drawn:
            expected[v] = p[n, v].item() / kept_mass
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    default = inspect.signature(sample_teacher_targets).parameters["target"].default
    assert default == inspect.signature(sampled_distillation_loss).parameters["target"].default == TARGETS[0]
    assert TARGETS[0] == "renormalized"


@pytest.mark.parametrize("k", [1, 16, 256, 4096])
def test_counts_loss_approaches_full_cross_entropy(k):
    """E[sampled loss] = full CE; its variance is sum_t Var_p(-log q_t) / (k T^2), so it shrinks as 1/k."""
    g = torch.Generator().manual_seed(k)
    T, V = 32, 1000
    student, teacher = torch.randn(T, V, generator=g), 3 * torch.randn(T, V, generator=g)
    full = full_distillation_loss(student, teacher).double()
    p, nll = torch.softmax(teacher.double(), -1), -torch.log_softmax(student.double(), -1)
    var_per_draw = (p * nll**2).sum(-1) - (p * nll).sum(-1) ** 2  # [T]
    standard_error = math.sqrt(var_per_draw.sum() / (k * T**2))
    sampled = sampled_distillation_loss(student, teacher, k, g, target="counts").double()
    assert abs(sampled - full) <= Z * standard_error


def test_counts_gradient_is_full_cross_entropy_gradient_in_expectation():
    """Over many independent draws, d(sampled loss)/d(student logits) = (q - t)/T has mean (q - p)/T."""
    T, V, k, replicates = 3, 20, 4, 4000
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(T, V, generator=g), 2 * torch.randn(T, V, generator=g)
    z = student.clone().requires_grad_()
    full_distillation_loss(z, teacher).backward()
    full_grad = z.grad.double()
    # one batch of replicates: the batch mean divides each replicate's loss (a mean over T) by `replicates`
    zs = student.expand(replicates, T, V).clone().requires_grad_()
    sampled_distillation_loss(zs, teacher.expand(replicates, T, V), k, g, target="counts").backward()
    mean_grad = (zs.grad.double() * replicates).mean(0)  # [T, V]
    p = torch.softmax(teacher.double(), -1)
    standard_error = torch.sqrt(p * (1 - p) / (k * replicates)) / T  # exact: t_v is a mean of k Bernoulli(p_v)
    assert bool(((mean_grad - full_grad).abs() <= Z * standard_error + 1e-7).all())


def exact_renormalized_mean(p: torch.Tensor, k: int) -> torch.Tensor:
    """E[t] of the renormalized target, by enumerating all V**k ordered draws (small V and k only)."""
    mean = torch.zeros_like(p)
    for draws in itertools.product(range(len(p)), repeat=k):
        drawn = sorted(set(draws))
        mean[drawn] += math.prod(p[d].item() for d in draws) * p[drawn] / p[drawn].sum()
    return mean


def test_renormalized_target_is_biased_and_its_mean_is_the_exact_expectation():
    """The report's reading is not an unbiased estimate of p: its exact mean (enumerated) differs from p,
    likely ids inflated, unlikely ones deflated; the library's targets average to that exact mean."""
    V, k, replicates = 5, 4, 20_000
    g = torch.Generator().manual_seed(0)
    teacher = torch.tensor([2.0, 1.0, 0.0, -1.0, -2.0])
    p = torch.softmax(teacher.double(), -1)
    exact = exact_renormalized_mean(p, k)
    assert exact[0] > p[0] + 0.03 and exact[-1] < p[-1]  # inflated head, deflated tail
    ids, weights = sample_teacher_targets(teacher.expand(replicates, V), k, g)
    targets = dense(ids, weights.double(), V)  # [replicates, V]
    standard_error = targets.std(0) / math.sqrt(replicates)
    assert bool(((targets.mean(0) - exact).abs() <= Z * standard_error + 1e-9).all())
    assert bool(((targets.mean(0) - p).abs() > Z * standard_error).any())


def test_renormalized_gradient_is_biased():
    """Its gradient q - t averages to q - E[t], not the full cross-entropy gradient q - p."""
    T, V, k, replicates = 3, 20, 4, 4000
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(T, V, generator=g), 2 * torch.randn(T, V, generator=g)
    z = student.clone().requires_grad_()
    full_distillation_loss(z, teacher).backward()
    zs = student.expand(replicates, T, V).clone().requires_grad_()
    sampled_distillation_loss(zs, teacher.expand(replicates, T, V), k, g).backward()
    mean_grad = (zs.grad.double() * replicates).mean(0)  # [T, V]
    p = torch.softmax(teacher.double(), -1)
    standard_error = torch.sqrt(p * (1 - p) / (k * replicates)) / T  # the counts target's error bar
    assert float(((mean_grad - z.grad.double()).abs() / (standard_error + 1e-12)).max()) > Z


def test_bad_targets_are_refused():
    teacher = torch.randn(2, 10)
    for bad in ("count", "Renormalized", None, 1):
        with pytest.raises(ValueError, match="target must be 'renormalized'.*or 'counts'"):
            sample_teacher_targets(teacher, 4, target=bad)
        with pytest.raises(ValueError, match="target must be"):
            sampled_distillation_loss(teacher, teacher, 4, target=bad)
    with pytest.raises(ValueError, match="target must be"):
        distill(Bigram(32), Bigram(32), torch.zeros(2, 3, dtype=torch.long), 1, target="count", progress=False)


def test_one_hot_teacher_gives_hard_label_cross_entropy():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 6, 100, generator=g)
    labels = torch.randint(0, 100, (4, 6), generator=g)
    teacher = torch.full((4, 6, 100), float("-inf")).scatter(-1, labels.unsqueeze(-1), 0.0)
    mask = torch.rand(4, 6, generator=g) > 0.3
    hard = F.cross_entropy(student.flatten(0, 1), labels.masked_fill(~mask, -100).flatten())
    assert torch.equal(sampled_distillation_loss(student, teacher, 256, g, mask), hard)
    assert torch.equal(full_distillation_loss(student, teacher, mask), hard)


def test_full_distillation_loss_matches_torch_soft_cross_entropy():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 7, 300, generator=g), torch.randn(2, 7, 300, generator=g)
    reference = F.cross_entropy(student.flatten(0, 1), torch.softmax(teacher, -1).flatten(0, 1))
    torch.testing.assert_close(full_distillation_loss(student, teacher), reference)


def test_mask_averages_over_unmasked_tokens_only():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 40, generator=g)
    ids, weights = sample_teacher_targets(torch.randn(3, 5, 40, generator=g), 16, g)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    masked = sparse_cross_entropy(student, ids, weights, mask)
    torch.testing.assert_close(masked, sparse_cross_entropy(student[mask], ids[mask], weights[mask]))


def test_bad_logits_are_refused():
    student = torch.randn(2, 3, 10)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        sampled_distillation_loss(student, torch.randn(2, 3, 11))
    with pytest.raises(ValueError, match="shape mismatch"):
        sampled_distillation_loss(student, torch.randn(2, 4, 10))
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        full_distillation_loss(student, torch.randn(2, 3, 11))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            sampled_distillation_loss(student, torch.randn(2, 3, 10), bad)
    with pytest.raises(TypeError, match="floating-point"):
        sampled_distillation_loss(student, torch.randint(0, 5, (2, 3, 10)))
    with pytest.raises(TypeError, match="floating-point"):
        sampled_distillation_loss(torch.randint(0, 5, (2, 3, 10)), student)
    with pytest.raises(ValueError, match="mask"):
        sampled_distillation_loss(student, student, 4, mask=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no tokens"):
        sampled_distillation_loss(student, student, 4, mask=torch.zeros(2, 3, dtype=torch.bool))


def test_bad_sparse_targets_are_refused():
    student = torch.randn(2, 3, 10)
    ids, weights = torch.zeros(2, 3, 4, dtype=torch.long), torch.full((2, 3, 4), 0.25)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        sparse_cross_entropy(student, ids + 10, weights)
    with pytest.raises(ValueError, match="shape mismatch"):
        sparse_cross_entropy(student, ids[:1], weights[:1])
    with pytest.raises(TypeError, match="integer"):
        sparse_cross_entropy(student, weights, weights)


@pytest.mark.parametrize("fault", ["negative", "all zero", "nan", "inf"])
def test_bad_sparse_weights_are_refused(fault):
    """Negative, all-zero or non-finite weights used to give -inf, 0 or nan without a word."""
    student = torch.randn(2, 3, 10)
    ids, weights = torch.arange(4).expand(2, 3, 4).clone(), torch.full((2, 3, 4), 0.25)
    if fault == "negative":
        weights[1, 2, 0] = -0.5
    elif fault == "all zero":
        weights[0, 1] = 0.0
    else:
        weights[0, 0, 3] = float(fault)
    message = "all-zero target weights" if fault == "all zero" else "finite and >= 0"
    with pytest.raises(ValueError, match=message):
        sparse_cross_entropy(student, ids, weights)


def test_all_zero_weights_are_allowed_on_masked_tokens():
    student = torch.randn(2, 3, 10)
    ids, weights = torch.arange(4).expand(2, 3, 4).clone(), torch.full((2, 3, 4), 0.25)
    weights[0, 1] = 0.0
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[0, 1] = False
    torch.testing.assert_close(sparse_cross_entropy(student, ids, weights, mask),
                               sparse_cross_entropy(student[mask], ids[mask], weights[mask]))


def test_next_token_loss_is_shifted_cross_entropy():
    tokens = torch.randint(0, 32, (3, 7), generator=torch.Generator().manual_seed(0))
    model = Bigram(32)
    reference = F.cross_entropy(model(tokens)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    torch.testing.assert_close(next_token_loss(model, tokens), reference)


def test_distill_records_losses_and_evaluations():
    g = torch.Generator().manual_seed(0)
    data, held_out = torch.randint(0, 32, (8, 6), generator=g), torch.randint(0, 32, (2, 6), generator=g)
    history = distill(Bigram(32), Bigram(32, 2.0), data, 7, eval_data=held_out, eval_every=3, progress=False)
    assert isinstance(history, DistillHistory)
    assert len(history.loss) == 7 and all(math.isfinite(x) for x in history.loss)
    assert history.eval_steps == [0, 3, 6, 7] and len(history.eval_loss) == 4


@pytest.mark.parametrize("num_samples, target", [(None, None), (64, "renormalized"), (64, "counts")])
def test_distillation_moves_the_student_toward_the_teacher(num_samples, target):
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 32, (8, 8), generator=g)
    torch.manual_seed(0)
    teacher, student = Bigram(32, 2.0), Bigram(32)
    with torch.no_grad():
        before = full_distillation_loss(student(data), teacher(data))
    distill(student, teacher, data, 40, lr=0.1, num_samples=num_samples, target=target, progress=False)
    with torch.no_grad():
        after = full_distillation_loss(student(data), teacher(data))
    assert after < before


def test_distill_is_reproducible_and_hard_labels_need_no_teacher():
    data = torch.randint(0, 32, (4, 6), generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(distill(Bigram(32), None, data, 5, lr=0.1, progress=False).loss)
    assert runs[0] == runs[1] and runs[0][-1] < runs[0][0]




@pytest.mark.parametrize("target", TARGETS)
def test_distill_samples_the_target_it_is_given(target):
    """The first step's loss is the sampled loss with that target, drawn by a generator seeded with `seed`."""
    data = torch.randint(0, 32, (4, 6), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    teacher, student = Bigram(32, 2.0), Bigram(32)
    with torch.no_grad():
        expected = sampled_distillation_loss(student(data[:2]), teacher(data[:2]), 16,
                                             torch.Generator().manual_seed(3), target=target)
    history = distill(student, teacher, data, 1, batch_size=2, num_samples=16, target=target, seed=3, progress=False)
    assert history.loss[0] == expected.item()
