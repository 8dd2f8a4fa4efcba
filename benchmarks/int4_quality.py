"""Symmetric against asymmetric int4 (groups of 32) on the real 270M: next-token agreement with float32.

    python benchmarks/int4_quality.py [--tokens 1024] [--out benchmarks/results/int4_quality.json]

Symmetric: the library's `quantize_tensor(w, 4, 32)` (w ~ q * s, q in -7..7, bfloat16 s).
Asymmetric: a scale and a min per group, as GGUF's Q4_K (w ~ q * s + m, q in 0..15, s = (max - min) / 15,
m = min, both bfloat16; `int4_kernels.quantize_unsigned`), 16 levels instead of 15 and no level
spent on the side a group does not reach. Every Linear and the tied embedding/head rounded; the
same texts, rows and measures as `int8_agreement.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(__file__))
from int4_kernels import dequantize_unsigned, quantize_unsigned  # noqa: E402
from int8_agreement import logprobs, rows_of, texts  # noqa: E402

import gemma3_minimal as g3  # noqa: E402
from gemma3_minimal.quantize import quantize_tensor  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "int4_quality.json"
CANDIDATES = {
    "int4 symmetric, groups of 32 (library)": lambda w: quantize_tensor(w, 4, 32).dequantize(),
    "int4 asymmetric (scale, min), groups of 32": lambda w: dequantize_unsigned(*quantize_unsigned(w, 32, asymmetric=True)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    model, tok = g3.load_pretrained("270m", fast=False)
    lin = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    originals = {name: m.weight.detach().clone() for name, m in lin.items()}
    data = {name: rows_of(ids, tok.bos_id, args.tokens) for name, ids in texts(tok).items()}
    refs = {name: logprobs(model, rows) for name, rows in data.items()}
    results = {}
    for cand, fn in CANDIDATES.items():
        err2 = ref2 = 0.0
        with torch.no_grad():
            for name, m in lin.items():
                m.weight.copy_(fn(originals[name]))
                err2 += float((m.weight - originals[name]).double().pow(2).sum())
                ref2 += float(originals[name].double().pow(2).sum())
        results[cand] = dict(weight_error=(err2 / ref2) ** 0.5)
        for text, rows in data.items():
            ref, got = refs[text], logprobs(model, rows)
            kl = float((ref.exp() * (ref - got)).sum(-1).mean())
            top1 = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
            results[cand][text] = dict(positions=ref.shape[0], kl=kl, top1_agreement=top1)
            print(f"{cand:44s} weight err {results[cand]['weight_error']:.4f}  {text:42s} top-1 {top1:.4f}  KL {kl:.4f}",
                  flush=True)
    Path(args.out).write_text(json.dumps(dict(candidates=results, load_average=os.getloadavg()), indent=1) + "\n")


if __name__ == "__main__":
    main()
