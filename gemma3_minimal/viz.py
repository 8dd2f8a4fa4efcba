"""Matplotlib figures for the notebooks: pure functions that take values and return a Figure.

Nothing here prints or calls `plt.show()`; a notebook cell does that, so the same function
serves a compared cell (fixed values) and an ipywidgets explorer (live values).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from .config import GLOBAL, LOCAL
from .masks import attention_mask


# --- masks and layer pattern (notebook 02) ---------------------------------------------------


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


# --- rotary position embeddings (notebook 03) -------------------------------------------------


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


# --- memory (notebook 05) ---------------------------------------------------------------------


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
    from .config import get_config
    from .memory import kv_cache_bytes, weight_bytes

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
