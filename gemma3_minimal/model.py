"""Gemma3ForCausalLM: scaled embeddings, a stack of pre- and post-normed blocks, a tied head.

    x = embed(ids) * sqrt(hidden)
    for each block:  x = x + post_attn_norm(attn(input_norm(x)))      (report section 2: pre- and
                     x = x + post_ffw_norm(mlp(pre_ffw_norm(x)))        post-norm with RMSNorm)
    logits = norm(x) @ embed.T                                          (the head is the embedding)

A block's attention is local (sliding window, RoPE base 10k) or global (RoPE base 1M), as
`config.layer_types` says: 5 local layers to each global one.

Module names follow the checkpoint, so `state_dict()` keys equal transformers' Gemma3ForCausalLM.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .checks import check_context, check_input_ids
from .config import GLOBAL, LOCAL, Gemma3Config
from .kv_cache import KVCache, LayerCache
from .layers import Attention, GeGLU, RMSNorm
from .rope import layer_inv_freq, rope_cos_sin


class DecoderLayer(nn.Module):
    """One block: attention and MLP, each wrapped in an RMSNorm before and after (Gemma 3 report, section 2)."""

    def __init__(self, cfg: Gemma3Config, layer_idx: int):
        super().__init__()
        self.is_sliding = cfg.layer_types[layer_idx] == LOCAL
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GeGLU(cfg.hidden_size, cfg.intermediate_size)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], positions: torch.Tensor,
                cache: LayerCache | None = None, image_ids: torch.Tensor | None = None) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(x), *rope, positions, cache, image_ids)  # rope: (cos, sin)
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3TextModel(nn.Module):
    """Embeddings, blocks and the final norm; returns hidden states [batch, seq, hidden]."""

    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[batch, seq] ids -> [batch, seq, hidden], scaled by sqrt(hidden) in the weights' dtype."""
        w = self.embed_tokens.weight
        scale = torch.full((), self.config.hidden_size**0.5, dtype=w.dtype, device=input_ids.device)
        return self.embed_tokens(input_ids) * scale

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, image_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, seq, hidden] -> [batch, seq, hidden]; positions default to those after what `cache` holds."""
        T = inputs_embeds.shape[1]
        if positions is None:
            start = 0 if cache is None else cache.length
            check_context(self.config, start + T, "the input", "shorten it")
            positions = torch.arange(start, start + T, device=inputs_embeds.device)
        if cache is not None:
            cache.advance(T)
        return self.blocks(inputs_embeds, positions, cache, image_ids)

    def blocks(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
               image_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder blocks and the final norm at `positions` [seq]; `cache` is not advanced here."""
        # RoPE tables per layer kind (base 10k local, 1M global), float32 and made per call, so a
        # bfloat16 model keeps exact angles.
        rope = {kind: rope_cos_sin(positions, layer_inv_freq(self.config, kind, positions.device))
                for kind in (LOCAL, GLOBAL)}
        for i, layer in enumerate(self.layers):
            kind = LOCAL if layer.is_sliding else GLOBAL
            x = layer(x, rope[kind], positions, None if cache is None else cache[i], image_ids)
        return self.norm(x)


class Gemma3Base(nn.Module):
    """What the text-only and the multimodal model share: `model` (named as in the checkpoint), a
    head tied to the embedding, random init, the KV cache. Subclasses say where `text_model` is."""

    def __init__(self, cfg: Gemma3Config, model: nn.Module):
        super().__init__()
        self.config = cfg
        self.model = model
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        if not self.lm_head.weight.is_meta:
            self.reset_parameters()

    @property
    def text_model(self) -> Gemma3TextModel:
        raise NotImplementedError

    def tie_weights(self) -> None:
        """One [vocab, hidden] table for both ends: the head's logits are x @ embed.T."""
        self.lm_head.weight = self.text_model.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Random init as transformers does: normal(0, std) matrices, zero biases, norms at scale 1."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
                module.weight.normal_(0.0, std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def new_cache(self, max_len: int, batch_size: int = 1, sliding: bool = True) -> KVCache:
        """An empty KV cache for `max_len` positions, on the model's device and dtype (see KVCache)."""
        w = self.lm_head.weight
        return KVCache(self.config, batch_size, max_len, w.dtype, w.device, sliding=sliding)


class Gemma3ForCausalLM(Gemma3Base):
    """The Gemma 3 language model: `model(input_ids) -> logits [batch, seq, vocab]`."""

    def __init__(self, cfg: Gemma3Config):
        super().__init__(cfg, Gemma3TextModel(cfg))

    @property
    def text_model(self) -> Gemma3TextModel:
        return self.model

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, *,
                last_only: bool = False) -> torch.Tensor:
        """input_ids [batch, seq] -> logits [batch, seq, vocab] ([batch, 1, vocab] with `last_only`).

        With a `cache` from `new_cache`, positions continue from `cache.length`.
        """
        check_input_ids(self.config, input_ids)
        h = self.model(self.model.embed(input_ids), cache=cache)  # [batch, seq, hidden]
        if last_only:
            h = h[:, -1:]
        return self.lm_head(h)
