"""Both readings of Gemma 3's sampled distillation target, measured on the real 270M teacher over real text.

The report (section 2.2): "We sample 256 logits per token, weighted by teacher probabilities. [...]
The teacher's target distribution is set to zero probability for non-sampled logits, and
renormalized." `gemma3_minimal.distill` offers its literal reading (target="renormalized": the
teacher's probabilities of the distinct drawn ids, divided by their sum) and the count-based one
(target="counts": times drawn / 256, unbiased). With 256 draws per token this script measures, on
`data/distill_corpus.txt` cut into rows of 32 tokens as notebook 10 does:

- distinct ids per token (the same for both targets: they share the draws);
- the bias of the loss, E[sampled loss] - full cross-entropy, for two students (an untrained one
  and the teacher itself), from `--replicates` independent sets of 256 draws per token;
- the bias of the gradient with respect to the student's logits, q - t: its expectation is off by
  E[t] - p (the same for every student), measured as the L2 norm of (mean t over R replicates) - p
  next to the norm that noise alone leaves for an unbiased target (exactly sqrt((1 - sum p^2) / (256 R))),
  and relative to the full gradient's norm ||q - p|| for the untrained student;
- how a small student trains: the `tiny` preset with the real vocabulary, 30 AdamW steps, from
  hard labels, the full distribution, and a store of each target; held-out next-token
  cross-entropy along the way and the final cross-entropy against the teacher's distribution.

    python benchmarks/distill_targets.py        # writes benchmarks/results/distill_targets_270m.json

Notebook 10 reads the JSON; tests/test_notebook_results.py checks that the notebook shows its figures.
About 6 minutes on 2 busy CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import gemma3_minimal as g3
from gemma3_minimal.distill import TARGETS, next_token_loss, token_rows

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "distill_targets_270m.json"
# the setup notebook 10 uses: keep both in step (the notebook asserts it against this file)
SETUP = {"corpus": "data/distill_corpus.txt", "seq_len": 32, "held_out_rows": 4, "num_samples": 256,
         "store_seed": 0, "steps": 30, "batch_size": 4, "lr": 1e-2, "eval_every": 5, "student": "tiny"}


def corpus(tok) -> tuple[torch.Tensor, torch.Tensor]:
    rows = token_rows(tok.encode((ROOT / SETUP["corpus"]).read_text()), SETUP["seq_len"], tok.bos_id)
    return rows[: -SETUP["held_out_rows"]], rows[-SETUP["held_out_rows"] :]


def student_model(vocab_size: int) -> g3.Gemma3ForCausalLM:
    torch.manual_seed(0)
    return g3.Gemma3ForCausalLM(g3.get_config(SETUP["student"]).replace(vocab_size=vocab_size, name="student"))


def summary(x: torch.Tensor) -> dict:
    x = x.double()
    return {"mean": x.mean().item(), "median": x.median().item(), "p90": x.quantile(0.9).item(),
            "min": x.min().item(), "max": x.max().item()}


@torch.no_grad()
def measure_bias(teacher_logits: torch.Tensor, students: dict[str, torch.Tensor], replicates: int, seed: int,
                 chunk: int = 64) -> dict:
    """Loss and gradient bias of each target over the tokens of teacher_logits [N, V] (students: name -> [N, V])."""
    k = SETUP["num_samples"]
    n, vocab = teacher_logits.shape
    g = torch.Generator().manual_seed(seed)
    loss_sum = {t: {s: torch.zeros(replicates, dtype=torch.float64) for s in students} for t in TARGETS}
    full = {s: 0.0 for s in students}
    sq_bias = {t: torch.zeros(n, dtype=torch.float64) for t in TARGETS}  # ||mean t - p||^2 per token
    noise_floor = torch.zeros(n, dtype=torch.float64)  # E||mean t - p||^2 for an unbiased target
    grad_norm = torch.zeros(n, dtype=torch.float64)  # ||q - p||, the full gradient's norm (untrained student)
    top1 = {t: torch.zeros(n, dtype=torch.float64) for t in TARGETS}  # E[t of the most likely id] / its p
    kept_mass = torch.zeros(n, dtype=torch.float64)  # E[sum of p over the distinct drawn ids]
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        p = torch.softmax(teacher_logits[rows].float(), dim=-1)  # [c, V]
        log_q = {s: torch.log_softmax(z[rows].float(), dim=-1) for s, z in students.items()}  # [c, V]
        for s in students:
            full[s] += -(p * log_q[s]).sum().item()
        t_sum = {t: torch.zeros_like(p) for t in TARGETS}
        for r in range(replicates):
            state = g.get_state()
            for t in TARGETS:
                g.set_state(state)  # the same draws for both targets
                ids, w = g3.sample_teacher_targets(teacher_logits[rows], k, g, target=t)  # [c, k]
                t_sum[t].scatter_add_(-1, ids, w)
                for s in students:
                    loss_sum[t][s][r] += -(w * log_q[s].gather(-1, ids)).sum().item()
            kept_mass[rows] += (p.gather(-1, ids) * (w > 0)).sum(-1).double()
        grad_norm[rows] = (log_q["untrained student"].exp() - p).double().norm(dim=-1)
        top = p.argmax(-1, keepdim=True)
        for t in TARGETS:
            mean_t = t_sum[t] / replicates
            sq_bias[t][rows] = (mean_t - p).double().pow(2).sum(-1)
            top1[t][rows] = (mean_t.gather(-1, top) / p.gather(-1, top)).squeeze(-1).double()
        noise_floor[rows] = (1 - p.double().pow(2).sum(-1)) / (k * replicates)
        print(f"  tokens {start}-{min(start + chunk, n) - 1} done", flush=True)
    out = {"tokens": n, "replicates": replicates,
           "kept_teacher_mass": summary(kept_mass / replicates), "loss": {}, "gradient": {}}
    for s in students:
        per_replicate = {t: loss_sum[t][s] / n for t in TARGETS}  # token-mean loss of each replicate
        out["loss"][s] = {"full_cross_entropy": full[s] / n, **{
            t: {"mean": v.mean().item(), "bias": v.mean().item() - full[s] / n,
                "standard_error": (v.std() / math.sqrt(replicates)).item()} for t, v in per_replicate.items()}}
    for t in TARGETS:
        # ||mean t - p||^2 = ||E[t] - p||^2 + noise; the noise of an unbiased target is noise_floor exactly,
        # and the renormalized target's noise is no larger (its weights vary less than counts do)
        bias_estimate = (sq_bias[t] - noise_floor).clamp_min(0).sqrt()  # [N]
        out["gradient"][t] = {
            "measured_l2_rms": math.sqrt(sq_bias[t].mean().item()),  # root mean square over tokens of ||mean t - p||
            "noise_floor_l2_rms": math.sqrt(noise_floor.mean().item()),  # what an unbiased target leaves
            "bias_l2_rms": math.sqrt(bias_estimate.pow(2).mean().item()),  # noise removed
            "bias_over_full_gradient": summary(bias_estimate / grad_norm),  # untrained student
            "top1_target_over_p": summary(top1[t]),
        }
    return out


def train_students(teacher, dense: torch.Tensor, train: torch.Tensor, held_out: torch.Tensor,
                   stores: dict[str, g3.TeacherStore]) -> dict:
    targets = {"hard labels": (None, None), "full distribution": (dense, None),
               **{f"256 samples, {t}": (store, SETUP["num_samples"]) for t, store in stores.items()}}
    with torch.no_grad():
        teacher_held_out = teacher(held_out)  # [b, T, V]
    runs = {}
    for name, (target, num_samples) in targets.items():
        student = student_model(teacher.config.vocab_size)
        start = time.perf_counter()
        history = g3.distill(student, target, train, SETUP["steps"], batch_size=SETUP["batch_size"], lr=SETUP["lr"],
                             num_samples=num_samples, eval_data=held_out, eval_every=SETUP["eval_every"],
                             progress=False)
        with torch.no_grad():
            to_teacher = g3.full_distillation_loss(student(held_out), teacher_held_out).item()
        runs[name] = {"eval_steps": history.eval_steps, "eval_loss": history.eval_loss,
                      "held_out_cross_entropy_to_teacher": to_teacher, "seconds": time.perf_counter() - start}
        print(f"  {name}: held-out {history.eval_loss[-1]:.3f}, against the teacher {to_teacher:.3f}", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bias-rows", type=int, default=8, help="training rows whose tokens the bias is measured on")
    parser.add_argument("--replicates", type=int, default=32, help="independent sets of 256 draws per token")
    parser.add_argument("--json", type=Path, default=OUT)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    teacher, tok = g3.load_pretrained("270m")
    train, held_out = corpus(tok)
    print(f"train {tuple(train.shape)}, held out {tuple(held_out.shape)}; teacher logits...", flush=True)
    dense = g3.cache_teacher_logits(teacher, train)  # [n, T, V] float16, as notebook 10 keeps them
    with torch.no_grad():
        teacher_held_out = next_token_loss(teacher, held_out).item()
    stores = {t: g3.TeacherStore.build(dense, train, SETUP["num_samples"],
                                       torch.Generator().manual_seed(SETUP["store_seed"]), target=t) for t in TARGETS}
    assert torch.equal(stores["renormalized"].counts, stores["counts"].counts)  # the same draws
    counts = stores["renormalized"].counts.flatten()
    result = {"setup": SETUP, "train_shape": list(train.shape), "held_out_shape": list(held_out.shape),
              "teacher_held_out_cross_entropy": teacher_held_out,
              "distinct_ids_per_token": {**summary(counts), "histogram": torch.bincount(counts).tolist()}}
    print("bias...", flush=True)
    bias_tokens = dense[: args.bias_rows].flatten(0, 1)  # [N, V]
    with torch.no_grad():
        untrained = student_model(teacher.config.vocab_size)(train[: args.bias_rows]).flatten(0, 1)
    result["bias"] = measure_bias(bias_tokens, {"untrained student": untrained, "teacher itself": bias_tokens},
                                  args.replicates, seed=1)
    print("students...", flush=True)
    result["students"] = train_students(teacher, dense, train, held_out, stores)
    result["seconds"] = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "students"}, indent=1))
    print(f"wrote {args.json} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
