"""Exercise checkers for notebook 05: KV-cache bytes, the ring-buffer update, parameter counts and a generation loop."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import torch

from ...config import get_config
from ...generate import generate_ids
from ...kv_cache import LayerCache
from ...memory import kv_cache_bytes, parameter_breakdown
from ...model import Gemma3ForCausalLM
from .engine import Case, CheckResult, Mistake, run_check


def _kv_cases() -> list[Case]:
    pairs = [("270m", 8), ("270m", 512), ("270m", 513), ("270m", 32_768), ("1b", 1), ("1b", 2_000),
             ("4b", 1_024), ("4b", 1_025), ("12b", 4_096), ("27b", 100), ("27b", 131_072)]
    return [Case(f"cfg=get_config({name!r}), context_len={n:,}, bytes_per_value={b}", (get_config(name), n, b))
            for (name, n), b in zip(pairs, [2, 2, 4, 2, 2, 1, 2, 2, 4, 2, 2])]


def _kv_bytes_reference(cfg, context_len: int, bytes_per_value: int) -> int:
    return kv_cache_bytes(cfg, context_len, bytes_per_value)


def _kv_bytes(cfg, context_len: int, bytes_per_value: int, local_slots: int, heads: int, k_and_v: int = 2) -> int:
    slots = sum(local_slots if kind == "sliding_attention" else context_len for kind in cfg.layer_types)
    return slots * k_and_v * heads * cfg.head_dim * bytes_per_value


KV_BYTES_MISTAKES = (
    Mistake("no_ring_buffer", "local (sliding) layers only keep the last `sliding_window` positions: "
            "their cache has min(sliding_window, context_len) slots, not context_len.",
            lambda c, n, b: _kv_bytes(c, n, b, n, c.num_key_value_heads)),
    Mistake("window_not_capped", "a local layer holds min(sliding_window, context_len) slots: "
            "with a short context it never fills its window.",
            lambda c, n, b: _kv_bytes(c, n, b, c.sliding_window, c.num_key_value_heads)),
    Mistake("keys_only", "the cache stores keys *and* values: count 2 tensors per layer.",
            lambda c, n, b: _kv_bytes(c, n, b, min(c.sliding_window, n), c.num_key_value_heads, 1)),
    Mistake("query_heads", "grouped-query attention caches only the K/V heads: use num_key_value_heads, "
            "not num_attention_heads.",
            lambda c, n, b: _kv_bytes(c, n, b, min(c.sliding_window, n), c.num_attention_heads)),
)


def check_kv_cache_bytes(fn: Callable[[Any, int, int], int]) -> CheckResult:
    """`fn(cfg, context_len, bytes_per_value) -> int`: bytes of the KV cache with ring buffers on local layers."""
    return run_check("kv_cache_bytes", fn, _kv_cases(), _kv_bytes_reference, "gemma3_minimal.memory.kv_cache_bytes",
                     KV_BYTES_MISTAKES, "sum over layers: slots x 2 (K and V) x kv_heads x head_dim x bytes_per_value.")


# --- the ring-buffer update of a local layer ----------------------------------------------------


def _ring_reference(cache_k: torch.Tensor, cache_pos: torch.Tensor, k: torch.Tensor, positions: torch.Tensor):
    """LayerCache.write on a one-sequence, one-head ring holding `cache_k` / `cache_pos`."""
    slots, dim = cache_k.shape
    layer = LayerCache(1, 1, slots, dim, ring=True, dtype=cache_k.dtype, device="cpu")
    layer.k[0, 0], layer.v[0, 0], layer.pos[:] = cache_k, cache_k, cache_pos
    layer.write(k[None, None], k[None, None], positions)
    return layer.k[0, 0], layer.pos


def _ring_after(length: int, slots: int, dim: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A ring of `slots` after `length` tokens (zeros and -1 in empty slots)."""
    k, pos = torch.zeros(slots, dim), torch.full((slots,), -1, dtype=torch.long)
    if length:
        k, pos = _ring_reference(k, pos, torch.randn(length, dim, generator=gen), torch.arange(length))
    return k, pos


