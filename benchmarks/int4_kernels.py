"""int4 matrix-vector kernels for inductor on the CPU: the 270M's 262,144 x 640 head, batch 1.

    python benchmarks/int4_kernels.py [--runs 7] [--out benchmarks/results/int4_kernels.json]

Each candidate is plain PyTorch under torch.compile (as in the compiled decode step), timed in turn
with the others in one process (medians), so a slow spell of this shared machine hits all alike:

- float32: the library's blocked product (`fast.blocked_matvec`, column-major weight), for scale;
- int8 per row and int4 in groups of 32: the library's `quantize.quantized_matvec` as it is when
  the script runs (its first saved run, `int4_kernels.json`: per-group sums, int4 unpacked with
  arithmetic shifts `(p << 4) >> 4` and `p >> 4`; since `int4_kernels_rowblocks.json`: rows read as
  4 blocks, int4 read via XOR, each product scaled inside one sum over the row);
- int4 unsigned: nibbles stored as q + 8 in 0..15 (uint8), unpacked with `p & 15` and `p >> 4`
  (logical shift, no sign work); the offset comes back once per group as `- 8 * s * sum(x_group)`;
  the same kernel serves asymmetric int4 (scale and min per group, as GGUF's Q4_K):
  w = q * s + m  =>  x . w = s * (x . q) + m * sum(x_group);
- int4 signed layout read via XOR: the library's bytes XOR 0x88 are both nibbles plus 8 (a 4-bit
  two's complement n XOR 8 is n + 8), then as unsigned;
- int4 unsigned, one reduction: the two nibble planes multiplied and summed as one [G] vector.

Every kernel's result is checked against x @ w_dequantized.T before timing.
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

from gemma3_minimal.fast import blocked_matvec  # noqa: E402
from gemma3_minimal.cpu_kernels import int4_matvec, kernels_work  # noqa: E402
from gemma3_minimal.quantize import quantize_tensor, quantized_matvec  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "int4_kernels.json"
N, K, G = 262_144, 640, 32


def quantize_unsigned(w: torch.Tensor, group: int, asymmetric: bool):
    """uint8 [out, in/2] (element j of a group in the low nibble of byte j, j + G/2 in the high one),
    scales s and mins m [out, groups] (bfloat16) with w ~ q * s + m, q in 0..15."""
    out_features, in_features = w.shape
    g = w.float().reshape(out_features, in_features // group, group)
    if asymmetric:
        lo, hi = g.amin(-1), g.amax(-1)
        s = ((hi - lo) / 15).to(torch.bfloat16)
        m = lo.to(torch.bfloat16)
    else:  # symmetric: q - 8 in -7..7, the min is -8 s
        s = (g.abs().amax(-1) / 7).to(torch.bfloat16)
        m = (-8 * s.float()).to(torch.bfloat16)
    safe = torch.where(s > 0, s, torch.ones_like(s)).float()
    q = torch.round((g - m.float()[..., None]) / safe[..., None]).clamp_(0, 15).to(torch.uint8)
    half = group // 2
    data = (q[..., :half] | (q[..., half:] << 4)).reshape(out_features, in_features // 2)
    return data.contiguous(), s.contiguous(), m.contiguous()


def dequantize_unsigned(data, s, m):
    out_features, groups = s.shape
    p = data.view(out_features, groups, -1)
    q = torch.cat([p & 15, p >> 4], dim=-1).float()
    return (q * s.float()[..., None] + m.float()[..., None]).reshape(out_features, -1)


def matvec_unsigned(x, data, s, m):
    """Two nibble planes, per-group sums, then s and m per group."""
    out_features, groups = s.shape
    xg = x.reshape(*x.shape[:-1], 1, groups, -1)
    p = data.view(out_features, groups, -1)
    half = p.shape[-1]
    partial = (xg[..., :half] * (p & 15).float()).sum(-1) + (xg[..., half:] * (p >> 4).float()).sum(-1)
    xsum = xg.sum(-1)  # [..., 1, groups]
    return (partial * s.float() + xsum * m.float()).sum(-1)


def matvec_signed_via_xor(x, data, scale):
    """The library's signed layout read as unsigned: a 4-bit two's complement n XOR 8 is n + 8 in
    0..15, so byte ^ 0x88 holds both nibbles offset by 8; the offset returns as -8 * s * sum(x_group)."""
    out_features, groups = scale.shape
    xg = x.reshape(*x.shape[:-1], 1, groups, -1)
    p = data.view(torch.uint8).view(out_features, groups, -1) ^ 0x88
    half = p.shape[-1]
    partial = (xg[..., :half] * (p & 15).float()).sum(-1) + (xg[..., half:] * (p >> 4).float()).sum(-1)
    return ((partial - 8 * xg.sum(-1)) * scale.float()).sum(-1)


def matvec_unsigned_one_reduction(x, data, s, m):
    """As matvec_unsigned, the two planes concatenated into one [G] reduction per group."""
    out_features, groups = s.shape
    xg = x.reshape(*x.shape[:-1], 1, groups, -1)
    p = data.view(out_features, groups, -1)
    q = torch.cat([p & 15, p >> 4], dim=-1).float()
    return ((xg * q).sum(-1) * s.float() + xg.sum(-1) * m.float()).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.manual_seed(0)
    w = torch.randn(N, K) * 0.02
    x = torch.randn(1, K)
    column_major = w.t().contiguous().t()
    q8 = quantize_tensor(w, 8, None)
    q4 = quantize_tensor(w, 4, G)
    sym = quantize_unsigned(w, G, asymmetric=False)
    asym = quantize_unsigned(w, G, asymmetric=True)
    compile_ = lambda f: torch.compile(f, fullgraph=True, dynamic=False)  # noqa: E731
    k8, k4 = compile_(quantized_matvec), compile_(quantized_matvec)
    ku, ku1, kx = compile_(matvec_unsigned), compile_(matvec_unsigned_one_reduction), compile_(matvec_signed_via_xor)
    fns = {
        "float32 blocked (fast.blocked_matvec)": (lambda: blocked_matvec(x, column_major), w),
        "int8 per row (quantized_matvec)": (lambda: k8(x, q8.data, q8.scale, 8), q8.dequantize()),
        "int4 groups of 32 (quantized_matvec, library)": (lambda: k4(x, q4.data, q4.scale, 4), q4.dequantize()),
        "int4 signed layout read via ^ 0x88, & and >>": (lambda: kx(x, q4.data, q4.scale), q4.dequantize()),
        "int4 unsigned & and >>, symmetric": (lambda: ku(x, *sym), dequantize_unsigned(*sym)),
        "int4 unsigned & and >>, asymmetric (scale, min)": (lambda: ku(x, *asym), dequantize_unsigned(*asym)),
        "int4 unsigned, one reduction per group": (lambda: ku1(x, *sym), dequantize_unsigned(*sym)),
    }
    if kernels_work():
        fns["int4 groups of 32, hand-written C (cpu_kernels)"] = (lambda: int4_matvec(x, q4.data, q4.scale, G), q4.dequantize())
    with torch.no_grad():
        for name, (fn, wq) in fns.items():
            torch.testing.assert_close(fn(), x @ wq.T, atol=1e-3, rtol=1e-3)  # also compiles
        errors = {name: float((wq - w).norm() / w.norm()) for name, (_, wq) in fns.items()}
        t = median_times({name: fn for name, (fn, _) in fns.items()}, args.runs)
    nbytes = {name: (w.numel() * 4 if name.startswith("float32") else
                     q8.nbytes() if name.startswith("int8") else
                     q4.nbytes() + (asym[2].numel() * 2 if "asymmetric" in name else 0))
              for name in fns}
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {N} x {K}, one vector, median of {args.runs}")
    for name in fns:
        print(f"{name:50s} {t[name] * 1e3:8.2f} ms  {nbytes[name] / 1e6:7.1f} MB  {nbytes[name] / t[name] / 1e9:6.1f} GB/s  "
              f"weight error {errors[name]:.4f}")
    Path(args.out).write_text(json.dumps(dict(shape=[N, K], group=G, runs=args.runs, load_average=load,
                                              ms={k: v * 1e3 for k, v in t.items()}, bytes=nbytes,
                                              weight_error=errors), indent=1) + "\n")


if __name__ == "__main__":
    main()
