"""Sampled-logit knowledge distillation, as in the Gemma 3 report (arXiv 2503.19786, section 2.2).

"We sample 256 logits per token, weighted by teacher probabilities. The student learns the
teacher's distribution within these samples via cross-entropy loss. The teacher's target
distribution is set to zero probability for non-sampled logits, and renormalized."

How the sampled target is renormalized matters. Here each of the `num_samples` draws (with
replacement, from the teacher softmax p) carries weight 1/num_samples, so a token id drawn c
times gets weight c/num_samples. That target t is the Monte Carlo estimate of p: E[t] = p, so
the loss E[-sum_v t_v log q_v] equals the full cross-entropy -sum_v p_v log q_v and its gradient
q - t with respect to the student logits equals q - p in expectation. The other reading (keep the
teacher probabilities of the distinct sampled ids, divide by their sum) is biased: every likely
id is drawn, the sum falls short of 1, and their target probabilities are inflated.

Pieces:
- `sample_teacher_targets`: teacher logits -> (ids, weights), the sparse target per token.
- `sparse_cross_entropy`: student logits + (ids, weights) -> loss; works from a stored target.
- `sampled_distillation_loss`: both in one call; `full_distillation_loss`: the dense reference.
- `TeacherStore`: the targets of a whole data set, saved once (safetensors) and read back.
- `distill`: a training loop for hard labels, full-vocabulary, sampled or stored targets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

STORE_FORMAT = "gemma3_minimal.teacher_store"
STORE_VERSION = "1"


def _check_logits(name: str, logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        got = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(f"{name} must be a floating-point tensor [..., vocab], got {got}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a vocabulary dimension, got shape {tuple(logits.shape)}")


def _check_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"vocabulary mismatch: student has {student_logits.shape[-1]} logits per token, "
            f"teacher {teacher_logits.shape[-1]}"
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"shape mismatch: student logits {tuple(student_logits.shape)}, "
            f"teacher logits {tuple(teacher_logits.shape)}"
        )


def _check_num_samples(num_samples: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")


def _masked_mean(per_token: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of per_token [...] over the positions where mask [...] is True (all if mask is None)."""
    if mask is None:
        return per_token.mean()
    if mask.dtype != torch.bool or mask.shape != per_token.shape:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(per_token.shape)} (the logits without "
            f"the vocabulary dimension), got {mask.dtype} {tuple(mask.shape)}"
        )
    count = mask.sum()
    if count == 0:
        raise ValueError("mask selects no tokens")
    return per_token.masked_fill(~mask, 0.0).sum() / count


def sample_teacher_targets(
    teacher_logits: torch.Tensor, num_samples: int = 256, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `num_samples` ids per token from the teacher softmax; return the sparse target.

    teacher_logits: [..., vocab]. Returns ids [..., num_samples] (int64) and weights
    [..., num_samples] (float32): the distinct drawn ids in ascending order, each weighted by
    (times drawn) / num_samples, then padding slots (id 0, weight 0). Weights sum to 1 per token.
    Example: draws [7, 3, 7, 7] -> ids [3, 7, 0, 0], weights [0.25, 0.75, 0, 0].
    """
    _check_logits("teacher_logits", teacher_logits)
    _check_num_samples(num_samples)
    *lead, vocab = teacher_logits.shape
    probs = torch.softmax(teacher_logits.detach().float().reshape(-1, vocab), dim=-1)  # [N, V]
    draws = torch.multinomial(probs, num_samples, replacement=True, generator=generator)  # [N, k]
    draws, _ = draws.sort(dim=-1)
    first = torch.ones_like(draws, dtype=torch.bool)
    first[:, 1:] = draws[:, 1:] != draws[:, :-1]
    slot = first.cumsum(dim=-1) - 1  # [N, k] which distinct id each draw belongs to
    ids = torch.zeros_like(draws).scatter_(-1, slot, draws)
    share = torch.full(draws.shape, 1.0 / num_samples)
    weights = torch.zeros(draws.shape).scatter_add_(-1, slot, share)
    return ids.reshape(*lead, num_samples), weights.reshape(*lead, num_samples)


def sparse_cross_entropy(
    student_logits: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Cross-entropy of the student against a sparse target: -sum_j w_j log softmax(z)[id_j].

    student_logits: [..., vocab]; ids: [..., k] integer; weights: [..., k] (renormalized here to
    sum 1 per token, so float16 rounding of a stored target does not bias the loss);
    mask: [...] bool, True where a token counts. Returns the mean over counted tokens (a scalar).
    """
    _check_logits("student_logits", student_logits)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
    if not weights.is_floating_point():
        raise TypeError(f"weights must be a floating-point tensor, got {weights.dtype}")
    if ids.shape != weights.shape or ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"shape mismatch: student logits {tuple(student_logits.shape)}, ids {tuple(ids.shape)}, "
            f"weights {tuple(weights.shape)}; expected ids and weights [..., k] with the logits' leading dims"
        )
    vocab = student_logits.shape[-1]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"target ids must lie in [0, {vocab}) (the student's vocabulary)")
    w = weights.float()
    w = w / w.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # [..., k]
    log_q = torch.log_softmax(student_logits.float(), dim=-1)  # [..., V]
    per_token = -(w * log_q.gather(-1, ids.long())).sum(dim=-1)  # [...]
    return _masked_mean(per_token, mask)


