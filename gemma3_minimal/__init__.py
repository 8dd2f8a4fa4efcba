"""gemma3_minimal: Gemma 3, every architectural piece, exactly, in small modules."""

from .config import GLOBAL, LOCAL, PRESETS, Gemma3Config, VisionConfig, get_config
from .masks import attention_mask, causal_mask, image_groups, sliding_window_mask
from .memory import count_parameters, kv_cache_bytes, parameter_breakdown, weight_bytes
from .rope import apply_rope, rope_cos_sin, rope_inv_freq

__version__ = "0.1.0"
