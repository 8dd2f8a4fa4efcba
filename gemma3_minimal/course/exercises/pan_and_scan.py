"""Exercise checkers for notebook 09: how many Pan&Scan crops, and their boxes."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from ...pan_and_scan import pan_and_scan_boxes
from .engine import Case, CheckResult, Mistake, run_check


def _crop_count_reference(width: int, height: int) -> int:
    return len(pan_and_scan_boxes(width, height))


def _crops(width: int, height: int, n_of: Callable[[int, int], int], cap: bool = True, min_crop: bool = True,
           activate: bool = True) -> int:
    long, short = max(width, height), min(width, height)
    if activate and long / short < 1.2:
        return 0
    n = n_of(long, short)
    if cap:
        n = min(long // 256, n)
    n = min(4, max(2, n))
    if min_crop and min(math.ceil(long / n), short) < 256:
        return 0
    return n


CROP_COUNT_MISTAKES = (
    Mistake("round_half_even", "Python's round() rounds halves to even (round(2.5) == 2); "
            "Pan&Scan rounds halves up: floor(long / short + 0.5).", lambda w, h: _crops(w, h, lambda l, s: round(l / s))),
    Mistake("floor", "round long / short to the nearest integer (halves up), don't truncate it.",
            lambda w, h: _crops(w, h, lambda l, s: l // s)),
    Mistake("no_cap", "cap the count by floor(long / min_crop_size): every crop must keep at least 256 pixels "
            "along the long side too.", lambda w, h: _crops(w, h, lambda l, s: math.floor(l / s + 0.5), cap=False)),
    Mistake("no_min_crop", "no crops at all when a crop would be smaller than min_crop_size (256) on either side.",
            lambda w, h: _crops(w, h, lambda l, s: math.floor(l / s + 0.5), min_crop=False)),
    Mistake("always_active", "Pan&Scan only applies when long / short >= 1.2; squarer images get 0 crops.",
            lambda w, h: _crops(w, h, lambda l, s: math.floor(l / s + 0.5), activate=False)),
)


def _crop_cases(n_random: int = 20, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    sizes = [(1800, 600), (600, 1800), (1000, 1000), (1100, 1000), (1200, 1000), (1280, 512), (767, 300),
             (1500, 200), (3000, 400), (5000, 1000), (640, 256), (600, 300)]
    sizes += [(rng.randint(100, 4000), rng.randint(100, 4000)) for _ in range(n_random)]
    return [Case(f"width={w}, height={h}", (w, h)) for w, h in sizes]


def check_pan_and_scan_crop_count(fn: Callable[[int, int], int]) -> CheckResult:
    """`fn(width, height) -> int`: how many Pan&Scan crops (0 when it does not apply), default settings."""
    return run_check("crop_count", fn, _crop_cases(), _crop_count_reference,
                     "len(gemma3_minimal.pan_and_scan.pan_and_scan_boxes)", CROP_COUNT_MISTAKES,
                     "follow the rule step by step: ratio test, round half up, cap, clamp to [2, 4], minimum crop size.")


# --- the crop boxes ------------------------------------------------------------------------------


def _boxes(width, height, n, size=math.ceil, clip=True, along_width=None, corners=True):
    landscape = width >= height if along_width is None else along_width
    n_w, n_h = (n, 1) if landscape else (1, n)
    crop_w, crop_h = size(width / n_w), size(height / n_h)
    boxes = []
    for y in range(0, crop_h * n_h, crop_h):
        for x in range(0, crop_w * n_w, crop_w):
            right, bottom = (min(x + crop_w, width), min(y + crop_h, height)) if clip else (x + crop_w, y + crop_h)
            boxes.append((x, y, right, bottom) if corners else (x, y, right - x, bottom - y))
    return boxes


def _box_cases(n_random: int = 12, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    sizes = [(1800, 600), (600, 1800), (1000, 333), (1281, 640), (3001, 700), (700, 3001), (1200, 1000)]
    while len(sizes) < 7 + n_random:
        w, h = rng.randint(300, 4000), rng.randint(300, 4000)
        if pan_and_scan_boxes(w, h):
            sizes.append((w, h))
    sizes = [(w, h) for w, h in sizes if pan_and_scan_boxes(w, h)]
    return [Case(f"width={w}, height={h}, n={len(pan_and_scan_boxes(w, h))}", (w, h, len(pan_and_scan_boxes(w, h))))
            for w, h in sizes]


BOX_MISTAKES = (
    Mistake("floor_size", "crops are ceil(long / n) pixels long, so n crops cover the whole side (floor leaves a "
            "strip of pixels out).", lambda w, h, n: _boxes(w, h, n, size=lambda v: math.floor(v))),
    Mistake("not_clipped", "the last crop ends at the image's edge: right = min(x + crop_w, width), "
            "bottom = min(y + crop_h, height).", lambda w, h, n: _boxes(w, h, n, clip=False)),
    Mistake("always_horizontal", "cut along the *long* side: a tall image is cut into rows, a wide one into columns.",
            lambda w, h, n: _boxes(w, h, n, along_width=True)),
    Mistake("width_height", "a box is (left, top, right, bottom), PIL's crop format, not (x, y, width, height).",
            lambda w, h, n: _boxes(w, h, n, corners=False)),
)


def check_crop_boxes(fn: Callable[[int, int, int], list]) -> CheckResult:
    """`fn(width, height, n) -> [(left, top, right, bottom), ...]`: the n Pan&Scan crop boxes, in reading order."""
    return run_check("crop_boxes", fn, _box_cases(), lambda w, h, n: pan_and_scan_boxes(w, h),
                     "gemma3_minimal.pan_and_scan.pan_and_scan_boxes", BOX_MISTAKES,
                     "draw the image and its n crops; each box is (left, top, right, bottom) in pixels.")
