"""Checkers for the classroom exercises in `notebooks/exercises/`.

Each `check_*` runs a learner's function against the library on edge cases and seeded random
inputs, stops at the first mismatch and explains it: which input, expected against got, and a
hint. The hint names a typical mistake when the learner's output equals that of a known wrong
variant (an off-by-one window, RoPE pairs interleaved, a scale of `w` instead of `1 + w`, ...).

    result = check_sliding_window_mask(sliding_window_mask)   # prints the verdict
    result.passed, result.mistake                              # True, None

Errors raised by the learner's code (a `NotImplementedError` stub included) become a message too.
"""

from __future__ import annotations

import functools
import math
import random
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from . import layers, masks, rope


@dataclass(frozen=True)
class Case:
    """One input of an exercise: `args` go to both functions, `label` says it in words."""

    label: str
    args: tuple


@dataclass(frozen=True)
class Mistake:
    """A known wrong variant: when the learner's output equals `fn`'s, the checker shows `hint`."""

    name: str
    hint: str
    fn: Callable[..., Any]


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one checker: `passed`, the printed `message`, and the `mistake` recognized."""

    exercise: str
    passed: bool
    message: str
    mistake: Optional[str] = None

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:
        """The checker has printed the message already; a notebook shows nothing more."""


# --- comparing and showing values --------------------------------------------------------------

# (rtol, atol): loose enough for any correct float32 formula, far tighter than any typical mistake;
# bfloat16 allows one unit in the last place, so computing in bfloat16 instead of float32 shows.
FLOAT_TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float64: (1e-6, 1e-6), torch.bfloat16: (4e-3, 1e-5)}
# Looser, to recognize a known mistake written another way (in bfloat16 the order of operations shows).
RECOGNIZE_TOLERANCE = {torch.float32: (1e-3, 1e-3), torch.float64: (1e-3, 1e-3), torch.bfloat16: (3e-2, 1e-3)}
SMALL = 32  # tensors with at most this many entries are shown whole


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"


def _tensor_difference(expected: torch.Tensor, got: Any, tolerance: dict) -> Optional[str]:
    if not isinstance(got, torch.Tensor):
        return f"expected {_describe(expected)}, got {_describe(got)}"
    if got.shape != expected.shape:
        return f"expected shape {list(expected.shape)}, got shape {list(got.shape)}"
    if got.dtype != expected.dtype:
        return f"expected dtype {expected.dtype}, got dtype {got.dtype}"
    if expected.dtype.is_floating_point:
        rtol, atol = tolerance.get(expected.dtype, (1e-4, 1e-4))
        wrong = ~torch.isclose(got.detach(), expected, rtol=rtol, atol=atol)
    else:
        wrong = got != expected
    if not wrong.any():
        return None
    index = tuple(int(i) for i in wrong.nonzero()[0])
    return (
        f"{int(wrong.sum())} of {expected.numel()} entries differ; the first at index {list(index)}: "
        f"expected {_scalar(expected[index])}, got {_scalar(got[index])}"
    )


def _scalar(t: torch.Tensor) -> str:
    value = t.item()
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def difference(expected: Any, got: Any, tolerance: dict = FLOAT_TOLERANCE) -> Optional[str]:
    """None when `got` equals `expected` (tensors: same shape and dtype, values within tolerance), else why not."""
    if isinstance(expected, torch.Tensor):
        return _tensor_difference(expected, got, tolerance)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (expected, got))
    if type(got) is not type(expected) and not numbers:
        return f"expected {_describe(expected)}, got {_describe(got)}"
    return None if got == expected else f"expected {expected!r}, got {got!r}"


def _picture(value: Any) -> Optional[str]:
    """A small tensor as a learner reads it (masks as 0/1 grids); None when the one-line difference says enough."""
    if not isinstance(value, torch.Tensor):
        return None
    if value.dtype == torch.bool and value.dim() == 2 and value.shape[1] <= 16:
        return "\n".join(" ".join("1" if v else "0" for v in row) for row in value.tolist())
    if value.numel() <= SMALL:
        return str(value.detach().float().numpy().round(4)) if value.is_floating_point() else str(value.tolist())
    return None


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# --- running a check ---------------------------------------------------------------------------


def _clone(args: tuple) -> tuple:
    """Fresh copies, so a learner's in-place edit cannot change what the library sees."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _learner_line(error: BaseException) -> str:
    """The learner's line that failed: the innermost frame outside this file and installed packages."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__)
        if f.filename != __file__ and not any(part in Path(f.filename).parts for part in ("site-packages", "torch"))
    ]
    if not frames or not frames[-1].line:
        return ""
    return f"\n  in your line: {frames[-1].line.strip()}"


def _error_message(exercise: str, case: Case, error: Exception) -> str:
    if isinstance(error, NotImplementedError):
        return (
            f"⏳ {exercise} is not written yet (it raised NotImplementedError).\n"
            "Replace the `raise NotImplementedError(...)` line with your code, run that cell, then run this one again."
        )
    return (
        f"❌ {exercise}({case.label}) raised {type(error).__name__}: {error}{_learner_line(error)}\n"
        "Hint: run your function on this input in a new cell and print the shapes of the tensors along the way."
    )


def _same(mistake: Mistake, case: Case, got: Any) -> bool:
    try:
        wrong = mistake.fn(*_clone(case.args))
    except Exception:  # a wrong variant may not even run on this input; then it is not this one
        return False
    return difference(wrong, got, RECOGNIZE_TOLERANCE) is None


def _recognize(mistakes: Sequence[Mistake], fn: Callable, cases: Sequence[Case], failed: Case, got: Any
               ) -> Optional[Mistake]:
    """The known wrong variant that reproduces the learner's output on the failed case and on most others.

    Two mistakes can agree on one input (floor and round-half-even both give 2 for 2.5), so the
    learner's outputs on every case decide between them.
    """
    candidates = [m for m in mistakes if _same(m, failed, got)]
    if len(candidates) < 2:
        return candidates[0] if candidates else None
    outputs = []
    for case in cases:
        try:
            outputs.append((case, fn(*_clone(case.args))))
        except Exception:  # judged on the inputs where the learner's code runs
            continue
    return max(candidates, key=lambda m: sum(_same(m, case, out) for case, out in outputs))


def _dtype_hint(expected: Any, got: Any) -> Optional[str]:
    if isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor) and got.dtype != expected.dtype:
        return f"return a {expected.dtype} tensor (`.to({expected.dtype})` converts; a comparison gives bool)."
    return None


def run_check(
    exercise: str,
    fn: Callable[..., Any],
    cases: Sequence[Case],
    reference: Callable[..., Any],
    reference_name: str,
    mistakes: Sequence[Mistake] = (),
    fallback_hint: str = "compare your function with the loop version above on this input, entry by entry.",
) -> CheckResult:
    """Run `fn` and `reference` on every case; return (and print) the verdict on the first mismatch."""
    result = _verdict(exercise, fn, cases, reference, reference_name, mistakes, fallback_hint)
    print(result.message)
    return result


def _verdict(exercise, fn, cases, reference, reference_name, mistakes, fallback_hint) -> CheckResult:
    if not callable(fn):
        return CheckResult(exercise, False, f"❌ Pass the function itself: check_...({exercise}), "
                                            f"not the result of calling it (got {_describe(fn)}).")
    for case in cases:
        expected = reference(*_clone(case.args))
        try:
            got = fn(*_clone(case.args))
        except Exception as error:  # the learner's code: report it, never crash the checker
            return CheckResult(exercise, False, _error_message(exercise, case, error))
        why = difference(expected, got)
        if why is None:
            continue
        mistake = _recognize(mistakes, fn, cases, case, got)
        hint = mistake.hint if mistake else _dtype_hint(expected, got) or fallback_hint
        message = f"❌ {exercise}({case.label}) is not right: {why}.\n"
        pictures = _picture(expected), _picture(got)
        if None not in pictures:
            message += f"  expected ({reference_name}):\n{_indent(pictures[0])}\n  got:\n{_indent(pictures[1])}\n"
        else:
            message += f"  (expected: {reference_name})\n"
        message += f"Hint: {hint}"
        return CheckResult(exercise, False, message, mistake.name if mistake else None)
    return CheckResult(exercise, True, f"✅ {exercise}: all {len(cases)} inputs match {reference_name}. Well done!")


# --- 01 tokenizer: byte fallback ---------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from .tokenizer import Gemma3Tokenizer

    return Gemma3Tokenizer.from_pretrained()


def _byte_fallback_chars(n_random: int = 8, seed: int = 0) -> list[str]:
    """Characters that Gemma 3 spells in bytes: fixed ones of 1 to 4 bytes, then seeded random ones."""
    tok = _tokenizer()
    chars = ["\x07", "Ŀ", "躽", "🫩"]
    rng = random.Random(seed)
    while len(chars) < 4 + n_random:
        ch = chr(rng.choice([rng.randrange(0x100, 0xD800), rng.randrange(0x10000, 0x30000)]))
        if all(tok.sp.is_byte(i) for i in tok.encode(ch)):
            chars.append(ch)
    return chars


def _byte_pieces_reference(ch: str) -> list[str]:
    tok = _tokenizer()
    return [tok.id_to_piece(i) for i in tok.encode(ch)]


BYTE_FALLBACK_MISTAKES = (
    Mistake("code_point", "one piece per UTF-8 *byte*, not per character: use `ch.encode('utf-8')`, "
            "whose items are ints 0..255.", lambda ch: [f"<0x{ord(ch):02X}>"]),
    Mistake("lowercase_hex", "the vocabulary spells bytes in upper-case hex, `<0xE8>` not `<0xe8>`: use the format `02X`.",
            lambda ch: [f"<0x{b:02x}>" for b in ch.encode("utf-8")]),
    Mistake("no_zero_padding", "a byte is always two hex digits, `<0x07>` not `<0x7>`: use the format `02X`.",
            lambda ch: [f"<0x{b:X}>" for b in ch.encode("utf-8")]),
    Mistake("utf16", "Gemma's byte pieces are UTF-8 bytes; UTF-16 gives other bytes.",
            lambda ch: [f"<0x{b:02X}>" for b in ch.encode("utf-16-le")]),
)


def check_byte_fallback(fn: Callable[[str], list[str]]) -> CheckResult:
    """`fn(ch) -> list[str]`: the byte pieces (`'<0xE8>'`, ...) Gemma 3 writes for a character not in its vocabulary."""
    cases = [Case(f"ch={ch!r} (U+{ord(ch):04X})", (ch,)) for ch in _byte_fallback_chars()]
    return run_check("byte_fallback_pieces", fn, cases, _byte_pieces_reference, "Gemma3Tokenizer.encode",
                     BYTE_FALLBACK_MISTAKES)


# --- 02 attention masks: the sliding window ----------------------------------------------------


def _window_cases(n_random: int = 8, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    pairs = [(8, 4), (6, 3), (5, 1), (4, 4), (3, 5), (1, 1)]
    pairs += [(rng.randint(2, 40), rng.randint(1, 12)) for _ in range(n_random)]
    return [Case(f"seq_len={t}, window={w}", (t, w)) for t, w in pairs]


def _positions(seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.arange(seq_len)
    return pos[:, None], pos[None, :]  # queries down the rows, keys along the columns


def _mask_one_too_many(seq_len: int, window: int) -> torch.Tensor:
    q, k = _positions(seq_len)
    return (k <= q) & (k >= q - window)


def _mask_one_too_few(seq_len: int, window: int) -> torch.Tensor:
    q, k = _positions(seq_len)
    return (k <= q) & (k > q - window + 1)


def _mask_not_causal(seq_len: int, window: int) -> torch.Tensor:
    q, k = _positions(seq_len)
    return (q - k).abs() < window


SLIDING_WINDOW_MISTAKES = (
    Mistake("off_by_one_window_too_many", "off by one: each query sees `window` keys *including itself*, "
            "so key k is visible when q - window < k <= q (yours lets in one key too many).", _mask_one_too_many),
    Mistake("off_by_one_window_too_few", "off by one: each query sees `window` keys *including itself*, "
            "so key k is visible when q - window < k <= q (yours sees one key too few).", _mask_one_too_few),
    Mistake("not_causal", "a query must never see a later key: keep the causal condition k <= q as well.", _mask_not_causal),
    Mistake("causal_only", "the window is missing: also drop keys at or before q - window.",
            lambda seq_len, window: masks.causal_mask(seq_len)),
    Mistake("transposed", "rows are queries and columns are keys: mask[q, k]. Yours is transposed.",
            lambda seq_len, window: masks.sliding_window_mask(seq_len, window).T),
)


def check_sliding_window_mask(fn: Callable[[int, int], torch.Tensor]) -> CheckResult:
    """`fn(seq_len, window) -> [seq_len, seq_len] bool`: True where query q may attend to key k."""
    return run_check("sliding_window_mask", fn, _window_cases(), masks.sliding_window_mask,
                     "gemma3_minimal.masks.sliding_window_mask", SLIDING_WINDOW_MISTAKES,
                     "write the condition for one (q, k) pair first, then compare positions as tensors.")


# --- 03 RoPE -----------------------------------------------------------------------------------


def _rope_reference(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    cos, sin = rope.rope_cos_sin(positions, rope.rope_inv_freq(x.shape[-1], base))
    return rope.apply_rope(x, cos, sin)


def _rope_interleaved(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    d = x.shape[-1]
    angles = positions.float()[:, None] * rope.rope_inv_freq(d, base)  # [T, D/2]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * angles.cos() - odd * angles.sin()
    out[..., 1::2] = even * angles.sin() + odd * angles.cos()
    return out


def _rope_other_way(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    return _rope_reference(x, -positions, base)


def _rope_halves_not_negated(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    cos, sin = rope.rope_cos_sin(positions, rope.rope_inv_freq(x.shape[-1], base))
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, x1), dim=-1) * sin


def _rope_exponent_without_2(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    d = x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(d // 2).float() / d)
    cos, sin = rope.rope_cos_sin(positions, inv_freq)
    return rope.apply_rope(x, cos, sin)


def _rope_cases(n_random: int = 6, seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 8, 10_000.0), (3, 2, 10_000.0), (5, 16, 1_000_000.0)]
    rng = random.Random(seed)
    shapes += [(rng.randint(1, 12), 2 * rng.randint(1, 32), rng.choice([10_000.0, 1_000_000.0])) for _ in range(n_random)]
    cases = []
    for i, (t, d, base) in enumerate(shapes):
        x = torch.randn(t, d, generator=gen)
        start = 0 if i < 3 else rng.randint(0, 1000)  # later cases start mid-sequence (as with a KV cache)
        positions = torch.arange(start, start + t)
        cases.append(Case(f"x of shape [{t}, {d}], positions {start}..{start + t - 1}, base={base:g}", (x, positions, base)))
    return cases


ROPE_MISTAKES = (
    Mistake("interleaved", "Gemma pairs channel i with channel i + head_dim/2 (the two halves), "
            "not neighbours (2i, 2i+1): that interleaved layout is another checkpoint format.", _rope_interleaved),
    Mistake("halves_swapped", "rotate_half(x) is (-x2, x1): the second half, negated, goes first. "
            "Yours rotates the wrong way (its halves are swapped or negated the wrong way round).", _rope_other_way),
    Mistake("halves_not_negated", "rotate_half(x) is (-x2, x1): you swapped the halves but forgot the minus sign.",
            _rope_halves_not_negated),
    Mistake("exponent_without_2", "the frequencies are 1 / base^(2i / head_dim) for i = 0..head_dim/2-1: "
            "the exponent has a 2 (or use arange(0, head_dim, 2) / head_dim).", _rope_exponent_without_2),
)


def check_rope(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """`fn(x [T, D], positions [T], base) -> [T, D]`: x rotated by RoPE, pairs (i, i + D/2)."""
    return run_check("apply_rope", fn, _rope_cases(), _rope_reference, "gemma3_minimal.rope.apply_rope",
                     ROPE_MISTAKES, "check one position by hand: position 0 must give x back unchanged.")


# --- 04 decoder block: RMSNorm and repeat_kv ---------------------------------------------------


def _rms_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = layers.RMSNorm(weight.shape[0], eps)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


def _rms_scale_w(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).type_as(x)


def _rms_no_eps(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _rms_reference(x, weight, 0.0)


def _rms_layer_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = (h - h.mean(-1, keepdim=True)) * torch.rsqrt(h.var(-1, unbiased=False, keepdim=True) + eps)
    return (h * (1 + weight.float())).type_as(x)


def _rms_in_input_dtype(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + weight.to(x.dtype))


def _rms_cases(n_random: int = 5, seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    cases = [
        Case("x of shape [2, 4], weight all zeros (scale 1), eps=1e-6", (torch.randn(2, 4, generator=gen), torch.zeros(4), 1e-6)),
        Case("x of shape [3, 8], a random weight, eps=1e-6", (torch.randn(3, 8, generator=gen), torch.randn(8, generator=gen), 1e-6)),
        Case("x = tiny values 1e-4 of shape [2, 6], eps=1e-2", (torch.full((2, 6), 1e-4), torch.randn(6, generator=gen), 1e-2)),
        Case("x of shape [2, 3, 16] in bfloat16, eps=1e-6",
             ((10 * torch.randn(2, 3, 16, generator=gen)).bfloat16(), torch.randn(16, generator=gen), 1e-6)),
    ]
    for _ in range(n_random):
        shape = [rng.randint(1, 4), rng.randint(1, 6), rng.choice([4, 16, 64])]
        x = torch.randn(*shape, generator=gen) * rng.choice([0.1, 1.0, 30.0])
        cases.append(Case(f"x of shape {shape}, a random weight, eps=1e-6", (x, torch.randn(shape[-1], generator=gen), 1e-6)))
    return cases


RMS_NORM_MISTAKES = (
    Mistake("scale_w", "Gemma scales by (1 + w), not w: the weight is stored as an offset from 1, "
            "so a fresh layer (w = 0) leaves the normalized x unchanged.", _rms_scale_w),
    Mistake("layer_norm", "RMSNorm does not subtract the mean: divide by sqrt(mean(x^2) + eps) only.", _rms_layer_norm),
    Mistake("no_eps", "add eps inside the square root: sqrt(mean(x^2) + eps); it matters when x is tiny.", _rms_no_eps),
    Mistake("input_dtype", "compute in float32 (`x.float()`), then cast the result back to x's dtype "
            "(`.type_as(x)`): bfloat16 is too coarse for the mean of squares.", _rms_in_input_dtype),
)


def check_rms_norm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """`fn(x [..., dim], weight [dim], eps) -> [..., dim]`: Gemma's RMSNorm, scale (1 + weight)."""
    return run_check("rms_norm", fn, _rms_cases(), _rms_reference, "gemma3_minimal.layers.RMSNorm",
                     RMS_NORM_MISTAKES, "normalize over the last dimension only, one row at a time.")


