"""Text generation with the KV cache: greedy, temperature, top-k and top-p sampling, streaming.

    prefill:  logits = model(prompt_ids, cache)        the prompt is read once into the cache
    decode:   repeat  next = sample(logits[-1]);  logits = model([next], cache)

Each step feeds one token and reads the logits of the next. Generation stops at a stop id of the
config (`<eos>`, `<end_of_turn>`). Chat messages may hold images (`{"type": "image", "image": ...}`):
Gemma3Processor turns them into soft tokens and `pixel_values` for the prompt's forward pass.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from .multimodal import Gemma3Processor, chat_images

Prompt = Union[str, Sequence[dict]]


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_sampling(temperature: float, top_k: Optional[int] = None, top_p: Optional[float] = None) -> None:
    """Raise a clear error for sampling settings out of range, whether or not they are used (greedy)."""
    if not _is_number(temperature):
        raise TypeError(f"temperature must be a number, got {temperature!r}")
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and not (_is_int(top_k) and top_k >= 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and not (_is_number(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick the next token from logits [batch, vocab] -> [batch] ids.

    temperature 0 is greedy (argmax). Otherwise logits / temperature, keep the `top_k` largest,
    then the smallest set whose probability reaches `top_p`, and sample from what is left.
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= top_p  # tokens after the nucleus is complete
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_ids(model, prompt_ids: Sequence[int], max_new_tokens: int = 32, temperature: float = 0.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
                 stop_ids: Optional[Sequence[int]] = None, compile: bool = False, **prefill_inputs) -> Iterator[int]:
    """Yield new token ids one by one (batch 1), stopping after a stop id or `max_new_tokens`.

    `stop_ids` default to `model.config.stop_token_ids`. `prefill_inputs` go to the prompt's
    forward pass only (e.g. `pixel_values` for the images). `compile=True` runs the steps through
    the performance layer's static cache and compiled step (`compiled.py`; `speed_up` sets it up).
    """
    if not _is_int(max_new_tokens):
        raise TypeError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_sampling(temperature, top_k, top_p)
    stop_ids = model.config.stop_token_ids if stop_ids is None else stop_ids
    device = next(model.parameters()).device
    ids = torch.as_tensor(check_prompt_ids(prompt_ids), dtype=torch.long, device=device)[None]  # [1, T]
    max_len = ids.shape[1] + max_new_tokens
    if max_len > model.config.max_position_embeddings:
        raise ValueError(
            f"prompt ({ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context of "
            f"{model.config.max_position_embeddings} positions"
        )
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    if compile:  # speed as a separate, visible choice: a static cache and a compiled step
        if not hasattr(model, "compiled_decoding"):
            raise ValueError("compile=True needs a model prepared by g3.speed_up(model) (load_pretrained does it)")
        session = model.compiled_decoding(max_len)
    else:
        session = contextlib.nullcontext((model.new_cache(max_len=max_len), model))
    with session as (cache, step):  # step(ids [1, 1], cache) -> logits [1, 1, vocab]
        logits = model(ids, cache, last_only=True, **prefill_inputs)[:, -1]  # [1, vocab]
        for _ in range(max_new_tokens):
            next_id = sample_next(logits, temperature, top_k, top_p, generator)  # [1]
            token = int(next_id)
            yield token
            if token in stop_ids or cache.length == max_len:
                return
            logits = step(next_id[:, None], cache)[:, -1]


def check_prompt_ids(prompt_ids: Sequence[int]) -> list[int]:
    """The prompt as a list of ints; float, bool or nested ids are refused rather than truncated."""
    ids = prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else list(prompt_ids)
    for i, token in enumerate(ids):
        if not _is_int(token):
            raise TypeError(f"prompt_ids must be integer token ids; item {i} is {token!r} ({type(token).__name__})")
    return ids


def encode_prompt(model, tok, prompt: Prompt, pan_and_scan: bool = False) -> tuple[list[int], dict]:
    """Prompt ids and the extra inputs of its forward pass: a string becomes `<bos>` + its ids; chat
    messages go through the chat template, and their images through Gemma3Processor (`pixel_values`).
    """
    if isinstance(prompt, str):
        return tok.encode(prompt, add_bos=True), {}
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
    text = tok.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
    images = chat_images(prompt, model.config)
    if not images:
        return tok.encode(text), {}
    input_ids, pixel_values = Gemma3Processor(tok, model.config, do_pan_and_scan=pan_and_scan)(text, images)
    return input_ids[0].tolist(), {"pixel_values": pixel_values}


def stream_ids(model, tok, prompt_ids: Sequence[int], max_new_tokens: int = 32, **kwargs) -> Iterator[str]:
    """Yield the text of `generate_ids(model, prompt_ids, ...)` piece by piece (stop tokens are not shown)."""
    new: list[int] = []
    shown = ""
    for token in generate_ids(model, prompt_ids, max_new_tokens, **kwargs):
        if token in model.config.stop_token_ids:
            break
        new.append(token)
        text = tok.decode(new)
        if text.endswith("\ufffd"):  # half of a character split over byte tokens: wait for the rest
            continue
        yield text[len(shown):]
        shown = text
    rest = tok.decode(new)[len(shown):] if new else ""
    if rest:
        yield rest


def stream(model, tok, prompt: Prompt, max_new_tokens: int = 32, pan_and_scan: bool = False,
           **sampling) -> Iterator[str]:
    """Yield the generated text piece by piece as tokens arrive (stop tokens are not shown).

    `pan_and_scan=True` adds Pan&Scan crops of the chat messages' images (see pan_and_scan.py).
    """
    prompt_ids, prefill_inputs = encode_prompt(model, tok, prompt, pan_and_scan)
    yield from stream_ids(model, tok, prompt_ids, max_new_tokens, **prefill_inputs, **sampling)


def generate(model, tok, prompt: Prompt, max_new_tokens: int = 32, temperature: float = 0.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
             on_text: Optional[Callable[[str], None]] = None, compile: bool = False,
             pan_and_scan: bool = False) -> str:
    """The continuation of `prompt` as text: `generate(model, tok, "The capital of France is")`.

    `prompt` is a string or chat messages, whose `{"type": "image", "image": <PIL image or path>}` items
    need a model with a vision tower (`pan_and_scan=True`: add crops of wide or tall images).
    `on_text` receives each new piece of text as it is generated (e.g. `print` with end="").
    `compile=True`: a static cache and a compiled step (see `generate_ids`).
    """
    pieces = []
    for piece in stream(model, tok, prompt, max_new_tokens, pan_and_scan, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, compile=compile):
        pieces.append(piece)
        if on_text is not None:
            on_text(piece)
    return "".join(pieces)


def generate_with_images(model, processor: Gemma3Processor, text: str, images: Sequence, max_new_tokens: int = 32,
                         **sampling) -> str:
    """The continuation of a prompt with `<start_of_image>` placeholders and its images (greedy by default).

    Example: `generate_with_images(model, Gemma3Processor(tok, model.config), "Describe <start_of_image>", [photo])`.
    """
    input_ids, pixel_values = processor(text, images)
    return "".join(stream_ids(model, processor.tok, input_ids[0].tolist(), max_new_tokens,
                              pixel_values=pixel_values, **sampling))
