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
