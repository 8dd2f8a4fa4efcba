"""Exercise checkers for the capstone "Assemble Gemma 3": the name map that loads a checkpoint into
the learner's modules, and the full forward pass with its per-layer dispatch (RoPE table and window)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from ...config import LOCAL, Gemma3Config, get_config
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


# --- 1. loading by name: the checkpoint's names -> the capstone's ----------------------------------

# The capstone's module names for each tensor of a checkpoint layer (notebook "Assemble Gemma 3", section 3).
CAPSTONE_BLOCK_PARTS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v", "self_attn.o_proj": "attn.o",
    "self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm",
    "post_attention_layernorm": "attn_post_norm",
    "pre_feedforward_layernorm": "mlp_norm",
    "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up", "mlp.down_proj": "mlp.down",
    "post_feedforward_layernorm": "mlp_post_norm",
}
CAPSTONE_TOP_LEVEL = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "final_norm.weight"}
LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")


def _name_reference(name: str) -> Optional[str]:
    """The capstone's parameter for checkpoint tensor `name`; None for the tied head (nothing to load)."""
    if name == "lm_head.weight":
        return None
    if name in CAPSTONE_TOP_LEVEL:
        return CAPSTONE_TOP_LEVEL[name]
    layer, part = LAYER_NAME.fullmatch(name).groups()
    return f"blocks.{layer}.{CAPSTONE_BLOCK_PARTS[part]}.weight"


def _name_llama_norms(name: str) -> Optional[str]:
    swapped = {"post_attention_layernorm": "pre_feedforward_layernorm",
               "pre_feedforward_layernorm": "post_attention_layernorm"}
    for old, new in swapped.items():
        if f".{old}." in name:
            return _name_reference(name.replace(f".{old}.", f".{new}."))
    return _name_reference(name)


def _name_head_into_embedding(name: str) -> Optional[str]:
    return "embed.weight" if name == "lm_head.weight" else _name_reference(name)


def _name_no_suffix(name: str) -> Optional[str]:
    ours = _name_reference(name)
    return None if ours is None else ours.removesuffix(".weight")


def _name_cases() -> list[Case]:
    with torch.device("meta"):  # the names of the real 270M's checkpoint, without memory
        names = list(Gemma3ForCausalLM(get_config("270m")).state_dict())
    first = ["model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight", "lm_head.weight",
             "model.layers.3.post_attention_layernorm.weight", "model.layers.17.pre_feedforward_layernorm.weight"]
    return [Case(repr(name), (name,)) for name in first + [n for n in names if n not in first]]


NAME_MISTAKES = (
    Mistake("llama_norm_names", "in Gemma 2 and 3, `post_attention_layernorm` is the norm *after* the attention "
            "(our attn_post_norm) and `pre_feedforward_layernorm` the one before the MLP (our mlp_norm). In Llama, "
            "`post_attention_layernorm` is the norm before the MLP: the same name means another norm there.",
            _name_llama_norms),
    Mistake("head_into_embedding", "the head is tied: our model has no head tensor (logits = x @ embed.weight.T), "
            "so `lm_head.weight` maps to None and is skipped; the embedding comes from `model.embed_tokens.weight`.",
            _name_head_into_embedding),
    Mistake("weight_suffix_dropped", "keep the `.weight` suffix: parameter names end with it, "
            "'blocks.3.attn.q.weight' as `model.named_parameters()` lists them.", _name_no_suffix),
)


def check_name_map(fn: Callable[[str], Optional[str]]) -> CheckResult:
    """`fn(checkpoint_name) -> our name or None`: the capstone's name map, over every tensor of the 270M."""
    return run_check("our_name", fn, _name_cases(), _name_reference, "the capstone's name table",
                     NAME_MISTAKES, "split 'model.layers.<i>.<part>.weight' into the layer index and the part, "
                     "then look the part up in the table above.")


# --- 2. the full forward pass and its per-layer dispatch ----------------------------------------


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
    Mistake("all_layers_global", "local layers attend within `cfg.sliding_window`: pass the window to the "
            "\"sliding_attention\" layers and None to the global ones.",
            lambda ids, p: _forward(ids, p, windows=False)),
    Mistake("no_rope_scaling", "on 128K models the global layers' frequencies are divided by "
            "`cfg.rope_scaling_factor` (8; report section 5.3): g3.rope_inv_freq(head_dim, rope_theta, "
            "rope_scaling_factor).", lambda ids, p: _forward(ids, p, rope_scaling=False)),
    Mistake("final_norm_skipped", "apply the final RMSNorm (`parts.final_norm`) after the last block, before the head.",
            lambda ids, p: _forward(ids, p, final_norm=False)),
)


def check_gemma_forward(fn: Callable[[torch.Tensor, ModelParts], Any]) -> CheckResult:
    """`fn(ids [B, T], parts) -> logits [B, T, vocab]`: the whole forward pass, one block per layer type."""
    return run_check("gemma_forward", fn, _forward_cases(), _forward_reference, "gemma3_minimal.Gemma3ForCausalLM",
                     FORWARD_MISTAKES, "embed and scale, run every block with its layer type's RoPE table and "
                     "window, final norm, then logits = x @ embed.weight.T.")
