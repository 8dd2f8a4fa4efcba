"""The hand-written CPU kernels (`cpu_kernels.py`, `kernels/`): the product of the weights they read,
in every supported layout; called from the compiled step; clear errors; a damaged or unbuildable
library repaired or reported, never used wrong."""

import copy
import dataclasses
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gemma3_minimal import Gemma3ForCausalLM, generate_ids, get_config, speed_up
from gemma3_minimal.cpu_kernels import (compilers, int4_matvec, int8_matvec, kernels_work, library_path,
                                        supports_int4, supports_int8)
from gemma3_minimal.quantize import QuantLinear, quantize, quantize_tensor
from float_bounds import float32_sum_error

ROOT = Path(__file__).parents[1]
quantize_module = importlib.import_module("gemma3_minimal.quantize")  # the package's `quantize` is the function
# tiny's layout with widths the kernel reads (multiples of 128): every product of a decode step uses it
WIDE_TINY = dataclasses.replace(get_config("tiny"), hidden_size=128, intermediate_size=256, head_dim=32,
                                query_pre_attn_scalar=32)


@pytest.fixture(scope="module", autouse=True)
def kernel():
    assert kernels_work(), "the CPU kernels did not build here (see the warning)"


@pytest.mark.parametrize("out_features,in_features,group", [
    (67, 128, 32), (256, 640, 32), (130, 640, 64), (64, 640, 640), (33, 2048, 128), (5, 1024, 256)])
def test_int4_kernel_equals_the_dequantized_product(out_features, in_features, group):
    """Within twice float32's summation bound: besides the n products' sum, the kernel rounds each
    x * n (n the integer) and each 128-weight chunk's scaling: at most n + 2 roundings per output."""
    gen = torch.Generator().manual_seed(out_features)
    qt = quantize_tensor(torch.randn(out_features, in_features, generator=gen), 4, group)
    x = torch.randn(in_features, generator=gen)
    w = qt.dequantize()
    got = int4_matvec(x, qt.data, qt.scale, group)
    exact = x.double() @ w.double().T
    assert ((got.double() - exact).abs() <= 2 * float32_sum_error(x, w)).all()
    assert torch.equal(int4_matvec(x[None, None], qt.data, qt.scale, group), got[None, None])  # [..., in] rows


@pytest.mark.parametrize("out_features,in_features,group,scale_dtype,with_min", [
    (67, 640, 640, torch.bfloat16, False), (256, 640, 32, torch.bfloat16, False), (130, 640, 16, torch.float32, True),
    (33, 2048, 32, torch.float16, False), (64, 1024, 32, torch.float32, True), (5, 64, 64, torch.bfloat16, False)])
