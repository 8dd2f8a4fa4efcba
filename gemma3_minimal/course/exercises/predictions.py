"""Predict, then run: one question per notebook whose answer the learner writes down before running.

The learner returns a number (or a tuple of numbers) from a `predict_...` function; the checker
computes the answer with the library, says whether the prediction is right (exactly, or within a
tolerance for sizes in GiB) and explains it either way. Predictions are practice, not graded.

    check_prediction("first_visible_key", predict_first_visible_key)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gguf
import torch

from ...config import get_config
from ...distill import sparse_cross_entropy
from ...memory import decoder_layer_parameters, kv_cache_bytes
from ...pan_and_scan import pan_and_scan_boxes
from ...rope import rope_inv_freq
from ...tokenizer import Gemma3Tokenizer
from .engine import CheckResult

GIB = 2**30


@dataclass(frozen=True)
class Prediction:
    """A question, its answer computed with the library, why that is the answer, and how close counts."""

    question: str
    answer: Callable[[], Any]
    why: str
    rel_tol: float = 0.0  # 0: exact


def _chat_tokens() -> int:
    tok = Gemma3Tokenizer.from_pretrained()
    return len(tok.apply_chat_template([{"role": "user", "content": "Hi"}]))


def _same_angle_position() -> float:
    scaled, plain = rope_inv_freq(256, 1e6, get_config("4b").rope_scaling_factor), rope_inv_freq(256, 1e6)
    return round(80_000 * float(scaled[1] / plain[1]))


def _kv_27b_gib() -> tuple[float, float]:
    return (round(kv_cache_bytes("27b", 131_072) / GIB, 2), round(kv_cache_bytes("27b", 131_072, sliding=False) / GIB, 2))


def _uniform_student_loss() -> float:
    vocab = get_config("270m").vocab_size
    loss = sparse_cross_entropy(torch.zeros(1, vocab), torch.tensor([[7, 42, 1000]]), torch.tensor([[0.5, 0.3, 0.2]]))
    return round(float(loss), 2)


def _pan_and_scan_tokens() -> int:
    return (1 + len(pan_and_scan_boxes(3000, 400))) * 256


PREDICTIONS = {
    "chat_tokens": Prediction(
        "How many tokens is the chat prompt for one user message 'Hi', with the generation prompt?",
        _chat_tokens,
        "<bos>, <start_of_turn>, 'user', '\\n', 'Hi', <end_of_turn>, '\\n', <start_of_turn>, 'model', '\\n': "
        "each control piece is one token, and so are the role names and each newline."),
    "first_visible_key": Prediction(
        "In a local layer of the 270M (window 512), which is the first key position a query at position 700 sees?",
        lambda: 700 - get_config("270m").sliding_window + 1,
        "a query sees `window` keys including itself: positions 189..700 (700 - 512 + 1 = 189). In a global "
        "layer it would see 0..700."),
    "same_angle_position": Prediction(
        "A global layer of the 4B (x8 scaling) rotates position 80,000 by the same angles as which position in "
        "the 1B's global layers (same base 1M, no scaling)?",
        _same_angle_position,
        "the frequencies are divided by 8, so position p turns like p / 8 did: 80,000 -> 10,000. Positions "
        "up to 128K look like positions up to 16K, inside the 32K the model was pre-trained on (report §5.3)."),
    "block_parameters": Prediction(
        "How many parameters does one decoder block of the 270M have (hidden 640, 4 query heads, 1 K/V head, "
        "head_dim 256, MLP 2048)?",
        lambda: decoder_layer_parameters(get_config("270m")),
        "q and o: 2 x 640 x 1024; k and v: 2 x 640 x 256; QK-norm 2 x 256; GeGLU 3 x 640 x 2048; four norms "
        "4 x 640: 5,573,632. The MLP is 71% of the block."),
    "kv_27b_128k": Prediction(
        "The 27B's KV cache for one 128K-token sequence in bfloat16, in GiB: (with its 5:1 local layers, "
        "if every layer were global)?",
        _kv_27b_gib,
        "62 layers, 16 K/V heads x 128 dims x 2 (K and V) x 2 bytes = 8 KiB per slot and layer. All global: "
        "62 x 131,072 slots = 62 GiB. With 52 local layers of 1,024 slots and 10 global ones: 10.4 GiB, "
        "six times less (report §5.2, Figures 5-6).",
        rel_tol=0.05),
    "soft_tokens": Prediction(
        "For one 896x896 image: (how many soft tokens does the language model read, how many SigLIP patch "
        "vectors does each of them average)?",
        lambda: (256, (896 // 14) ** 2 // 256),
        "896 / 14 = 64 patches per side, 4,096 in all; 4x4 average pooling keeps 16 x 16 = 256 tokens, each "
        "the mean of 16 patch vectors (report §5.5)."),
    "pan_and_scan_tokens": Prediction(
        "How many image soft tokens does a 3000 x 400 image cost with Pan&Scan (the image and its crops)?",
        _pan_and_scan_tokens,
        "3000 / 400 = 7.5 rounds to 8, capped by 3000 // 256 = 11 and clamped to 4 crops of 750 x 400; the "
        "original and 4 crops are 5 images of 256 tokens: 1,280."),
    "ring_slot_after_decode": Prediction(
        "After a 600-token prompt and 24 decoded tokens, which position does slot 0 of a 270M local layer's "
        "ring buffer (512 slots) hold?",
        lambda: max(p for p in range(600 + 24) if p % get_config("270m").sliding_window == 0),
        "position p lives in slot p % 512; positions 0..623 have been written, and the last one with "
        "p % 512 == 0 is 512, which overwrote position 0. Slot 111 holds 623, the newest."),
    "layers_reaching_back_5000": Prediction(
        "How many of the 270M's 18 layers can attend to a key 5,000 positions before the query?",
        lambda: get_config("270m").num_global_layers,
        "only the global layers (every 6th: layers 5, 11, 17) see the whole context; the 15 local layers "
        "see the last 512 positions. What lies further back reaches the local layers only through them."),
    "q4_k_bits_per_weight": Prediction(
        "How many bits per weight does a Q4_K super-block of the GGUF spend (256 weights, with their scales and mins)?",
        lambda: (lambda n, size: size * 8 / n)(*gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_K]),
        "a super-block is 144 bytes: 128 bytes of 4-bit codes for 256 weights, 12 bytes of 6-bit sub-block "
        "scales and mins, and a float16 scale and min (4 bytes): 144 x 8 / 256 = 4.5 bits per weight."),
    "uniform_student_loss": Prediction(
        "A student whose logits are all equal, over the 270M's vocabulary of 262,144 tokens: its sparse "
        "cross-entropy (in nats) against a sampled target, say ids [7, 42, 1000] with weights [0.5, 0.3, 0.2]?",
        _uniform_student_loss,
        "every id has q = 1 / 262,144, so each -log q is ln 262,144 = 18 ln 2 = 12.48; the weights sum to 1, "
        "so that is the loss whatever the target.",
        rel_tol=0.01),
}


def _numbers(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _close(predicted: Any, answer: Any, rel_tol: float) -> bool:
    p, a = _numbers(predicted), _numbers(answer)
    if len(p) != len(a) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in p):
        return False
    return all(abs(x - y) <= rel_tol * abs(y) for x, y in zip(p, a))


def check_prediction(name: str, fn: Callable[[], Any]) -> CheckResult:
    """Compare the learner's prediction `fn()` with the library's answer to question `name`, and explain it."""
    if name not in PREDICTIONS:
        raise ValueError(f"unknown prediction {name!r}; the questions are: {', '.join(PREDICTIONS)}")
    question = PREDICTIONS[name]
    exercise = getattr(fn, "__name__", name)
    try:
        predicted = fn()
    except NotImplementedError:
        message = (f"⏳ {exercise} is not written yet: write your prediction first (return it in place of the "
                   "`raise NotImplementedError(...)` line), then run this cell: the answer comes with it.")
        print(message)
        return CheckResult(exercise, False, message)
    answer = question.answer()
    shape = "a tuple of " + str(len(_numbers(answer))) + " numbers" if isinstance(answer, tuple) else "a number"
    if _close(predicted, answer, question.rel_tol):
        verdict = f"✅ {exercise}: you predicted {predicted!r}, the library computes {answer!r}. Right!"
    else:
        verdict = f"❌ {exercise}: you predicted {predicted!r} ({shape} was asked), the library computes {answer!r}."
    message = f"{verdict}\nWhy: {question.why}"
    print(message)
    return CheckResult(exercise, verdict.startswith("✅"), message)
