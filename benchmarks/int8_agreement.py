"""Which int8 layout agrees with the float32 270M on >= 99% of next tokens (issue 17's target)?

    python benchmarks/int8_agreement.py [--tokens 1024] [--out benchmarks/results/int8_agreement.json]
    python benchmarks/int8_agreement.py --gguf-int8 [--compiled-check]    # -> results/int8_agreement_gguf.json

Candidates round every Linear and the tied embedding/head with `quantize.quantize_tensor` (int8,
symmetric) in groups of G inputs (None: one group per output row), the layers and the table
separately; scales bfloat16 (the library's) or, for the table, float32: the GGUF stores the table as
Q8_0 (int8 and a float16 scale per 32), which int8 in groups of 32 with exact scales reproduces. Two texts: the layout is chosen on data/distill_corpus.txt ("selection") and
the figure that counts is taken on held-out text it was not chosen on, the book of Genesis
(data/kjv_genesis.txt, from chapter 2 on: its opening is easy for any model) ("held out").
Each text is cut into rows of ROW tokens starting with <bos>; measured on every next-token
distribution: top-1 agreement with the float model, KL(float || int8), and bits per weight.

`--gguf-int8` measures only the library's lossless layout instead, `load_model("270m",
quantize="gguf-int8")` (the GGUF's own integers; its eager forward, not a float model with
replaced weights), with its bits per weight from `quantize.quantized_bytes` (the matrices: int8,
scales and mins, the tied table once). `--compiled-check` adds a greedy decode with
`generate_ids(compile=True)` after a 600-token prompt (past the 512-token window), against the
float32 model's tokens (a few minutes of compiling on 2 cores: not in the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

import gemma3_minimal as g3
from gemma3_minimal.generate import generate_ids
from gemma3_minimal.quantize import GGUF_INT8, QuantLinear, quantize_tensor, quantized_bytes

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "int8_agreement.json"
GGUF_OUT = ROOT / "benchmarks" / "results" / "int8_agreement_gguf.json"
ROW = 256
CHECK_PROMPT, CHECK_NEW = 600, 32  # --compiled-check: prompt tokens of Genesis, then greedy tokens
# name -> (group of the layers' Linears, group of the embedding/head, scale dtype of the head);
# None: per output channel. Layers' scales are bfloat16 (the library's).
CANDIDATES = {
    "per channel (library default)": (None, None, torch.bfloat16),
    "layers per channel, head groups of 32": (None, 32, torch.bfloat16),
    "layers per channel, head groups of 32, float32 head scales (= the GGUF's Q8_0 table)": (None, 32, torch.float32),
    "layers groups of 32, head per channel": (32, None, torch.bfloat16),
    "groups of 32": (32, 32, torch.bfloat16),
    "groups of 32, float32 head scales": (32, 32, torch.float32),
    "groups of 32, scales searched (k = 100..127), float32 scales": (32, 32, "search"),
}


def texts(tok) -> dict[str, list[int]]:
    genesis = (ROOT / "data" / "kjv_genesis.txt").read_text(encoding="utf-8")
    return {"selection: distill_corpus.txt": tok.encode((ROOT / "data" / "distill_corpus.txt").read_text(encoding="utf-8")),
            "held out: kjv_genesis.txt from chapter 2": tok.encode(genesis[genesis.index("Chapter 2"):])}


def rows_of(ids: list[int], bos: int, tokens: int) -> torch.Tensor:
    body = ROW - 1
    n = min(len(ids) // body, -(-tokens // body))
    return torch.tensor([[bos] + ids[i * body:(i + 1) * body] for i in range(n)])


@torch.no_grad()
def logprobs(model, rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(r[None])[0, :-1].log_softmax(-1) for r in rows])


def bits(model: nn.Module, layers_group, head_group, head_scale) -> float:
    """Bits per weight over all matrices (the tied table once)."""
    total = count = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            g = (head_group if name == "lm_head" else layers_group) or m.in_features
            scale_bits = 32 if head_scale == "search" or (name == "lm_head" and head_scale == torch.float32) else 16
            total += m.weight.numel() * (8 + scale_bits / g)
            count += m.weight.numel()
    return total / count


def matrix_bits(model: nn.Module) -> tuple[float, int, int]:
    """(bits per weight, bytes, weights) of a quantized model's matrices: everything `quantized_bytes`
    counts except the float32 norms (the tied table once)."""
    norms = sum(p.numel() * p.element_size() for p in model.parameters())
    weights = sum(m.out_features * m.in_features for m in model.modules() if isinstance(m, QuantLinear))
    nbytes = quantized_bytes(model) - norms
    return nbytes * 8 / weights, nbytes, weights


def measure_gguf_int8(tok, data, refs, compiled_check: bool) -> dict:
    """The row of `load_model("270m", quantize="gguf-int8")`, and optionally its compiled greedy check."""
    model = g3.load_model("270m", quantize=GGUF_INT8)
    bits_pw, nbytes, weights = matrix_bits(model)
    result = dict(format=GGUF_INT8, bits_per_weight=bits_pw, matrix_bytes=nbytes, matrix_weights=weights,
                  all_bytes=quantized_bytes(model))
    for text, rows in data.items():
        ref, got = refs[text], logprobs(model, rows)
        kl = float((ref.exp() * (ref - got)).sum(-1).mean())
        top1 = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
        result[text] = dict(positions=ref.shape[0], kl=kl, top1_agreement=top1,
                            max_abs_logprob_difference=float((ref - got).abs().max()))
        print(f"{GGUF_INT8}: {bits_pw:.3f} bits  {text:42s} {ref.shape[0]} pos  top-1 {top1:.4f}  KL {kl:.3g}", flush=True)
    if compiled_check:
        genesis = (ROOT / "data" / "kjv_genesis.txt").read_text(encoding="utf-8")
        prompt = tok.encode(genesis, add_bos=True)[:CHECK_PROMPT]
        start = time.perf_counter()
        got = list(generate_ids(model, prompt, CHECK_NEW, stop_ids=(), compile=True))
        seconds = time.perf_counter() - start
        want = list(generate_ids(g3.load_model("270m"), prompt, CHECK_NEW, stop_ids=()))
        result["compiled_greedy"] = dict(prompt_tokens=len(prompt), new_tokens=CHECK_NEW, equal=got == want,
                                         equal_prefix=next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want)),
                                         seconds_with_compiling=seconds)
        print(f"compiled greedy after {len(prompt)} prompt tokens: {result['compiled_greedy']}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="at least this many positions per text")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--only", default=None, help="measure only this candidate (saved only with --out)")
    parser.add_argument("--gguf-int8", action="store_true", help=f"measure only load_model(quantize={GGUF_INT8!r})")
    parser.add_argument("--compiled-check", action="store_true", help="with --gguf-int8: compiled greedy tokens too")
    args = parser.parse_args()
    if args.only:
        CANDIDATES.update({k: v for k, v in CANDIDATES.items() if k == args.only})
        for k in [k for k in CANDIDATES if k != args.only]:
            del CANDIDATES[k]
    model, tok = g3.load_pretrained("270m", fast=False)
    lin = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}  # lm_head: the tied table
    originals = {name: m.weight.detach().clone() for name, m in lin.items()}
    data = {name: rows_of(ids, tok.bos_id, args.tokens) for name, ids in texts(tok).items()}
    refs = {name: logprobs(model, rows) for name, rows in data.items()}
    if args.gguf_int8:
        result = measure_gguf_int8(tok, data, refs, args.compiled_check)
        out = GGUF_OUT if args.out == str(OUT) else Path(args.out)
        out.write_text(json.dumps(dict(row_tokens=ROW, gguf_int8=result, load_average=os.getloadavg()), indent=1) + "\n")
        return
    results = {}
    for cand, (layers_group, head_group, head_scale) in CANDIDATES.items():
        with torch.no_grad():
            for name, m in lin.items():
                if head_scale == "search":  # every matrix: the least-error scale, float32
                    m.weight.copy_(quantize_tensor(originals[name], 8, head_group, torch.float32, search=range(100, 128)).dequantize())
                elif name == "lm_head":
                    m.weight.copy_(quantize_tensor(originals[name], 8, head_group, head_scale).dequantize())
                else:
                    m.weight.copy_(quantize_tensor(originals[name], 8, layers_group).dequantize())
        head_error = float((lin["lm_head"].weight - originals["lm_head"]).abs().max())
        results[cand] = dict(layers_group=layers_group, head_group=head_group, head_scale=str(head_scale),
                             head_max_abs_error=head_error,
                             bits_per_weight=bits(model, layers_group, head_group, head_scale))
        print(f"{cand}: head/embedding max |error| {head_error:.3g}")
        for text, rows in data.items():
            ref, got = refs[text], logprobs(model, rows)
            kl = float((ref.exp() * (ref - got)).sum(-1).mean())
            top1 = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
            results[cand][text] = dict(positions=ref.shape[0], kl=kl, top1_agreement=top1)
            print(f"{cand:40s} {results[cand]['bits_per_weight']:.3f} bits  {text:42s} {ref.shape[0]} pos  "
                  f"top-1 {top1:.4f}  KL {kl:.5f}", flush=True)
    with torch.no_grad():
        for name, m in lin.items():
            m.weight.copy_(originals[name])
    if args.only and args.out == str(OUT):  # one candidate: saved only to a file named with --out
        return
    Path(args.out).write_text(json.dumps(dict(row_tokens=ROW, candidates=results, load_average=os.getloadavg()),
                                         indent=1) + "\n")


if __name__ == "__main__":
    main()
