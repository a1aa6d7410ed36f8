"""One-shot pruning of MiniLM-L6 on GLUE: magnitude vs oBERT (r = 1 and r = 8).

For each task: fine-tune MiniLM-L6 on train minus a held-out slice, tune oBERT's m × λ on
the held-out slice (never on dev) at one-shot 50% and 70%, then prune the fine-tuned model
one-shot to each sparsity and score the dev set. Writes ``results/oneshot.md``, ``.json``, ``.png``.

    python benchmarks/oneshot.py --data-dir ../shared/data/glue            # all three tasks
    python benchmarks/oneshot.py --tasks rte --report-only                 # rebuild the report
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from _bench import HERE, log

from obert.data.glue import holdout_split, load_split, subsample
from obert.data.tasks import get_task
from obert.data.tokenize import batches, encode
from obert.demo import default_model
from obert.models import load_classifier, load_tokenizer
from obert.pruning.config import FisherConfig, StepConfig
from obert.pruning.gradients import collect_grads
from obert.pruning.masks import MaskSet
from obert.pruning.pruner import MagnitudePruner, OBSPruner
from obert.pruning.step import pruning_step
from obert.pruning.targets import find_targets
from obert.training.evaluate import evaluate
from obert.training.finetune import FinetuneConfig, finetune

# Per task: train rows used (None = all), held-out rows, fine-tuning epochs.
SETUP = {"sst2": (8000, 500, 1.0), "mrpc": (None, 400, 2.0), "rte": (None, 250, 2.0)}


def finetuned(task_name: str, data_dir: str, quiet: bool, smoke: bool = False):
    """The fine-tuned model (cached under benchmarks/.cache), its tokenizer and the splits."""
    task = get_task(task_name)
    n_train, n_hold, epochs = (64, 32, 0.5) if smoke else SETUP[task_name]
    train, hold = holdout_split(load_split(task, "train", data_dir), n_hold, seed=0)
    train = subsample(train, n_train, seed=0)
    dev = load_split(task, "dev", data_dir)
    if smoke:
        dev = dev.select(range(64))
    cache = HERE / ".cache" / f"{task_name}-{n_train}-{n_hold}-{epochs:g}"
    if (cache / "model.safetensors").is_file():
        tok, model = load_tokenizer(str(cache)), load_classifier(str(cache), task)
        wall = json.loads((cache / "finetune.json").read_text())["wall_s"]
    else:
        tok, model = load_tokenizer(default_model()), load_classifier(default_model(), task)
        t0 = time.time()
        finetune(model, tok, encode(train, tok, task), FinetuneConfig(epochs=epochs, lr=8e-5,
                                                                      batch_size=32), quiet)
        wall = time.time() - t0
        cache.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(cache)
        tok.save_pretrained(cache)
        (cache / "finetune.json").write_text(json.dumps({"wall_s": wall}))
    enc = {k: encode(v, tok, task) for k, v in {"train": train, "hold": hold, "dev": dev}.items()}
    return task, tok, model, enc, {"train_rows": len(train), "holdout_rows": len(hold),
                                    "dev_rows": len(dev), "epochs": epochs, "finetune_s": wall}


def score(model, enc, tok, task) -> float:
    return evaluate(model, enc, tok, task, quiet=True)[task.main_metric]


def _masks(model) -> MaskSet:
    return MaskSet({n: m.weight for n, m in find_targets(model).items()})


def tune(model, task, tok, enc, grid_m, grid_damp, block, quiet) -> tuple[list[dict], dict]:
    """m × λ grid on the held-out slice: one gradient pass, branching at each m."""
    targets = find_targets(model)
    weights = {n: m.weight for n, m in targets.items()}
    dense = {n: w.detach().clone() for n, w in weights.items()}
    pruner = OBSPruner(MaskSet(weights), block_size=block)
    pruner.begin()
    loader = batches(enc["train"], tok, 16, seed=0)
    grads = collect_grads(model, weights, loader, max(grid_m), quiet)
    rows, states = [], {}
    for i, g in enumerate(grads, 1):
        pruner.add_grads(g)
        if i not in grid_m:
            continue
        states[i] = pruner.fisher_state()
        for damp in grid_damp:
            finv = pruner.fisher_inv(damp, keep=True)
            row = {"m": i, "damp": damp}
            for s in (0.5, 0.7):
                p = OBSPruner(MaskSet(weights), block_size=block)
                p.load_fisher_inv(finv)
                p.step(s)
                row[f"holdout@{s:.0%}"] = score(model, enc["hold"], tok, task)
                for n, w in weights.items():
                    w.data.copy_(dense[n])
            row["holdout_mean"] = (row["holdout@50%"] + row["holdout@70%"]) / 2
            rows.append(row)
            log(f"  m={i} λ={damp:g}: held-out {row['holdout@50%']:.4f} / {row['holdout@70%']:.4f}")
            del finv
    best = max(rows, key=lambda r: r["holdout_mean"])
    return rows, {"m": best["m"], "damp": best["damp"], "state": states[best["m"]]}


def run_task(name: str, args) -> dict:
    t_start = time.time()
    task, tok, model, enc, info = finetuned(name, args.data_dir, args.quiet, args.smoke)
    dense_dev = score(model, enc["dev"], tok, task)
    log(f"{name}: dense dev {task.main_metric} {dense_dev:.4f} ({info})")
    t0 = time.time()
    grid, best = tune(model, task, tok, enc, args.grid_m, args.grid_damp, args.block_size, args.quiet)
    tune_s = time.time() - t0
    log(f"{name}: chose m={best['m']} λ={best['damp']:g} on the held-out slice")
    targets = find_targets(model)
    weights = {n: m.weight for n, m in targets.items()}
    results = []
    for s in args.sparsities:
        # magnitude
        pruned = copy.deepcopy(model)
        MagnitudePruner(_masks(pruned)).step(s)
        results.append({"method": "magnitude", "sparsity": s,
                        "dev": score(pruned, enc["dev"], tok, task)})
        # oBERT r = 1: the dense Fisher from the tuning pass, at the chosen m and λ
        pruned = copy.deepcopy(model)
        p = OBSPruner(_masks(pruned), block_size=args.block_size, damp=best["damp"])
        p.load_fisher_state(best["state"])
        p.step(s)
        results.append({"method": "obert r=1", "sparsity": s,
                        "dev": score(pruned, enc["dev"], tok, task)})
        # oBERT r = 8: fresh gradients at the updated weights before each of 8 sub-steps
        if args.r8_grads:
            pruned = copy.deepcopy(model)
            cfg = StepConfig(recomputations=8, fisher=FisherConfig(
                num_grads=args.r8_grads, damp=best["damp"], block_size=args.block_size))
            t0 = time.time()
            pruning_step(pruned, _masks(pruned), cfg, s, batches(enc["train"], tok, 16, seed=1),
                         log=lambda _: None, quiet=args.quiet)
            results.append({"method": "obert r=8", "sparsity": s,
                            "dev": score(pruned, enc["dev"], tok, task),
                            "wall_s": time.time() - t0})
        log(f"{name} {s:.0%}: " + ", ".join(f"{r['method']} {r['dev']:.4f}"
                                            for r in results if r["sparsity"] == s))
    del weights
    return {"task": name, "metric": task.main_metric, "dense_dev": dense_dev, **info,
            "grid": grid, "chosen": {"m": best["m"], "damp": best["damp"]},
            "tune_s": tune_s, "results": results, "r8_grads": args.r8_grads,
            "total_s": time.time() - t_start,
            "command": "python benchmarks/oneshot.py " + " ".join(sys.argv[1:]),
            "threads": torch.get_num_threads()}


def report(all_results: dict, out: Path, argv: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(all_results)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    lines = ["# One-shot pruning of MiniLM-L6 (all-MiniLM-L6-v2) on GLUE dev", "",
             f"Report written by `python benchmarks/{Path(__file__).name} {' '.join(argv)}`; "
             "each task's own command is below.  ",
             f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}. Wall times are on a shared machine (other jobs ran "
             "beside these), so they are upper bounds.", "",
             "Protocol: fine-tune MiniLM-L6 on train minus a held-out slice (seed 0), prune the "
             "fine-tuned model one-shot (no retraining) over the 6 encoder Linear weights per layer, "
             "global sparsity, and score the full dev set. oBERT: B = 50, gradient batch 16, "
             "m and λ chosen on the held-out slice (mean of one-shot 50% and 70%), never on dev.", ""]
    for ax, name in zip(axes[0], tasks, strict=True):
        r = all_results[name]
        methods = sorted({x["method"] for x in r["results"]}, key=["magnitude", "obert r=1", "obert r=8"].index)
        sps = sorted({x["sparsity"] for x in r["results"]})
        val = {(x["method"], x["sparsity"]): x["dev"] for x in r["results"]}
        lines += [f"## {name.upper()} (dev {r['metric']}, {r['dev_rows']} rows)", "",
                  f"Fine-tuned on {r['train_rows']:,} train rows for {r['epochs']:g} epochs "
                  f"({r['finetune_s']:.0f} s); held-out slice {r['holdout_rows']} rows. "
                  f"Dense dev {r['metric']}: **{r['dense_dev']:.4f}**. "
                  f"Chosen on held-out: m = {r['chosen']['m']}, λ = {r['chosen']['damp']:g} "
                  f"(grid {r['tune_s']:.0f} s). r = 8 uses {r['r8_grads']} gradients per "
                  f"recomputation. Task total {r['total_s'] / 60:.1f} min.", "",
                  f"Command: `{r.get('command', 'not recorded')}` "
                  f"({r.get('threads', '?')} torch threads)", "",
                  "| sparsity | " + " | ".join(methods) + " | oBERT r=1 − magnitude |",
                  "|---|" + "---|" * (len(methods) + 1)]
        for s in sps:
            cells = [f"{val.get((m, s), float('nan')):.4f}" for m in methods]
            lines.append(f"| {s:.0%} | " + " | ".join(cells) +
                         f" | {val[('obert r=1', s)] - val[('magnitude', s)]:+.4f} |")
        lines += ["", "<details><summary>m × λ grid (held-out metric at 50% / 70%)</summary>", "",
                  "| m | λ | 50% | 70% | mean |", "|---|---|---|---|---|"]
        lines += [f"| {g['m']} | {g['damp']:g} | {g['holdout@50%']:.4f} | {g['holdout@70%']:.4f} | "
                  f"{g['holdout_mean']:.4f} |" for g in r["grid"]]
        lines += ["", "</details>", ""]
        for m in methods:
            ax.plot([s * 100 for s in sps], [val.get((m, s)) for s in sps], marker="o", label=m)
        ax.axhline(r["dense_dev"], color="gray", ls="--", label="dense")
        ax.set(title=f"{name.upper()} (MiniLM-L6, one-shot)", xlabel="sparsity (%)",
               ylabel=f"dev {r['metric']}")
        ax.legend()
    wins = [(n, s) for n, r in all_results.items() for s in sorted({x["sparsity"] for x in r["results"]})
            if s >= 0.6]
    ok = all({x["method"]: x["dev"] for x in all_results[n]["results"] if x["sparsity"] == s}
             ["obert r=1"] > {x["method"]: x["dev"] for x in all_results[n]["results"]
                              if x["sparsity"] == s}["magnitude"] for n, s in wins)
    missing = [t for t in SETUP if t not in all_results]
    lines += ["## Goal", "", f"oBERT (r = 1) beats magnitude at every sparsity ≥ 60% on every task "
              f"run ({', '.join(t.upper() for t in all_results)}): **{'yes' if ok else 'no'}**."
              + (f" Not run yet: {', '.join(t.upper() for t in missing)}." if missing else ""),
              "", "![one-shot](oneshot.png)", ""]
    fig.tight_layout()
    fig.savefig(out / "oneshot.png", dpi=110)
    (out / "oneshot.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("OBERT_GLUE_DIR", "../shared/data/glue"))
    ap.add_argument("--tasks", nargs="+", default=list(SETUP))
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.3, 0.5, 0.6, 0.7, 0.8])
    ap.add_argument("--grid-m", nargs="+", type=int, default=[64, 128, 256])
    ap.add_argument("--grid-damp", nargs="+", type=float, default=[1e-4, 1e-5, 1e-6, 1e-7, 1e-8])
    ap.add_argument("--block-size", type=int, default=50)
    ap.add_argument("--r8-grads", type=int, default=32, help="gradients per r=8 recomputation; 0 skips")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--merge", nargs="*", default=[], help="other oneshot.json files to include")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny data, to check the script runs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "oneshot.json"
    all_results = json.loads(store.read_text()) if store.is_file() else {}
    for extra in args.merge:  # results of tasks run in parallel processes
        all_results.update(json.loads(Path(extra).read_text()))
    if not args.report_only:
        for name in args.tasks:
            all_results[name] = run_task(name, args)
            store.write_text(json.dumps(all_results, indent=1))  # keep finished tasks
    if args.merge:
        store.write_text(json.dumps(all_results, indent=1))
    report({k: all_results[k] for k in SETUP if k in all_results}, args.out, sys.argv[1:])


if __name__ == "__main__":
    main()
