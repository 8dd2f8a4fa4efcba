"""Exercise checkers for notebook 04: RMSNorm, repeat_kv, the attention forward pass and the decoder block."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from ... import layers, masks, rope
from ...config import GLOBAL, LOCAL, get_config
from ...model import DecoderLayer
from .engine import Case, CheckResult, Mistake, run_check


def _rms_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = layers.RMSNorm(weight.shape[0], eps)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


def _rms_scale_w(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).type_as(x)


def _rms_no_eps(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _rms_reference(x, weight, 0.0)


def _rms_layer_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = (h - h.mean(-1, keepdim=True)) * torch.rsqrt(h.var(-1, unbiased=False, keepdim=True) + eps)
    return (h * (1 + weight.float())).type_as(x)


def _rms_in_input_dtype(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + weight.to(x.dtype))


def _rms_cases(n_random: int = 5, seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    cases = [
        Case("x of shape [2, 4], weight all zeros (scale 1), eps=1e-6", (torch.randn(2, 4, generator=gen), torch.zeros(4), 1e-6)),
        Case("x of shape [3, 8], a random weight, eps=1e-6", (torch.randn(3, 8, generator=gen), torch.randn(8, generator=gen), 1e-6)),
        Case("x = tiny values 1e-4 of shape [2, 6], eps=1e-2", (torch.full((2, 6), 1e-4), torch.randn(6, generator=gen), 1e-2)),
        Case("x of shape [2, 3, 16] in bfloat16, eps=1e-6",
             ((10 * torch.randn(2, 3, 16, generator=gen)).bfloat16(), torch.randn(16, generator=gen), 1e-6)),
    ]
    for _ in range(n_random):
        shape = [rng.randint(1, 4), rng.randint(1, 6), rng.choice([4, 16, 64])]
        x = torch.randn(*shape, generator=gen) * rng.choice([0.1, 1.0, 30.0])
        cases.append(Case(f"x of shape {shape}, a random weight, eps=1e-6", (x, torch.randn(shape[-1], generator=gen), 1e-6)))
    return cases


RMS_NORM_MISTAKES = (
    Mistake("scale_w", "Gemma scales by (1 + w), not w: the weight is stored as an offset from 1, "
            "so a fresh layer (w = 0) leaves the normalized x unchanged.", _rms_scale_w),
    Mistake("layer_norm", "RMSNorm does not subtract the mean: divide by sqrt(mean(x^2) + eps) only.", _rms_layer_norm),
    Mistake("no_eps", "add eps inside the square root: sqrt(mean(x^2) + eps); it matters when x is tiny.", _rms_no_eps),
    Mistake("input_dtype", "compute in float32 (`x.float()`), then cast the result back to x's dtype "
            "(`.type_as(x)`): bfloat16 is too coarse for the mean of squares.", _rms_in_input_dtype),
)


def check_rms_norm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """`fn(x [..., dim], weight [dim], eps) -> [..., dim]`: Gemma's RMSNorm, scale (1 + weight)."""
    return run_check("rms_norm", fn, _rms_cases(), _rms_reference, "gemma3_minimal.layers.RMSNorm",
                     RMS_NORM_MISTAKES, "normalize over the last dimension only, one row at a time.")


