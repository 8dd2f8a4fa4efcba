"""Matplotlib figures for the notebooks: pure functions that take values and return a Figure.

Nothing here prints or calls `plt.show()`; a notebook cell does that, so the same function
serves a compared cell (fixed values) and an ipywidgets explorer (live values).
"""

from __future__ import annotations

from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from .pan_and_scan import pan_and_scan_boxes

# --- 07 pan and scan -----------------------------------------------------------------------------

CROP_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def draw_pan_and_scan(
    width: int,
    height: int,
    image: Optional[Image.Image] = None,
    max_num_crops: int = 4,
    min_crop_size: int = 256,
    min_ratio_to_activate: float = 1.2,
    tokens_per_image: int = 256,
) -> Figure:
    """A `width` x `height` image (`image` stretched to that size, or a plain grid) with its Pan&Scan
    crops outlined and numbered; the title gives the crop count and the image tokens it costs
    ((1 + crops) x `tokens_per_image`: the original is always sent too).
    """
    boxes = pan_and_scan_boxes(width, height, min_crop_size, max_num_crops, min_ratio_to_activate)
    fig, ax = plt.subplots(figsize=(6, 6 * min(2.0, max(0.35, height / width))))
    if image is not None:
        ax.imshow(np.asarray(image.convert("RGB").resize((width, height))), extent=(0, width, height, 0))
    else:
        ax.add_patch(Rectangle((0, 0), width, height, facecolor="#eeeeee", edgecolor="black"))
    for i, (left, top, right, bottom) in enumerate(boxes):
        color = CROP_COLORS[i % len(CROP_COLORS)]
        inset = 0.01 * min(width, height)  # keep neighbouring outlines apart
        ax.add_patch(Rectangle((left + inset, top + inset), right - left - 2 * inset, bottom - top - 2 * inset,
                               fill=False, edgecolor=color, linewidth=2.5))
        ax.text((left + right) / 2, (top + bottom) / 2, f"crop {i + 1}\n{right - left}x{bottom - top}",
                color=color, ha="center", va="center", fontsize=10, weight="bold")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_aspect("equal")
    n = len(boxes)
    ax.set_title(f"{width}x{height} (ratio {max(width, height) / min(width, height):.2f}): {n} crops -> "
                 f"(1 + {n}) x {tokens_per_image} = {(1 + n) * tokens_per_image:,} image tokens", fontsize=10)
    fig.tight_layout()
    return fig
