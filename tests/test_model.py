"""Our Gemma 3 text model against transformers' with random weights (tiny config, sliding layers)."""

import pytest
import torch

from gemma3_minimal import Gemma3ForCausalLM, get_config, layers
from hf_reference import random_pair

TINY = get_config("tiny")


def test_tiny_has_sliding_and_global_layers_and_window_shorter_than_input():
    assert "sliding_attention" in TINY.layer_types and "full_attention" in TINY.layer_types
    assert TINY.sliding_window < 40


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_equal_transformers(attn):
    ours, theirs = random_pair(TINY, seed=1, attn_implementation=attn)
    ids = torch.randint(0, TINY.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine = ours(ids)
        ref = theirs(ids).logits
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [5, 16])
def test_query_chunks_read_only_the_keys_they_see_and_equal_one_block(monkeypatch, chunk):
    """Queries in chunks shorter than the input (40 tokens, window 8) attend each to the range of keys
    its queries see: the logits equal transformers' and one block's, with images and through a cache."""
    ours, theirs = random_pair(TINY, seed=1)
    ids = torch.randint(0, TINY.vocab_size, (2, 40), generator=torch.Generator().manual_seed(4))
    image_ids = torch.full((2, 40), -1)
    image_ids[0, 10:20], image_ids[1, 25:31] = 0, 0  # tokens of one image see each other both ways

    def with_images():
        return ours.lm_head(ours.model(ours.model.embed(ids), image_ids=image_ids))

    with torch.no_grad():
        whole, whole_images = ours(ids), with_images()  # one chunk of QUERY_CHUNK = 512 queries
        monkeypatch.setattr(layers, "QUERY_CHUNK", chunk)
        plain, key_lengths = layers.grouped_attention, []
        monkeypatch.setattr(layers, "grouped_attention", lambda q, k, *rest: key_lengths.append(k.shape[2])
                            or plain(q, k, *rest))
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(ids), whole, atol=1e-5, rtol=0)
        assert min(key_lengths) < chunk + TINY.sliding_window  # local layers skipped the keys out of the window
        torch.testing.assert_close(with_images(), whole_images, atol=1e-5, rtol=0)
        cache = ours.new_cache(40, batch_size=2)
        ours(ids[:, :7], cache)
        torch.testing.assert_close(ours(ids[:, 7:], cache), whole[:, 7:], atol=1e-5, rtol=0)


def test_scaled_rope_model_equals_transformers():
    """x8 linear scaling on global layers, as in the 4B/12B/27B models."""
    cfg = TINY.replace(rope_scaling_factor=8.0, num_hidden_layers=6)
    ours, theirs = random_pair(cfg, seed=2)
    ids = torch.randint(0, cfg.vocab_size, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-5, rtol=0)


# Exact parameter counts (DESIGN.md); for the vision presets this is the text part.
TEXT_PARAMS = {"270m": 268_098_176, "1b": 999_885_952, "4b": 3_880_099_328}


@pytest.mark.parametrize("name", ["270m", "1b", "4b", "12b", "27b"])
def test_presets_on_the_meta_device_have_the_exact_text_parameter_count(name):
    cfg = get_config(name)
    with torch.device("meta"):
        model = Gemma3ForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters())  # the tied head is counted once
    per_layer = (
        cfg.hidden_size * cfg.head_dim * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
        + 3 * cfg.hidden_size * cfg.intermediate_size + 4 * cfg.hidden_size + 2 * cfg.head_dim
    )
    assert n == cfg.vocab_size * cfg.hidden_size + cfg.num_hidden_layers * per_layer + cfg.hidden_size
    if name in TEXT_PARAMS:
        assert n == TEXT_PARAMS[name]
