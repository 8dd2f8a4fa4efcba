"""Official Gemma 3 checkpoints in Hugging Face format, loaded from a folder on disk.

    folder/config.json                     -> Gemma3Config (with a VisionConfig for model type "gemma3")
    folder/model.safetensors               -> the weights in one file,
    folder/model.safetensors.index.json    -> or in shards: tensor name -> shard file
    folder/tokenizer.model                 -> the SentencePiece tokenizer (optional)

The model is built on the meta device, then materialized one tensor at a time, each read on its
own from its shard and cast to the requested dtype as it is placed: loading needs little more
memory than the loaded model. Every name and shape is checked before the first byte is read.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from tqdm.auto import tqdm

from .config import GLOBAL, LOCAL, Gemma3Config, VisionConfig
from .model import Gemma3Base, Gemma3ForCausalLM
from .multimodal import Gemma3ForConditionalGeneration
from .tokenizer import Gemma3Tokenizer

TEXT_TYPE, MULTIMODAL_TYPE = "gemma3_text", "gemma3"
INDEX_FILE, SINGLE_FILE = "model.safetensors.index.json", "model.safetensors"

# transformers' defaults (Gemma3TextConfig, SiglipVisionConfig) for the fields that official configs
# leave out: google/gemma-3-4b-it's text_config omits the head counts and the vocabulary, whose
# default is the 262,208 rows of the converted multimodal checkpoints (262,144 padded to 64).
_TEXT_DEFAULTS = dict(
    vocab_size=262_208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
    sliding_window=4096, max_position_embeddings=131_072, rms_norm_eps=1e-6,
    pad_token_id=0, eos_token_id=1, bos_token_id=2,
)
_VISION_DEFAULTS = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    image_size=224, patch_size=16, num_channels=3, layer_norm_eps=1e-6,
)
# Settings Gemma 3 has one way only, as our model implements it; a config asking otherwise is refused.
_TEXT_FIXED = dict(
    hidden_activation="gelu_pytorch_tanh", attention_bias=False, final_logit_softcapping=None,
    attn_logit_softcapping=None, use_bidirectional_attention=False, tie_word_embeddings=True,
)
_VISION_FIXED = dict(hidden_act="gelu_pytorch_tanh", vision_use_head=False)
_MULTIMODAL_FIXED = dict(boi_token_index=255_999, eoi_token_index=256_000, tie_word_embeddings=True)

# Checkpoint name prefix -> ours, first match wins. Multimodal checkpoints come in three layouts:
# transformers >= 4.52 (`model.language_model.*`), the original conversion that the official
# repositories hold (`language_model.model.*`, `vision_tower.vision_model.*`) and transformers 5's
# `save_pretrained` (`language_model.model.*`, `vision_tower.*`). Our SiglipVisionModel has no
# `vision_model` level, as in transformers 5.
_MULTIMODAL_PREFIXES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.vision_tower.vision_model.", "model.vision_tower."),
    ("vision_tower.vision_model.", "model.vision_tower."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)
_TIED_HEAD = "lm_head.weight"  # the head reads the embedding table; a stored copy is skipped


def read_json(path: Path) -> dict:
    """A JSON file as a dict, with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: a Hugging Face checkpoint folder needs it")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e


def _check_fixed(d: dict, fixed: dict, where: str) -> None:
    for key, value in fixed.items():
        if d.get(key, value) != value:
            raise ValueError(f"{where}: {key} = {d[key]!r}, but Gemma 3 (and this library) has {key} = {value!r}")


def _rope(text: dict, where: str) -> dict[str, float]:
    """RoPE bases and the global layers' linear scaling, from either layout of the config.

    transformers 5 writes `rope_parameters` per layer type; 4.x wrote `rope_theta`,
    `rope_local_base_freq` and `rope_scaling` ({"rope_type": "linear", "factor": 8.0} on 128K models).
    """
    params = text.get("rope_parameters")
    if params is not None:
        if set(params) != {LOCAL, GLOBAL}:
            raise ValueError(f"{where}: rope_parameters must have entries {LOCAL!r} and {GLOBAL!r}, got {sorted(params)}")
        local, full = params[LOCAL], params[GLOBAL]
    else:
        local = {"rope_theta": text.get("rope_local_base_freq", 10_000.0)}
        full = {"rope_theta": text.get("rope_theta", 1_000_000.0), **(text.get("rope_scaling") or {})}
    kinds = {name: p.get("rope_type", p.get("type", "default")) for name, p in ((LOCAL, local), (GLOBAL, full))}
    if kinds[LOCAL] != "default" or kinds[GLOBAL] not in ("default", "linear"):
        raise ValueError(f"{where}: RoPE types {kinds}; Gemma 3 uses plain RoPE locally and plain or linear globally")
    return dict(
        rope_local_base_freq=float(local.get("rope_theta", 10_000.0)),
        rope_theta=float(full.get("rope_theta", 1_000_000.0)),
        rope_scaling_factor=float(full["factor"]) if kinds[GLOBAL] == "linear" else 1.0,
    )


