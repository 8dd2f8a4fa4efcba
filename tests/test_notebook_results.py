"""Figures a notebook shows from a saved result file are the file's: a changed file fails here until
the notebook is re-executed (nbval compares a notebook with itself, not with the files it reads).

Each check rebuilds, from the JSON, the lines the notebook prints, and finds them in its stored outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

from gemma3_minimal.course.long_context import layout_table

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("renormalized", "counts")


def stored_output(notebook: str) -> str:
    """Every text output stored in a notebook, joined."""
    cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
    texts = []
    for cell in cells:
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def test_distillation_notebook_shows_the_saved_measurement():
    results = json.loads((ROOT / "benchmarks" / "results" / "distill_targets_270m.json").read_text())
    shown = stored_output("10_distillation.ipynb")
    distinct, bias = results["distinct_ids_per_token"], results["bias"]
    expected = [
        f"distinct ids per token: mean {distinct['mean']:.1f}, median {distinct['median']:.0f}, "
        f"90th percentile {distinct['p90']:.0f}, max {distinct['max']:.0f}",
        f"kept teacher mass per token: mean {bias['kept_teacher_mass']['mean']:.3f}, "
        f"min {bias['kept_teacher_mass']['min']:.3f} ({bias['tokens']} tokens x {bias['replicates']} sets of draws)",
        f"held-out cross-entropy (teacher: {results['teacher_held_out_cross_entropy']:.2f} nats)",
    ]
    for student, row in bias["loss"].items():
        cells = [f"{row[t]['bias']:+.4f} ± {row[t]['standard_error']:.4f}" for t in TARGETS]
        expected.append(f"{student:18s} {row['full_cross_entropy']:8.3f} {cells[0]:>22s} {cells[1]:>20s}")
    for target, row in bias["gradient"].items():
        expected.append(
            f"{target:12s} {row['measured_l2_rms']:13.4f} {row['noise_floor_l2_rms']:12.4f} {row['bias_l2_rms']:11.4f} "
            f"{row['bias_over_full_gradient']['mean']:10.3f} {row['top1_target_over_p']['mean']:17.3f}")
    for name, run in results["students"].items():
        expected.append(f"{name:26s} {min(run['eval_loss']):6.2f} {run['eval_loss'][-1]:15.2f} "
                        f"{run['held_out_cross_entropy_to_teacher']:20.2f}")
    missing = [line for line in expected if line not in shown]
    assert not missing, "re-execute notebooks/10_distillation.ipynb; not shown:\n" + "\n".join(missing)
    assert len(results["students"]) == 4 and set(bias["gradient"]) == set(TARGETS)


def test_distillation_results_match_the_notebook_setup():
    """The script and the notebook cut the same corpus the same way (the notebook asserts it too)."""
    setup = json.loads((ROOT / "benchmarks" / "results" / "distill_targets_270m.json").read_text())["setup"]
    source = (ROOT / "notebooks" / "10_distillation.ipynb").read_text()
    assert setup["seq_len"] == 32 and "SEQ = 32" in source
    assert setup["num_samples"] == 256 and setup["store_seed"] == 0


def test_kv_cache_notebook_shows_the_saved_long_context_run():
    """Notebook 05 prints `benchmarks/results/long_context_270m.json` (8,192 tokens, ring against all-global)."""
    bench = json.loads((ROOT / "benchmarks" / "results" / "long_context_270m.json").read_text())
    ring, full = bench["results"]["ring"], bench["results"]["global"]
    saved = (full["peak_added_bytes"] - ring["peak_added_bytes"]) / (full["cache_bytes"] - ring["cache_bytes"])
    expected = [
        layout_table(bench),
        f"measured saving: {saved:.0%} of the predicted; prefill time, all-global / ring: "
        f"{full['prefill_s'] / ring['prefill_s']:.2f}",
    ]
    shown = stored_output("05_kv_cache_and_memory.ipynb")
    missing = [text for text in expected if text not in shown]
    assert not missing, "re-execute notebooks/05_kv_cache_and_memory.ipynb; not shown:\n" + "\n".join(missing)
