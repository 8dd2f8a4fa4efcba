"""The 270M's weights from its GGUF: tensor names mapped to ours, dequantized to float32, cached.

`gguf` dequantizes every tensor (Q4_K, Q5_0, Q6_K, Q8_0 blocks; norms are F32). llama.cpp's
converter stores each RMSNorm scale as `1 + w`, so we load `w = stored - 1`. The float32 state
dict is cached as safetensors beside the GGUF, keyed by the GGUF's sha256 and verified on every
load by a sha256 of its tensors recorded when it was written.

`gguf_int8_tensors` reads the same blocks without dequantizing them: every matrix's integers as
int8 with its block scales (and, for Q4_K, mins), so `load_pretrained("270m", quantize="gguf-int8")`
holds exactly the float32 model's weights in about a third of its bytes (see `quantize.py`).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import Q4_K, dequantize, quant_shape_to_byte_shape
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .assets import cache_dir, expected_sha256, gguf_path, verify_gguf, write_atomically
from .config import Gemma3Config, get_config
from .quantize import QuantizedTensor

_SOURCE_KEY, _CONTENT_KEY = "gguf_sha256", "content_sha256"  # the cache's safetensors metadata
_HASH_BLOCK = 1 << 26

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
    return _read_gguf(verify_gguf(path))


def _read_gguf(path: Path):
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises assorted errors on damaged files
        raise ValueError(f"GGUF file {path} could not be read ({e}); delete it and assemble it again") from e


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file: its name, block format, shape [rows, cols] and stored bytes (memory-mapped;
    [rows, bytes per row] for block formats, as `gguf.quants.dequantize` takes them)."""

    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int
    data: np.ndarray


_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes
_STRING, _ARRAY = 8, 9
_PLAIN = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}  # not in blocks


def read_tensors(path: str | Path) -> list[GGUFTensor]:
    """The tensors of a GGUF file, skipping its metadata values.

    The layout (GGUF v3): magic "GGUF", version, tensor count, key-value count; the key-values; per tensor
    its name, dims (innermost first), block format and offset; then the tensor bytes, each aligned to
    `general.alignment` (32). `gguf.GGUFReader` reads the same file but parses every metadata value on the
    way, the 262,144 vocabulary strings included (about 20 s of CPU); this steps over them.
    """
    try:
        return _read_tensors(np.memmap(path, dtype=np.uint8, mode="r"))
    except (struct.error, UnicodeDecodeError, ValueError, KeyError) as e:  # a damaged or foreign file
        raise ValueError(f"{path} is not a readable GGUF file ({e}); delete it and call gguf_path() again") from e


