"""The performance layer (`fast.py`): blocked matrix-vector products, fused projections, `speed_up`.

None of it may change what the model computes, its parameter names, its keys or its gradients:
the sped-up model is checked against the plain reference model.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gemma3_minimal import Gemma3ForCausalLM, generate_ids, get_config, speed_up
from gemma3_minimal.fast import FUSED, FastLinear, back_to_back, blocked_matvec, project, set_weight_layout
from float_bounds import float32_sum_error

TINY = get_config("tiny")


def fast_model(seed: int = 0) -> Gemma3ForCausalLM:
    torch.manual_seed(seed)
    return speed_up(Gemma3ForCausalLM(TINY))


def fused_weight(*linears):
    return back_to_back([lin.weight for lin in linears])


@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("in_features,out_features", [(8, 12), (640, 1536), (1024, 640), (64, 262)])
def test_blocked_matvec_equals_f_linear(rows, in_features, out_features):
    g = torch.Generator().manual_seed(rows + in_features)
    lin = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        lin.weight.normal_(0.0, 0.02, generator=g)  # the init's scale: outputs of order 1
    set_weight_layout(lin)
    lin.__class__ = FastLinear
    assert lin.weight.stride(0) == 1  # column-major: the layout blocked_matvec reads
    x = torch.randn(2, rows, in_features, generator=g)
    torch.testing.assert_close(blocked_matvec(x, lin.weight), F.linear(x, lin.weight), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lin(x[:1]), F.linear(x[:1], lin.weight), atol=1e-5, rtol=1e-5)


def fused_groups(model):
    for module in model.modules():
        if type(module) in FUSED:
            yield [getattr(module, name) for name in FUSED[type(module)]]


def test_projections_share_one_buffer_and_keep_checkpoint_names():
    model = fast_model()
    names = set(model.state_dict())
    assert "model.layers.0.self_attn.q_proj.weight" in names and "model.layers.0.mlp.up_proj.weight" in names
    assert not any("fused" in n or "qkv" in n for n in names)
    groups = list(fused_groups(model))
    assert len(groups) == 2 * TINY.num_hidden_layers
    with torch.no_grad():  # with gradients on, the model reads each weight on its own
        for linears in groups:
            w = fused_weight(*linears)
            assert w is not None and w.untyped_storage().data_ptr() == linears[0].weight.untyped_storage().data_ptr()
            torch.testing.assert_close(w, torch.cat([lin.weight for lin in linears]), atol=0, rtol=0)


def test_fused_and_separate_products_agree_and_loading_writes_through():
    a = fast_model(0)
    b = fast_model(1)
    b.load_state_dict(a.state_dict())  # copies into the views: b's fused buffers hold a's values
    attn = b.model.layers[0].self_attn
    x = torch.randn(1, 3, TINY.hidden_size)
    with torch.no_grad():
        fused = project(x, attn.q_proj, attn.k_proj, attn.v_proj)
        separate = (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))
        for f, s in zip(fused, separate):
            torch.testing.assert_close(f, s, atol=1e-6, rtol=1e-6)
        ids = torch.randint(0, TINY.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(a(ids), b(ids), atol=0, rtol=0)


def test_dtype_change_unfuses_and_set_weight_layout_fuses_again():
    model = fast_model()
    ids = torch.randint(0, TINY.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids)
        model.to(torch.bfloat16)  # copies each weight on its own
        assert all(fused_weight(*linears) is None for linears in fused_groups(model))
        separate = model(ids)
        set_weight_layout(model)
        for linears in fused_groups(model):
            w = fused_weight(*linears)
            assert w is not None and w.stride(1) == 1  # bfloat16: row-major
        torch.testing.assert_close(model(ids), separate, atol=0, rtol=0)
        model.to(torch.float32)
        set_weight_layout(model)
        assert all(fused_weight(*linears).stride(0) == 1 for linears in fused_groups(model))
    torch.testing.assert_close(separate.float(), ref, atol=0.3, rtol=0.05)  # bfloat16 against float32


def test_gradients_reach_every_projection_as_without_fusion():
    """Training bypasses the shared view, so each parameter gets its own gradient."""
    model = fast_model()
    ids = torch.randint(0, TINY.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    model(ids).logsumexp(-1).mean().backward()
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    grads = {n: getattr(attn, n).weight.grad for n in ("q_proj", "k_proj", "v_proj")}
    grads.update({n: getattr(mlp, n).weight.grad for n in ("gate_proj", "up_proj")})

    plain = fast_model(1)
    plain.load_state_dict(model.state_dict())
    for linears in fused_groups(plain):
        for lin in linears:
            lin.weight.data = lin.weight.data.clone()  # each weight in its own storage: no fusion
    assert all(fused_weight(*linears) is None for linears in fused_groups(plain))
    plain(ids).logsumexp(-1).mean().backward()
    p_attn, p_mlp = plain.model.layers[0].self_attn, plain.model.layers[0].mlp
    for name, grad in grads.items():
        ref = getattr(p_attn if name.endswith(("q_proj", "k_proj", "v_proj")) else p_mlp, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, ref, atol=1e-6, rtol=1e-5)


def test_adjacent_but_separate_weights_are_not_read_as_one():
    """Two allocations can touch (CUDA's caching allocator packs blocks): they must not be fused."""
    mlp = fast_model().model.layers[0].mlp
    out, inp = mlp.gate_proj.weight.shape
    memory = torch.randn(2 * out * inp).untyped_storage()
    nbytes = out * inp * 4
    for i, lin in enumerate([mlp.gate_proj, mlp.up_proj]):  # row-major, back to back, two storages
        lin.weight.data = torch.empty(0).set_(memory[i * nbytes:(i + 1) * nbytes], 0, (out, inp), (inp, 1))
    assert mlp.gate_proj.weight.data_ptr() + nbytes == mlp.up_proj.weight.data_ptr()
    with torch.no_grad():
        assert fused_weight(mlp.gate_proj, mlp.up_proj) is None
        x = torch.randn(1, 2, inp)
        gate, up = project(x, mlp.gate_proj, mlp.up_proj)
        torch.testing.assert_close(up, F.linear(x, mlp.up_proj.weight), atol=1e-6, rtol=1e-6)


def reference_and_fast(seed: int = 3):
    """A reference model (plain nn.Linear) and a sped-up deep copy of it."""
    torch.manual_seed(seed)
    ref = Gemma3ForCausalLM(TINY).eval()
    return ref, speed_up(copy.deepcopy(ref))


def test_speed_up_keeps_names_keys_shapes_and_swaps_only_how_products_run():
    ref, fast = reference_and_fast()
    assert all(type(m) is nn.Linear for m in ref.modules() if isinstance(m, nn.Linear))  # the reference is plain
    assert all(type(m) is FastLinear for m in fast.modules() if isinstance(m, nn.Linear))
    assert list(ref.state_dict()) == list(fast.state_dict())
    for (name, a), (_, b) in zip(ref.state_dict().items(), fast.state_dict().items()):
        assert a.shape == b.shape and torch.equal(a, b), name
    assert fast.lm_head.weight is fast.model.embed_tokens.weight  # still tied
    assert speed_up(fast) is fast  # in place; a second call changes nothing
    assert list(ref.state_dict()) == list(fast.state_dict())


def test_speed_up_gives_the_reference_logits_tokens_and_gradients():
    """Past the sliding window (8), on prefill, cached one-token steps and greedy decoding."""
    ref, fast = reference_and_fast()
    ids = torch.randint(0, TINY.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids), ref(ids), atol=1e-5, rtol=0)
        caches = ref.new_cache(40), fast.new_cache(40)
        ref(ids[:, :20], caches[0]), fast(ids[:, :20], caches[1])
        for i in range(20, 40):  # one token at a time: the blocked matrix-vector products
            step = ids[:, i:i + 1]
            torch.testing.assert_close(fast(step, caches[1]), ref(step, caches[0]), atol=1e-5, rtol=0)
    prompt = ids[0, :12].tolist()
    assert list(generate_ids(fast, prompt, 24, stop_ids=())) == list(generate_ids(ref, prompt, 24, stop_ids=()))
    for model in (ref, fast):
        model.zero_grad()
        model(ids[:, :24]).logsumexp(-1).mean().backward()
    for (name, a), (_, b) in zip(ref.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_speed_up_equals_the_reference_on_the_real_270m(real_model):
    """The real weights, 600 tokens (past the 512 window): plain reference against the default fast model."""
    ref = Gemma3ForCausalLM(real_model.config).eval()
    ref.load_state_dict(real_model.state_dict())
    assert all(type(m) is nn.Linear for m in ref.modules() if isinstance(m, nn.Linear))
    ids = torch.randint(3, 20_000, (1, 600), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # The prompt's 600 rows take F.linear in both models (fused and column-major weights in the fast one):
        # hidden states within 1e-5 (bit for bit equal on an AMD EPYC host). The head's one row takes the blocked
        # product, whose sums run in another order: on the same input, each side within float32's worst-case
        # rounding of the exact logits (1.05e-5 apart at a logit near 15 on that host, 0.4% of the bound).
        h = real_model.model(real_model.model.embed(ids))[:, -1:]  # what forward(ids, last_only=True) computes
        torch.testing.assert_close(h, ref.model(ref.model.embed(ids))[:, -1:], atol=1e-5, rtol=0)
        gap = (real_model.lm_head(h) - ref.lm_head(h)).double().abs()
        assert (gap <= 2 * float32_sum_error(h, ref.lm_head.weight)).all()
        caches = ref.new_cache(604), real_model.new_cache(604)
        ref(ids, caches[0], last_only=True), real_model(ids, caches[1], last_only=True)
        # One-token steps: the blocked products add 640- and 2048-long sums in another order, and
        # 18 layers carry that float32 rounding to up to 1e-4 in logits that reach 100 (about 1e-6 relative).
        for token in (5, 17, 99, 1234):
            step = torch.tensor([[token]])
            torch.testing.assert_close(real_model(step, caches[1]), ref(step, caches[0]), atol=1e-4, rtol=1e-5)
    prompt = ids[0, :8].tolist()
    assert list(generate_ids(real_model, prompt, 8)) == list(generate_ids(ref, prompt, 8))
