"""Exact parameter counts, weight bytes and KV-cache bytes for every preset, analytic.

Nothing is built: every number is arithmetic on the config, so the 27B costs nothing to count.
Tests check the counts against the models built on the meta device and the KV bytes against
the bytes a real `KVCache` allocates.

    count_parameters(get_config("270m"))      -> 268_098_176
    kv_cache_bytes(get_config("270m"), 8192)  -> 33_030_144
        (3 global layers x 8192 + 15 local x 512 = 32,256 slots, x 2 (K, V) x 1 head x 256 x 2 bytes)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from .config import GLOBAL, Gemma3Config, VisionConfig, get_config

ConfigLike = Union[Gemma3Config, str]

# Bits stored per weight. "int4" ignores its per-channel scales (one per matrix row: < 0.1%);
# "int4_blocks32" adds one bfloat16 scale per block of 32 weights (4 + 16/32 bits); "sfp8" is
# the report's switched fp8, one byte per weight (Gemma 3 report, section 2.3 and Table 3).
# The report names the formats but not their scale layouts or dtypes: those are assumptions here.
WEIGHT_FORMAT_BITS: dict[str, float] = {"bf16": 16.0, "int4": 4.0, "int4_blocks32": 4.5, "sfp8": 8.0}

# Embedding rows of the published checkpoints. The presets use the tokenizer's 262,144 pieces; the
# official 4B, 12B and 27B checkpoints carry 262,208 rows (262,144 padded to a multiple of 64, as in
# transformers' Gemma3TextConfig default), the 270M and 1B 262,144. The 64 extra rows change the
# counts by 64 x hidden parameters (0.004% of the 4B), nothing else.
CHECKPOINT_EMBEDDING_ROWS: dict[str, int] = {"270m": 262_144, "1b": 262_144, "4b": 262_208, "12b": 262_208,
                                             "27b": 262_208}


def _as_config(cfg: ConfigLike) -> Gemma3Config:
    """A config, or the preset of that name (unknown names raise ValueError listing the presets)."""
    if isinstance(cfg, str):
        return get_config(cfg)
    if not isinstance(cfg, Gemma3Config):
        raise TypeError(f"expected a Gemma3Config or a preset name, got {type(cfg).__name__}")
    return cfg


def decoder_layer_parameters(cfg: Gemma3Config) -> int:
    """One decoder block: q/k/v/o (no bias), q/k RMSNorm, GeGLU MLP, four RMSNorms."""
    d, hd = cfg.hidden_size, cfg.head_dim
    attention = d * cfg.num_attention_heads * hd * 2 + d * cfg.num_key_value_heads * hd * 2  # q,o + k,v
    qk_norm = 2 * hd
    mlp = 3 * d * cfg.intermediate_size  # gate, up, down
    norms = 4 * d  # input, post-attention, pre-feedforward, post-feedforward
    return attention + qk_norm + mlp + norms


def vision_tower_parameters(vision: VisionConfig) -> int:
    """SigLIP: patch conv (with bias), position table, encoder blocks (all with bias), post LayerNorm."""
    w, mlp = vision.hidden_size, vision.intermediate_size
    patch = vision.num_channels * vision.patch_size**2 * w + w
    positions = vision.num_patches * w
    block = 2 * (2 * w) + 4 * (w * w + w) + (w * mlp + mlp) + (mlp * w + w)  # 2 LayerNorms, q/k/v/o, fc1, fc2
    return patch + positions + vision.num_hidden_layers * block + 2 * w


def projector_parameters(vision: VisionConfig, text_hidden: int) -> int:
    """RMSNorm(vision width) and the bias-free projection to the text width."""
    return vision.hidden_size + vision.hidden_size * text_hidden


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters by part, as the report's Table 1 splits them (vision = tower + projector)."""

    embedding: int  # vocab x hidden, tied with the output head
    non_embedding: int  # decoder blocks and the final norm
    vision_tower: int
    projector: int

    @property
    def text(self) -> int:
        return self.embedding + self.non_embedding

    @property
    def vision(self) -> int:
        return self.vision_tower + self.projector

    @property
    def total(self) -> int:
        return self.text + self.vision


def parameter_breakdown(cfg: ConfigLike) -> ParameterCounts:
    """Exact parameter counts by part; vision parts are 0 for text-only configs."""
    cfg = _as_config(cfg)
    embedding = cfg.vocab_size * cfg.hidden_size
    non_embedding = cfg.num_hidden_layers * decoder_layer_parameters(cfg) + cfg.hidden_size  # + final norm
    if cfg.vision is None:
        return ParameterCounts(embedding, non_embedding, 0, 0)
    return ParameterCounts(
        embedding, non_embedding, vision_tower_parameters(cfg.vision),
        projector_parameters(cfg.vision, cfg.hidden_size),
    )


