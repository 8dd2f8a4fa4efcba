"""The README's thumbnails are the key figures of the committed notebooks (tools/make_thumbnails.py)."""

import importlib.util
import io
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("make_thumbnails", ROOT / "tools" / "make_thumbnails.py")
make_thumbnails = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_thumbnails)


def test_thumbnails_are_up_to_date():
    expected = make_thumbnails.expected_thumbnails()
    committed = {p.name: p.read_bytes() for p in make_thumbnails.THUMBNAILS.glob("*.png")}
    assert sorted(committed) == sorted(expected), "run `python tools/make_thumbnails.py`"
    for name, png in expected.items():
        assert committed[name] == png, f"docs/thumbnails/{name} is stale: run `python tools/make_thumbnails.py`"


def test_a_thumbnail_is_scaled_to_the_width_and_never_enlarged():
    def png(width, height):
        out = io.BytesIO()
        Image.new("RGB", (width, height), "white").save(out, format="PNG")
        return out.getvalue()

    assert Image.open(io.BytesIO(make_thumbnails.thumbnail(png(960, 300)))).size == (480, 150)
    assert Image.open(io.BytesIO(make_thumbnails.thumbnail(png(200, 100)))).size == (200, 100)
