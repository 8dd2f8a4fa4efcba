"""Analytic parameter and KV-cache accounting against the numbers of record and against built objects."""

from __future__ import annotations

import pytest
import torch

import gemma3_minimal as g3
from gemma3_minimal.memory import checkpoint_config, inference_bytes, kv_cache_slots, parameter_breakdown, weight_bytes

# DESIGN.md: exact counts (text + vision where present); transformers built on the meta device agrees.
EXACT = {
    "270m": 268_098_176,
    "1b": 999_885_952,
    "4b": 4_299_915_632,
    "12b": 12_187_079_280,
    "27b": 27_432_062_576,
}
VISION_TOWER = 416_866_032


@pytest.mark.parametrize("name", list(EXACT))
def test_count_parameters_matches_design(name: str) -> None:
    assert g3.count_parameters(g3.get_config(name)) == EXACT[name]
    assert g3.count_parameters(name) == EXACT[name]


def hf_text_config(cfg: g3.Gemma3Config):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, sliding_window=cfg.sliding_window,
    )


@pytest.mark.parametrize("name", list(EXACT))
def test_count_parameters_matches_transformers_on_meta(name: str) -> None:
    """transformers' Gemma 3 (SigLIP + projector for the vision sizes), built without memory, counts the same."""
    transformers = pytest.importorskip("transformers")
    cfg = g3.get_config(name)
    with torch.device("meta"):
        if cfg.vision is None:
            model = transformers.Gemma3ForCausalLM(hf_text_config(cfg))
        else:
            v = cfg.vision
            vision = dict(
                hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
                num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
                vision_use_head=False,
            )
            hf_cfg = transformers.Gemma3Config(text_config=hf_text_config(cfg).to_dict(), vision_config=vision)
            model = transformers.Gemma3ForConditionalGeneration(hf_cfg)
    assert sum(p.numel() for p in model.parameters()) == g3.count_parameters(cfg)


def test_breakdown_of_4b() -> None:
    parts = parameter_breakdown("4b")
    assert parts.text == 3_880_099_328
    assert parts.vision_tower == VISION_TOWER
    assert parts.vision == 419_816_304  # tower + RMSNorm(1152) + 1152 x 2560 projection
    assert parts.embedding == 262_144 * 2560
    assert parts.embedding + parts.non_embedding + parts.vision == parts.total == EXACT["4b"]


@pytest.mark.parametrize("name", ["1b", "4b", "12b", "27b"])
def test_breakdown_rounds_to_report_table_1(name: str) -> None:
    """Table 1 of the report (millions): vision encoder and non-embedding columns match after rounding."""
    vision_m, non_embedding_m = {"1b": (0, 698), "4b": (417, 3209), "12b": (417, 10759), "27b": (417, 25600)}[name]
    parts = parameter_breakdown(name)
    assert round(parts.vision_tower / 1e6) == vision_m
    assert round(parts.non_embedding / 1e6) == non_embedding_m


def test_weight_bytes_per_format() -> None:
    n = EXACT["1b"]
    assert weight_bytes("1b", "bf16") == 2 * n
    assert weight_bytes("1b", "sfp8") == n
    assert weight_bytes("1b", "int4") == n // 2
    assert weight_bytes("1b", "int4_blocks32") == n // 2 + n // 16  # 4 bits + one 16-bit scale per 32 weights
    with pytest.raises(ValueError, match="unknown weight format"):
        weight_bytes("1b", "int3")


