"""The cache trusts nothing on disk: damaged float32 weights and tokenizer files are rebuilt (with a
warning naming them), and writes killed midway leave nothing behind after the next run.

Every test works in its own temporary cache folder ($GEMMA3_MINIMAL_CACHE) that links to the real,
verified GGUF. Rebuilding from the GGUF for real takes minutes on 2 cores (parsing it, dequantizing
the 270M, writing out its 262,144 pieces), so the builders are replaced by ones that return known content at once: what is
tested is the verification, the rebuild and the clean-up, on the library's own code paths.
"""

import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import gemma3_minimal.gguf_checkpoint as gguf_checkpoint
import gemma3_minimal.tokenizer as tokenizer
from gemma3_minimal.assets import GGUF_NAME, STALE_SECONDS, cache_dir, gguf_path, partial_path, remove_stale_partials, write_atomically
from gemma3_minimal.config import get_config
from gemma3_minimal.gguf_checkpoint import content_sha256, expected_names, load_gguf_state_dict
from gemma3_minimal.tokenizer import Gemma3Tokenizer, model_file

ASSETS = Path(gguf_checkpoint.__file__).with_name("assets.py")
CFG = get_config("270m")


@pytest.fixture(scope="module")
def real_files():
    """The real GGUF and tokenizer bytes from the default cache (verified), read once."""
    return gguf_path(), model_file().read_bytes()


@pytest.fixture
def cache(real_files, tmp_path, monkeypatch):
    """An empty cache folder holding only a link to the real GGUF."""
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / GGUF_NAME).symlink_to(real_files[0])
    monkeypatch.setenv("GEMMA3_MINIMAL_CACHE", str(folder))
    return folder


@pytest.fixture
def builds(monkeypatch):
    """Reading and dequantizing the GGUF replaced by small tensors under the 270M's names; counts the rebuilds."""
    count = []

    def dequantize(path, cfg):
        assert path == cache_dir() / GGUF_NAME and cfg == CFG  # the GGUF of the cache folder, verified by gguf_path()
        count.append(path)
        return {name: torch.full((2, 3), float(i)) for i, name in enumerate(sorted(expected_names(cfg)))}

    monkeypatch.setattr(gguf_checkpoint, "state_from_gguf", dequantize)
    return count


def f32_cache(folder: Path) -> Path:
    (path,) = folder.glob("*-f32.safetensors")
    return path


def load_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a verified cache loads without a word
        return load_gguf_state_dict()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".partial", ".tmp")) or p.name.startswith("tmp"))


# --- The float32 weights ---------------------------------------------------------------------------


def test_content_digest_sees_every_byte_name_dtype_and_shape():
    state = {"a": torch.arange(6, dtype=torch.float32), "b": torch.zeros(2, 2, dtype=torch.bfloat16)}
    digest = content_sha256(state)
    flipped = state["a"].clone()
    flipped.view(torch.uint8)[5] ^= 1
    assert content_sha256({"b": state["b"], "a": state["a"].clone()}) == digest  # order of the dict: irrelevant
    for changed in ({**state, "a": flipped}, {**state, "a": state["a"].reshape(2, 3)},
                    {**state, "b": torch.zeros(2, 2, dtype=torch.float16)}, {"a2": state["a"], "b": state["b"]},
                    {"a": state["a"]}):
        assert content_sha256(changed) != digest


def test_cache_records_its_content_and_loads_verified(cache, builds):
    first = load_quietly()
    assert len(builds) == 1
    with safe_open(str(f32_cache(cache)), "pt") as f:
        assert f.metadata()["content_sha256"] == content_sha256(first)
    second = load_quietly()
    assert len(builds) == 1  # read from the cache, not rebuilt
    assert second.keys() == first.keys() and all(torch.equal(second[k], first[k]) for k in first)
    assert leftovers(cache) == []


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # in the last tensor's data
    path.write_bytes(bytes(data))


def write_nan(path: Path) -> None:
    """An edit that keeps the recorded metadata: one weight becomes NaN."""
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state = load_file(str(path))
    state["model.embed_tokens.weight"][0, 0] = math.nan
    save_file(state, str(path), metadata=metadata)


def drop_tensor(path: Path) -> None:
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state = load_file(str(path))
    del state["model.layers.3.mlp.up_proj.weight"]
    save_file(state, str(path), metadata=metadata)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def old_version(path: Path) -> None:
    """What the library wrote before it recorded a content checksum."""
    with safe_open(str(path), "pt") as f:
        source = f.metadata()["gguf_sha256"]
    save_file(load_file(str(path)), str(path), metadata={"gguf_sha256": source})


@pytest.mark.parametrize("damage, words", [
    (flip_byte, "does not match the checksum recorded when it was written"),
    (write_nan, "does not match the checksum recorded when it was written"),
    (drop_tensor, r"lacks tensors \['model\.layers\.3\.mlp\.up_proj\.weight'\]"),
    (truncate, "is unreadable"),
    (old_version, "has no content checksum"),
])
def test_damaged_f32_cache_is_rebuilt_from_the_gguf(cache, builds, damage, words):
    good = load_quietly()
    path = f32_cache(cache)
    damage(path)
    with pytest.warns(UserWarning, match=rf"float32 cache {re.escape(str(path))} {words}.*; rebuilding it from the verified GGUF"):
        rebuilt = load_gguf_state_dict()
    assert len(builds) == 2
    assert rebuilt.keys() == good.keys() and all(torch.equal(rebuilt[k], good[k]) for k in good)
    again = load_quietly()  # the rebuilt file verifies
    assert len(builds) == 2 and all(torch.equal(again[k], good[k]) for k in good)
    assert leftovers(cache) == []


