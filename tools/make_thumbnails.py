"""Extract one key figure per course notebook into `docs/thumbnails/NN.png` for the README's course map.

The figures come from the committed notebooks' outputs (no notebook is run): the first PNG of
each notebook, or the one `KEY_FIGURE` names. Thumbnails are scaled to `WIDTH` pixels.

    python tools/make_thumbnails.py     # after refreshing notebook outputs

`tests/test_thumbnails.py` checks that the committed thumbnails match the notebooks.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Optional

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
THUMBNAILS = ROOT / "docs" / "thumbnails"
WIDTH = 480
# Notebook number -> which of its PNG outputs (0: the first) shows the idea best.
KEY_FIGURE = {"03": 1, "04": 1, "05": 1, "08": 1, "10": 2}


def course_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def pngs(notebook: Path) -> list[bytes]:
    """Every PNG output of `notebook`, in order."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return [
        base64.b64decode("".join(output["data"]["image/png"]))
        for cell in cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]


def thumbnail(png: bytes, width: int = WIDTH) -> bytes:
    """The image scaled to `width` pixels wide (never enlarged), as PNG bytes."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def key_thumbnail(notebook: Path) -> Optional[bytes]:
    """The thumbnail of the notebook's key figure; None if it has no PNG output."""
    figures = pngs(notebook)
    if not figures:
        return None
    return thumbnail(figures[KEY_FIGURE.get(notebook.name[:2], 0)])


def expected_thumbnails() -> dict[str, bytes]:
    """File name -> PNG bytes, for every notebook with a figure."""
    thumbs = {f"{nb.name[:2]}.png": key_thumbnail(nb) for nb in course_notebooks()}
    return {name: png for name, png in thumbs.items() if png is not None}


def main() -> None:
    THUMBNAILS.mkdir(parents=True, exist_ok=True)
    expected = expected_thumbnails()
    for stale in set(p.name for p in THUMBNAILS.glob("*.png")) - set(expected):
        (THUMBNAILS / stale).unlink()
    for name, png in expected.items():
        (THUMBNAILS / name).write_bytes(png)
        print(f"docs/thumbnails/{name}")


if __name__ == "__main__":
    main()
