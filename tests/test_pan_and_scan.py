"""Pan&Scan crop boxes and preprocessed pixels against transformers' Gemma 3 PIL image processor."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from gemma3_minimal.pan_and_scan import pan_and_scan, pan_and_scan_boxes, preprocess, preprocess_with_crops, to_rgb

PAS = dict(min_crop_size=256, max_num_crops=4, min_ratio_to_activate=1.2)
HF_PAS = {f"pan_and_scan_{k}": v for k, v in PAS.items()}


def hf_boxes(width: int, height: int, **pas) -> list[tuple[int, int, int, int]]:
    """transformers' crops as boxes: crop an image whose pixels hold their own (row, column)."""
    rows = np.broadcast_to(np.arange(height)[:, None], (height, width))
    cols = np.broadcast_to(np.arange(width)[None, :], (height, width))
    coords = np.stack([rows, cols])  # [2, H, W], channels first as the processor holds images
    crops = Gemma3ImageProcessorPil().pan_and_scan(coords, **{f"pan_and_scan_{k}": v for k, v in pas.items()})
    crops = [c for c in crops if c.size]  # with small crops and many of them, the last slices can be empty
    return [(int(c[1, 0, 0]), int(c[0, 0, 0]), int(c[1, 0, -1]) + 1, int(c[0, -1, 0]) + 1) for c in crops]


SIZES = (
    [(w, h) for w in (256, 300, 511, 512, 640, 896, 1024) for h in (256, 300, 511, 512, 640, 896, 1024)]  # 49 mixed
    + [(600, 500), (599, 500), (601, 500), (500, 600), (500, 599), (500, 601)]  # ratio 1.2, just under, just over
    + [(1199, 1000), (1200, 1000), (1201, 1000), (1000, 1200), (1000, 1199)]
    + [(1000, 400), (400, 1000), (1250, 500), (1249, 500), (749, 500), (750, 500)]  # n rounds half up at 2.5, 1.5
    + [(3000, 1000), (4000, 1000), (5000, 1000), (8000, 1000), (1000, 8000)]  # 3, 4, capped at 4 crops
    + [(10000, 100), (100, 10000), (5000, 300), (300, 5000), (2048, 257), (2048, 255)]  # extreme ratios
    + [(100, 30), (30, 100), (511, 200), (200, 511), (512, 200), (513, 250), (1, 1), (1, 1000), (1000, 1)]  # small
    + [(777, 333), (1333, 777), (2001, 667), (1023, 511), (1025, 513), (4097, 1023), (333, 999)]  # odd sizes
    + [(2000, 1000), (1000, 2000), (1500, 1000), (1920, 1080), (1080, 1920), (1280, 720)]  # common photos
    + [(3024, 4032), (4032, 3024), (2480, 3508), (3508, 2480)]  # phone photos, A4 scans
)


def test_enough_sizes() -> None:
    assert len(set(SIZES)) >= 100


@pytest.mark.parametrize("width,height", SIZES)
def test_boxes_match_transformers(width: int, height: int) -> None:
    assert pan_and_scan_boxes(width, height, **PAS) == hf_boxes(width, height, **PAS)


@pytest.mark.parametrize("pas", [
    dict(min_crop_size=64, max_num_crops=8, min_ratio_to_activate=1.5),
    dict(min_crop_size=512, max_num_crops=2, min_ratio_to_activate=1.0),
    dict(min_crop_size=100, max_num_crops=3, min_ratio_to_activate=2.0),
])
def test_boxes_match_transformers_other_settings(pas: dict) -> None:
    for width, height in SIZES[::3]:
        assert pan_and_scan_boxes(width, height, **pas) == hf_boxes(width, height, **pas), (width, height)


