"""Exercise checkers for notebook 06: SigLIP's 4x4 average pooling of the patch grid."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

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
