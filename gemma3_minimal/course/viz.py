"""Matplotlib figures and HTML pictures that the notebooks draw; every function is pure (returns, never prints)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from ..config import GLOBAL, LOCAL, get_config
from ..masks import attention_mask
from ..memory import kv_cache_bytes, weight_bytes
from ..pan_and_scan import pan_and_scan_boxes

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


def plot_tokens_per_language(languages: Sequence[str], series: dict[str, Sequence[float]], ylabel: str,
                             reference: float | None = None):
    """Grouped bars: one value per language (e.g. tokens per sentence), one bar per tokenizer in `series`;
    `reference` draws a horizontal line (e.g. 1.0 for English).

    Example: `plot_tokens_per_language(["en", "fr"], {"Gemma 3": [1.0, 1.2]}, "tokens / English", 1.0)`.
    """
    fig, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(languages))], values, width, label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(languages))], languages)
    ax.set_ylabel(ylabel)
    if reference is not None:
        ax.axhline(reference, color="black", lw=0.8)
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


# --- 02 attention masks -----------------------------------------------------------------------


def plot_masks(masks: dict[str, torch.Tensor], cell_labels: bool = True) -> Figure:
    """Boolean [seq, seq] masks side by side: dark where query (row) may attend to key (column)."""
    fig, axes = plt.subplots(1, len(masks), figsize=(3.2 * len(masks), 3.4), squeeze=False)
    for ax, (title, mask) in zip(axes[0], masks.items()):
        n_q, n_k = mask.shape
        ax.imshow(mask.float().numpy(), cmap="Blues", vmin=0, vmax=1.3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        if cell_labels and max(n_q, n_k) <= 16:
            ax.set_xticks(range(n_k))
            ax.set_yticks(range(n_q))
            ax.tick_params(labelsize=8 if max(n_q, n_k) <= 10 else 6)
            ax.set_xticks([x - 0.5 for x in range(1, n_k)], minor=True)
            ax.set_yticks([y - 0.5 for y in range(1, n_q)], minor=True)
            ax.grid(which="minor", color="white", linewidth=1)
            ax.tick_params(which="minor", length=0)
    fig.tight_layout()
    return fig


def plot_layer_pattern(layer_types: Sequence[str], title: str = "") -> Figure:
    """One colored square per layer: local (sliding window) or global."""
    fig, ax = plt.subplots(figsize=(min(10.0, max(4.0, 0.32 * len(layer_types))), 1.3))
    colors = ["tab:blue" if t == LOCAL else "tab:orange" for t in layer_types]
    ax.bar(range(len(layer_types)), [1] * len(layer_types), color=colors, width=0.9)
    ax.set_yticks([])
    ax.set_xlabel("layer")
    ax.set_xlim(-0.6, len(layer_types) - 0.4)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color="tab:blue"), plt.Rectangle((0, 0), 1, 1, color="tab:orange")],
              labels=["local", "global"], loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(title or f"{layer_types.count(LOCAL)} local, {layer_types.count(GLOBAL)} global", fontsize=10)
    fig.tight_layout()
    return fig


def receptive_fields(seq_len: int, window: int, layer_types: Sequence[str]) -> torch.Tensor:
    """[layers, seq, seq] bool: after layer l, can position i's hidden state depend on token j?

    Attention composes: layer l's reach is its mask (as a 0/1 matrix) times the reach before it.
    """
    pos = torch.arange(seq_len)
    reach = torch.eye(seq_len, dtype=torch.bool)
    out = []
    for layer_type in layer_types:
        mask = attention_mask(pos, pos, window if layer_type == LOCAL else None)
        reach = (mask.float() @ reach.float()) > 0
        out.append(reach)
    return torch.stack(out)


def receptive_field_sizes(seq_len: int, window: int, layer_types: Sequence[str]) -> torch.Tensor:
    """[layers] how many tokens the last position can depend on after layers 0..l (for each l).

    The last row of M_l ... M_1 M_0, propagated as a vector, so long sequences stay cheap.
    """
    pos = torch.arange(seq_len)
    masks = {LOCAL: attention_mask(pos, pos, window).float(), GLOBAL: attention_mask(pos, pos).float()}
    sizes = []
    for top in range(len(layer_types)):
        row = masks[layer_types[top]][-1]
        for layer_type in reversed(layer_types[:top]):
            row = ((row @ masks[layer_type]) > 0).float()
        sizes.append(int(row.sum()))
    return torch.tensor(sizes)


def plot_receptive_field_growth(seq_len: int, window: int, layer_types: Sequence[str]) -> Figure:
    """How many tokens the last position can depend on after each layer, against local layers alone."""
    reach = receptive_field_sizes(seq_len, window, layer_types)
    layers = torch.arange(1, len(layer_types) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.step(layers.numpy(), reach.numpy(), where="post", label="local:global stack", color="tab:blue")
    only_local = torch.clamp(layers * (window - 1) + 1, max=seq_len)
    ax.step(layers.numpy(), only_local.numpy(), where="post", linestyle="--", color="gray", label="local layers only")
    for i, t in enumerate(layer_types):
        if t == GLOBAL:
            ax.axvline(i + 1, color="tab:orange", alpha=0.3, linewidth=4)
    ax.set_xlabel("layers applied")
    ax.set_ylabel("tokens the last position sees")
    ax.set_title(f"receptive field, sequence {seq_len:,}, window {window} (orange: global layers)", fontsize=10)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def mask_explorer(seq_len: int, window: int, layer: int, sliding_window_pattern: int = 6) -> Figure:
    """Layer `layer`'s own mask, and what each position can depend on after layers 0..layer."""
    layer_types = [GLOBAL if (i + 1) % sliding_window_pattern == 0 else LOCAL for i in range(layer + 1)]
    pos = torch.arange(seq_len)
    own = attention_mask(pos, pos, window if layer_types[-1] == LOCAL else None)
    reach = receptive_fields(seq_len, window, layer_types)[-1]
    kind = "local" if layer_types[-1] == LOCAL else "global"
    return plot_masks({f"layer {layer} ({kind}) mask": own, f"reach after layers 0..{layer}": reach},
                      cell_labels=seq_len <= 16)


