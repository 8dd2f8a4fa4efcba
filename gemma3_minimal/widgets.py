"""ipywidgets explorers around the pure drawing functions of `viz`: each returns an `interactive`.

The drawing function's figure is the widget's `.result`, so tests can drive a slider and read it.
"""

from __future__ import annotations

import ipywidgets as W

from . import viz
from .config import PRESETS


def mask_explorer_widget() -> W.interactive:
    """Sequence length, window and layer -> that layer's mask and the receptive field so far (notebook 02)."""
    return W.interactive(
        viz.mask_explorer,
        seq_len=W.IntSlider(value=16, min=4, max=48, description="sequence"),
        window=W.IntSlider(value=4, min=1, max=32, description="window"),
        layer=W.IntSlider(value=5, min=0, max=17, description="layer"),
        sliding_window_pattern=W.fixed(6),
    )


def memory_explorer_widget() -> W.interactive:
    """Preset, context, local:global ratio, window and bytes per value -> memory bars (notebook 05)."""
    return W.interactive(
        viz.memory_explorer,
        preset=W.Dropdown(options=[p for p in PRESETS if p != "tiny"], value="27b", description="preset"),
        context_len=W.SelectionSlider(options=[2**k for k in range(10, 18)], value=32_768, description="context"),
        local_per_global=W.IntSlider(value=5, min=0, max=11, description="local:1"),
        window=W.SelectionSlider(options=[256, 512, 1024, 2048, 4096], value=1024, description="window"),
        bytes_per_value=W.Dropdown(options=[("bf16", 2), ("fp32", 4), ("8-bit", 1)], value=2, description="KV dtype"),
    )