def sampled_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    num_samples: int = 256,
    generator: Optional[torch.Generator] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Gemma 3's distillation loss: cross-entropy against `num_samples` teacher draws per token.

    student_logits, teacher_logits: [..., vocab]; mask: [...] bool (True = counts).
    An unbiased estimate of `full_distillation_loss`, with an unbiased gradient.
    """
    _check_pair(student_logits, teacher_logits)
    ids, weights = sample_teacher_targets(teacher_logits, num_samples, generator)
    return sparse_cross_entropy(student_logits, ids, weights, mask)


def full_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Cross-entropy against the whole teacher distribution: -sum_v p_v log q_v, mean over tokens.

    student_logits, teacher_logits: [..., vocab]; mask: [...] bool (True = counts).
    """
    _check_pair(student_logits, teacher_logits)
    p = torch.softmax(teacher_logits.detach().float(), dim=-1)  # [..., V]
    log_q = torch.log_softmax(student_logits.float(), dim=-1)  # [..., V]
    return _masked_mean(-(p * log_q).sum(dim=-1), mask)


def tokens_sha256(data: torch.Tensor) -> str:
    """sha256 of a token-id tensor (its shape and int64 values): ties a store to its data."""
    h = hashlib.sha256(json.dumps(list(data.shape)).encode())
    h.update(data.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def _content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_data(data: torch.Tensor) -> None:
    if not isinstance(data, torch.Tensor) or data.dim() != 2 or data.dtype.is_floating_point or data.numel() == 0:
        got = f"{data.dtype} {tuple(data.shape)}" if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"data must be integer token ids [num_seq, seq_len], got {got}")


def _check_cached_logits(logits: torch.Tensor, data: torch.Tensor) -> None:
    _check_logits("cached teacher logits", logits)
    if logits.dim() != 3 or logits.shape[:2] != data.shape:
        raise ValueError(
            f"shape mismatch: cached teacher logits {tuple(logits.shape)} do not cover data {tuple(data.shape)}"
        )


@torch.no_grad()
def cache_teacher_logits(
    teacher: nn.Module, data: torch.Tensor, batch_size: int = 8, dtype: torch.dtype = torch.float16
) -> torch.Tensor:
    """The teacher's logits for every token of data [num_seq, seq_len], computed once, batch by batch.

    Returns [num_seq, seq_len, vocab] in `dtype`: the dense cache that full-vocabulary distillation
    needs, vocab x 2 bytes per token in float16 (what `TeacherStore` avoids).
    """
    _check_data(data)
    return torch.cat([teacher(data[s : s + batch_size]).to(dtype) for s in range(0, data.shape[0], batch_size)])


class StoreError(ValueError):
    """A teacher store that is truncated, corrupt, malformed or not laid out as `TeacherStore` expects."""


