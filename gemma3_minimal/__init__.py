"""gemma3_minimal: Gemma 3, every architectural piece, exactly, in small modules."""

from .config import GLOBAL, LOCAL, PRESETS, Gemma3Config, VisionConfig, get_config
from .distill import (
    DistillHistory,
    distill,
    full_distillation_loss,
    sample_teacher_targets,
    sampled_distillation_loss,
    sparse_cross_entropy,
)
from .fast import speed_up
from .chat import generate, generate_with_images, stream
from .generate import generate_ids
from .sampling import sample_next
from .kv_cache import KVCache
from .kv_quant import quantize_kv_cache
from .layers import Attention, GeGLU, RMSNorm
from .masks import attention_mask, causal_mask, image_groups, sliding_window_mask
from .memory import count_parameters, kv_cache_bytes, parameter_breakdown, weight_bytes
from .model import Gemma3Base, Gemma3ForCausalLM
from .multimodal import Gemma3ForConditionalGeneration, Gemma3Processor
from .pan_and_scan import pan_and_scan, pan_and_scan_boxes, preprocess
from .rope import apply_rope, rope_cos_sin, rope_inv_freq
from .teacher_store import StoreError, TeacherStore, cache_teacher_logits
from .tokenizer import Gemma3Tokenizer, train_tokenizer
from .vision import Gemma3MultiModalProjector, SiglipVisionModel
from .pretrained import default_checkpoint, load_model, load_pretrained
from .quantize import quantize

__version__ = "0.1.0"