def _repeat_kv_reference(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """repeat_kv as the library's grouped attention sees it (it never copies K/V heads).

    With zero queries and a diagonal mask, query t of head h attends to key t only, with weight 1,
    so the output is the value that head h reads: x[:, h // n_rep, t], exactly.
    """
    b, k, t, d = x.shape
    queries = torch.zeros(b, k * n_rep, t, d, dtype=x.dtype)
    return layers.grouped_attention(queries, x, x, torch.eye(t, dtype=torch.bool), scaling=1.0)


def _repeat_kv_cases(n_random: int = 5, seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    shapes = [(1, 2, 3, 2, 2), (1, 1, 2, 2, 4), (2, 4, 3, 8, 1)]
    shapes += [(rng.randint(1, 2), rng.randint(1, 4), rng.randint(1, 5), rng.choice([2, 4, 8]), rng.randint(1, 4))
               for _ in range(n_random)]
    return [Case(f"x of shape [{b}, {k}, {t}, {d}], n_rep={n}", (torch.randn(b, k, t, d, generator=gen), n))
            for b, k, t, d, n in shapes]


REPEAT_KV_MISTAKES = (
    Mistake("tiled", "each K/V head serves n_rep *neighbouring* query heads: the order is "
            "[k0, k0, k1, k1], not [k0, k1, k0, k1] (`x.repeat` tiles; repeat each head in place).",
            lambda x, n: x.repeat(1, n, 1, 1)),
    Mistake("wrong_dim", "repeat along the heads dimension (dim 1), not along positions or channels.",
            lambda x, n: x.repeat_interleave(n, dim=2)),
)


def check_repeat_kv(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> CheckResult:
    """`fn(x [B, K, T, D], n_rep) -> [B, K * n_rep, T, D]`: each K/V head repeated for its query heads."""
    return run_check("repeat_kv", fn, _repeat_kv_cases(), _repeat_kv_reference, "gemma3_minimal.layers.grouped_attention",
                     REPEAT_KV_MISTAKES, "query head h uses K/V head h // n_rep.")


# --- the attention forward pass: projections, QK-norm, RoPE, GQA and the mask together ----------

# A small config whose score scale differs from head_dim ** -0.5, as in the 27B (query_pre_attn_scalar 168, head_dim 128).
BLOCK_CONFIG = get_config("tiny").replace(query_pre_attn_scalar=32, name="exercise")
LOCAL_LAYER, GLOBAL_LAYER = BLOCK_CONFIG.layer_types.index(LOCAL), BLOCK_CONFIG.layer_types.index(GLOBAL)


def _randomized(module: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """Random weights everywhere (norm offsets too, so a skipped or misplaced norm shows)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return module.eval()


def _block_cases(make: Callable[[int], torch.nn.Module], n_random: int = 3, seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    cfg = BLOCK_CONFIG
    picks = [(LOCAL_LAYER, 1, 4), (LOCAL_LAYER, 2, cfg.sliding_window + 5), (GLOBAL_LAYER, 1, cfg.sliding_window + 5)]
    picks += [(rng.choice([LOCAL_LAYER, GLOBAL_LAYER]), rng.randint(1, 2), rng.randint(1, 20)) for _ in range(n_random)]
    cases = []
    for layer, b, t in picks:
        module = _randomized(make(layer), gen)
        kind = "local" if cfg.layer_types[layer] == LOCAL else "global"
        base = cfg.rope_local_base_freq if kind == "local" else cfg.rope_theta
        cos, sin = rope.rope_cos_sin(torch.arange(t), rope.rope_inv_freq(cfg.head_dim, base))
        x = torch.randn(b, t, cfg.hidden_size, generator=gen)
        cases.append(Case(f"a {kind} layer (window {cfg.sliding_window}), x of shape [{b}, {t}, {cfg.hidden_size}]",
                          (module, x, cos, sin)))
    return cases


def _attention_reference(attn, x, cos, sin):
    with torch.no_grad():
        return attn(x, cos, sin, torch.arange(x.shape[1]))


def _attention(attn, x, cos, sin, qk_norm=True, rope_first=False, scaling=None, window=True, tiled=False):
    """The attention forward pass, with switches for typical mistakes."""
    B, T, _ = x.shape
    H, K, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    with torch.no_grad():
        q = attn.q_proj(x).view(B, T, H, D).transpose(1, 2)
        k = attn.k_proj(x).view(B, T, K, D).transpose(1, 2)
        v = attn.v_proj(x).view(B, T, K, D).transpose(1, 2)
        norm_q, norm_k = (attn.q_norm, attn.k_norm) if qk_norm else (torch.nn.Identity(), torch.nn.Identity())
        if rope_first:
            q, k = norm_q(rope.apply_rope(q, cos, sin)), norm_k(rope.apply_rope(k, cos, sin))
        else:
            q, k = rope.apply_rope(norm_q(q), cos, sin), rope.apply_rope(norm_k(k), cos, sin)
        k, v = (k.repeat(1, H // K, 1, 1), v.repeat(1, H // K, 1, 1)) if tiled else (
            k.repeat_interleave(H // K, 1), v.repeat_interleave(H // K, 1))
        scores = q @ k.transpose(-1, -2) * (attn.scaling if scaling is None else scaling)
        pos = torch.arange(T)
        mask = masks.attention_mask(pos, pos, attn.sliding_window if window else None)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return attn.o_proj((weights @ v).transpose(1, 2).reshape(B, T, H * D))


ATTENTION_MISTAKES = (
    Mistake("scale_head_dim", "Gemma 3 scales scores by `query_pre_attn_scalar ** -0.5` (`attn.scaling`), "
            "which is not always head_dim ** -0.5 (the 27B: 168 against 128).",
            lambda a, x, c, s: _attention(a, x, c, s, scaling=a.head_dim**-0.5)),
    Mistake("no_qk_norm", "normalize queries and keys per head with `attn.q_norm` / `attn.k_norm` (QK-norm, "
            "report §2) before RoPE.", lambda a, x, c, s: _attention(a, x, c, s, qk_norm=False)),
    Mistake("rope_before_norm", "QK-norm comes first, then RoPE: q = RoPE(q_norm(q)). RMSNorm with a weight "
            "does not commute with the rotation.", lambda a, x, c, s: _attention(a, x, c, s, rope_first=True)),
    Mistake("no_window", "a local layer (`attn.sliding_window` is not None) sees only the last `sliding_window` "
            "keys: use the sliding-window mask there, the causal mask on global layers.",
            lambda a, x, c, s: _attention(a, x, c, s, window=False)),
    Mistake("kv_tiled", "query head h reads K/V head h // n_rep: repeat each K/V head in place "
            "(`repeat_interleave`), not the whole stack (`repeat`).", lambda a, x, c, s: _attention(a, x, c, s, tiled=True)),
)


def check_attention_forward(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """`fn(attn, x [B, T, hidden], cos [T, D], sin [T, D]) -> [B, T, hidden]`: one attention layer, positions 0..T-1."""
    cases = _block_cases(lambda layer: layers.Attention(BLOCK_CONFIG, layer))
    return run_check("attention_forward", fn, cases, _attention_reference, "gemma3_minimal.layers.Attention",
                     ATTENTION_MISTAKES, "print q, k, v shapes after each step: [B, H, T, D] for q, [B, K, T, D] for k and v.")


# --- a whole decoder block -----------------------------------------------------------------------


def _block_reference(block, x, cos, sin):
    with torch.no_grad():
        return block(x, (cos, sin), torch.arange(x.shape[1]))


def _block(block, x, cos, sin, post_norms=True, norm_residual=False, mlp_from_input=False):
    """The decoder block, with switches for typical mistakes."""
    with torch.no_grad():
        attn = block.self_attn(block.input_layernorm(x), cos, sin, torch.arange(x.shape[1]))
        if norm_residual:  # post_norm(x + f(x)) instead of x + post_norm(f(x))
            h = block.post_attention_layernorm(x + attn)
            return block.post_feedforward_layernorm(h + block.mlp(block.pre_feedforward_layernorm(h)))
        post_attn = block.post_attention_layernorm if post_norms else torch.nn.Identity()
        post_ffw = block.post_feedforward_layernorm if post_norms else torch.nn.Identity()
        h = x + post_attn(attn)
        return h + post_ffw(block.mlp(block.pre_feedforward_layernorm(x if mlp_from_input else h)))


BLOCK_MISTAKES = (
    Mistake("no_post_norms", "Gemma 3 normalizes both *before and after* each sub-layer (report §2): "
            "x + post_attention_layernorm(attn(...)), x + post_feedforward_layernorm(mlp(...)).",
            lambda b, x, c, s: _block(b, x, c, s, post_norms=False)),
    Mistake("norm_on_residual", "the post-norm applies to the sub-layer's output only, before the residual add: "
            "x + post_norm(f(x)), not post_norm(x + f(x)).", lambda b, x, c, s: _block(b, x, c, s, norm_residual=True)),
    Mistake("mlp_from_input", "the MLP reads the stream *after* the attention's residual add: "
            "h = x + ...; out = h + post_ffw(mlp(pre_ffw(h))).", lambda b, x, c, s: _block(b, x, c, s, mlp_from_input=True)),
)


def check_decoder_block(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """`fn(block, x [B, T, hidden], cos, sin) -> [B, T, hidden]`: one Gemma 3 decoder block, positions 0..T-1."""
    cases = _block_cases(lambda layer: DecoderLayer(BLOCK_CONFIG, layer), seed=1)
    return run_check("decoder_block", fn, cases, _block_reference, "gemma3_minimal.model.DecoderLayer",
                     BLOCK_MISTAKES, "write the two residual steps one at a time and compare each with the layer's own pieces.")
