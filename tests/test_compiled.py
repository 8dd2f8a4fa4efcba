"""The compiled decoding of the performance layer (`compiled.py`): a static KV cache and a step
under torch.compile give the eager tokens, also when generations overlap."""

import threading

import pytest
import torch

from gemma3_minimal import Gemma3ForCausalLM, generate_ids, get_config, speed_up
from gemma3_minimal.compiled import StaticKVCache, decode_step
from hf_reference import random_pair

TINY = get_config("tiny")


def test_static_cache_and_decode_step_equal_the_dynamic_cache():
    """A static cache shows global layers all their slots (empty ones masked): same logits, fixed shapes."""
    ours, _ = random_pair(TINY, seed=4)
    ids = torch.randint(0, TINY.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3))
    dynamic, static = ours.new_cache(max_len=64, batch_size=2), StaticKVCache(TINY, 2, 64)
    with torch.no_grad():
        ours(ids[:, :12], dynamic), ours(ids[:, :12], static)
        for i in range(12, 40):
            ref = ours(ids[:, i:i + 1], dynamic)
            positions = torch.tensor([static.length])
            static.advance(1)
            got = decode_step(ours, ids[:, i:i + 1], positions, static)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    global_layer = TINY.layer_types.index("full_attention")
    assert static[global_layer].k.shape[2] == 64 and static.length == dynamic.length == 40


def compiled_model(seed: int = 5) -> Gemma3ForCausalLM:
    torch.manual_seed(seed)
    return speed_up(Gemma3ForCausalLM(TINY).eval())


PROMPT = torch.randint(0, TINY.vocab_size, (12,), generator=torch.Generator().manual_seed(4)).tolist()
OTHER = PROMPT[::-1][:7]


def test_compiled_greedy_decoding_equals_eager_and_reuses_its_cache():
    """generate_ids(compile=True): torch.compile traces the whole step (fullgraph) and picks the same tokens."""
    model = compiled_model()
    eager = list(generate_ids(model, PROMPT, max_new_tokens=24, stop_ids=()))
    compiled = list(generate_ids(model, PROMPT, max_new_tokens=24, stop_ids=(), compile=True))
    assert compiled == eager and len(eager) == 24
    (cache,) = model._static_caches  # returned to the model's pool when the generation ended
    # A second prompt reuses the same static cache (emptied in place) and the same compiled step.
    assert list(generate_ids(model, OTHER, 20, stop_ids=(), compile=True)) == list(generate_ids(model, OTHER, 20, stop_ids=()))
    assert model._static_caches == [cache] and "_static_cache" not in str(list(model.state_dict()))


def test_interleaved_compiled_streams_each_get_their_own_cache():
    model = compiled_model()
    expected = [list(generate_ids(model, p, 20, stop_ids=())) for p in (PROMPT, OTHER)]
    streams = [generate_ids(model, p, 20, stop_ids=(), compile=True) for p in (PROMPT, OTHER)]
    got = [[], []]
    for _ in range(20):  # advance the two generators in turns
        for i, s in enumerate(streams):
            got[i].append(next(s))
    assert got == expected
    assert len(model._static_caches) == 0  # both still open: each holds its own cache
    for s in streams:
        s.close()
    assert len(model._static_caches) == 2


def test_compiled_generation_in_two_threads_equals_sequential():
    model = compiled_model()
    prompts = [PROMPT, OTHER, PROMPT[3:], OTHER[1:]]
    expected = [list(generate_ids(model, p, 16, stop_ids=())) for p in prompts]
    got = [None] * len(prompts)

    def run(i):
        got[i] = list(generate_ids(model, prompts[i], 16, stop_ids=(), compile=True))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_compile_needs_a_sped_up_model():
    model = Gemma3ForCausalLM(TINY).eval()
    with pytest.raises(ValueError, match="speed_up"):
        next(generate_ids(model, PROMPT, 4, compile=True))
