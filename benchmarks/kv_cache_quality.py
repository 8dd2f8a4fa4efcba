"""The 8-bit KV cache (`kv_quant.py`) against the float32 cache on the real Gemma 3 270M.

    python benchmarks/kv_cache_quality.py [--tokens 1024] [--chunk 128] [--decode 0]
                                          [--out benchmarks/results/kv_cache_quality.json]

The text (data/distill_corpus.txt, written for this project, never tuned on) is fed through a
cache CHUNK tokens at a time, as a long prompt is, with the float32 cache and with the 8-bit one;
the model's weights are float32 in both. More tokens than the 512-token sliding window, so the
local layers' rings wrap and every key they attend to came out of the cache. Measured on the
next-token distributions at every position: KL(float || 8-bit) (mean and max), top-1 agreement,
the largest logit difference; split at the window (positions < 512 and >= 512). Also the cache's
bytes for the text and at the 270M's 32K context, float32 against 8-bit.

`--decode N` also times N greedy tokens with `generate_ids(compile=True)` after a prompt of the
text's first 512 tokens, float32 cache against 8-bit (medians, taken in turn), and counts equal tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import median_times  # noqa: E402

import gemma3_minimal as g3  # noqa: E402
from gemma3_minimal.kv_quant import QuantizedKVCache, quantize_kv_cache  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "data" / "distill_corpus.txt"
OUT = ROOT / "benchmarks" / "results" / "kv_cache_quality.json"


@torch.no_grad()
def chunked_logits(model, ids: torch.Tensor, cache, chunk: int) -> torch.Tensor:
    """Log-probabilities [T, vocab] of ids [1, T] fed through `cache` `chunk` tokens at a time."""
    outs = [model(ids[:, i:i + chunk], cache).float()[0] for i in range(0, ids.shape[1], chunk)]
    return torch.cat(outs)


def compare(ref: torch.Tensor, got: torch.Tensor) -> dict:
    """KL(ref || got) per position (mean, max), top-1 agreement, max |logit difference|, on logits [N, vocab]."""
    lr, lg = ref.log_softmax(-1), got.log_softmax(-1)
    kl = (lr.exp() * (lr - lg)).sum(-1)
    return dict(positions=ref.shape[0], kl_mean=float(kl.mean()), kl_max=float(kl.max()),
                top1_agreement=float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
                logits_max_abs_error=float((ref - got).abs().max()),
                logits_max_abs=float(ref.abs().max()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--decode", type=int, default=0, help="also time this many compiled greedy tokens")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = g3.load_pretrained("270m")
    ids = tok.encode(TEXT.read_text(encoding="utf-8"), add_bos=True)
    if len(ids) < args.tokens:
        raise SystemExit(f"{TEXT.name} has {len(ids)} tokens, fewer than --tokens {args.tokens}")
    ids = torch.tensor([ids[:args.tokens]])
    window = model.config.sliding_window
    float_cache = model.new_cache(args.tokens)
    ref = chunked_logits(model, ids, float_cache, args.chunk)
    quantized = quantize_kv_cache(g3.load_pretrained("270m")[0])
    cache8 = quantized.new_cache(args.tokens)
    assert isinstance(cache8, QuantizedKVCache)
    got = chunked_logits(quantized, ids, cache8, args.chunk)
    results = dict(text=TEXT.name, tokens=args.tokens, chunk=args.chunk, sliding_window=window,
                   all=compare(ref, got), before_window=compare(ref[:window], got[:window]),
                   after_window=compare(ref[window:], got[window:]))
    full = model.config.max_position_embeddings
    with torch.device("meta"):
        results["cache_bytes"] = {
            f"text ({args.tokens} positions)": dict(float32=float_cache.nbytes, int8=cache8.nbytes),
            f"{full} positions": dict(float32=g3.KVCache(model.config, 1, full, device="meta").nbytes,
                                      int8=QuantizedKVCache(model.config, 1, full, device="meta").nbytes),
        }
    for part in ("all", "before_window", "after_window"):
        r = results[part]
        print(f"{part:14s} {r['positions']:5d} positions  KL mean {r['kl_mean']:.2e} max {r['kl_max']:.2e}  "
              f"top-1 {r['top1_agreement']:.4f}  max |dlogit| {r['logits_max_abs_error']:.4f} "
              f"(of |logit| up to {r['logits_max_abs']:.1f})")
    for name, b in results["cache_bytes"].items():
        print(f"cache bytes, {name}: float32 {b['float32']:,}  int8 {b['int8']:,}  ratio {b['int8'] / b['float32']:.4f}")
    if args.decode:
        n, prompt = args.decode, ids[0, :window].tolist()
        with torch.no_grad():
            run = {"float32 cache": lambda: list(g3.generate_ids(model, prompt, n, stop_ids=(), compile=True)),
                   "int8 cache": lambda: list(g3.generate_ids(quantized, prompt, n, stop_ids=(), compile=True))}
            tokens = {name: fn() for name, fn in run.items()}  # compiles each step
            t = median_times(run, args.runs, warmup=0)
        agree = sum(a == b for a, b in zip(*tokens.values()))
        results["decode"] = dict(prompt_tokens=len(prompt), new_tokens=n, runs=args.runs,
                                 seconds=t, greedy_tokens_equal=agree)
        print(f"decode {n} tokens after {len(prompt)} (prefill included), median of {args.runs}: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()) + f"; greedy tokens equal {agree}/{n}")
    results["load_average"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
