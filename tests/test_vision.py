"""SigLIP tower and multimodal projector against transformers, weights copied by name."""

import pytest
import torch
from transformers import Gemma3Config as HFGemma3Config
from transformers import SiglipVisionConfig, SiglipVisionModel as HFSiglipVisionModel
from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector as HFProjector

from gemma3_minimal.config import TINY_VISION, VisionConfig
from gemma3_minimal.vision import Gemma3MultiModalProjector, SiglipVisionModel, pool_patches


def hf_vision_config(cfg: VisionConfig) -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.num_channels,
        layer_norm_eps=cfg.layer_norm_eps, hidden_act="gelu_pytorch_tanh", vision_use_head=False,
    )


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (norm weights and biases too, so a misplaced `1 +` or bias shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_tower_matches_transformers(attn: str) -> None:
    ours = SiglipVisionModel(TINY_VISION).eval()
    randomize(ours, seed=0)
    theirs = HFSiglipVisionModel(hf_vision_config(TINY_VISION)).eval()
    theirs.config._attn_implementation = attn
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=True)
    assert not missing and not unexpected
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mine = ours(pixels)
        ref = theirs(pixel_values=pixels).last_hidden_state
    assert mine.shape == (2, TINY_VISION.num_patches, TINY_VISION.hidden_size)
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-5)


def test_state_dict_names_match_transformers() -> None:
    ours = SiglipVisionModel(TINY_VISION).state_dict()
    theirs = HFSiglipVisionModel(hf_vision_config(TINY_VISION)).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_projector_matches_transformers() -> None:
    text_hidden = 48
    ours = Gemma3MultiModalProjector(TINY_VISION, text_hidden)
    randomize(ours, seed=2)
    hf_cfg = HFGemma3Config(
        text_config=dict(hidden_size=text_hidden), vision_config=hf_vision_config(TINY_VISION).to_dict(),
        mm_tokens_per_image=TINY_VISION.mm_tokens_per_image,
    )
    theirs = HFProjector(hf_cfg)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    feats = torch.randn(3, TINY_VISION.num_patches, TINY_VISION.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mine, ref = ours(feats), theirs(feats)
    assert mine.shape == (3, TINY_VISION.mm_tokens_per_image, text_hidden)
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-5)


def test_pooling_averages_each_4x4_block() -> None:
    # A 16x16 grid whose value is the cell's row index: pooling 4x4 gives row-block means 1.5, 5.5, ...
    side, width = 16, 2
    rows = torch.arange(side).float().repeat_interleave(side)  # [256], row-major
    feats = rows[None, :, None].expand(1, side * side, width)
    pooled = pool_patches(feats, tokens_per_image=16)  # [1, 16, 2]
    expected = torch.tensor([1.5, 5.5, 9.5, 13.5]).repeat_interleave(4)
    torch.testing.assert_close(pooled[0, :, 0], expected)


def test_full_size_parameter_count() -> None:
    # DESIGN: the SigLIP tower has 416,866,032 parameters; with the 4B projector 419,816,304.
    with torch.device("meta"):
        tower = SiglipVisionModel(VisionConfig())
        projector = Gemma3MultiModalProjector(VisionConfig(), text_hidden_size=2560)
    n_tower = sum(p.numel() for p in tower.parameters())
    assert n_tower == 416_866_032
    assert n_tower + sum(p.numel() for p in projector.parameters()) == 419_816_304


def test_wrong_pixel_shape_is_refused() -> None:
    tower = SiglipVisionModel(TINY_VISION)
    with pytest.raises(ValueError, match=r"expected pixel_values \[batch, 3, 64, 64\]"):
        tower(torch.zeros(1, 3, 32, 32))
