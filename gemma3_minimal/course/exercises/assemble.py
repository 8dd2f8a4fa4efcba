"""Exercise checkers for the capstone "Assemble Gemma 3": a block from its parts, the ring-buffer
write across the wrap-around, and the per-layer dispatch of a full forward pass."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from ...config import LOCAL, Gemma3Config, get_config
from ...kv_cache import LayerCache
from ...model import DecoderLayer, Gemma3ForCausalLM
from ...rope import rope_cos_sin, rope_inv_freq
from .engine import Case, CheckResult, Mistake, run_check


def _randomize(module: nn.Module, seed: int) -> None:
    """Random weights, norms included (a zero norm weight would hide a missing norm), and no gradients."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() == 1 else 0.08))
            p.requires_grad_(False)


# --- 1. a decoder block from its parts ----------------------------------------------------------


@dataclass(frozen=True)
class BlockParts:
    """The sub-layers of one decoder block, each a callable [B, T, hidden] -> [B, T, hidden].

    `attn` already knows its mask and RoPE table. `layer`, `rope` and `positions` are the
    library's block these parts come from, which the checker uses as the reference.
    """

    attn_norm: Callable[[torch.Tensor], torch.Tensor]
    attn: Callable[[torch.Tensor], torch.Tensor]
    attn_post_norm: Callable[[torch.Tensor], torch.Tensor]
    mlp_norm: Callable[[torch.Tensor], torch.Tensor]
    mlp: Callable[[torch.Tensor], torch.Tensor]
    mlp_post_norm: Callable[[torch.Tensor], torch.Tensor]
    layer: DecoderLayer
    rope: tuple[torch.Tensor, torch.Tensor]
    positions: torch.Tensor


def block_parts(cfg: Gemma3Config, layer_idx: int, seq_len: int, seed: int = 0) -> BlockParts:
    """The parts of the library's block `layer_idx` of `cfg` with random weights, for `seq_len` tokens."""
    layer = DecoderLayer(cfg, layer_idx).eval()
    _randomize(layer, seed)
    positions = torch.arange(seq_len)
    base = cfg.rope_local_base_freq if layer.is_sliding else cfg.rope_theta
    cos, sin = rope_cos_sin(positions, rope_inv_freq(cfg.head_dim, base))
    return BlockParts(
        attn_norm=layer.input_layernorm, attn=lambda h: layer.self_attn(h, cos, sin, positions),
        attn_post_norm=layer.post_attention_layernorm, mlp_norm=layer.pre_feedforward_layernorm,
        mlp=layer.mlp, mlp_post_norm=layer.post_feedforward_layernorm, layer=layer, rope=(cos, sin),
        positions=positions,
    )


def _block_reference(x: torch.Tensor, parts: BlockParts) -> torch.Tensor:
    with torch.no_grad():
        return parts.layer(x, parts.rope, parts.positions)


def _block_pre_norm_only(x, p):
    x = x + p.attn(p.attn_norm(x))
    return x + p.mlp(p.mlp_norm(x))


def _block_norm_after_add(x, p):
    x = p.attn_post_norm(x + p.attn(p.attn_norm(x)))
    return p.mlp_post_norm(x + p.mlp(p.mlp_norm(x)))


def _block_parallel(x, p):
    return x + p.attn_post_norm(p.attn(p.attn_norm(x))) + p.mlp_post_norm(p.mlp(p.mlp_norm(x)))


def _block_cases(n_random: int = 4, seed: int = 0) -> list[Case]:
    tiny = get_config("tiny")
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    specs = [(0, 1, 12, 1.0), (5, 1, 12, 1.0), (3, 2, 5, 1.0), (5, 1, 1, 30.0)]  # local, global, batch 2, one token
    specs += [(rng.randrange(tiny.num_hidden_layers), rng.randint(1, 2), rng.randint(2, 16), rng.choice([0.5, 1.0, 10.0]))
              for _ in range(n_random)]
    cases = []
    for i, (layer_idx, batch, seq_len, scale) in enumerate(specs):
        kind = "local" if tiny.layer_types[layer_idx] == LOCAL else "global"
        x = scale * torch.randn(batch, seq_len, tiny.hidden_size, generator=gen)
        cases.append(Case(f"x of shape {list(x.shape)}, parts of tiny layer {layer_idx} ({kind})",
                          (x, block_parts(tiny, layer_idx, seq_len, seed=100 + i))))
    return cases


BLOCK_MISTAKES = (
    Mistake("pre_norm_only", "Gemma 3 normalizes each sub-layer's output too (report section 2, pre- and "
            "post-norm): add attn_post_norm(attn(attn_norm(x))), not attn(attn_norm(x)); the same for the MLP.",
            _block_pre_norm_only),
    Mistake("norm_after_add", "the post-norm applies to the sub-layer's output *before* the residual add: "
            "x + attn_post_norm(...). Normalizing x + ... would rescale the residual stream itself.",
            _block_norm_after_add),
    Mistake("parallel_mlp", "the MLP reads x *after* the attention's residual add: first "
            "x = x + attention part, then x = x + MLP part of that new x (sequential, not parallel).",
            _block_parallel),
)


