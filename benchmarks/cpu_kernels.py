"""The hand-written CPU kernels against inductor's fused products, on the real 270M's quantized weights.

    python benchmarks/cpu_kernels.py [--runs 11] [--formats int4,int8,gguf-int8] [--save benchmarks/results/cpu_kernels.json]

For each format, the weights of `load_model("270m", quantize=fmt)`, one float32 vector per product
(batch-1 decoding), 2 threads unless OMP_NUM_THREADS says otherwise:

- head: the tied 262,144 x 640 head alone;
- layers: the 126 products of the 18 layers (q, k, v, o, gate, up, down), one after another, as a
  step runs them (about 50-100 MB: read from memory, not from cache);
- C: `cpu_kernels.int4_matvec` / `int8_matvec`, called eagerly (the compiled step calls the same operators);
- inductor: `quantize.quantized_matvec` (+ `min_term` for gguf-int8's Q4_K mins) under torch.compile,
  all the layers' products in one compiled function, as in the step before the kernels;
- memory: a plain sum over as many bytes (float32), this machine's speed of reading them.

Timed in turn within each repetition (`common.median_times`: medians), so a slow spell of this
shared machine hits all alike. Each kernel's result is checked against the dequantized product first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import median_times  # noqa: E402

import gemma3_minimal as g3  # noqa: E402
from gemma3_minimal.cpu_kernels import int4_matvec, int8_matvec, kernels_work  # noqa: E402
from gemma3_minimal.quantize import QuantLinear, min_term, quantized_matvec  # noqa: E402


def kernel(m: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    if m.bits == 4:
        return int4_matvec(x, m.qweight, m.scale, m.group_size)
    return int8_matvec(x, m.qweight, m.scale, m.min, m.group_size)


def fused(m: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    y = quantized_matvec(x, m.qweight, m.scale, m.bits)
    return y if m.min is None else y + min_term(x, m.min)


def nbytes(linears: list[QuantLinear]) -> int:
    return sum(b.numel() * b.element_size() for m in linears for b in m.buffers())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--formats", default="int4,int8,gguf-int8")
    parser.add_argument("--save", default=None)
    args = parser.parse_args()
    if not kernels_work():
        sys.exit("the CPU kernels did not build here: see the warning above")
    torch.manual_seed(0)
    fns, sizes = {}, {}
    for fmt in args.formats.split(","):
        model = g3.load_model("270m", quantize=fmt)
        head = model.lm_head
        layers = [m for m in model.model.layers.modules() if isinstance(m, QuantLinear)]
        inputs = {id(m): torch.randn(1, m.in_features) for m in [head, *layers]}
        compiled_head = torch.compile(lambda x, m=head: fused(m, x), fullgraph=True)
        compiled_layers = torch.compile(lambda ls=layers, xs=inputs: [fused(m, xs[id(m)]) for m in ls], fullgraph=True)
        with torch.no_grad():
            for m in [head, *layers]:
                x = inputs[id(m)]
                ref = x @ m.dequantized_weight().T
                torch.testing.assert_close(kernel(m, x), ref, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(compiled_head(inputs[id(head)]), kernel(head, inputs[id(head)]), atol=1e-4, rtol=1e-4)
        for part, linears in (("head", [head]), ("layers", layers)):
            sizes[f"{fmt} {part}"] = nbytes(linears)
            floats = torch.ones(sizes[f"{fmt} {part}"] // 4)
            fns[f"{fmt} {part}: C"] = lambda ls=linears, xs=inputs: [kernel(m, xs[id(m)]) for m in ls]
            fns[f"{fmt} {part}: inductor"] = ((lambda f=compiled_head, x=inputs[id(head)]: f(x)) if part == "head"
                                              else compiled_layers)
            fns[f"{fmt} {part}: memory"] = lambda f=floats: f.sum()
    with torch.no_grad():
        t = median_times(fns, args.runs)
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {torch.get_num_threads()} threads; median of {args.runs}")
    print(f"{'weights':20s} {'MB':>6s} {'C: ms, GB/s':>16s} {'inductor':>16s} {'plain read':>16s}   inductor / C")
    for key, size in sizes.items():
        ms = {k: t[f"{key}: {k}"] * 1e3 for k in ("C", "inductor", "memory")}
        cells = "".join(f" {ms[k]:7.2f} ms {size / ms[k] / 1e6:4.0f}" for k in ms)
        print(f"{key:20s} {size / 1e6:6.1f}{cells}   {ms['inductor'] / ms['C']:.2f}x")
    if args.save:
        with open(args.save, "w") as f:
            json.dump(dict(runs=args.runs, threads=torch.get_num_threads(), load_average=load, bytes=sizes,
                           ms={k: v * 1e3 for k, v in t.items()}, torch=torch.__version__), f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
