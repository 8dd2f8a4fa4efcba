"""The decode-speed layout of the weights: blocked matrix-vector products and fused projections.

None of it may change what the model computes, its parameter names or its gradients.
"""

import pytest
import torch
import torch.nn.functional as F

from gemma3_minimal import Gemma3ForCausalLM, get_config
from gemma3_minimal.layers import Linear, blocked_matvec, fused_weight, project, set_weight_layout

TINY = get_config("tiny")


@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("in_features,out_features", [(8, 12), (640, 1536), (1024, 640), (64, 262)])
def test_blocked_matvec_equals_f_linear(rows, in_features, out_features):
    g = torch.Generator().manual_seed(rows + in_features)
    lin = Linear(in_features, out_features)
    with torch.no_grad():
        lin.weight.normal_(0.0, 0.02, generator=g)  # the init's scale: outputs of order 1
    assert lin.weight.stride(0) == 1  # column-major: the layout blocked_matvec reads
    x = torch.randn(2, rows, in_features, generator=g)
    torch.testing.assert_close(blocked_matvec(x, lin.weight), F.linear(x, lin.weight), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lin(x[:1]), F.linear(x[:1], lin.weight), atol=1e-5, rtol=1e-5)


def fused_groups(model):
    for module in model.modules():
        for names in getattr(module, "fused_projections", ()):
            yield [getattr(module, name) for name in names]


def test_projections_share_one_buffer_and_keep_checkpoint_names():
    model = Gemma3ForCausalLM(TINY)
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
    a = Gemma3ForCausalLM(TINY)
    b = Gemma3ForCausalLM(TINY)
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
    model = Gemma3ForCausalLM(TINY)
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
    model = Gemma3ForCausalLM(TINY)
    ids = torch.randint(0, TINY.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    model(ids).logsumexp(-1).mean().backward()
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    grads = {n: getattr(attn, n).weight.grad for n in ("q_proj", "k_proj", "v_proj")}
    grads.update({n: getattr(mlp, n).weight.grad for n in ("gate_proj", "up_proj")})

    plain = Gemma3ForCausalLM(TINY)
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
    mlp = Gemma3ForCausalLM(TINY).model.layers[0].mlp
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
