"""GPU decode (issue 8, target 4): gemma3_minimal against transformers on random weights of the real configs.

    python benchmarks/gpu_decode.py [--configs 270m,1b,4b] [--new-tokens 128] [--runs 2] [--device cuda]

Meant for one short run on a lent GPU machine (`device` tool), which reaches no package registry
and receives at most 64 MiB: no GGUF there, so the weights are random (decode speed does not
depend on their values). Run from the repository root with PYTHONPATH=. and the machine's own
torch and transformers. For each config, bfloat16, batch 1, greedy, same weights in both:

- transformers: `generate` with its default cache;
- gemma3_minimal eager: `generate_ids`;
- gemma3_minimal compiled: `generate_ids(compile=True)`: static cache, `torch.compile`
  (mode "reduce-overhead": CUDA graphs), compiled before timing.

Then the seeded `tiny` config: float32 greedy tokens on the device (eager and compiled) must equal
the CPU's. `--device cpu --configs tiny` runs the whole script here, as a check of the script.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "benchmarks")]
import gemma3_minimal as g3  # noqa: E402
from gemma3_minimal.generate import generate_ids  # noqa: E402
from gemma3_minimal.fast import speed_up  # noqa: E402
from common import median_time  # noqa: E402
from hf_reference import hf_text_config  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: torch.device, runs: int) -> float:
    """Median wall time of `fn()` after one warm-up call (and compilation), the device drained."""
    def synced():
        fn()
        sync(device)

    sync(device)
    return median_time(synced, runs)


def random_models(cfg: g3.Gemma3Config, device: torch.device, dtype: torch.dtype):
    """Ours with random weights (made on the device), and transformers' with the same weights."""
    from transformers import Gemma3ForCausalLM as HFGemma3ForCausalLM

    torch.manual_seed(0)
    with torch.device("meta"):
        ours = g3.Gemma3ForCausalLM(cfg)
    ours = ours.to_empty(device=device)
    ours.lm_head.weight = ours.model.embed_tokens.weight  # to_empty unties
    ours.reset_parameters()
    ours = speed_up(ours.to(dtype).eval())
    with torch.device(device):
        theirs = HFGemma3ForCausalLM(hf_text_config(cfg, "sdpa")).to(dtype).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and not [m for m in missing if m != "lm_head.weight"], (missing, unexpected)
    return ours, theirs


def decode_speeds(name: str, device: torch.device, new_tokens: int, runs: int) -> None:
    cfg = g3.get_config(name)
    ours, theirs = random_models(cfg, device, torch.bfloat16)
    prompt = torch.randint(0, cfg.vocab_size, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    ids = torch.tensor([prompt], device=device)

    def hf():
        out = theirs.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=0)
        assert out.shape[1] == len(prompt) + new_tokens

    def eager():
        assert len(list(generate_ids(ours, prompt, new_tokens, stop_ids=()))) == new_tokens

    def compiled():
        assert len(list(generate_ids(ours, prompt, new_tokens, stop_ids=(), compile=True))) == new_tokens

    with torch.no_grad():
        seconds = {label: median_seconds(fn, device, runs) for label, fn in
                   [("transformers", hf), ("gemma3_minimal eager", eager), ("gemma3_minimal compiled", compiled)]}
    base = new_tokens / seconds["transformers"]
    params = sum(p.numel() for p in ours.parameters())
    print(f"\n## {name} ({params / 1e6:,.1f}M parameters), bfloat16, {len(prompt)}-token prompt + {new_tokens} new "
          f"tokens, median of {runs} (prefill included)")
    for label, s in seconds.items():
        print(f"{label:24s} {new_tokens / s:8.1f} tok/s   {new_tokens / s / base:5.1f}x transformers")
    del ours, theirs
    if device.type == "cuda":
        torch.cuda.empty_cache()


def tiny_greedy_equality(device: torch.device) -> None:
    cfg = g3.get_config("tiny")
    torch.manual_seed(0)
    cpu_model = g3.Gemma3ForCausalLM(cfg).eval()
    dev_model = speed_up(copy.deepcopy(cpu_model).to(device))
    print_greedy_equality(cpu_model, dev_model, device, "float32")


def print_greedy_equality(cpu_model, dev_model, device: torch.device, label: str) -> None:
    """48 greedy tokens of the tiny config on the CPU against the device, eager and compiled."""
    prompt = torch.randint(0, cpu_model.config.vocab_size, (24,), generator=torch.Generator().manual_seed(2)).tolist()
    reference = list(generate_ids(cpu_model, prompt, 48, stop_ids=()))
    on_device = list(generate_ids(dev_model, prompt, 48, stop_ids=()))
    compiled = list(generate_ids(dev_model, prompt, 48, stop_ids=(), compile=True))
    print(f"\n## tiny config, {label}, 48 greedy tokens: {device.type} eager == cpu: {on_device == reference}; "
          f"{device.type} compiled == cpu: {compiled == reference}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="270m,1b,4b")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    import transformers

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}, transformers {transformers.__version__}")
    tiny_greedy_equality(device)
    for cfg_name in args.configs.split(","):
        decode_speeds(cfg_name, device, args.new_tokens, args.runs)
    from torch._dynamo.utils import counters

    skips = dict(counters["inductor"].get("cudagraph_skips", {})) if "inductor" in counters else {}
    print(f"\ncudagraph skips: {sum(skips.values()) if skips else 0} {skips if skips else ''}")


if __name__ == "__main__":
    main()
