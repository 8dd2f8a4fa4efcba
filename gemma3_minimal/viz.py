"""Matplotlib figures and HTML pictures that the notebooks draw; every function is pure (returns, never prints)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import matplotlib.pyplot as plt

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


# --- 08 distillation ---------------------------------------------------------------------------


def plot_sampled_target(probs, ids, weights, labels: Sequence[str], top: int = 15):
    """Teacher probabilities probs [vocab] against the sampled, renormalized target (ids, weights [k]).

    One pair of bars for each of the `top` most likely ids (`labels[i]` names the i-th most
    likely) and one for all other ids together, where the sampled target is mostly zero.
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
                             teacher_loss: float | None = None):
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
