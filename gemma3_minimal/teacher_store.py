"""The teacher store: sampled distillation targets for a whole data set, computed once and saved.

Gemma 3's students learn from 256 teacher draws per token (`gemma3_minimal.distill`, report
section 2.2). Running the teacher at every training step, or caching its full distributions
(262,144 float16 values, 512 KiB per token), is what sampling avoids: the store keeps, per token,
the distinct drawn ids and their target weights, a few hundred bytes.

On disk (safetensors): `counts` [num_seq * seq_len] int32 (distinct ids per token), `ids` and
`weights` (int32 and float32, the used slots only, token after token), and a header with the
format, version, target ("renormalized" or "counts"), vocabulary size, draws, shape, a hash of the
data and one sha256 over the other header fields and every tensor byte. `load` checks that sha256,
so an edited header or a flipped byte fails with `StoreError`, and it sizes everything from the
tensors actually in the file, never from a header number alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .distill import (
    check_cached_logits,
    check_data,
    check_num_samples,
    check_target,
    sample_teacher_targets,
    tokens_sha256,
)

STORE_FORMAT = "gemma3_minimal.teacher_store"
STORE_VERSION = "2"  # 2: records the target; the sha256 covers the header. 1 (count targets only) is refused.
HEADER_FIELDS = ("format", "version", "target", "vocab_size", "num_samples", "shape", "data_sha256")
TENSOR_NAMES = ["counts", "ids", "weights"]


def store_sha256(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a store: every header field but the sha256 itself, then each tensor's name, shape, dtype and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "content_sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name} {list(t.shape)} {t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def cache_teacher_logits(
    teacher: nn.Module, data: torch.Tensor, batch_size: int = 8, dtype: torch.dtype = torch.float16
) -> torch.Tensor:
    """The teacher's logits for every token of data [num_seq, seq_len], computed once, batch by batch.

    Returns [num_seq, seq_len, vocab] in `dtype`: the dense cache that full-vocabulary distillation
    needs, vocab x 2 bytes per token in float16 (what `TeacherStore` avoids).
    """
    check_data(data)
    return torch.cat([teacher(data[s : s + batch_size]).to(dtype) for s in range(0, data.shape[0], batch_size)])


def full_distribution_bytes(vocab_size: int, bytes_per_value: int = 2) -> int:
    """Bytes per token of a dense teacher distribution (float16 by default)."""
    return vocab_size * bytes_per_value


class StoreError(ValueError):
    """A teacher store that is truncated, corrupt, malformed or not laid out as `TeacherStore` expects."""


@dataclass(frozen=True)
class TeacherStore:
    """Sampled teacher targets for every token of a data set, in the compact form that is saved.

    ids: [num_seq, seq_len, width] int32 and weights: same shape, float32, as
    `sample_teacher_targets` lays them out (distinct ids, then padding with id 0, weight 0), cut to
    width = the most distinct ids of any token (<= num_samples). target says how the weights were
    made ("renormalized": the report's reading; "counts": times drawn / num_samples).
    On disk only the used slots are kept: per token 4 bytes (count) + 8 bytes per distinct id,
    against 262,144 x 2 bytes for a full float16 distribution.
    """

    ids: torch.Tensor
    weights: torch.Tensor
    vocab_size: int
    num_samples: int
    data_sha256: str  # `tokens_sha256` of the token ids the targets were computed on
    target: str = "renormalized"
    counts: torch.Tensor = field(init=False, repr=False)  # [num_seq, seq_len] int32 distinct ids per token

    def __post_init__(self) -> None:
        check_num_samples(self.num_samples)
        check_target(self.target)
        if self.ids.dtype != torch.int32 or self.weights.dtype != torch.float32:
            raise StoreError(f"store needs int32 ids and float32 weights, got {self.ids.dtype} and {self.weights.dtype}")
        if self.ids.dim() != 3 or self.ids.shape != self.weights.shape or not 1 <= self.ids.shape[-1] <= self.num_samples:
            raise StoreError(
                f"store needs ids and weights of shape [num_seq, seq_len, width <= {self.num_samples}], got "
                f"{tuple(self.ids.shape)} and {tuple(self.weights.shape)}"
            )
        if not bool(torch.isfinite(self.weights).all()) or bool((self.weights < 0).any()):
            raise StoreError("store weights must be finite and >= 0")
        used = self.weights > 0  # [S, T, w]
        counts = used.sum(dim=-1, dtype=torch.int32)  # [S, T]
        prefix = torch.arange(self.ids.shape[-1]) < counts.unsqueeze(-1)
        if not torch.equal(used, prefix) or bool(self.ids[~used].any()) or bool((counts == 0).any()):
            raise StoreError("every token needs >= 1 positive weight, padding last with id 0 and weight 0")
        if int(self.ids.min()) < 0 or int(self.ids.max()) >= self.vocab_size:
            raise StoreError(f"store ids must lie in [0, {self.vocab_size})")
        if not torch.allclose(self.weights.double().sum(-1), torch.ones(counts.shape, dtype=torch.float64), atol=1e-4):
            raise StoreError("store weights must sum to 1 per token")
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
        target: str = "renormalized",
    ) -> "TeacherStore":
        """Keep `num_samples` draws per token of data [num_seq, seq_len] from the teacher.

        teacher: a model, run once over the data batch by batch, or its cached logits
        [num_seq, seq_len, vocab] (see `cache_teacher_logits`). target: as in `sample_teacher_targets`.
        """
        check_data(data)
        check_num_samples(num_samples)
        check_target(target)
        if isinstance(teacher, torch.Tensor):
            check_cached_logits(teacher, data)
        ids, weights = [], []
        for start in range(0, data.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            logits = teacher[rows] if isinstance(teacher, torch.Tensor) else teacher(data[rows])  # [b, T, V]
            i, w = sample_teacher_targets(logits, num_samples, generator, target)
            ids.append(i.to(torch.int32))
            weights.append(w.float())
        ids, weights = torch.cat(ids), torch.cat(weights)  # [S, T, num_samples]
        width = int((weights > 0).sum(-1).max())  # the padding beyond every token's last id is dropped
        return cls(ids[..., :width].contiguous(), weights[..., :width].contiguous(), logits.shape[-1],
                   num_samples, tokens_sha256(data), target)

    @property
    def num_tokens(self) -> int:
        return self.counts.numel()

    @property
    def payload_bytes(self) -> int:
        """Bytes of tensor data saved: a count per token plus an int32 id and a float32 weight per distinct id."""
        return self.counts.numel() * 4 + int(self.counts.sum()) * (4 + 4)

    def targets(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [b, T, width] int64 and weights [b, T, width] float32 for the data rows `rows` [b]."""
        return self.ids[rows].long(), self.weights[rows]

    def save(self, path: Union[str, Path]) -> None:
        """Write the used slots only, with a header that `load` checks (the sha256 covers it too)."""
        used = self.weights > 0
        tensors = {"ids": self.ids[used], "weights": self.weights[used], "counts": self.counts.flatten()}
        header = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "target": self.target,
            "vocab_size": str(self.vocab_size),
            "num_samples": str(self.num_samples),
            "shape": json.dumps(list(self.counts.shape)),
            "data_sha256": self.data_sha256,
        }
        save_file(tensors, str(path), metadata={**header, "content_sha256": store_sha256(header, tensors)})

    @classmethod
    def load(cls, path: Union[str, Path]) -> "TeacherStore":
        """Read a store written by `save`; a truncated, corrupt, edited or foreign file raises StoreError."""
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError) as e:
            raise StoreError(f"{path} is not a readable teacher store: {e}") from e
        if metadata.get("format") != STORE_FORMAT:
            raise StoreError(f"{path} is not a {STORE_FORMAT} file")
        if metadata.get("version") == "1":
            raise StoreError(
                f"{path} is a version 1 teacher store (count-based targets, a header outside its checksum), "
                f"which this version does not read: rebuild it with TeacherStore.build(teacher, data, "
                f"target='counts') and save it again"
            )
        if metadata.get("version") != STORE_VERSION:
            raise StoreError(f"{path} has version {metadata.get('version')!r}; this library reads version {STORE_VERSION}")
        if sorted(tensors) != TENSOR_NAMES:
            raise StoreError(f"{path} holds tensors {sorted(tensors)}, expected {', '.join(TENSOR_NAMES)}")
        extra = sorted(set(metadata) - set(HEADER_FIELDS) - {"content_sha256"})
        if extra:
            raise StoreError(f"{path} has unexpected header fields {extra}")
        if store_sha256(metadata, tensors) != metadata.get("content_sha256"):
            raise StoreError(f"{path} is corrupt: its header or content does not match the sha256 in its header")
        try:
            target = metadata["target"]
            check_target(target)
            vocab_size, num_samples = int(metadata["vocab_size"]), int(metadata["num_samples"])
            num_seq, seq_len = json.loads(metadata["shape"])
            data_sha256 = metadata["data_sha256"]
            if not all(isinstance(n, int) and n >= 1 for n in (vocab_size, num_samples, num_seq, seq_len)):
                raise ValueError("vocab_size, num_samples and shape must be positive integers")
        except (KeyError, ValueError, TypeError) as e:
            raise StoreError(f"{path} has a malformed header: {e}") from e
        counts, flat_ids, flat_weights = tensors["counts"], tensors["ids"], tensors["weights"]
        # every size below comes from the tensors in the file: a header number only has to agree with them
        if (
            counts.dtype != torch.int32
            or flat_ids.dtype != torch.int32
            or flat_weights.dtype != torch.float32
            or counts.dim() != 1
            or counts.numel() != num_seq * seq_len
            or bool(((counts < 1) | (counts > num_samples)).any())
            or flat_ids.dim() != 1
            or int(counts.sum()) != flat_ids.numel()
            or flat_ids.shape != flat_weights.shape
        ):
            raise StoreError(f"{path}: counts, ids and weights do not fit the header's shape and num_samples")
        width = int(counts.max())  # <= flat_ids.numel(): bounded by the file's length
        used = torch.arange(width) < counts.reshape(num_seq, seq_len, 1)  # [S, T, width]
        ids = torch.zeros(num_seq, seq_len, width, dtype=torch.int32)
        weights = torch.zeros(num_seq, seq_len, width, dtype=torch.float32)
        ids[used], weights[used] = flat_ids, flat_weights
        return cls(ids, weights, vocab_size, num_samples, data_sha256, target)
