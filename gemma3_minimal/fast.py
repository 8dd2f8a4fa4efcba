"""The performance layer: `speed_up(model)` makes a reference model decode fast on the CPU.

A decode step multiplies every weight matrix by one vector, so its speed is memory reads.
PyTorch's CPU matrix-vector product reads a row-major [out, in] matrix well below the machine's
bandwidth. Stored as [in, out] and cut into row ranges that one `bmm` reads in parallel, each a
contiguous stream, the same weights read about 2-3x faster (figures in benchmarks/RESULTS.md).
Projections that read the same input (q, k, v; gate, up) are also laid back to back in one
buffer, so one product reads them all.

Nothing here changes a parameter's name, shape, value or `state_dict` key: the modules keep
their classes' code (subclasses only swap how products are computed), and tests check that the
sped-up model's logits, greedy tokens and gradients equal the reference model's.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .compiled import enable_compiled_decoding
from .layers import Attention, GeGLU
from .model import Gemma3Base

MATVEC_BLOCKS = 4
MATVEC_MAX_ROWS = 4  # inputs with more rows (prefill, training) use the ordinary F.linear


def blocked_matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., in] @ weight.T for a weight [out, in] stored as the transpose of an [in, out] matrix.

    The [in, out] storage is viewed, without a copy, as MATVEC_BLOCKS blocks of consecutive rows
    [P, in/P, out]; each block multiplies its slice of x, and the P partial products are summed.
    """
    out_features, in_features = weight.shape
    P = MATVEC_BLOCKS
    blocks = weight.t().view(P, in_features // P, out_features)  # [P, in/P, out]
    rows = x.reshape(-1, P, in_features // P).transpose(0, 1)  # [P, rows, in/P]
    return torch.bmm(rows, blocks).sum(0).view(*x.shape[:-1], out_features)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T: `blocked_matvec` for a few rows of a column-major float32 weight on the CPU, else F.linear."""
    if (x.numel() <= MATVEC_MAX_ROWS * x.shape[-1] and weight.stride(0) == 1 and x.device.type == "cpu"
            and weight.shape[1] % MATVEC_BLOCKS == 0 and x.dtype == weight.dtype == torch.float32):
        return blocked_matvec(x, weight)
    return F.linear(x, weight)


def may_fuse(weight: torch.Tensor) -> bool:
    """False when gradients are needed (a product through the shared view would not reach each
    parameter) or under torch.compile, which cannot trace memory addresses."""
    return not ((weight.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling())


def back_to_back(weights: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """Weights [out_i, in] as one [sum(out_i), in] view when they lie back to back in one storage.

    None when they are apart (e.g. after `.to(dtype)`, which copies each).
    """
    first = weights[0]
    strides, address = first.stride(), first.data_ptr()
    for w in weights:  # each weight starts where the previous one ends, with the same strides
        if w.data_ptr() != address or w.stride() != strides:
            return None
        address += w.shape[0] * strides[0] * w.element_size()
    total = sum(w.shape[0] for w in weights)
    last = first.storage_offset() + (total - 1) * strides[0] + (first.shape[1] - 1) * strides[1]
    if (last + 1) * first.element_size() > first.untyped_storage().nbytes():
        return None  # adjacent in memory but separate allocations (a caching allocator can do that)
    return first.as_strided((total, first.shape[1]), strides, first.storage_offset())


def fused_products(x: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """[x @ w.T for w in weights]: one product and a split when they lie back to back."""
    fused = back_to_back(weights) if may_fuse(weights[0]) else None
    if fused is None:
        return [linear(x, w) for w in weights]
    return list(linear(x, fused).split([w.shape[0] for w in weights], dim=-1))


def opaque_products(x: torch.Tensor) -> bool:
    """Under torch.compile on the CPU, products go through `products`: inductor's own code for a
    matrix-vector product reads the weights 2x slower than `blocked_matvec`."""
    return torch.compiler.is_compiling() and x.device.type == "cpu" and not torch.is_grad_enabled()


@torch.library.custom_op("gemma3_minimal::products", mutates_args=())
def products(x: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """`fused_products` as one operation that torch.compile calls but does not look into."""
    return [y.clone() for y in fused_products(x, weights)]  # a custom op's outputs may not alias


@products.register_fake
def _(x: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    return [x.new_empty(*x.shape[:-1], w.shape[0]) for w in weights]


def project(x: torch.Tensor, *linears: nn.Linear) -> list[torch.Tensor]:
    """[lin(x) for lin in linears], as one product when their weights are fused."""
    weights = [lin.weight for lin in linears]
    return products(x, weights) if opaque_products(x) else fused_products(x, weights)


class FastLinear(nn.Linear):
    """nn.Linear (same parameters) whose product reads a column-major weight as row blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(x, self)[0]


class FastGeGLU(GeGLU):
    """GeGLU whose gate and up projections are one product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, self.gate_proj, self.up_proj)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class FastAttention(Attention):
    """Attention whose q, k and v projections are one product."""

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = project(x, self.q_proj, self.k_proj, self.v_proj)
        return q, k, v


FUSED = {FastGeGLU: ("gate_proj", "up_proj"), FastAttention: ("q_proj", "k_proj", "v_proj")}


@torch.no_grad()
def fuse_linears(*linears: nn.Linear, column_major: bool = True) -> None:
    """Move the weights of `linears` (same in_features) into one [sum(out), in] buffer, in place.

    Each weight becomes a view of its rows of the buffer; values, shapes and names do not change.
    """
    w = linears[0].weight
    total = sum(lin.out_features for lin in linears)
    if column_major:
        buffer = torch.empty(w.shape[1], total, dtype=w.dtype, device=w.device).t()  # [total, in], [in, total] storage
    else:
        buffer = torch.empty(total, w.shape[1], dtype=w.dtype, device=w.device)
    start = 0
    for lin in linears:
        rows = buffer[start:start + lin.out_features]
        rows.copy_(lin.weight)
        lin.weight.data = rows
        start += lin.out_features


@torch.no_grad()
def set_weight_layout(model: nn.Module) -> nn.Module:
    """Store each Linear weight in the layout its dtype reads fastest, fused where a module says, in place.

    float32: column-major, for `blocked_matvec`. Other dtypes: row-major, since PyTorch's bfloat16
    matrix-vector product is fastest on [out, in] rows. Values and shapes never change; a tied
    weight moves once. Call it again after `.to(dtype)`. Returns the model.
    """
    for module in model.modules():
        names = FUSED.get(type(module), ())
        if names:
            linears = [getattr(module, name) for name in names]
            column_major = linears[0].weight.dtype == torch.float32
            w = back_to_back([lin.weight for lin in linears])
            if w is None or (w.stride(0) == 1) != column_major:
                fuse_linears(*linears, column_major=column_major)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            w = module.weight
            column_major = w.dtype == torch.float32
            if (w.stride(0) == 1) != column_major:
                w.data = w.data.t().contiguous().t() if column_major else w.data.contiguous()
    return model


SUBCLASSES = {nn.Linear: FastLinear, GeGLU: FastGeGLU, Attention: FastAttention}


def speed_up(model: Gemma3Base) -> Gemma3Base:
    """Make a reference model fast, in place, and return it: same names, keys, shapes and results.

    Swaps each projection, MLP and attention module to its fast subclass (same parameters), lays
    the weights out for fast matrix-vector products (`set_weight_layout`), and enables
    `generate(..., compile=True)` (a static cache and a compiled decode step, see `compiled.py`).
    """
    for module in model.modules():
        fast = SUBCLASSES.get(type(module))
        if fast is not None:
            module.__class__ = fast
    set_weight_layout(model)
    enable_compiled_decoding(model)
    return model
