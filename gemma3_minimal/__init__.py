"""gemma3_minimal: Gemma 3, every architectural piece, exactly, in small modules."""

from .config import GLOBAL, LOCAL, PRESETS, Gemma3Config, VisionConfig, get_config
from .pan_and_scan import pan_and_scan, pan_and_scan_boxes, preprocess
from .vision import Gemma3MultiModalProjector, SiglipVisionModel

__version__ = "0.1.0"
