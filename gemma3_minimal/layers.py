"""The pieces of a Gemma 3 decoder block: RMSNorm, the GeGLU MLP and grouped-query attention.

Parameter names follow the checkpoint (`q_proj`, `q_norm`, `gate_proj`, ...), so loading weights
is a name map with shape checks.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Gemma3Config
from .masks import attention_mask
from .rope import apply_rope

# Queries per attention call when no cache bounds the keys: keeps every score block at
# [heads, 512, keys] instead of materializing a [seq, seq] matrix for long inputs.
QUERY_CHUNK = 512

# A decode step multiplies every weight matrix by one vector, so its speed is memory reads.
# PyTorch's CPU matrix-vector product reads a row-major [out, in] matrix at about 16 GB/s here.
# Stored as [in, out] and cut into row ranges that one `bmm` reads in parallel, each a contiguous
# stream, the 270M's head reads at about 50 GB/s and its per-layer matrices at 30-42 GB/s
# (benchmarks/RESULTS.md). The values and shapes stay nn.Linear's.
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


class Linear(nn.Linear):
    """A bias-free nn.Linear whose weight [out, in] is stored column-major, for fast decoding."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)
        self.weight = nn.Parameter(self.weight.detach().t().contiguous().t())  # same values, [in, out] storage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if opaque_products(x):
            return products(x, [self.weight])[0]
        return linear(x, self.weight)


# Projections that read the same input (q, k, v; gate, up) keep their own parameters, named as in
# the checkpoint, but their weights can lie back to back in one buffer: then one product reads
# them all, one long stream instead of three short ones.


@torch.no_grad()
def fuse_linears(*linears: Linear, column_major: bool = True) -> None:
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


def fused_weight(*linears: Linear) -> Optional[torch.Tensor]:
    """The weights of `linears` as one [sum(out), in] view if `fuse_linears` put them back to back.

    None when they are apart (e.g. after `.to(dtype)`, which copies each) or when they may not be
    read as one (see `may_fuse`).
    """
    weights = [lin.weight for lin in linears]
    return back_to_back(weights) if may_fuse(weights[0]) else None


