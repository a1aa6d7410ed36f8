"""Upstream pruning on masked-language modelling, then sparse transfer, in miniature.

The paper's two-stage path (PAPER.md §2, "upstream (MLM)" and "sparse transfer") on this
machine, every step an ``obert`` command:

1. **Teacher**: MiniLM-L6 ships without its MLM head, so one is fitted on the frozen encoder
   (``obert finetune --task mlm --head-only``) on the corpus below.
2. **Corpus**: the paragraphs (contexts) of the SQuAD v1.1 dev file, which no score here uses:
   articles 1-40 are the training text (1,733 paragraphs), articles 41-48 the validation text
   (334 paragraphs). Wikipedia text, as in the paper's corpus.
3. **Upstream**: oBERT and GMP★ to 80% and 90% on ``--up-docs`` training paragraphs
   (``obert prune --task mlm``), KD from the teacher at T = 5.5, the paper's upstream shape
   scaled: first step to 70%, cubic to the target, LR rewound at each step.
4. **Transfer**: each sparse model fine-tuned on SST-2 and MRPC with its zeros fixed
   (``pruning: null``, the sparse-transfer recipe's LR 1.5e-4 → 1.5e-6 and KD at T = 5.5, over
   ``--task-epochs`` instead of 8), KD from a dense MiniLM fine-tuned on the task.
5. **Downstream** (the reference): the dense task teacher pruned with oBERT to the same
   sparsity with the same downstream budget (rows, epochs, batch), KD at T = 2 and the
   downstream schedule of benchmarks/gradual.py. It starts from the fine-tuned model, which is
   an advantage the transferred models do not have.

    python benchmarks/upstream.py --data-dir ../shared/data
    python benchmarks/upstream.py --report-only
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

from _bench import HERE, OBERT, log, run_and_report, run_jobs, teacher, thread_env

SPARSITIES = (0.8, 0.9)
METHODS = {"obert": "oBERT", "magnitude": "GMP★"}
TASKS = ("sst2", "mrpc")


def write_corpus(data_dir: Path, out: Path) -> dict:
    """SQuAD dev contexts: articles 1-40 train.txt, 41-48 dev.txt (one paragraph per line)."""
    squad = json.loads((data_dir / "squad" / "dev-v1.1.json").read_text())["data"]
    paras = [[" ".join(p["context"].split()) for p in a["paragraphs"]] for a in squad]
    out.mkdir(parents=True, exist_ok=True)
    train = [p for a in paras[:40] for p in a]
    dev = [p for a in paras[40:] for p in a]
    (out / "train.txt").write_text("\n".join(train) + "\n")
    (out / "dev.txt").write_text("\n".join(dev) + "\n")
    return {"source": "SQuAD v1.1 dev contexts", "train": "articles 1-40",
            "dev": "articles 41-48", "train_paragraphs": len(train), "dev_paragraphs": len(dev)}


def upstream_recipe(a, method: str, target: float) -> dict:
    """The paper's upstream shape in ``a.up_epochs``: 70% at epoch 0, cubic to the target,
    a step every ``a.up_epochs / 4``, the last at 3/4 of the run, LR cycles, KD T = 5.5."""
    e = a.up_epochs
    return {"epochs": e, "batch_size": 16, "max_seq_length": 128,
            "lr": {"schedule": "cyclic_linear", "max": a.up_lr, "min": a.up_lr / 100},
            "pruning": {"method": method, "init_sparsity": 0.7, "final_sparsity": target,
                        "start_epoch": 0, "end_epoch": round(0.75 * e, 6),
                        "update_frequency": round(0.25 * e, 6), "interpolation": "cubic",
                        "fisher": {"num_grads": a.num_grads, "block_size": 50, "damp": a.damp,
                                   "grad_batch_size": a.grad_batch}},
            "distillation": {"teacher": None, "hardness": 1.0, "temperature": 5.5}}


def transfer_recipe(a, teacher_path: str) -> dict:
    return {"epochs": a.task_epochs, "batch_size": 32, "max_seq_length": 128,
            "lr": {"schedule": "linear", "max": 1.5e-4, "min": 1.5e-6}, "pruning": None,
            "distillation": {"teacher": teacher_path, "hardness": 1.0, "temperature": 5.5}}


def downstream_recipe(a, target: float, teacher_path: str) -> dict:
    """benchmarks/gradual.py's schedule: the paper's 30-epoch shape scaled to the budget."""
    f = a.task_epochs / 30
    return {"epochs": a.task_epochs, "batch_size": 32, "max_seq_length": 128,
            "lr": {"schedule": "cyclic_linear", "max": 8e-5, "min": 8e-6},
            "pruning": {"method": "obert", "init_sparsity": 0.7, "final_sparsity": target,
                        "start_epoch": round(2 * f, 6), "end_epoch": round(26 * f, 6),
                        "update_frequency": round(4 * f, 6), "interpolation": "cubic",
                        "fisher": {"num_grads": a.down_grads, "block_size": 50, "damp": 1e-7,
                                   "grad_batch_size": 16}},
            "distillation": {"teacher": teacher_path, "hardness": 1.0, "temperature": 2.0}}


def task_teacher(a, task: str) -> Path:
    """A dense MiniLM fine-tuned on the task: the SST-2 cache the other benchmarks share
    (8,000 rows, 2 epochs), and one for MRPC (all 3,668 rows, 3 epochs)."""
    if task == "sst2":
        return teacher(str(a.data_dir / "glue"), 8000, 2, a.threads)
    cache = HERE / ".cache" / "teacher-mrpc-3"
    if not (cache / "model.safetensors").is_file():
        from obert.demo import default_model

        log("fine-tuning the dense MRPC teacher (3 epochs)")
        subprocess.run([*OBERT, "finetune", "--model", default_model(), "--task", "mrpc",
                        "--data-dir", str(a.data_dir / "glue"), "--epochs", "3", "--lr", "8e-5",
                        "--output", str(cache), "--overwrite", "--quiet"], check=True,
                       env=thread_env(a.threads))
    return cache


def mlm_teacher(a, corpus: Path) -> Path:
    """MiniLM-L6 with an MLM head fitted on the frozen encoder (the corpus's train text)."""
    cache = HERE / ".cache" / f"teacher-mlm-head-{a.head_epochs:g}"
    if not (cache / "model.safetensors").is_file():
        from obert.demo import default_model

        log(f"fitting the MLM head on the frozen encoder ({a.head_epochs:g} epochs)")
        subprocess.run([*OBERT, "finetune", "--model", default_model(), "--task", "mlm",
                        "--head-only", "--train-file", str(corpus / "train.txt"),
                        "--validation-file", str(corpus / "dev.txt"), "--epochs",
                        str(a.head_epochs), "--lr", str(a.head_lr), "--output", str(cache),
                        "--overwrite", "--quiet"], check=True, env=thread_env(a.threads))
    return cache


def prune_cmd(recipe_path: Path, model: Path, out: Path, task: str, a, corpus: Path) -> list:
    data = (["--train-file", str(corpus / "train.txt"), "--validation-file",
             str(corpus / "dev.txt"), "--max-train-samples", str(a.up_docs)]
            + ["--logging-steps", str(a.up_eval_steps)] if task == "mlm" else
            ["--data-dir", str(a.data_dir / "glue"),
             *(["--max-train-samples", str(a.sst2_rows)] if task == "sst2" else [])])
    return [*OBERT, "prune", "--recipe", str(recipe_path), "--model", str(model), "--task",
            task, *data, "--output", str(out), "--overwrite", "--quiet"]


def all_jobs(a, work: Path, corpus: Path, mlm: Path, teachers: dict[str, Path]) -> list[dict]:
    jobs = []

    def add(name: str, recipe: dict, model: Path, task: str, after: str | None) -> None:
        jobs.append({"name": name, "recipe": recipe, "after": after,
                     "cmd": prune_cmd(work / f"{name}.yaml", model, work / name, task, a,
                                      corpus)})

    for method in METHODS:
        for s in SPARSITIES:
            up = f"up-{method}-{int(s * 100)}"
            add(up, upstream_recipe(a, method, s), mlm, "mlm", None)
    for method in METHODS:
        for s in SPARSITIES:
            up = f"up-{method}-{int(s * 100)}"
            for task in TASKS:
                add(f"{up}-{task}", transfer_recipe(a, str(teachers[task])), work / up, task, up)
    for s in a.down_sparsities:
        for task in TASKS:
            add(f"down-obert-{int(s * 100)}-{task}",
                downstream_recipe(a, s, str(teachers[task])), teachers[task], task, None)
    return jobs


def read(folder: Path) -> dict:
    res = json.loads((folder / "eval_results.json").read_text())
    sp = json.loads((folder / "sparsity.json").read_text())
    return {**res, "sparsity": sp["global_sparsity"], "wall_s": sp.get("train", {}).get("wall_s"),
            **({"masks": sp["masks"]} if "masks" in sp else {})}


def run(a) -> dict:
    import torch

    work = HERE / ".cache" / "upstream"
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    corpus_info = write_corpus(a.data_dir, corpus)
    t0 = time.time()
    teachers = {t: task_teacher(a, t) for t in TASKS}
    mlm = mlm_teacher(a, corpus)
    head_wall = time.time() - t0
    walls = run_jobs(all_jobs(a, work, corpus, mlm, teachers), work, a.parallel,
                     1 if a.parallel > 1 else a.threads, a.reuse)
    results = {name: {**read(work / name), "job_wall_s": walls.get(name)}
               for name in sorted(p.name for p in work.iterdir()
                                  if (p / "eval_results.json").is_file())}
    return {"settings": vars(a) | {"data_dir": str(a.data_dir)}, "corpus": corpus_info,
            "machine": {"cpu": platform.processor() or platform.machine(),
                        "torch": torch.__version__, "threads_per_job": 1 if a.parallel > 1
                        else a.threads, "parallel_jobs": a.parallel},
            "mlm_teacher": read(mlm), "task_teachers": {t: read(p) for t, p in teachers.items()},
            "teachers_wall_s": head_wall, "results": results, "total_wall_s": time.time() - t0}


def report(res: dict, out: Path) -> None:
    s, c = res["settings"], res["corpus"]
    t = res["mlm_teacher"]
    lines = [
        "# Upstream (MLM) pruning and sparse transfer, in miniature",
        "",
        "`python benchmarks/upstream.py` — every step an `obert` command "
        f"({res['machine']['parallel_jobs']} jobs at a time, {res['machine']['threads_per_job']}"
        f" thread each, torch {res['machine']['torch']}; {res['total_wall_s'] / 60:.0f} min in all).",
        "",
        f"- Corpus: {c['source']}: {c['train']} train ({c['train_paragraphs']:,} paragraphs, "
        f"{s['up_docs']} of them used upstream), {c['dev']} validation ({c['dev_paragraphs']} "
        "paragraphs). No score below uses SQuAD.",
        f"- MLM teacher: MiniLM-L6 with its MLM head fitted on the frozen encoder "
        f"(`obert finetune --task mlm --head-only`, {s['head_epochs']:g} epochs, LR "
        f"{s['head_lr']:g}, all train paragraphs): masked-token accuracy {t['accuracy']:.4f}, "
        f"perplexity {t['perplexity']:.1f} on the validation text.",
        f"- Upstream: {s['up_epochs']:g} epochs, batch 16 × 128 tokens, LR cycles "
        f"{s['up_lr']:g} → {s['up_lr'] / 100:g}, 4 pruning steps (70% then cubic), KD T = 5.5; "
        f"oBERT Fisher m = {s['num_grads']} gradients of {s['grad_batch']} blocks, B = 50, "
        f"λ = {s['damp']:g} (the paper: m = 1024 of 16 × 512).",
        f"- Transfer: masks fixed, {s['task_epochs']:g} epochs, batch 32, LR 1.5e-4 → 1.5e-6 "
        f"linear, KD T = 5.5 from the dense task model; SST-2 on {s['sst2_rows']:,} train rows, "
        "MRPC on all 3,668. Downstream oBERT: the same rows, epochs and batch from the dense "
        f"task model (KD T = 2, the gradual.py schedule: 7 steps, m = {s.get('down_grads', 64)} "
        "gradients of 16 rows per step).",
        "",
        "## Upstream models (MLM, validation text)",
        "",
        "| model | sparsity | masked-token accuracy | perplexity | training wall (min) |",
        "|---|---|---|---|---|",
        f"| teacher (dense, fitted head) | 0 | {t['accuracy']:.4f} | {t['perplexity']:.1f} | – |",
    ]
    r = res["results"]
    for m, label in METHODS.items():
        for sp in SPARSITIES:
            x = r.get(f"up-{m}-{int(sp * 100)}")
            if x:
                lines.append(f"| {label} upstream | {x['sparsity']:.3f} | {x['accuracy']:.4f} | "
                             f"{x['perplexity']:.1f} | {x['wall_s'] / 60:.1f} |")
    lines += ["", "## Transfer (dev sets: SST-2 accuracy on 872 rows, MRPC F1 / accuracy on 408)",
              "", "| task | sparsity | oBERT upstream → transfer | GMP★ upstream → transfer | "
              "downstream oBERT | dense teacher |", "|---|---|---|---|---|---|"]

    def cell(x: dict | None, task: str) -> str:
        if not x:
            return "–"
        return f"{x['accuracy']:.4f}" if task == "sst2" else f"{x['f1']:.4f} / {x['accuracy']:.4f}"

    for task in TASKS:
        dense = res["task_teachers"][task]
        for sp in SPARSITIES:
            k = int(sp * 100)
            lines.append(f"| {task} | {k}% | {cell(r.get(f'up-obert-{k}-{task}'), task)} | "
                         f"{cell(r.get(f'up-magnitude-{k}-{task}'), task)} | "
                         f"{cell(r.get(f'down-obert-{k}-{task}'), task)} | {cell(dense, task)} |")
    lines += ["", "## Goals (at 90%)", ""]
    for task in TASKS:
        key = "accuracy" if task == "sst2" else "f1"
        up, gmp, down = (r.get(f"{p}-90-{task}") for p in ("up-obert", "up-magnitude",
                                                             "down-obert"))
        if up and down:
            gap = 100 * (down[key] - up[key])
            lines.append(f"- {task}: oBERT transfer {up[key]:.4f} vs downstream oBERT "
                         f"{down[key]:.4f}: {gap:+.2f} points behind "
                         f"({'met' if gap <= 2 else 'missed'}: within 2 points).")
        if up and gmp:
            lines.append(f"- {task}: oBERT upstream {up[key]:.4f} vs GMP★ upstream {gmp[key]:.4f}"
                         f" after transfer ({'met' if up[key] > gmp[key] else 'missed'}: oBERT ahead).")
    lines += ["", "Training wall times (minutes, from each output's sparsity.json; two jobs "
              "shared the 2 cores): " + ", ".join(
                  f"{n} {x['wall_s'] / 60:.1f}" for n, x in sorted(r.items()) if x.get("wall_s")),
              ""]
    (out / "upstream.md").write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    p.add_argument("--up-docs", type=int, default=600, help="training paragraphs upstream")
    p.add_argument("--up-epochs", type=float, default=2.0)
    p.add_argument("--up-lr", type=float, default=1e-4)
    p.add_argument("--num-grads", type=int, default=64)
    p.add_argument("--up-eval-steps", type=int, default=48,
                   help="upstream: score the dev text every N steps (a pass costs ~1 min)")
    p.add_argument("--grad-batch", type=int, default=4)
    p.add_argument("--damp", type=float, default=1e-7)
    p.add_argument("--down-sparsities", type=float, nargs="+", default=[0.9],
                   help="downstream references to run (the goals are at 90%%)")
    p.add_argument("--down-grads", type=int, default=64,
                   help="downstream oBERT: Fisher gradients per step (gradual.py uses 256)")
    p.add_argument("--head-epochs", type=float, default=2.0)
    p.add_argument("--head-lr", type=float, default=3e-3)
    p.add_argument("--task-epochs", type=float, default=2.0)
    p.add_argument("--sst2-rows", type=int, default=4000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=2, help="jobs at a time (1 thread each)")
    p.add_argument("--reuse", action="store_true", help="keep finished jobs of an earlier run")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    run_and_report(HERE / "results", "upstream", None if a.report_only else (lambda: run(a)),
                   report)


if __name__ == "__main__":
    main()
