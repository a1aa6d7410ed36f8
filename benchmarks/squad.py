"""SQuAD v1.1 miniature with MiniLM-L6: fine-tune, one-shot prune, gradual prune with KD.

No SQuAD train set can be had on these machines, so the official dev file is split by whole
articles (``--split-articles N``: train on all but the last N articles, score on those N).
Every step is one ``obert`` command, timed; results go to ``results/squad.md`` and ``.json``.

    python benchmarks/squad.py --data-dir ../shared/data/squad
    python benchmarks/squad.py --report-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _bench import HERE, OBERT, log, run_and_report, thread_env


def step(a, name: str, args: list[str], out: Path) -> dict:
    """Run one obert command; return its dev EM/F1 and wall time."""
    data = ["--task", "squad", "--data-dir", a.data_dir, "--split-articles", str(a.heldout),
            "--max-seq-length", str(a.seq_len), "--doc-stride", str(a.doc_stride)]
    cmd = [*OBERT, *args, *data, "--output", str(out), "--overwrite",
           *(["--quiet"] if a.quiet else [])]
    log(f"{name}: {' '.join(cmd[2:])}")
    t0 = time.time()
    with (Path(a.work) / f"{name}.log").open("w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT,
                            env=thread_env(a.threads)).returncode
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"{name} failed (rc {rc}); see {a.work}/{name}.log")
    ev = json.loads((out / "eval_results.json").read_text())
    sp = json.loads((out / "sparsity.json").read_text())
    log(f"{name}: EM {ev['exact_match']:.2f}, F1 {ev['f1']:.2f}, sparsity "
        f"{sp['global_sparsity']:.3f}, {wall / 60:.1f} min")
    return {"name": name, "exact_match": ev["exact_match"], "f1": ev["f1"], "n": ev["n"],
            "sparsity": sp["global_sparsity"], "wall_s": wall}


def run(a) -> dict:
    from obert.demo import default_model

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ft = work / "dense"
    rows = [step(a, "dense fine-tune", ["finetune", "--model", default_model(), "--epochs",
                                        str(a.epochs), "--lr", "1e-4", "--batch-size", "16",
                                        "--max-train-samples", str(a.train_rows)], ft)]
    for s in a.sparsities:
        tag = f"{int(s * 100)}%"
        common = ["oneshot", "--model", str(ft), "--sparsity", str(s), "--evaluate",
                  "--max-train-samples", str(a.train_rows)]
        rows.append(step(a, f"magnitude {tag}", [*common, "--method", "magnitude"],
                         work / f"mag-{tag}"))
        rows.append(step(a, f"oBERT r=1 {tag}", [*common, "--num-grads", str(a.num_grads),
                                                 "--damp", str(a.damp)], work / f"ob1-{tag}"))
        rows.append(step(a, f"oBERT r=8 {tag}", [*common, "--num-grads", str(a.r8_grads),
                                                 "--recomputations", "8", "--damp", str(a.damp)],
                         work / f"ob8-{tag}"))
    recipe = {
        "epochs": a.gradual_epochs, "batch_size": 16, "max_seq_length": a.seq_len,
        "lr": {"schedule": "cyclic_linear", "max": 8e-5, "min": 8e-6},
        "pruning": {"method": "obert", "init_sparsity": 0.7, "final_sparsity": 0.8,
                    "start_epoch": round(a.gradual_epochs * 2 / 30, 6),
                    "end_epoch": round(a.gradual_epochs * 26 / 30, 6),
                    "update_frequency": round(a.gradual_epochs * 8 / 30, 6),
                    "fisher": {"num_grads": a.num_grads, "block_size": 50, "damp": a.damp,
                               "grad_batch_size": 8}},
        "distillation": {"hardness": 1.0, "temperature": 2.0},
    }
    import yaml

    (work / "gradual.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    rows.append(step(a, "gradual oBERT 80% + KD",
                     ["prune", "--recipe", str(work / "gradual.yaml"), "--model", str(ft),
                      "--max-train-samples", str(a.train_rows), "--logging-steps", "50"],
                     work / "gradual-80"))
    return {"setup": {k: getattr(a, k) for k in ("train_rows", "heldout", "seq_len", "doc_stride",
                                                 "epochs", "num_grads", "r8_grads", "damp",
                                                 "gradual_epochs", "threads")},
            "command": " ".join(sys.argv), "gradual_recipe": recipe, "results": rows}


def report(data: dict, out: Path) -> None:
    s = data["setup"]
    lines = [
        "# SQuAD v1.1 miniature: MiniLM-L6, article split of the official dev file",
        "",
        f"Command: `{data['command']}`",
        "",
        f"- Split: train on the dev file minus its last {s['heldout']} articles "
        f"({s['train_rows']} questions drawn from them), score on those {s['heldout']} articles "
        "(`--split-articles`). Not comparable to the paper's figures, which train on SQuAD train.",
        f"- Windows of {s['seq_len']} tokens, stride {s['doc_stride']}; dense fine-tuning "
        f"{s['epochs']} epochs at LR 1e-4, batch 16.",
        f"- One-shot oBERT: B = 50, λ = {s['damp']:g}, gradient batch 8; r = 1 with "
        f"m = {s['num_grads']}, r = 8 with {s['r8_grads']} per recomputation.",
        f"- Gradual: {s['gradual_epochs']} epochs, 70% first step, cubic to 80%, LR rewinds, "
        "pure KD (T = 2) on start/end logits from the dense model.",
        f"- {s['threads']} torch threads on the 2-core CPU.",
        "",
        "| step | sparsity | EM | F1 | wall time |",
        "|---|---|---|---|---|",
    ]
    for r in data["results"]:
        lines.append(f"| {r['name']} | {r['sparsity']:.3f} | {r['exact_match']:.2f} | "
                     f"{r['f1']:.2f} | {r['wall_s'] / 60:.1f} min |")
    (out / "squad.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data/squad")
    ap.add_argument("--heldout", type=int, default=8, help="articles held out for scoring")
    ap.add_argument("--train-rows", type=int, default=1500)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--doc-stride", type=int, default=96)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--num-grads", type=int, default=64)
    ap.add_argument("--r8-grads", type=int, default=8)
    ap.add_argument("--damp", type=float, default=1e-7)
    ap.add_argument("--gradual-epochs", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/obert-squad")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny settings, to check the script")
    a = ap.parse_args()
    if a.smoke:
        a.train_rows, a.heldout, a.seq_len, a.doc_stride = 48, 1, 128, 48
        a.epochs, a.num_grads, a.r8_grads, a.gradual_epochs = 0.5, 4, 2, 0.5
        a.sparsities = [0.5]
    run_and_report(Path(a.out), "squad", None if a.report_only else lambda: run(a), report)


if __name__ == "__main__":
    main()
