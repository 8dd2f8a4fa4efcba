"""transformers' Gemma 3 270M, built from the same GGUF: the reference the notebooks, tests and benchmarks compare with.

transformers reads the GGUF with its own code (vocabulary, config and dequantization; slow, most of it
parsing the 262,144-piece vocabulary: see benchmarks/RESULTS.md). What it builds is saved once in the
asset cache as a plain transformers folder (`config.json`, `model.safetensors`, tokenizer files),
keyed by the GGUF's sha256 and transformers' version, with the sha256 of every file recorded when
it was written and checked on every load: a damaged or edited copy is rebuilt from the GGUF, with a
warning. Later loads take seconds, and the reference stays transformers' own reading of the file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import warnings
from pathlib import Path
from unittest import mock

import torch
import transformers
import transformers.modeling_gguf_pytorch_utils as gguf_utils
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from ..assets import cache_dir, expected_sha256, gguf_path, sha256_file, write_atomically

_CHECKSUMS = "sha256.json"  # file name -> sha256 of every other file in the folder


def reference_dir() -> Path:
    """The cached transformers folder for this GGUF and this transformers version (built if absent or damaged)."""
    folder = cache_dir() / f"transformers-{transformers.__version__}-gemma-3-270m-{expected_sha256()[:16]}"
    problem = _check(folder)
    if problem is None:
        return folder
    if folder.exists():
        warnings.warn(f"{problem}; rebuilding it from the verified GGUF", stacklevel=2)
        shutil.rmtree(folder, ignore_errors=True)
    try:
        write_atomically(folder, _build)
    except OSError:
        if _check(folder) is not None:  # not another process that finished the same build first
            raise
    return folder


def load_reference(dtype: torch.dtype = torch.float32):
    """(transformers' Gemma3ForCausalLM in eval mode, its tokenizer), both as transformers reads the GGUF."""
    folder = reference_dir()
    with _quiet():
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


@contextlib.contextmanager
def _quiet():
    """No progress bars from transformers: they would land in the notebooks' committed outputs. Its GGUF
    reader calls `tqdm` directly, past the switch of `transformers.utils.logging`: that name is swapped too."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with mock.patch.object(gguf_utils, "tqdm", functools.partial(tqdm, disable=True)):
            yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def reference_tokenizer(**kwargs):
    """transformers' tokenizer as it reads the GGUF; `kwargs` go to `AutoTokenizer.from_pretrained`."""
    return AutoTokenizer.from_pretrained(str(reference_dir()), **kwargs)


def load_from_gguf(dtype: torch.dtype = torch.float32):
    """(model, tokenizer) as transformers reads the GGUF itself: the slow path `reference_dir` caches."""
    path = gguf_path()
    with _quiet():
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return model.eval(), tok


def _build(folder: Path) -> None:
    model, tok = load_from_gguf()
    write_reference(folder, model, tok)
    check_same_as_gguf(folder, model, tok)


def write_reference(folder: Path, model, tok) -> None:
    """Write a GGUF-loaded transformers model and tokenizer into the new `folder` as a plain checkpoint."""
    folder.mkdir()
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # transformers marks GGUF-loaded models; the weights are float32 now
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied: one copy
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(str(folder))
    sums = {p.name: sha256_file(p) for p in sorted(folder.iterdir())}
    (folder / _CHECKSUMS).write_text(json.dumps(sums, indent=1) + "\n")


def _check(folder: Path) -> str | None:
    """None if `folder` holds exactly the files recorded when it was written, else what is wrong."""
    record = folder / _CHECKSUMS
    if not record.is_file():
        return f"transformers reference {folder} is incomplete" if folder.exists() else "not built yet"
    try:
        sums = json.loads(record.read_text())
    except ValueError:
        return f"transformers reference {folder} has an unreadable checksum record"
    present = {p.name for p in folder.iterdir()} - {_CHECKSUMS}
    if present != set(sums):
        return f"transformers reference {folder} has files {sorted(present)}, expected {sorted(sums)}"
    for name, digest in sums.items():
        if sha256_file(folder / name) != digest:
            return f"transformers reference {folder}: {name} does not match its recorded sha256 (damaged or edited)"
    return None


# Strings the saved tokenizer must split exactly as the GGUF-read one: spaces, tabs and newlines, digits,
# scripts, emoji, control tokens and the image markers.
_SAMPLES = (
    "Hello world", "  two  spaces\t\ttabs\n\n\nnewlines ", "1234567 + 89 = 1234656", "Grüße, señor: ça va ?",
    "日本語のテキスト、中文文本。", "Привет, мир", "مرحبا بالعالم", "👩‍👩‍👧 🎉", "def f(x):\n    return x ** 2",
    "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", "<start_of_image><image_soft_token><end_of_image>",
)


def check_same_as_gguf(folder: Path, model, tok) -> None:
    """Raise unless `folder` loads back to exactly `model` and `tok`: every weight, the config, the vocabulary,
    the special tokens, the chat template and the ids of sample strings."""
    with _quiet():
        saved = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    ours, theirs = model.state_dict(), saved.state_dict()
    wrong = sorted(k for k in ours.keys() | theirs.keys() if k not in ours or k not in theirs or not torch.equal(ours[k], theirs[k]))
    skip = {"quantization_config", "_name_or_path"}  # how it was loaded, and from where
    config = {k: v for k, v in model.config.to_dict().items() if k not in skip}
    saved_config = {k: v for k, v in saved.config.to_dict().items() if k not in skip}
    wrong += [f"config.{k}" for k in config.keys() | saved_config.keys() if config.get(k) != saved_config.get(k)]
    saved_tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.get_vocab() != saved_tok.get_vocab():
        wrong.append("the vocabulary")
    if tok.all_special_tokens != saved_tok.all_special_tokens or tok.chat_template != saved_tok.chat_template:
        wrong.append("special tokens or chat template")
    wrong += [repr(s) for s in _SAMPLES if tok.encode(s) != saved_tok.encode(s)]
    if wrong:
        raise RuntimeError(f"the saved transformers reference differs from the GGUF-loaded one in {wrong[:8]}")
