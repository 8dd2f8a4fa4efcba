"""Weight-only quantization (performance layer): int8 per output channel, int4 in groups.

Every Linear's weight [out, in] and the tied embedding/head become integers and scales:

    groups of G consecutive inputs of one output row share one scale s = max|w| / qmax
    q = round(w / s) clamped to [-qmax, qmax]          qmax = 127 (int8) or 7 (int4)
    w ~ q * s,  so every weight is off by at most s / 2

int8 uses one group per row (G = in: "per output channel"); int4 uses groups of 32 by default
(64 to compare; G = in gives per-channel int4). Scales are bfloat16 (16 bits per group): its
range is float32's, and rounding s to 8 mantissa bits keeps max|w| / s below qmax + 1/2, so the
bound s / 2 holds with the stored scale. int4 pairs share a byte: in each group, byte j holds
element j in its low nibble and element j + G/2 in its high one, both signed.

Only weights are quantized: activations, norms, RoPE and the KV cache stay float32, and
products run in float32 (each weight is turned back to float in registers, never in memory).
A decode step is memory-bound, so reading 1 or 0.5 byte per weight instead of 4 is what makes
it faster. One-row products (decoding, eager or compiled) go to the hand-written CPU kernels of
`cpu_kernels.py`, which read the weights at about the memory's speed; where those cannot run
(no compiler, a shape they do not take), `generate(..., compile=True)` fuses the integer-to-float
conversion into each product (`quantized_matvec` below), 2-3x slower on the head. Products of
more rows (the prompt) dequantize a weight to float32 one chunk of rows at a time and multiply
with PyTorch: correct, but no faster than the float model.

Names and keys: a quantized Linear keeps its name (`model.layers.0.self_attn.q_proj`) but holds
two buffers instead of a `weight` parameter: `qweight` (int8; packed pairs for int4) and `scale`
(bfloat16 [out, in / G]), so `state_dict()` has `...q_proj.qweight` and `...q_proj.scale` where
the float model has `...q_proj.weight`. The head and the embedding share the same two tensors, as
the float model's tied weight does (both keys appear, one storage). Code that reads `.weight` of
a quantized projection gets an AttributeError rather than integers taken for floats.

A quantized model is for inference: `train()` and quantizing twice raise; the norms' parameters
are frozen. `load_pretrained("270m", quantize="int8")` loads, speeds up and quantizes.

Groups with a min (asymmetric): a QuantizedTensor or QuantLinear may also hold `min`, float32
[out, in / G], the value of each group's weights at integer 0:

    w = q * scale + min        (the buffer `min`, key `...o_proj.min`; absent when symmetric)

`quantize()` never makes one (its groups are symmetric), but `load_pretrained("270m",
quantize="gguf-int8")` does: it holds the GGUF's own integers as int8, without re-rounding
(`gguf_checkpoint.gguf_int8_tensors`), and a Q4_K block is `d * sc_j * q - dmin * m_j` with q in
0..15, i.e. scale d * sc_j and min -dmin * m_j per group of 32. The format name GGUF_INT8 is only
for that file: the group size (16 or 32) and the scales' dtype (float16 where the GGUF stores a
float16 scale, float32 where its scale is a product) then differ from tensor to tensor, each
read from the shape and dtype of its `scale`. A product with a min adds sum_g min_g * sum(x in g)
outside the fused group kernel (`min_term`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize

from .compiled import enable_compiled_decoding
from .cpu_kernels import int4_matvec, int8_matvec, kernels_work, supports_int4, supports_int8
from .fast import FastAttention, FastGeGLU, FastLinear
from .kv_cache import KVCache
from .layers import Attention, GeGLU
from .model import Gemma3ForCausalLM, Gemma3TextModel

QMAX = {8: 127, 4: 7}
DEFAULT_GROUP = {"int8": None, "int4": 32}  # None: one group per output row
FORMATS = tuple(DEFAULT_GROUP)  # the formats `quantize()` rounds a float model to
GGUF_INT8 = "gguf-int8"  # the bundled GGUF's integers as int8, exactly (pretrained.load_model builds it)
SCALE_DTYPE = torch.bfloat16
FEW_ROWS = 4  # inputs with at most this many rows (decoding) use the fused kernels
CHUNK_ROWS = 16384  # eager products dequantize this many weight rows at a time
ROW_BLOCKS = 4  # compiled products read a weight's rows as this many blocks (quantized_matvec)


@dataclass
class QuantizedTensor:
    """A weight [out, in] as integers `data`, scales [out, in / group_size] (bfloat16 from
    `quantize_tensor`) and optionally float32 mins of the same shape: w = q * scale (+ min)."""

    data: torch.Tensor  # int8 [out, in] (8 bits) or int8 [out, in / 2] (4 bits, two per byte)
    scale: torch.Tensor
    bits: int
    group_size: int
    min: Optional[torch.Tensor] = None  # float32 [out, in / group_size]; None: symmetric groups

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[0], self.scale.shape[1] * self.group_size

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.data, self.scale, self.min) if t is not None)

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.data, self.scale, self.bits, self.min)

    def to(self, device: torch.device | str) -> QuantizedTensor:
        """The same integers, scales and mins on `device`."""
        return QuantizedTensor(self.data.to(device), self.scale.to(device), self.bits, self.group_size,
                               None if self.min is None else self.min.to(device))


def check_format(fmt: str, group_size: Optional[int] = None) -> tuple[int, Optional[int]]:
    """(bits, group_size) of a format name, or a clear error."""
    if fmt not in DEFAULT_GROUP:
        raise ValueError(f"unknown quantization format {fmt!r}: use one of {', '.join(map(repr, FORMATS))}")
    bits = 8 if fmt == "int8" else 4
    group = DEFAULT_GROUP[fmt] if group_size is None else group_size
    if group is not None and (not isinstance(group, int) or group < 2 or group % 2):
        raise ValueError(f"group_size must be an even integer >= 2 (or None for one group per row), got {group!r}")
    return bits, group


def round_on_grid(g: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """The integers of groups g [..., groups, G] on the grids `scale` [..., groups]: round(g / scale)
    clamped to [-qmax, qmax], as floats. A zero scale (an all-zero group) gives zeros."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale)).float()
    return torch.round(g / safe[..., None]).clamp_(-qmax, qmax)


