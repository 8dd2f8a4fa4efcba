"""Long-context helpers (`course/long_context.py`): checked on the tiny model against plain forward
passes, and the saved benchmark results against what the notebook shows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

import gemma3_minimal as g3
from gemma3_minimal.config import GLOBAL, LOCAL
from gemma3_minimal.course import long_context as lc
from gemma3_minimal.layers import grouped_attention
from gemma3_minimal.masks import attention_mask

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "long_context.json"
LAYOUTS = ROOT / "benchmarks" / "results" / "long_context_16k.json"  # benchmarks/long_context.py
NOTEBOOK = ROOT / "notebooks" / "07_long_context.ipynb"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return g3.speed_up(g3.Gemma3ForCausalLM(g3.get_config("tiny")).eval())


@pytest.fixture(scope="module")
def tok():
    return g3.Gemma3Tokenizer.from_pretrained()


def test_with_config_shares_the_weights_and_changes_only_how_they_run(tiny):
    local = lc.every_layer_local(tiny)
    assert set(local.config.layer_types) == {LOCAL} and GLOBAL in tiny.config.layer_types
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(tiny.parameters(), local.parameters()))
    assert [type(m) for m in local.modules()] == [type(m) for m in tiny.modules()]
    ids = torch.randint(0, 512, (1, 20))
    assert not torch.allclose(tiny(ids), local(ids))  # the window (8) is shorter than the input
    same = lc.with_config(tiny, name="twin")
    torch.testing.assert_close(same(ids), tiny(ids), rtol=0, atol=0)
    interpolated = lc.with_config(tiny, rope_scaling_factor=8.0)
    assert interpolated.config.rope_scaling_factor == 8.0 and not torch.allclose(interpolated(ids), tiny(ids))


def test_with_config_refuses_fields_that_need_other_weights(tiny):
    with pytest.raises(ValueError, match="hidden_size"):
        lc.with_config(tiny, hidden_size=32)
    with pytest.raises(TypeError, match="Gemma3ForCausalLM"):
        lc.with_config(torch.nn.Linear(2, 2))


def test_visible_positions_are_the_mask_row():
    assert lc.visible_positions(5_000, 512).tolist() == list(range(4_489, 5_001))
    assert lc.visible_positions(5_000).tolist() == list(range(5_001))
    assert lc.visible_positions(3, 512).tolist() == [0, 1, 2, 3]


def test_answer_scores_use_the_logits_one_position_earlier():
    torch.manual_seed(0)
    logits, ids = torch.randn(6, 11), torch.randint(0, 11, (6,))
    expected = sum(torch.log_softmax(logits[t - 1], -1)[ids[t]] for t in range(3, 6))
    torch.testing.assert_close(lc.answer_log_prob(logits, ids, 3), expected)
    greedy = torch.cat([ids[:1], logits[:-1].argmax(-1)])
    assert lc.answer_correct(logits, greedy, 2) and not lc.answer_correct(logits, (greedy + 1) % 11, 2)
    with pytest.raises(ValueError, match="start"):
        lc.answer_log_prob(logits, ids, 0)


def test_needles_go_where_asked_and_answers_tokenize_as_in_the_whole(tok):
    filler = list(range(1000, 1100))
    needles = [lc.Needle("red door", "48213"), lc.Needle("blue box", "7051")]
    ids, starts = lc.insert_needles(tok, filler, [(10, needles[0]), (60, needles[1])])
    first, second = (lc.needle_ids(tok, n) for n in needles)
    assert ids[starts[0]:starts[0] + len(first)] == first and ids[starts[1]:starts[1] + len(second)] == second
    assert ids == filler[:10] + first + filler[10:60] + second + filler[60:]
    question, answer = lc.question_ids(tok, needles[0])
    assert tok.decode(answer).strip() == "48213" and tok.encode(f"\n\n{needles[0].question} 48213") == question + answer
    with pytest.raises(ValueError, match="increase"):
        lc.insert_needles(tok, filler, [(60, needles[0]), (10, needles[1])])
    with pytest.raises(ValueError, match="digits"):
        lc.Needle("x", "12a")


def test_attention_weights_times_values_is_the_attention_output():
    torch.manual_seed(0)
    H, K, Tk, D = 4, 2, 9, 8
    q, k, v = torch.randn(H, D), torch.randn(K, Tk, D), torch.randn(K, Tk, D)
    k_pos = torch.tensor([0, 1, 2, 3, 4, 5, 6, -1, -1])  # two empty cache slots
    for window in (None, 3):
        w = lc.attention_weights(q, k, 6, k_pos, 0.5, window)
        mask = attention_mask(torch.tensor([6]), k_pos, window)
        out = grouped_attention(q[None, :, None], k[None], v[None], mask, 0.5)[0, :, 0]
        torch.testing.assert_close(torch.einsum("ht,htd->hd", w, v.repeat_interleave(2, 0)), out)
        mass = lc.mass_by_distance(w, 6, k_pos, lc.distance_edges(6))
        torch.testing.assert_close(mass.sum(-1), torch.ones(H))
    assert lc.distance_edges(6) == [0, 1, 2, 4, 8]
    assert mass[:, 3:].sum() == 0  # window 3: nothing at distance 4 or more


def test_read_long_equals_plain_forward_passes(tiny, tok):
    torch.manual_seed(1)
    needle = lc.Needle("red door", "42")
    filler = torch.randint(10, 500, (40,)).tolist()
    ids, (start,) = lc.insert_needles(tok, filler, [(5, needle)])
    ids = [i % 512 for i in ids]  # the tiny model's vocabulary
    question, answer = ([i % 512 for i in part] for part in lc.question_ids(tok, needle))
    end = start + len(lc.needle_ids(tok, needle))
    q = lc.Question(needle, start, end, question, answer)
    checkpoints = [end, end + 7, len(ids)]
    for sliding in (True, False):
        read = lc.read_long(tiny, ids, checkpoints, [q], chunk=6, sliding=sliding)
        logits = tiny(torch.tensor([ids]))[0]
        expected = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
        torch.testing.assert_close(read.losses, expected, rtol=1e-4, atol=1e-4)
        assert [a["length"] for a in read.answers] == checkpoints
        for row in read.answers:
            whole = torch.tensor(ids[:row["length"]] + question + answer)
            with torch.no_grad():
                direct = tiny(whole[None])[0]
            n = row["length"] + len(question)
            assert row["log_prob"] == pytest.approx(float(lc.answer_log_prob(direct, whole, n)), abs=1e-4)
            assert row["correct"] == lc.answer_correct(direct, whole, n)
            assert row["distance"] == row["length"] - start
            (layer,) = lc.global_layers(tiny)
            mass = torch.tensor(row["attention"][str(layer)]["mass"])
            torch.testing.assert_close(mass.sum(-1), torch.ones(4))
    skipped = lc.read_long(tiny, ids, chunk=16, loss_every=3).losses
    assert torch.isnan(skipped[1::3]).all() and torch.isfinite(skipped[::3]).all()


def test_summaries():
    losses = [1.0, 2.0, math.nan, 4.0, 5.0]
    assert lc.bucket_means(losses, [0, 1, 3, 5]) == [1.0, 2.0, 4.5]
    answers = [{"distance": d, "correct": c} for d, c in [(3, True), (5, False), (6, True), (40, False)]]
    acc, count = lc.accuracy_by_distance(answers, [0, 4, 8, 16, 64])
    assert count == [1, 2, 0, 1] and acc[:2] == [1.0, 0.5] and math.isnan(acc[2])


def test_long_text_is_long_enough(tok):
    ids = lc.long_text_ids(tok, 32_768)
    assert len(ids) == 32_768 and ids[0] == tok.bos_id
    with pytest.raises(ValueError, match="at most"):
        lc.long_text_ids(tok, 10**6)


# --- the saved results and the notebook that shows them -----------------------------------------


def load_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("long_context_quality", ROOT / "benchmarks" / "long_context_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def notebook_outputs() -> str:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_results_cover_every_variant_of_the_script():
    bench = load_benchmark()
    results = json.loads(RESULTS.read_text())
    assert set(results["variants"]) == set(bench.VARIANTS)
    for name, (_, _, tokens, all_global, jump) in bench.VARIANTS.items():
        v = results["variants"][name]
        assert v["tokens"] == tokens and v["all_global_cache"] == all_global and v["jump"] == (list(jump) if jump else None)
        assert [m["tokens"] for m in v["memory"]] == [c for c in (bench.FAR_CHECKPOINTS if jump else bench.CHECKPOINTS)
                                                      if c <= tokens]
        assert {a["length"] for a in v["answers"]} <= {m["tokens"] for m in v["memory"]}
    assert results["variants"]["trained"]["tokens"] > 32_000  # the model's whole context, nearly


def test_the_notebook_shows_the_saved_results():
    results = json.loads(RESULTS.read_text())
    shown = notebook_outputs()
    names = ["trained", "all_local", "base_10k", "x8"]
    tables = [lc.runs_table(results), lc.loss_table(results, names, lc.PLOT_EDGES), lc.accuracy_table(results, names),
              lc.answers_table(results, "trained"), lc.far_table(results), lc.memory_table(results, "trained"),
              lc.layout_table(json.loads(LAYOUTS.read_text()))]
    tables += [lc.attention_table(results, "trained", layer) for layer in results["variants"]["trained"]["config"]["global_layers"]]
    last = [a for a in results["variants"]["trained"]["answers"] if a["label"] == "red door"][-1]
    tables += [lc.mass_table(last, layer) for layer in results["variants"]["trained"]["config"]["global_layers"]]
    for table in tables:
        assert table in shown, f"the notebook is stale: rerun it\n{table}"
