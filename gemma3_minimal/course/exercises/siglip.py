"""Exercise checkers for notebook 08: SigLIP's 4x4 average pooling, and the image-aware attention mask."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch

from ... import masks
from ...vision import pool_patches
from .engine import Case, CheckResult, Mistake, run_check


def _pool_reference(features: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    return pool_patches(features, tokens_per_image)


def _pool_grid(features: torch.Tensor, tokens_per_image: int) -> tuple[int, int]:
    side, out = math.isqrt(features.shape[1]), math.isqrt(tokens_per_image)
    return side, side // out


def _pool_consecutive(features: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    b, n, c = features.shape
    return features.view(b, tokens_per_image, n // tokens_per_image, c).mean(2)


def _pool_channels_as_grid(features: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    b, n, c = features.shape
    side, k = _pool_grid(features, tokens_per_image)
    grid = features.reshape(b, c, side, side)  # wrong: reinterprets memory instead of moving the channel axis
    return torch.nn.functional.avg_pool2d(grid, k).flatten(2).transpose(1, 2)


def _pool_transposed(features: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    b, n, c = features.shape
    side, k = _pool_grid(features, tokens_per_image)
    grid = features.transpose(1, 2).reshape(b, c, side, side)
    return torch.nn.functional.avg_pool2d(grid, k).transpose(2, 3).flatten(2).transpose(1, 2)


def _pool_max(features: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    b, n, c = features.shape
    side, k = _pool_grid(features, tokens_per_image)
    grid = features.transpose(1, 2).reshape(b, c, side, side)
    return torch.nn.functional.max_pool2d(grid, k).flatten(2).transpose(1, 2)


def _pool_cases(seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(1, 16, 4, 1), (1, 16, 4, 2), (2, 64, 4, 3), (1, 64, 16, 5), (2, 256, 16, 4), (1, 4096, 256, 8)]
    return [Case(f"features of shape [{b}, {n}, {c}] (a {math.isqrt(n)}x{math.isqrt(n)} grid), tokens_per_image={t}",
                 (torch.randn(b, n, c, generator=gen), t)) for b, n, t, c in shapes]


POOLING_MISTAKES = (
    Mistake("consecutive_patches", "the 4096 patches are a 64x64 grid stored row by row: pool 4x4 *squares* "
            "of the grid, not runs of 16 consecutive patches (those are 16 patches of one row).", _pool_consecutive),
    Mistake("wrong_axes", "pooling over the wrong axes: make the grid with `features.transpose(1, 2)` "
            "[B, C, N] *before* reshaping to [B, C, side, side]; a reshape alone mixes channels and patches.",
            _pool_channels_as_grid),
    Mistake("transposed_grid", "the pooled grid comes out row by row (row-major): token r * out_side + c "
            "is the square at row r, column c. Yours lists it column by column.", _pool_transposed),
    Mistake("max_pool", "Gemma 3 *averages* each 4x4 square (avg_pool2d), it does not take the maximum.", _pool_max),
)


def check_patch_pooling(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> CheckResult:
    """`fn(features [B, N, C], tokens_per_image) -> [B, tokens_per_image, C]`: average-pool the patch grid."""
    return run_check("pool_patches", fn, _pool_cases(), _pool_reference, "gemma3_minimal.vision.pool_patches",
                     POOLING_MISTAKES, "draw a 4x4 grid of patch numbers and check which ones each output token averages.")


# --- the image-aware mask: soft tokens of one image see each other ------------------------------


def _image_mask_reference(is_image: torch.Tensor, window) -> torch.Tensor:
    pos, groups = torch.arange(len(is_image)), masks.image_groups(is_image)
    return masks.attention_mask(pos, pos, window, groups, groups)


def _image_mask(is_image, window, groups=None, text_grouped=False, window_first=False, bidirectional=True):
    pos = torch.arange(len(is_image))
    q, k = pos[:, None], pos[None, :]
    g = masks.image_groups(is_image) if groups is None else groups
    same = g[:, None] == g[None, :]
    if not text_grouped:
        same &= g[:, None] >= 0
    in_window = torch.ones_like(same) if window is None else k > q - window
    if not bidirectional:
        return (k <= q) & in_window
    return ((k <= q) & in_window) | same if window_first else ((k <= q) | same) & in_window


def _image_mask_cases(n_random: int = 6, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    layouts = [("tti iii tt", None), ("tiiitt", None), ("tiitiit", None), ("ttiiiiiitt", 3), ("iiii", None),
               ("tttt", 2), ("tiiiiitiit", 4)]
    for _ in range(n_random):
        layouts.append(("".join(rng.choice("tti") for _ in range(rng.randint(2, 14))), rng.choice([None, 3, 5])))
    cases = []
    for layout, window in layouts:
        layout = layout.replace(" ", "")
        is_image = torch.tensor([c == "i" for c in layout])
        cases.append(Case(f"tokens {layout!r} (i: image, t: text), window={window}", (is_image, window)))
    return cases


IMAGE_MASK_MISTAKES = (
    Mistake("text_bidirectional", "only *image* tokens see ahead: text tokens (group -1) stay causal, so require "
            "the group to be >= 0 as well as equal.", lambda m, w: _image_mask(m, w, text_grouped=True)),
    Mistake("images_merged", "each image is its own group: tokens of two different images must not see each other "
            "ahead (number the runs of image tokens, as `g3.masks.image_groups` does).",
            lambda m, w: _image_mask(m, w, groups=torch.where(m, 0, -1))),
    Mistake("window_ignored_for_images", "the sliding window still applies to image tokens in local layers: "
            "AND(window, OR(causal, same image)).", lambda m, w: _image_mask(m, w, window_first=True)),
    Mistake("not_bidirectional", "tokens of one image attend to each other in both directions: "
            "OR the causal mask with 'same image'.", lambda m, w: _image_mask(m, w, bidirectional=False)),
)


def check_image_mask(fn: Callable[[torch.Tensor, object], torch.Tensor]) -> CheckResult:
    """`fn(is_image [T] bool, window or None) -> [T, T] bool`: causal, but bidirectional within each image."""
    return run_check("image_mask", fn, _image_mask_cases(), _image_mask_reference, "gemma3_minimal.masks.attention_mask",
                     IMAGE_MASK_MISTAKES, "write the condition for one (q, k) pair: causal OR same image, AND the window.")
