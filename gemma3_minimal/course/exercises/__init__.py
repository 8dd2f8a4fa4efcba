"""Checkers for the classroom exercises in `notebooks/exercises/`: one module per chapter, one engine.

Each `check_*` runs a learner's function against the library on edge cases and seeded random
inputs, stops at the first mismatch and explains it: which input, expected against got, and a
hint that names a typical mistake when the learner's output equals that of a known wrong variant.

    from gemma3_minimal.course.exercises import check_sliding_window_mask
    result = check_sliding_window_mask(sliding_window_mask)   # prints the verdict
    result.passed, result.mistake                              # True, None
"""

from .assemble import check_gemma_forward, check_name_map
from .decoder_block import check_attention_forward, check_decoder_block, check_repeat_kv, check_rms_norm
from .distillation import check_sampled_target, check_sparse_cross_entropy
from .engine import Case, CheckResult, Mistake, difference, run_check
from .kv_cache import check_generate, check_kv_cache_bytes, check_parameter_counts, check_ring_write
from .long_context import check_answer_log_prob, check_visible_positions
from .masks import check_attention_mask, check_sliding_window_mask
from .pan_and_scan import check_crop_boxes, check_pan_and_scan_crop_count
from .predictions import check_prediction
from .quantization import check_q4k_scale_min, check_round_trip
from .rope import check_rope, check_rope_angles
from .siglip import check_image_mask, check_patch_pooling
from .tokenizer import check_bpe_pieces, check_byte_fallback, check_chat_prompt