@dataclass(frozen=True)
class TeacherStore:
    """Sampled teacher targets for every token of a data set, in the compact form that is saved.

    ids: [num_seq, seq_len, num_samples] int32 and weights: same shape, float16, as
    `sample_teacher_targets` lays them out (distinct ids, then padding with id 0, weight 0).
    On disk only the used slots are kept: per token 4 bytes (count) + 6 bytes per distinct id,
    against 262,144 x 2 bytes for a full float16 distribution.
    """

    ids: torch.Tensor
    weights: torch.Tensor
    vocab_size: int
    num_samples: int
    data_sha256: str  # `tokens_sha256` of the token ids the targets were computed on
    counts: torch.Tensor = field(init=False, repr=False)  # [num_seq, seq_len] int32 distinct ids per token

    def __post_init__(self) -> None:
        _check_num_samples(self.num_samples)
        if self.ids.dtype != torch.int32 or self.weights.dtype != torch.float16:
            raise StoreError(f"store needs int32 ids and float16 weights, got {self.ids.dtype} and {self.weights.dtype}")
        if self.ids.dim() != 3 or self.ids.shape != self.weights.shape or self.ids.shape[-1] != self.num_samples:
            raise StoreError(
                f"store needs ids and weights of shape [num_seq, seq_len, {self.num_samples}], got "
                f"{tuple(self.ids.shape)} and {tuple(self.weights.shape)}"
            )
        used = self.weights > 0  # [S, T, k]
        counts = used.sum(dim=-1, dtype=torch.int32)  # [S, T]
        prefix = torch.arange(self.num_samples) < counts.unsqueeze(-1)
        if not torch.equal(used, prefix) or bool(self.ids[~used].any()) or bool((counts == 0).any()):
            raise StoreError("every token needs >= 1 positive weight, padding last with id 0 and weight 0")
        if int(self.ids.min()) < 0 or int(self.ids.max()) >= self.vocab_size:
            raise StoreError(f"store ids must lie in [0, {self.vocab_size})")
        object.__setattr__(self, "counts", counts)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        teacher: Union[nn.Module, torch.Tensor],
        data: torch.Tensor,
        num_samples: int = 256,
        generator: Optional[torch.Generator] = None,
        batch_size: int = 8,
    ) -> "TeacherStore":
        """Keep `num_samples` draws per token of data [num_seq, seq_len] from the teacher.

        teacher: a model, run once over the data batch by batch, or its cached logits
        [num_seq, seq_len, vocab] (see `cache_teacher_logits`).
        """
        _check_data(data)
        if isinstance(teacher, torch.Tensor):
            _check_cached_logits(teacher, data)
        ids, weights = [], []
        for start in range(0, data.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            logits = teacher[rows] if isinstance(teacher, torch.Tensor) else teacher(data[rows])  # [b, T, V]
            i, w = sample_teacher_targets(logits, num_samples, generator)
            ids.append(i.to(torch.int32))
            weights.append(w.to(torch.float16))
        return cls(torch.cat(ids), torch.cat(weights), logits.shape[-1], num_samples, tokens_sha256(data))

    @property
    def num_tokens(self) -> int:
        return self.counts.numel()

    @property
    def payload_bytes(self) -> int:
        """Bytes of tensor data saved: a count per token plus an int32 id and a float16 weight per distinct id."""
        return self.counts.numel() * 4 + int(self.counts.sum()) * (4 + 2)

    def targets(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [b, T, k] int64 and weights [b, T, k] float32 for the data rows `rows` [b]."""
        return self.ids[rows].long(), self.weights[rows].float()

    def save(self, path: Union[str, Path]) -> None:
        """Write the used slots only, with a header that `load` checks."""
        used = self.weights > 0
        tensors = {"ids": self.ids[used], "weights": self.weights[used], "counts": self.counts.flatten()}
        metadata = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "vocab_size": str(self.vocab_size),
            "num_samples": str(self.num_samples),
            "shape": json.dumps(list(self.counts.shape)),
            "data_sha256": self.data_sha256,
            "content_sha256": _content_sha256(tensors),
        }
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "TeacherStore":
        """Read a store written by `save`; a truncated, corrupt or foreign file raises StoreError."""
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError) as e:
            raise StoreError(f"{path} is not a readable teacher store: {e}") from e
        if metadata.get("format") != STORE_FORMAT or metadata.get("version") != STORE_VERSION:
            raise StoreError(f"{path} is not a {STORE_FORMAT} version {STORE_VERSION} file")
        if sorted(tensors) != ["counts", "ids", "weights"]:
            raise StoreError(f"{path} holds tensors {sorted(tensors)}, expected counts, ids, weights")
        if _content_sha256(tensors) != metadata.get("content_sha256"):
            raise StoreError(f"{path} is corrupt: its content does not match the sha256 in its header")
        try:
            vocab_size, num_samples = int(metadata["vocab_size"]), int(metadata["num_samples"])
            num_seq, seq_len = json.loads(metadata["shape"])
            data_sha256 = metadata["data_sha256"]
            if vocab_size < 1 or num_samples < 1 or num_seq < 1 or seq_len < 1:
                raise ValueError("vocab_size, num_samples and shape must be positive")
        except (KeyError, ValueError, TypeError) as e:
            raise StoreError(f"{path} has a malformed header: {e}") from e
        counts, flat_ids, flat_weights = tensors["counts"], tensors["ids"], tensors["weights"]
        if (
            counts.dtype != torch.int32
            or counts.numel() != num_seq * seq_len
            or bool(((counts < 1) | (counts > num_samples)).any())
            or int(counts.sum()) != flat_ids.numel()
            or flat_ids.shape != flat_weights.shape
        ):
            raise StoreError(f"{path}: counts, ids and weights do not fit the header's shape and num_samples")
        used = torch.arange(num_samples) < counts.reshape(num_seq, seq_len, 1)  # [S, T, k]
        ids = torch.zeros(num_seq, seq_len, num_samples, dtype=flat_ids.dtype)
        weights = torch.zeros(num_seq, seq_len, num_samples, dtype=flat_weights.dtype)
        ids[used], weights[used] = flat_ids, flat_weights
        return cls(ids, weights, vocab_size, num_samples, data_sha256)


def full_distribution_bytes(vocab_size: int, bytes_per_value: int = 2) -> int:
    """Bytes per token of a dense teacher distribution (float16 by default)."""
    return vocab_size * bytes_per_value


@dataclass
class DistillHistory:
    """What `distill` records: the training loss per step and, optionally, held-out cross-entropy."""

    loss: list[float] = field(default_factory=list)  # training loss after each step's forward
    eval_steps: list[int] = field(default_factory=list)  # optimizer steps done at each evaluation
    eval_loss: list[float] = field(default_factory=list)  # next-token cross-entropy on eval_data


def next_token_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy: logits at position t against the token at t + 1. tokens: [b, T]."""
    logits = model(tokens)  # [b, T, V]
    labels = F.pad(tokens[:, 1:], (0, 1), value=-100)  # [b, T]; the last position has no next token
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


Teacher = Union[nn.Module, torch.Tensor, TeacherStore, None]


def _step_loss(
    student: nn.Module,
    teacher_or_store: Teacher,
    data: torch.Tensor,
    rows: torch.Tensor,
    num_samples: Optional[int],
    generator: torch.Generator,
) -> torch.Tensor:
    tokens = data[rows]  # [b, T]
    if teacher_or_store is None:
        return next_token_loss(student, tokens)
    logits = student(tokens)  # [b, T, V]
    if isinstance(teacher_or_store, TeacherStore):
        if teacher_or_store.vocab_size != logits.shape[-1]:
            raise ValueError(
                f"vocabulary mismatch: student has {logits.shape[-1]} logits per token, "
                f"the store's teacher {teacher_or_store.vocab_size}"
            )
        return sparse_cross_entropy(logits, *teacher_or_store.targets(rows))
    if isinstance(teacher_or_store, torch.Tensor):
        target_logits = teacher_or_store[rows]  # [b, T, V] cached
    else:
        with torch.no_grad():
            target_logits = teacher_or_store(tokens)  # [b, T, V]
    if num_samples is None:
        return full_distillation_loss(logits, target_logits)
    return sampled_distillation_loss(logits, target_logits, num_samples, generator)


def distill(
    student: nn.Module,
    teacher_or_store: Teacher,
    data: torch.Tensor,
    steps: int,
    *,
    batch_size: int = 4,
    lr: float = 1e-3,
    num_samples: Optional[int] = 256,
    seed: int = 0,
    eval_data: Optional[torch.Tensor] = None,
    eval_every: int = 10,
    progress: bool = True,
) -> DistillHistory:
    """Train `student` for `steps` AdamW steps on data [num_seq, seq_len]; return the losses.

    teacher_or_store picks the target:
    - None: hard labels (next-token cross-entropy on data), the baseline;
    - a model (input_ids [b, T] -> logits [b, T, V]), run on each batch, or its cached logits
      [num_seq, seq_len, V] (`cache_teacher_logits`): full-vocabulary distillation if num_samples is
      None, else `num_samples` draws per token;
    - a `TeacherStore` built on this data: the cached draws, no teacher needed.
    Step s trains on rows s*batch_size ... (s+1)*batch_size - 1 (mod num_seq), so runs with the
    same data see the same batches. seed drives the teacher sampling. With eval_data, the held-out
    next-token cross-entropy is recorded before the first step, every eval_every steps and at the end.
    progress=False hides the tqdm bar (notebooks that nbval compares).
    """
    _check_data(data)
    if isinstance(teacher_or_store, torch.Tensor):
        _check_cached_logits(teacher_or_store, data)
    if isinstance(teacher_or_store, TeacherStore) and teacher_or_store.data_sha256 != tokens_sha256(data):
        raise ValueError("the teacher store was built on other data (its data_sha256 does not match)")
    if num_samples is not None:
        _check_num_samples(num_samples)
    if eval_data is not None and eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    generator = torch.Generator().manual_seed(seed)
    # fused: one pass over the parameters, about 10x faster on CPU for a 262,144-row embedding
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0, fused=True)
    history = DistillHistory()

    def evaluate(step: int) -> None:
        student.eval()
        with torch.no_grad():
            history.eval_loss.append(next_token_loss(student, eval_data).item())
        history.eval_steps.append(step)
        student.train()

    student.train()
    bar = tqdm(range(steps), disable=not progress, desc="distill")
    for step in bar:
        if eval_data is not None and step % eval_every == 0:
            evaluate(step)
        rows = (torch.arange(batch_size) + step * batch_size) % data.shape[0]
        loss = _step_loss(student, teacher_or_store, data, rows, num_samples, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.loss.append(loss.item())
        bar.set_postfix(loss=f"{history.loss[-1]:.3f}")
    if eval_data is not None:
        evaluate(steps)
    student.eval()
    return history
