"""Exercise checkers for notebook 01: byte fallback, BPE merges and the chat template of the real tokenizer."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

from ...tokenizer import Gemma3Tokenizer, render_chat
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


# --- BPE merges ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _merge_scores() -> dict[str, float]:
    """Every ordinary piece of the vocabulary and its score (control and byte pieces never merge)."""
    sp = _tokenizer().sp
    return {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())
            if not (sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i))}


def _bpe(text: str, scores: dict[str, float], pick: Callable[[list[str], dict[str, float]], object],
         space: str = "▁") -> list[str]:
    """BPE from single characters; `pick(pieces, scores)` names the pair to merge next (None: stop)."""
    pieces = list(text.replace(" ", space))
    while (i := pick(pieces, scores)) is not None:
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def _best_pair(pieces: list[str], scores: dict[str, float]):
    mergeable = [i for i in range(len(pieces) - 1) if pieces[i] + pieces[i + 1] in scores]
    return max(mergeable, key=lambda i: (scores[pieces[i] + pieces[i + 1]], -i), default=None)


def _first_pair(pieces: list[str], scores: dict[str, float]):
    return next((i for i in range(len(pieces) - 1) if pieces[i] + pieces[i + 1] in scores), None)


def _worst_pair(pieces: list[str], scores: dict[str, float]):
    mergeable = [i for i in range(len(pieces) - 1) if pieces[i] + pieces[i + 1] in scores]
    return min(mergeable, key=lambda i: (scores[pieces[i] + pieces[i + 1]], i), default=None)


def _bpe_reference(text: str, scores: dict[str, float]) -> list[str]:
    tok = _tokenizer()
    return [tok.id_to_piece(i) for i in tok.encode(text)]


BPE_TEXTS = ["Hello world", "tokenization", "Mississippi", "aaaaaaaaaa", " two  spaces ", "x",
             "unbelievably", "internationalization", "naïve café", "The quick brown fox jumps over the lazy dog.",
             "supercalifragilisticexpialidocious", "hello\nworld", "Straße", "日本語のテキスト"]


def _bpe_cases(n_random: int = 6, seed: int = 0) -> list[Case]:
    """Fixed texts, then seeded random strings of letters and spaces (all characters in the vocabulary)."""
    rng = random.Random(seed)
    texts = list(BPE_TEXTS)
    for _ in range(n_random):
        texts.append("".join(rng.choice("etaoinshrdlu  ") for _ in range(rng.randint(3, 24))))
    return [Case(f"text={t!r}", (t, _merge_scores())) for t in texts]


BPE_MISTAKES = (
    Mistake("first_pair", "merge the *best* pair (the merged piece with the highest score), not the first "
            "mergeable pair from the left: the score is the merge's rank.",
            lambda t, s: _bpe(t, s, _first_pair)),
    Mistake("lowest_score", "a higher score means an earlier merge: take the pair whose merged piece has the "
            "*highest* score (scores are negative; -10 beats -5000).", lambda t, s: _bpe(t, s, _worst_pair)),
    Mistake("spaces_kept", "SentencePiece writes a space as the piece character '▁' (U+2581) before merging: "
            "`text.replace(' ', '▁')`.", lambda t, s: _bpe(t, s, _best_pair, space=" ")),
)


def check_bpe_pieces(fn: Callable[[str, dict], list[str]]) -> CheckResult:
    """`fn(text, scores) -> list[str]`: the pieces BPE makes of `text`, merging the best-scored pair first."""
    return run_check("bpe_pieces", fn, _bpe_cases(), _bpe_reference, "Gemma3Tokenizer.encode", BPE_MISTAKES,
                     "print the pieces after every merge on this text; each step merges one adjacent pair.")


# --- the chat template --------------------------------------------------------------------------


def _turns(*texts: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def _chat_cases() -> list[Case]:
    conversations = [
        (_turns("Hi"), True),
        (_turns("What is 2 + 2?", "4.", "And 3 + 3?"), True),
        ([{"role": "system", "content": "Answer in French."}] + _turns("Hello!"), True),
        (_turns("  Padded question?  \n", " Padded answer. "), False),
        (_turns("Write a haiku.", "Leaves fall.\nQuiet."), True),
        ([{"role": "system", "content": "Be brief."}] + _turns("One?", "Two.", "Three?"), True),
        (_turns("Hi"), False),
    ]
    return [Case(f"messages={m!r}, add_generation_prompt={g}", (m, g)) for m, g in conversations]


def _chat_variant(messages: list[dict], add_generation_prompt: bool, assistant: str = "model",
                  system_turn: bool = False, strip: bool = True, newline: str = "\n") -> str:
    out = ["<bos>"]
    prefix = ""
    if messages and messages[0]["role"] == "system":
        if system_turn:
            out.append(f"<start_of_turn>system\n{messages[0]['content'].strip()}<end_of_turn>\n")
        else:
            prefix = messages[0]["content"] + "\n\n"
        messages = messages[1:]
    for i, m in enumerate(messages):
        role = assistant if m["role"] == "assistant" else "user"
        text = m["content"].strip() if strip else m["content"]
        out.append(f"<start_of_turn>{role}\n{prefix if i == 0 else ''}{text}<end_of_turn>{newline}")
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return "".join(out)


CHAT_MISTAKES = (
    Mistake("assistant_role", "Gemma's template calls the assistant `model`: write `<start_of_turn>model`, "
            "never `<start_of_turn>assistant`.", lambda m, g: _chat_variant(m, g, assistant="assistant")),
    Mistake("system_turn", "Gemma 3 has no system role: the system text goes at the start of the first user turn, "
            "followed by a blank line (`system + '\\n\\n' + user`).", lambda m, g: _chat_variant(m, g, system_turn=True)),
    Mistake("not_stripped", "the template strips each turn's text (`.strip()`) before writing it.",
            lambda m, g: _chat_variant(m, g, strip=False)),
    Mistake("no_newline_after_turn", "every `<end_of_turn>` is followed by a newline `\\n`.",
            lambda m, g: _chat_variant(m, g, newline="")),
    Mistake("generation_prompt_ignored", "with add_generation_prompt=True, end with `<start_of_turn>model\\n` "
            "(the model's turn begins); with False, don't.",
            lambda m, g: _chat_variant(m, not g)),
)


def check_chat_prompt(fn: Callable[[list, bool], str]) -> CheckResult:
    """`fn(messages, add_generation_prompt) -> str`: the conversation in Gemma 3's chat format."""
    return run_check("chat_prompt", fn, _chat_cases(), render_chat, "gemma3_minimal.tokenizer.render_chat",
                     CHAT_MISTAKES, "print your text and the expected one with repr() and compare them character by character.")
