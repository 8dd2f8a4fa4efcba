"""An 8-bit KV cache (performance layer): int8 keys and values, one scale per 32 numbers of a (token, head).

The report's Table 3 (section 2.3) counts the KV cache at 32K tokens in 8 bits. Here each key
(and each value) vector of one head at one position is cut into groups of GROUP = 32 numbers, each
stored as

    s = max|x| / 127,   q = round(x / s) in [-127, 127]   (int8),   x ~ q * s

with s in bfloat16: 32 + 2 bytes instead of 128, 1/4 of a float32 cache plus 1/64 (0.266 in all).
Every value is off by at most s / 2. Attention reads the cache back as float: the new keys and
values are rounded too, so a step sees exactly what a later step will read.

Why groups and not one scale per (token, head): Gemma 3's keys have a few large channels (the
k_norm gains, then RoPE), so one scale over all 256 numbers of a key leaves the others few levels.
On the real 270M over 640 tokens (past its 512-token window), one scale per (token, head) agreed
with the float cache on 95.6% of next tokens (KL 4.4e-3, nearly all of it from the keys), groups
of 32 on 98.0% (KL 4.2e-4); over 1,024 tokens groups of 32 agree on 97.7% (KL 1.0e-3)
(benchmarks/RESULTS.md, "8-bit KV cache").

    model, tok = g3.load_pretrained("270m")
    quantize_kv_cache(model)                         # from now on model.new_cache(...) is 8-bit
    g3.generate(model, tok, "...", compile=True)     # the compiled step uses an 8-bit static cache

The layout (full buffers on global layers, rings on local ones) is `kv_cache.KVCache`'s; only
what a slot holds changes. Weight quantization (`quantize.py`) and this cache combine.
"""

from __future__ import annotations

import types
from typing import Optional

import torch

from .compiled import StaticKVCache
from .kv_cache import KVCache, LayerCache
from .model import Gemma3Base

QMAX = 127
GROUP = 32  # numbers of one key (or value) vector that share a scale
SCALE_DTYPE = torch.bfloat16


