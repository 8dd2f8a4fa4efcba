"""ipywidgets explorers for the notebooks; each wraps a pure drawing function from `viz`."""

from __future__ import annotations

import ipywidgets as widgets

from .viz import token_html

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
