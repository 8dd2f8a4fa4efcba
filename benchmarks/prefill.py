"""Prefill of long prompts with the real 270M: tokens/s and peak memory, gemma3_minimal against transformers.

    python benchmarks/prefill.py [--lengths 512,2048,8192] [--runs 3]

Each (library, length) runs in a fresh subprocess; after the model is loaded its peak-RSS counter
(VmHWM) is reset, so the figure printed is what the prefill adds above the loaded model.
Both libraries keep only the last position's logits (a [8192, 262144] float32 logit matrix alone
would be 8.6 GB). gemma3_minimal attends in query chunks of 512 (`layers.QUERY_CHUNK`), so no [seq, seq] score matrix
is ever materialized; local layers also only look at keys inside their window. transformers'
loaded RSS includes memory its GGUF dequantization freed but the allocator kept, which its
prefill then reuses, so compare the absolute peaks as well as the increases.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import median_time  # noqa: E402


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak() -> None:
    """Restart the peak-RSS counter (VmHWM) from the current RSS, so loading the weights does not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(library: str, length: int, runs: int) -> dict:
    import gemma3_minimal as g3

    ids = torch.randint(1000, 200_000, (1, length), generator=torch.Generator().manual_seed(0))
    if library == "gemma3_minimal":
        model = g3.load_model("270m")
        step = lambda: model(ids, last_only=True)  # noqa: E731
    else:
        from gemma3_minimal.course.reference import load_reference

        model, _ = load_reference(torch.float32)
        step = lambda: model(ids, use_cache=True, logits_to_keep=1)  # noqa: E731
    base = status_mb("VmRSS")
    reset_peak()
    with torch.no_grad():
        seconds = median_time(step, runs=runs, warmup=0 if length > 4096 else 1)
    peak = status_mb("VmHWM")
    return {"tokens_per_s": length / seconds, "peak_over_loaded_mb": peak - base, "loaded_mb": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("LIBRARY", "LENGTH"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.runs)))
        return
    print(f"# prefill, CPU float32, batch 1, {torch.get_num_threads()} threads, median of {args.runs} runs")
    print(f"{'tokens':>6}  {'library':<15} {'tok/s':>8}  {'loaded RSS':>11}  {'peak RSS':>9}  {'peak above loaded':>18}")
    for length in [int(x) for x in args.lengths.split(",")]:
        for library in ["gemma3_minimal", "transformers"]:
            out = subprocess.run([sys.executable, __file__, "--runs", str(args.runs), "--worker", library, str(length)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            peak = r["loaded_mb"] + r["peak_over_loaded_mb"]
            print(f"{length:>6}  {library:<15} {r['tokens_per_s']:8.1f}  {r['loaded_mb']:7.0f} MiB  "
                  f"{peak:5.0f} MiB  {r['peak_over_loaded_mb']:14.0f} MiB")


if __name__ == "__main__":
    main()
