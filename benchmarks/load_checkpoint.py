"""Peak memory while loading a Hugging Face checkpoint: must stay under 1.5x the checkpoint's size.

Run: `python benchmarks/load_checkpoint.py [--layers 26] [--shard-mb 500] [--dir /tmp]`.

Writes a synthetic Gemma 3 1B-like text checkpoint (random bfloat16 weights, 2.0 GB with all 26
layers, sharded with an index as transformers writes it), then loads it in bfloat16 with
`load_hf_model` in a fresh Python process and reports that process's peak resident memory
(`ru_maxrss`) minus its peak after the imports. The model it builds holds exactly the checkpoint's
bytes, so 1.0x is the floor.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs in the fresh process: imports first, then the baseline, then the load.
CHILD = """
import json, resource, sys, time
import torch
from gemma3_minimal.hf_checkpoint import load_hf_model
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
model = load_hf_model(sys.argv[1], dtype=torch.bfloat16, progress=False)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps(dict(base=base, peak=peak, seconds=seconds, model_bytes=model_bytes)))
"""


def write_checkpoint(folder: Path, num_layers: int, shard_bytes: int, seed: int = 0) -> None:
    """A 1B-like `gemma3_text` checkpoint with random bfloat16 weights, sharded, with its index."""
    import torch
    from safetensors.torch import save_file

    from gemma3_minimal import Gemma3ForCausalLM, get_config

    cfg = get_config("1b").replace(num_hidden_layers=num_layers)
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in Gemma3ForCausalLM(cfg).named_parameters()}
    groups, size = [[]], 0  # tensor names per shard, in order, each shard under shard_bytes
    for name, shape in shapes.items():
        nbytes = shape.numel() * 2  # bfloat16
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    generator = torch.Generator().manual_seed(seed)
    weight_map = {}
    for i, names in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = {n: (torch.randn(shapes[n], generator=generator) * 0.02).to(torch.bfloat16) for n in names}
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    total = sum(shapes[n].numel() * 2 for n in shapes)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    text = {"model_type": "gemma3_text", "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": num_layers, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size,
            "sliding_window": cfg.sliding_window, "max_position_embeddings": cfg.max_position_embeddings}
    (folder / "config.json").write_text(json.dumps(text, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=26, help="decoder layers (26: the full 1B, 2.0 GB)")
    parser.add_argument("--shard-mb", type=int, default=500, help="shard size in MB")
    parser.add_argument("--dir", default=None, help="where to write the temporary checkpoint")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        # Linux carries a parent's peak RSS at fork into the child's ru_maxrss, so this process stays
        # small: the writer runs in a process of its own, torch is never imported here.
        writer = multiprocessing.get_context("spawn").Process(
            target=write_checkpoint, args=(folder, args.layers, args.shard_mb * 10**6))
        writer.start()
        writer.join()
        if writer.exitcode:
            sys.exit(f"writing the checkpoint failed (exit code {writer.exitcode})")
        size = json.loads((folder / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
        shards = len(list(folder.glob("*.safetensors")))
        out = subprocess.run([sys.executable, "-c", CHILD, str(folder)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    extra = r["peak"] - r["base"]
    print(f"checkpoint      {size / 1e9:8.3f} GB in {shards} shards (bfloat16, {args.layers} layers)")
    print(f"loaded model    {r['model_bytes'] / 1e9:8.3f} GB in {r['seconds']:.1f} s")
    print(f"RSS after imports {r['base'] / 1e9:6.3f} GB; peak while loading {r['peak'] / 1e9:.3f} GB")
    print(f"peak increase   {extra / 1e9:8.3f} GB = {extra / size:.3f} x the checkpoint (limit 1.5 x)")
    if extra >= 1.5 * size:
        sys.exit("FAIL: loading took 1.5x the checkpoint's size or more")


if __name__ == "__main__":
    main()
