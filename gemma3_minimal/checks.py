"""Guard rails: a clear error for every bad input, kept apart so the model code reads like the report.

Each check says what was wrong and what is allowed; the model, the cache and the generation loop
call them before any tensor work, so a bad input never becomes a silent wrong answer.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch

from .config import Gemma3Config


def check_input_ids(cfg: Gemma3Config, input_ids: torch.Tensor) -> None:
    """Raise a clear error for ids that are not a [batch, seq] integer tensor within the vocabulary."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.long, torch.int32):  # what the embedding lookup takes
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}; "
                        "use torch.long (or torch.int32): ids.long()")
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}; for one sequence use ids[None]"
        )
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); give at least one token")
    if not input_ids.is_meta:
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {cfg.vocab_size})")


def check_context(cfg: Gemma3Config, n_positions: int, what: str, fix: str) -> None:
    """Refuse more positions than the model's context; `what` names them and `fix` says what to do."""
    if n_positions > cfg.max_position_embeddings:
        raise ValueError(f"{what}: {n_positions} positions exceed the context of {cfg.name} "
                         f"({cfg.max_position_embeddings} positions); {fix}")


def check_cache_len(cfg: Gemma3Config, max_len: int) -> None:
    """A KV cache holds at least one position and no more than the model's context."""
    if not is_int(max_len) or max_len < 1:
        raise ValueError(f"max_len must be an integer >= 1, got {max_len!r}")
    check_context(cfg, max_len, "max_len", "build a smaller cache")


def check_cache_room(length: int, max_len: int) -> None:
    """Refuse to write positions past the end of a KV cache built for `max_len`."""
    if length > max_len:
        raise ValueError(f"KV cache full: it was built for {max_len} positions and {length} were asked for; "
                         "build the cache with a larger max_len")


def is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_sampling(temperature: float, top_k: Optional[int] = None, top_p: Optional[float] = None) -> None:
    """Raise a clear error for sampling settings out of range, whether or not they are used (greedy)."""
    if not is_number(temperature):
        raise TypeError(f"temperature must be a number, got {temperature!r}")
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and not (is_int(top_k) and top_k >= 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and not (is_number(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")


def check_generation(model, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float,
                     top_k: Optional[int] = None, top_p: Optional[float] = None, compile: bool = False) -> list[int]:
    """Check a generation's settings (see `check_sampling`) and prompt; return the prompt as a list of ints.

    `max_new_tokens` is an integer >= 0 that, with the prompt, fits the model's context; `compile=True`
    needs a model that `speed_up` prepared.
    """
    if not is_int(max_new_tokens):
        raise TypeError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_sampling(temperature, top_k, top_p)
    if compile and not hasattr(model, "compiled_decoding"):
        raise ValueError("compile=True needs a model prepared by g3.speed_up(model) (load_pretrained does it)")
    prompt = check_prompt_ids(prompt_ids)
    check_context(model.config, len(prompt) + max_new_tokens,
                  f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens})",
                  "shorten the prompt or lower max_new_tokens")
    return prompt


def check_prompt_ids(prompt_ids: Sequence[int]) -> list[int]:
    """The prompt as a list of ints; float, bool or nested ids are refused rather than truncated."""
    ids = prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else list(prompt_ids)
    for i, token in enumerate(ids):
        if not is_int(token):
            raise TypeError(f"prompt_ids must be integer token ids; item {i} is {token!r} ({type(token).__name__})")
    return ids
