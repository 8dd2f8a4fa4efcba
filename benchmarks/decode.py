"""Greedy decoding and prefill of the real Gemma 3 270M: gemma3_minimal against transformers, same run.

    python benchmarks/decode.py [--runs 5] [--new-tokens 128] [--dtypes float32,bfloat16]

Batch 1, CPU. Decode tokens/s counts only the new tokens (the prompt's prefill is timed apart).
gemma3_minimal runs eagerly and with `generate_ids(compile=True)` (compiled once, before timing), and
the plain reference model (`load_pretrained(..., fast=False)`, no performance layer) is timed beside them.
The bound is what a perfect decoder could do: every weight read once per token at the memory
bandwidth that this script measures here.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

import gemma3_minimal as g3

sys.path.insert(0, os.path.dirname(__file__))
from common import load_both, median_times, read_bandwidth, weight_bytes  # noqa: E402

PROMPT = "The history of the city of Paris begins"


def ours_decode(model, ids, new_tokens, compile=False):
    out = list(g3.generate_ids(model, ids[0].tolist(), max_new_tokens=new_tokens, stop_ids=(), compile=compile))
    assert len(out) == new_tokens
    return out


def hf_decode(model, ids, new_tokens):
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    assert out.shape[1] - ids.shape[1] == new_tokens
    return out[0, ids.shape[1]:].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    bandwidth = read_bandwidth()
    print(f"memory read bandwidth (best of a sum and a matrix-vector product over 1 GiB): {bandwidth / 1e9:.1f} GB/s")
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        ours, theirs, tok = load_both(dtype)
        plain, _ = g3.load_pretrained("270m", dtype=dtype, fast=False)
        ids = torch.tensor([tok.encode(PROMPT, add_bos=True)])
        n = args.new_tokens
        with torch.no_grad():
            reference = hf_decode(theirs, ids, n)
            same = ours_decode(ours, ids, n) == reference
            same_compiled = ours_decode(ours, ids, n, compile=True) == reference  # also compiles the step
            same_plain = ours_decode(plain, ids, n) == reference
            t = median_times({
                "pre_ours": lambda: ours(ids, ours.new_cache(ids.shape[1]), last_only=True),
                "pre_hf": lambda: theirs(ids, use_cache=True, logits_to_keep=1),
                "ours": lambda: ours_decode(ours, ids, n),
                "hf": lambda: hf_decode(theirs, ids, n),
                "compiled": lambda: ours_decode(ours, ids, n, compile=True),
                "plain": lambda: ours_decode(plain, ids, n),
            }, args.runs)
            t_pre_ours, t_pre_hf, t_ours, t_hf, t_compiled, t_plain = (
                t[k] for k in ("pre_ours", "pre_hf", "ours", "hf", "compiled", "plain"))
        dec_ours = n / (t_ours - t_pre_ours)
        dec_compiled = n / (t_compiled - t_pre_ours)
        dec_hf = n / (t_hf - t_pre_hf)
        dec_plain = n / (t_plain - t_pre_ours)
        bound = bandwidth / weight_bytes(ours)
        print(f"\n## {dtype_name}: prompt {ids.shape[1]} tokens, {n} new tokens, median of {args.runs} runs (taken in turn);"
              f" same greedy tokens: {same} (compiled: {same_compiled}, reference model: {same_plain})")
        print(f"prefill   gemma3_minimal {ids.shape[1] / t_pre_ours:8.1f} tok/s   transformers {ids.shape[1] / t_pre_hf:8.1f} tok/s")
        print(f"decode    gemma3_minimal {dec_ours:8.1f} tok/s   transformers {dec_hf:8.1f} tok/s   "
              f"ratio {dec_ours / dec_hf:.2f}x")
        print(f"decode    gemma3_minimal, compile=True {dec_compiled:8.1f} tok/s   ratio {dec_compiled / dec_hf:.2f}x")
        print(f"decode    the plain reference model (fast=False) {dec_plain:8.1f} tok/s   ratio {dec_plain / dec_hf:.2f}x")
        print(f"bound     {weight_bytes(ours) / 1e9:.2f} GB of weights per token at {bandwidth / 1e9:.1f} GB/s = "
              f"{bound:.1f} tok/s; gemma3_minimal reaches {dec_ours / bound:.0%} of it, "
              f"{dec_compiled / bound:.0%} compiled")


if __name__ == "__main__":
    main()
