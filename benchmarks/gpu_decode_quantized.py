"""GPU decode of int8 and int4 weights (issue 17): float32 against `quantize(model, "int8" | "int4")`, random weights.

    PYTHONPATH=. python benchmarks/gpu_decode_quantized.py [--configs 270m,1b] [--new-tokens 128] [--runs 2] [--device cuda]

Prepared for a lent GPU machine (`device` tool: no registry, no GGUF there), not yet run on one.
Like `gpu_decode.py`, weights are random (decode speed does not depend on their values). For each
config, batch 1, greedy, `generate_ids(compile=True)` (static cache, compiled step with CUDA graphs):
float32 (sped up), int8 per channel and int4 in groups of 32 (quantized from the same weights).
The compiled step fuses the integer-to-float conversion into each product, so the quantized
models read 4x / ~7x fewer bytes per token.

Then the seeded `tiny` config: int4 greedy tokens on the device (eager and compiled) must equal the
CPU's. `--device cpu --configs tiny` runs the whole script here, as a check of the script.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
import gemma3_minimal as g3  # noqa: E402
from gemma3_minimal.fast import speed_up  # noqa: E402
from gemma3_minimal.generate import generate_ids  # noqa: E402
from gemma3_minimal.quantize import quantize, quantized_bytes  # noqa: E402
from gpu_decode import median_seconds, print_greedy_equality  # noqa: E402


def random_model(cfg: g3.Gemma3Config, device: torch.device) -> g3.Gemma3ForCausalLM:
    torch.manual_seed(0)
    with torch.device("meta"):
        model = g3.Gemma3ForCausalLM(cfg)
    model = model.to_empty(device=device)
    model.tie_weights()  # to_empty unties
    model.reset_parameters()
    return model.eval()


def decode_speeds(name: str, device: torch.device, new_tokens: int, runs: int) -> None:
    cfg = g3.get_config(name)
    base = random_model(cfg, device)
    models = {"float32": speed_up(copy.deepcopy(base)), "int8": quantize(copy.deepcopy(base), "int8"),
              "int4": quantize(base, "int4")}
    prompt = torch.randint(0, cfg.vocab_size, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    print(f"\n## {name}, batch 1, {len(prompt)}-token prompt + {new_tokens} new tokens, compile=True, "
          f"median of {runs} (prefill included)")
    rates = {}
    with torch.no_grad():
        for label, model in models.items():
            def run(model=model):
                assert len(list(generate_ids(model, prompt, new_tokens, stop_ids=(), compile=True))) == new_tokens
            rates[label] = new_tokens / median_seconds(run, device, runs)
            print(f"{label:8s} {quantized_bytes(model) / 1e6:8.0f} MB of weights   {rates[label]:8.1f} tok/s   "
                  f"{rates[label] / rates['float32']:5.2f}x float32", flush=True)
    del models, base
    if device.type == "cuda":
        torch.cuda.empty_cache()


def tiny_greedy_equality(device: torch.device) -> None:
    cpu_model = quantize(random_model(g3.get_config("tiny"), torch.device("cpu")), "int4")
    dev_model = quantize(random_model(g3.get_config("tiny"), torch.device("cpu")).to(device), "int4")
    print_greedy_equality(cpu_model, dev_model, device, "int4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="270m,1b")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    # One compiled decode step serves every model here (3 formats x configs + tiny): each model is a
    # recompilation, and past the default limit of 8 torch would fall back to eager without failing.
    torch._dynamo.config.recompile_limit = 64
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}")
    tiny_greedy_equality(device)
    for cfg_name in args.configs.split(","):
        decode_speeds(cfg_name, device, args.new_tokens, args.runs)


if __name__ == "__main__":
    main()
