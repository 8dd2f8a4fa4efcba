"""Exercise checkers for notebook 01: the real tokenizer's byte fallback."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

from ...tokenizer import Gemma3Tokenizer
from .engine import Case, CheckResult, Mistake, run_check


@functools.lru_cache(maxsize=1)
def _tokenizer():

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
