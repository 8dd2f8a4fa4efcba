"""ipywidgets explorers for the notebooks; each wraps a pure drawing function from `viz`."""

from __future__ import annotations

from typing import Optional

import ipywidgets as widgets
import matplotlib.pyplot as plt
from PIL import Image

from ..config import PRESETS
from .viz import draw_pan_and_scan, mask_explorer, memory_explorer, token_html

# --- 01 tokenizer ------------------------------------------------------------------------------


def token_explorer(tok, text: str = "Type here: tokens, 12345, emoji 👩🏾‍💻 and 中文."):
    """A text box whose tokens are redrawn (with `viz.token_html`) on every keystroke.

    Example: `display(token_explorer(Gemma3Tokenizer.from_pretrained()))`.
    """
    box = widgets.Textarea(value=text, layout=widgets.Layout(width="100%", height="5em"))
    out = widgets.HTML(token_html(tok, text))
    count = widgets.Label(f"{len(tok.encode(text))} tokens")

    def redraw(change) -> None:
        out.value = token_html(tok, change["new"])
        count.value = f"{len(tok.encode(change['new']))} tokens"

    box.observe(redraw, names="value")
    return widgets.VBox([box, count, out])


# --- 07 pan and scan -----------------------------------------------------------------------------


def pan_and_scan_explorer(image: Optional[Image.Image] = None) -> widgets.interactive:
    """Sliders for width, height and the crop limit, redrawing `viz.draw_pan_and_scan` on each change.

    Example: `display(pan_and_scan_explorer(photo))`; `image`, if given, is stretched to the size.
    """

    def show(width: int, height: int, max_num_crops: int) -> None:
        draw_pan_and_scan(width, height, image=image, max_num_crops=max_num_crops)
        plt.show()

    slider = dict(min=64, max=4096, step=16, continuous_update=False)
    return widgets.interactive(
        show,
        width=widgets.IntSlider(value=1800, description="width", **slider),
        height=widgets.IntSlider(value=600, description="height", **slider),
        max_num_crops=widgets.IntSlider(value=4, min=2, max=8, description="max crops", continuous_update=False),
    )


# --- 02 attention masks -----------------------------------------------------------------------


def mask_explorer_widget() -> widgets.interactive:
    """Sequence length, window and layer -> that layer's mask and the receptive field so far (`viz.mask_explorer`)."""
    return widgets.interactive(
        mask_explorer,
        seq_len=widgets.IntSlider(value=16, min=4, max=48, description="sequence"),
        window=widgets.IntSlider(value=4, min=1, max=32, description="window"),
        layer=widgets.IntSlider(value=5, min=0, max=17, description="layer"),
        sliding_window_pattern=widgets.fixed(6),
    )


# --- 05 kv cache and memory -------------------------------------------------------------------


def memory_explorer_widget() -> widgets.interactive:
    """Preset, context, local:global ratio, window and bytes per value -> memory bars (`viz.memory_explorer`)."""
    return widgets.interactive(
        memory_explorer,
        preset=widgets.Dropdown(options=[p for p in PRESETS if p != "tiny"], value="27b", description="preset"),
        context_len=widgets.SelectionSlider(options=[2**k for k in range(10, 18)], value=32_768, description="context"),
        local_per_global=widgets.IntSlider(value=5, min=0, max=11, description="local:1"),
        window=widgets.SelectionSlider(options=[256, 512, 1024, 2048, 4096], value=1024, description="window"),
        bytes_per_value=widgets.Dropdown(options=[("bf16", 2), ("fp32", 4), ("8-bit", 1)], value=2,
                                         description="KV dtype"),
    )
