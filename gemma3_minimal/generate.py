"""Text generation with the KV cache: the prompt read once, then one token at a time.

    prefill:  logits = model(prompt_ids, cache)        the prompt is read once into the cache
    decode:   repeat  next = sample_next(logits[-1]);  logits = model([next], cache)

Each step feeds one token and reads the logits of the next; `sampling.sample_next` picks it.
Generation stops at a stop id of the config (`<eos>`, `<end_of_turn>`). Text and chat prompts,
and streaming text, are in `chat.py`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from .checks import check_generation
from .sampling import sample_next


@torch.no_grad()
def generate_ids(model, prompt_ids: Sequence[int], max_new_tokens: int = 32, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop_ids: Sequence[int] | None = None, compile: bool = False, **prefill_inputs) -> Iterator[int]:
    """Yield new token ids one by one (batch 1), stopping after a stop id or `max_new_tokens`.

    `stop_ids` default to `model.config.stop_token_ids`. `prefill_inputs` go to the prompt's
    forward pass only (e.g. `pixel_values` for the images). `compile=True` runs the steps through
    the performance layer's static cache and compiled step (`compiled.py`; `speed_up` sets it up).
    """
    prompt = check_generation(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, compile)
    max_len = len(prompt) + max_new_tokens
    stop_ids = model.config.stop_token_ids if stop_ids is None else stop_ids
    device = next(model.parameters()).device
    generator = None if seed is None else torch.Generator(device).manual_seed(seed)
    if compile:  # speed as a separate, visible choice: a static cache and a compiled step
        session = model.compiled_decoding(max_len)
    else:
        session = contextlib.nullcontext((model.new_cache(max_len), model))
    with session as (cache, step):  # step(ids [1, 1], cache) -> logits [1, 1, vocab]
        ids = torch.tensor([prompt], dtype=torch.long, device=device)  # [1, T]
        logits = model(ids, cache, last_only=True, **prefill_inputs)[:, -1]  # [1, vocab]
        for _ in range(max_new_tokens):
            next_id = sample_next(logits, temperature, top_k, top_p, generator)  # [1]
            token = int(next_id)
            yield token
            if token in stop_ids or cache.length == max_len:
                return
            logits = step(next_id[:, None], cache)[:, -1]
