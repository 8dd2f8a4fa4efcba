"""Long context on the real model: the helpers and figures of the long-context notebook.

Only 3 of the 270M's 18 layers can look further back than 512 tokens (the 5:1 layout, Gemma 3
report, section 2). These helpers measure what that means on the real weights:

- `with_config` runs the same weights under another configuration (the global layers' RoPE base,
  linear RoPE interpolation, every layer local) without copying a single weight;
- `Needle`, `insert_needles`, `question_ids`: pass-key prompts; `answer_log_prob` and
  `answer_correct` score an answer from logits;
- `read_long` reads one long sequence in chunks through a KV cache, recording the next-token loss
  at every position and, at chosen lengths, asking each pass-key question on a copy of the cache;
- `attention_by_distance`: where a global layer's attention mass goes, by distance from the query.

The heavy runs live in `benchmarks/long_context_quality.py`; the notebook plots its saved results.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from ..masks import attention_mask
from ..model import Gemma3ForCausalLM
from ..rope import apply_rope, rope_cos_sin, rope_inv_freq

LONG_TEXT = Path(__file__).resolve().parents[2] / "data" / "kjv_genesis.txt"

# Fields that change how the same weights run, never the weights' shapes.
WEIGHT_FREE_FIELDS = frozenset({
    "rope_theta", "rope_scaling_factor", "rope_local_base_freq", "sliding_window",
    "sliding_window_pattern", "max_position_embeddings", "name",
})


# --- the text ------------------------------------------------------------------------------------


def long_text_ids(tok, n_tokens: int, path: Path = LONG_TEXT) -> list[int]:
    """`<bos>` and the first `n_tokens - 1` tokens of the long text (data/kjv_genesis.txt by default)."""
    ids = [tok.bos_id] + tok.encode(Path(path).read_text(encoding="utf-8"))
    if n_tokens > len(ids):
        raise ValueError(f"{path.name} has {len(ids):,} tokens with <bos>; ask for at most that many, not {n_tokens:,}")
    return ids[:n_tokens]


# --- the same weights, another configuration -----------------------------------------------------


def with_config(model: Gemma3ForCausalLM, **changes) -> Gemma3ForCausalLM:
    """A model that shares every weight of `model` but runs with `model.config.replace(**changes)`.

    Only fields that leave the weights' shapes alone may change (`WEIGHT_FREE_FIELDS`): e.g.
    `rope_theta=10_000` (global layers with the local base), `rope_scaling_factor=8` (x8 linear
    interpolation on global layers), `sliding_window_pattern=19` (no global layer among 18).
    Nothing is copied: a change to one model's weights shows in the other.
    """
    if not isinstance(model, Gemma3ForCausalLM):
        raise TypeError(f"with_config takes a text Gemma3ForCausalLM, got {type(model).__name__}")
    other = sorted(set(changes) - WEIGHT_FREE_FIELDS)
    if other:
        raise ValueError(f"with_config only changes fields that keep the weights: {sorted(WEIGHT_FREE_FIELDS)}; "
                         f"{other} would need other weights (build and load a new model instead)")
    cfg = model.config.replace(**changes)
    with torch.device("meta"):
        twin = Gemma3ForCausalLM(cfg)
    # Same module classes (the fast subclasses included), so the same products run.
    for mine, theirs in zip(twin.modules(), model.modules()):
        mine.__class__ = theirs.__class__
    twin.load_state_dict(model.state_dict(), assign=True)
    twin.tie_weights()
    if "compiled_decoding" in model.__dict__:  # see fast.speed_up: bound to its own model
        twin.__dict__["compiled_decoding"] = type(model.__dict__["compiled_decoding"])(
            model.__dict__["compiled_decoding"].func, twin)
    return twin.train(model.training)


def every_layer_local(model: Gemma3ForCausalLM) -> Gemma3ForCausalLM:
    """`model`'s weights with every layer local: no layer sees more than `sliding_window` tokens back."""
    cfg = model.config
    return with_config(model, sliding_window_pattern=cfg.num_hidden_layers + 1, name=f"{cfg.name}-all-local")


