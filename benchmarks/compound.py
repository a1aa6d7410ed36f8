"""Compound compression in miniature: layers × sparsity × INT8 QAT, accuracy as it runs and speed.

The paper's compound table (PAPER.md §3) on this machine: MiniLM-L6 as it comes (6 layers) and
3 layers dropped from it (layers 0 2 5, obert's default 6 → 3), each dense, 80% unstructured,
80% 4-block + QAT and 90% 4-block + QAT. Every model starts from the same dense 6-layer
teacher (MiniLM fine-tuned on ``--train-rows`` SST-2 rows, the cache benchmarks/gradual.py
uses), is distilled from it on the same rows with gradual.py's schedule (2 epochs, the
paper's 30-epoch shape scaled, oBERT, KD at T = 2), and 4-block models get ``--qat-epochs`` of
INT8 QAT after that (masks fixed, LR 2e-5 → 0, KD). Each cell:

- dev accuracy (872 rows) of the model as it runs: INT8 on obert's kernels (trained scales)
  for the QAT models, fp32 on the sparse kernels otherwise; beside it, for 4-block models, the
  same pruned model before QAT quantized after training only (same INT8 scheme);
- latency at batch 1 and 8 (seq 128) against the 6-layer dense fp32 PyTorch model, every
  engine timed in interleaved rounds in one process; medians and the spread of the ratio.

    python benchmarks/compound.py --data-dir ../shared/data/glue
    python benchmarks/compound.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _bench import HERE, OBERT, log, run_and_report, run_jobs, teacher, thread_env

KEEP3 = [0, 2, 5]
# name: (layers kept or None, sparsity or None, mask, QAT)
CELLS = {
    "L6-dense": (None, None, None, False),
    "L6-u80": (None, 0.8, "unstructured", False),
    "L6-b80-qat": (None, 0.8, "block4", True),
    "L6-b90-qat": (None, 0.9, "block4", True),
    "L3-dense": (KEEP3, None, None, False),
    "L3-u80": (KEEP3, 0.8, "unstructured", False),
    "L3-b80-qat": (KEEP3, 0.8, "block4", True),
    "L3-b90-qat": (KEEP3, 0.9, "block4", True),
}


def prune_recipe(a, keep, target, mask, teacher: str) -> dict:
    """gradual.py's schedule (the paper's shape scaled to ``a.epochs``), plus layers."""
    f = a.epochs / 30
    r = {"epochs": a.epochs, "batch_size": 32, "max_seq_length": 128,
         "lr": {"schedule": "cyclic_linear" if target else "linear", "max": 8e-5, "min": 8e-6},
         "distillation": {"teacher": teacher, "hardness": 1.0, "temperature": 2.0},
         "pruning": None}
    if keep is not None:
        r["layers"] = {"keep": keep}
        if not target:  # a dense 3-layer student: layers.py's recipe
            r["lr"] = {"schedule": "linear", "max": 1e-4, "min": 1e-5}
    if target:
        r["pruning"] = {
            "method": "obert", "mask": mask, "init_sparsity": 0.7, "final_sparsity": target,
            "start_epoch": round(2 * f, 6), "end_epoch": round(26 * f, 6),
            "update_frequency": round(4 * f, 6), "interpolation": "cubic", "scope": "global",
            "fisher": {"num_grads": a.num_grads, "block_size": 32 if mask == "block4" else 50,
                       "damp": a.damp, "grad_batch_size": 16}}
    return r


def qat_recipe(a, teacher: str) -> dict:
    """QAT alone on the pruned model: masks from its zeros, KD from the same teacher."""
    return {"epochs": 0, "batch_size": 32, "max_seq_length": 128, "pruning": None,
            "distillation": {"teacher": teacher, "hardness": 1.0, "temperature": 2.0},
            "quantization": {"epochs": a.qat_epochs, "lr": {"max": 2e-5, "min": 0.0}}}


def teacher_model(a) -> Path:
    return teacher(a.data_dir, a.train_rows, a.teacher_epochs, a.threads)


# --- training: jobs with dependencies, two at a time ----------------------------------------


def jobs(a, teacher: Path, work: Path) -> list[dict]:
    out = []
    for name, (keep, target, mask, qat) in CELLS.items():
        if name == "L6-dense":
            continue  # the teacher itself
        pruned = name.removesuffix("-qat")
        out.append({"name": pruned, "recipe": prune_recipe(a, keep, target, mask, str(teacher)),
                    "start": teacher, "after": None})
        if qat:
            out.append({"name": name, "recipe": qat_recipe(a, str(teacher)),
                        "start": work / pruned, "after": pruned})
    return out


def train_all(a, teacher: Path, work: Path) -> dict[str, float]:
    """Run every job (dependencies first); returns wall seconds by job name."""
    todo = jobs(a, teacher, work)
    for job in todo:
        job["cmd"] = [*OBERT, "prune", "--recipe", str(work / f"{job['name']}.yaml"), "--model",
                      str(job["start"]), "--task", "sst2", "--data-dir", a.data_dir,
                      "--max-train-samples", str(a.train_rows), "--output",
                      str(work / job["name"]), "--overwrite", "--quiet", "--logging-steps", "63"]
    return run_jobs(todo, work, a.parallel, 1 if a.parallel > 1 else a.threads, a.reuse)


# --- accuracy as it runs, and latency ---------------------------------------------------------


def accuracy(a, model: Path, runtime: str) -> float:
    r = subprocess.run([*OBERT, "evaluate", "--model", str(model), "--task", "sst2",
                        "--data-dir", a.data_dir, "--runtime", runtime, "--json", "--quiet"],
                       check=True, capture_output=True, text=True, env=thread_env(a.threads))
    return json.loads(r.stdout.strip().splitlines()[-1])["accuracy"]


def engine(path: Path, runtime: str):
    import obert.runtime as rt
    from obert.models import load_for_inference

    model = load_for_inference(str(path))
    if runtime == "pytorch":
        return model
    return rt.compile(model, runtime)  # a QAT folder's trained scales: compile finds them


def latencies(models: dict[str, tuple[Path, str]], batch: int, rounds: int, calls: int,
              threads: int) -> dict[str, dict]:
    """Median ms per call of each engine over ``rounds`` interleaved rounds (``calls`` timed
    calls each, median taken per round), and each engine's speed-up over the reference
    (first) engine per round: median, min and max over rounds."""
    import torch

    from obert.runtime.bench import example_inputs

    torch.set_num_threads(threads)
    built = {n: engine(p, rt) for n, (p, rt) in models.items()}
    ref_name = next(iter(built))
    inputs = example_inputs(built[ref_name], batch, 128)
    per_round: dict[str, list[float]] = {n: [] for n in built}
    with torch.inference_mode():
        for m in built.values():
            for _ in range(3):
                m(**inputs)
        for _ in range(rounds):
            for n, m in built.items():
                ts = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    m(**inputs)
                    ts.append((time.perf_counter() - t0) * 1e3)
                per_round[n].append(statistics.median(ts))
    out = {}
    for n, ms in per_round.items():
        ratios = [r / x for r, x in zip(per_round[ref_name], ms, strict=True)]
        out[n] = {"median_ms": statistics.median(ms), "speedup": statistics.median(ratios),
                  "speedup_min": min(ratios), "speedup_max": max(ratios)}
    return out


def profile(path: Path, runtime: str, batch: int, calls: int, threads: int) -> dict:
    """Where the time of one compiled model goes (``obert.runtime.profile``): linears, the
    kernels' activation quantize + layout, attention, LayerNorm, embeddings and the rest."""
    import torch

    from obert.runtime.bench import example_inputs
    from obert.runtime.profile import profile as where

    torch.set_num_threads(threads)
    model = engine(path, runtime)
    return where(model, example_inputs(model, batch, 128), calls=calls, warmup=3)


