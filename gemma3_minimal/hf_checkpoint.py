"""Official Gemma 3 checkpoints in Hugging Face format, loaded from a folder on disk.

    folder/config.json                     -> Gemma3Config (with a VisionConfig for model type "gemma3")
    folder/model.safetensors               -> the weights in one file,
    folder/model.safetensors.index.json    -> or in shards: tensor name -> shard file
    folder/tokenizer.model                 -> the SentencePiece tokenizer (optional)

The model is built on the meta device, then materialized one tensor at a time, each read on its
own from its shard and cast to the requested dtype as it is placed: loading needs little more
memory than the loaded model. Before the first byte is read: every shard named by the index must
lie inside the folder, every tensor must be F32, F16 or BF16 with exactly the bytes its shape needs,
the layer counts must match the config's (checked before the model is built), and every name and
shape must fit the model. Bad values or malformed JSON raise ValueError naming the file and key.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
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
# The floating dtypes a shard may hold (safetensors names -> bytes per element); others are refused,
# not cast: an integer, boolean or float8 tensor is not a Gemma 3 weight.
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
# A parameter inside a stack of layers: "<stack>.layers.<i>.<rest>" (text decoder, vision encoder).
_LAYER_INDEX = re.compile(r"(?P<stack>.+\.layers)\.(?P<i>\d+)\.")


def read_json(path: Path) -> dict:
    """A JSON file holding an object, as a dict, with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: a Hugging Face checkpoint folder needs it")
    try:
        d = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a JSON {type(d).__name__}, not an object of settings")
    return d


def _section(d: dict, key: str, where: str) -> dict:
    """`d[key]` as a dict ({} when absent or null), or a clear error."""
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {key} must be an object, got {value!r}")
    return value


def _number(d: dict, key: str, default: float, where: str) -> float:
    """`d[key]` as a float (`default` when absent); strings, nulls and booleans are refused."""
    value = d.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def _config(cls, where: str, **fields):
    """`cls(**fields)` with the config's own checks reported against the file."""
    try:
        return cls(**fields)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


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
        if not isinstance(params, dict) or set(params) != {LOCAL, GLOBAL}:
            raise ValueError(f"{where}: rope_parameters must have entries {LOCAL!r} and {GLOBAL!r}, got {params!r}")
        local_where, full_where = f"{where} rope_parameters.{LOCAL}", f"{where} rope_parameters.{GLOBAL}"
        local = _section(params, LOCAL, f"{where} rope_parameters")
        full = _section(params, GLOBAL, f"{where} rope_parameters")
        local_theta = _number(local, "rope_theta", 10_000.0, local_where)
        full_theta = _number(full, "rope_theta", 1_000_000.0, full_where)
    else:
        local = {}
        full, full_where = _section(text, "rope_scaling", where), f"{where} rope_scaling"
        local_theta = _number(text, "rope_local_base_freq", 10_000.0, where)
        full_theta = _number(text, "rope_theta", 1_000_000.0, where)
    kinds = {name: p.get("rope_type", p.get("type", "default")) for name, p in ((LOCAL, local), (GLOBAL, full))}
    if kinds[LOCAL] != "default" or kinds[GLOBAL] not in ("default", "linear"):
        raise ValueError(f"{where}: RoPE types {kinds}; Gemma 3 uses plain RoPE locally and plain or linear globally")
    if kinds[GLOBAL] == "linear" and "factor" not in full:
        raise ValueError(f"{full_where} has rope_type 'linear' but no factor (e.g. 8.0 on 128K models)")
    return dict(
        rope_local_base_freq=local_theta,
        rope_theta=full_theta,
        rope_scaling_factor=_number(full, "factor", 1.0, full_where) if kinds[GLOBAL] == "linear" else 1.0,
    )


def _sliding_window_pattern(text: dict, num_layers: int) -> int:
    """Every how many layers one is global: read off `layer_types` when given, else the config's number."""
    types = text.get("layer_types")
    if types is None:
        return text.get("sliding_window_pattern", text.get("_sliding_window_pattern", 6))
    if GLOBAL in types:
        return types.index(GLOBAL) + 1
    return num_layers + 1 if isinstance(num_layers, int) else num_layers  # a bad count: Gemma3Config says so