def visible_positions(query_pos: int, window: Optional[int] = None) -> torch.Tensor:
    """The key positions a query at `query_pos` attends to: a local layer's window (`window`) or, with
    None, a global layer's whole prefix. Built from the library's `attention_mask`."""
    keys = torch.arange(query_pos + 1)
    return keys[attention_mask(torch.tensor([query_pos]), keys, window)[0]]


# --- pass keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    """A pass key hidden in a long text: `label` tells needles apart, `key` is the digits to recall."""

    label: str
    key: str

    def __post_init__(self) -> None:
        if not self.key.isdigit():
            raise ValueError(f"a pass key is digits only, got {self.key!r}")

    @property
    def sentence(self) -> str:
        return f"The pass key for the {self.label} is {self.key}. Remember it: the pass key for the {self.label} is {self.key}."

    @property
    def question(self) -> str:
        return f"What is the pass key for the {self.label}? The pass key for the {self.label} is"


def needle_ids(tok, needle: Needle) -> list[int]:
    """The needle sentence as tokens, set apart from the text around it by blank lines."""
    return tok.encode(f"\n\n{needle.sentence}\n\n")


def insert_needles(tok, filler: Sequence[int], needles: Sequence[tuple[int, Needle]]) -> tuple[list[int], list[int]]:
    """`filler` with each needle's sentence inserted before filler token `offset`, for (offset, needle) pairs.

    Returns the ids and each needle's first position in them (in the order given).
    """
    offsets = [offset for offset, _ in needles]
    if offsets != sorted(offsets) or any(not 0 < o < len(filler) for o in offsets):
        raise ValueError(f"needle offsets must increase and lie inside the filler (1..{len(filler) - 1}), got {offsets}")
    ids, starts, done = [], [], 0
    for offset, needle in needles:
        ids += filler[done:offset]
        starts.append(len(ids))
        ids += needle_ids(tok, needle)
        done = offset
    return ids + list(filler[done:]), starts


def question_ids(tok, needle: Needle) -> tuple[list[int], list[int]]:
    """(question, answer): the question's tokens and the answer's (a space and the digits, one token each).

    The answer is cut from the tokens of question + answer, so it is tokenized as in the whole.
    """
    question = tok.encode(f"\n\n{needle.question}")
    whole = tok.encode(f"\n\n{needle.question} {needle.key}")
    if whole[: len(question)] != question:
        raise ValueError(f"the question of {needle} does not tokenize as a prefix of question + answer")
    return question, whole[len(question):]


