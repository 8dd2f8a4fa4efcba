"""The GGUF's own integers as int8 (`load_model("270m", quantize="gguf-int8")`): every matrix equals
the float32 model's weight, logits and greedy tokens equal the float32 model's past the sliding
window, groups with mins (Q4_K) in the eager and compiled products, and clear errors."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType

import gemma3_minimal as g3
from gemma3_minimal.assets import gguf_path
from gemma3_minimal.generate import generate_ids
from gemma3_minimal.gguf_checkpoint import GGUFTensor, gguf_name_to_ours, int8_tensor, load_gguf_state_dict, read_tensors
from gemma3_minimal.quantize import (
    GGUF_INT8,
    QuantizedTensor,
    QuantLinear,
    quantize,
    quantize_tensor,
    quantized_bytes,
    quantized_model,
)

ROOT = Path(__file__).parents[1]
# block type -> (group size, range of the integers, scale dtype, with mins), as the module docs describe them
FORMS = {
    "Q8_0": (32, (-128, 127), torch.float16, False),
    "Q5_0": (32, (-16, 15), torch.float16, False),
    "Q6_K": (16, (-32, 31), torch.float32, False),
    "Q4_K": (32, (0, 15), torch.float32, True),
}


@pytest.fixture(scope="module")
def gguf_model():
    return g3.load_model("270m", quantize=GGUF_INT8)


@pytest.fixture(scope="module")
def float_state():
    return load_gguf_state_dict()


def test_every_matrix_of_the_file_equals_the_float32_weight(float_state):
    """Each GGUF tensor's int8 form dequantizes to the float32 model's weight bit for bit: the
    integers times the scale are exact float32 products (at most 11 + 8 + 6 significant bits), and
    a Q4_K min is added with the one float32 rounding gguf's own `d * q - dm` makes."""
    seen = set()
    for t in read_tensors(gguf_path()):
        name = gguf_name_to_ours(t.name)
        if name.endswith("norm.weight"):
            continue
        qt = int8_tensor(t)
        group, (low, high), scale_dtype, with_min = FORMS[t.tensor_type.name]
        seen.add(t.tensor_type.name)
        assert (qt.group_size, qt.scale.dtype, qt.min is not None) == (group, scale_dtype, with_min), t.name
        assert low <= int(qt.data.min()) and int(qt.data.max()) <= high, (t.name, qt.data.min(), qt.data.max())
        error = (qt.dequantize() - float_state[name]).abs().max()
        assert torch.equal(qt.dequantize(), float_state[name]), f"{t.name} ({t.tensor_type.name}): max |error| {error}"
    assert seen == set(FORMS)  # the file has all four block types


def test_the_model_holds_the_float32_weights_in_a_third_of_the_bytes(gguf_model, float_state):
    assert gguf_model.quantization == GGUF_INT8
    for name, module in gguf_model.named_modules():
        if isinstance(module, QuantLinear):
            want = float_state["model.embed_tokens.weight" if name == "lm_head" else f"{name}.weight"]
            got = module.dequantized_weight()
            assert torch.equal(got, want), f"{name}: max |error| {(got - want).abs().max()}"
    state = gguf_model.state_dict()
    for name, value in float_state.items():
        if name.endswith("norm.weight"):
            assert torch.equal(state[name], value), name
    # the tied head and embedding: one storage each for integers and scales
    assert gguf_model.lm_head.qweight.data_ptr() == gguf_model.model.embed_tokens.qweight.data_ptr()
    assert gguf_model.lm_head.scale.data_ptr() == gguf_model.model.embed_tokens.scale.data_ptr()
    # keys: a min only where the GGUF has one (o_proj is Q4_K in every layer)
    assert "model.layers.0.self_attn.o_proj.min" in state and "model.layers.0.self_attn.q_proj.min" not in state
    assert state["model.layers.0.self_attn.o_proj.min"].dtype == torch.float32
    float_bytes = sum(v.numel() * 4 for v in float_state.values())
    assert quantized_bytes(gguf_model) < 0.3 * float_bytes


@pytest.fixture(scope="module")
def long_ids():
    """A prompt longer than the 512-token sliding window (Genesis)."""
    tok = g3.Gemma3Tokenizer.from_pretrained()
    text = (ROOT / "data" / "kjv_genesis.txt").read_text(encoding="utf-8")
    return tok.encode(text, add_bos=True)[:600]


