"""gemma3_minimal: Gemma 3, every architectural piece, exactly, in small modules."""

from .config import GLOBAL, LOCAL, PRESETS, Gemma3Config, VisionConfig, get_config
from .masks import attention_mask, causal_mask, image_groups, sliding_window_mask
from .kv_cache import KVCache
from .layers import Attention, GeGLU, RMSNorm
from .generate import generate, generate_ids, sample_next, stream
from .memory import count_parameters, kv_cache_bytes, parameter_breakdown, weight_bytes
from .model import Gemma3ForCausalLM
from .rope import apply_rope, rope_cos_sin, rope_inv_freq
from .weights import load_pretrained

__version__ = "0.1.0"
