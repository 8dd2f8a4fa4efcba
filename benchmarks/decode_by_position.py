"""Decode speed against position with the real 270M: local layers' cost must stay flat past the window.

    python benchmarks/decode_by_position.py [--positions 100,1000,4000,8000] [--steps 16]

For each position P: prefill P tokens into the cache, then time `--steps` single-token steps
(median step time). gemma3_minimal and transformers, same run, CPU float32, batch 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import load_both  # noqa: E402


def step_times(step, first, steps: int) -> float:
    token, times = first, []
    for _ in range(steps):
        start = time.perf_counter()
        token = step(token)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", default="100,1000,4000,8000")
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    ours, theirs, _ = load_both()
    print(f"# decode step at position P, CPU float32, {torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"{'P':>6}  {'gemma3_minimal tok/s':>21}  {'transformers tok/s':>19}")
    for P in [int(x) for x in args.positions.split(",")]:
        ids = torch.randint(1000, 200_000, (1, P), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            cache = ours.new_cache(P + args.steps)
            first = ours(ids, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
            t_ours = step_times(lambda t: ours(t, cache)[:, -1].argmax(-1, keepdim=True), first, args.steps)
            out = theirs(ids, use_cache=True, logits_to_keep=1)
            pkv = out.past_key_values
            first = out.logits[:, -1].argmax(-1, keepdim=True)
            t_hf = step_times(
                lambda t: theirs(t, past_key_values=pkv, use_cache=True).logits[:, -1].argmax(-1, keepdim=True),
                first, args.steps)
        print(f"{P:>6}  {1 / t_ours:21.1f}  {1 / t_hf:19.1f}")


if __name__ == "__main__":
    main()
