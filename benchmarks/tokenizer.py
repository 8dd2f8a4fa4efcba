"""Encode throughput (characters/s) of Gemma3Tokenizer and of transformers' tokenizer on one large text.

Run: `python benchmarks/tokenizer.py [--chars 1000000] [--repeats 5]`. Both tokenizers read the same
GGUF vocabulary; the script checks that they return the same ids before timing them.

The text is built from the multilingual corpus in `data/` by drawing words at random (fixed seed),
so no line repeats: a tokenizer that caches whole words or lines cannot skip work. A chat turn
(`<start_of_turn>user` ... `<end_of_turn>`) every 40 lines exercises the special-token split.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from gemma3_minimal.tokenizer import Gemma3Tokenizer

DATA = Path(__file__).resolve().parents[1] / "data" / "multilingual"


def make_text(n_chars: int, seed: int = 0) -> str:
    """About `n_chars` characters of shuffled multilingual lines. Example: `len(make_text(1000)) >= 1000`."""
    rng = random.Random(seed)
    words = [w for f in sorted(DATA.glob("*.txt")) for w in f.read_text(encoding="utf-8").split()]
    lines, size = [], 0
    while size < n_chars:
        line = " ".join(rng.choices(words, k=rng.randint(5, 25)))
        if len(lines) % 40 == 0:
            line = f"<start_of_turn>user\n{line}<end_of_turn>"
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def median_seconds(fn, text: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from gemma3_minimal.course.reference import reference_tokenizer

    ref = reference_tokenizer()
    ours = Gemma3Tokenizer.from_pretrained()
    text = make_text(args.chars)

    def theirs(t: str) -> list[int]:
        return ref.encode(t, add_special_tokens=False)

    ids = ours.encode(text)
    assert ids == theirs(text), "the two tokenizers disagree on the benchmark text"
    print(f"text: {len(text):,} characters, {len(ids):,} tokens; median of {args.repeats} runs")
    for name, fn in [("gemma3_minimal", ours.encode), ("transformers", theirs)]:
        seconds = median_seconds(fn, text, args.repeats)
        print(f"{name:>15}: {len(text) / seconds:12,.0f} chars/s")


if __name__ == "__main__":
    main()
