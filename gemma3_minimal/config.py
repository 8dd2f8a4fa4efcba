"""Gemma 3 configurations as data: one frozen dataclass, one small override per size.

`layer_types` is the 5 local : 1 global pattern, starting with a local layer.

Where the numbers come from:
- The Gemma 3 Technical Report (arXiv 2503.19786) states the 5:1 local/global pattern starting
  with a local layer, RoPE bases of 10k (local) and 1M (global), 128K context for 4B-27B and 32K
  for 1B (section 2); a 1,024-token local span (section 1); the x8 RoPE rescaling of the 128K
  models (section 5.3, "Enabling long context"); the 896x896 SigLIP encoder (section 2.1) and 256
  image tokens (section 1; the 4x4 average pooling, section 5.5); a 262k vocabulary (section 2.2).
- Everything else is from the published configs (`config.json` of each checkpoint): widths,
  depths, head counts, head_dim, query_pre_attn_scalar, and the 512-token window of the 270M and
  1B (the report only gives 1,024). The 270M was released after the report and is not in it.
- vocab_size 262,144 is the tokenizer's; the official 4B-27B checkpoints carry 262,208 embedding
  rows (padding), so their parameter counts differ slightly from this library's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

LOCAL = "sliding_attention"
GLOBAL = "full_attention"


def _check_positive_ints(obj, fields: tuple[str, ...]) -> None:
    for f in fields:
        value = getattr(obj, f)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{f} must be a positive int, got {value!r}")


def _check_positive_numbers(obj, fields: tuple[str, ...]) -> None:
    for f in fields:
        value = getattr(obj, f)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{f} must be a finite number > 0, got {value!r}")


def _check_token_id(name: str, value, vocab_size: Optional[int] = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (vocab_size is not None and value >= vocab_size):
        limit = "" if vocab_size is None else f" below vocab_size {vocab_size}"
        raise ValueError(f"{name} must be an int token id >= 0{limit}, got {value!r}")


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP vision tower (So400m) and the multimodal projector."""

    hidden_size: int = 1152  # width of the ViT
    num_hidden_layers: int = 27  # depth
    num_attention_heads: int = 16
    intermediate_size: int = 4304  # MLP width (GELU-tanh)
    image_size: int = 896  # input resolution, square
    patch_size: int = 14  # 896 / 14 = 64 patches per side, 4096 patches
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    mm_tokens_per_image: int = 256  # 64x64 grid average-pooled 4x4 -> 16x16 = 256 vectors

    def __post_init__(self) -> None:
        _check_positive_ints(self, ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                    "image_size", "patch_size", "num_channels", "mm_tokens_per_image"))
        _check_positive_numbers(self, ("layer_norm_eps",))
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        side = int(round(self.mm_tokens_per_image**0.5))
        if side * side != self.mm_tokens_per_image or self.patches_per_side % side:
            raise ValueError(
                f"mm_tokens_per_image {self.mm_tokens_per_image} must be a square whose side divides "
                f"the patch grid side {self.patches_per_side}"
            )

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.patches_per_side**2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class Gemma3Config:
    """Gemma 3 decoder (and, when `vision` is set, the multimodal model around it)."""

    vocab_size: int = 262_144  # the SentencePiece vocabulary, same for every size
    hidden_size: int = 640  # model width d
    intermediate_size: int = 2048  # GeGLU hidden width
    num_hidden_layers: int = 18
    num_attention_heads: int = 4  # query heads
    num_key_value_heads: int = 1  # grouped-query attention: heads share K/V
    head_dim: int = 256
    query_pre_attn_scalar: float = 256  # attention scores are scaled by query_pre_attn_scalar ** -0.5
    sliding_window: int = 512  # a local layer sees this many positions, itself included (270M/1B configs)
    sliding_window_pattern: int = 6  # every 6th layer is global: 5 local : 1 global
    rope_local_base_freq: float = 10_000.0  # RoPE base on local layers
    rope_theta: float = 1_000_000.0  # RoPE base on global layers
    rope_scaling_factor: float = 1.0  # linear positional interpolation on global layers (8 for 128K models, report 5.3)
    max_position_embeddings: int = 32_768  # context length
    rms_norm_eps: float = 1e-6
    pad_token_id: int = 0
    eos_token_id: int = 1
    stop_token_ids: tuple[int, ...] = (1, 106)  # generation stops at <eos> or <end_of_turn> (generation_config.json)
    bos_token_id: int = 2
    image_token_id: int = 262_144  # <image_soft_token>: replaced by image features, never looked up
    vision: Optional[VisionConfig] = None  # None: text only
    name: str = "custom"

    def __post_init__(self) -> None:
        _check_positive_ints(self, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                    "num_attention_heads", "num_key_value_heads", "head_dim", "sliding_window",
                                    "sliding_window_pattern", "max_position_embeddings"))
        # RoPE bases, the attention scale and the norm epsilon: NaN, zero or negative would give NaN logits.
        _check_positive_numbers(self, ("query_pre_attn_scalar", "rope_local_base_freq", "rope_theta",
                                       "rope_scaling_factor", "rms_norm_eps"))
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (RoPE rotates pairs of dimensions), got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.rope_scaling_factor < 1.0:
            raise ValueError(f"rope_scaling_factor must be >= 1, got {self.rope_scaling_factor}")
        for f in ("pad_token_id", "eos_token_id", "bos_token_id"):
            _check_token_id(f, getattr(self, f), self.vocab_size)
        _check_token_id("image_token_id", self.image_token_id)
        if not isinstance(self.stop_token_ids, tuple) or not self.stop_token_ids:
            raise ValueError(f"stop_token_ids must be a non-empty tuple of token ids, got {self.stop_token_ids!r}")
        for i in self.stop_token_ids:
            _check_token_id("stop_token_ids", i)
        if self.vision is not None and not isinstance(self.vision, VisionConfig):
            raise ValueError(f"vision must be a VisionConfig or None, got {type(self.vision).__name__}")
        if not isinstance(self.name, str):
            raise ValueError(f"name must be a str, got {self.name!r}")

    @property
    def layer_types(self) -> list[str]:
        """`sliding_attention` or `full_attention` per layer: every `sliding_window_pattern`-th is global."""
        p = self.sliding_window_pattern
        return [GLOBAL if (i + 1) % p == 0 else LOCAL for i in range(self.num_hidden_layers)]

    @property
    def num_local_layers(self) -> int:
        return self.layer_types.count(LOCAL)

    @property
    def num_global_layers(self) -> int:
        return self.layer_types.count(GLOBAL)

    def replace(self, **changes) -> "Gemma3Config":
        """A copy with some fields changed (the dataclass is frozen)."""
        return replace(self, **changes)


