"""Sampled-logit distillation: statistics of the sampled target, the teacher store, the training loop.

Statistical tests use exact variances computed from the teacher and student distributions, and a
tolerance of Z standard errors; with fixed seeds they are deterministic.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from gemma3_minimal.distill import (
    _content_sha256,
    DistillHistory,
    StoreError,
    TeacherStore,
    cache_teacher_logits,
    distill,
    full_distillation_loss,
    full_distribution_bytes,
    next_token_loss,
    sample_teacher_targets,
    sampled_distillation_loss,
    sparse_cross_entropy,
    tokens_sha256,
)

Z = 5.0  # standard errors allowed: a false alarm per comparison has probability < 6e-7


class Bigram(nn.Module):
    """A stub causal LM: the logits at a position depend on that position's token only."""

    def __init__(self, vocab: int, scale: float = 1.0) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        nn.init.normal_(self.table.weight, std=scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table(input_ids)  # [b, T, V]


def dense(ids: torch.Tensor, weights: torch.Tensor, vocab: int) -> torch.Tensor:
    """The sparse target as a dense distribution [..., vocab]."""
    return torch.zeros(*ids.shape[:-1], vocab, dtype=weights.dtype).scatter_add(-1, ids, weights)


def test_sample_targets_count_each_draw_once():
    teacher = torch.randn(2, 5, 50, generator=torch.Generator().manual_seed(0)) * 2
    k = 32
    ids, weights = sample_teacher_targets(teacher, k, torch.Generator().manual_seed(1))
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


@pytest.mark.parametrize("k", [1, 16, 256, 4096])
def test_sampled_loss_approaches_full_cross_entropy(k):
    """E[sampled loss] = full CE; its variance is sum_t Var_p(-log q_t) / (k T^2), so it shrinks as 1/k."""
    g = torch.Generator().manual_seed(k)
    T, V = 32, 1000
    student, teacher = torch.randn(T, V, generator=g), 3 * torch.randn(T, V, generator=g)
    full = full_distillation_loss(student, teacher).double()
    p, nll = torch.softmax(teacher.double(), -1), -torch.log_softmax(student.double(), -1)
    var_per_draw = (p * nll**2).sum(-1) - (p * nll).sum(-1) ** 2  # [T]
    standard_error = math.sqrt(var_per_draw.sum() / (k * T**2))
    sampled = sampled_distillation_loss(student, teacher, k, g).double()
    assert abs(sampled - full) <= Z * standard_error


def test_gradient_is_full_cross_entropy_gradient_in_expectation():
    """Over many independent draws, d(sampled loss)/d(student logits) = (q - t)/T has mean (q - p)/T."""
    T, V, k, replicates = 3, 20, 4, 4000
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(T, V, generator=g), 2 * torch.randn(T, V, generator=g)
    z = student.clone().requires_grad_()
    full_distillation_loss(z, teacher).backward()
    full_grad = z.grad.double()
    # one batch of replicates: the batch mean divides each replicate's loss (a mean over T) by `replicates`
    zs = student.expand(replicates, T, V).clone().requires_grad_()
    sampled_distillation_loss(zs, teacher.expand(replicates, T, V), k, g).backward()
    mean_grad = (zs.grad.double() * replicates).mean(0)  # [T, V]
    p = torch.softmax(teacher.double(), -1)
    standard_error = torch.sqrt(p * (1 - p) / (k * replicates)) / T  # exact: t_v is a mean of k Bernoulli(p_v)
    assert bool(((mean_grad - full_grad).abs() <= Z * standard_error + 1e-7).all())


def test_renormalizing_distinct_teacher_probabilities_would_be_biased():
    """The rejected reading: p restricted to the distinct sampled ids, renormalized. Its mean is not p."""
    V, k, replicates = 20, 4, 4000
    g = torch.Generator().manual_seed(0)
    teacher = 2 * torch.randn(V, generator=g)
    p = torch.softmax(teacher.double(), -1)
    ids, weights = sample_teacher_targets(teacher.expand(replicates, V), k, g)
    restricted = dense(ids, (weights > 0).double() * p[ids], V)  # [replicates, V]
    mean_target = (restricted / restricted.sum(-1, keepdim=True)).mean(0)
    standard_error = torch.sqrt(p * (1 - p) / (k * replicates))  # the multiplicity target's error bar
    assert float(((mean_target - p).abs() / standard_error).max()) > Z


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


def test_store_round_trips_exactly(tmp_path):
    data = torch.randint(0, 64, (6, 9), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    teacher = Bigram(64, 2.0)
    store = TeacherStore.build(teacher, data, 256, torch.Generator().manual_seed(1), batch_size=6)
    store.save(tmp_path / "teacher.safetensors")
    loaded = TeacherStore.load(tmp_path / "teacher.safetensors")
    assert torch.equal(loaded.ids, store.ids) and torch.equal(loaded.weights, store.weights)
    assert torch.equal(loaded.counts, store.counts)
    assert (loaded.vocab_size, loaded.num_samples, loaded.data_sha256) == (64, 256, tokens_sha256(data))
    # 256 draws: every weight c/256 is exact in float16, so the stored target is the sampled one
    with torch.no_grad():
        ids, weights = sample_teacher_targets(teacher(data), 256, torch.Generator().manual_seed(1))
    assert torch.equal(loaded.ids.long(), ids) and torch.equal(loaded.weights.float(), weights)


def test_store_is_500x_smaller_than_full_float16_distributions(tmp_path):
    """A Zipf-shaped teacher over the real vocabulary, p_r ~ r^-1.2 (entropy 5.75 nats, broader than a
    trained LM's typical next-token distribution): its 256 draws hit about 123 distinct ids."""
    V, k = 262_144, 256
    logits = (-1.2 * torch.arange(1, V + 1).double().log()).float().expand(1, 16, V)
    ids, weights = sample_teacher_targets(logits, k, torch.Generator().manual_seed(0))
    store = TeacherStore(ids.int(), weights.half(), V, k, "zipf")
    distinct = int(store.counts.sum())
    assert store.payload_bytes == 16 * 4 + distinct * 6
    store.save(tmp_path / "zipf.safetensors")
    file_bytes = (tmp_path / "zipf.safetensors").stat().st_size
    assert store.payload_bytes < file_bytes < store.payload_bytes + 1024  # the header is small
    assert full_distribution_bytes(V) == 524_288
    assert full_distribution_bytes(V) * store.num_tokens / file_bytes >= 500


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


def test_corrupt_store_files_raise_store_error(tmp_path):
    data = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(0))
    path = tmp_path / "teacher.safetensors"
    TeacherStore.build(Bigram(32), data, 8, torch.Generator().manual_seed(0)).save(path)
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-3] ^= 1
    cases = {
        "truncated": (good[:-10], "not a readable"),
        "header only": (good[:40], "not a readable"),
        "empty": (b"", "not a readable"),
        "flipped byte": (bytes(flipped), "corrupt"),
        "foreign": (good.replace(b"teacher_store", b"teacher_stork"), "not a gemma3"),
    }
    for name, (content, message) in cases.items():
        path.write_bytes(content)
        with pytest.raises(StoreError, match=message):
            TeacherStore.load(path)
    with pytest.raises(StoreError, match="not a readable"):
        TeacherStore.load(tmp_path / "missing.safetensors")


