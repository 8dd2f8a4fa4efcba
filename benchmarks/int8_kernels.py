"""int8 weight-only matrix-vector kernels for inductor on the CPU: batch-1 decode products of the 270M.

    python benchmarks/int8_kernels.py [--runs 11] [--threads N] [--shapes head,q,kv,o,gate,down] [--save benchmarks/results/int8_kernels.json]

What it measures: y = x @ w.T for one float32 vector x and an int8 weight w [out, in], in the
shapes of the real 270M (the tied head 262,144 x 640; a layer's q 1024 x 640, k and v 256 x 640,
o 640 x 1024, gate and up 2048 x 640, down 640 x 2048), for three storage formats: one bfloat16
scale per row (the library's int8), groups of 32 inputs with a bfloat16 or a float32 scale, and
groups of 32 with a scale and a bfloat16 "min" (w = q * scale + min per group). Every candidate is
plain PyTorch under torch.compile (inductor, as in the compiled decode step), timed in turn with
the others in one process (`common.median_times`: medians, so a slow spell of this shared machine
hits all alike):

- reference: a plain float32 sum over the same bytes (the memory bound) and float32 `F.linear`;
- before: `quantize.quantized_matvec` as it was (a copy here: each row one chain of dependent vector
  adds, latency-bound; with groups, a sum per group then the scales). The library now uses
  "rows x4" (per row) and "rows x4, scale in the sum" (groups);
- split in-row: the reduction of a row viewed as [out, 4, in/4] and summed twice (inductor still
  runs the 4 parts one after another: no gain);
- rows x P: the rows cut into P blocks (a view, no new layout), one sum per block, concatenated:
  inductor fuses the P reductions into one loop with P independent accumulators;
- tile16 (x P): a layout [out/16, in, 16] made at quantize time, a vector lane per output row and
  the reduction over `in` (x P: P blocks of tiles fused as above);
- groups: the scale applied per element inside one flat reduction, or per group after group sums;
- int8 activations: x quantized symmetric per tensor, `torch._int_mm` (int32 accumulation) and an
  int32 reduction under inductor (their error is that of the activation rounding, reported apart);
- `torch._weight_int8pack_mm` (aten's weight-only int8 op, per-row scales), and inductor's
  `cpp.simdlen=256` on the kernel from before.

So that a small layer's weights are read from memory, not from cache, as in a whole decode step,
each timed call runs the product over enough copies of the weights to make >= 64 MB. Every
candidate's output is checked against float64 x @ dequantize(...).T first (max abs error printed;
weight-only candidates must be within float32 rounding: asserted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from common import median_times  # noqa: E402

from gemma3_minimal.quantize import quantize_tensor  # noqa: E402

SHAPES = {"head": (262_144, 640), "q": (1024, 640), "kv": (256, 640), "o": (640, 1024),
          "gate": (2048, 640), "down": (640, 2048)}
LAYER = {"q": 1, "kv": 2, "o": 1, "gate": 2, "down": 1}  # one layer: k and v, gate and up share a shape
G = 32
MIN_BYTES = 128 << 20


# ---- candidates: per-row scale [out, 1] ---------------------------------------------------------

def one_chain_per_row(x, data, scale):
    """quantize.quantized_matvec for int8 before this benchmark: per group a sum, then the scales."""
    out, groups = scale.shape
    xg = x.reshape(*x.shape[:-1], 1, groups, -1)
    return ((xg * data.view(out, groups, -1).float()).sum(-1) * scale.float()).sum(-1)


def split_in_row(x, data, scale, parts=4):
    """Each row's reduction as [parts, in/parts], summed twice."""
    out = data.shape[0]
    return (x.reshape(1, 1, parts, -1) * data.view(out, parts, -1).float()).sum(-1).sum(-1) * scale.float().squeeze(-1)


