"""Greedy decode of the real Gemma 3 270M: our float32 and quantized models against transformers and llama.cpp.

    python benchmarks/quantized_decode.py [--runs 5] [--new-tokens 64] [--save benchmarks/results/quantized_decode.json]
                                          [--llamacpp-python /work/llama-venv/bin/python]

Batch 1, CPU, one run: the models are timed in turn within each repetition (`median_times`),
so a slow spell of this shared machine hits all alike. Ours decode with `generate_ids(compile=True)`
(a static cache and one compiled step, compiled before timing): for the quantized models each
product of that step is a call to the hand-written int4 or int8 CPU kernel (`cpu_kernels.py`), or,
with GEMMA3_MINIMAL_CPU_KERNELS=0, inductor's fused product (`quantize.quantized_matvec`).
Decode tokens/s counts only the new tokens: each model's prefill of the prompt is timed apart and
subtracted. The bound of each format is its bytes of weights per token at the measured bandwidth.
Agreement: the share of greedy tokens equal to our float32 model's (same prompt).

With `--llamacpp-python` (an interpreter of a benchmark-only environment with llama-cpp-python, see
`llamacpp_decode.py`), llama.cpp decodes the same prompt ids from the same GGUF in a process of its
own, timed in turn with the others in every repetition; it reports its decode time without the
prompt, and its bytes per token are the GGUF's tensor bytes (each read once per token).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import median_times, read_bandwidth  # noqa: E402
from decode import PROMPT, hf_decode, ours_decode  # noqa: E402

import gemma3_minimal as g3  # noqa: E402
from gemma3_minimal.course.reference import load_reference  # noqa: E402
from gemma3_minimal.gguf_checkpoint import read_tensors  # noqa: E402
from gemma3_minimal.quantize import quantized_bytes  # noqa: E402

FORMATS = ("float32", "int8", "int4", "gguf-int8")
LLAMACPP = "llama.cpp"


class LlamaCpp:
    """llama.cpp serving timed greedy decodes from its own environment (`llamacpp_decode.py --serve`)."""

    def __init__(self, python: str):
        script = os.path.join(os.path.dirname(__file__), "llamacpp_decode.py")
        self.proc = subprocess.Popen([python, script, "--serve", "--gguf", str(g3.assets.gguf_path())],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.decode_s: list[float] = []  # each decode's seconds, without the prompt

    def decode(self, ids: list[int], new_tokens: int) -> list[int]:
        self.proc.stdin.write(json.dumps(dict(ids=ids, new_tokens=new_tokens)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"llama.cpp's process ended (exit status {self.proc.wait()}): see its messages above")
        reply = json.loads(line)
        self.decode_s.append(reply["decode_s"])
        return reply["tokens"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--save", default=None, help="write the figures as JSON here")
    parser.add_argument("--llamacpp-python", default=None,
                        help="an interpreter with llama-cpp-python: time llama.cpp in the same run")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help="ours to time, comma-separated (float32 is always loaded: the agreement's reference)")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    bandwidth = read_bandwidth()
    print(f"memory read bandwidth (best of a sum and a matrix-vector product over 1 GiB): {bandwidth / 1e9:.1f} GB/s")
    formats = ("float32", *[f for f in args.formats.split(",") if f != "float32"])
    unknown = set(formats) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}: choose among {', '.join(FORMATS)}")
    models = {}
    for fmt in formats:
        models[fmt], tok = g3.load_pretrained("270m", quantize=None if fmt == "float32" else fmt)
    hf, _ = load_reference()
    llama = LlamaCpp(args.llamacpp_python) if args.llamacpp_python else None
    ids = torch.tensor([tok.encode(PROMPT, add_bos=True)])
    n = args.new_tokens
    with torch.no_grad():
        tokens = {fmt: ours_decode(m, ids, n, compile=True) for fmt, m in models.items()}  # compiles each step
        tokens["transformers"] = hf_decode(hf, ids, n)
        fns = {f"pre_{fmt}": (lambda m=m: m(ids, m.new_cache(ids.shape[1]), last_only=True)) for fmt, m in models.items()}
        fns.update({fmt: (lambda m=m: ours_decode(m, ids, n, compile=True)) for fmt, m in models.items()})
        fns["pre_transformers"] = lambda: hf(ids, use_cache=True, logits_to_keep=1)
        fns["transformers"] = lambda: hf_decode(hf, ids, n)
        if llama:
            tokens[LLAMACPP] = llama.decode(ids[0].tolist(), n)
            fns[LLAMACPP] = lambda: llama.decode(ids[0].tolist(), n)
        t = median_times(fns, args.runs)
    rows = {}
    for name in (*formats, "transformers"):
        rate = n / (t[name] - t[f"pre_{name}"])
        nbytes = quantized_bytes(models[name] if name in models else hf)
        agree = sum(a == b for a, b in zip(tokens[name], tokens["float32"])) / n
        rows[name] = dict(tokens_per_s=rate, weight_bytes=nbytes, bound_tokens_per_s=bandwidth / nbytes,
                          greedy_agreement_with_float32=agree)
    if llama:
        llama.close()
        rate = n / statistics.median(llama.decode_s[-args.runs:])  # the timed runs, after the warm-up
        nbytes = sum(t.n_bytes for t in read_tensors(g3.assets.gguf_path()))
        agree = sum(a == b for a, b in zip(tokens[LLAMACPP], tokens["float32"])) / n
        rows[LLAMACPP] = dict(tokens_per_s=rate, weight_bytes=nbytes, bound_tokens_per_s=bandwidth / nbytes,
                              greedy_agreement_with_float32=agree)
    hf_rate = rows["transformers"]["tokens_per_s"]
    print(f"\nprompt {ids.shape[1]} tokens, {n} new tokens, median of {args.runs} runs (taken in turn)")
    print(f"{'model':14s} {'tok/s':>8s} {'x hf':>6s} {'MB/token':>9s} {'bound':>8s} {'of bound':>8s} {'greedy = f32':>12s}")
    for name, r in rows.items():
        label = name if name in ("transformers", LLAMACPP) else f"ours {name}"
        print(f"{label:14s} {r['tokens_per_s']:8.1f} {r['tokens_per_s'] / hf_rate:5.2f}x {r['weight_bytes'] / 1e6:9.0f} "
              f"{r['bound_tokens_per_s']:8.1f} {r['tokens_per_s'] / r['bound_tokens_per_s']:8.0%} "
              f"{r['greedy_agreement_with_float32']:12.0%}")
    targets = [f"{fmt} {rows[fmt]['tokens_per_s'] / hf_rate:.2f}x transformers (target 5x)"
               for fmt in ("int8", "gguf-int8") if fmt in rows]  # gguf-int8: the int8 format with top-1 >= 99%
    if LLAMACPP in rows and "int4" in rows:
        targets.append(f"int4 {rows['int4']['tokens_per_s'] / rows[LLAMACPP]['tokens_per_s']:.2f}x llama.cpp (target 1x)")
    if targets:
        print("targets: " + "; ".join(targets))
    if args.save:
        with open(args.save, "w") as f:
            json.dump(dict(bandwidth_bytes_per_s=bandwidth, new_tokens=n, runs=args.runs, rows=rows,
                           torch=torch.__version__, threads=torch.get_num_threads()), f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