def answer_log_prob(logits: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
    """log p(ids[start:] | what comes before): a float32 scalar, from logits [T, vocab] of ids [T].

    The logits at position t predict token t + 1, so the answer's tokens are scored by the logits
    one position earlier: log_softmax(logits[start - 1 : T - 1]) at ids[start:].
    """
    if not 1 <= start < ids.shape[0]:
        raise ValueError(f"start must be in 1..{ids.shape[0] - 1} (a prefix before the answer), got {start}")
    log_probs = torch.log_softmax(logits[start - 1 : -1].float(), dim=-1)
    return log_probs.gather(-1, ids[start:, None]).sum()


def answer_correct(logits: torch.Tensor, ids: torch.Tensor, start: int) -> bool:
    """True when greedy decoding from ids[:start] reproduces ids[start:] (every predicted token right)."""
    return bool((logits[start - 1 : -1].argmax(-1) == ids[start:]).all())


# --- attention at a distance ---------------------------------------------------------------------


def attention_weights(q: torch.Tensor, k: torch.Tensor, q_pos: int, k_pos: torch.Tensor, scaling: float,
                      window: Optional[int] = None) -> torch.Tensor:
    """[H, Tk] float32 softmax weights of one query per head, q [H, D], over keys k [K, Tk, D] at k_pos [Tk].

    Query head h reads K/V head h // (H / K), as in `layers.grouped_attention`; masked keys get 0.
    """
    H, K = q.shape[0], k.shape[0]
    scores = torch.einsum("hd,htd->ht", q.float(), k.float().repeat_interleave(H // K, dim=0)) * scaling
    mask = attention_mask(torch.tensor([q_pos]), k_pos, window)[0]
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


def mass_by_distance(weights: torch.Tensor, q_pos: int, k_pos: torch.Tensor, edges: Sequence[int]) -> torch.Tensor:
    """[H, len(edges) - 1]: the attention mass on keys at distance q_pos - k in [edges[i], edges[i + 1])."""
    distance = q_pos - k_pos
    bins = [(distance >= lo) & (distance < hi) & (k_pos >= 0) for lo, hi in zip(edges[:-1], edges[1:])]
    return torch.stack([weights[:, b].sum(-1) for b in bins], dim=-1)


def distance_edges(max_distance: int) -> list[int]:
    """0, 1, then powers of two up to past `max_distance`: bins [0, 1), [1, 2), [2, 4), ..."""
    edges = [0, 1]
    while edges[-1] <= max_distance:
        edges.append(edges[-1] * 2)
    return edges


class QueryCatcher:
    """Keeps the normalized queries [B, H, T, D] of some layers (before RoPE) from the next forward pass."""

    def __init__(self, model: Gemma3ForCausalLM, layers: Sequence[int]):
        self.queries: dict[int, torch.Tensor] = {}
        self.handles = [
            model.model.layers[i].self_attn.q_norm.register_forward_hook(self._keeper(i)) for i in layers
        ]

    def _keeper(self, i: int) -> Callable:
        def keep(module, args, out):
            self.queries[i] = out.detach()
        return keep

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def global_layers(model: Gemma3ForCausalLM) -> list[int]:
    return [i for i, layer in enumerate(model.model.layers) if not layer.is_sliding]


# --- one long read -------------------------------------------------------------------------------


@dataclass
class Question:
    """A pass-key question about the needle at `needle_start`..`needle_end` (exclusive)."""

    needle: Needle
    needle_start: int
    needle_end: int
    question: list[int]
    answer: list[int]


@dataclass
class LongRead:
    """What `read_long` measured: per-position losses, one row per question asked, and timings."""

    losses: torch.Tensor  # [T - 1] float32: loss of predicting token t + 1 at position t; NaN where skipped
    answers: list[dict] = field(default_factory=list)
    prefill_s: float = 0.0  # the model's forward passes over the text, without losses and questions
    marks: list[tuple[int, float]] = field(default_factory=list)  # (tokens read, prefill_s so far) per chunk
    loss_s: float = 0.0
    questions_s: float = 0.0


@torch.no_grad()
def read_long(
    model: Gemma3ForCausalLM,
    ids: Sequence[int],
    checkpoints: Sequence[int] = (),
    questions: Sequence[Question] = (),
    chunk: int = 1024,
    loss_every: int = 1,
    sliding: bool = True,
    head_chunk: int = 256,
    measure: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: Optional[Callable[[int], None]] = None,
    jump: Optional[tuple[int, int]] = None,
    dense_until: int = 0,
) -> LongRead:
    """Read `ids` in chunks through a KV cache (`model.new_cache(len(ids), sliding=sliding)`).

    - Losses: at every `loss_every`-th position, the next-token loss (natural log).
    - Questions: once the first `c` tokens are read, for each checkpoint `c`, every question whose
      needle lies wholly before `c` is asked on a copy of the cache: the question and the answer
      are appended after position c - 1, and the answer is scored (`answer_correct`,
      `answer_log_prob`). On models with global layers, the attention of each global layer's heads
      from the question's last token (which predicts the answer's first token) is recorded by
      distance (`mass_by_distance`) and on the needle.
    - `measure()` wraps each forward pass over the text (the benchmark measures memory with it);
      `progress(n)` is told how many tokens were read; `read.marks` holds the prefill time so far
      at the end of each chunk.
    - `jump=(index, extra)` gives the tokens from `index` on (questions included) positions
      `extra` further on: a global layer then sees the earlier text `extra` positions further back,
      as if `extra` tokens lay in between (the model needs `max_position_embeddings` for it).
      Distances are in positions. Losses are taken at every position before `dense_until` too.
    Gives the same numbers as one forward pass over each prefix, up to float summation order.
    """
    T = len(ids)
    ids_t = torch.tensor([list(ids)])
    checkpoints = sorted(set(checkpoints))
    if checkpoints and not 1 <= checkpoints[0] <= checkpoints[-1] <= T:
        raise ValueError(f"checkpoints must lie in 1..{T} (the length of ids), got {checkpoints}")
    longest = max((len(q.question) + len(q.answer) for q in questions), default=0)
    index, extra = jump if jump is not None else (T, 0)
    pos = torch.arange(T + longest)
    pos[index:] += extra
    cache = model.new_cache(T + longest + extra, sliding=sliding)
    losses = torch.full((T - 1,), float("nan"))
    head = model.lm_head
    read = LongRead(losses)
    stops = sorted(set(range(chunk, T, chunk)) | set(checkpoints) | {T})
    start = 0
    for stop in stops:
        t0 = time.perf_counter()
        with measure():
            hidden = model.model(model.model.embed(ids_t[:, start:stop]), pos[start:stop], cache)[0]  # [stop - start, hidden]
        t1 = time.perf_counter()
        read.prefill_s += t1 - t0
        read.marks.append((stop, read.prefill_s))
        wanted = [p for p in range(start, min(stop, T - 1)) if p % loss_every == 0 or p < dense_until]
        for i in range(0, len(wanted), head_chunk):
            rows = torch.tensor(wanted[i:i + head_chunk])
            losses[rows] = F.cross_entropy(head(hidden[rows - start]).float(), ids_t[0, rows + 1], reduction="none")
        del hidden  # nothing of this chunk stays alive during the next one (the benchmark measures memory)
        t2 = time.perf_counter()
        read.loss_s += t2 - t1
        if stop in checkpoints:
            for q in questions:
                if q.needle_end <= stop:
                    read.answers.append(ask(model, cache, stop, q, pos))
        read.questions_s += time.perf_counter() - t2
        if progress is not None:
            progress(stop - start)
        start = stop
    return read


def ask(model: Gemma3ForCausalLM, cache, length: int, q: Question, pos: torch.Tensor) -> dict:
    """Ask `q` after the first `length` tokens held by `cache` (left unchanged); score the answer.

    `pos[i]` is the position of token i (the text's, then the question's and the answer's)."""
    fork = copy.deepcopy(cache)
    asked = torch.tensor([q.question + q.answer])  # the answer's last token only pads the logits' rows
    layers = global_layers(model)
    catcher = QueryCatcher(model, layers)
    try:
        hidden = model.model(model.model.embed(asked), pos[length:length + asked.shape[1]], fork)[0]
    finally:
        catcher.remove()
    n_q = len(q.question)
    logits = model.lm_head(hidden[n_q - 1:]).float()  # rows for q[-1:] + answer; all but the last predict it
    ids = torch.tensor(q.question[-1:] + q.answer)
    row = {
        "length": length, "label": q.needle.label, "distance": int(pos[length] - pos[q.needle_start]),
        "needle_start": q.needle_start, "correct": answer_correct(logits, ids, 1),
        "log_prob": float(answer_log_prob(logits, ids, 1)),
        "predicted": logits[:-1].argmax(-1).tolist(), "answer": q.answer,
    }
    if layers:
        q_pos = int(pos[length + n_q - 1])
        cfg = model.config
        cos, sin = rope_cos_sin(torch.tensor([q_pos]), rope_inv_freq(cfg.head_dim, cfg.rope_theta,
                                                                     cfg.rope_scaling_factor))
        edges = distance_edges(q_pos)
        row["attention"] = {}
        for i in layers:
            attn = model.model.layers[i].self_attn
            query = apply_rope(catcher.queries[i][:, :, n_q - 1:n_q], cos, sin)[0, :, 0]  # [H, D]
            layer_cache = fork[i]
            k_pos = layer_cache.pos
            weights = attention_weights(query, layer_cache.k[0], q_pos, k_pos, attn.scaling, attn.sliding_window)
            on_needle = (k_pos >= q.needle_start) & (k_pos < q.needle_end)
            row["attention"][str(i)] = {
                "edges": edges,
                "mass": mass_by_distance(weights, q_pos, k_pos, edges).tolist(),
                "on_needle": weights[:, on_needle].sum(-1).tolist(),
            }
    return row


# --- summaries and figures -----------------------------------------------------------------------


def bucket_means(losses: Sequence[float], edges: Sequence[int]) -> list[float]:
    """Mean of the finite losses at positions in [edges[i], edges[i + 1]) (NaN where none)."""
    x = np.asarray(losses, dtype=np.float64)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        part = x[lo:hi]
        part = part[np.isfinite(part)]
        out.append(float(part.mean()) if part.size else math.nan)
    return out


def accuracy_by_distance(answers: Sequence[dict], edges: Sequence[int]) -> tuple[list[float], list[int]]:
    """(fraction correct, number of questions) per distance bin [edges[i], edges[i + 1])."""
    acc, count = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        rows = [a["correct"] for a in answers if lo <= a["distance"] < hi]
        count.append(len(rows))
        acc.append(sum(rows) / len(rows) if rows else math.nan)
    return acc, count


def _mark_window(ax, window: int, context: Optional[int] = None) -> None:
    ax.axvline(window, color="tab:red", ls="--", lw=1)
    ax.text(window, 1.0, f" window {window}", color="tab:red", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    if context:
        ax.axvline(context, color="k", ls=":", lw=1)
        ax.text(context, 1.0, f" trained {context // 1024}K", transform=ax.get_xaxis_transform(), va="top", fontsize=8)


def plot_loss_by_position(edges: Sequence[int], curves: dict[str, Sequence[float]], window: int,
                          context: Optional[int] = None, reference: Optional[str] = None) -> Figure:
    """Mean next-token loss per position bucket (log x axis), one line per model variant; with
    `reference` (one of the curves' names), a second panel shows each curve minus that one."""
    panels = 2 if reference else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 3.6), squeeze=False)
    mids = [math.sqrt(max(lo, 1) * hi) for lo, hi in zip(edges[:-1], edges[1:])]
    for name, values in curves.items():
        axes[0][0].plot(mids, values, marker="o", ms=3, label=name)
        if reference:
            gap = [v - r for v, r in zip(values, curves[reference])]
            axes[0][1].plot(mids, gap, marker="o", ms=3, label=name)
    axes[0][0].set_ylabel("mean next-token loss (nats)")
    if reference:
        axes[0][1].axhline(0, color="k", lw=0.8)
        axes[0][1].set_ylabel(f"loss minus: {reference}")
    for ax in axes[0]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("position in the text (bucket of positions)")
        _mark_window(ax, window, context)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy_by_distance(edges: Sequence[int], curves: dict[str, Sequence[float]], window: int) -> Figure:
    """Fraction of pass keys recalled against the distance from needle to question (log x axis)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    mids = [math.sqrt(max(lo, 1) * hi) for lo, hi in zip(edges[:-1], edges[1:])]
    for name, values in curves.items():
        ax.plot(mids, values, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("distance from the needle to the question (tokens)")
    ax.set_ylabel("pass keys recalled")
    _mark_window(ax, window)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_attention_by_distance(edges: Sequence[int], mass: dict[str, Sequence[float]], window: int,
                               title: str = "") -> Figure:
    """Attention mass per distance bin (bars, log x axis), one panel per head."""
    n = len(mass)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), sharey=True, squeeze=False)
    for ax, (name, values) in zip(axes[0], mass.items()):
        lo = np.maximum(np.asarray(edges[:-1], dtype=float), 0.5)
        hi = np.asarray(edges[1:], dtype=float)
        ax.bar(lo, values, width=hi - lo, align="edge", edgecolor="k", lw=0.3)
        ax.set_xscale("log", base=2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("distance (tokens)")
        _mark_window(ax, window)
    axes[0][0].set_ylabel("attention mass")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- the saved results, as the notebook shows them (tests compare these with the file) -----------

VARIANT_NAMES = {
    "trained": "as trained (global base 1M)", "all_local": "every layer local", "base_10k": "global base 10k",
    "x8": "global x8 interpolation", "far": "far, as trained", "far_x8": "far, x8 interpolation",
    "far_local": "far, every layer local",
}
PLOT_EDGES = tuple(2**k for k in range(4, 16))  # 16, 32, ... 32,768
TABLE_EDGES = (16, 64, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768)
DISTANCE_EDGES = (0, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768, 65_536)


def merge_buckets(loss: dict, edges: Sequence[int]) -> list[float]:
    """Mean loss over coarser buckets [edges[i], edges[i + 1]) from a result's fine buckets and their counts.

    Every coarse edge must be a fine edge. NaN where the coarse bucket holds no loss."""
    fine, means, counts = loss["edges"], loss["mean"], loss["count"]
    missing = [e for e in edges if e not in fine]
    if missing:
        raise ValueError(f"edges {missing} are not among the result's bucket edges")
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        parts = [(m, c) for a, m, c in zip(fine[:-1], means, counts) if lo <= a < hi and c]
        total = sum(c for _, c in parts)
        out.append(sum(m * c for m, c in parts) / total if total else math.nan)
    return out


def _number(x: float, fmt: str) -> str:
    return "-" if isinstance(x, float) and math.isnan(x) else format(x, fmt)


def loss_table(results: dict, names: Sequence[str], edges: Sequence[int] = TABLE_EDGES) -> str:
    """Mean next-token loss per position bucket, one column per variant."""
    lines = [f"{'positions':>15}" + "".join(f"{n:>12}" for n in names)]
    columns = [merge_buckets(results["variants"][n]["loss"], edges) for n in names]
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        lines.append(f"{f'{lo:,}-{hi:,}':>15}" + "".join(f"{_number(c[i], '.3f'):>12}" for c in columns))
    return "\n".join(lines)


def accuracy_table(results: dict, names: Sequence[str], edges: Sequence[int] = DISTANCE_EDGES) -> str:
    """Pass keys recalled / asked per distance bin, one column per variant."""
    lines = [f"{'distance':>15}" + "".join(f"{n:>12}" for n in names)]
    tallies = []
    for n in names:
        answers = results["variants"][n]["answers"]
        tallies.append([(sum(a["correct"] for a in answers if lo <= a["distance"] < hi),
                         sum(lo <= a["distance"] < hi for a in answers)) for lo, hi in zip(edges[:-1], edges[1:])])
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        cells = [f"{r}/{k}" if k else "-" for r, k in (t[i] for t in tallies)]
        lines.append(f"{f'{lo:,}-{hi:,}':>15}" + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def answers_table(results: dict, name: str) -> str:
    """Every question a variant asked: where, how far from its needle, the answer, right or not."""
    lines = [f"{'length':>7} {'needle':>11} {'distance':>9} {'log p':>8}  answer"]
    for a in results["variants"][name]["answers"]:
        key = next(n["key"] for n in results["variants"][name]["needles"] if n["label"] == a["label"])
        mark = "right" if a["correct"] else "wrong"
        lines.append(f"{a['length']:>7,} {a['label']:>11} {a['distance']:>9,} {a['log_prob']:>8.2f}  {key} {mark}")
    return "\n".join(lines)


def far_table(results: dict) -> str:
    """The same 2,048 tokens read right after their first 2,048, and with those 40,960 positions further back:
    mean loss on them, and pass keys recalled (`trained`: its questions at 2,048 to 4,096 tokens)."""
    rows = [("trained", "next to its context"), ("far_local", "beyond, all local"), ("far", "beyond, as trained"),
            ("far_x8", "beyond, x8 interp.")]
    lines = [f"{'read':>22} {'loss':>7} {'pass keys':>10}"]
    for name, what in rows:
        v = results["variants"][name]
        answers = [a for a in v["answers"] if name != "trained" or 2_048 <= a["length"] <= 4_096]
        right = sum(a["correct"] for a in answers)
        lines.append(f"{what:>22} {v['loss_far_part']:>7.3f} {f'{right}/{len(answers)}':>10}")
    return "\n".join(lines)


def memory_table(results: dict, name: str = "trained") -> str:
    """One run's prefill time so far and peak memory added during its forward passes, by tokens read."""
    v = results["variants"][name]
    lines = [f"{'tokens':>7} {'peak added':>11} {'prefill so far':>15}"]
    for m in v["memory"]:
        lines.append(f"{m['tokens']:>7,} {m['peak_added_bytes'] / 2**20:>7.0f} MiB {m['prefill_s']:>13.1f} s")
    return "\n".join(lines)


def layout_table(bench: dict) -> str:
    """`benchmarks/long_context.py`'s results: the same prefill with ring buffers and with an all-global cache."""
    lines = [f"{'layout':>7} {'tokens':>7} {'cache':>11} {'peak added':>11} {'prefill':>9}"]
    for r in bench["results"].values():
        lines.append(f"{r['layout']:>7} {r['tokens']:>7,} {r['cache_bytes'] / 2**20:>7.1f} MiB "
                     f"{r['peak_added_bytes'] / 2**20:>7.1f} MiB {r['prefill_s']:>7.1f} s")
    ring, full = bench["results"]["ring"], bench["results"]["global"]
    lines.append(f"all-global minus ring: cache {(full['cache_bytes'] - ring['cache_bytes']) / 2**20:.1f} MiB, "
                 f"measured peak {(full['peak_added_bytes'] - ring['peak_added_bytes']) / 2**20:.1f} MiB; "
                 f"same greedy tokens: {ring['generated'] == full['generated']}")
    return "\n".join(lines)


def attention_rows(answer: dict, layer: int) -> dict[str, list[float]]:
    """Per head of a global layer: the attention mass per distance bin from one question's last token."""
    att = answer["attention"][str(layer)]
    return {f"layer {layer} head {h}": m for h, m in enumerate(att["mass"])}


def attention_table(results: dict, name: str, layer: int) -> str:
    """Attention on the needle from the question's last token, per head of `layer`, as the context grows;
    the last column is the largest share any head puts on keys 512 or more positions back."""
    answers = [a for a in results["variants"][name]["answers"] if a["label"] == "red door"]
    heads = len(answers[0]["attention"][str(layer)]["on_needle"])
    lines = [f"{'length':>7} {'distance':>9}" + "".join(f"{f'head {h}':>9}" for h in range(heads))
             + f"{'most past 512':>15}"]
    for a in answers:
        att = a["attention"][str(layer)]
        far = [sum(m for lo, m in zip(att["edges"][:-1], row) if lo >= 512) for row in att["mass"]]
        lines.append(f"{a['length']:>7,} {a['distance']:>9,}" + "".join(f"{x:>9.3f}" for x in att["on_needle"])
                     + f"{max(far):>15.3f}")
    return "\n".join(lines)


def runs_table(results: dict) -> str:
    """What each saved run did: tokens read, cache layout, the global layers' RoPE, pass keys recalled."""
    lines = [f"{'run':>10} {'tokens':>7} {'cache':>11} {'global layers':>14} {'RoPE base':>10} {'scaling':>8} {'pass keys':>10}"]
    for name, v in results["variants"].items():
        c = v["config"]
        recalled = f"{sum(a['correct'] for a in v['answers'])}/{len(v['answers'])}"
        cache = "all-global" if v["all_global_cache"] else "ring"
        lines.append(f"{name:>10} {v['tokens']:>7,} {cache:>11} {str(c['global_layers'] or '-'):>14} "
                     f"{c['rope_theta']:>10,.0f} {c['rope_scaling_factor']:>8g} {recalled:>10}")
    return "\n".join(lines)


def mass_table(answer: dict, layer: int) -> str:
    """The attention mass per distance bin of each head of `layer` (what `plot_attention_by_distance` draws)."""
    att = answer["attention"][str(layer)]
    edges = att["edges"]
    lines = [f"layer {layer}, distance from" + "".join(f"{lo:>7,}" for lo in edges[:-1])]
    for h, row in enumerate(att["mass"]):
        lines.append(f"{f'head {h}':>25}" + "".join(f"{m:>7.3f}" for m in row))
    return "\n".join(lines)