def test_int8_kernel_equals_the_dequantized_product(out_features, in_features, group, scale_dtype, with_min):
    """Per channel, in groups, and gguf-int8's layouts (groups of 16/32, float16/float32 scales, mins)."""
    gen = torch.Generator().manual_seed(out_features)
    qt = quantize_tensor(torch.randn(out_features, in_features, generator=gen), 8, group)
    scale = qt.scale.to(scale_dtype)
    min = torch.randn(out_features, in_features // group, generator=gen) if with_min else None
    w = quantize_module.dequantize(qt.data, scale, 8, min)
    x = torch.randn(in_features, generator=gen)
    got = int8_matvec(x, qt.data, scale, min, group)
    exact = x.double() @ w.double().T
    assert ((got.double() - exact).abs() <= 2 * float32_sum_error(x, w)).all()


def test_supported_layouts():
    assert supports_int4(640, 32) and supports_int4(640, 64) and supports_int4(640, 640)
    assert not supports_int4(64, 32)  # width not a multiple of 128
    assert not supports_int4(640, 16) and not supports_int4(384, 256)
    assert supports_int8(640, 16, torch.float16) and supports_int8(640, 640, torch.bfloat16)
    assert not supports_int8(640, 8, torch.float32) and not supports_int8(640, 32, torch.float64)


def test_compiled_step_calls_the_kernel_and_gives_the_fallback_tokens(monkeypatch):
    """Every product of a one-token step goes to the int4 kernel, in the compiled step as eagerly; greedy
    tokens equal those of the same model with the kernels off (dequantized products). The int8 kernel's
    compiled step: test_gguf_int8 (tiny's widths, groups of 16/32 with and without mins)."""
    torch.manual_seed(0)
    q = quantize(speed_up(Gemma3ForCausalLM(WIDE_TINY).eval()), "int4")
    linears = [m for m in q.modules() if isinstance(m, QuantLinear)]
    assert all(m.cpu_kernel for m in linears)

    def fallback(*args):
        raise AssertionError("a one-token product took the compiled PyTorch kernel")

    monkeypatch.setattr(quantize_module, "quantized_matvec", fallback)  # what the step would call without the kernel
    prompt = [2, 17, 33, 101, 7, 9]
    compiled = list(generate_ids(q, prompt, 8, stop_ids=(), compile=True))
    eager = list(generate_ids(q, prompt, 8, stop_ids=()))
    off = copy.deepcopy(q)
    for m in off.modules():
        if isinstance(m, QuantLinear):
            m.cpu_kernel = False
    assert compiled == eager == list(generate_ids(off, prompt, 8, stop_ids=()))


def test_bad_input():
    qt = quantize_tensor(torch.randn(8, 256), 4, 32)
    x = torch.randn(256)
    op = torch.ops.gemma3_minimal.int4_matvec
    with pytest.raises(RuntimeError, match="contiguous float32 vector"):
        op(x.double(), qt.data, qt.scale, 32)
    with pytest.raises(RuntimeError, match="multiple of 128"):
        op(torch.randn(64), qt.data[:, :32], qt.scale[:, :2], 32)
    with pytest.raises(RuntimeError, match="group size 48"):
        op(x, qt.data, qt.scale, 48)
    with pytest.raises(RuntimeError, match="scale must be contiguous bfloat16"):
        op(x, qt.data, qt.scale.float(), 32)
    with pytest.raises(RuntimeError, match="packed int4"):
        op(x, qt.data[:, :64], qt.scale, 32)
    q8 = quantize_tensor(torch.randn(8, 256), 8, 32)
    op8 = torch.ops.gemma3_minimal.int8_matvec
    with pytest.raises(RuntimeError, match="multiple of 16 dividing 256"):
        op8(x, q8.data, q8.scale, None, 24)
    with pytest.raises(RuntimeError, match="qweight must be contiguous int8"):
        op8(x, q8.data.t().contiguous().t(), q8.scale, None, 32)
    with pytest.raises(RuntimeError, match="scale must be contiguous bfloat16, float16 or float32"):
        op8(x, q8.data, q8.scale.double(), None, 32)
    with pytest.raises(RuntimeError, match="min must be contiguous float32"):
        op8(x, q8.data, q8.scale, q8.scale, 32)


def kernel_process(env: dict) -> subprocess.CompletedProcess:
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from gemma3_minimal.cpu_kernels import kernels_work\nprint(kernels_work())")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_damaged_library_is_rebuilt_and_missing_compiler_reported(tmp_path):
    """A library whose bytes no longer match its sha256 is rebuilt (with a warning) and works; nothing
    partial is left. Without a compiler the kernel is off, and a warning says why."""
    built = library_path(*compilers())  # this process's build, in the cache folder
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    so = kernels / built.name
    shutil.copy(built.with_name(built.name + ".sha256"), kernels)
    so.write_bytes(built.read_bytes()[: built.stat().st_size // 2])  # truncated
    done = kernel_process({"GEMMA3_MINIMAL_CACHE": str(tmp_path)})
    assert done.stdout.strip() == "True" and "is damaged (sha256 differs); rebuilding it" in done.stderr, done.stderr
    assert sorted(p.name for p in kernels.iterdir()) == [so.name, so.name + ".sha256"]  # nothing partial left
    assert so.read_bytes() != built.read_bytes()[: built.stat().st_size // 2]
    done = kernel_process({"GEMMA3_MINIMAL_CACHE": str(tmp_path), "CC": "no-such-cc"})
    assert done.stdout.strip() == "False" and "no compiler no-such-cc on PATH" in done.stderr, done.stderr
