"""The performance layer's compiled decoding: a static KV cache and a decode step under torch.compile.

A compiled step is traced once for fixed shapes. In the reference cache a global layer returns
its filled prefix, whose length grows every step; here a one-token step sees every slot (empty
ones hold position -1, which the mask excludes), so its shapes never change. On a GPU,
mode="reduce-overhead" replays the step as one CUDA graph, which also needs the buffers to keep
their addresses: caches are kept per model and reused, one per generation running at a time.

`generate(..., compile=True)` uses this through `model.compiled_decoding`, set by `fast.speed_up`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Callable, Iterator, Optional

import torch

from .kv_cache import KVCache, LayerCache
from .model import Gemma3Base

CACHE_ROUNDING = 256  # static caches come in multiples of this many positions, so later prompts reuse them


class StaticLayerCache(LayerCache):
    """A LayerCache whose one-token updates write in place and return every slot."""

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               image_ids: Optional[torch.Tensor] = None):
        if k.shape[2] > 1:  # the prompt (prefill) runs eagerly, as in the reference cache
            return super().update(k, v, positions, image_ids)
        self.write(k, v, positions, image_ids)  # slot = position % slots, no Python int from a tensor
        return self.k, self.v, self.pos, None if image_ids is None else self.image_ids


class StaticKVCache(KVCache):
    """A KVCache of StaticLayerCaches whose buffers keep fixed addresses."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for layer in self.layers:
            layer.__class__ = StaticLayerCache
            for buffer in (layer.k, layer.v, layer.pos, layer.image_ids):
                torch._dynamo.mark_static_address(buffer)  # updated in place, never reallocated

    def reset(self) -> None:
        """Empty the cache in place (buffers keep their addresses, so a captured step stays valid)."""
        for layer in self.layers:
            layer.pos.fill_(-1)
            layer.image_ids.fill_(-1)
        self.length = 0


def decode_step(model: Gemma3Base, ids: torch.Tensor, positions: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
    """Logits [batch, 1, vocab] after one new token per sequence, ids [batch, 1] at `positions` [1].

    Pure tensor work: no checks, no Python counters (the caller advances `cache`).
    """
    text = model.text_model
    return model.lm_head(text.blocks(text.embed(ids), positions, cache))


@functools.lru_cache(maxsize=None)
def compiled_decode_step(device_type: str):
    """`decode_step` under torch.compile, made once per device type: CUDA graphs on a GPU."""
    mode = "reduce-overhead" if device_type == "cuda" else None
    return torch.compile(decode_step, fullgraph=True, mode=mode)


_LOCK = threading.Lock()  # guards the pools, and compiled calls: torch.compile is not thread-safe


def _pool(model: Gemma3Base) -> list[StaticKVCache]:
    """The model's idle static caches (a plain attribute: not a parameter, not in state_dict)."""
    return model.__dict__.setdefault("_static_caches", [])


@contextlib.contextmanager
def compiled_decoding(model: Gemma3Base, max_len: int) -> Iterator[tuple[StaticKVCache, Callable]]:
    """An empty static cache of its own for one generation, and a compiled step(ids, cache) -> logits.

    Each generation running at the same time (interleaved streams, threads) gets its own cache;
    a finished one returns it to the model's pool for the next generation to reuse.
    """
    size = min(-(-max_len // CACHE_ROUNDING) * CACHE_ROUNDING, model.config.max_position_embeddings)
    w = model.text_model.norm.weight  # the compute dtype and device (a quantized head holds integers)
    kind = model.__dict__.get("static_cache_class", StaticKVCache)  # kv_quant's 8-bit cache sets another
    key = (kind, size, w.dtype, w.device)
    with _LOCK:
        pool = _pool(model)
        fits = [c for c in pool if c.pool_key == key]
        if fits:
            cache = fits[0]
            pool.remove(cache)
        else:
            cache = kind(model.config, 1, size, w.dtype, w.device)
            cache.pool_key = key
    cache.reset()
    compiled = compiled_decode_step(w.device.type)

    def step(ids: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        positions = torch.full((1,), cache.length, device=ids.device)
        cache.advance(1)
        with _LOCK:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's logits were read: a graph may reuse them
            return compiled(model, ids, positions, cache).clone()

    try:
        yield cache, step
    finally:
        with _LOCK:
            _pool(model).append(cache)


def enable_compiled_decoding(model: Gemma3Base) -> None:
    """Let `generate(model, ..., compile=True)` use `compiled_decoding` (a plain attribute, not a module's)."""
    model.__dict__["compiled_decoding"] = functools.partial(compiled_decoding, model)
