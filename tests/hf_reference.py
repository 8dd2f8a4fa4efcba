"""Build transformers' Gemma 3 from our config and copy weights between the two (tests only)."""

from __future__ import annotations

import torch

from gemma3_minimal import Gemma3Config, Gemma3ForCausalLM


def hf_text_config(cfg: Gemma3Config, attn_implementation: str = "eager"):
    from transformers import Gemma3TextConfig

    rope = {
        "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local_base_freq},
        "full_attention": (
            {"rope_type": "linear", "factor": cfg.rope_scaling_factor, "rope_theta": cfg.rope_theta}
            if cfg.rope_scaling_factor != 1.0
            else {"rope_type": "default", "rope_theta": cfg.rope_theta}
        ),
    }
    hf = Gemma3TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
        query_pre_attn_scalar=cfg.query_pre_attn_scalar, sliding_window=cfg.sliding_window,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters=rope, layer_types=cfg.layer_types,
    )
    hf._attn_implementation = attn_implementation
    return hf


def random_pair(cfg: Gemma3Config, seed: int = 0, attn_implementation: str = "eager"):
    """Our model with random weights (norms included) and transformers' with the same weights."""
    from transformers import Gemma3ForCausalLM as HFGemma3ForCausalLM

    torch.manual_seed(seed)
    ours = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.1 if p.dim() == 1 else 0.05)
    theirs = HFGemma3ForCausalLM(hf_text_config(cfg, attn_implementation)).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert not [m for m in missing if m != "lm_head.weight"], missing
    return ours, theirs
