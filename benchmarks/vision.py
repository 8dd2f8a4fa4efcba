"""One full-size SigLIP forward (896x896, 4096 patches, 27 layers, width 1152) on CPU, float32.

Ours and transformers' SiglipVisionModel with the same random weights, timed alternately in the
same run; prints the median of `--repeats` forwards each and the largest output difference.

    python benchmarks/vision.py [--repeats 3] [--batch 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import SiglipVisionConfig
from transformers import SiglipVisionModel as HFSiglipVisionModel

from gemma3_minimal.config import VisionConfig
from gemma3_minimal.vision import SiglipVisionModel


def forward_flops(cfg: VisionConfig, batch: int) -> float:
    """Multiply-adds x 2 of the matrix products: patch embedding, q/k/v/o, MLP, and the attention itself."""
    T, d, L = cfg.num_patches, cfg.hidden_size, cfg.num_hidden_layers
    patch = cfg.num_channels * cfg.patch_size**2 * d
    per_layer = 4 * d * d + 2 * d * cfg.intermediate_size
    return 2 * batch * (T * (patch + L * per_layer) + L * 2 * T * T * d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = VisionConfig()
    ours = SiglipVisionModel(cfg).eval()
    hf_cfg = SiglipVisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size, layer_norm_eps=cfg.layer_norm_eps,
        hidden_act="gelu_pytorch_tanh", vision_use_head=False,
    )
    theirs = HFSiglipVisionModel(hf_cfg).eval()  # default attention: SDPA
    theirs.load_state_dict(ours.state_dict())
    pixels = torch.rand(args.batch, 3, cfg.image_size, cfg.image_size) * 2 - 1

    times: dict[str, list[float]] = {"gemma3_minimal": [], "transformers": []}
    runs = {"gemma3_minimal": lambda: ours(pixels), "transformers": lambda: theirs(pixel_values=pixels).last_hidden_state}
    outputs = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                outputs[name] = run()
                times[name].append(time.perf_counter() - start)

    print(f"SigLIP So400m forward, batch {args.batch}, float32, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}:")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"  {name:15s} {med:7.2f} s  {forward_flops(cfg, args.batch) / med / 1e9:5.0f} GFLOP/s   "
              f"(runs: {', '.join(f'{x:.2f}' for x in t)})")
    diff = (outputs["gemma3_minimal"] - outputs["transformers"]).abs().max().item()
    print(f"  max |ours - transformers| = {diff:.2e}")


if __name__ == "__main__":
    main()
