"""Matplotlib figures and HTML pictures that the notebooks draw; every function is pure (returns, never prints)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from .pan_and_scan import pan_and_scan_boxes

# --- 01 tokenizer ------------------------------------------------------------------------------

TOKEN_COLORS = ("#fde2e4", "#e2ece9", "#dfe7fd", "#fff1c1", "#e8dff5", "#d7f0f5", "#fce1c8", "#e2f0cb")


def token_html(tok, text: str) -> str:
    """`text` as colored token boxes, each showing its vocabulary piece and its id.

    Spaces show as `▁`, newlines as `↵` and tabs as `⇥`, so whitespace tokens stay visible.
    Example: `IPython.display.HTML(token_html(tok, "Hello world"))`.
    """
    boxes = []
    for i, token_id in enumerate(tok.encode(text)):
        piece = tok.id_to_piece(token_id).replace("\n", "↵").replace("\t", "⇥")
        boxes.append(
            f'<span style="background:{TOKEN_COLORS[i % len(TOKEN_COLORS)]};padding:1px 3px;margin:1px;'
            f'border-radius:3px;display:inline-block;font-family:monospace;white-space:pre">'
            f'{html.escape(piece)}<sub style="color:#666;font-size:65%">{token_id}</sub></span>'
        )
    return f'<div style="line-height:2.1">{"".join(boxes)}</div>'


def plot_tokens_per_word(languages: Sequence[str], series: dict[str, Sequence[float]]):
    """Grouped bars: tokens per word for each language, one bar per tokenizer in `series`.

    Example: `plot_tokens_per_word(["en", "fr"], {"Gemma 3": [1.2, 1.4], "small": [2.0, 2.5]})`.
    """
    fig, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(languages))], values, width, label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(languages))], languages)
    ax.set_ylabel("tokens per word")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


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


# --- 06 SigLIP and the 4096 -> 256 compression ---------------------------------------------------


def _as_rgb(pixels) -> np.ndarray:
    """[3, H, W] tensor in [-1, 1] -> [H, W, 3] array in [0, 1] for imshow."""
    return ((pixels.permute(1, 2, 0).float().numpy() + 1) / 2).clip(0, 1)


def draw_patch_grid(pixels, patch_size: int = 14, zoom: int = 8) -> Figure:
    """The preprocessed image cut into its patch grid, and its top-left `zoom` x `zoom` patches enlarged.

    pixels: [3, size, size] in [-1, 1] (what `pan_and_scan.preprocess` returns).
    """
    rgb = _as_rgb(pixels)
    size, side = rgb.shape[0], rgb.shape[0] // patch_size
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.5))
    for ax, extent in zip(axes, (size, zoom * patch_size)):
        ax.imshow(rgb[:extent, :extent], extent=(0, extent, extent, 0))
        for k in range(0, extent + 1, patch_size):
            ax.axhline(k, color="white", linewidth=0.4 if extent == size else 1.2)
            ax.axvline(k, color="white", linewidth=0.4 if extent == size else 1.2)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].add_patch(Rectangle((0, 0), zoom * patch_size, zoom * patch_size, fill=False, edgecolor="red", lw=2))
    axes[0].set_title(f"{size}x{size} px = {side}x{side} = {side * side:,} patches of {patch_size}x{patch_size}")
    axes[1].set_title(f"the red corner: {zoom}x{zoom} patches")
    fig.tight_layout()
    return fig


def draw_pooling(before: np.ndarray, after: np.ndarray, title: str = "", cmap: str = "viridis") -> Figure:
    """A grid of values ([side, side] or [side, side, 3]) next to its average-pooled version."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    for ax, grid in zip(axes, (before, after)):
        ax.imshow(grid, cmap=cmap, interpolation="nearest")
        ax.set_title(f"{grid.shape[0]}x{grid.shape[1]} = {grid.shape[0] * grid.shape[1]:,} vectors")
        ax.set_xticks([])
        ax.set_yticks([])
    k = before.shape[0] // after.shape[0]
    for i in range(0, before.shape[0] + 1, k):  # the pooling windows
        axes[0].axhline(i - 0.5, color="white", lw=0.8)
        axes[0].axvline(i - 0.5, color="white", lw=0.8)
    fig.suptitle(title or f"average pooling {k}x{k}: each output vector is the mean of {k * k} inputs")
    fig.tight_layout()
    return fig


# --- 00 overview -------------------------------------------------------------------------------


def plot_layer_stack(cfg) -> Figure:
    """The decoder stack of `cfg` as boxes, bottom to top: local layers light, global layers dark."""
    n = cfg.num_hidden_layers
    fig, ax = plt.subplots(figsize=(7, 0.32 * n + 1.6))
    for i, kind in enumerate(cfg.layer_types):
        is_global = kind == "full_attention"
        ax.add_patch(plt.Rectangle((0, i + 1), 4, 0.8, color="#35608d" if is_global else "#b8d8e8"))
        label = (f"layer {i}: global, RoPE base {cfg.rope_theta:,.0f}" if is_global
                 else f"layer {i}: local, window {cfg.sliding_window}, RoPE base {cfg.rope_local_base_freq:,.0f}")
        ax.text(2, i + 1.4, label, ha="center", va="center", fontsize=8, color="white" if is_global else "black")
    ax.add_patch(plt.Rectangle((0, 0), 4, 0.8, color="#e9c46a"))
    ax.text(2, 0.4, f"embedding {cfg.vocab_size:,} x {cfg.hidden_size} (x sqrt({cfg.hidden_size}))",
            ha="center", va="center", fontsize=8)
    ax.add_patch(plt.Rectangle((0, n + 1), 4, 0.8, color="#e9c46a"))
    ax.text(2, n + 1.4, "final RMSNorm, tied head -> logits", ha="center", va="center", fontsize=8)
    ax.set_xlim(-0.2, 4.2)
    ax.set_ylim(-0.2, n + 2)
    ax.axis("off")
    ax.set_title(f"Gemma 3 {cfg.name}: {cfg.num_local_layers} local : {cfg.num_global_layers} global layers")
    fig.tight_layout()
    return fig
