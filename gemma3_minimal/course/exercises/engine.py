"""The checking engine behind the classroom exercises in `notebooks/exercises/` (one file per chapter beside it).

Each `check_*` runs a learner's function against the library on edge cases and seeded random
inputs, stops at the first mismatch and explains it: which input, expected against got, and a
hint. The hint names a typical mistake when the learner's output equals that of a known wrong
variant (an off-by-one window, RoPE pairs interleaved, a scale of `w` instead of `1 + w`, ...).

    result = check_sliding_window_mask(sliding_window_mask)   # prints the verdict
    result.passed, result.mistake                              # True, None

Errors raised by the learner's code (a `NotImplementedError` stub included) become a message too.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

HERE = Path(__file__).resolve().parent  # the checkers' own frames are not the learner's



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
    if isinstance(expected, tuple) and any(isinstance(e, torch.Tensor) for e in expected):
        if not isinstance(got, tuple) or len(got) != len(expected):
            return f"expected a tuple of {len(expected)} items, got {_describe(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            why = difference(e, g, tolerance)
            if why is not None:
                return f"item {i} of the tuple: {why}"
        return None
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
        if Path(f.filename).parent != HERE and not any(part in Path(f.filename).parts for part in ("site-packages", "torch"))
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
    result = verdict(exercise, fn, cases, reference, reference_name, mistakes, fallback_hint)
    print(result.message)
    return result


def verdict(exercise, fn, cases, reference, reference_name, mistakes=(), fallback_hint="") -> CheckResult:
    """`run_check` without printing: for checkers that accept more than one right answer."""
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