def count_parameters(cfg: ConfigLike) -> int:
    """Exact number of parameters, vision tower and projector included when `cfg.vision` is set.

    count_parameters("1b") -> 999_885_952
    """
    return parameter_breakdown(cfg).total


def weight_bytes(cfg: ConfigLike, weight_format: str = "bf16") -> int:
    """Bytes to store every parameter in `weight_format` (see WEIGHT_FORMAT_BITS), rounded up."""
    if weight_format not in WEIGHT_FORMAT_BITS:
        raise ValueError(f"unknown weight format {weight_format!r}; choose one of {', '.join(WEIGHT_FORMAT_BITS)}")
    return math.ceil(count_parameters(cfg) * WEIGHT_FORMAT_BITS[weight_format] / 8)


def checkpoint_config(name: str) -> Gemma3Config:
    """The preset `name` with the embedding rows of its published checkpoint (CHECKPOINT_EMBEDDING_ROWS).

    count_parameters(checkpoint_config("27b")) -> 27_432_406_640 (the preset: 27_432_062_576)
    """
    cfg = _as_config(name)
    if cfg.name not in CHECKPOINT_EMBEDDING_ROWS:
        raise ValueError(f"no published checkpoint for {cfg.name!r}; choose one of {', '.join(CHECKPOINT_EMBEDDING_ROWS)}")
    return cfg.replace(vocab_size=CHECKPOINT_EMBEDDING_ROWS[cfg.name])


def _check_context_len(cfg: Gemma3Config, context_len: int) -> None:
    if not isinstance(context_len, int) or context_len <= 0:
        raise ValueError(f"context_len must be a positive int, got {context_len!r}")
    if context_len > cfg.max_position_embeddings:
        raise ValueError(
            f"context_len {context_len} exceeds the context of {cfg.name} ({cfg.max_position_embeddings} positions)"
        )


def kv_cache_slots(cfg: ConfigLike, context_len: int, sliding: bool = True) -> list[int]:
    """Positions each layer's cache holds: global layers `context_len`, local `min(window, context_len)`.

    sliding=False gives every layer a full cache, as a model with global attention only would need.
    """
    cfg = _as_config(cfg)
    _check_context_len(cfg, context_len)
    local = min(cfg.sliding_window, context_len)
    return [context_len if (t == GLOBAL or not sliding) else local for t in cfg.layer_types]


def kv_cache_bytes(
    cfg: ConfigLike,
    context_len: int,
    bytes_per_value: float = 2,
    sliding: bool = True,
    batch_size: int = 1,
    sliding_window: int | None = None,
) -> int:
    """Bytes of keys and values for `context_len` tokens: sum over layers of 2 x slots x kv_heads x head_dim.

    Args:
        cfg: a config or a preset name.
        context_len: tokens in the context (prompt + generated).
        bytes_per_value: 2 for bfloat16, 4 for float32, 1 for 8-bit caches.
        sliding: False gives every layer a full cache (global attention only).
        batch_size: sequences held at once.
        sliding_window: overrides `cfg.sliding_window`; it must not exceed `context_len`, since a
            window past the context changes nothing and is most likely a mistaken argument.
    """
    cfg = _as_config(cfg)
    if sliding_window is not None:
        _check_context_len(cfg, context_len)
        if sliding_window > context_len:
            raise ValueError(f"sliding_window {sliding_window} is larger than context_len {context_len}")
        cfg = cfg.replace(sliding_window=sliding_window)
    if bytes_per_value <= 0:
        raise ValueError(f"bytes_per_value must be positive, got {bytes_per_value!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    values_per_slot = 2 * cfg.num_key_value_heads * cfg.head_dim  # K and V
    total_slots = sum(kv_cache_slots(cfg, context_len, sliding))
    return math.ceil(batch_size * total_slots * values_per_slot * bytes_per_value)


def inference_bytes(
    cfg: ConfigLike,
    context_len: int,
    weight_format: str = "bf16",
    kv_bytes_per_value: float = 2,
    sliding: bool = True,
    batch_size: int = 1,
) -> int:
    """Weights in `weight_format` plus the KV cache of `batch_size` sequences of `context_len` tokens.

    Activations, workspace and the runtime's own memory are not counted: a lower bound of what
    inference needs. `sliding=False` gives the cache of a model with global attention only.
    """
    return weight_bytes(cfg, weight_format) + kv_cache_bytes(
        cfg, context_len, kv_bytes_per_value, sliding=sliding, batch_size=batch_size
    )