def test_real_f32_cache_is_verified_on_load(real_model, monkeypatch):
    """The default cache (the real 270M, built by `real_model` if absent) carries a content checksum
    that its tensors match, and is what the model was loaded from."""
    monkeypatch.setattr(gguf_checkpoint, "state_from_gguf", lambda path, cfg: pytest.fail("the real cache was rebuilt"))
    state = load_quietly()
    path = cache_dir() / f"gemma-3-270m-{gguf_checkpoint.expected_sha256()[:16]}-f32.safetensors"
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["content_sha256"] == content_sha256(state)
    assert set(state) == expected_names(CFG)
    assert torch.equal(state["model.embed_tokens.weight"], real_model.model.embed_tokens.weight)


# --- The tokenizer ---------------------------------------------------------------------------------


@pytest.fixture
def proto_builds(real_files, monkeypatch):
    """Building the tokenizer from the GGUF replaced by the real file's bytes; counts the rebuilds."""
    count = []

    def build(path):
        count.append(path)
        return real_files[1]

    monkeypatch.setattr(tokenizer, "build_model_proto", build)
    return count


def edit_piece(path: Path) -> None:
    """The piece "▁world" (id 1902) becomes "▁wprld": "Hello world" would no longer encode as [9259, 1902]."""
    piece = b"\x0a\x08" + "\u2581world".encode()  # protobuf: field 1, 8 bytes
    data = path.read_bytes()
    assert data.count(piece) == 1
    path.write_bytes(data.replace(piece, b"\x0a\x08" + "\u2581wprld".encode()))


@pytest.mark.parametrize("damage, words", [
    (truncate, "does not match the sha256 recorded when it was written"),
    (edit_piece, "does not match the sha256 recorded when it was written"),
    (lambda path: path.with_name(path.name + ".sha256").unlink(), "has no recorded sha256"),
])
def test_damaged_tokenizer_cache_is_rebuilt(cache, real_files, proto_builds, damage, words):
    path = model_file()
    assert len(proto_builds) == 1 and path.read_bytes() == real_files[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model_file() == path and len(proto_builds) == 1  # verified, not rebuilt
    damage(path)
    with pytest.warns(UserWarning, match=rf"tokenizer cache {re.escape(str(path))} {words}; rebuilding it from the verified GGUF"):
        assert model_file() == path
    assert len(proto_builds) == 2 and path.read_bytes() == real_files[1]
    assert Gemma3Tokenizer(path).encode("Hello world") == [9259, 1902]
    assert leftovers(cache) == []


# --- Interrupted writes ----------------------------------------------------------------------------

# A child process that loads assets.py on its own (no torch: it starts in a fraction of a second).
CHILD = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("assets", sys.argv[1])
assets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(assets)
if sys.argv[2] == "assemble":
    assets.gguf_path()
else:
    def write(partial):
        partial.write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    assets.write_atomically(assets.cache_dir() / sys.argv[2], write)
"""


def child(folder: Path, what: str) -> subprocess.Popen:
    env = {**os.environ, "GEMMA3_MINIMAL_CACHE": str(folder)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(ASSETS), what], env=env)


def test_write_killed_midway_is_cleaned_up_by_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA3_MINIMAL_CACHE", str(tmp_path))
    target = "gemma-3-270m-0123456789abcdef-f32.safetensors"
    proc = child(tmp_path, target)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    (partial,) = tmp_path.iterdir()
    assert partial.name.startswith(target + ".") and partial.name.endswith(f".{proc.pid}.partial")
    cache_dir()  # the next run
    assert list(tmp_path.iterdir()) == []


def test_gguf_assembly_killed_midway_is_cleaned_up(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA3_MINIMAL_CACHE", str(tmp_path))
    proc = child(tmp_path, "assemble")
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("*.partial")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    (partial,) = tmp_path.iterdir()
    assert partial.name.startswith(GGUF_NAME + ".") and partial.name.endswith(".partial")
    cache_dir()
    assert list(tmp_path.iterdir()) == []


def test_a_live_writer_keeps_its_partial_file(tmp_path):
    mine = partial_path(tmp_path / "x.safetensors")  # this process: alive
    mine.write_bytes(b"in progress")
    assert remove_stale_partials(tmp_path) == [] and mine.exists()
    old = time.time() - STALE_SECONDS - 60  # unless so old that its pid must have been reused
    os.utime(mine, (old, old))
    assert remove_stale_partials(tmp_path) == [mine] and not mine.exists()


def test_orphans_of_earlier_versions_are_removed(tmp_path):
    """Earlier versions assembled the GGUF in a `tmpXXXX` folder and wrote `<name>.<pid>.tmp`."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assembly = tmp_path / "tmpab12cd34"
    assembly.mkdir()
    (assembly / GGUF_NAME).write_bytes(b"part of a GGUF")
    f32 = tmp_path / f"gemma-3-270m-0123456789abcdef-f32.safetensors.{dead.pid}.tmp"
    f32.write_bytes(b"part of the weights")
    tok = tmp_path / "tmpq8w7e6r5.model.tmp"
    tok.write_bytes(b"part of a tokenizer")
    keep = tmp_path / "gemma3_tokenizer_0123456789abcdef_v1.model"
    keep.write_bytes(b"a finished file")
    assert sorted(remove_stale_partials(tmp_path)) == [f32]  # the anonymous ones are young: maybe in use
    old = time.time() - 3600
    for p in (assembly, tok, keep):
        os.utime(p, (old, old))
    assert sorted(remove_stale_partials(tmp_path)) == sorted([assembly, tok])
    assert list(tmp_path.iterdir()) == [keep]


def test_a_failed_write_leaves_nothing(tmp_path):
    def fail(partial):
        partial.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(tmp_path / "x.model", fail)
    assert list(tmp_path.iterdir()) == []