def searched_scales(g: torch.Tensor, qmax: int, levels: range) -> torch.Tensor:
    """Per group of g [out, groups, G], the scale max|w| / k (k in `levels`) whose rounding has the
    least squared error, float32 [out, groups]. On weights already on a coarser grid (a GGUF's Q5_0:
    w = d * n, |n| <= 16) some k is a multiple of the grid's top level (e.g. 7 * 16 = 112), and
    max|w| / k lands every weight exactly; plain max|w| / qmax does not."""
    amax = g.abs().amax(-1)
    best = best_err = None
    for k in levels:
        scale = torch.where(amax > 0, amax / k, torch.ones_like(amax))
        err = (round_on_grid(g, scale, qmax) * scale[..., None] - g).pow_(2).sum(-1)
        if best is None:
            best, best_err = scale, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, scale, best), torch.where(better, err, best_err)
    return torch.where(amax > 0, best, torch.zeros_like(best))


def quantize_tensor(w: torch.Tensor, bits: int, group_size: Optional[int] = None,
                    scale_dtype: torch.dtype = SCALE_DTYPE, search: Optional[range] = None) -> QuantizedTensor:
    """Symmetric round-to-nearest quantization of w [out, in] in groups of `group_size` inputs.

    `group_size=None` is one group per output row. Every weight comes back within scale / 2.
    `scale_dtype=torch.float32` keeps scales exact: int8 in groups of 32 then holds a GGUF Q8_0
    tensor (int8 and a float16 scale per 32) without changing a weight. `search` (e.g.
    range(100, 128) for int8): the scale of each group is chosen among max|w| / k, k in `search`,
    for the least squared error (`searched_scales`), instead of max|w| / qmax.
    """
    if bits not in QMAX:
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"expected a float weight [out, in], got shape {tuple(w.shape)} and dtype {w.dtype}")
    out_features, in_features = w.shape
    group = in_features if group_size is None else group_size
    if in_features % group or group % 2:
        raise ValueError(
            f"group_size {group} does not divide the {in_features} inputs of a [{out_features}, {in_features}] "
            "weight into even groups: pick an even divisor (e.g. 32 or 64) or None for one group per row"
        )
    qmax = QMAX[bits]
    g = w.detach().float().reshape(out_features, in_features // group, group)
    if search is None:
        scale = (g.abs().amax(-1) / qmax).to(scale_dtype)  # [out, groups]
    else:
        scale = torch.cat([searched_scales(g[i:i + CHUNK_ROWS], qmax, search)
                           for i in range(0, out_features, CHUNK_ROWS)]).to(scale_dtype)
    if not torch.isfinite(scale).all():
        raise ValueError("the weight holds inf or nan: it cannot be quantized")
    q = round_on_grid(g, scale, qmax).to(torch.int8)
    if bits == 8:
        data = q.reshape(out_features, in_features)
    else:
        half = group // 2
        data = ((q[..., :half] & 15) | (q[..., half:] << 4)).reshape(out_features, in_features // 2)
    return QuantizedTensor(data.contiguous(), scale.contiguous(), bits, group)


def unpack_int4(data: torch.Tensor, groups: int) -> torch.Tensor:
    """Packed int4 [out, in / 2] -> int8 values [out, groups, G] (the low nibbles, then the high ones)."""
    p = data.view(data.shape[0], groups, -1)
    return torch.cat([(p << 4) >> 4, p >> 4], dim=-1)  # arithmetic shifts keep the sign


def dequantize(data: torch.Tensor, scale: torch.Tensor, bits: int, min: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Float32 weights [out, in] from integers, scales [out, groups] and mins (None: symmetric).

    q * scale, then + min: two float32 operations, each rounded, in the order gguf's own
    dequantization of a Q4_K block computes `d * q - dm`."""
    out_features, groups = scale.shape
    q = data.view(out_features, groups, -1) if bits == 8 else unpack_int4(data, groups)
    w = q.float() * scale.float()[..., None]
    if min is not None:
        w = w + min[..., None]
    return w.reshape(out_features, -1)


def quantized_matvec(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """x [..., in] @ w.T for a quantized w, written for torch.compile: per channel, a row's products are
    summed, then scaled; in groups, each product is scaled inside one sum over the row (a sum per
    group would end each group with a horizontal add). The integers become floats inside the fused
    loop, never in memory.

    Each output row's sum is one chain of dependent vector additions, which a CPU runs at the pace
    of its adder's latency rather than of memory. The rows are therefore read as ROW_BLOCKS blocks
    (views), one sum each: inductor fuses these into one loop with that many independent
    accumulators (benchmarks/int8_kernels.py: 1.4x on a layer's int8 products, 1.6-1.7x on the
    head, near the memory's speed). Each row is summed as in one block."""
    out_features = scale.shape[0]
    blocks = ROW_BLOCKS if out_features % ROW_BLOCKS == 0 else 1
    rows = out_features // blocks
    parts = [matvec_rows(x, data[i:i + rows], scale[i:i + rows], bits) for i in range(0, out_features, rows)]
    return parts[0] if blocks == 1 else torch.cat(parts, dim=-1)


def matvec_rows(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """quantized_matvec over one block of rows (one accumulator per row)."""
    out_features, groups = scale.shape
    xg = x.reshape(*x.shape[:-1], 1, groups, -1)  # [..., 1, groups, G]
    p = data.view(out_features, groups, -1)
    if bits == 8 and groups == 1:  # per channel: the row's sum, then its scale
        return (xg * p.float()).sum((-1, -2)) * scale.float()[..., 0]
    s = scale.float()[..., None]  # [out, groups, 1]
    if bits == 8:  # in groups: each product scaled inside one sum over the row (no sum per group)
        return (xg * p.float() * s).sum((-1, -2))
    # int4: a 4-bit two's complement n XOR 8 is n + 8 in 0..15, so n is (u & 15) - 8 for the low nibble and
    # (u >> 4) - 8 for the high one: a mask and a logical shift (inductor's CPU code for these is faster than
    # for arithmetic shifts, benchmarks/int4_kernels.py); both halves scaled inside one sum over the row
    u = p.view(torch.uint8) ^ 0x88
    half = p.shape[-1]
    return (xg[..., :half] * s * ((u & 15).float() - 8) + xg[..., half:] * s * ((u >> 4).float() - 8)).sum((-1, -2))


def min_term(x: torch.Tensor, min: torch.Tensor) -> torch.Tensor:
    """The mins' share of x [..., in] @ w.T when w = q * scale + min: sum_g min[o, g] * sum(x in group g),
    [..., out]. Written for torch.compile next to `quantized_matvec` (one more small reduction)."""
    out_features, groups = min.shape
    xs = x.reshape(*x.shape[:-1], 1, groups, -1).sum(-1)  # [..., 1, groups]
    return (xs * min).sum(-1)


def chunked_linear(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, bits: int,
                   min: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x @ w.T eagerly: CHUNK_ROWS weight rows dequantized at a time (a 262,144-row head is never
    float32 in memory at once)."""
    outs = [F.linear(x, dequantize(data[i:i + CHUNK_ROWS], scale[i:i + CHUNK_ROWS], bits,
                                   None if min is None else min[i:i + CHUNK_ROWS]))
            for i in range(0, data.shape[0], CHUNK_ROWS)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


class QuantLinear(nn.Module):
    """A bias-free Linear whose weight is quantized: buffers `qweight`, `scale` and, for groups
    with a min, `min` (see the module doc)."""

    def __init__(self, qt: QuantizedTensor):
        super().__init__()
        self.out_features, self.in_features = qt.shape
        self.bits, self.group_size = qt.bits, qt.group_size
        self.register_buffer("qweight", qt.data)
        self.register_buffer("scale", qt.scale)
        self.register_buffer("min", qt.min)  # None: no buffer, no state_dict key
        # one-row products (decoding) go to a hand-written CPU kernel where one runs here (cpu_kernels)
        fits = (supports_int4(self.in_features, self.group_size) and qt.min is None if qt.bits == 4
                else supports_int8(self.in_features, self.group_size, qt.scale.dtype))
        self.cpu_kernel = fits and kernels_work()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise TypeError(f"a quantized model computes in float32, got input of dtype {x.dtype}")
        if self.cpu_kernel and x.numel() == self.in_features and x.device.type == "cpu":
            if self.bits == 4:
                return int4_matvec(x, self.qweight, self.scale, self.group_size)
            return int8_matvec(x, self.qweight, self.scale, self.min, self.group_size)
        if torch.compiler.is_compiling() and x.numel() <= FEW_ROWS * self.in_features:
            y = quantized_matvec(x, self.qweight, self.scale, self.bits)
            return y if self.min is None else y + min_term(x, self.min)
        return chunked_linear(x, self.qweight, self.scale, self.bits, self.min)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight [out, in] these integers stand for."""
        return dequantize(self.qweight, self.scale, self.bits, self.min)

    def extra_repr(self) -> str:
        group = "per channel" if self.group_size == self.in_features else f"groups of {self.group_size}"
        kind = ", with mins" if self.min is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}, {group}{kind}"


class QuantEmbedding(nn.Module):
    """An embedding table held by a QuantLinear (the tied head): a lookup dequantizes only its rows."""

    def __init__(self, head: QuantLinear, padding_idx: Optional[int] = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        self.bits, self.padding_idx = head.bits, padding_idx
        self.register_buffer("qweight", head.qweight)  # the same tensors: one storage, two keys
        self.register_buffer("scale", head.scale)
        self.register_buffer("min", head.min)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = dequantize(self.qweight[flat], self.scale[flat], self.bits, None if self.min is None else self.min[flat])
        return rows.view(*ids.shape, self.embedding_dim)


class QuantizedTextModel(Gemma3TextModel):
    """Gemma3TextModel whose embedding scale is float32 (the table itself holds integers)."""

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids) * self.config.hidden_size**0.5


class QuantizedCausalLM(Gemma3ForCausalLM):
    """Gemma3ForCausalLM with quantized weights: inference only, float32 KV cache and activations."""

    quantization: str

    def new_cache(self, max_len: int, batch_size: int = 1, sliding: bool = True) -> KVCache:
        w = self.model.norm.weight  # the compute dtype and device (the head holds integers)
        return KVCache(self.config, batch_size, max_len, w.dtype, w.device, sliding=sliding)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(
                f"this model is quantized ({self.quantization}) for inference: its integer weights get no "
                "gradients. Train the float model (load_pretrained(..., quantize=None)) and quantize afterwards"
            )
        return super().train(False)

    def tie_weights(self) -> None:
        raise RuntimeError("a quantized model's head and embedding already share their integers")


UNFAST = {FastLinear: nn.Linear, FastAttention: Attention, FastGeGLU: GeGLU}


@torch.no_grad()
def quantize(model: Gemma3ForCausalLM, fmt: str = "int8", group_size: Optional[int] = None) -> QuantizedCausalLM:
    """Quantize a float Gemma3ForCausalLM in place and return it: every Linear and the tied head/embedding.

    fmt "int8": per output channel (group_size None) unless a group size is given; "int4": groups
    of 32 unless another even divisor of every width is given (None: per channel). The model is
    put in eval mode; `generate(..., compile=True)` runs the fused kernels (see the module doc).
    """
    if isinstance(model, QuantizedCausalLM):
        raise ValueError(f"the model is already quantized ({model.quantization}): quantize the float model once")
    if type(model) is not Gemma3ForCausalLM:
        raise TypeError(f"quantize supports the text model Gemma3ForCausalLM, got {type(model).__name__}")
    if fmt == GGUF_INT8:
        raise ValueError(f"{GGUF_INT8!r} is not a rounding of float weights but the bundled GGUF's own integers: "
                         f"load it with load_pretrained('270m', quantize={GGUF_INT8!r})")
    bits, group = check_format(fmt, group_size)
    head = model.lm_head
    if head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise ValueError("expected the head tied to the embedding (model.tie_weights())")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for mod in linears.values():  # check all before changing any
        if group is not None and mod.in_features % group:
            raise ValueError(f"group_size {group} does not divide the {mod.in_features} inputs of a Linear; "
                             "pick a divisor of every width (e.g. 32 or 64)")
    tensors = {name: quantize_tensor(m.weight, bits, group) for name, m in linears.items()}
    return quantized_model(model, tensors, fmt if group_size is None else f"{fmt}, groups of {group}")


class FakeQuantize(nn.Module):
    """Quantization-aware training's weight, as a parametrization of a Linear's `weight`. Its scales
    are fixed when it is made: those `quantize_tensor` gives the float weight then (max|w| / qmax per
    group; recomputing them each step moves a whole row's grid whenever its largest weight moves,
    which the gradient does not see). Forward: the weight rounded on that grid,
    q = clamp(round(w / s), -qmax, qmax) * s. Backward: the rounding is skipped and the gradient
    reaches the float weight unchanged, the straight-through estimator: q + (w - stop_gradient(w))."""

    def __init__(self, weight: torch.Tensor, bits: int, group_size: Optional[int]):
        super().__init__()
        qt = quantize_tensor(weight, bits, group_size)
        self.qmax, self.group_size = QMAX[bits], qt.group_size
        self.register_buffer("scale", qt.scale.float())  # [out, groups]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            g = w.reshape(w.shape[0], -1, self.group_size)  # [out, groups, G]
            rounded = (round_on_grid(g, self.scale, self.qmax) * self.scale[..., None]).reshape(w.shape)
        return rounded + (w - w.detach())  # the value: rounded, exactly; the gradient: w's


def qat_model(model: Gemma3ForCausalLM, bits: int = 4, group_size: Optional[int] = None) -> Gemma3ForCausalLM:
    """A copy of a float model for quantization-aware training (the report's section 2.3): every
    projection of the blocks (q, k, v, o, gate, up, down) computes with its weight rounded to `bits`
    in groups of `group_size` (None: one group per output row) by `FakeQuantize`, and only those float
    weights train. The tied embedding/head stays float. Before any step the copy computes what
    post-training rounding of the same matrices gives."""
    if isinstance(model, QuantizedCausalLM):
        raise ValueError("QAT starts from the float model; this one is already quantized")
    if bits not in QMAX:
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    student = copy.deepcopy(model)
    student.requires_grad_(False)
    for layer in student.model.layers:
        for linear in layer.modules():
            if isinstance(linear, nn.Linear):
                parametrize.register_parametrization(linear, "weight", FakeQuantize(linear.weight, bits, group_size))
                linear.parametrizations.weight.original.requires_grad_(True)
    return student


@torch.no_grad()
def quantized_model(model: Gemma3ForCausalLM, tensors: dict[str, QuantizedTensor], label: str) -> QuantizedCausalLM:
    """Turn `model` (float, or on the meta device) into a QuantizedCausalLM in place: every Linear
    named in `tensors` (all of them, "lm_head" included) becomes a QuantLinear holding its
    QuantizedTensor, the embedding shares the head's, and `label` names the format."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if set(tensors) != set(linears):
        missing, unexpected = sorted(set(linears) - set(tensors)), sorted(set(tensors) - set(linears))
        raise ValueError(f"quantized tensors do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, qt in tensors.items():
        if qt.shape != (linears[name].out_features, linears[name].in_features):
            raise ValueError(f"quantized tensor {name} has shape {qt.shape}, the model expects "
                             f"{(linears[name].out_features, linears[name].in_features)}")
    for name, qt in tensors.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, QuantLinear(qt))
    model.model.embed_tokens = QuantEmbedding(model.lm_head, model.config.pad_token_id)
    for module in model.modules():
        if type(module) in UNFAST:  # fused products read `.weight`; the plain modules call each projection
            module.__class__ = UNFAST[type(module)]
    model.model.__class__ = QuantizedTextModel
    model.__class__ = QuantizedCausalLM
    model.quantization = label
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    enable_compiled_decoding(model)
    return model


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, each storage counted once (the tied table once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def bits_per_weight(bits: int, group_size: int) -> float:
    """Stored bits per weight: the integer plus its group's share of a 16-bit scale."""
    return bits + 16 / group_size

