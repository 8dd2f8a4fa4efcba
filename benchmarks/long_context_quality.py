"""Does the real Gemma 3 270M use what its 3 global layers can see? The long-context notebook's runs.

Each variant reads the long text (data/kjv_genesis.txt, <bos> first) with three pass-key needles
inserted near its start, in chunks through a KV cache (`course.long_context.read_long`): the
next-token loss by position, and at chosen lengths each needle's question asked on a copy of the
cache (answer recalled or not, its log-probability, the global layers' attention by distance).

    variant     weights run as                      tokens  cache
    trained     as trained (global RoPE base 1M)    32,704  ring buffers on local layers
    all_local   every layer local (window 512)      32,704  ring buffers
    base_10k    global layers with RoPE base 10k     8,192  all-global (every layer a full buffer)
    x8          global layers with x8 interpolation  8,192  ring buffers
    far, far_x8, far_local   the text after token 2,048 pushed 40,960 positions further (beyond
                the 32K the model was trained on): as trained, with x8 interpolation, and with every
                layer local (which cannot see across the jump: the reference)   4,096  ring

`base_10k` keeps its keys in an all-global cache, which changes where keys live, not the results.
Each variant runs in its own process, which records its peak resident memory during the forward
passes over the text (glibc is told to return freed buffers at once) and its prefill time so far,
at each checkpoint. The clean ring-against-all-global comparison is `benchmarks/long_context.py`
(same length, one process after the other); the notebook reads its 16,384-token float32 run.
This script runs in bfloat16 (the released weights' dtype; 1.5x faster than float32 here), with the
softmax and the losses in float32.

    python benchmarks/long_context_quality.py                 # all variants: 34 min on 2 busy cores
    python benchmarks/long_context_quality.py --only far far_x8 far_local

Each variant shows a tqdm bar (tokens read, rate, time left); the script prints each variant's
times and the total. Measured: 34 min in all under a load average of about 9 (trained 13 min,
all_local 6, each far run 3-4, base_10k and x8 2 each); the same work ran 2-3x faster when the
machine was quieter.

Results: benchmarks/results/long_context.json (variants merged in); the notebook plots them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "long_context.json"
CONTEXT = 32_768
FAR_JUMP = (2_048, 40_960)  # (token index, extra positions) for the far variants
VARIANTS = {
    # name: (description, config changes, tokens, all-global cache, jump); 19 > 18 layers: no global layer
    "all_local": ("every layer local (window 512)", {"sliding_window_pattern": 19}, CONTEXT - 64, False, None),
    "far": ("as trained, text after token 2,048 pushed 40,960 positions on", {"max_position_embeddings": 65_536},
            4_096, False, FAR_JUMP),
    "far_x8": ("x8 interpolation, text after token 2,048 pushed 40,960 positions on",
               {"max_position_embeddings": 65_536, "rope_scaling_factor": 8.0}, 4_096, False, FAR_JUMP),
    "far_local": ("every layer local, text after token 2,048 pushed 40,960 positions on",
                  {"max_position_embeddings": 65_536, "sliding_window_pattern": 19}, 4_096, False, FAR_JUMP),
    "trained": ("as trained: global RoPE base 1M", {}, CONTEXT - 64, False, None),
    "base_10k": ("global layers with RoPE base 10k", {"rope_theta": 10_000.0}, 8_192, True, None),
    "x8": ("global layers with x8 linear interpolation", {"rope_scaling_factor": 8.0}, 8_192, False, None),
}
LABELS = ("red door", "blue box", "green gate")
NEEDLE_OFFSETS = (96, 1_400, 5_600)  # filler tokens before each needle
CHECKPOINTS = (256, 384, 512, 640, 768, 1_024, 1_536, 2_048, 3_072, 4_096, 6_144, 8_192, 12_288, 16_384,
               24_576, CONTEXT - 64)
FAR_CHECKPOINTS = (2_048, 2_560, 3_072, 4_096)
CHUNK = 1_024
LOSS_EVERY, DENSE_UNTIL = 8, 1_024  # losses at every 8th position, and at every one of the first 1,024
LOSS_EDGES = [0] + [round(2 ** (k / 2)) for k in range(8, 31)]  # 16, 23, 32, 45, ... 32,768


def read_status_kib(field: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (this benchmark needs Linux)")


class PeakMeter:
    """Peak resident memory during each forward pass over the text (not while questions are asked)."""

    def __init__(self) -> None:
        self.peaks_kib: list[int] = []

    @contextlib.contextmanager
    def __call__(self):
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        yield
        self.peaks_kib.append(read_status_kib("VmHWM"))


def needles():
    from gemma3_minimal.course.long_context import Needle

    rng = random.Random(0)
    return [Needle(label, str(rng.randrange(10_000, 100_000))) for label in LABELS]


def build_input(tok, tokens: int, jump) -> tuple[list[int], list]:
    """The text with the needles inserted, `tokens` long; the questions about them."""
    from gemma3_minimal.course import long_context as lc

    chosen = [(o, n) for o, n in zip(NEEDLE_OFFSETS, needles()) if o < (jump[0] if jump else tokens) - 200]
    extra = sum(len(lc.needle_ids(tok, n)) for _, n in chosen)
    ids, starts = lc.insert_needles(tok, lc.long_text_ids(tok, tokens - extra), chosen)
    questions = []
    for start, (_, needle) in zip(starts, chosen):
        question, answer = lc.question_ids(tok, needle)
        questions.append(lc.Question(needle, start, start + len(lc.needle_ids(tok, needle)), question, answer))
    return ids, questions


def run_variant(name: str, out: Path) -> None:
    """Read the text with one variant (in this process) and write its results to `out`."""
    import gemma3_minimal as g3
    from gemma3_minimal.course import long_context as lc

    description, changes, tokens, all_global, jump = VARIANTS[name]
    torch.manual_seed(0)
    trained, tok = g3.load_pretrained("270m", dtype=torch.bfloat16)
    model = lc.with_config(trained, **changes)
    ids, questions = build_input(tok, tokens, jump)
    checkpoints = [c for c in (FAR_CHECKPOINTS if jump else CHECKPOINTS) if c <= len(ids)]
    meter = PeakMeter()
    gc.collect()
    baseline_kib = read_status_kib("VmRSS")
    t0 = time.perf_counter()
    with tqdm(total=len(ids), desc=name, unit="tok", file=sys.stderr) as bar:
        read = lc.read_long(model, ids, checkpoints, questions, chunk=CHUNK, loss_every=LOSS_EVERY,
                            sliding=not all_global, measure=meter, progress=bar.update, jump=jump,
                            dense_until=DENSE_UNTIL)
    wall_s = time.perf_counter() - t0
    losses = read.losses.clone()
    for q in questions:  # score the text only, not the needles we put in
        losses[max(q.needle_start - 1, 0):q.needle_end] = float("nan")
    running_peak, memory = 0, []
    for (stop, prefill_s), peak_kib in zip(read.marks, meter.peaks_kib):
        running_peak = max(running_peak, peak_kib)
        if stop in checkpoints:
            memory.append({"tokens": stop, "prefill_s": round(prefill_s, 2),
                           "peak_added_bytes": (running_peak - baseline_kib) * 1024})
    longest = max(len(q.question) + len(q.answer) for q in questions)
    cfg = model.config
    result = {
        "description": description, "tokens": len(ids), "all_global_cache": all_global,
        "jump": list(jump) if jump else None,
        "config": {"rope_theta": cfg.rope_theta, "rope_scaling_factor": cfg.rope_scaling_factor,
                   "global_layers": lc.global_layers(model), "sliding_window": cfg.sliding_window},
        "needles": [{"label": q.needle.label, "key": q.needle.key, "start": q.needle_start, "end": q.needle_end}
                    for q in questions],
        "loss": {"edges": LOSS_EDGES, "mean": lc.bucket_means(losses.tolist(), LOSS_EDGES),
                 "count": [int(losses[lo:hi].isfinite().sum()) for lo, hi in zip(LOSS_EDGES[:-1], LOSS_EDGES[1:])]},
        "answers": [rounded(a) for a in read.answers],
        "memory": memory,
        "cache_bytes": g3.kv_cache_bytes(cfg, len(ids) + longest + (jump[1] if jump else 0), 2, sliding=not all_global),
        "prefill_s": round(read.prefill_s, 1), "loss_s": round(read.loss_s, 1),
        "questions_s": round(read.questions_s, 1), "wall_s": round(wall_s, 1),
    }
    lo, hi = FAR_JUMP[0], 2 * FAR_JUMP[0]  # the text the far variants read beyond the trained context
    part = losses[lo:hi]
    result["loss_far_part"] = round(float(part[part.isfinite()].mean()), 5)
    out.write_text(json.dumps(result))


def rounded(value):
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def run_in_subprocess(name: str) -> dict:
    """`run_variant` in a fresh Python (its own peak memory); its tqdm bar shows on this terminal."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
        subprocess.run([sys.executable, __file__, "--child", name, "--out", str(out)], check=True, cwd=ROOT, env=env)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run these variants (default: all)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"results file (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_variant(args.child, args.out)
        return
    names = args.only or list(VARIANTS)
    data = json.loads(args.json.read_text()) if args.json.exists() else {"variants": {}}
    t0 = time.perf_counter()
    for name in names:
        start = time.perf_counter()
        data["variants"][name] = run_in_subprocess(name)
        r = data["variants"][name]
        data.update({
            "dtype": "bfloat16", "text": "data/kjv_genesis.txt", "chunk": CHUNK,
            "loss_every": LOSS_EVERY, "dense_until": DENSE_UNTIL, "torch": torch.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "command": "python benchmarks/long_context_quality.py",
        })
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        right = sum(a["correct"] for a in r["answers"])
        print(f"{name:10} {r['tokens']:>6,} tokens  prefill {r['prefill_s']:7.1f}s  wall {r['wall_s']:7.1f}s  "
              f"(process {time.perf_counter() - start:.0f}s)  pass keys {right}/{len(r['answers'])}", flush=True)
    print(f"all done in {(time.perf_counter() - t0) / 60:.1f} min; results in {args.json}", flush=True)


if __name__ == "__main__":
    main()