def may_fuse(weight: torch.Tensor) -> bool:
    """False when gradients are needed (a product through the shared view would not reach each
    parameter) or under torch.compile, which cannot trace memory addresses."""
    return not ((weight.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling())


def back_to_back(weights: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """Weights [out_i, in] as one [sum(out_i), in] view when they lie back to back in one storage."""
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


def project(x: torch.Tensor, *linears: Linear) -> tuple[torch.Tensor, ...]:
    """(lin(x) for lin in linears), as one product when their weights are fused."""
    weights = [lin.weight for lin in linears]
    if opaque_products(x):
        return tuple(products(x, weights))
    if not may_fuse(weights[0]):
        return tuple(linear(x, w) for w in weights)
    return tuple(fused_products(x, weights))


def fused_products(x: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """[x @ w.T for w in weights]: one product and a split when they lie back to back."""
    fused = back_to_back(weights)
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


@torch.no_grad()
def set_weight_layout(model: nn.Module) -> nn.Module:
    """Store each Linear weight in the layout its dtype reads fastest, fused where a module says, in place.

    float32: column-major, for `blocked_matvec`. Other dtypes: row-major, since PyTorch's bfloat16
    matrix-vector product is fastest on [out, in] rows (26 ms for the 270M head, against 55 ms
    column-major and 227 ms blocked). Values and shapes never change; a tied weight moves once.
    Returns the model.
    """
    for module in model.modules():
        for names in getattr(module, "fused_projections", ()):
            linears = [getattr(module, name) for name in names]
            column_major = linears[0].weight.dtype == torch.float32
            w = fused_weight(*linears)
            if w is None or (w.stride(0) == 1) != column_major:
                fuse_linears(*linears, column_major=column_major)
    for module in model.modules():
        if isinstance(module, Linear):
            w = module.weight
            column_major = w.dtype == torch.float32
            if (w.stride(0) == 1) != column_major:
                w.data = w.data.t().contiguous().t() if column_major else w.data.contiguous()
    return model


class RMSNorm(nn.Module):
    """x / rms(x) * (1 + w), computed in float32; w starts at 0, so the scale starts at 1."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


class GeGLU(nn.Module):
    """down(gelu_tanh(gate(x)) * up(x)): the gated MLP of every Gemma 3 block."""

    fused_projections = (("gate_proj", "up_proj"),)

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size)
        self.up_proj = Linear(hidden_size, intermediate_size)
        self.down_proj = Linear(intermediate_size, hidden_size)
        fuse_linears(self.gate_proj, self.up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, self.gate_proj, self.up_proj)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      scaling: float) -> torch.Tensor:
    """softmax(q k^T * scaling, masked) v with K/V heads shared by groups of query heads.

    q [B, H, Tq, D]; k, v [B, K, Tk, D] with H = K * R; mask [..., Tq, Tk] bool (True: attend).
    Query head h reads K/V head h // R. Instead of copying K/V R times, the R query heads of a
    group are stacked as R * Tq rows against their shared K/V head: [B, K, R * Tq, Tk] scores.
    """
    B, H, Tq, D = q.shape
    K = k.shape[1]
    R = H // K
    scores = (q.reshape(B, K, R * Tq, D) @ k.transpose(-1, -2)).mul_(scaling)  # [B, K, R * Tq, Tk]
    scores = scores.view(B, K, R, Tq, -1).masked_fill_(~mask.view(-1, 1, 1, Tq, mask.shape[-1]), float("-inf"))
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)  # float32 softmax, as transformers
    return (weights.view(B, K, R * Tq, -1) @ v).view(B, H, Tq, D)


class Attention(nn.Module):
    """Grouped-query attention with QK-norm, RoPE and `query_pre_attn_scalar ** -0.5` scaling."""

    fused_projections = (("q_proj", "k_proj", "v_proj"),)

    def __init__(self, cfg: Gemma3Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scaling = cfg.query_pre_attn_scalar**-0.5
        self.is_sliding = cfg.layer_types[layer_idx] == "sliding_attention"
        self.sliding_window = cfg.sliding_window if self.is_sliding else None
        H, K, D = self.num_heads, self.num_kv_heads, self.head_dim
        self.q_proj = Linear(cfg.hidden_size, H * D)
        self.k_proj = Linear(cfg.hidden_size, K * D)
        self.v_proj = Linear(cfg.hidden_size, K * D)
        self.o_proj = Linear(H * D, cfg.hidden_size)
        self.q_norm = RMSNorm(D, cfg.rms_norm_eps)  # QK-norm replaces Gemma 2's soft-capping
        self.k_norm = RMSNorm(D, cfg.rms_norm_eps)
        fuse_linears(self.q_proj, self.k_proj, self.v_proj)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, hidden]
        cos: torch.Tensor,  # [T, D] or [B, 1, T, D]
        sin: torch.Tensor,
        positions: torch.Tensor,  # [T] absolute positions of the queries
        cache=None,  # a kv_cache.LayerCache, or None for a plain forward
        groups: Optional[torch.Tensor] = None,  # [B, T] image ids, -1 for text
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = project(x, self.q_proj, self.k_proj, self.v_proj)
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, K, T, D]
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, K, T, D]
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        if cache is not None:
            k, v, k_pos, k_groups = cache.update(k, v, positions, groups)
        else:
            k_pos, k_groups = positions, groups
        out = self.attend(q, k, v, positions, k_pos, groups, k_groups)  # [B, H, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))

    def attend(self, q, k, v, q_pos, k_pos, q_groups, k_groups) -> torch.Tensor:
        """softmax(q k^T * scaling + mask) v in query chunks; q [B, H, Tq, D], k/v [B, K, Tk, D]."""
        Tq, Tk = q.shape[2], k.shape[2]
        # Keys at consecutive positions (a plain forward, a global cache): a query chunk only
        # needs the keys from its window start to its last position, so slice them.
        sequential = Tq > 1 and Tk > QUERY_CHUNK and torch.equal(
            k_pos, torch.arange(int(k_pos[0]), int(k_pos[0]) + Tk, device=k_pos.device)
        )
        outs = []
        for start in range(0, Tq, QUERY_CHUNK):
            stop = min(start + QUERY_CHUNK, Tq)
            lo, hi = 0, Tk
            if sequential:
                k0 = int(k_pos[0])
                if self.sliding_window is not None:
                    lo = max(0, int(q_pos[start]) - self.sliding_window + 1 - k0)
                if q_groups is None:  # image tokens may look ahead within their image
                    hi = min(Tk, int(q_pos[stop - 1]) + 1 - k0)
            qg = None if q_groups is None else q_groups[:, None, start:stop]
            kg = None if k_groups is None else k_groups[:, None, lo:hi]
            mask = attention_mask(q_pos[start:stop], k_pos[lo:hi], self.sliding_window, qg, kg)
            outs.append(grouped_attention(q[:, :, start:stop], k[:, :, lo:hi], v[:, :, lo:hi], mask, self.scaling))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