def _sliding_window_pattern(text: dict, num_layers: int) -> int:
    """Every how many layers one is global: read off `layer_types` when given, else the config's number."""
    types = text.get("layer_types")
    if types is None:
        return text.get("sliding_window_pattern", text.get("_sliding_window_pattern", 6))
    return types.index(GLOBAL) + 1 if GLOBAL in types else num_layers + 1


def text_config_from_hf(text: dict, where: str = "config.json", **extra) -> Gemma3Config:
    """A `gemma3_text` config dict (or a multimodal config's `text_config`) -> our Gemma3Config.

    Example: `text_config_from_hf({"hidden_size": 640, ...})` -> Gemma3Config(hidden_size=640, ...).
    """
    _check_fixed(text, _TEXT_FIXED, where)
    if text.get("sliding_window", 1) is None:
        raise ValueError(f"{where}: sliding_window is null, but every Gemma 3 has local layers")
    fields = {k: text.get(k, default) for k, default in _TEXT_DEFAULTS.items()}
    if isinstance(fields["eos_token_id"], list):  # instruction-tuned configs list <eos> and <end_of_turn>
        fields["eos_token_id"] = fields["eos_token_id"][0]
    cfg = Gemma3Config(
        **fields, **_rope(text, where), **extra,
        sliding_window_pattern=_sliding_window_pattern(text, fields["num_hidden_layers"]),
    )
    types = text.get("layer_types")
    if types is not None and list(types) != cfg.layer_types:
        raise ValueError(
            f"{where}: layer_types {types} is not one global layer every N layers ending each group of N "
            "(Gemma 3's 5 local : 1 global); this library supports only that pattern"
        )
    return cfg


def vision_config_from_hf(vision: dict, mm_tokens_per_image: int, where: str = "config.json") -> VisionConfig:
    """A multimodal config's `vision_config` (SigLIP) -> our VisionConfig."""
    _check_fixed(vision, _VISION_FIXED, f"{where} (vision_config)")
    fields = {k: vision.get(k, default) for k, default in _VISION_DEFAULTS.items()}
    return VisionConfig(**fields, mm_tokens_per_image=mm_tokens_per_image)


def config_from_hf(d: dict, name: str = "custom", where: str = "config.json") -> Gemma3Config:
    """A Hugging Face Gemma 3 config.json (text-only or multimodal) as our Gemma3Config.

    Multimodal configs keep their vocabulary as stored (262,208 rows in converted checkpoints) and
    their image token id; the vision tower becomes `cfg.vision`.
    """
    kind = d.get("model_type")
    if kind == TEXT_TYPE:
        return text_config_from_hf(d, where, name=name)
    if kind == MULTIMODAL_TYPE:
        _check_fixed(d, _MULTIMODAL_FIXED, where)
        vision = vision_config_from_hf(d.get("vision_config") or {}, d.get("mm_tokens_per_image", 256), where)
        image_token_id = d.get("image_token_index", d.get("image_token_id", 262_144))
        return text_config_from_hf(d.get("text_config") or {}, f"{where} (text_config)",
                                   vision=vision, image_token_id=image_token_id, name=name)
    raise ValueError(
        f"{where}: model_type {kind!r} is not Gemma 3; expected {TEXT_TYPE!r} (text only) or "
        f"{MULTIMODAL_TYPE!r} (text and images)"
    )


def read_config(folder: str | Path) -> Gemma3Config:
    """The folder's config.json as our Gemma3Config, named after the folder."""
    folder = Path(folder)
    return config_from_hf(read_json(folder / "config.json"), name=folder.resolve().name, where=str(folder / "config.json"))