def _ring_cases(n_random: int = 6, seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    picks = [(4, 0, 3), (4, 3, 1), (4, 6, 1), (4, 3, 3), (4, 0, 10), (4, 5, 6), (1, 2, 1)]
    picks += [(rng.randint(2, 8), rng.randint(0, 20), rng.randint(1, 12)) for _ in range(n_random)]
    cases = []
    for slots, length, t in picks:
        dim = 3
        cache_k, cache_pos = _ring_after(length, slots, dim, gen)
        label = (f"a ring of {slots} slots holding positions {cache_pos.tolist()}, "
                 f"writing positions {length}..{length + t - 1}")
        cases.append(Case(label, (cache_k, cache_pos, torch.randn(t, dim, generator=gen), torch.arange(length, length + t))))
    return cases


def _ring_shifted(cache_k, cache_pos, k, positions):
    slots = cache_k.shape[0]
    return torch.cat([cache_k, k])[-slots:], torch.cat([cache_pos, positions])[-slots:]


def _ring_first_kept(cache_k, cache_pos, k, positions):
    slots = cache_k.shape[0]
    k, positions = k[:slots], positions[:slots]
    cache_k, cache_pos = cache_k.clone(), cache_pos.clone()
    cache_k[positions % slots], cache_pos[positions % slots] = k, positions
    return cache_k, cache_pos


def _ring_slot_shifted(cache_k, cache_pos, k, positions):
    slots = cache_k.shape[0]
    cache_k, cache_pos = cache_k.clone(), cache_pos.clone()
    for p, row in zip(positions.tolist(), k):
        cache_k[(p + 1) % slots], cache_pos[(p + 1) % slots] = row, p
    return cache_k, cache_pos


def _ring_pos_not_updated(cache_k, cache_pos, k, positions):
    return _ring_reference(cache_k, cache_pos, k, positions)[0], cache_pos


RING_MISTAKES = (
    Mistake("shifted", "a ring buffer never moves what it holds: position p goes to slot p % slots and overwrites "
            "the oldest entry there (shifting everything left costs a copy of the whole cache per token).",
            _ring_shifted),
    Mistake("first_kept", "when more positions arrive than there are slots, only the *last* `slots` of them can "
            "still be seen: keep k[-slots:], positions[-slots:].", _ring_first_kept),
    Mistake("slot_off_by_one", "position p goes to slot p % slots (position 0 in slot 0), not (p + 1) % slots.",
            _ring_slot_shifted),
    Mistake("positions_not_updated", "update the slots' positions too: the mask is built from them, and a stale "
            "position makes an old key visible (or a new one invisible).", _ring_pos_not_updated),
)


def check_ring_write(fn: Callable[..., tuple]) -> CheckResult:
    """`fn(cache_k [S, D], cache_pos [S], k [T, D], positions [T]) -> (new cache_k, new cache_pos)`."""
    return run_check("ring_write", fn, _ring_cases(), _ring_reference, "gemma3_minimal.kv_cache.LayerCache.write",
                     RING_MISTAKES, "write the positions one at a time in a loop first: slot = p % slots.")


# --- parameter counts against the report's Table 1 -----------------------------------------------


def _counts_reference(cfg) -> tuple[int, int]:
    counts = parameter_breakdown(cfg)
    return counts.embedding, counts.non_embedding


def _counts(cfg, tied=True, qk_norm=True, kv_heads=None, mlp_matrices=3, block_norms=4, final_norm=True):
    d, hd = cfg.hidden_size, cfg.head_dim
    kv = cfg.num_key_value_heads if kv_heads is None else kv_heads
    block = 2 * d * cfg.num_attention_heads * hd + 2 * d * kv * hd + mlp_matrices * d * cfg.intermediate_size
    block += (2 * hd if qk_norm else 0) + block_norms * d
    embedding = cfg.vocab_size * d * (1 if tied else 2)
    return embedding, cfg.num_hidden_layers * block + (d if final_norm else 0)


COUNT_MISTAKES = (
    Mistake("head_not_tied", "the output head *is* the embedding matrix (tied weights): count vocab x hidden once.",
            lambda c: _counts(c, tied=False)),
    Mistake("kv_as_query_heads", "grouped-query attention: k_proj and v_proj have num_key_value_heads x head_dim "
            "outputs, not num_attention_heads x head_dim.", lambda c: _counts(c, kv_heads=c.num_attention_heads)),
    Mistake("mlp_two_matrices", "the GeGLU MLP has three matrices: gate, up (hidden -> intermediate) and down.",
            lambda c: _counts(c, mlp_matrices=2)),
    Mistake("qk_norm_not_counted", "each block also has the QK-norm weights: q_norm and k_norm, head_dim each.",
            lambda c: _counts(c, qk_norm=False)),
    Mistake("two_norms_per_block", "a Gemma 3 block has four RMSNorms of width hidden: before and after attention, "
            "before and after the MLP.", lambda c: _counts(c, block_norms=2)),
    Mistake("no_final_norm", "after the last block comes the final norm (hidden weights): it counts as non-embedding.",
            lambda c: _counts(c, final_norm=False)),
)


def check_parameter_counts(fn: Callable[[Any], tuple]) -> CheckResult:
    """`fn(cfg) -> (embedding, non_embedding)`: exact parameter counts of the text model, as Table 1 splits them."""
    cases = [Case(f"cfg=get_config({n!r})", (get_config(n),)) for n in ("tiny", "270m", "1b", "4b", "12b", "27b")]
    return run_check("parameter_counts", fn, cases, _counts_reference, "gemma3_minimal.memory.parameter_breakdown",
                     COUNT_MISTAKES, "count one block by hand: q, k, v, o, gate, up, down, the norms; then x layers.")


# --- a generation loop with the cache and top-p sampling -----------------------------------------

GENERATION_CONFIG = get_config("tiny").replace(vocab_size=96, num_hidden_layers=3, sliding_window_pattern=3,
                                               sliding_window=6, name="exercise")


@functools.lru_cache(maxsize=1)
def _generation_model() -> Gemma3ForCausalLM:
    """A tiny random model whose next token depends on the context, with a few likely tokens per step
    (the final norm scales by 1 + 3), so that top-p, the cache and sampling all change the output."""
    gen = torch.Generator().manual_seed(0)
    model = Gemma3ForCausalLM(GENERATION_CONFIG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.1 if name.endswith("embed_tokens.weight") else 0.3
            p.copy_(std * torch.randn(p.shape, generator=gen))
        model.model.norm.weight.fill_(3.0)
    return model.eval()


def _generate_reference(model, prompt_ids: list[int], max_new_tokens: int, top_p: float, seed: int) -> list[int]:
    return list(generate_ids(model, prompt_ids, max_new_tokens, temperature=1.0, top_p=top_p, seed=seed, stop_ids=()))


def _nucleus(logits: torch.Tensor, top_p: float, keep_crossing: bool = True) -> torch.Tensor:
    probs = logits.float().softmax(-1)
    sorted_probs, order = probs.sort(descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs
    drop = before >= top_p if keep_crossing else sorted_probs.cumsum(-1) > top_p
    drop[..., 0] = False
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


@torch.no_grad()
def _generate(model, prompt_ids, max_new_tokens, top_p, seed, keep_crossing=True, greedy=False, cache=True,
              sorted_draw=False):
    gen = torch.Generator().manual_seed(seed)
    kv = model.new_cache(len(prompt_ids) + max_new_tokens)
    logits = model(torch.tensor([prompt_ids]), kv)[:, -1]
    out = []
    for _ in range(max_new_tokens):
        if greedy:
            token = int(logits.argmax(-1))
        elif sorted_draw:  # the same nucleus, drawn from in sorted order
            probs, order = _nucleus(logits, top_p, keep_crossing).sort(descending=True)
            token = int(order[0, torch.multinomial(probs, 1, generator=gen)])
        else:
            token = int(torch.multinomial(_nucleus(logits, top_p, keep_crossing), 1, generator=gen))
        out.append(token)
        logits = model(torch.tensor([[token]]), kv if cache else None)[:, -1]
    return out


def _generation_cases(n_random: int = 3, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    vocab = GENERATION_CONFIG.vocab_size
    picks = [([5, 17, 42], 12, 0.9, 0), ([7], 16, 0.5, 1), (list(range(3, 13)), 8, 1.0, 2)]
    picks += [([rng.randrange(vocab) for _ in range(rng.randint(1, 9))], rng.randint(8, 20),
               rng.choice([0.3, 0.8, 0.95]), rng.randrange(100)) for _ in range(n_random)]
    return [Case(f"a tiny model (window {GENERATION_CONFIG.sliding_window}), prompt_ids={p}, max_new_tokens={n}, "
                 f"top_p={tp}, seed={s}", (_generation_model(), p, n, tp, s)) for p, n, tp, s in picks]


GENERATE_MISTAKES = (
    Mistake("top_p_drops_crossing_token", "the nucleus is the smallest set whose probability *reaches* top_p: keep "
            "the token that crosses it (drop a token only when the probability before it is already >= top_p).",
            lambda m, p, n, tp, s: _generate(m, p, n, tp, s, keep_crossing=False)),
    Mistake("drawn_in_sorted_order", "scatter the kept probabilities back to vocabulary order before "
            "`torch.multinomial`: the same nucleus drawn from in sorted order gives other tokens for the same seed.",
            lambda m, p, n, tp, s: _generate(m, p, n, tp, s, sorted_draw=True)),
    Mistake("greedy", "sample: `torch.multinomial(probs, 1, generator=generator)` from the top-p probabilities, "
            "not argmax.", lambda m, p, n, tp, s: _generate(m, p, n, tp, s, greedy=True)),
    Mistake("cache_not_passed", "feed each new token together with the cache, `model(ids, cache)`: without it the "
            "model sees one token and no context.", lambda m, p, n, tp, s: _generate(m, p, n, tp, s, cache=False)),
)


def check_generate(fn: Callable[..., list]) -> CheckResult:
    """`fn(model, prompt_ids, max_new_tokens, top_p, seed) -> list[int]`: cached decoding with top-p sampling."""
    return run_check("generate", fn, _generation_cases(), _generate_reference, "gemma3_minimal.generate.generate_ids",
                     GENERATE_MISTAKES, "print the kept tokens and their probabilities at the first step; "
                     "then check the cache's length grows by one per step.")
