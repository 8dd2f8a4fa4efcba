"""SigLIP vision tower and the multimodal projector that turns one image into 256 soft tokens.

Gemma 3 (4B and larger) reads an 896x896 image with a SigLIP So400m ViT: 14x14 patches give a
64x64 grid of 4096 vectors of width 1152. The projector average-pools the grid 4x4 down to
16x16 = 256 vectors, RMS-normalizes them and projects them to the text width. The report gives
the 400M SigLIP encoder at 896x896 (section 2.1), the 256 vectors per image (section 1) and the
4x4 average pooling of the 896 encoder's output (section 5.5, "Impact of image resolution");
the patch size, widths and the RMSNorm before the projection come from the released
implementation and checkpoints.

Module and parameter names are those of transformers' `SiglipVisionModel` and
`Gemma3MultiModalProjector`, so their state dicts copy by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig
from .layers import RMSNorm


class SiglipVisionEmbeddings(nn.Module):
    """Patchify with a stride-`patch` convolution, then add one learned vector per grid cell."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.num_patches, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: [batch, 3, image, image] -> [batch, patches, width], patches row by row."""
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # [B, width, side, side]
        x = x.flatten(2).transpose(1, 2)  # [B, side*side, width]
        return x + self.position_embedding.weight  # [B, patches, width]


class SiglipAttention(nn.Module):
    """Plain multi-head self-attention with biases; every patch sees every patch (no mask)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        d = cfg.hidden_size
        self.k_proj, self.v_proj, self.q_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, patches, width] -> [batch, patches, width]."""
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
        k = self.k_proj(x).view(B, T, H, D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H, D).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # scale D ** -0.5
        return self.out_proj(y.transpose(1, 2).reshape(B, T, H * D))


class SiglipMLP(nn.Module):
    """fc1 -> GELU (tanh approximation) -> fc2, both with biases."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    """The stack of `num_hidden_layers` blocks (27 in Gemma 3)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SiglipVisionModel(nn.Module):
    """The SigLIP tower as Gemma 3 uses it: embeddings, encoder, final LayerNorm, no pooling head."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = SiglipVisionEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: [batch, 3, image, image], normalized to [-1, 1] -> [batch, patches, width]."""
        size = self.cfg.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (self.cfg.num_channels, size, size):
            raise ValueError(
                f"expected pixel_values [batch, {self.cfg.num_channels}, {size}, {size}], "
                f"got {list(pixel_values.shape)}"
            )
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))


def pool_patches(features: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """Average-pool the square patch grid down to `tokens_per_image` vectors.

    features: [batch, side*side, width] (row-major grid) -> [batch, tokens_per_image, width].
    With Gemma 3's numbers: 64x64 = 4096 patches, 4x4 windows, 16x16 = 256 tokens.
    """
    B, P, W = features.shape
    side, out_side = int(round(P**0.5)), int(round(tokens_per_image**0.5))
    grid = features.transpose(1, 2).reshape(B, W, side, side)  # [B, width, side, side]
    pooled = F.avg_pool2d(grid, kernel_size=side // out_side)  # [B, width, out_side, out_side]
    return pooled.flatten(2).transpose(1, 2)  # [B, tokens, width]


class Gemma3MultiModalProjector(nn.Module):
    """4096 SigLIP vectors -> 256 soft tokens of the text width: pool, RMSNorm, bias-free projection."""

    def __init__(self, cfg: VisionConfig, text_hidden_size: int) -> None:
        super().__init__()
        self.tokens_per_image = cfg.mm_tokens_per_image
        # Stored [vision width, text width] and applied as x @ W, as in the checkpoint.
        self.mm_input_projection_weight = nn.Parameter(torch.zeros(cfg.hidden_size, text_hidden_size))
        self.mm_soft_emb_norm = RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # Gemma's 1 + w norm

    def forward(self, vision_outputs: torch.Tensor) -> torch.Tensor:
        """vision_outputs: [batch, patches, vision width] -> [batch, tokens_per_image, text width]."""
        pooled = pool_patches(vision_outputs, self.tokens_per_image)  # [B, 256, vision width]
        return self.mm_soft_emb_norm(pooled) @ self.mm_input_projection_weight  # [B, 256, text width]
