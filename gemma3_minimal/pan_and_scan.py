"""Image preprocessing and Pan&Scan: what an image looks like when it reaches the SigLIP tower.

Every image is squashed to 896x896 (no padding, aspect ratio lost). Pan&Scan (report,
section 2.1) helps with wide or tall images: it cuts them into 2-4 equal crops along the long
side, each resized to 896x896 as well, and the model sees the original followed by its crops.

    pan_and_scan_boxes(1800, 600)  -> [(0, 0, 600, 600), (600, 0, 1200, 600), (1200, 0, 1800, 600)]

The rules and the crop arithmetic follow transformers' Gemma 3 image processor exactly
(crops are array slices there, so the last crop may be narrower than the others).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from PIL import Image

Box = tuple[int, int, int, int]  # (left, top, right, bottom), PIL's crop convention


def _check_image(image: object) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image has zero size ({image.width}x{image.height})")
    return image


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit grey image (mode "I;16..." or "I") -> 8-bit "L" by round(v / 257), which maps 0..65535 onto
    0..255 and undoes the usual 8 -> 16-bit widening (v * 257). PIL's own convert, and so transformers,
    clips every value over 255 to white. A mode "I" image whose values fit 0..255 is already 8-bit.
    """
    values = np.asarray(image)
    if image.mode == "I" and 0 <= values.min() <= values.max() <= 255:
        return image.convert("L")
    if values.min() < 0 or values.max() > 65535:
        raise ValueError(
            f"a mode {image.mode!r} image with values {values.min()}..{values.max()} is not 16-bit grey (0..65535); "
            "scale it to 8 bits yourself, e.g. Image.fromarray(array_uint8, 'L')"
        )
    return Image.fromarray(np.rint(values / 257).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels are composited onto white (as transformers does).

    16-bit grey images are scaled to 8 bits first (`to_8bit`) instead of being clipped to white.
    """
    _check_image(image)
    if image.mode == "I" or image.mode.startswith("I;16"):
        image = to_8bit(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def pan_and_scan_boxes(
    width: int,
    height: int,
    min_crop_size: int = 256,
    max_num_crops: int = 4,
    min_ratio_to_activate: float = 1.2,
) -> list[Box]:
    """The Pan&Scan crop boxes for a `width` x `height` image; [] when Pan&Scan does not apply.

    n = round-half-up(long / short), at most floor(long / min_crop_size), clamped to
    [2, max_num_crops]; crops of ceil(long / n) along the long side, full extent along the short
    one; none at all if the ratio is under `min_ratio_to_activate` or a crop side is under
    `min_crop_size`. A crop that would start past the edge (only with small crops and many of
    them, e.g. 32x1646 at min_crop_size 32: 51 crops of 33) is left out; transformers' is empty.
    """
    check_pan_and_scan(width, height, min_crop_size, max_num_crops, min_ratio_to_activate)
    long, short = max(width, height), min(width, height)
    if long / short < min_ratio_to_activate:
        return []
    n = int(math.floor(long / short + 0.5))  # round half up
    n = min(int(math.floor(long / min_crop_size)), n)
    n = min(max_num_crops, max(2, n))
    landscape = width >= height
    n_w, n_h = (n, 1) if landscape else (1, n)
    crop_w, crop_h = math.ceil(width / n_w), math.ceil(height / n_h)
    if min(crop_w, crop_h) < min_crop_size:
        return []
    return [
        (x, y, min(x + crop_w, width), min(y + crop_h, height))
        for y in range(0, min(crop_h * n_h, height), crop_h)
        for x in range(0, min(crop_w * n_w, width), crop_w)
    ]


def check_pan_and_scan(width: int, height: int, min_crop_size: int, max_num_crops: int,
                       min_ratio_to_activate: float) -> None:
    """Raise a clear error for sizes or Pan&Scan settings outside what the crop rule can use."""
    for name, value, least in [("width", width, 0), ("height", height, 0), ("min_crop_size", min_crop_size, 1),
                               ("max_num_crops", max_num_crops, 1)]:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if width == 0 or height == 0:
        raise ValueError(f"image has zero size ({width}x{height})")
    ratio = min_ratio_to_activate
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 <= ratio < math.inf:
        raise ValueError(f"min_ratio_to_activate must be a finite number >= 0 (1 or less: every image), got {ratio!r}")


def pan_and_scan(
    image: Image.Image,
    min_crop_size: int = 256,
    max_num_crops: int = 4,
    min_ratio_to_activate: float = 1.2,
) -> list[Image.Image]:
    """The Pan&Scan crops of `image` (the original not included), in RGB; [] when it does not apply."""
    rgb = to_rgb(image)
    boxes = pan_and_scan_boxes(rgb.width, rgb.height, min_crop_size, max_num_crops, min_ratio_to_activate)
    return [rgb.crop(box) for box in boxes]


def preprocess(image: Image.Image, image_size: int = 896) -> torch.Tensor:
    """One image -> SigLIP input: RGB, bilinear resize to a square, [0, 1], then (x - 0.5) / 0.5.

    Returns [3, image_size, image_size] float32 in [-1, 1].
    """
    rgb = to_rgb(image).resize((image_size, image_size), Image.BILINEAR)
    x = np.asarray(rgb, dtype=np.float64) * (1 / 255)  # [H, W, 3] in [0, 1]
    x = (x.astype(np.float32) - 0.5) / 0.5
    return torch.from_numpy(x).permute(2, 0, 1).contiguous()  # [3, H, W]


def preprocess_with_crops(
    image: Image.Image,
    image_size: int = 896,
    do_pan_and_scan: bool = True,
    min_crop_size: int = 256,
    max_num_crops: int = 4,
    min_ratio_to_activate: float = 1.2,
) -> torch.Tensor:
    """The original image, then its Pan&Scan crops, each preprocessed: [1 + crops, 3, size, size]."""
    crops = pan_and_scan(image, min_crop_size, max_num_crops, min_ratio_to_activate) if do_pan_and_scan else []
    return torch.stack([preprocess(im, image_size) for im in [image, *crops]])
