"""The worst-case rounding of a float32 product, for tests that compare two summation orders."""

import torch


def float32_sum_error(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Bound on |fl(x @ w.T) - x @ w.T| for float32 sums in any order: n * 2**-24 * (|x| @ |w|.T), float64
    [..., out] (n = x.shape[-1]; w may be any upper bound on the weights' magnitudes)."""
    return x.shape[-1] * 2**-24 * (x.abs().double() @ w.abs().double().T)
