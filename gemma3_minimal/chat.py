"""Text and chat in, text out: prompts become ids (images through Gemma3Processor), ids become text.

    "The capital of France is"            -> <bos> + its ids
    [{"role": "user", "content": [...]}]  -> the chat template; image items -> soft tokens + pixel_values
    generate_ids(...) -> ids -> text, streamed piece by piece (a character split over byte tokens waits)
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence, Union

from .generate import generate_ids
from .multimodal import Gemma3Processor, chat_images

Prompt = Union[str, Sequence[dict]]


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