def _repeat_kv_reference(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """repeat_kv as the library's grouped attention sees it (it never copies K/V heads).

    With zero queries and a diagonal mask, query t of head h attends to key t only, with weight 1,
    so the output is the value that head h reads: x[:, h // n_rep, t], exactly.
    """
    b, k, t, d = x.shape
    queries = torch.zeros(b, k * n_rep, t, d, dtype=x.dtype)
    return layers.grouped_attention(queries, x, x, torch.eye(t, dtype=torch.bool), scaling=1.0)


def _repeat_kv_cases(n_random: int = 5, seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    shapes = [(1, 2, 3, 2, 2), (1, 1, 2, 2, 4), (2, 4, 3, 8, 1)]
    shapes += [(rng.randint(1, 2), rng.randint(1, 4), rng.randint(1, 5), rng.choice([2, 4, 8]), rng.randint(1, 4))
               for _ in range(n_random)]
    return [Case(f"x of shape [{b}, {k}, {t}, {d}], n_rep={n}", (torch.randn(b, k, t, d, generator=gen), n))
            for b, k, t, d, n in shapes]


REPEAT_KV_MISTAKES = (
    Mistake("tiled", "each K/V head serves n_rep *neighbouring* query heads: the order is "
            "[k0, k0, k1, k1], not [k0, k1, k0, k1] (`x.repeat` tiles; repeat each head in place).",
            lambda x, n: x.repeat(1, n, 1, 1)),
    Mistake("wrong_dim", "repeat along the heads dimension (dim 1), not along positions or channels.",
            lambda x, n: x.repeat_interleave(n, dim=2)),
)


def check_repeat_kv(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> CheckResult:
    """`fn(x [B, K, T, D], n_rep) -> [B, K * n_rep, T, D]`: each K/V head repeated for its query heads."""
    return run_check("repeat_kv", fn, _repeat_kv_cases(), _repeat_kv_reference, "gemma3_minimal.layers.grouped_attention",
                     REPEAT_KV_MISTAKES, "query head h uses K/V head h // n_rep.")


# --- 05 KV cache: bytes with ring buffers -------------------------------------------------------


def _kv_cases() -> list[Case]:
    from .config import get_config

    pairs = [("270m", 8), ("270m", 512), ("270m", 513), ("270m", 32_768), ("1b", 1), ("1b", 2_000),
             ("4b", 1_024), ("4b", 1_025), ("12b", 4_096), ("27b", 100), ("27b", 131_072)]
    return [Case(f"cfg=get_config({name!r}), context_len={n:,}, bytes_per_value={b}", (get_config(name), n, b))
            for (name, n), b in zip(pairs, [2, 2, 4, 2, 2, 1, 2, 2, 4, 2, 2])]


def _kv_bytes_reference(cfg, context_len: int, bytes_per_value: int) -> int:
    from .memory import kv_cache_bytes

    return kv_cache_bytes(cfg, context_len, bytes_per_value)


def _kv_bytes(cfg, context_len: int, bytes_per_value: int, local_slots: int, heads: int, k_and_v: int = 2) -> int:
    slots = sum(local_slots if kind == "sliding_attention" else context_len for kind in cfg.layer_types)
    return slots * k_and_v * heads * cfg.head_dim * bytes_per_value


KV_BYTES_MISTAKES = (
    Mistake("no_ring_buffer", "local (sliding) layers only keep the last `sliding_window` positions: "
            "their cache has min(sliding_window, context_len) slots, not context_len.",
            lambda c, n, b: _kv_bytes(c, n, b, n, c.num_key_value_heads)),
    Mistake("window_not_capped", "a local layer holds min(sliding_window, context_len) slots: "
            "with a short context it never fills its window.",
            lambda c, n, b: _kv_bytes(c, n, b, c.sliding_window, c.num_key_value_heads)),
    Mistake("keys_only", "the cache stores keys *and* values: count 2 tensors per layer.",
            lambda c, n, b: _kv_bytes(c, n, b, min(c.sliding_window, n), c.num_key_value_heads, 1)),
    Mistake("query_heads", "grouped-query attention caches only the K/V heads: use num_key_value_heads, "
            "not num_attention_heads.",
            lambda c, n, b: _kv_bytes(c, n, b, min(c.sliding_window, n), c.num_attention_heads)),
)


def check_kv_cache_bytes(fn: Callable[[Any, int, int], int]) -> CheckResult:
    """`fn(cfg, context_len, bytes_per_value) -> int`: bytes of the KV cache with ring buffers on local layers."""
    return run_check("kv_cache_bytes", fn, _kv_cases(), _kv_bytes_reference, "gemma3_minimal.memory.kv_cache_bytes",
                     KV_BYTES_MISTAKES, "sum over layers: slots x 2 (K and V) x kv_heads x head_dim x bytes_per_value.")


# --- 06 SigLIP: 4x4 average pooling of the patch grid -------------------------------------------


def _pool_reference(features: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    from .vision import pool_patches

    return pool_patches(features, tokens_per_image)


def _pool_grid(features: torch.Tensor, tokens_per_image: int) -> tuple[int, int]:
    side, out = math.isqrt(features.shape[1]), math.isqrt(tokens_per_image)
    return side, side // out


def _pool_consecutive(features: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    b, n, c = features.shape
    return features.view(b, tokens_per_image, n // tokens_per_image, c).mean(2)


def _pool_channels_as_grid(features: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    b, n, c = features.shape
    side, k = _pool_grid(features, tokens_per_image)
    grid = features.reshape(b, c, side, side)  # wrong: reinterprets memory instead of moving the channel axis
    return torch.nn.functional.avg_pool2d(grid, k).flatten(2).transpose(1, 2)


def _pool_transposed(features: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    b, n, c = features.shape
    side, k = _pool_grid(features, tokens_per_image)
    grid = features.transpose(1, 2).reshape(b, c, side, side)
    return torch.nn.functional.avg_pool2d(grid, k).transpose(2, 3).flatten(2).transpose(1, 2)


def _pool_max(features: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    b, n, c = features.shape
    side, k = _pool_grid(features, tokens_per_image)
    grid = features.transpose(1, 2).reshape(b, c, side, side)
    return torch.nn.functional.max_pool2d(grid, k).flatten(2).transpose(1, 2)


def _pool_cases(seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(1, 16, 4, 1), (1, 16, 4, 2), (2, 64, 4, 3), (1, 64, 16, 5), (2, 256, 16, 4), (1, 4096, 256, 8)]
    return [Case(f"features of shape [{b}, {n}, {c}] (a {math.isqrt(n)}x{math.isqrt(n)} grid), tokens_per_image={t}",
                 (torch.randn(b, n, c, generator=gen), t)) for b, n, t, c in shapes]


POOLING_MISTAKES = (
    Mistake("consecutive_patches", "the 4096 patches are a 64x64 grid stored row by row: pool 4x4 *squares* "
            "of the grid, not runs of 16 consecutive patches (those are 16 patches of one row).", _pool_consecutive),
    Mistake("wrong_axes", "pooling over the wrong axes: make the grid with `features.transpose(1, 2)` "
            "[B, C, N] *before* reshaping to [B, C, side, side]; a reshape alone mixes channels and patches.",
            _pool_channels_as_grid),
    Mistake("transposed_grid", "the pooled grid comes out row by row (row-major): token r * out_side + c "
            "is the square at row r, column c. Yours lists it column by column.", _pool_transposed),
    Mistake("max_pool", "Gemma 3 *averages* each 4x4 square (avg_pool2d), it does not take the maximum.", _pool_max),
)


def check_patch_pooling(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> CheckResult:
    """`fn(features [B, N, C], tokens_per_image) -> [B, tokens_per_image, C]`: average-pool the patch grid."""
    return run_check("pool_patches", fn, _pool_cases(), _pool_reference, "gemma3_minimal.vision.pool_patches",
                     POOLING_MISTAKES, "draw a 4x4 grid of patch numbers and check which ones each output token averages.")


# --- 07 Pan&Scan: how many crops ---------------------------------------------------------------


def _crop_count_reference(width: int, height: int) -> int:
    from .pan_and_scan import pan_and_scan_boxes

    return len(pan_and_scan_boxes(width, height))


def _crops(width: int, height: int, n_of: Callable[[int, int], int], cap: bool = True, min_crop: bool = True,
           activate: bool = True) -> int:
    long, short = max(width, height), min(width, height)
    if activate and long / short < 1.2:
        return 0
    n = n_of(long, short)
    if cap:
        n = min(long // 256, n)
    n = min(4, max(2, n))
    if min_crop and min(math.ceil(long / n), short) < 256:
        return 0
    return n


CROP_COUNT_MISTAKES = (
    Mistake("round_half_even", "Python's round() rounds halves to even (round(2.5) == 2); "
            "Pan&Scan rounds halves up: floor(long / short + 0.5).", lambda w, h: _crops(w, h, lambda l, s: round(l / s))),
    Mistake("floor", "round long / short to the nearest integer (halves up), don't truncate it.",
            lambda w, h: _crops(w, h, lambda l, s: l // s)),
    Mistake("no_cap", "cap the count by floor(long / min_crop_size): every crop must keep at least 256 pixels "
            "along the long side too.", lambda w, h: _crops(w, h, lambda l, s: math.floor(l / s + 0.5), cap=False)),
    Mistake("no_min_crop", "no crops at all when a crop would be smaller than min_crop_size (256) on either side.",
            lambda w, h: _crops(w, h, lambda l, s: math.floor(l / s + 0.5), min_crop=False)),
    Mistake("always_active", "Pan&Scan only applies when long / short >= 1.2; squarer images get 0 crops.",
            lambda w, h: _crops(w, h, lambda l, s: math.floor(l / s + 0.5), activate=False)),
)


def _crop_cases(n_random: int = 20, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    sizes = [(1800, 600), (600, 1800), (1000, 1000), (1100, 1000), (1200, 1000), (1280, 512), (767, 300),
             (1500, 200), (3000, 400), (5000, 1000), (640, 256), (600, 300)]
    sizes += [(rng.randint(100, 4000), rng.randint(100, 4000)) for _ in range(n_random)]
    return [Case(f"width={w}, height={h}", (w, h)) for w, h in sizes]


def check_pan_and_scan_crop_count(fn: Callable[[int, int], int]) -> CheckResult:
    """`fn(width, height) -> int`: how many Pan&Scan crops (0 when it does not apply), default settings."""
    return run_check("crop_count", fn, _crop_cases(), _crop_count_reference,
                     "len(gemma3_minimal.pan_and_scan.pan_and_scan_boxes)", CROP_COUNT_MISTAKES,
                     "follow the rule step by step: ratio test, round half up, cap, clamp to [2, 4], minimum crop size.")


# --- 08 distillation: the sampled target -------------------------------------------------------


def _dense_target_reference(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    from .distill import sample_teacher_targets

    ids, weights = sample_teacher_targets(teacher_logits, num_samples, torch.Generator().manual_seed(seed))
    return torch.zeros(teacher_logits.shape).scatter_add_(-1, ids, weights)


def _draws(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """The draws every version starts from: the exact call the exercise gives the learner."""
    probs = torch.softmax(teacher_logits.float(), dim=-1)
    return torch.multinomial(probs, num_samples, replacement=True, generator=torch.Generator().manual_seed(seed))


def _target_teacher_probs(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    drawn = torch.zeros(teacher_logits.shape).scatter_(-1, _draws(teacher_logits, num_samples, seed), 1.0) > 0
    p = torch.softmax(teacher_logits.float(), dim=-1) * drawn
    return p / p.sum(-1, keepdim=True)


def _target_counts(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    draws = _draws(teacher_logits, num_samples, seed)
    return torch.zeros(teacher_logits.shape).scatter_add_(-1, draws, torch.ones(draws.shape))


def _target_uniform(teacher_logits: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    drawn = torch.zeros(teacher_logits.shape).scatter_(-1, _draws(teacher_logits, num_samples, seed), 1.0)
    return drawn / drawn.sum(-1, keepdim=True)


SAMPLED_TARGET_MISTAKES = (
    Mistake("teacher_probs_renormalized", "weight each id by how often it was drawn (count / num_samples): that "
            "is an unbiased estimate of the teacher. Keeping the teacher's probabilities of the drawn ids and "
            "renormalizing inflates them (every likely id is drawn).", _target_teacher_probs),
    Mistake("counts_not_normalized", "divide the counts by num_samples, so each token's target sums to 1.", _target_counts),
    Mistake("uniform_over_drawn", "an id drawn 3 times weighs 3 times as much as one drawn once: count repeats.",
            _target_uniform),
)


def _target_cases(seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [((1, 6), 4), ((2, 10), 8), ((3, 50), 256), ((4, 100), 16), ((1, 1000), 256)]
    cases = [Case("teacher_logits = [[0, 0, 0, 0, 0, 8]] (one likely id), num_samples=16, seed=1",
                  (torch.tensor([[0.0, 0, 0, 0, 0, 8]]), 16, 1))]
    for i, (shape, k) in enumerate(shapes):
        logits = 3 * torch.randn(*shape, generator=gen)
        cases.append(Case(f"teacher_logits of shape {list(shape)}, num_samples={k}, seed={i}", (logits, k, i)))
    return cases


def check_sampled_target(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> CheckResult:
    """`fn(teacher_logits [N, V], num_samples, seed) -> [N, V]`: the dense sampled-distillation target."""
    return run_check("sampled_target", fn, _target_cases(), _dense_target_reference,
                     "gemma3_minimal.distill.sample_teacher_targets", SAMPLED_TARGET_MISTAKES,
                     "count how many times each id was drawn, per token, and divide by num_samples.")
