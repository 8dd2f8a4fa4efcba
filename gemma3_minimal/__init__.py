"""gemma3_minimal: Gemma 3, every architectural piece, exactly, in small modules."""

from .config import GLOBAL, LOCAL, PRESETS, Gemma3Config, VisionConfig, get_config
from .tokenizer import Gemma3Tokenizer, train_tokenizer

__version__ = "0.1.0"