def prefill_and_greedy(model, ids: list[int], new: int) -> tuple[torch.Tensor, list[int]]:
    """Logits at every prompt position (prefill into a KV cache), then `new` greedy tokens through it."""
    cache = model.new_cache(len(ids) + new)
    with torch.no_grad():
        logits = model(torch.tensor([ids]), cache)  # [1, T, vocab]
        token, tokens = logits[:, -1:].argmax(-1), []
        for _ in range(new):
            tokens.append(int(token))
            token = model(token, cache)[:, -1:].argmax(-1)
    return logits, tokens


def test_logits_and_greedy_tokens_equal_the_float32_model_past_the_window(gguf_model, real_model, long_ids):
    """Prefill of 600 positions: logits within float32 tolerance (1e-4 of the largest) and the same
    top-1 everywhere; then greedy tokens through the KV cache (ring buffers past 512) equal."""
    got, got_tokens = prefill_and_greedy(gguf_model, long_ids, 2)
    want, want_tokens = prefill_and_greedy(real_model, long_ids, 2)
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-4 * scale, float((got - want).abs().max() / scale)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert got_tokens == want_tokens


def asymmetric(w: torch.Tensor, group: int) -> QuantizedTensor:
    """Q4_K-like groups: q = round((w - min) / scale) in 0..15, w ~ q * scale + min (float32 scale and min)."""
    g = w.reshape(w.shape[0], -1, group)
    low, high = g.amin(-1), g.amax(-1)
    scale = ((high - low) / 15).clamp_min(1e-8)
    q = torch.round((g - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int8)
    return QuantizedTensor(q.reshape(w.shape), scale, 8, group, low)


def test_groups_with_mins_eager_and_compiled_on_the_tiny_model():
    """Mixed layouts as in gguf-int8 (groups of 16 and 32, mins or none): the quantized model computes
    what the float model computes with the dequantized weights, and the compiled step (the fused
    group kernel plus the mins' term) picks the eager path's greedy tokens."""
    torch.manual_seed(0)
    model = g3.Gemma3ForCausalLM(g3.get_config("tiny")).eval()
    twin = copy.deepcopy(model)
    tensors = {}
    linears = [(name, m.weight.detach()) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    tensors = {name: quantize_tensor(w, 8, 32, torch.float32) if i % 3 == 0 else asymmetric(w, 16 if i % 2 else 32)
               for i, (name, w) in enumerate(linears)}
    q = quantized_model(model, tensors, "test layout")
    assert any(isinstance(m, QuantLinear) and m.min is not None and m.group_size == 16 for m in q.modules())
    with torch.no_grad():
        for name, module in q.named_modules():
            if isinstance(module, QuantLinear):
                twin.get_submodule(name).weight.copy_(module.dequantized_weight())
        ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(q(ids), twin(ids))
    prompt = [2, 17, 33, 101]
    eager = list(generate_ids(q, prompt, 6, stop_ids=()))
    assert eager == list(generate_ids(twin, prompt, 6, stop_ids=()))
    assert eager == list(generate_ids(q, prompt, 6, stop_ids=(), compile=True))


def test_an_unsupported_block_type_is_a_clear_error():
    n = 4 * 32
    bad = GGUFTensor("blk.0.attn_q.weight", GGMLQuantizationType.Q4_0, (4, 32), n, 4 * 18,
                     np.zeros((4, 18), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"blk\.0\.attn_q\.weight is stored as Q4_0 .*no lossless int8 form"):
        int8_tensor(bad)
    plain = GGUFTensor("blk.0.attn_q.weight", GGMLQuantizationType.F32, (4, 32), n, n * 4,
                       np.zeros((4, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="stored as F32"):
        int8_tensor(plain)


def test_bad_requests(tmp_path):
    with pytest.raises(ValueError, match="needs the preset '270m'"):
        g3.load_model(tmp_path, quantize=GGUF_INT8)
    with pytest.raises(ValueError, match="float32"):
        g3.load_model("270m", quantize=GGUF_INT8, dtype=torch.bfloat16)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="bundled GGUF's own integers"):
        quantize(g3.Gemma3ForCausalLM(g3.get_config("tiny")), GGUF_INT8)


def test_saved_agreement_in_step_with_the_library(gguf_model):
    """benchmarks/results/int8_agreement_gguf.json: the format and bytes the library builds now."""
    saved = json.loads((ROOT / "benchmarks" / "results" / "int8_agreement_gguf.json").read_text())["gguf_int8"]
    assert saved["format"] == GGUF_INT8 and saved["all_bytes"] == quantized_bytes(gguf_model)
    weights = sum(m.out_features * m.in_features for m in gguf_model.modules() if isinstance(m, QuantLinear))
    assert saved["matrix_weights"] == weights and saved["bits_per_weight"] == saved["matrix_bytes"] * 8 / weights
