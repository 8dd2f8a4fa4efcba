"""The performance layer's hand-written CPU kernels: int4 and int8 matrix-vector products for decoding.

A decode step multiplies each weight matrix by one vector, so it should run at the memory's speed.
torch.compile's fused products (`quantize.quantized_matvec`) do not, on 2 cores: int4 turns each
nibble into a float with about six vector instructions (mask, shift, widen, convert, subtract,
scale) and reads the 270M's 262,144 x 640 head at a third of the memory's speed; gguf-int8's head,
in groups of 32 with float16 scales, at about half. The two kernels in `kernels/` do the same
float32 products with fewer instructions per weight, 4 rows at a time, prefetching ahead:

- `int4_matvec.c`: a lane of 32 bits holds 8 nibbles; a shift and a table lookup turn each into
  its float, so a product is 2 instructions per 16 weights (x permuted once per call to match);
- `int8_matvec.c`: a sign-extending load, a conversion and a multiply-add per 16 weights, each
  group's sum scaled once; per channel, in groups, and gguf-int8's groups of 16/32 with float16 or
  float32 scales and Q4_K's mins.

Both read the head at 80-95% of a plain read's speed (benchmarks/cpu_kernels.py, RESULTS.md).
They compute what the dequantized weights give in float32, summed in another order.

They are built here, once per machine, with the C compiler torch.compile already needs on the CPU
(`-O3 -march=native -fopenmp`), and registered as the operators `torch.ops.gemma3_minimal.int4_matvec`
and `int8_matvec`, which the compiled step calls like any other operator. The library lands in the
cache folder under a name that hashes its sources, the compilers, torch's version and this CPU's
features; a damaged one (its sha256 no longer matches) is rebuilt. Loaded, it is checked once
against the dequantized product on random weights. Where it cannot be built, loaded or checked,
`kernels_work()` is False, a warning says why once, and products keep the compiled PyTorch kernels:
slower, never wrong. `GEMMA3_MINIMAL_CPU_KERNELS=0` turns them off (benchmarks compare both).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.utils.cpp_extension

from .assets import cache_dir, sha256_file, write_atomically

SOURCES = Path(__file__).parent / "kernels"
C_SOURCES = (SOURCES / "int4_matvec.c", SOURCES / "int8_matvec.c")
OP_SOURCE, HEADER = SOURCES / "ops.cpp", SOURCES / "vectors.h"
ENV_SWITCH = "GEMMA3_MINIMAL_CPU_KERNELS"
BUILD_SECONDS = 300  # a compiler that takes longer is taken as hung
INT8_SCALES = (torch.bfloat16, torch.float16, torch.float32)


def supports_int4(in_features: int, group_size: int) -> bool:
    """Whether the int4 kernel handles this weight shape (else the compiled PyTorch kernel does)."""
    return in_features % 128 == 0 and (group_size in (32, 64) or (group_size % 128 == 0 and in_features % group_size == 0))


def supports_int8(in_features: int, group_size: int, scale_dtype: torch.dtype) -> bool:
    """Whether the int8 kernel handles this weight shape and scale dtype."""
    return group_size % 16 == 0 and in_features % group_size == 0 and scale_dtype in INT8_SCALES


def int4_matvec(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """x [..., in] (one row) @ w.T -> [..., out] for a packed int4 w (`quantize.quantize_tensor`'s layout)."""
    y = torch.ops.gemma3_minimal.int4_matvec(x.reshape(-1), qweight, scale, group_size)
    return y.view(*x.shape[:-1], qweight.shape[0])


def int8_matvec(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, min: Optional[torch.Tensor],
                group_size: int) -> torch.Tensor:
    """x [..., in] (one row) @ w.T -> [..., out] for w = qweight * scale (+ min) in groups of group_size."""
    y = torch.ops.gemma3_minimal.int8_matvec(x.reshape(-1), qweight, scale, min, group_size)
    return y.view(*x.shape[:-1], qweight.shape[0])


def _cpu_features() -> str:
    """This CPU's feature flags (-march=native builds for them)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.processor()


def _compiler_version(cc: str) -> str:
    return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout


def _commands(build: Path, so: Path, cc: str, cxx: str) -> list[list[str]]:
    """The compiler calls that make the library `so` in the folder `build`."""
    includes = [f"-I{p}" for p in torch.utils.cpp_extension.include_paths()]
    libs = torch.utils.cpp_extension.library_paths()
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    objects = [build / (c.stem + ".o") for c in C_SOURCES]
    return [
        *([cc, "-O3", "-march=native", "-fopenmp", "-fPIC", "-c", str(c), "-o", str(o)] for c, o in zip(C_SOURCES, objects)),
        [cxx, "-O2", "-std=c++17", "-fPIC", "-shared", "-w", abi, *includes, f"-I{sysconfig.get_paths()['include']}",
         str(OP_SOURCE), *map(str, objects), "-fopenmp", *[f"-L{p}" for p in libs], *[f"-Wl,-rpath,{p}" for p in libs],
         "-lc10", "-ltorch_cpu", "-o", str(so)],
    ]


def compilers() -> tuple[str, str]:
    """The C and C++ compilers: $CC and $CXX, else gcc and g++."""
    return os.environ.get("CC", "gcc"), os.environ.get("CXX", "g++")


def library_path(cc: str, cxx: str) -> Path:
    """Where this machine's build lives: named by a hash of the sources, torch's and Python's versions,
    the compilers' and this CPU's features (another CPU or compiler gets a build of its own)."""
    key = hashlib.sha256()
    sources = [path.read_bytes() for path in (*C_SOURCES, OP_SOURCE, HEADER)]
    for part in (*sources, torch.__version__.encode(), sys.version.encode(), _compiler_version(cc).encode(),
                 _compiler_version(cxx).encode(), _cpu_features().encode()):
        key.update(part)
    folder = cache_dir() / "kernels"
    folder.mkdir(exist_ok=True)
    return folder / f"cpu_kernels-{key.hexdigest()[:16]}.so"


def _build(target: Path, cc: str, cxx: str) -> None:
    """Compile into a temporary folder, then move the library into place with its sha256 beside it."""
    with tempfile.TemporaryDirectory() as tmp:
        so = Path(tmp) / "lib.so"
        for command in _commands(Path(tmp), so, cc, cxx):
            done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_SECONDS)
            if done.returncode != 0:
                raise RuntimeError(f"`{' '.join(command[:2])} ...` failed:\n{done.stderr[-2000:]}")
        write_atomically(target, lambda p: shutil.copyfile(so, p))
    write_atomically(target.with_name(target.name + ".sha256"), lambda p: p.write_text(sha256_file(target)))


def _intact(target: Path) -> bool:
    checksum = target.with_name(target.name + ".sha256")
    return target.is_file() and checksum.is_file() and checksum.read_text().strip() == sha256_file(target)


def _self_check() -> Optional[str]:
    """None if the loaded kernels give the product of the weights they read on random ones (every
    kind of group and scale, with and without mins, a row count that is not a multiple of 4), else
    what differed. Bound: float32's for n products, doubled (the kernels also round x * q and each
    group's scaling)."""
    gen = torch.Generator().manual_seed(0)
    rows = 67

    def differs(got: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> Optional[float]:
        exact = x.double() @ w.T
        bound = x.shape[0] * 2**-23 * (x.abs().double() @ w.abs().T)
        return None if bool(((got.double() - exact).abs() <= bound).all()) else (got.double() - exact).abs().max().item()

    for group, in_features in ((32, 256), (64, 384), (128, 256), (256, 512)):
        packed = torch.randint(-128, 128, (rows, in_features // 2), generator=gen, dtype=torch.int8)
        scale = torch.rand(rows, in_features // group, generator=gen).to(torch.bfloat16)
        pairs = packed.view(rows, -1, group // 2).int()
        n = torch.cat([(pairs << 28) >> 28, pairs >> 4], dim=-1)  # low nibbles, then high ones, signed
        w = (n.double() * scale.double()[..., None]).reshape(rows, in_features)
        x = torch.randn(in_features, generator=gen)
        off = differs(int4_matvec(x, packed, scale, group), w, x)
        if off is not None:
            return f"int4, groups of {group}: off by up to {off:.3g}"
    for group, in_features, dtype, with_min in ((16, 640, torch.float32, True), (32, 640, torch.float16, False),
                                                (32, 256, torch.float32, True), (256, 256, torch.bfloat16, False)):
        q = torch.randint(-128, 128, (rows, in_features), generator=gen, dtype=torch.int8)
        scale = torch.rand(rows, in_features // group, generator=gen).to(dtype)
        min = torch.randn(rows, in_features // group, generator=gen) if with_min else None
        w = q.double().view(rows, -1, group) * scale.double()[..., None]
        w = (w if min is None else w + min.double()[..., None]).reshape(rows, in_features)
        x = torch.randn(in_features, generator=gen)
        off = differs(int8_matvec(x, q, scale, min, group), w, x)
        if off is not None:
            return f"int8, groups of {group}, {dtype} scales{', mins' if with_min else ''}: off by up to {off:.3g}"
    return None


@functools.lru_cache(maxsize=None)
def kernels_work() -> bool:
    """Build (once per machine), load and check the kernel; False, with a warning saying why, if that fails."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return _unavailable(f"it is written for x86-64 Linux, this is {sys.platform} {platform.machine()}")
    cc, cxx = compilers()
    missing = [c for c in (cc, cxx) if shutil.which(c) is None]
    if missing:
        return _unavailable(f"no compiler {' or '.join(missing)} on PATH (set CC and CXX)")
    try:
        target = library_path(cc, cxx)
        if not _intact(target):
            if target.exists():
                warnings.warn(f"{target} is damaged (sha256 differs); rebuilding it", stacklevel=2)
            _build(target, cc, cxx)
        torch.ops.load_library(str(target))
        torch.library.register_fake("gemma3_minimal::int4_matvec", _output_shape)
        torch.library.register_fake("gemma3_minimal::int8_matvec", _output_shape)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return _unavailable(f"building or loading it failed: {e}")
    problem = _self_check()
    if problem is not None:
        return _unavailable(f"its self-check against the dequantized product failed ({problem})")
    return True


def _unavailable(reason: str) -> bool:
    warnings.warn(f"the int4/int8 CPU kernels are not used ({reason}); quantized products use the compiled "
                  f"PyTorch kernels, 2-3x slower (set {ENV_SWITCH}=0 to silence this)", stacklevel=3)
    return False


def _output_shape(x: torch.Tensor, qweight: torch.Tensor, *args) -> torch.Tensor:
    """What torch.compile traces either operator with: an empty [out] (registered once the library is loaded)."""
    return x.new_empty(qweight.shape[0])
