"""llama.cpp's decode speed on the same Q4_K_M GGUF as the library's 270M: the reference for issue 17.

    /work/llama-venv/bin/python benchmarks/llamacpp_decode.py [--new-tokens 128] [--runs 3] [--threads 2]
                                   [--gguf PATH | --package-python /work/main/.venv/bin/python]

Runs in a benchmark-only environment with `llama-cpp-python` (built from source, CPU backend),
never a dependency of the package (and without torch). The GGUF is the library's: `--gguf`, or
else asked of `gemma3_minimal.assets.gguf_path()` by `--package-python`, an interpreter that has
the package (PYTHONPATH is passed on). Greedy decoding of `--new-tokens` tokens after
the same prompt as `decode.py`, batch 1; the prompt's evaluation is timed apart and not counted.
Prints tokens/s per run and the median.

    ... llamacpp_decode.py --serve --gguf PATH

`--serve` is how `quantized_decode.py --llamacpp-python` times llama.cpp in the same run as the
library's models: it loads the model once, then for each JSON line {"ids": [...], "new_tokens": n}
on stdin decodes greedily after those prompt ids and answers one JSON line {"prompt_s", "decode_s",
"tokens"} on stdout, until stdin closes.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--serve", action="store_true", help="answer timing requests on stdin (see above)")
    args = parser.parse_args()
    if args.gguf:
        path = Path(args.gguf)
    else:
        code = "from gemma3_minimal.assets import gguf_path; print(gguf_path())"
        path = Path(subprocess.run([args.package_python, "-c", code], check=True, capture_output=True,
                                   text=True).stdout.strip())
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=args.threads, n_batch=64, verbose=False)
    if args.serve:
        for line in iter(input_line, ""):
            request = json.loads(line)
            prompt_s, decode_s, out = greedy_decode(llm, request["ids"], request["new_tokens"])
            print(json.dumps(dict(prompt_s=prompt_s, decode_s=decode_s, tokens=out)), flush=True)
        return
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
    rates = []
    for run in range(args.runs + 1):  # the first run warms up
        prompt_s, decode_s, out = greedy_decode(llm, prompt, args.new_tokens)
        if run:
            rates.append(args.new_tokens / decode_s)
            print(f"run {run}: prompt {len(prompt)} tokens {prompt_s:.3f} s, {args.new_tokens} new tokens "
                  f"{decode_s:.2f} s = {rates[-1]:.1f} tok/s")
    print(f"llama.cpp {llama_cpp.__version__}, {path.name}, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f}: median {statistics.median(rates):.1f} tok/s")
    print("text:", llm.detokenize(out).decode(errors="replace")[:200])


def greedy_decode(llm, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    """(seconds for the prompt, seconds for `new_tokens` greedy tokens, the tokens), from an empty context."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    mid = time.perf_counter()
    out = []
    for _ in range(new_tokens):
        token = llm.sample(temp=0.0)  # greedy
        out.append(token)
        llm.eval([token])
    return mid - start, time.perf_counter() - mid, out


def input_line() -> str:
    """One line of stdin, "" once it is closed."""
    try:
        return input()
    except EOFError:
        return ""


if __name__ == "__main__":
    main()