def add_profiles(a, out: Path) -> None:
    """Profile the QAT models of a stored result (``--profile``) and store it beside them."""
    res = json.loads((out / "compound.json").read_text())
    work = Path(a.work)
    prof = {}
    for name in ("L6-b90-qat", "L3-b90-qat"):
        for batch in (1, 8):
            log(f"profile {name} at batch {batch}")
            prof[f"{name} b{batch}"] = profile(work / name, "int8", batch, a.calls * 4,
                                               a.threads)
    res["profile"] = prof
    (out / "compound.json").write_text(json.dumps(res, indent=2) + "\n")


def run(a) -> dict:
    t_all = time.time()
    teacher = teacher_model(a)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    walls = {} if a.skip_training else train_all(a, teacher, work)
    cells, models = {}, {"dense fp32 PyTorch (6 layers)": (teacher, "pytorch")}
    for name, (keep, target, mask, qat) in CELLS.items():
        path = teacher if name == "L6-dense" else work / name
        runtime = "int8" if qat else ("fp32" if target else "pytorch")
        log(f"scoring {name} ({runtime})")
        cell = {"layers": 3 if keep else 6, "sparsity": target or 0.0, "mask": mask,
                "qat": qat, "runtime": runtime, "accuracy": accuracy(a, path, runtime)}
        if qat:  # the same pruned model, quantized after training only
            pruned = work / name.removesuffix("-qat")
            cell["accuracy_ptq_int8"] = accuracy(a, pruned, "int8")
            cell["accuracy_fp32_before_qat"] = accuracy(a, pruned, "pytorch")
        info = json.loads((path / "sparsity.json").read_text()) if name != "L6-dense" else {}
        cell["measured_sparsity"] = info.get("global_sparsity", 0.0)
        cell["train_wall_s"] = sum(v for k, v in walls.items()
                                   if k in (name, name.removesuffix("-qat")))
        cells[name] = cell
        if name != "L6-dense":
            models[name] = (path, runtime)
    lat = {}
    for batch in (1, 8):
        log(f"latency at batch {batch}")
        lat[str(batch)] = latencies(models, batch, a.rounds, a.calls, a.threads)
    return {"setup": {"train_rows": a.train_rows, "teacher_epochs": a.teacher_epochs,
                      "epochs": a.epochs, "qat_epochs": a.qat_epochs, "num_grads": a.num_grads,
                      "damp": a.damp, "parallel": a.parallel, "threads": a.threads,
                      "rounds": a.rounds, "calls": a.calls, "keep3": KEEP3,
                      "python": platform.python_version(), "cpu": platform.processor()
                      or platform.machine(),
                      "recipes": {j["name"]: j["recipe"] for j in jobs(a, "<teacher>", work)}},
            "teacher_accuracy": json.loads((teacher / "eval_results.json").read_text())["accuracy"],
            "cells": cells, "latency": lat, "walls": walls, "wall_s": time.time() - t_all,
            "command": "python benchmarks/compound.py " + " ".join(a.argv)}


