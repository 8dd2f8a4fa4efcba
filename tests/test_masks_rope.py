"""Our masks and rotary tables against transformers' Gemma 3 (the reference implementation)."""

from __future__ import annotations

import pytest
import torch

from gemma3_minimal import GLOBAL, LOCAL, apply_rope, attention_mask, image_groups, rope_cos_sin, rope_inv_freq

transformers = pytest.importorskip("transformers")
from transformers import Gemma3TextConfig  # noqa: E402
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask  # noqa: E402
from transformers.models.gemma3.modeling_gemma3 import (  # noqa: E402
    Gemma3RotaryEmbedding,
    apply_rotary_pos_emb,
    create_masks_for_vision_model,
    get_block_sequence_ids_for_mask,
)

SEQ_LENS = [1, 2, 5, 8, 13, 31, 64]
WINDOWS = [1, 2, 3, 4, 8, 16, 40]  # below, at and past the sequence lengths


def hf_text_config(sliding_window: int, **kw) -> Gemma3TextConfig:
    """A small Gemma3TextConfig whose masks come out as tensors (eager attention always materializes them)."""
    cfg = Gemma3TextConfig(
        vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, sliding_window=sliding_window, **kw,
    )
    cfg._attn_implementation = "eager"
    return cfg


def allowed(float_mask: torch.Tensor) -> torch.Tensor:
    """transformers' eager masks are additive (0 where allowed, dtype min elsewhere): -> bool [B, Tq, Tk]."""
    return (float_mask == 0)[:, 0]


def hf_masks(seq_len: int, window: int, token_type_ids: torch.Tensor | None, batch: int = 1) -> dict[str, torch.Tensor]:
    """Full and sliding masks as transformers' Gemma 3 builds them for a prefill of `seq_len` tokens."""
    cfg = hf_text_config(window)
    kwargs = dict(
        config=cfg, inputs_embeds=torch.zeros(batch, seq_len, 8), attention_mask=None, cache=None,
        position_ids=torch.arange(seq_len).expand(batch, seq_len),
    )
    if token_type_ids is None:
        masks = {GLOBAL: create_causal_mask(**kwargs), LOCAL: create_sliding_window_causal_mask(**kwargs)}
    else:  # the path Gemma3Model.forward takes when token_type_ids marks image tokens
        masks = create_masks_for_vision_model(**kwargs, block_sequence_ids=get_block_sequence_ids_for_mask(token_type_ids))
    return {k: allowed(v) for k, v in masks.items()}


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_text_masks_equal_transformers(seq_len: int, window: int) -> None:
    ref = hf_masks(seq_len, window, None)
    pos = torch.arange(seq_len)
    assert torch.equal(attention_mask(pos, pos)[None], ref[GLOBAL])
    assert torch.equal(attention_mask(pos, pos, sliding_window=window)[None], ref[LOCAL])


def random_image_layout(seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """[seq] 0/1 token types: text with 1-3 runs of image tokens of random lengths (some adjacent)."""
    types = torch.zeros(seq_len, dtype=torch.long)
    for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
        start = int(torch.randint(0, seq_len, (1,), generator=generator))
        length = int(torch.randint(1, max(2, seq_len // 2), (1,), generator=generator))
        types[start : start + length] = 1
    return types


@pytest.mark.parametrize("window", [1, 2, 4, 7, 16])
@pytest.mark.parametrize("seq_len", [3, 8, 12, 24, 40])
def test_image_masks_equal_transformers(seq_len: int, window: int) -> None:
    """Bidirectional among one image's tokens: global OR(causal, same image); local AND(window, that)."""
    g = torch.Generator().manual_seed(seq_len * 100 + window)
    token_type_ids = torch.stack([random_image_layout(seq_len, g) for _ in range(2)])  # [2, seq]
    ref = hf_masks(seq_len, window, token_type_ids, batch=2)
    pos = torch.arange(seq_len).expand(2, seq_len)
    groups = image_groups(token_type_ids == 1)
    assert torch.equal(attention_mask(pos, pos, None, groups, groups), ref[GLOBAL])
    assert torch.equal(attention_mask(pos, pos, window, groups, groups), ref[LOCAL])


def test_two_images_see_only_themselves_ahead() -> None:
    """Two images split by one text token: an image token sees its own image's later tokens, not the next image's."""
    types = torch.tensor([[0, 1, 1, 1, 0, 1, 1, 0]])
    assert image_groups(types == 1).tolist() == get_block_sequence_ids_for_mask(types).tolist() == [[-1, 0, 0, 0, -1, 1, 1, -1]]
    ref = hf_masks(8, 3, types)
    pos = torch.arange(8)[None]
    groups = image_groups(types == 1)
    assert torch.equal(attention_mask(pos, pos, 3, groups, groups), ref[LOCAL])
    assert bool(ref[GLOBAL][0, 1, 3]) and not bool(ref[GLOBAL][0, 1, 5])  # sees its own image's future, not the next image


ROPE_CASES = {
    # name: (transformers rope_parameters entry, our base, our scaling factor)
    "local": ({"rope_type": "default", "rope_theta": 10_000.0}, 10_000.0, 1.0),
    "global": ({"rope_type": "default", "rope_theta": 1_000_000.0}, 1_000_000.0, 1.0),
    "global_x8": ({"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0}, 1_000_000.0, 8.0),
}


@pytest.mark.parametrize("head_dim", [128, 256])
@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_rope_equals_transformers(case: str, head_dim: int) -> None:
    hf_params, base, factor = ROPE_CASES[case]
    layer_type = LOCAL if case == "local" else GLOBAL
    other = {"rope_type": "default", "rope_theta": 10_000.0 if layer_type == GLOBAL else 1_000_000.0}
    cfg = Gemma3TextConfig(
        head_dim=head_dim, max_position_embeddings=131_072,
        rope_parameters={layer_type: hf_params, (GLOBAL if layer_type == LOCAL else LOCAL): other},
    )
    rotary = Gemma3RotaryEmbedding(cfg)
    g = torch.Generator().manual_seed(0)
    # Short prompts, positions around the windows, and far positions up to the 128K context.
    positions = torch.cat([torch.arange(64), torch.randint(0, 131_072, (192,), generator=g)])[None]  # [1, T]
    q = torch.randn(1, 8, positions.shape[1], head_dim, generator=g)
    k = torch.randn(1, 4, positions.shape[1], head_dim, generator=g)

    ref_cos, ref_sin = rotary(q, positions, layer_type)
    inv_freq = rope_inv_freq(head_dim, base, factor)
    torch.testing.assert_close(inv_freq, getattr(rotary, f"{layer_type}_inv_freq"), rtol=0, atol=1e-6)
    cos, sin = rope_cos_sin(positions, inv_freq)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=1e-6)

    ref_q, ref_k = apply_rotary_pos_emb(q, k, ref_cos, ref_sin)
    torch.testing.assert_close(apply_rope(q, cos[:, None], sin[:, None]), ref_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(apply_rope(k, cos[:, None], sin[:, None]), ref_k, rtol=0, atol=1e-6)
