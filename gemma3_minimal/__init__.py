"""gemma3_minimal: Gemma 3, every architectural piece, exactly, in small modules."""

from .config import GLOBAL, LOCAL, PRESETS, Gemma3Config, VisionConfig, get_config

__version__ = "0.1.0"
from .distill import (
    DistillHistory,
    StoreError,
    TeacherStore,
    distill,
    full_distillation_loss,
    sample_teacher_targets,
    sampled_distillation_loss,
    sparse_cross_entropy,
)