def test_hand_derived_boxes() -> None:
    # 1800x600: ratio 3 -> 3 crops of 600; 1000x400: ratio 2.5 rounds up to 3 crops of ceil(1000/3) = 334,
    # the last one a slice of 332; 600x590: ratio under 1.2, no crops; 500x250: crop 250 < 256, no crops.
    assert pan_and_scan_boxes(1800, 600) == [(0, 0, 600, 600), (600, 0, 1200, 600), (1200, 0, 1800, 600)]
    assert pan_and_scan_boxes(1000, 400) == [(0, 0, 334, 400), (334, 0, 668, 400), (668, 0, 1000, 400)]
    assert pan_and_scan_boxes(400, 1000)[-1] == (0, 668, 400, 1000)
    assert pan_and_scan_boxes(600, 590) == []
    assert pan_and_scan_boxes(500, 250) == []


def noise(width: int, height: int, channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)


def make_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """A random image of `mode`; alpha and palette transparency are exercised too."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, size=(height, width), dtype=np.uint16))
    if mode == "F":
        return Image.fromarray(rng.uniform(-50, 300, size=(height, width)).astype(np.float32))
    if mode in ("RGBA", "LA", "PA"):
        rgba = Image.fromarray(noise(width, height, 4, seed), "RGBA")
        return rgba if mode == "RGBA" else rgba.convert(mode)
    rgb = Image.fromarray(noise(width, height, 3, seed), "RGB")
    if mode == "P+transparency":
        image = rgb.convert("P")
        image.info["transparency"] = 7
        return image
    return rgb.convert(mode)


IMAGES = [  # (mode, width, height): 14 images, several of them wide or tall enough for Pan&Scan
    ("RGB", 640, 480), ("RGB", 1500, 400), ("RGBA", 300, 900), ("L", 1200, 500), ("P", 896, 896),
    ("P+transparency", 1100, 520), ("CMYK", 320, 200), ("LA", 640, 1300), ("I", 700, 300),
    ("1", 900, 900), ("YCbCr", 1024, 256), ("F", 257, 700), ("PA", 100, 80), ("RGB", 3000, 600),
]  # 16-bit images: see test_16_bit_images_are_scaled_not_clipped


@pytest.mark.parametrize("mode,width,height", IMAGES)
def test_pixels_match_transformers(mode: str, width: int, height: int) -> None:
    image = make_image(mode, width, height, seed=width + height)
    hf = Gemma3ImageProcessorPil(size={"height": 896, "width": 896}, do_pan_and_scan=True, **HF_PAS)
    out = hf(images=image, return_tensors="pt")
    mine = preprocess_with_crops(image, 896, do_pan_and_scan=True, **PAS)
    assert out["num_crops"].tolist() == [mine.shape[0] - 1]
    assert mine.dtype == torch.float32 and mine.shape[1:] == (3, 896, 896)
    torch.testing.assert_close(mine, out["pixel_values"], atol=1e-5, rtol=0)


def test_crops_are_rgb_and_tile_the_image() -> None:
    image = make_image("RGBA", 1500, 400, seed=0)
    crops = pan_and_scan(image)
    assert [c.size for c in crops] == [(375, 400)] * 4
    assert all(c.mode == "RGB" for c in crops)
    assert preprocess(image).shape == (3, 896, 896)


@pytest.mark.parametrize("bad", [Image.new("RGB", (0, 10)), Image.new("L", (10, 0))])
def test_zero_size_image_is_refused(bad: Image.Image) -> None:
    with pytest.raises(ValueError, match="zero size"):
        pan_and_scan(bad)
    with pytest.raises(ValueError, match="zero size"):
        preprocess(bad)


@pytest.mark.parametrize("bad", [np.zeros((10, 10, 3), np.uint8), "photo.jpg", None])
def test_non_image_is_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="expected a PIL.Image.Image"):
        pan_and_scan(bad)
    with pytest.raises(TypeError, match="expected a PIL.Image.Image"):
        preprocess(bad)


def test_zero_size_boxes_are_refused() -> None:
    with pytest.raises(ValueError, match="zero size"):
        pan_and_scan_boxes(0, 100)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(min_crop_size=0), ValueError, "min_crop_size must be >= 1, got 0"),
    (dict(min_crop_size=-5), ValueError, "min_crop_size must be >= 1"),
    (dict(min_crop_size=25.5), TypeError, "min_crop_size must be an integer"),
    (dict(max_num_crops=0), ValueError, "max_num_crops must be >= 1, got 0"),
    (dict(max_num_crops=True), TypeError, "max_num_crops must be an integer"),
    (dict(min_ratio_to_activate=float("nan")), ValueError, "min_ratio_to_activate must be a finite number >= 0"),
    (dict(min_ratio_to_activate=float("inf")), ValueError, "min_ratio_to_activate must be a finite number >= 0"),
    (dict(min_ratio_to_activate=-1), ValueError, "min_ratio_to_activate must be a finite number >= 0"),
    (dict(width=1800.0), TypeError, "width must be an integer"),
    (dict(height=-600), ValueError, "height must be >= 0"),
])
def test_bad_pan_and_scan_settings(kwargs: dict, error: type, words: str) -> None:
    args = dict(width=1800, height=600, **PAS) | kwargs
    with pytest.raises(error) as info:
        pan_and_scan_boxes(**args)
    assert words in str(info.value)
    if "width" not in kwargs and "height" not in kwargs:
        with pytest.raises(error):
            pan_and_scan(Image.new("RGB", (1800, 600)), **{k: v for k, v in args.items() if k in PAS})


@pytest.mark.parametrize("width,height,pas", [
    (32, 1646, dict(min_crop_size=32, max_num_crops=448, min_ratio_to_activate=0.3)),  # 51 crops of 33: 1683 > 1646
    (1646, 32, dict(min_crop_size=32, max_num_crops=448, min_ratio_to_activate=0.3)),
    (3, 1000, dict(min_crop_size=1, max_num_crops=400, min_ratio_to_activate=1.0)),  # 333 crops of 4: 250 fit
    (7, 7, dict(min_crop_size=1, max_num_crops=1, min_ratio_to_activate=0.0)),  # one crop: the whole image
])
def test_many_small_crops_tile_the_image(width: int, height: int, pas: dict) -> None:
    """No inverted or empty boxes: the crops tile the image, equal to transformers' non-empty crops."""
    boxes = pan_and_scan_boxes(width, height, **pas)
    assert boxes == hf_boxes(width, height, **pas)
    assert all(left < right and top < bottom for left, top, right, bottom in boxes)
    assert sum((r - l) * (b - t) for l, t, r, b in boxes) == width * height
    crops = pan_and_scan(Image.new("RGB", (width, height)), **pas)
    assert [c.size for c in crops] == [(r - l, b - t) for l, t, r, b in boxes]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_images_are_scaled_not_clipped(mode: str) -> None:
    """16-bit grey (0..65535) becomes 8-bit by round(v / 257) instead of PIL's clip at 255 (pure white),
    which transformers' processor inherits; then the pixels equal transformers' on that 8-bit image.
    """
    values = np.random.default_rng(0).integers(0, 65536, size=(300, 700)).astype(np.uint16)
    values[0, :4] = [0, 257, 32896, 65535]  # 0, 1, 128, 255 in 8 bits
    image = Image.fromarray(values.astype({"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]))
    assert image.mode == mode and np.array_equal(np.asarray(image), values)
    eight = np.rint(values / 257).astype(np.uint8)
    rgb = np.asarray(to_rgb(image))
    assert rgb[0, :4, 0].tolist() == [0, 1, 128, 255] and np.array_equal(rgb, np.stack([eight] * 3, axis=-1))
    assert rgb.mean() < 200  # PIL's convert gives nearly all 255
    hf = Gemma3ImageProcessorPil(size={"height": 896, "width": 896}, do_pan_and_scan=True, **HF_PAS)
    out = hf(images=Image.fromarray(eight, "L"), return_tensors="pt")
    torch.testing.assert_close(preprocess_with_crops(image, 896, **PAS), out["pixel_values"], atol=1e-5, rtol=0)


def test_mode_i_images_out_of_16_bit_range_are_refused() -> None:
    with pytest.raises(ValueError, match="values -5..300 is not 16-bit grey"):
        preprocess(Image.fromarray(np.array([[-5, 300]], dtype=np.int32)))
    small = Image.fromarray(np.array([[0, 7, 255]], dtype=np.int32))  # mode I holding 8-bit values
    assert np.asarray(to_rgb(small))[0, :, 0].tolist() == [0, 7, 255]
