"""Bad input gets a clear error that says what was wrong (text model, weights, presets)."""

import numpy as np
import pytest
import torch

import gemma3_minimal as g3
from gemma3_minimal.assets import gguf_path, verify_gguf
from gemma3_minimal.gguf_checkpoint import load_gguf_state_dict, open_gguf, read_tensors

TINY = g3.get_config("tiny")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return g3.Gemma3ForCausalLM(TINY).eval()


@pytest.mark.parametrize(
    "ids, error, words",
    [
        (torch.tensor([[1, 2, TINY.vocab_size]]), ValueError, f"token id {TINY.vocab_size} is outside the vocabulary"),
        (torch.tensor([[1, -1, 2]]), ValueError, "token id -1 is outside the vocabulary"),
        (torch.zeros((1, 0), dtype=torch.long), ValueError, "input_ids is empty"),
        (torch.tensor([[1.0, 2.0]]), TypeError, "integer token ids, got dtype torch.float32"),
        (torch.tensor([[1, 2]], dtype=torch.uint8), TypeError, "dtype torch.uint8; use torch.long (or torch.int32)"),
        (torch.tensor([[1, 2]], dtype=torch.int16), TypeError, "dtype torch.int16; use torch.long (or torch.int32)"),
        (torch.tensor([[True, False]]), TypeError, "integer token ids, got dtype torch.bool"),
        (torch.tensor([1, 2, 3]), ValueError, "must be [batch, seq], got shape (3,)"),
        ([[1, 2, 3]], TypeError, "must be a torch.Tensor of token ids, got list"),
        (torch.zeros((1, TINY.max_position_embeddings + 1), dtype=torch.long), ValueError,
         "the input: 4097 positions exceed the context of tiny (4096 positions)"),
    ],
)
def test_bad_input_ids(tiny_model, ids, error, words):
    with pytest.raises(error) as info:
        tiny_model(ids)
    assert words in str(info.value)


def test_int32_ids_equal_long_ids(tiny_model):
    ids = torch.tensor([[2, 7, 300, 511]])
    with torch.no_grad():
        assert torch.equal(tiny_model(ids.int()), tiny_model(ids))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(prompt_ids=[2, 3.0]), TypeError, "prompt_ids must be integer token ids; item 1 is 3.0 (float)"),
        (dict(prompt_ids=torch.tensor([2.7, 3.2])), TypeError, "item 0 is 2.7"),
        (dict(prompt_ids=[2, True]), TypeError, "item 1 is True (bool)"),
        (dict(prompt_ids=torch.tensor([[2, 3]])), TypeError, "item 0 is [2, 3] (list)"),
        (dict(prompt_ids=[]), ValueError, "input_ids is empty"),
        (dict(max_new_tokens=2.5), TypeError, "max_new_tokens must be an integer, got 2.5"),
        (dict(max_new_tokens=float("nan")), TypeError, "max_new_tokens must be an integer, got nan"),
        (dict(max_new_tokens=True), TypeError, "max_new_tokens must be an integer, got True"),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be >= 0, got -1"),
        (dict(temperature=float("nan")), ValueError, "temperature must be a finite number >= 0 (0 is greedy), got nan"),
        (dict(temperature=float("inf")), ValueError, "temperature must be a finite number >= 0 (0 is greedy), got inf"),
        (dict(temperature="hot"), TypeError, "temperature must be a number, got 'hot'"),
        (dict(top_k=0), ValueError, "top_k must be an integer >= 1 or None, got 0"),  # greedy: checked all the same
        (dict(top_k=2.5), ValueError, "top_k must be an integer >= 1 or None, got 2.5"),
        (dict(top_p=0.0), ValueError, "top_p must be a number in (0, 1] or None, got 0.0"),
        (dict(top_p=float("nan")), ValueError, "top_p must be a number in (0, 1] or None, got nan"),
        (dict(temperature=0.7, top_p=1.5), ValueError, "top_p must be a number in (0, 1] or None, got 1.5"),
    ],
)
def test_bad_generation_settings(tiny_model, kwargs, error, words):
    """Refused before the prompt is read, not truncated or sampled uniformly (inf), greedy or not."""
    args = dict(prompt_ids=[2, 17, 30], max_new_tokens=3) | kwargs
    with pytest.raises(error) as info:
        next(g3.generate_ids(tiny_model, **args))
    assert words in str(info.value)


def test_integer_prompts_of_every_kind_generate_the_same(tiny_model):
    ids = [2, 17, 30]
    expected = list(g3.generate_ids(tiny_model, ids, max_new_tokens=4))
    for same in (torch.tensor(ids), torch.tensor(ids, dtype=torch.int32), np.array(ids), tuple(ids)):
        assert list(g3.generate_ids(tiny_model, same, max_new_tokens=4)) == expected


def test_cache_overflow_is_refused(tiny_model):
    cache = tiny_model.new_cache(max_len=4)
    tiny_model(torch.tensor([[1, 2, 3]]), cache)
    with pytest.raises(ValueError, match="KV cache full: it was built for 4 positions and 5 were asked for"):
        tiny_model(torch.tensor([[4, 5]]), cache)


def test_generation_past_the_context_is_refused(tiny_model):
    words = r"max_new_tokens \(200\): 4200 positions exceed the context of tiny \(4096 positions\)"
    with pytest.raises(ValueError, match=words):
        list(g3.generate_ids(tiny_model, [2] * 4000, max_new_tokens=200))


@pytest.mark.parametrize("name", ["2b", "gemma3-270m", "", None])
def test_unknown_preset(name):
    with pytest.raises(ValueError, match="unknown preset .* choose one of tiny, 270m, 1b, 4b, 12b, 27b"):
        g3.get_config(name)


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; call gemma3_minimal.assets.gguf_path"):
        verify_gguf(tmp_path / "nothing.gguf")


def test_corrupt_gguf_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(1000))
    for load in (verify_gguf, open_gguf, load_gguf_state_dict):
        with pytest.raises(ValueError, match="is corrupt or not the Gemma 3 270M Q4_K_M file"):
            load(bad)


def test_truncated_copy_of_the_real_gguf(tmp_path):
    real = gguf_path()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(real.read_bytes()[: 10_000_000])
    with pytest.raises(ValueError, match="corrupt"):
        load_gguf_state_dict(cut)


@pytest.mark.parametrize("cut", [10, 100_000, 10_000_000])
def test_read_tensors_refuses_damaged_files(tmp_path, cut):
    """Cut in the header, in the vocabulary, and in the tensor data: a clear error each time."""
    bad = tmp_path / "cut.gguf"
    with open(gguf_path(), "rb") as f:
        bad.write_bytes(f.read(cut))
    with pytest.raises(ValueError, match="is not a readable GGUF file .*delete it"):
        read_tensors(bad)
    bad.write_bytes(b"GGUX" + bytes(100))
    with pytest.raises(ValueError, match="not GGUF v2 or later"):
        read_tensors(bad)


def test_presets_without_bundled_weights_are_refused():
    with pytest.raises(ValueError, match="only the 270M ships with this package"):
        g3.load_model("1b")


def test_bad_sampling_settings():
    logits = torch.randn(1, 10)
    for kwargs, words in [({"temperature": -1}, "temperature"), ({"temperature": 1, "top_k": 0}, "top_k"),
                          ({"temperature": 1, "top_p": 1.5}, "top_p")]:
        with pytest.raises(ValueError, match=words):
            g3.sample_next(logits, **kwargs)