def test_kv_cache_bytes_by_hand() -> None:
    """270M, 8,192 tokens: layers 5, 11, 17 are global (8,192 slots), the other 15 hold 512;
    a slot stores K and V for 1 kv head x 256 dims in bfloat16: 1,024 bytes."""
    assert g3.kv_cache_bytes("270m", 8192) == (3 * 8192 + 15 * 512) * 1024
    assert g3.kv_cache_bytes("270m", 8192, sliding=False) == 18 * 8192 * 1024
    assert g3.kv_cache_bytes("270m", 100) == 18 * 100 * 1024  # below the window every layer holds the context
    assert g3.kv_cache_bytes("270m", 8192, bytes_per_value=4, batch_size=3) == 3 * 2 * (3 * 8192 + 15 * 512) * 1024
    assert g3.kv_cache_bytes("270m", 8192, sliding_window=128) == (3 * 8192 + 15 * 128) * 1024
    # 27B: 62 layers, every 6th global -> 10 global, 52 local of 1,024; 16 kv heads x 128 dims.
    assert g3.kv_cache_bytes("27b", 131_072) == (10 * 131_072 + 52 * 1024) * 2 * 16 * 128 * 2


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: g3.kv_cache_bytes("270m", 0), "context_len must be a positive int"),
        (lambda: g3.kv_cache_bytes("270m", -5), "context_len must be a positive int"),
        (lambda: g3.kv_cache_bytes("270m", 2.5), "context_len must be a positive int"),
        (lambda: g3.kv_cache_bytes("270m", 256, sliding_window=512), "larger than context_len 256"),
        (lambda: g3.kv_cache_bytes("1b", 65_536), "exceeds the context of 1b \\(32768 positions\\)"),
        (lambda: g3.kv_cache_bytes("270m", 0, sliding_window=512), "context_len must be a positive int"),
        (lambda: g3.kv_cache_bytes("270m", 1024, bytes_per_value=0), "bytes_per_value must be positive"),
        (lambda: g3.kv_cache_bytes("270m", 1024, batch_size=0), "batch_size must be a positive int"),
        (lambda: g3.kv_cache_bytes("2b", 1024), "unknown preset '2b'; choose one of tiny, 270m"),
        (lambda: g3.count_parameters("7b"), "unknown preset '7b'"),
        (lambda: kv_cache_slots("270m", 0), "context_len must be a positive int"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_non_config_is_refused() -> None:
    with pytest.raises(TypeError, match="expected a Gemma3Config or a preset name"):
        g3.count_parameters(270)


@pytest.mark.parametrize("name", list(EXACT))
def test_count_parameters_matches_our_model_on_meta(name: str) -> None:
    """Our models, built without memory: Gemma3ForCausalLM is the text part of every preset (the head
    is tied); Gemma3ForConditionalGeneration adds the vision tower and projector."""
    cfg = g3.get_config(name)
    with torch.device("meta"):
        text = g3.Gemma3ForCausalLM(cfg)
        full = g3.Gemma3ForConditionalGeneration(cfg) if cfg.vision is not None else text
    assert sum(p.numel() for p in text.parameters()) == parameter_breakdown(cfg).text
    assert sum(p.numel() for p in full.parameters()) == g3.count_parameters(cfg) == EXACT[name]


# The 270M's window is 512: below it, at it, one past it, and far past it (up to the full 32K context).
@pytest.mark.parametrize("context_len", [1, 100, 511, 512, 513, 2048, 8192, 32_768])
def test_kv_cache_bytes_equal_allocated_cache(context_len: int) -> None:
    cfg = g3.get_config("270m")
    for dtype, bytes_per_value in [(torch.bfloat16, 2), (torch.float32, 4)]:
        for sliding in (True, False):
            if not sliding and dtype == torch.float32 and context_len > 8192:
                continue  # 1.2 GB of zeros that teach nothing new
            cache = g3.KVCache(cfg, 1, context_len, dtype, "cpu", sliding=sliding)
            assert cache.nbytes == g3.kv_cache_bytes(cfg, context_len, bytes_per_value, sliding=sliding)
            del cache


def test_kv_cache_bytes_equal_allocated_cache_batched_tiny() -> None:
    cfg = g3.get_config("tiny")  # 2 kv heads x 16 dims, window 8, layers 0-4 and 6-7 local
    cache = g3.KVCache(cfg, 3, 20, torch.float32, "cpu")
    assert cache.nbytes == g3.kv_cache_bytes(cfg, 20, bytes_per_value=4, batch_size=3) == 3 * (20 + 7 * 8) * 2 * 2 * 16 * 4


# REFERENCE.md: transformers counts the official 4B/12B/27B checkpoints (262,208 embedding rows) at these.
CHECKPOINT_EXACT = {"4b": 4_300_079_472, "12b": 12_187_325_040, "27b": 27_432_406_640}


@pytest.mark.parametrize("name", list(EXACT))
def test_checkpoint_config_has_the_published_embedding_rows(name: str) -> None:
    cfg = checkpoint_config(name)
    extra_rows = cfg.vocab_size - g3.get_config(name).vocab_size
    assert extra_rows == (64 if name in CHECKPOINT_EXACT else 0)
    assert g3.count_parameters(cfg) == CHECKPOINT_EXACT.get(name, EXACT[name]) == EXACT[name] + extra_rows * cfg.hidden_size
    assert cfg.replace(vocab_size=g3.get_config(name).vocab_size) == g3.get_config(name)  # nothing else changes


def test_checkpoint_rows_are_transformers_default_and_refuse_other_configs() -> None:
    transformers = pytest.importorskip("transformers")
    assert transformers.Gemma3TextConfig().vocab_size == checkpoint_config("27b").vocab_size
    for name in ("tiny", g3.get_config("4b").replace(name="custom")):
        with pytest.raises(ValueError, match="no published checkpoint"):
            checkpoint_config(name)


def test_inference_bytes_is_weights_plus_cache() -> None:
    cfg = checkpoint_config("27b")
    assert inference_bytes(cfg, 131_072) == weight_bytes(cfg, "bf16") + g3.kv_cache_bytes(cfg, 131_072)
    assert inference_bytes(cfg, 131_072, "int4", kv_bytes_per_value=1, sliding=False, batch_size=2) == (
        weight_bytes(cfg, "int4") + 2 * 62 * 131_072 * 2 * 16 * 128)  # every layer full, 1 byte per value
    with pytest.raises(ValueError, match="unknown weight format"):
        inference_bytes(cfg, 1024, "fp4")