def _read_tensors(raw: np.ndarray) -> list[GGUFTensor]:
    buf, off = memoryview(raw), 0

    def take(fmt: str):
        nonlocal off
        values = struct.unpack_from(fmt, buf, off)
        off += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string() -> str:
        nonlocal off
        n = take("<Q")
        off += n
        return bytes(buf[off - n:off]).decode("utf-8")

    def skip(value_type: int) -> None:
        nonlocal off
        if value_type == _STRING:
            n = take("<Q")  # the length, then as many bytes
            off += n
        elif value_type == _ARRAY:
            item_type, count = take("<IQ")
            if item_type in _SCALAR_BYTES:
                off += count * _SCALAR_BYTES[item_type]
            else:
                for _ in range(count):
                    skip(item_type)
        else:
            off += _SCALAR_BYTES[value_type]

    magic, version, n_tensors, n_kv = take("<4sIQQ")
    if magic != b"GGUF" or version < 2:
        raise ValueError(f"magic {magic!r}, version {version}: not GGUF v2 or later")
    alignment = 32
    for _ in range(n_kv):
        key, value_type = string(), take("<I")
        if key == "general.alignment":
            alignment = take("<I")
        else:
            skip(value_type)
    infos = []
    for _ in range(n_tensors):
        name, n_dims = string(), take("<I")
        dims = struct.unpack_from(f"<{n_dims}Q", buf, off)
        off += 8 * n_dims
        infos.append((name, dims, *take("<IQ")))
    start = -(-off // alignment) * alignment
    tensors = []
    for name, dims, type_id, offset in infos:
        kind = GGMLQuantizationType(type_id)
        shape = tuple(reversed(dims))
        n = math.prod(dims)
        block, block_bytes = GGML_QUANT_SIZES[kind]
        n_bytes = n * block_bytes // block
        if start + offset + n_bytes > len(raw):
            raise ValueError(f"tensor {name} ends past the end of the file")
        data = raw[start + offset:start + offset + n_bytes]
        if kind in _PLAIN:
            data = data.view(_PLAIN[kind]).reshape(shape)
        else:
            data = data.reshape(quant_shape_to_byte_shape(shape, kind))
        tensors.append(GGUFTensor(name, kind, shape, n, n_bytes, data))
    return tensors


def check_gguf_config(reader, cfg) -> None:
    """Raise unless the file's architecture numbers equal the config's."""
    for key, field_name in _METADATA.items():
        value = reader.fields[key].contents()
        if value != getattr(cfg, field_name):
            raise ValueError(f"GGUF says {key} = {value}, but config {cfg.name} has {field_name} = {getattr(cfg, field_name)}")


def dequantize_gguf(tensors: list[GGUFTensor]) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32 under our names; RMSNorm scales stored as 1 + w become w."""
    state = {}
    for t in tensors:
        name = gguf_name_to_ours(t.name)
        array = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)  # [out, in]; a copy, not the file
        if name.endswith("norm.weight"):
            array = array - 1.0  # llama.cpp's converter stored 1 + w
        state[name] = torch.from_numpy(np.ascontiguousarray(array))
    return state


def expected_names(cfg: Gemma3Config) -> set[str]:
    """Every tensor name the GGUF gives for `cfg`: the embedding, the final norm and 13 per layer."""
    layers = {f"model.layers.{i}.{name}" for i in range(cfg.num_hidden_layers) for name in _LAYER_NAMES.values()}
    return set(_TOP_NAMES.values()) | layers


def content_sha256(state: dict[str, torch.Tensor]) -> str:
    """A sha256 of the tensors themselves: every name, dtype, shape and byte, in name order.

    Blocks of 64 MiB are hashed on their own, in parallel (hashlib releases the GIL), and the
    digest covers the list of (name, dtype, shape, block digests): the same tensors give the same
    digest whatever file layout they were read from.
    """
    blocks, lines = [], []
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        data = memoryview(t.reshape(-1).view(torch.uint8).numpy())
        start = len(blocks)
        blocks += [data[i:i + _HASH_BLOCK] for i in range(0, len(data), _HASH_BLOCK)]
        lines.append((name, str(t.dtype), tuple(t.shape), start, len(blocks)))
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda b: hashlib.sha256(b).hexdigest(), blocks))
    h = hashlib.sha256()
    for name, dtype, shape, start, stop in lines:
        h.update(f"{name} {dtype} {list(shape)} {' '.join(digests[start:stop])}\n".encode())
    return h.hexdigest()


def write_f32_cache(path: Path, state: dict[str, torch.Tensor], source_sha256: str) -> None:
    """Save `state` as safetensors at `path` (atomically), recording the GGUF's sha256 and the content's."""
    metadata = {_SOURCE_KEY: source_sha256, _CONTENT_KEY: content_sha256(state)}
    write_atomically(path, lambda partial: save_file(state, str(partial), metadata=metadata))


def read_f32_cache(path: Path, source_sha256: str, names: set[str]) -> tuple[dict | None, str | None]:
    """The cached state dict if it is exactly what was written from the GGUF with sha256 `source_sha256`.

    Returns (state, None) when verified, (None, None) when there is no cache, and (None, why) when
    the file is damaged, edited, incomplete or from another source: it must be rebuilt.
    """
    if not path.exists():
        return None, None
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        if metadata.get(_SOURCE_KEY) != source_sha256:
            return None, f"float32 cache {path} was not built from this GGUF"
        if _CONTENT_KEY not in metadata:
            return None, f"float32 cache {path} has no content checksum (an older version wrote it)"
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        return None, f"float32 cache {path} is unreadable ({e})"
    missing, unexpected = sorted(names - set(state)), sorted(set(state) - names)
    if missing or unexpected:
        wrong = [f"lacks tensors {missing[:5]}"] * bool(missing) + [f"has unexpected tensors {unexpected[:5]}"] * bool(unexpected)
        return None, f"float32 cache {path} {' and '.join(wrong)}"
    if content_sha256(state) != metadata[_CONTENT_KEY]:
        return None, f"float32 cache {path} does not match the checksum recorded when it was written (damaged or edited)"
    return state, None


def load_gguf_state_dict(path: str | Path | None = None, cfg=None) -> dict[str, torch.Tensor]:
    """The 270M's float32 state dict, dequantized once and kept in the cache as safetensors.

    The cached file records the GGUF's sha256 and a sha256 of its tensors (`content_sha256`),
    checked on every load: a missing cache is built, a damaged, edited or incomplete one is rebuilt
    from the verified GGUF with a warning that names it.
    """
    cfg = cfg or get_config("270m")
    if path is not None:
        verify_gguf(path)
    source = expected_sha256()
    cached = cache_dir() / f"gemma-3-270m-{source[:16]}-f32.safetensors"
    state, problem = read_f32_cache(cached, source, expected_names(cfg))
    if state is not None:
        return state
    if problem is not None:
        warnings.warn(f"{problem}; rebuilding it from the verified GGUF", stacklevel=2)
    state = state_from_gguf(gguf_path() if path is None else Path(path), cfg)
    write_f32_cache(cached, state, source)
    return state


def state_from_gguf(path: Path, cfg: Gemma3Config) -> dict[str, torch.Tensor]:
    """Read a verified GGUF, check its numbers against `cfg` and dequantize it (about a minute)."""
    check_gguf_config(_read_gguf(path), cfg)
    return dequantize_gguf(read_tensors(path))


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


# --- the GGUF's integers as int8, without re-rounding --------------------------------------------
#
# Block layouts (ggml's block_q8_0, block_q5_0, block_q4_K, block_q6_K; float16 scales, little-endian),
# as byte offsets inside one block. The integers themselves are unpacked by gguf's own dequantization
# run on a copy of the blocks whose scales are set to 1 and mins to 0: what it returns then is q.
_F16_ONE = np.frombuffer(np.float16(1.0).tobytes(), dtype=np.uint8)
_Q4_K_UNIT_SCALES = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=np.uint8)  # sc_j = 1, m_j = 0 (j = 0..7)


def _f16(blocks: np.ndarray, at: int) -> torch.Tensor:
    """The float16 at byte `at` of every block [rows, n_blocks, bytes] -> float16 [rows, n_blocks]."""
    return torch.from_numpy(np.ascontiguousarray(blocks[..., at:at + 2]).view(np.float16)[..., 0])


def _unit_integers(t: GGUFTensor, unit: np.ndarray) -> torch.Tensor:
    """int8 [rows, cols]: gguf's dequantization of blocks whose scales are 1 and mins 0."""
    q = dequantize(unit.reshape(t.data.shape), t.tensor_type)
    return torch.from_numpy(q.astype(np.int8))


def _int8_q8_0(t: GGUFTensor, blocks: np.ndarray) -> QuantizedTensor:
    """Q8_0 (34 bytes: float16 d, 32 int8): w = d * q, int8 groups of 32 with scale d (float16)."""
    q = torch.from_numpy(np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(t.shape))
    return QuantizedTensor(q, _f16(blocks, 0), 8, 32)


def _int8_q5_0(t: GGUFTensor, blocks: np.ndarray) -> QuantizedTensor:
    """Q5_0 (22 bytes: float16 d, 4 bytes of high bits, 16 of low nibbles): w = d * n, n in -16..15,
    int8 groups of 32 with scale d (float16)."""
    unit = blocks.copy()
    unit[..., 0:2] = _F16_ONE
    return QuantizedTensor(_unit_integers(t, unit), _f16(blocks, 0), 8, 32)


def _int8_q6_k(t: GGUFTensor, blocks: np.ndarray) -> QuantizedTensor:
    """Q6_K (210 bytes: 128 low nibbles, 64 of high bit pairs, 16 int8 sub-block scales sc_j, float16 d):
    w = d * sc_j * q, q in -32..31, int8 groups of 16 with scale d * sc_j (float32, an exact product)."""
    sc = torch.from_numpy(np.ascontiguousarray(blocks[..., 192:208]).view(np.int8))  # [rows, n_blocks, 16]
    scale = _f16(blocks, 208).float()[..., None] * sc.float()
    unit = blocks.copy()
    unit[..., 192:208] = 1
    unit[..., 208:210] = _F16_ONE
    return QuantizedTensor(_unit_integers(t, unit), scale.reshape(t.shape[0], -1), 8, 16)


def _int8_q4_k(t: GGUFTensor, blocks: np.ndarray) -> QuantizedTensor:
    """Q4_K (144 bytes: float16 d and dmin, 12 bytes of 6-bit sc_j and m_j, 128 of nibbles): w = d * sc_j * q
    - dmin * m_j, q in 0..15, int8 groups of 32 with scale d * sc_j and min -dmin * m_j (float32, exact
    products; the sum is rounded to float32 as gguf rounds it)."""
    rows, n_blocks, _ = blocks.shape
    sc, m = Q4_K.get_scale_min(np.ascontiguousarray(blocks[..., 4:16]).reshape(-1, 12))  # [rows * n_blocks, 8]
    sc = torch.from_numpy(sc.astype(np.float32)).view(rows, n_blocks, 8)
    m = torch.from_numpy(m.astype(np.float32)).view(rows, n_blocks, 8)
    scale = _f16(blocks, 0).float()[..., None] * sc
    minimum = -(_f16(blocks, 2).float()[..., None] * m)
    unit = blocks.copy()
    unit[..., 0:2] = _F16_ONE
    unit[..., 2:4] = 0
    unit[..., 4:16] = _Q4_K_UNIT_SCALES
    return QuantizedTensor(_unit_integers(t, unit), scale.reshape(rows, -1), 8, 32, minimum.reshape(rows, -1))


_INT8_FORMS = {
    GGMLQuantizationType.Q8_0: _int8_q8_0,
    GGMLQuantizationType.Q5_0: _int8_q5_0,
    GGMLQuantizationType.Q6_K: _int8_q6_k,
    GGMLQuantizationType.Q4_K: _int8_q4_k,
}


def int8_tensor(t: GGUFTensor) -> QuantizedTensor:
    """One GGUF matrix as int8 groups holding its own integers: `dequantize()` of the result equals
    gguf's dequantization of the tensor bit for bit. A block type without such a form is an error."""
    if t.tensor_type not in _INT8_FORMS or len(t.shape) != 2:
        raise ValueError(
            f"tensor {t.name} is stored as {t.tensor_type.name} {list(t.shape)}: it has no lossless int8 form "
            f"here (handled: 2-D {', '.join(k.name for k in _INT8_FORMS)}); load this file as float32 "
            "(quantize=None) or round it with quantize='int8'"
        )
    block, block_bytes = GGML_QUANT_SIZES[t.tensor_type]
    blocks = np.asarray(t.data).reshape(t.shape[0], t.shape[1] // block, block_bytes)
    return _INT8_FORMS[t.tensor_type](t, blocks)


def gguf_int8_tensors(tensors: list[GGUFTensor]) -> tuple[dict[str, QuantizedTensor], dict[str, torch.Tensor]]:
    """The GGUF's matrices as int8 under our module names ("lm_head" for the tied embedding/head) and its
    RMSNorm scales in float32 under our parameter names (as `dequantize_gguf` gives them)."""
    matrices, norms = {}, []
    for t in tensors:
        name = gguf_name_to_ours(t.name)
        if name.endswith("norm.weight"):
            norms.append(t)
        else:
            matrices["lm_head" if name == _TOP_NAMES["token_embd.weight"] else name.removesuffix(".weight")] = int8_tensor(t)
    return matrices, dequantize_gguf(norms)