def test_store_headers_that_do_not_fit_the_content_raise_store_error(tmp_path):
    data = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(0))
    path = tmp_path / "teacher.safetensors"
    TeacherStore.build(Bigram(32), data, 8, torch.Generator().manual_seed(0)).save(path)
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        good = f.metadata()
    cases = {"shape": ("[3, 5]", "do not fit"), "num_samples": ("0", "malformed"), "vocab_size": ("ten", "malformed")}
    for key, (value, message) in cases.items():
        save_file(tensors, path, metadata={**good, key: value})
        with pytest.raises(StoreError, match=message):
            TeacherStore.load(path)
    ids = tensors["ids"].clone()
    ids[0] = 40  # outside the 32-entry vocabulary, with a matching content hash
    save_file({**tensors, "ids": ids}, path, metadata={**good, "content_sha256": _content_sha256({**tensors, "ids": ids})})
    with pytest.raises(StoreError, match=r"\[0, 32\)"):
        TeacherStore.load(path)


def test_store_must_fit_data_and_student():
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 32, (4, 5), generator=g)
    store = TeacherStore.build(Bigram(32), data, 8, g)
    with pytest.raises(ValueError, match="other data"):
        distill(Bigram(32), store, data.flip(0), 1, progress=False)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        distill(Bigram(40), store, data, 1, progress=False)
    with pytest.raises(StoreError, match="padding last"):
        TeacherStore(store.ids, store.weights.flip(-1), 32, 8, store.data_sha256)


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


def test_distill_first_step_uses_the_stored_targets():
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 32, (6, 5), generator=g)
    store = TeacherStore.build(Bigram(32, 2.0), data, 16, g)
    torch.manual_seed(0)
    student = Bigram(32)
    before = copy.deepcopy(student)
    history = distill(student, store, data, 2, batch_size=4, progress=False)
    assert history.loss[0] == sparse_cross_entropy(before(data[:4]), *store.targets(torch.arange(4))).item()


@pytest.mark.parametrize("num_samples", [None, 64])
def test_distillation_moves_the_student_toward_the_teacher(num_samples):
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 32, (8, 8), generator=g)
    torch.manual_seed(0)
    teacher, student = Bigram(32, 2.0), Bigram(32)
    with torch.no_grad():
        before = full_distillation_loss(student(data), teacher(data))
    distill(student, teacher, data, 40, lr=0.1, num_samples=num_samples, progress=False)
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


def test_cached_teacher_logits_give_the_same_training_and_store():
    data = torch.randint(0, 32, (5, 6), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    teacher = Bigram(32, 2.0)
    cached = cache_teacher_logits(teacher, data, batch_size=2, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(cached, teacher(data))
    runs = []
    for target in (teacher, cached):
        torch.manual_seed(1)
        runs.append(distill(Bigram(32), target, data, 4, batch_size=2, num_samples=None, progress=False).loss)
    assert runs[0] == runs[1]
    stores = [TeacherStore.build(t, data, 16, torch.Generator().manual_seed(2), batch_size=2) for t in (teacher, cached)]
    assert torch.equal(stores[0].ids, stores[1].ids) and torch.equal(stores[0].weights, stores[1].weights)
    with pytest.raises(ValueError, match="do not cover"):
        distill(Bigram(32), cached[:4], data, 1, progress=False)
    with pytest.raises(ValueError, match="do not cover"):
        TeacherStore.build(cached[:, :5], data)
