"""Checkers for the classroom exercises in `notebooks/exercises/`: one module per chapter, one engine.

Each `check_*` runs a learner's function against the library on edge cases and seeded random
inputs, stops at the first mismatch and explains it: which input, expected against got, and a
hint that names a typical mistake when the learner's output equals that of a known wrong variant.

    from gemma3_minimal.course.exercises import check_sliding_window_mask
    result = check_sliding_window_mask(sliding_window_mask)   # prints the verdict
    result.passed, result.mistake                              # True, None
"""

from .decoder_block import check_repeat_kv, check_rms_norm
from .distillation import check_sampled_target
from .engine import Case, CheckResult, Mistake, difference, run_check
from .kv_cache import check_kv_cache_bytes
from .masks import check_sliding_window_mask
from .pan_and_scan import check_pan_and_scan_crop_count
from .quantization import check_q4k_scale_min, check_round_trip
from .rope import check_rope
from .siglip import check_patch_pooling
from .tokenizer import check_byte_fallback