def _check_layer_types(types, where: str) -> None:
    if not isinstance(types, list) or any(t not in (LOCAL, GLOBAL) for t in types):
        raise ValueError(f"{where}: layer_types must be a list of {LOCAL!r} and {GLOBAL!r}, got {types!r}")


def text_config_from_hf(text: dict, where: str = "config.json", **extra) -> Gemma3Config:
    """A `gemma3_text` config dict (or a multimodal config's `text_config`) -> our Gemma3Config.

    Example: `text_config_from_hf({"hidden_size": 640, ...})` -> Gemma3Config(hidden_size=640, ...).
    """
    if not isinstance(text, dict):
        raise ValueError(f"{where}: the text settings must be an object, got {text!r}")
    _check_fixed(text, _TEXT_FIXED, where)
    if text.get("sliding_window", 1) is None:
        raise ValueError(f"{where}: sliding_window is null, but every Gemma 3 has local layers")
    fields = {k: text.get(k, default) for k, default in _TEXT_DEFAULTS.items()}
    if isinstance(fields["eos_token_id"], list):  # instruction-tuned configs list <eos> and <end_of_turn>
        if not fields["eos_token_id"]:
            raise ValueError(f"{where}: eos_token_id is an empty list; it must be a token id or a list of them")
        fields["eos_token_id"] = fields["eos_token_id"][0]
    types = text.get("layer_types")
    if types is not None:
        _check_layer_types(types, where)
    cfg = _config(
        Gemma3Config, where, **fields, **_rope(text, where), **extra,
        sliding_window_pattern=_sliding_window_pattern(text, fields["num_hidden_layers"]),
    )
    if types is not None and list(types) != cfg.layer_types:
        raise ValueError(
            f"{where}: layer_types {types} is not one global layer every N layers ending each group of N "
            "(Gemma 3's 5 local : 1 global); this library supports only that pattern"
        )
    return cfg


def vision_config_from_hf(vision: dict, mm_tokens_per_image: int, where: str = "config.json") -> VisionConfig:
    """A multimodal config's `vision_config` (SigLIP) -> our VisionConfig."""
    if not isinstance(vision, dict):
        raise ValueError(f"{where}: vision_config must be an object, got {vision!r}")
    _check_fixed(vision, _VISION_FIXED, f"{where} (vision_config)")
    fields = {k: vision.get(k, default) for k, default in _VISION_DEFAULTS.items()}
    return _config(VisionConfig, f"{where} (vision_config)", **fields, mm_tokens_per_image=mm_tokens_per_image)


def config_from_hf(d: dict, name: str = "custom", where: str = "config.json") -> Gemma3Config:
    """A Hugging Face Gemma 3 config.json (text-only or multimodal) as our Gemma3Config.

    Multimodal configs keep their vocabulary as stored (262,208 rows in converted checkpoints) and
    their image token id; the vision tower becomes `cfg.vision`.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{where} holds a JSON {type(d).__name__}, not an object of settings")
    kind = d.get("model_type")
    if kind == TEXT_TYPE:
        return text_config_from_hf(d, where, name=name)
    if kind == MULTIMODAL_TYPE:
        _check_fixed(d, _MULTIMODAL_FIXED, where)
        vision = vision_config_from_hf(_section(d, "vision_config", where), d.get("mm_tokens_per_image", 256), where)
        image_token_id = d.get("image_token_index", d.get("image_token_id", 262_144))
        return text_config_from_hf(_section(d, "text_config", where), f"{where} (text_config)",
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
        _check_header_entry(path, name, info)
        end = 8 + n + info["data_offsets"][1]
        if end > size:
            raise ValueError(
                f"shard {path} is truncated: tensor {name} ends at byte {end:,} but the file has {size:,} bytes; "
                "download it again"
            )
    return header


def _check_header_entry(path: Path, name: str, info) -> None:
    """A tensor's entry: a floating dtype we load, a shape, and offsets spanning exactly its bytes."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise ValueError(f"shard {path}: the header entry of tensor {name} needs dtype, shape and data_offsets, got {info!r}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
        raise ValueError(
            f"shard {path}: tensor {name} has dtype {dtype!r}; Gemma 3 weights are floating point, "
            f"one of {', '.join(_DTYPE_BYTES)}"
        )
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"shard {path}: tensor {name} has shape {shape!r}, not a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"shard {path}: tensor {name} has data_offsets {offsets!r}, not [begin, end]")
    nbytes = _DTYPE_BYTES[dtype] * math.prod(shape)
    if offsets[1] - offsets[0] != nbytes:
        raise ValueError(
            f"shard {path}: tensor {name} spans {offsets[1] - offsets[0]:,} bytes, but {dtype} {shape} takes {nbytes:,}: "
            "the header does not describe the data"
        )