# --- 03 rope ----------------------------------------------------------------------------------


def plot_rope_wavelengths(inv_freqs: dict[str, torch.Tensor], context_lengths: Sequence[int] = ()) -> Figure:
    """Wavelength 2*pi / inv_freq (tokens per full turn) of each channel pair, log scale."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, inv_freq in inv_freqs.items():
        ax.plot((2 * math.pi / inv_freq).numpy(), label=label)
    for n in context_lengths:
        ax.axhline(n, color="gray", linestyle=":", linewidth=1)
        ax.text(0, n * 1.15, f"{n:,} tokens", color="gray", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("channel pair i")
    ax.set_ylabel("wavelength (tokens)")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_rope_angles(positions: torch.Tensor, inv_freqs: dict[str, torch.Tensor], pair: int,
                     trained_len: Optional[int] = None) -> Figure:
    """Angle position * inv_freq[pair] (radians, not wrapped) against position, one line per table.

    With `trained_len`, a dotted line marks the largest angle the first table reaches within it.
    """
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for label, inv_freq in inv_freqs.items():
        ax.plot(positions.numpy(), (positions.double() * inv_freq[pair].double()).numpy(), label=label)
    if trained_len is not None:
        top = trained_len * float(next(iter(inv_freqs.values()))[pair])
        ax.axhline(top, color="gray", linestyle=":")
        ax.text(float(positions[0]), top * 1.04, f"largest angle within {trained_len:,} positions", color="gray", fontsize=8)
    ax.set_xlabel("position")
    ax.set_ylabel(f"angle of pair {pair} (rad)")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(0, 0.9))
    fig.tight_layout()
    return fig


def plot_rotations(points: torch.Tensor, title: str = "") -> Figure:
    """2-D points [n, 2] as arrows from the origin, numbered: a pair of channels rotated by position."""
    fig, ax = plt.subplots(figsize=(3.6, 3.6))
    for i, (x, y) in enumerate(points.tolist()):
        ax.annotate("", xy=(x, y), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=plt.cm.viridis(i / len(points))))
        ax.text(x * 1.1, y * 1.1, str(i), fontsize=8, ha="center", va="center")
    r = float(points.norm(dim=-1).max()) * 1.25
    ax.set_xlim(-r, r)
    ax.set_ylim(-r, r)
    ax.set_aspect("equal")
    ax.axhline(0, color="lightgray", linewidth=0.8)
    ax.axvline(0, color="lightgray", linewidth=0.8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- 05 kv cache and memory -------------------------------------------------------------------


def plot_memory_bars(labels: Sequence[str], weight_bytes: Sequence[float], kv_bytes: Sequence[float],
                     title: str = "", unit: float = 1e9, unit_name: str = "GB") -> Figure:
    """Stacked bars: weights, then the KV cache on top, with KV as a percentage of the weights."""
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(labels)), 3.6))
    w = [b / unit for b in weight_bytes]
    kv = [b / unit for b in kv_bytes]
    ax.bar(labels, w, color="tab:gray", label="weights")
    ax.bar(labels, kv, bottom=w, color="tab:red", label="KV cache")
    for i, (wi, ki) in enumerate(zip(w, kv)):
        ax.text(i, wi + ki, f"+{100 * ki / wi:.0f}%", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(unit_name)
    ax.set_ylim(0, max(a + b for a, b in zip(w, kv)) * 1.15)
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, loc="upper right")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def plot_kv_vs_context(context_lens: Sequence[int], series: dict[str, dict[str, Sequence[float]]],
                       title: str = "", unit: float = 2**30, unit_name: str = "GiB") -> Figure:
    """KV-cache size against context length, log-log: one color per model, one line style per layout.

    series: {model: {layout: bytes per context length}}; a layout's list may stop early (shorter context).
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = ["-", "--", ":", "-."]
    for color, (model, layouts) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], series.items()):
        for style, (layout, values) in zip(styles, layouts.items()):
            ax.plot(context_lens[: len(values)], [v / unit for v in values], style, color=color, marker=".",
                    label=f"{model}, {layout}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(context_lens))
    ax.set_xticklabels([f"{n // 1024}K" for n in context_lens], fontsize=8)
    ax.set_xlabel("context length")
    ax.set_ylabel(f"KV cache ({unit_name})")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def memory_explorer(preset: str, context_len: int, local_per_global: int = 5, window: int = 1024,
                    bytes_per_value: float = 2) -> Figure:
    """bf16 weights plus KV cache of `preset` at `context_len`: global only against local:global with `window`.

    A context past the preset's longest (32K for 270M and 1B) is drawn at that longest context.
    """

    cfg = get_config(preset).replace(sliding_window=window, sliding_window_pattern=local_per_global + 1)
    capped = context_len > cfg.max_position_embeddings
    context_len = min(context_len, cfg.max_position_embeddings)
    weights = weight_bytes(cfg, "bf16")
    layouts = {
        "global only": kv_cache_bytes(cfg, context_len, bytes_per_value, sliding=False),
        f"{local_per_global}:1, window {window}": kv_cache_bytes(cfg, context_len, bytes_per_value),
    }
    return plot_memory_bars(list(layouts), [weights] * 2, list(layouts.values()),
                            title=f"{preset}, {context_len:,} tokens{' (its longest context)' if capped else ''}, "
                                  f"{bytes_per_value} bytes per value")


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


# --- 08 distillation ---------------------------------------------------------------------------


def plot_sampled_target(probs: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                        labels: Sequence[str], top: int = 15) -> Figure:
    """Teacher probabilities probs [vocab] against the sampled, renormalized target (ids, weights [k]).

    One pair of bars for each of the `top` most likely ids (`labels[i]` names the i-th most
    likely) and one for all other ids together (the long tail, which 256 draws touch only in part).
    Example: `plot_sampled_target(p, *g3.sample_teacher_targets(logits, 256), labels)`.
    """
    target = probs.new_zeros(probs.shape).scatter_add(0, ids, weights.to(probs.dtype))  # [vocab]
    order = probs.argsort(descending=True)[:top]
    teacher_bars = probs[order].tolist() + [1.0 - float(probs[order].sum())]
    target_bars = target[order].tolist() + [1.0 - float(target[order].sum())]
    x = list(range(top + 1))
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ax.bar([i - 0.2 for i in x], teacher_bars, width=0.4, label="teacher probability")
    ax.bar([i + 0.2 for i in x], target_bars, width=0.4,
           label=f"sampled target: {len(ids)} draws, {int((weights > 0).sum())} distinct ids")
    ax.set_xticks(x, [repr(label) for label in labels[:top]] + ["all others"], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("probability")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_distillation_curves(curves: dict[str, tuple[Sequence[int], Sequence[float]]],
                             teacher_loss: Optional[float] = None) -> Figure:
    """Held-out next-token cross-entropy against training steps: curves maps a name to (steps, losses)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, (steps, losses) in curves.items():
        ax.plot(steps, losses, marker="o", markersize=3, label=name)
    if teacher_loss is not None:
        ax.axhline(teacher_loss, color="gray", linestyle="--", label="teacher (the real 270M)")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out cross-entropy (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