def quantize_vectors(x: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> int8 [..., D] and bfloat16 scales [..., D / group]: one scale per `group` numbers."""
    g = x.detach().float().unflatten(-1, (-1, group))  # [..., D / group, group]
    scale = (g.abs().amax(-1) / QMAX).to(SCALE_DTYPE)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale)).float()  # an all-zero group stays zero
    q = torch.round(g / safe[..., None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.flatten(-2), scale


def dequantize_vectors(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float keys or values [..., D] from int8 [..., D] and scales [..., D / group]."""
    return (q.unflatten(-1, (scale.shape[-1], -1)).float() * scale.float()[..., None]).flatten(-2).to(dtype)


class QuantizedLayerCache(LayerCache):
    """A LayerCache whose `k` and `v` hold int8 and `k_scale`, `v_scale` [B, K, slots, D / group] their
    scales (group: GROUP, or D when D is smaller, as in the tiny test config).

    `update` has LayerCache's contract: it returns float keys and values (of `dtype`, the model's).
    """

    def __init__(self, batch_size: int, kv_heads: int, slots: int, head_dim: int, ring: bool,
                 dtype: torch.dtype, device):
        self.group = min(GROUP, head_dim)  # a small test config's whole head
        if head_dim % self.group:
            raise ValueError(f"the 8-bit KV cache needs head_dim divisible by {GROUP}, got {head_dim}")
        super().__init__(batch_size, kv_heads, slots, head_dim, ring, torch.int8, device)
        scale_shape = (batch_size, kv_heads, slots, head_dim // self.group)
        self.k_scale = torch.zeros(scale_shape, dtype=SCALE_DTYPE, device=device)
        self.v_scale = torch.zeros(scale_shape, dtype=SCALE_DTYPE, device=device)
        self.dtype = dtype  # what attention computes in

    @property
    def nbytes(self) -> int:
        """Bytes of the int8 keys and values and of their scales."""
        return sum(t.nbytes for t in (self.k, self.v, self.k_scale, self.v_scale))

    def keys_values(self, end: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float keys and values of slots [0, end) (all slots by default)."""
        k, v, sk, sv = self.k[:, :, :end], self.v[:, :, :end], self.k_scale[:, :, :end], self.v_scale[:, :, :end]
        return dequantize_vectors(k, sk, self.dtype), dequantize_vectors(v, sv, self.dtype)

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               image_ids: Optional[torch.Tensor] = None):
        """As LayerCache.update, with keys and values rounded to int8 on the way in."""
        qk, sk = quantize_vectors(k, self.group)
        qv, sv = quantize_vectors(v, self.group)
        T = k.shape[2]
        if self.ring and T > 1:  # old slots and the new keys together (see LayerCache.update)
            old_k, old_v = self.keys_values()
            keys = torch.cat([old_k, dequantize_vectors(qk, sk, self.dtype)], dim=2)
            values = torch.cat([old_v, dequantize_vectors(qv, sv, self.dtype)], dim=2)
            key_pos = torch.cat([self.pos, positions])
            key_image_ids = None if image_ids is None else torch.cat([self.image_ids, image_ids], dim=1)
            self.write_quantized(qk, sk, qv, sv, positions, image_ids)
            return keys, values, key_pos, key_image_ids
        self.write_quantized(qk, sk, qv, sv, positions, image_ids)
        n = self.slots if self.ring else int(positions[-1]) + 1  # a global layer is filled up to the last position
        return (*self.keys_values(n), self.pos[:n], None if image_ids is None else self.image_ids[:, :n])

    def write(self, k, v, positions, image_ids=None) -> None:
        """Ring write of float keys and values (rounded here)."""
        self.write_quantized(*quantize_vectors(k, self.group), *quantize_vectors(v, self.group), positions, image_ids)

    def write_quantized(self, qk, sk, qv, sv, positions, image_ids=None) -> None:
        """LayerCache.write of the int8 keys and values, and their scales into the same slots."""
        super().write(qk, qv, positions, image_ids)
        keep = min(qk.shape[2], self.slots)
        slot = positions[-keep:] % self.slots
        self.k_scale.index_copy_(2, slot, sk[:, :, -keep:])
        self.v_scale.index_copy_(2, slot, sv[:, :, -keep:])


class QuantizedKVCache(KVCache):
    """KVCache's layout (same checks, slots and rings) with QuantizedLayerCaches."""

    layer_class = QuantizedLayerCache

    def __init__(self, cfg, batch_size: int, max_len: int, dtype: torch.dtype = torch.float32,
                 device="cpu", sliding: bool = True):
        super().__init__(cfg, batch_size, max_len, dtype, "meta", sliding)  # the layout, no memory
        self.layers = [self.layer_class(batch_size, cfg.num_key_value_heads, layer.slots, cfg.head_dim,
                                        layer.ring, dtype, device) for layer in self.layers]

    @property
    def nbytes(self) -> int:
        """Bytes of all int8 keys and values and their scales."""
        return sum(layer.nbytes for layer in self.layers)


class StaticQuantizedLayerCache(QuantizedLayerCache):
    """For the compiled step: a one-token update writes in place and returns every slot."""

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               image_ids: Optional[torch.Tensor] = None):
        if k.shape[2] > 1:  # the prompt (prefill) runs eagerly, as in the reference cache
            return super().update(k, v, positions, image_ids)
        self.write(k, v, positions, image_ids)
        return (*self.keys_values(), self.pos, None if image_ids is None else self.image_ids)


class StaticQuantizedKVCache(QuantizedKVCache):
    """The 8-bit cache for `compiled.compiled_decoding`: buffers keep fixed addresses."""

    layer_class = StaticQuantizedLayerCache

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for layer in self.layers:
            for buffer in (layer.k, layer.v, layer.k_scale, layer.v_scale, layer.pos, layer.image_ids):
                torch._dynamo.mark_static_address(buffer)  # updated in place, never reallocated

    reset = StaticKVCache.reset


def new_quantized_cache(model: Gemma3Base, max_len: int, batch_size: int = 1, sliding: bool = True) -> QuantizedKVCache:
    """An empty 8-bit KV cache for `max_len` positions, on the model's compute dtype and device
    (`model.new_cache` after `quantize_kv_cache`)."""
    w = model.text_model.norm.weight
    return QuantizedKVCache(model.config, batch_size, max_len, w.dtype, w.device, sliding=sliding)


def quantize_kv_cache(model: Gemma3Base, bits: int = 8) -> Gemma3Base:
    """Make every KV cache the model builds from now on 8-bit (eager `new_cache` and the compiled
    step's static caches); weights are untouched. Returns the model."""
    if bits != 8:
        raise ValueError(f"only an 8-bit KV cache is implemented (int8, a bfloat16 scale per 32 numbers of a token and head), got bits={bits!r}")
    if not isinstance(model, Gemma3Base):
        raise TypeError(f"quantize_kv_cache expects a Gemma 3 model, got {type(model).__name__}")
    if model.__dict__.get("kv_cache_bits") is not None:
        raise ValueError(f"the model's KV cache is already {model.kv_cache_bits}-bit")

    model.__dict__.update(kv_cache_bits=bits, new_cache=types.MethodType(new_quantized_cache, model),
                          static_cache_class=StaticQuantizedKVCache)  # a bound method: deepcopy rebinds it
    model.__dict__.pop("_static_caches", None)  # float static caches made before are not reused
    return model