def _inside(folder: Path, file, where: str) -> Path:
    """`folder / file`, refusing names that lead out of the folder (`..`, absolute paths, symlinks).

    A symlink into the Hugging Face cache's `blobs` folder (`snapshots/<rev>/x -> ../../blobs/<hash>`)
    is the one way out that is allowed: hub downloads are laid out that way.
    """
    if not isinstance(file, str) or not file:
        raise ValueError(f"{where}: the shard file must be a file name, got {file!r}")
    relative = Path(file)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{where}: shard file {file!r} is outside the checkpoint folder {folder}; refused")
    root = folder.resolve()
    resolved = (root / relative).resolve()
    blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    if not (resolved.is_relative_to(root) or (blobs is not None and resolved.parent == blobs)):
        raise ValueError(
            f"{where}: shard file {file!r} resolves to {resolved}, outside the checkpoint folder {root}; refused"
        )
    return folder / relative


def checkpoint_tensors(folder: Path) -> dict[str, tuple[Path, list[int]]]:
    """Every stored tensor: name -> (its safetensors file, its shape); sharded or single-file."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no weight_map (tensor name -> shard file)")
        by_file = defaultdict(list)
        for name, file in weight_map.items():
            by_file[_inside(folder, file, f"{index}: weight_map[{name!r}]")].append(name)
    elif (folder / SINGLE_FILE).is_file():
        by_file = {_inside(folder, SINGLE_FILE, str(folder)): None}
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


def check_layer_counts(cfg: Gemma3Config, tensors: dict, where: str) -> None:
    """Raise unless the checkpoint's text (and vision) layers are numbered 0..n-1 as the config says.

    Cheap: it reads names only, so a config with a wrong or absurd layer count fails before the
    model is built.
    """
    multimodal = cfg.vision is not None
    text = "model.language_model.layers" if multimodal else "model.layers"
    stacks = {text: ("num_hidden_layers", cfg.num_hidden_layers)}
    if multimodal:
        stacks["model.vision_tower.encoder.layers"] = ("vision_config.num_hidden_layers", cfg.vision.num_hidden_layers)
    found = defaultdict(set)
    for theirs in tensors:
        m = _LAYER_INDEX.match(checkpoint_name_to_ours(theirs, multimodal))
        if m and m["stack"] in stacks:
            found[m["stack"]].add(int(m["i"]))
    for stack, (field_name, n) in stacks.items():
        if found[stack] != set(range(n)):
            have = sorted(found[stack])
            span = f"{len(have)} layers numbered {have[0]}..{have[-1]}" if have else "no layers"
            raise ValueError(f"{where} says {field_name} = {n}, but the checkpoint has {span} ({stack}.N.*)")


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
    tensors = checkpoint_tensors(folder)
    check_layer_counts(cfg, tensors, str(folder / "config.json"))  # before building: a wrong count fails fast
    model = build_on_meta(cfg)
    plan = loading_plan(model, tensors)
    for path, names in tqdm(sorted(plan.items()), desc=f"loading {cfg.name}", unit="shard", disable=not progress):
        # pread, not mmap: a memory map keeps every page read so far resident until the shard is closed,
        # which would double the peak memory of a single-file checkpoint.
        try:
            with safe_open(str(path), framework="pt", backend="pread") as f:
                for ours, theirs in names:
                    _place(model, ours, f.get_tensor(theirs).to(device=device, dtype=dtype))
        except SafetensorError as e:  # e.g. tensors overlapping or leaving gaps in the data
            raise ValueError(f"shard {path} could not be read ({e}); download it again") from e
    model.tie_weights()  # the head reads the embedding table again
    return model.eval()


def load_tokenizer(folder: str | Path) -> Gemma3Tokenizer:
    """The folder's tokenizer.model when present, else the bundled Gemma 3 tokenizer (the same vocabulary)."""
    path = Path(folder) / "tokenizer.model"
    return Gemma3Tokenizer(path) if path.is_file() else Gemma3Tokenizer.from_pretrained()