def read_header(path: Path) -> dict[str, dict]:
    """A safetensors file's tensor table {name: {"dtype", "shape", "data_offsets"}}, checked against its size.

    The format: 8 bytes (little-endian header length n), n bytes of JSON, then the tensor data.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or 8 + n > size:
            raise ValueError(f"shard {path} is truncated or not a safetensors file ({size:,} bytes); download it again")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"shard {path} is not a safetensors file: its header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"shard {path} is not a safetensors file: its header is not a table of tensors")
    header.pop("__metadata__", None)
    for name, info in header.items():
        end = 8 + n + info["data_offsets"][1]
        if end > size:
            raise ValueError(
                f"shard {path} is truncated: tensor {name} ends at byte {end:,} but the file has {size:,} bytes; "
                "download it again"
            )
    return header


def checkpoint_tensors(folder: Path) -> dict[str, tuple[Path, list[int]]]:
    """Every stored tensor: name -> (its safetensors file, its shape); sharded or single-file."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no weight_map (tensor name -> shard file)")
        by_file = defaultdict(list)
        for name, file in weight_map.items():
            by_file[folder / file].append(name)
    elif (folder / SINGLE_FILE).is_file():
        by_file = {folder / SINGLE_FILE: None}
    else:
        raise FileNotFoundError(f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}: no weights to load")
    tensors = {}
    for path, names in by_file.items():
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} is missing; {index.name} says it holds {names[0]} (and {len(names) - 1} more)")
        header = read_header(path)
        for name in header if names is None else names:
            if name not in header:
                raise ValueError(f"tensor {name} is not in shard {path}, although {index.name} puts it there")
            tensors[name] = (path, header[name]["shape"])
    return tensors


def checkpoint_name_to_ours(name: str, multimodal: bool) -> str:
    """'language_model.model.norm.weight' -> 'model.language_model.norm.weight' (text-only names stay)."""
    if multimodal:
        for old, new in _MULTIMODAL_PREFIXES:
            if name.startswith(old):
                return new + name[len(old):]
    return name


def build_on_meta(cfg: Gemma3Config) -> Gemma3Base:
    """Gemma3ForCausalLM, or Gemma3ForConditionalGeneration when `cfg.vision` is set, with no storage."""
    with torch.device("meta"):
        return Gemma3ForCausalLM(cfg) if cfg.vision is None else Gemma3ForConditionalGeneration(cfg)


def loading_plan(model: nn.Module, tensors: dict[str, tuple[Path, list[int]]]) -> dict[Path, list[tuple[str, str]]]:
    """Shard -> [(our parameter, checkpoint tensor)]; raises unless names and shapes fit exactly."""
    params = dict(model.named_parameters())  # the tied head appears once, as the embedding
    multimodal = model.config.vision is not None
    plan, unexpected, seen = defaultdict(list), [], {}
    for theirs, (path, shape) in tensors.items():
        ours = checkpoint_name_to_ours(theirs, multimodal)
        if ours == _TIED_HEAD:
            continue
        if ours not in params:
            unexpected.append(theirs)
            continue
        if ours in seen:
            raise ValueError(f"tensors {seen[ours]} and {theirs} both map to parameter {ours}")
        if tuple(shape) != tuple(params[ours].shape):
            raise ValueError(
                f"tensor {theirs} in {path} has shape {tuple(shape)}, but {ours} of config "
                f"{model.config.name!r} needs {tuple(params[ours].shape)}"
            )
        seen[ours] = theirs
        plan[path].append((ours, theirs))
    missing = sorted(set(params) - set(seen))
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint does not fit its config: {len(missing)} parameters missing {_first(missing)}, "
            f"{len(unexpected)} tensors unexpected {_first(sorted(unexpected))}"
        )
    return dict(plan)


def _first(names: list[str], n: int = 10) -> str:
    """At most n names: "['a', 'b'] and 3 more"."""
    return f"{names[:n]}" + (f" and {len(names) - n} more" if len(names) > n else "")


def _place(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put `tensor` in as parameter `name` (replacing the meta tensor the model was built with)."""
    module_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(module_name), leaf, nn.Parameter(tensor))


def load_hf_model(folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                  progress: bool = True) -> Gemma3Base:
    """The model in a Hugging Face Gemma 3 folder, in eval mode, every tensor cast to `dtype` on `device`.

    Returns Gemma3ForCausalLM for `gemma3_text` checkpoints, Gemma3ForConditionalGeneration for
    `gemma3` ones. Example: `load_hf_model("gemma-3-1b-it", dtype=torch.bfloat16)`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    cfg = read_config(folder)
    model = build_on_meta(cfg)
    plan = loading_plan(model, checkpoint_tensors(folder))
    for path, names in tqdm(sorted(plan.items()), desc=f"loading {cfg.name}", unit="shard", disable=not progress):
        # pread, not mmap: a memory map keeps every page read so far resident until the shard is closed,
        # which would double the peak memory of a single-file checkpoint.
        with safe_open(str(path), framework="pt", backend="pread") as f:
            for ours, theirs in names:
                _place(model, ours, f.get_tensor(theirs).to(device=device, dtype=dtype))
    model.tie_weights()  # the head reads the embedding table again
    return model.eval()


def load_tokenizer(folder: str | Path) -> Gemma3Tokenizer:
    """The folder's tokenizer.model when present, else the bundled Gemma 3 tokenizer (the same vocabulary)."""
    path = Path(folder) / "tokenizer.model"
    return Gemma3Tokenizer(path) if path.is_file() else Gemma3Tokenizer.from_pretrained()
