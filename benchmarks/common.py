"""Shared benchmark helpers: medians, a memory-bandwidth probe, the two models on the same GGUF."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from gemma3_minimal.fast import blocked_matvec


def median_time(fn: Callable[[], object], runs: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` in seconds, after `warmup` untimed calls."""
    return median_times({"fn": fn}, runs, warmup)["fn"]


def median_times(fns: dict[str, Callable[[], object]], runs: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function, timed in turn within each run so that a slow spell of
    this noisy machine hits every function alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def read_bandwidth(n_bytes: int = 1 << 30, runs: int = 7) -> float:
    """This machine's memory read bandwidth in bytes/s: the fastest of two ways to read 1 GiB of float32.

    A plain sum, and a matrix-vector product in the layout the library uses for decoding; each
    timed as a median. Taking the faster keeps the bound honest (never below what we reach).
    """
    x = torch.ones(n_bytes // 4)
    matrix = x.view(1024, -1).t()  # an [out, 1024] weight stored as [1024, out]
    v = torch.ones(1, 1024)
    seconds = min(median_time(lambda: x.sum(), runs=runs, warmup=2),
                  median_time(lambda: blocked_matvec(v, matrix), runs=runs, warmup=2))
    return n_bytes / seconds


def load_both(dtype: torch.dtype = torch.float32):
    """(ours, transformers', our tokenizer) for the real 270M from the same GGUF file."""
    import gemma3_minimal as g3
    from gemma3_minimal.course.reference import load_reference

    ours, tok = g3.load_pretrained("270m", dtype=dtype)
    theirs, _ = load_reference(dtype)
    return ours, theirs, tok


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of all parameters, the tied embedding/head counted once."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total