# A small SigLIP for fast tests: 64 px, patch 4 -> 16x16 = 256 patches, pooled 4x4 -> 16 tokens,
# the same 4x4 pooling kernel as the real tower (64x64 -> 16x16).
TINY_VISION = VisionConfig(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    image_size=64, patch_size=4, mm_tokens_per_image=16,
)


_128K = dict(rope_scaling_factor=8.0, max_position_embeddings=131_072)

PRESETS: dict[str, Gemma3Config] = {
    # A few-layer model for fast tests: layers 0-4 local, layer 5 global, 6-7 local; window 8.
    "tiny": Gemma3Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=8, max_position_embeddings=4096, name="tiny",
    ),
    "270m": Gemma3Config(name="270m"),
    "1b": Gemma3Config(
        hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
        num_key_value_heads=1, name="1b",
    ),
    "4b": Gemma3Config(
        hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
        num_key_value_heads=4, sliding_window=1024, vision=VisionConfig(), name="4b", **_128K,
    ),
    "12b": Gemma3Config(
        hidden_size=3840, intermediate_size=15360, num_hidden_layers=48, num_attention_heads=16,
        num_key_value_heads=8, sliding_window=1024, vision=VisionConfig(), name="12b", **_128K,
    ),
    "27b": Gemma3Config(
        hidden_size=5376, intermediate_size=21504, num_hidden_layers=62, num_attention_heads=32,
        num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=5376 // 32, sliding_window=1024,
        vision=VisionConfig(), name="27b", **_128K,
    ),
}


def get_config(name: str) -> Gemma3Config:
    """The preset called `name` ("tiny", "270m", "1b", "4b", "12b", "27b")."""
    if not isinstance(name, str) or name.lower() not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name.lower()]
