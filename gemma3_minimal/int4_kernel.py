"""The performance layer's hand-written CPU kernel: int4 matrix-vector products for decoding.

torch.compile's fused int4 product (`quantize.quantized_matvec`) turns each nibble into a float
with about six vector instructions (mask, shift, widen, convert, subtract, scale) and so runs at
a third of the memory's speed on 2 cores. `kernels/int4_matvec.c` does it with two (a shift and a
table lookup), reads each row 64 bytes at a time and prefetches ahead; on the real 270M's
262,144 x 640 head it reads the 94 MB of integers and scales near the memory's speed
(benchmarks/int4_kernels.py, benchmarks/RESULTS.md). It is the same product in float32: each
weight is n * scale with n a signed 4-bit integer, summed in another order.

It is built here, once per machine, with the C compiler torch.compile already needs on the CPU
(`-O3 -march=native -fopenmp`), and registered as the operator `torch.ops.gemma3_minimal.int4_matvec`,
which torch.compile calls from its compiled step like any other operator. The library lands in the
cache folder under a name that hashes its sources, the compiler, torch's version and this CPU's
features; a damaged one (its sha256 no longer matches) is rebuilt. Loaded, it is checked once
against the dequantized product on random weights. Where it cannot be built, loaded or checked,
`int4_kernel_works()` is False, a warning says why once, and int4 products keep the compiled PyTorch
kernel: slower, never wrong. `GEMMA3_MINIMAL_INT4_KERNEL=0` turns it off (benchmarks compare both).
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
C_SOURCE, OP_SOURCE = SOURCES / "int4_matvec.c", SOURCES / "int4_op.cpp"
ENV_SWITCH = "GEMMA3_MINIMAL_INT4_KERNEL"
BUILD_SECONDS = 300  # a compiler that takes longer is taken as hung


def supports_int4_kernel(in_features: int, group_size: int) -> bool:
    """Whether the kernel handles this weight shape (else the compiled PyTorch kernel does)."""
    return in_features % 128 == 0 and (group_size in (32, 64) or (group_size % 128 == 0 and in_features % group_size == 0))


def int4_matvec(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """x [..., in] (one row) @ w.T -> [..., out] for a packed int4 w (`quantize.quantize_tensor`'s layout)."""
    y = torch.ops.gemma3_minimal.int4_matvec(x.reshape(-1), qweight, scale, group_size)
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
    obj = build / "int4_matvec.o"
    return [
        [cc, "-O3", "-march=native", "-fopenmp", "-fPIC", "-c", str(C_SOURCE), "-o", str(obj)],
        [cxx, "-O2", "-std=c++17", "-fPIC", "-shared", "-w", abi, *includes, f"-I{sysconfig.get_paths()['include']}",
         str(OP_SOURCE), str(obj), "-fopenmp", *[f"-L{p}" for p in libs], *[f"-Wl,-rpath,{p}" for p in libs],
         "-lc10", "-ltorch_cpu", "-o", str(so)],
    ]


def compilers() -> tuple[str, str]:
    """The C and C++ compilers: $CC and $CXX, else gcc and g++."""
    return os.environ.get("CC", "gcc"), os.environ.get("CXX", "g++")


def library_path(cc: str, cxx: str) -> Path:
    """Where this machine's build lives: named by a hash of the sources, torch's and Python's versions,
    the compilers' and this CPU's features (another CPU or compiler gets a build of its own)."""
    key = hashlib.sha256()
    for part in (C_SOURCE.read_bytes(), OP_SOURCE.read_bytes(), torch.__version__.encode(), sys.version.encode(),
                 _compiler_version(cc).encode(), _compiler_version(cxx).encode(), _cpu_features().encode()):
        key.update(part)
    folder = cache_dir() / "kernels"
    folder.mkdir(exist_ok=True)
    return folder / f"int4_matvec-{key.hexdigest()[:16]}.so"


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
    """None if the loaded kernel gives the product of the weights it packs on random ones (every
    supported kind of group, a row count that is not a multiple of 4), else what differed."""
    gen = torch.Generator().manual_seed(0)
    for group, in_features in ((32, 256), (64, 384), (128, 256), (256, 512)):
        packed = torch.randint(-128, 128, (67, in_features // 2), generator=gen, dtype=torch.int8)
        scale = torch.rand(67, in_features // group, generator=gen).to(torch.bfloat16)
        pairs = packed.view(67, -1, group // 2).int()
        n = torch.cat([(pairs << 28) >> 28, pairs >> 4], dim=-1)  # low nibbles, then high ones, signed
        w = (n.double() * scale.double()[..., None]).reshape(67, in_features)
        x = torch.randn(in_features, generator=gen)
        got = int4_matvec(x, packed, scale, group).double()
        # float32's bound for n products, doubled: the kernel rounds x * n and each chunk's scaling too
        bound = in_features * 2**-23 * (x.abs().double() @ w.abs().T)
        if not bool(((got - x.double() @ w.T).abs() <= bound).all()):
            return f"group size {group}: off by up to {(got - x.double() @ w.T).abs().max().item():.3g}"
    return None


@functools.lru_cache(maxsize=None)
def int4_kernel_works() -> bool:
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
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return _unavailable(f"building or loading it failed: {e}")
    problem = _self_check()
    if problem is not None:
        return _unavailable(f"its self-check against the dequantized product failed ({problem})")
    return True


def _unavailable(reason: str) -> bool:
    warnings.warn(f"the int4 CPU kernel is not used ({reason}); int4 products use the compiled PyTorch "
                  f"kernel, about 3x slower (set {ENV_SWITCH}=0 to silence this)", stacklevel=3)
    return False


def _output_shape(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """What torch.compile traces the operator with: an empty [out] (registered once the library is loaded)."""
    return x.new_empty(qweight.shape[0])
