"""Exercise checkers for notebook 05: bytes of a KV cache with ring buffers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...config import get_config
from ...memory import kv_cache_bytes
from .engine import Case, CheckResult, Mistake, run_check


def _kv_cases() -> list[Case]:
    pairs = [("270m", 8), ("270m", 512), ("270m", 513), ("270m", 32_768), ("1b", 1), ("1b", 2_000),
             ("4b", 1_024), ("4b", 1_025), ("12b", 4_096), ("27b", 100), ("27b", 131_072)]
    return [Case(f"cfg=get_config({name!r}), context_len={n:,}, bytes_per_value={b}", (get_config(name), n, b))
            for (name, n), b in zip(pairs, [2, 2, 4, 2, 2, 1, 2, 2, 4, 2, 2])]


def _kv_bytes_reference(cfg, context_len: int, bytes_per_value: int) -> int:
    return kv_cache_bytes(cfg, context_len, bytes_per_value)


def _kv_bytes(cfg, context_len: int, bytes_per_value: int, local_slots: int, heads: int, k_and_v: int = 2) -> int:
    slots = sum(local_slots if kind == "sliding_attention" else context_len for kind in cfg.layer_types)
    return slots * k_and_v * heads * cfg.head_dim * bytes_per_value


KV_BYTES_MISTAKES = (
    Mistake("no_ring_buffer", "local (sliding) layers only keep the last `sliding_window` positions: "
            "their cache has min(sliding_window, context_len) slots, not context_len.",
            lambda c, n, b: _kv_bytes(c, n, b, n, c.num_key_value_heads)),
    Mistake("window_not_capped", "a local layer holds min(sliding_window, context_len) slots: "
            "with a short context it never fills its window.",
            lambda c, n, b: _kv_bytes(c, n, b, c.sliding_window, c.num_key_value_heads)),
    Mistake("keys_only", "the cache stores keys *and* values: count 2 tensors per layer.",
            lambda c, n, b: _kv_bytes(c, n, b, min(c.sliding_window, n), c.num_key_value_heads, 1)),
    Mistake("query_heads", "grouped-query attention caches only the K/V heads: use num_key_value_heads, "
            "not num_attention_heads.",
            lambda c, n, b: _kv_bytes(c, n, b, min(c.sliding_window, n), c.num_attention_heads)),
)


def check_kv_cache_bytes(fn: Callable[[Any, int, int], int]) -> CheckResult:
    """`fn(cfg, context_len, bytes_per_value) -> int`: bytes of the KV cache with ring buffers on local layers."""
    return run_check("kv_cache_bytes", fn, _kv_cases(), _kv_bytes_reference, "gemma3_minimal.memory.kv_cache_bytes",
                     KV_BYTES_MISTAKES, "sum over layers: slots x 2 (K and V) x kv_heads x head_dim x bytes_per_value.")