def rows_blocks(x, data, scale, parts=4):
    """P blocks of rows (a view), one reduction each: fused into one loop, P accumulators."""
    out, groups = scale.shape
    d = data.view(parts, out // parts, groups, -1)
    s = scale.view(parts, out // parts, groups, 1)
    xg = x.reshape(1, groups, -1)
    return torch.cat([(xg * d[i].float() * s[i].float()).sum((-1, -2)) for i in range(parts)], -1)


def rows_blocks_group_sums(x, data, scale, parts=4):
    """As rows_blocks, each group summed first, then scaled (the order quantized_matvec uses)."""
    out, groups = scale.shape
    d = data.view(parts, out // parts, groups, -1)
    s = scale.view(parts, out // parts, groups)
    xg = x.reshape(1, groups, -1)
    return torch.cat([((xg * d[i].float()).sum(-1) * s[i].float()).sum(-1) for i in range(parts)], -1)


def rows_blocks_min(x, data, scale, mins, parts=4):
    """w = q * s + m per group, dequantized in registers inside one flat reduction."""
    out, groups = scale.shape
    d = data.view(parts, out // parts, groups, -1)
    s, m = scale.view(parts, out // parts, groups, 1), mins.view(parts, out // parts, groups, 1)
    xg = x.reshape(1, groups, -1)
    return torch.cat([(xg * (d[i].float() * s[i].float() + m[i].float())).sum((-1, -2)) for i in range(parts)], -1)


def rows_blocks_min_apart(x, data, scale, mins, parts=4):
    """y = sum_g s_g (x_g . q_g) + m_g sum(x_g): the min term as a second small reduction."""
    out, groups = scale.shape
    xg = x.reshape(1, groups, -1)
    return rows_blocks(x, data, scale, parts) + (mins.float() * xg.sum(-1)).sum(-1)


def to_tiles(t: torch.Tensor, parts: int = 1) -> torch.Tensor:
    """[out, n] -> [parts, out / parts / 16, n, 16]: 16 consecutive rows interleaved."""
    out, n = t.shape
    return t.reshape(parts, out // parts // 16, 16, n).transpose(2, 3).contiguous()


def tiled(x, tiles, stiles):
    """tiles [P, out/P/16, in, 16], scales [P, out/P/16, groups, 16]: lanes run over output rows."""
    parts, _, k, _ = tiles.shape
    groups = stiles.shape[2]
    xg = x.reshape(1, groups, k // groups, 1)
    return torch.cat([(xg * tiles[i].float().view(-1, groups, k // groups, 16)
                       * stiles[i].float().view(-1, groups, 1, 16)).sum((1, 2)).reshape(-1)
                      for i in range(parts)], -1)


def woq_int8pack(x, data, scale32):
    return torch._weight_int8pack_mm(x, data, scale32)


def quantize_activation(x):
    sx = x.abs().amax() / 127
    return torch.round(x / sx).to(torch.int8), sx


def int_mm(x, data, scale):
    xq, sx = quantize_activation(x)
    return torch._int_mm(xq, data.t()).float() * (sx * scale.float().squeeze(-1))


def int32_reduction(x, data, scale):
    xq, sx = quantize_activation(x)
    return (xq.to(torch.int32) * data.to(torch.int32)).sum(-1).float() * (sx * scale.float().squeeze(-1))


# ---- the run ------------------------------------------------------------------------------------

HEAD_ONLY = ("before, cpp.simdlen=256", "split in-row [out, 4, in/4]", "tile16 layout", "_weight_int8pack_mm",
             "int8 x: torch._int_mm", "int8 x: int32 reduction")  # slower on the head: not repeated on the small shapes
HEAD_ONLY_GROUPS = ("rows x4, group sums then scale", "tile16 layout x4")  # the same, in the formats with groups
PER_ROW = "int8 per row, bfloat16 scale"


def batched(fn: Callable, n: int, compile_: bool = True, **config) -> Callable:
    """One graph of n independent products: g(xs, stack) = [fn(xs[i], *stack[i])], compiled as in the
    decode step (one call, many kernels), so a small product is not timed with a call's overhead.
    `config` patches inductor's config while the first call compiles."""
    def g(xs, stack):
        return [fn(x, *ws) for x, ws in zip(xs, stack)]
    if not compile_:
        return g
    g = types.FunctionType(g.__code__.replace(), g.__globals__, closure=g.__closure__)  # a code object (and
    # dynamo cache) of its own per candidate: no recompilation limit, no walk through the others' guards
    c = torch.compile(g, fullgraph=True, dynamic=False)
    done = []

    def call(xs, stack):
        if not done:
            done.append(1)
            with torch._inductor.config.patch(config):
                return c(xs, stack)
        return c(xs, stack)
    return call


def min_format(w: torch.Tensor):
    """int8 in groups of 32 with a bfloat16 min per group (the group mean) and a bfloat16 scale."""
    out, k = w.shape
    m = w.view(out, k // G, G).mean(-1).to(torch.bfloat16)
    qt = quantize_tensor((w.view(out, k // G, G) - m.float()[..., None]).view(out, k), 8, G)
    return qt, m.contiguous()


def candidates(w: torch.Tensor):
    """{format: {candidate: (fn(x, *weights), weights, weight bytes, weight-only?, inductor config)}},
    the dequantized weight of each format, and the int8 bytes for the plain-sum reference."""
    out, k = w.shape
    q = quantize_tensor(w, 8, None)
    g16 = quantize_tensor(w, 8, G)
    g32 = quantize_tensor(w, 8, G, scale_dtype=torch.float32)
    gm, mins = min_format(w)
    nb = lambda *ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    qmv = one_chain_per_row
    row = (q.data, q.scale)
    per_row = {
        "float32 F.linear": (F.linear, (w,), nb(w), True, None),
        "before (one chain per row)": (qmv, row, nb(*row), True, {}),
        "before, cpp.simdlen=256": (qmv, row, nb(*row), True, {"cpp.simdlen": 256}),
        "split in-row [out, 4, in/4]": (split_in_row, row, nb(*row), True, {}),
        "rows x4 (view)": (lambda x, d, s: rows_blocks_group_sums(x, d, s, 4), row, nb(*row), True, {}),
        "rows x8 (view)": (lambda x, d, s: rows_blocks_group_sums(x, d, s, 8), row, nb(*row), True, {}),
        "tile16 layout": (tiled, (to_tiles(q.data), to_tiles(q.scale)), nb(*row), True, {}),
        "tile16 layout x4": (tiled, (to_tiles(q.data, 4), to_tiles(q.scale, 4)), nb(*row), True, {}),
        "_weight_int8pack_mm": (woq_int8pack, (q.data, q.scale.float().squeeze(-1).contiguous()), nb(*row), True, {}),
        "int8 x: torch._int_mm": (int_mm, row, nb(*row), False, {}),
        "int8 x: int32 reduction": (int32_reduction, row, nb(*row), False, {}),
    }
    groups = {"before (one chain per row)": (qmv, "rows"),
              "rows x4, scale in the sum": (lambda x, d, s: rows_blocks(x, d, s, 4), "rows"),
              "rows x4, group sums then scale": (lambda x, d, s: rows_blocks_group_sums(x, d, s, 4), "rows"),
              "tile16 layout x4": (tiled, "tiles")}
    formats = {"int8 per row, bfloat16 scale": per_row}
    for label, qt in (("int8 groups of 32, bfloat16 scales", g16), ("int8 groups of 32, float32 scales", g32)):
        formats[label] = {c: (fn, (qt.data, qt.scale) if how == "rows" else (to_tiles(qt.data, 4), to_tiles(qt.scale, 4)),
                              nb(qt.data, qt.scale), True, {}) for c, (fn, how) in groups.items()}
    gmw = (gm.data, gm.scale, mins)
    formats["int8 groups of 32 + bfloat16 min"] = {
        "rows x4, q * s + m in the sum": (lambda x, d, s, m: rows_blocks_min(x, d, s, m, 4), gmw, nb(*gmw), True, {}),
        "rows x4, min term apart": (lambda x, d, s, m: rows_blocks_min_apart(x, d, s, m, 4), gmw, nb(*gmw), True, {}),
    }
    refs = {"int8 per row, bfloat16 scale": q.dequantize(), "int8 groups of 32, bfloat16 scales": g16.dequantize(),
            "int8 groups of 32, float32 scales": g32.dequantize(),
            "int8 groups of 32 + bfloat16 min": gm.dequantize() + mins.float().repeat_interleave(G, dim=1)}
    return formats, refs, q.data


def run_shape(name: str, runs: int, per_graph: int) -> dict:
    out, k = SHAPES[name]
    torch.manual_seed(0)
    w = torch.randn(out, k) * 0.02
    x = torch.randn(1, k)
    formats, refs, int8 = candidates(w)
    n = 1 if out * k >= MIN_BYTES else per_graph  # products per compiled graph
    calls = max(1, -(-MIN_BYTES // (out * k * n)))  # graphs per timed call
    copies = n * calls
    xs = [x] + [torch.randn(1, k) for _ in range(n - 1)]
    results, stacks, fns, meta = {}, {}, {}, {}
    with torch.no_grad():
        for fmt, cands in formats.items():
            for cand, (fn, weights, nbytes, weight_only, config) in cands.items():
                if name != "head" and (cand in HEAD_ONLY or (fmt != PER_ROW and cand in HEAD_ONLY_GROUPS)):
                    continue
                exact = x.double() @ (w if cand.startswith("float32") else refs[fmt]).double().T
                bound = (x.abs().double() @ refs[fmt].abs().double().T).max().item()
                ids = tuple(t.data_ptr() for t in weights)  # candidates reading the same tensors share the copies
                if ids not in stacks:
                    stacks[ids] = [weights] + [tuple(t.clone() for t in weights) for _ in range(copies - 1)]
                stack = stacks[ids]
                g = batched(fn, n, config is not None, **(config or {}))
                err = (g(xs, stack[:n])[0].double() - exact).abs().max().item()  # the first call compiles
                if weight_only:
                    assert err <= 2**-20 * bound, (name, fmt, cand, err, bound)
                key = f"{fmt} | {cand}"
                fns[key] = lambda g=g, stack=stack: [g(xs, stack[i:i + n]) for i in range(0, copies, n)]
                meta[key] = dict(format=fmt, candidate=cand, bytes=nbytes, max_abs_error=err,
                                 relative_error=err / exact.abs().max().item())
        as_float = int8.view(torch.float32)
        sums = [as_float] + [as_float.clone() for _ in range(copies - 1)]
        ref_key = "reference | float32 sum over the same bytes"
        fns[ref_key] = lambda: [t.sum() for t in sums]
        meta[ref_key] = dict(format="reference", candidate="float32 sum over the same bytes", bytes=int8.numel(),
                             max_abs_error=0.0, relative_error=0.0)
        times = median_times(fns, runs)
    for key, m in meta.items():
        t = times[key] / copies
        results[key] = dict(m, ms=t * 1e3, gb_per_s=m["bytes"] / t / 1e9)
    return dict(shape=[out, k], products_per_graph=n, copies=copies, results=results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--per-graph", type=int, default=4, help="small products per compiled graph")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 keeps a busy machine's other work out of the kernels' barriers")
    parser.add_argument("--save", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}: use some of {', '.join(SHAPES)}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; medians of {args.runs}")
    report = dict(runs=args.runs, threads=torch.get_num_threads(), load_average_before=os.getloadavg(), shapes={})
    for name in shapes:
        r = run_shape(name, args.runs, args.per_graph)
        report["shapes"][name] = r
        print(f"\n## {name} {r['shape'][0]} x {r['shape'][1]} ({r['products_per_graph']} per graph, {r['copies']} "
              f"copies per timed call), load average {os.getloadavg()[0]:.1f}")
        fmt = None
        for v in r["results"].values():
            if v["format"] != fmt:
                fmt = v["format"]
                print(f"# {fmt}")
            print(f"  {v['candidate']:34s} {v['ms']:9.4f} ms {v['gb_per_s']:6.1f} GB/s  max abs error "
                  f"{v['max_abs_error']:.2e} (relative {v['relative_error']:.1e})")
    if all(s in shapes for s in LAYER):  # one layer's seven products, for candidates measured in every shape
        keys = set.intersection(*(set(report["shapes"][s]["results"]) for s in LAYER))
        layer = {k: sum(n * report["shapes"][s]["results"][k]["ms"] for s, n in LAYER.items()) for k in sorted(keys)}
        report["one_layer_ms"] = layer
        print("\n## one layer (q, k, v, o, gate, up, down)")
        for k, v in layer.items():
            print(f"  {k:75s} {v:8.4f} ms")
    report["load_average_after"] = os.getloadavg()
    if args.save:
        Path(args.save).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
