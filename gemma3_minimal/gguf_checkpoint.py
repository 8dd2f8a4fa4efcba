"""The 270M's weights from its GGUF: tensor names mapped to ours, dequantized to float32, cached.

`gguf` dequantizes every tensor (Q4_K, Q5_0, Q6_K, Q8_0 blocks; norms are F32). llama.cpp's
converter stores each RMSNorm scale as `1 + w`, so we load `w = stored - 1`. The float32 state
dict is cached as safetensors beside the GGUF, keyed by the GGUF's sha256.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf.quants import dequantize
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .assets import cache_dir, expected_sha256, gguf_path, verify_gguf
from .config import Gemma3Config, get_config

# GGUF tensor name (after "blk.N.") -> our parameter name (after "model.layers.N.").
_LAYER_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}

# GGUF metadata key -> our config field, checked against the preset before loading.
_METADATA = {
    "gemma3.block_count": "num_hidden_layers",
    "gemma3.embedding_length": "hidden_size",
    "gemma3.feed_forward_length": "intermediate_size",
    "gemma3.attention.head_count": "num_attention_heads",
    "gemma3.attention.head_count_kv": "num_key_value_heads",
    "gemma3.attention.key_length": "head_dim",
    "gemma3.attention.sliding_window": "sliding_window",
    "gemma3.context_length": "max_position_embeddings",
    "gemma3.rope.freq_base": "rope_theta",
}


def gguf_name_to_ours(name: str) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise KeyError(f"unexpected tensor {name!r} in the GGUF file")


def open_gguf(path: str | Path):
    """A gguf.GGUFReader over a verified file, with a clear error for unreadable ones."""
    path = verify_gguf(path)
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises assorted errors on damaged files
        raise ValueError(f"GGUF file {path} could not be read ({e}); delete it and assemble it again") from e


def check_gguf_config(reader, cfg) -> None:
    """Raise unless the file's architecture numbers equal the config's."""
    for key, field_name in _METADATA.items():
        value = reader.fields[key].contents()
        if value != getattr(cfg, field_name):
            raise ValueError(f"GGUF says {key} = {value}, but config {cfg.name} has {field_name} = {getattr(cfg, field_name)}")


def dequantize_gguf(reader) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32 under our names; RMSNorm scales stored as 1 + w become w."""
    state = {}
    for t in reader.tensors:
        name = gguf_name_to_ours(t.name)
        array = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)  # [out, in] for matrices
        if name.endswith("norm.weight"):
            array = array - 1.0  # llama.cpp's converter stored 1 + w
        state[name] = torch.from_numpy(np.ascontiguousarray(array))
    return state


def load_gguf_state_dict(path: str | Path | None = None, cfg=None) -> dict[str, torch.Tensor]:
    """The 270M's float32 state dict, dequantized once and kept in the cache as safetensors.

    The cached file records the GGUF's sha256; a missing, stale or unreadable cache is rebuilt.
    """
    cfg = cfg or get_config("270m")
    path = gguf_path() if path is None else verify_gguf(path)
    source = expected_sha256()
    cached = cache_dir() / f"gemma-3-270m-{source[:16]}-f32.safetensors"
    if cached.exists():
        try:
            with safe_open(str(cached), "pt") as f:
                if (f.metadata() or {}).get("gguf_sha256") == source:
                    return load_file(str(cached))
        except (SafetensorError, OSError, ValueError):
            pass  # damaged: rebuild below
    reader = open_gguf(path)
    check_gguf_config(reader, cfg)
    state = dequantize_gguf(reader)
    tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")  # renamed when complete
    save_file(state, str(tmp), metadata={"gguf_sha256": source})
    os.replace(tmp, cached)
    return state


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into `model` by name; every parameter must be present with the right shape."""
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(state) - {"lm_head.weight"})  # the head is tied to the embedding
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ValueError(f"tensor {name} has shape {tuple(tensor.shape)}, the model expects {tuple(params[name].shape)}")
            params[name].copy_(tensor)
