"""Quality of weight formats on the real Gemma 3 270M, saved for the quantization notebook.

    python benchmarks/quantization_quality.py [--out benchmarks/results/quantization_quality.json]

Each format rounds every Linear weight and the tied embedding/head of the float32 model (loaded
from the bundled GGUF), then compares with the float model on held-out text (data/distill_corpus.txt,
which the model never saw: written for this project), cut into rows of ROW tokens each starting with <bos>:

- weight error: ||w_q - w|| / ||w|| over all rounded weights;
- KL(float || format) of next-token distributions, mean over positions, and top-1 agreement;
- perplexity of the text;
- bytes of weights (integers, scales, and the float32 norms), the tied table once.

Formats: the report's (section 2.3, Table 3) per-channel int4, per-block int4 (blocks of 32) and
switched fp8 ("SFP8"; its exact format is not public: assumed here to be float8 e4m3 with one
scale per output channel), beside int8 per channel, int4 in blocks of 64, and bfloat16.
The int formats are `quantize.quantize_tensor`'s, the same numbers `load_pretrained(quantize=...)`
computes with (tests/test_quantize.py checks a quantized model equals its dequantized float twin).
Takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn as nn

import gemma3_minimal as g3
from gemma3_minimal.quantize import quantize_tensor

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "data" / "distill_corpus.txt"
OUT = ROOT / "benchmarks" / "results" / "quantization_quality.json"
ROW = 128  # tokens per row
FP8_MAX = 448.0  # the largest finite float8 e4m3 value

# name -> (kind, bits, group_size); group None: one group per output row
FORMATS = {
    "bf16": ("bf16", 16, None),
    "int8 per channel": ("int", 8, None),
    "SFP8 (assumed: fp8 e4m3, per channel)": ("fp8", 8, None),
    "int4 per block (64)": ("int", 4, 64),
    "int4 per block (32)": ("int", 4, 32),
    "int4 per channel": ("int", 4, None),
}


def round_weight(w: torch.Tensor, kind: str, bits: int, group: int | None) -> torch.Tensor:
    """w [out, in] after a round trip through the format, as float32."""
    if kind == "bf16":
        return w.to(torch.bfloat16).float()
    if kind == "fp8":
        scale = (w.abs().amax(1, keepdim=True) / FP8_MAX).to(torch.bfloat16).float().clamp_min(1e-30)
        return (w / scale).to(torch.float8_e4m3fn).float() * scale
    return quantize_tensor(w, bits, group).dequantize()


def text_rows(tok) -> torch.Tensor:
    ids = tok.encode(TEXT.read_text(encoding="utf-8"))
    body = ROW - 1
    n = len(ids) // body
    return torch.tensor([[tok.bos_id] + ids[i * body:(i + 1) * body] for i in range(n)])


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear whose weight is rounded (the head is the embedding table: one entry, `lm_head`)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def format_bytes(model: nn.Module, fmt: str) -> int:
    """Bytes of the model's weights in a format: rounded matrices (the tied table once) and float32 norms."""
    kind, bits, group = FORMATS[fmt] if fmt in FORMATS else ("float32", 32, None)
    norms = sum(p.numel() * 4 for n, p in model.named_parameters() if "norm" in n)
    total_bits = 0
    for m in linears(model).values():
        out_features, in_features = m.weight.shape
        if kind in ("float32", "bf16"):
            total_bits += m.weight.numel() * bits
        else:  # the values, and one 16-bit scale per group
            total_bits += m.weight.numel() * bits + out_features * (in_features // (group or in_features)) * 16
    return norms + total_bits // 8


def weight_error(model: nn.Module, fmt: str) -> float:
    """||w_q - w|| / ||w|| over every rounded matrix (the tied table once)."""
    err2 = ref2 = 0.0
    for m in linears(model).values():
        w = m.weight.detach()
        q = round_weight(w, *FORMATS[fmt])
        err2 += float((q - w).double().pow(2).sum())
        ref2 += float(w.double().pow(2).sum())
    return math.sqrt(err2 / ref2)


@torch.no_grad()
def measure(model, rows: torch.Tensor) -> dict:
    originals = {name: m.weight.detach().clone() for name, m in linears(model).items()}
    ref = torch.cat([model(r[None])[0, :-1].log_softmax(-1) for r in rows])  # [N, vocab]
    targets = rows[:, 1:].reshape(-1)
    results = {}
    for name, (kind, bits, group) in FORMATS.items():
        error = weight_error(model, name)
        for lname, m in linears(model).items():
            m.weight.copy_(round_weight(originals[lname], kind, bits, group))
        got = torch.cat([model(r[None])[0, :-1].log_softmax(-1) for r in rows])
        for lname, m in linears(model).items():
            m.weight.copy_(originals[lname])
        kl = float((ref.exp() * (ref - got)).sum(-1).mean())
        top1 = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
        nll = float(-got.gather(-1, targets[:, None]).mean())
        results[name] = dict(weight_error=error, kl=kl, top1_agreement=top1, perplexity=math.exp(nll),
                             bytes=format_bytes(model, name))
        print(f"{name:40s} weight err {error:.4f}  KL {kl:.5f}  top-1 {top1:.3f}  "
              f"ppl {results[name]['perplexity']:.2f}  {results[name]['bytes'] / 1e6:.0f} MB", flush=True)
    nll = float(-ref.gather(-1, targets[:, None]).mean())
    results["float32"] = dict(weight_error=0.0, kl=0.0, top1_agreement=1.0, perplexity=math.exp(nll),
                              bytes=format_bytes(model, "float32"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = g3.load_pretrained("270m", fast=False)
    rows = text_rows(tok)
    print(f"{rows.shape[0]} rows of {ROW} tokens from {TEXT.name}")
    results = measure(model, rows)
    Path(args.out).write_text(json.dumps(dict(text=TEXT.name, rows=rows.shape[0], row_tokens=ROW,
                                              formats=results), indent=1) + "\n")


if __name__ == "__main__":
    main()