# --- report -------------------------------------------------------------------------------


def report(res: dict, out: Path) -> None:
    s, cells, lat = res["setup"], res["cells"], res["latency"]
    dense = res["teacher_accuracy"]
    ref = "dense fp32 PyTorch (6 layers)"
    lines = [
        "# Compound compression in miniature: MiniLM-L6 on SST-2, accuracy as it runs and speed",
        "", f"Command: `{res['command']}` ({res['wall_s'] / 60:.0f} min in all).", "",
        f"- Teacher and start: all-MiniLM-L6-v2 fine-tuned on {s['train_rows']:,} SST-2 train "
        f"rows for {s['teacher_epochs']:g} epochs, dev accuracy {dense:.4f} (872 rows).",
        f"- Every model distilled from it on the same rows (pure KD, T = 2): {s['epochs']:g} "
        "epochs with benchmarks/gradual.py's schedule (oBERT, global, 70% first then cubic "
        f"every 4/30 of the run to 26/30, LR 8e-5 → 8e-6 rewound at each step, m = "
        f"{s['num_grads']} gradients of batch 16, B = 50 unstructured / 32 for 4-blocks); "
        f"3 layers = layers {' '.join(map(str, s['keep3']))} of the teacher, dropped at the "
        f"start of the run. 4-block models then get {s['qat_epochs']:g} epoch(s) of INT8 QAT "
        "(masks fixed, LR 2e-5 → 0, KD), a separate `obert prune` run with `epochs: 0, "
        "pruning: null, quantization: {…}`.",
        "- Accuracy **as it runs**: QAT models compiled to INT8 on obert's kernels with their "
        "trained scales (`evaluate --runtime int8`); unstructured models fp32 on the sparse "
        "kernels (`--runtime fp32`); dense models PyTorch fp32. *PTQ INT8* is the same pruned "
        "model before QAT, quantized after training in the same INT8 scheme.",
        f"- Latency: seq 128, {s['threads']} threads, {s['rounds']} interleaved rounds of "
        f"{s['calls']} calls in one process (median per round); speed-up = the 6-layer dense "
        "fp32 PyTorch model's time over the engine's, median over rounds [min–max].", "",
        "| model | layers | sparsity | runs as | accuracy | vs teacher (rel.) | PTQ INT8 "
        "| b1 ms | b1 speed-up | b8 ms | b8 speed-up |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in cells.items():
        key = ref if name == "L6-dense" else name
        l1, l8 = lat["1"][key], lat["8"][key]
        sp = "dense" if not c["sparsity"] else f"{c['sparsity']:.0%} {c['mask']}" + (
            " + QAT" if c["qat"] else "")
        ptq = f"{c['accuracy_ptq_int8']:.4f}" if "accuracy_ptq_int8" in c else ""
        runs = {"int8": "INT8 kernels", "fp32": "fp32 sparse kernels",
                "pytorch": "PyTorch fp32"}[c["runtime"]]
        lines.append(
            f"| {name} | {c['layers']} | {sp} | {runs} | {c['accuracy']:.4f} | "
            f"{(c['accuracy'] - dense) / dense:+.1%} | {ptq} | {l1['median_ms']:.1f} | "
            f"{l1['speedup']:.2f}× [{l1['speedup_min']:.2f}–{l1['speedup_max']:.2f}] | "
            f"{l8['median_ms']:.1f} | {l8['speedup']:.2f}× [{l8['speedup_min']:.2f}–"
            f"{l8['speedup_max']:.2f}] |")
    lines += ["", "Goals: at least 8× faster than dense fp32 at batch 1 within 2% (relative) of "
              "the teacher's accuracy, and at least 15× within 7.5%."]
    for speed, drop in ((8, 0.02), (15, 0.075)):
        ok = [n for n, c in cells.items() if n != "L6-dense"
              and lat["1"][n]["speedup"] >= speed and (dense - c["accuracy"]) / dense <= drop]
        within = [n for n, c in cells.items() if (dense - c["accuracy"]) / dense <= drop
                  and n != "L6-dense"]
        best = max(within, key=lambda n: lat["1"][n]["speedup"]) if within else None
        if ok:
            lines.append(f"- {speed}× within {drop:.1%}: met by {', '.join(ok)}.")
        elif best:
            lines.append(f"- {speed}× within {drop:.1%}: missed; the fastest model within "
                         f"{drop:.1%} is {best} at {lat['1'][best]['speedup']:.2f}×.")
        else:
            lines.append(f"- {speed}× within {drop:.1%}: missed; no model is within {drop:.1%}.")
    if "profile" in res:
        from obert.runtime.profile import PARTS

        cols = [c for c in (*PARTS, "rest")]
        lines += ["", "Where the time goes (the compiled INT8 model alone, "
                  "`obert.runtime.profile`: *quantize* is the kernels' activation quantize + "
                  "layout, *rest* residual adds, the fp32 pooler and head, and Python between "
                  "calls):", "",
                  "| model, batch | total ms | " + " | ".join(cols) + " |",
                  "|---|---:|" + "---:|" * len(cols)]
        for k, p in res["profile"].items():
            t = p["total_ms"]
            lines.append(f"| {k} | {t:.2f} | " + " | ".join(
                f"{p[c + '_ms']:.2f} ({p[c + '_ms'] / t:.0%})" if c + "_ms" in p else "–"
                for c in cols) + " |")
    lines += ["", "![accuracy against speed-up](compound.png)"]
    (out / "compound.md").write_text("\n".join(lines) + "\n")
    plot(res, out / "compound.png")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells, lat = res["cells"], res["latency"]["1"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, c in cells.items():
        key = "dense fp32 PyTorch (6 layers)" if name == "L6-dense" else name
        dense = not c["sparsity"]
        ax.scatter(lat[key]["speedup"], c["accuracy"], marker="s" if dense else "o",
                   s=60 if dense else 40, color="black" if dense else
                   ("tab:blue" if c["layers"] == 6 else "tab:orange"))
        ax.annotate(name, (lat[key]["speedup"], c["accuracy"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    t = res["teacher_accuracy"]
    for drop, style in ((0.02, "--"), (0.075, ":")):
        ax.axhline(t * (1 - drop), color="grey", ls=style, lw=0.8,
                   label=f"teacher −{drop:.1%} (rel.)")
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over dense fp32 PyTorch, batch 1, seq 128 (log)")
    ax.set_ylabel("SST-2 dev accuracy, as it runs")
    ax.set_title("MiniLM-L6: layers × sparsity × INT8 QAT (squares: dense)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("OBERT_GLUE_DIR",
                                                        str(HERE.parent.parent / "shared" /
                                                            "data" / "glue")))
    p.add_argument("--train-rows", type=int, default=8000)
    p.add_argument("--teacher-epochs", type=float, default=2.0)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--qat-epochs", type=float, default=1.0)
    p.add_argument("--num-grads", type=int, default=128)
    p.add_argument("--damp", type=float, default=1e-7)
    p.add_argument("--parallel", type=int, default=2, help="runs at a time (1 thread each)")
    p.add_argument("--threads", type=int, default=2, help="threads for scoring and timing")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--work", default="/tmp/obert-compound")
    p.add_argument("--reuse", action="store_true", help="keep finished runs in --work")
    p.add_argument("--skip-training", action="store_true", help="score and time --work's models")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--profile", action="store_true",
                   help="add where the time goes to the stored results (models in --work)")
    a = p.parse_args()
    a.argv = sys.argv[1:]
    if a.profile:
        add_profiles(a, Path(a.out))
        a.report_only = True
    run_and_report(Path(a.out), "compound", None if a.report_only else (lambda: run(a)), report)


if __name__ == "__main__":
    main()
