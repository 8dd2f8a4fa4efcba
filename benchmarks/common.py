"""Shared benchmark helpers: medians, a memory-bandwidth probe, the two models on the same GGUF."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_time(fn: Callable[[], object], runs: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_bandwidth(n_bytes: int = 1 << 30, runs: int = 7) -> float:
    """This machine's memory read bandwidth in bytes/s: the median time to sum a 1 GiB float32 tensor."""
    x = torch.ones(n_bytes // 4)
    return n_bytes / median_time(lambda: x.sum(), runs=runs, warmup=2)


def load_both(dtype: torch.dtype = torch.float32):
    """(ours, transformers', token ids of a prompt) for the real 270M from the same GGUF file."""
    from transformers import AutoModelForCausalLM

    import gemma3_minimal as g3

    ours, tok = g3.load_pretrained("270m", dtype=dtype)
    path = g3.weights.gguf_path()
    theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
    return ours, theirs, tok


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of all parameters, the tied embedding/head counted once."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total
