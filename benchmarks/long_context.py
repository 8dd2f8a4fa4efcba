"""The real Gemma 3 270M on a long input: ring-buffer KV cache against a cache that is global on every layer.

Each layout runs in a fresh subprocess, so its peak resident memory is its own. In the child, the
peak is reset after the weights are loaded (Linux `/proc/self/clear_refs`), so the figure is what
the cache and the forward passes add. Both layouts compute the same attention (local layers keep
their window; only where their keys live differs), so they must produce the same tokens.

    python benchmarks/long_context.py                     # 8,192 tokens, both layouts, a table
    python benchmarks/long_context.py --tokens 16384 --json results.json

The prefill runs in chunks and attention runs in query chunks (`layers.Attention.attend`), so no
[seq, seq] score matrix is ever built.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"ring": True, "global": False}  # layout name -> KVCache(sliding=...)


def read_status_kib(field: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (this benchmark needs Linux)")


def long_input(tok, n_tokens: int) -> torch.Tensor:
    """[1, n_tokens] ids: <bos> and this package's own source code, repeated as needed."""
    text = "\n\n".join(p.read_text() for p in sorted((ROOT / "gemma3_minimal").glob("*.py")))
    ids = [2] + tok.encode(text)
    while len(ids) < n_tokens:
        ids += ids[1:]
    return torch.tensor([ids[:n_tokens]])


@torch.no_grad()
def run_layout(layout: str, n_tokens: int, new_tokens: int, chunk: int, dtype: torch.dtype) -> dict:
    """Prefill `n_tokens` in chunks, then decode `new_tokens` greedily; memory and timing figures."""
    import gemma3_minimal as g3

    torch.manual_seed(0)
    model, tok = g3.load_pretrained("270m", dtype=dtype)
    ids = long_input(tok, n_tokens)
    gc.collect()
    baseline_kib = read_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS

    t0 = time.perf_counter()
    cache = model.new_cache(n_tokens + new_tokens, sliding=LAYOUTS[layout])
    for start in range(0, n_tokens, chunk):
        logits = model(ids[:, start:start + chunk], cache, last_only=True)
    prefill_s = time.perf_counter() - t0
    prompt_logits = logits[0, -1].float()
    generated = []
    for _ in range(new_tokens):
        next_id = logits[:, -1].argmax(-1, keepdim=True)
        generated.append(int(next_id))
        logits = model(next_id, cache)
    total_s = time.perf_counter() - t0
    return {
        "layout": layout,
        "tokens": n_tokens,
        "new_tokens": new_tokens,
        "dtype": str(dtype).removeprefix("torch."),
        "cache_bytes": cache.nbytes,
        "predicted_cache_bytes": g3.kv_cache_bytes(
            model.config, n_tokens + new_tokens, torch.finfo(dtype).bits // 8, sliding=LAYOUTS[layout]
        ),
        "baseline_rss_bytes": baseline_kib * 1024,
        "peak_rss_bytes": read_status_kib("VmHWM") * 1024,
        "peak_added_bytes": (read_status_kib("VmHWM") - baseline_kib) * 1024,
        "prefill_s": round(prefill_s, 2),
        "total_s": round(total_s, 2),
        "generated": generated,
        "generated_text": tok.decode(generated),
        "prompt_logits_head": prompt_logits[:8].tolist(),
        "prompt_logits_argmax": int(prompt_logits.argmax()),
    }


def run_in_subprocess(layout: str, args: argparse.Namespace) -> dict:
    """`run_layout` in a fresh Python, so each layout's peak memory is measured on its own."""
    cmd = [sys.executable, __file__, "--child", layout, "--tokens", str(args.tokens), "--new-tokens",
           str(args.new_tokens), "--chunk", str(args.chunk), "--dtype", args.dtype]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(n: int) -> str:
    return f"{n / 2**20:8.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192, help="prompt length (at least 8,192 for the issue)")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens decoded greedily after the prompt")
    parser.add_argument("--chunk", type=int, default=256,
                        help="prefill chunk length; transient buffers grow with it (at 1,024 they hid ~30 MiB of the saving)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=list(LAYOUTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tokens < 1 or args.new_tokens < 0 or args.chunk < 1:
        parser.error("--tokens and --chunk must be >= 1, --new-tokens >= 0")
    dtype = getattr(torch, args.dtype)
    if args.child:
        print(json.dumps(run_layout(args.child, args.tokens, args.new_tokens, args.chunk, dtype)))
        return

    results = {layout: run_in_subprocess(layout, args) for layout in LAYOUTS}
    ring, full = results["ring"], results["global"]
    print(f"Gemma 3 270M, {args.tokens:,} prompt tokens + {args.new_tokens} decoded, {args.dtype}, "
          f"prefill chunks of {args.chunk}")
    print(f"{'layout':8} {'cache bytes':>14} {'predicted':>14} {'peak added':>14} {'peak RSS':>14} {'prefill':>9}")
    for r in results.values():
        print(f"{r['layout']:8} {mib(r['cache_bytes'])} {mib(r['predicted_cache_bytes'])} "
              f"{mib(r['peak_added_bytes'])} {mib(r['peak_rss_bytes'])} {r['prefill_s']:8.1f}s")
    predicted = full["predicted_cache_bytes"] - ring["predicted_cache_bytes"]
    measured = full["peak_added_bytes"] - ring["peak_added_bytes"]
    print(f"all-global minus ring: predicted {mib(predicted)}, measured peak {mib(measured)} "
          f"({100 * measured / predicted:.0f}% of the prediction)")
    same = ring["generated"] == full["generated"]
    diff = max(abs(a - b) for a, b in zip(ring["prompt_logits_head"], full["prompt_logits_head"]))
    print(f"same greedy tokens: {same} ({ring['generated_text']!r}); max |logit diff| (first 8): {diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps({"tokens": args.tokens, "results": results}, indent=1) + "\n")
    if not same or any(r["cache_bytes"] != r["predicted_cache_bytes"] for r in results.values()):
        sys.exit("layouts disagree, or a cache differs from kv_cache_bytes")


if __name__ == "__main__":
    main()