def check_decoder_block(fn: Callable[[torch.Tensor, BlockParts], torch.Tensor]) -> CheckResult:
    """`fn(x [B, T, hidden], parts) -> [B, T, hidden]`: one Gemma 3 decoder block from its six parts."""
    return run_check("decoder_block", fn, _block_cases(), _block_reference, "gemma3_minimal.model.DecoderLayer",
                     BLOCK_MISTAKES, "x = x + post_norm(attention(pre_norm(x))), then the same with the MLP's two norms.")


# --- 2. the ring-buffer write ------------------------------------------------------------------


def _ring_reference(cache: torch.Tensor, new: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    slots, dim = cache.shape
    layer = LayerCache(1, 1, slots, dim, ring=True, dtype=cache.dtype, device=cache.device)
    layer.k[0, 0] = cache
    layer.write(new[None, None], new[None, None], positions)
    return layer.k[0, 0]


def _ring_shifted(cache, new, positions):
    return torch.cat([cache, new])[-cache.shape[0]:]


def _ring_first_of_chunk(cache, new, positions):
    out, slots = cache.clone(), cache.shape[0]
    out[positions[:slots] % slots] = new[:slots]
    return out


def _ring_chunk_index(cache, new, positions):
    out = cache.clone()
    out[: new.shape[0]] = new
    return out


def _held(slots: int, length: int) -> torch.Tensor:
    """[slots, 1] float: the positions a ring of `slots` holds after `length` positions (-1: empty)."""
    pos = torch.full((slots,), -1.0)
    for p in range(length):
        pos[p % slots] = p
    return pos[:, None]


def _ring_cases(n_random: int = 6, seed: int = 0) -> list[Case]:
    def visible(slots: int, length: int, new: int) -> Case:
        positions = torch.arange(length, length + new)
        return Case(f"{slots} slots holding positions {_held(slots, length).flatten().long().tolist()} (as values), "
                    f"new positions {positions.tolist()}",
                    (_held(slots, length), positions[:, None].float(), positions))

    cases = [visible(4, 4, 1), visible(4, 6, 2), visible(8, 0, 3), visible(4, 0, 10), visible(8, 13, 5)]
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    for _ in range(n_random):
        slots, dim = rng.randint(2, 12), rng.randint(1, 8)
        length, new = rng.randint(0, 3 * slots), rng.randint(1, 2 * slots)
        positions = torch.arange(length, length + new)
        cases.append(Case(f"cache [{slots}, {dim}] after {length} positions, new positions {length}..{length + new - 1}",
                          (torch.randn(slots, dim, generator=gen), torch.randn(new, dim, generator=gen), positions)))
    return cases


RING_MISTAKES = (
    Mistake("shifted_window", "a ring never moves what it holds: position p goes to slot p % slots and "
            "overwrites only the position that left the window (shifting copies the whole buffer every step).",
            _ring_shifted),
    Mistake("first_of_chunk", "when a chunk is longer than the ring, keep its *last* `slots` positions: "
            "those are the ones later queries can still see.", _ring_first_of_chunk),
    Mistake("slot_from_chunk_index", "the slot comes from the position, p % slots, not from the token's "
            "index inside the new chunk.", _ring_chunk_index),
)


def check_ring_write(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """`fn(cache [slots, D], new [T, D], positions [T]) -> cache [slots, D]`: the ring after writing `new`."""
    return run_check("ring_write", fn, _ring_cases(), _ring_reference, "gemma3_minimal.kv_cache.LayerCache.write",
                     RING_MISTAKES, "keep the last `slots` new rows, and write row p at slot p % slots.")


# --- 3. the full forward pass and its per-layer dispatch ----------------------------------------


class _Block:
    """The library's DecoderLayer called as the capstone's Block: `block(x, cos, sin, positions, window)`."""

    def __init__(self, layer: DecoderLayer):
        self.layer = layer

    def __call__(self, x, cos, sin, positions, window: Optional[int]) -> torch.Tensor:
        attn = self.layer.self_attn
        own = attn.sliding_window
        attn.sliding_window = window  # the caller decides local or global, as in the capstone
        try:
            with torch.no_grad():
                return self.layer(x, (cos, sin), positions)
        finally:
            attn.sliding_window = own


@dataclass(frozen=True)
class ModelParts:
    """What a forward pass assembles: `embed` (nn.Embedding), `blocks` (callables
    `block(x, cos, sin, positions, window)`), `final_norm`, and `cfg`. `model` is the library's
    Gemma3ForCausalLM they come from (the checker's reference)."""

    cfg: Gemma3Config
    embed: nn.Embedding
    blocks: list
    final_norm: nn.Module
    model: Gemma3ForCausalLM


def model_parts(cfg: Gemma3Config, seed: int = 0) -> ModelParts:
    """The parts of a library Gemma3ForCausalLM of `cfg` with random weights."""
    model = Gemma3ForCausalLM(cfg).eval()
    _randomize(model, seed)
    inner = model.model
    return ModelParts(cfg, inner.embed_tokens, [_Block(layer) for layer in inner.layers], inner.norm, model)


def _forward_reference(ids: torch.Tensor, parts: ModelParts) -> torch.Tensor:
    with torch.no_grad():
        return parts.model(ids)


def _forward(ids, parts, scale=True, rope="by_type", windows=True, rope_scaling=True, final_norm=True):
    """The full forward pass with switches for the typical mistakes."""
    cfg = parts.cfg
    positions = torch.arange(ids.shape[1])
    local = rope_cos_sin(positions, rope_inv_freq(cfg.head_dim, cfg.rope_local_base_freq))
    global_ = rope_cos_sin(positions, rope_inv_freq(cfg.head_dim, cfg.rope_theta,
                                                    cfg.rope_scaling_factor if rope_scaling else 1.0))
    with torch.no_grad():
        x = parts.embed(ids) * (cfg.hidden_size**0.5 if scale else 1.0)
        for block, kind in zip(parts.blocks, cfg.layer_types):
            is_local = kind == LOCAL
            table = {"by_type": local if is_local else global_, "local_only": local,
                     "swapped": global_ if is_local else local}[rope]
            x = block(x, *table, positions, cfg.sliding_window if is_local and windows else None)
        x = parts.final_norm(x) if final_norm else x
        return x @ parts.embed.weight.T


def _forward_cases(seed: int = 0) -> list[Case]:
    tiny = get_config("tiny")
    long_context = tiny.replace(rope_scaling_factor=8.0, name="tiny-128k")  # global RoPE x8, as 4B/12B/27B
    gen = torch.Generator().manual_seed(seed)
    specs = [(tiny, 1, 12), (tiny, 2, 20), (long_context, 1, 16), (tiny, 1, 1), (long_context, 2, 9)]
    cases = []
    for i, (cfg, batch, seq_len) in enumerate(specs):
        ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=gen)
        cases.append(Case(f"ids of shape {list(ids.shape)}, parts of a random {cfg.name} model "
                          f"(window {cfg.sliding_window}, rope_scaling_factor {cfg.rope_scaling_factor:g})",
                          (ids, model_parts(cfg, seed=200 + i))))
    return cases


FORWARD_MISTAKES = (
    Mistake("no_embedding_scale", "Gemma multiplies the token embeddings by sqrt(hidden_size) before the first "
            "block (sqrt(640) = 25.3 in the 270M).", lambda ids, p: _forward(ids, p, scale=False)),
    Mistake("one_rope_table", "local and global layers rotate with different bases: `cfg.rope_local_base_freq` "
            "(10k) for local layers, `cfg.rope_theta` (1M) for global ones; pick the table by cfg.layer_types[i].",
            lambda ids, p: _forward(ids, p, rope="local_only")),
    Mistake("rope_tables_swapped", "the tables are swapped: local (\"sliding_attention\") layers take base "
            "`rope_local_base_freq` (10k), global (\"full_attention\") layers `rope_theta` (1M).",
            lambda ids, p: _forward(ids, p, rope="swapped")),
    Mistake("no_window", "local layers attend within `cfg.sliding_window`: pass the window to the "
            "\"sliding_attention\" layers and None to the global ones.", lambda ids, p: _forward(ids, p, windows=False)),
    Mistake("no_rope_scaling", "on 128K models the global layers' frequencies are divided by "
            "`cfg.rope_scaling_factor` (8; report section 2): g3.rope_inv_freq(head_dim, rope_theta, "
            "rope_scaling_factor).", lambda ids, p: _forward(ids, p, rope_scaling=False)),
    Mistake("no_final_norm", "apply the final RMSNorm (`parts.final_norm`) after the last block, before the head.",
            lambda ids, p: _forward(ids, p, final_norm=False)),
)


def check_gemma_forward(fn: Callable[[torch.Tensor, ModelParts], Any]) -> CheckResult:
    """`fn(ids [B, T], parts) -> logits [B, T, vocab]`: the whole forward pass, one block per layer type."""
    return run_check("gemma_forward", fn, _forward_cases(), _forward_reference, "gemma3_minimal.Gemma3ForCausalLM",
                     FORWARD_MISTAKES, "embed and scale, run every block with its layer type's RoPE table and "
                     "window, final norm, then logits = x @ embed.weight.T.")
