"""Exercise checkers: each accepts its worked solution, rejects typical mistakes with the matching
hint, and reports a learner's errors kindly; learner notebooks are generated and up to date."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import types
from pathlib import Path

import nbformat
import pytest
import torch

from gemma3_minimal.course import exercises as ex
from gemma3_minimal.course.exercises.masks import _window_cases as window_cases
from gemma3_minimal.masks import sliding_window_mask

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "notebooks" / "exercises"
SOLUTIONS = EXERCISES / "solutions"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_exercises", ROOT / "tools" / "make_exercises.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_exercises = load_generator()


def run_cells(cells: list[str]) -> tuple[dict, list[str]]:
    """Execute code cells in one namespace, as a kernel would; return it and each cell's stdout."""
    namespace: dict = {}
    printed = []
    for source in cells:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(source, "<cell>", "exec"), namespace)
        printed.append(buffer.getvalue())
    return namespace, printed


def solution_functions(notebook: str) -> dict:
    """The worked solutions of one notebook: its first code cell (imports) and every solution cell, run."""
    nb = nbformat.read(SOLUTIONS / notebook, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    namespace, _ = run_cells([code[0]] + [s for s in code[1:] if make_exercises.BEGIN in s])
    return namespace


# (solution notebook, function the learner writes, its checker)
EXERCISE_TABLE = [
    ("01_tokenizer.ipynb", "byte_fallback_pieces", ex.check_byte_fallback),
    ("02_attention_masks.ipynb", "sliding_window_mask", ex.check_sliding_window_mask),
    ("03_rope.ipynb", "apply_rope", ex.check_rope),
    ("04_decoder_block.ipynb", "rms_norm", ex.check_rms_norm),
    ("04_decoder_block.ipynb", "repeat_kv", ex.check_repeat_kv),
    ("05_kv_cache_and_memory.ipynb", "kv_cache_bytes", ex.check_kv_cache_bytes),
    ("06_siglip_compression.ipynb", "pool_patches", ex.check_patch_pooling),
    ("07_pan_and_scan.ipynb", "crop_count", ex.check_pan_and_scan_crop_count),
    ("08_distillation.ipynb", "sampled_target", ex.check_sampled_target),
    ("12_quantization.ipynb", "round_trip", ex.check_round_trip),
    ("12_quantization.ipynb", "q4k_scale_min", ex.check_q4k_scale_min),
]


@pytest.mark.parametrize("notebook, function, checker", EXERCISE_TABLE, ids=[t[1] for t in EXERCISE_TABLE])
def test_checker_accepts_the_worked_solution(notebook, function, checker, capsys):
    result = checker(solution_functions(notebook)[function])
    assert result.passed and result.mistake is None
    assert "✅" in capsys.readouterr().out


# --- typical wrong answers, written as a learner would ------------------------------------------


def positions(t):
    return torch.arange(t)[:, None], torch.arange(t)[None, :]


def mask_window_plus_one(t, w):
    q, k = positions(t)
    return (k <= q) & (k >= q - w)


def mask_symmetric(t, w):
    q, k = positions(t)
    return (q - k).abs() < w


def rope_parts(x, pos, base):
    d = x.shape[-1]
    angles = pos.float()[:, None] / base ** (torch.arange(0, d, 2).float() / d)
    return angles.cos(), angles.sin(), x[:, : d // 2], x[:, d // 2 :]


def rope_interleaved(x, pos, base):
    cos, sin, _, _ = rope_parts(x, pos, base)
    a, b = x[:, 0::2], x[:, 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(1)


def rope_halves_swapped(x, pos, base):
    cos, sin, x1, x2 = rope_parts(x, pos, base)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def rms_scale_w(x, w, eps=1e-6):
    h = x.float()
    return (h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w).type_as(x)


def rms_layer_norm(x, w, eps=1e-6):
    h = x.float()
    return (torch.nn.functional.layer_norm(h, h.shape[-1:], eps=eps) * (1 + w)).type_as(x)


def rms_bf16(x, w, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + w.to(x.dtype))


def pool_rows(f, tokens):
    b, n, c = f.shape
    return f.view(b, tokens, n // tokens, c).mean(2)


def pool_reshaped_without_transpose(f, tokens):
    b, n, c = f.shape
    side = math.isqrt(n)
    image = f.reshape(b, c, side, side)
    return torch.nn.functional.avg_pool2d(image, side // math.isqrt(tokens)).flatten(2).transpose(1, 2)


def pool_column_major(f, tokens):
    b, n, c = f.shape
    out, k = math.isqrt(tokens), math.isqrt(n) // math.isqrt(tokens)
    return f.view(b, out, k, out, k, c).mean((2, 4)).transpose(1, 2).reshape(b, tokens, c)


def crop_count_with(n_of, cap=True):
    def crop_count(width, height):
        long, short = max(width, height), min(width, height)
        if long / short < 1.2:
            return 0
        n = n_of(long / short)
        n = min(4, max(2, min(n, long // 256) if cap else n))
        return 0 if min(math.ceil(long / n), short) < 256 else n

    return crop_count


def kv_bytes_with(local_slots, per_slot=lambda cfg: 2 * cfg.num_key_value_heads * cfg.head_dim):
    def kv_cache_bytes(cfg, context_len, bytes_per_value):
        slots = [local_slots(cfg, context_len) if kind == "sliding_attention" else context_len
                 for kind in cfg.layer_types]
        return sum(slots) * per_slot(cfg) * bytes_per_value

    return kv_cache_bytes


def draws(logits, k, seed):
    probs = torch.softmax(logits.float(), -1)
    return probs, torch.multinomial(probs, k, replacement=True, generator=torch.Generator().manual_seed(seed))


def target_teacher_probs(logits, k, seed):
    probs, drawn = draws(logits, k, seed)
    kept = torch.zeros_like(probs).scatter(-1, drawn, 1.0) * probs
    return kept / kept.sum(-1, keepdim=True)


def target_counts(logits, k, seed):
    probs, drawn = draws(logits, k, seed)
    return torch.nn.functional.one_hot(drawn, probs.shape[-1]).sum(1).float()


def round_trip_with(qmax=lambda bits: 2 ** (bits - 1) - 1, rounding=torch.round, per_row=False):
    def round_trip(w, bits, group_size):
        groups = w.reshape(w.shape[0], -1, w.shape[1] if per_row else group_size)
        scale = (groups.abs().amax(-1, keepdim=True) / qmax(bits)).to(torch.bfloat16).float()
        return (rounding(groups / scale).clamp(-qmax(bits), qmax(bits)) * scale).reshape(w.shape)
    return round_trip


def q4k_low_bits_only(q, j):
    return (q[j] & 63, q[j + 4] & 63) if j < 4 else (q[j + 4] & 0xF, q[j + 4] >> 4)


def q4k_min_from_low_nibble(q, j):
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] >> 4) | ((q[j - 4] >> 6) << 4), (q[j + 4] & 0xF) | ((q[j] >> 6) << 4)


WRONG_ANSWERS = [
    (ex.check_byte_fallback, lambda ch: [f"<0x{ord(ch):02X}>"], "code_point"),
    (ex.check_byte_fallback, lambda ch: [f"<0x{b:02x}>" for b in ch.encode()], "lowercase_hex"),
    (ex.check_byte_fallback, lambda ch: [f"<0x{b:X}>" for b in ch.encode()], "no_zero_padding"),
    (ex.check_sliding_window_mask, mask_window_plus_one, "off_by_one_window_too_many"),
    (ex.check_sliding_window_mask, mask_symmetric, "not_causal"),
    (ex.check_sliding_window_mask, lambda t, w: torch.ones(t, t).tril().bool(), "causal_only"),
    (ex.check_rope, rope_interleaved, "interleaved"),
    (ex.check_rope, rope_halves_swapped, "halves_swapped"),
    (ex.check_rms_norm, rms_scale_w, "scale_w"),
    (ex.check_rms_norm, rms_layer_norm, "layer_norm"),
    (ex.check_rms_norm, rms_bf16, "input_dtype"),
    (ex.check_repeat_kv, lambda x, n: x.repeat(1, n, 1, 1), "tiled"),
    (ex.check_repeat_kv, lambda x, n: torch.cat([x] * n, dim=1), "tiled"),
    (ex.check_repeat_kv, lambda x, n: x.repeat_interleave(n, dim=2), "wrong_dim"),
    (ex.check_patch_pooling, pool_rows, "consecutive_patches"),
    (ex.check_patch_pooling, pool_reshaped_without_transpose, "wrong_axes"),
    (ex.check_patch_pooling, pool_column_major, "transposed_grid"),
    (ex.check_pan_and_scan_crop_count, crop_count_with(round), "round_half_even"),
    (ex.check_pan_and_scan_crop_count, crop_count_with(int), "floor"),
    (ex.check_pan_and_scan_crop_count, crop_count_with(lambda r: math.floor(r + 0.5), cap=False), "no_cap"),
    (ex.check_kv_cache_bytes, kv_bytes_with(lambda cfg, n: n), "no_ring_buffer"),
    (ex.check_kv_cache_bytes, kv_bytes_with(lambda cfg, n: cfg.sliding_window), "window_not_capped"),
    (ex.check_kv_cache_bytes, kv_bytes_with(lambda cfg, n: min(cfg.sliding_window, n),
                                            lambda cfg: 2 * cfg.num_attention_heads * cfg.head_dim), "query_heads"),
    (ex.check_sampled_target, target_teacher_probs, "teacher_probs_renormalized"),
    (ex.check_sampled_target, target_counts, "counts_not_normalized"),
    (ex.check_round_trip, round_trip_with(rounding=torch.trunc), "truncation"),
    (ex.check_round_trip, round_trip_with(per_row=True), "one_scale_per_row"),
    (ex.check_round_trip, round_trip_with(qmax=lambda bits: 2 ** (bits - 1)), "power_of_two_range"),
    (ex.check_q4k_scale_min, q4k_low_bits_only, "low_bits_only"),
    (ex.check_q4k_scale_min, q4k_min_from_low_nibble, "nibbles_swapped"),
]


def known_hint(mistake: str) -> str:
    chapters = [m for m in vars(ex).values() if isinstance(m, types.ModuleType)]  # one module per chapter
    tables = [v for chapter in chapters for k, v in vars(chapter).items() if k.endswith("_MISTAKES")]
    return next(m.hint for table in tables for m in table if m.name == mistake)


@pytest.mark.parametrize("checker, wrong, mistake", WRONG_ANSWERS, ids=[w[2] for w in WRONG_ANSWERS])
def test_checker_rejects_a_typical_mistake_with_its_hint(checker, wrong, mistake):
    result = checker(wrong)
    assert not result.passed
    assert result.mistake == mistake
    assert f"Hint: {known_hint(mistake)}" in result.message
    assert "expected" in result.message and "got" in result.message


def test_each_checker_is_tested_against_two_different_mistakes():
    for _, _, checker in EXERCISE_TABLE:
        assert len({m for c, _, m in WRONG_ANSWERS if c is checker}) >= 2, checker.__name__


def test_mistake_names_are_unique():
    names = [m.name for k, v in vars(ex).items() if k.endswith("_MISTAKES") for m in v]
    assert len(names) == len(set(names))


# --- how a learner's failures are reported ------------------------------------------------------


def test_an_unwritten_stub_gets_a_kind_message():
    def stub(seq_len, window):
        raise NotImplementedError("replace this line with your code")

    result = ex.check_sliding_window_mask(stub)
    assert not result.passed and "not written yet" in result.message


def test_an_error_in_the_learners_code_names_the_input_and_the_line():
    def broken(seq_len, window):
        q = torch.arange(seq_len)
        return q[:, None] <= q[None, :, None, 5]

    result = ex.check_sliding_window_mask(broken)
    assert "sliding_window_mask(seq_len=8, window=4) raised IndexError" in result.message
    assert "in your line: return q[:, None] <= q[None, :, None, 5]" in result.message


def test_an_unknown_mistake_gets_the_general_hint_and_a_grid():
    result = ex.check_sliding_window_mask(lambda t, w: torch.eye(t, dtype=torch.bool))
    assert not result.passed and result.mistake is None
    assert "Hint: write the condition for one (q, k) pair first" in result.message
    assert "1 0 0 0 0 0 0 0\n" in result.message  # masks are shown as 0/1 grids


def test_wrong_shape_and_dtype_are_named():
    assert "expected shape [8, 8], got shape [8]" in ex.check_sliding_window_mask(lambda t, w: torch.ones(t)).message
    float_mask = ex.check_sliding_window_mask(lambda t, w: sliding_window_mask(t, w).float()).message
    assert "expected dtype torch.bool, got dtype torch.float32" in float_mask
    assert "Hint: return a torch.bool tensor" in float_mask


def test_passing_a_result_instead_of_a_function_is_explained():
    assert "Pass the function itself" in ex.check_repeat_kv(torch.zeros(3)).message


def test_a_result_shows_nothing_more_in_a_notebook():
    result = ex.CheckResult("x", True, "ok")
    assert result and result._ipython_display_() is None


# --- the notebooks ------------------------------------------------------------------------------


def solution_notebooks() -> list[Path]:
    return sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))


def test_every_core_notebook_has_exercises():
    assert [p.name[:2] for p in solution_notebooks()] == [f"{n:02d}" for n in range(1, 9)] + ["12"]  # 12: quantization
    assert {notebook for notebook, _, _ in EXERCISE_TABLE} == {p.name for p in solution_notebooks()}


def test_learner_notebooks_are_generated_and_up_to_date():
    learner = sorted(p.name for p in EXERCISES.glob("*.ipynb"))
    assert learner == [p.name for p in solution_notebooks()]
    for path in solution_notebooks():
        expected = make_exercises.learner_text(path)
        assert (EXERCISES / path.name).read_text(encoding="utf-8") == expected, (
            f"{path.name} is stale: run `python tools/make_exercises.py`"
        )


def test_learner_notebooks_hide_the_solutions_and_run_to_the_end():
    """Every stub cell raises only when called, so 'Run all' reaches every checker, which says 'not yet'."""
    for path in solution_notebooks():
        solution = nbformat.read(path, as_version=4)
        learner = nbformat.read(EXERCISES / path.name, as_version=4)
        hidden = [c.source for c in solution.cells if make_exercises.BEGIN in c.source]
        assert all(s not in [c.source for c in learner.cells] for s in hidden)
        code = [c.source for c in learner.cells if c.cell_type == "code"]
        _, printed = run_cells(code)
        checks = [out for source, out in zip(code, printed) if source.startswith("check_")]
        assert len(checks) == len(hidden) >= 1
        assert all("not written yet" in out for out in checks)


def test_stub_markers_are_replaced_at_their_indentation():
    source = "def f(x):\n    y = x\n    # BEGIN SOLUTION\n    return y\n    # END SOLUTION"
    assert make_exercises.learner_source(source) == f"def f(x):\n    y = x\n    {make_exercises.STUB}"
    with pytest.raises(ValueError, match="without"):
        make_exercises.learner_source("# BEGIN SOLUTION\nx = 1")


def test_checkers_start_with_the_visible_case_then_edges_and_random_inputs():
    cases = [c.args for c in window_cases()]
    assert cases[0] == (8, 4)  # the notebook's picture
    assert {(1, 1), (3, 5), (4, 4)} <= set(cases)  # one token, window past the end, window = length
    assert len(set(cases)) == len(cases) > 10
