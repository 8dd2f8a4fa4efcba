"""llama.cpp's decode speed on the same Q4_K_M GGUF as the library's 270M: the reference for issue 17.

    /work/llama-venv/bin/python benchmarks/llamacpp_decode.py [--new-tokens 128] [--runs 3] [--threads 2]
                                   [--gguf PATH | --package-python /work/main/.venv/bin/python]

Runs in a benchmark-only environment with `llama-cpp-python` (built from source, CPU backend),
never a dependency of the package (and without torch). The GGUF is the library's: `--gguf`, or
else asked of `gemma3_minimal.assets.gguf_path()` by `--package-python`, an interpreter that has
the package (PYTHONPATH is passed on). Greedy decoding of `--new-tokens` tokens after
the same prompt as `decode.py`, batch 1; the prompt's evaluation is timed apart and not counted.
Prints tokens/s per run and the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

import llama_cpp

PROMPT = "The history of the city of Paris begins"  # the decode benchmarks' prompt (decode.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--package-python", default="python")
    args = parser.parse_args()
    if args.gguf:
        path = Path(args.gguf)
    else:
        code = "from gemma3_minimal.assets import gguf_path; print(gguf_path())"
        path = Path(subprocess.run([args.package_python, "-c", code], check=True, capture_output=True,
                                   text=True).stdout.strip())
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=args.threads, n_batch=64, verbose=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
    rates = []
    for run in range(args.runs + 1):  # the first run warms up
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        mid = time.perf_counter()
        out = []
        for _ in range(args.new_tokens):
            token = llm.sample(temp=0.0)  # greedy
            out.append(token)
            llm.eval([token])
        end = time.perf_counter()
        if run:
            rates.append(args.new_tokens / (end - mid))
            print(f"run {run}: prompt {len(prompt)} tokens {mid - start:.3f} s, {args.new_tokens} new tokens "
                  f"{end - mid:.2f} s = {rates[-1]:.1f} tok/s")
    print(f"llama.cpp {llama_cpp.__version__}, {path.name}, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f}: median {statistics.median(rates):.1f} tok/s")
    print("text:", llm.detokenize(out).decode(errors="replace")[:200])


if __name__ == "__main__":
    main()
