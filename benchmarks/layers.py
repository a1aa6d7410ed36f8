"""Which layers to keep going from 6 to 3: MiniLM-L6 on SST-2, three choices side by side.

PAPER.md §5 gives the paper's choice from 12 layers (6: 0 2 4 6 8 11; 3: 0 6 11) but nothing
for 6 → 3, so this measures "every other" (0 2 4), "the bottom ones" (0 1 2) and obert's
default rule, first + last + evenly spaced (0 2 5). The teacher is MiniLM-L6 fine-tuned on
``--train-rows`` SST-2 rows (the same cached teacher as benchmarks/gradual.py); each 3-layer
student starts from the teacher's kept layers and is distilled from the full 6-layer teacher
with the recipe below (``obert prune``, ``layers: {keep: …}``, no pruning), on the same rows,
and scored on the whole SST-2 dev set.

    python benchmarks/layers.py --data-dir ../shared/data/glue
    python benchmarks/layers.py --report-only
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import yaml
from _bench import HERE, OBERT, log, run_and_report, teacher, thread_env

CHOICES = {"every other": [0, 2, 4], "bottom": [0, 1, 2], "first + last + even (default)": [0, 2, 5]}


def recipe(epochs: float, keep: list[int]) -> dict:
    return {"epochs": epochs, "batch_size": 32, "max_seq_length": 128,
            "lr": {"schedule": "linear", "max": 1e-4, "min": 1e-5},
            "pruning": None, "layers": {"keep": keep},
            "distillation": {"hardness": 1.0, "temperature": 2.0}}


def run(a) -> dict:
    t_all = time.time()
    tdir = teacher(a.data_dir, a.train_rows, a.teacher_epochs, a.threads)
    dense = json.loads((tdir / "eval_results.json").read_text())["accuracy"]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, keep in CHOICES.items():
        r = work / f"keep-{'-'.join(map(str, keep))}.yaml"
        r.write_text(yaml.safe_dump(recipe(a.epochs, keep), sort_keys=False))
        out = work / f"keep-{'-'.join(map(str, keep))}"
        log(f"{label}: layers {keep}")
        t0 = time.time()
        subprocess.run([*OBERT, "prune", "--recipe", str(r), "--model", str(tdir), "--task",
                        "sst2", "--data-dir", a.data_dir, "--max-train-samples",
                        str(a.train_rows), "--output", str(out), "--overwrite", "--quiet"],
                       check=True, env=thread_env(a.threads))
        acc = json.loads((out / "eval_results.json").read_text())["accuracy"]
        rows.append({"choice": label, "keep": keep, "accuracy": acc,
                     "wall_s": time.time() - t0})
        log(f"{label}: dev accuracy {acc:.4f}")
    return {"setup": {"train_rows": a.train_rows, "teacher_epochs": a.teacher_epochs,
                      "epochs": a.epochs, "threads": a.threads,
                      "recipe": recipe(a.epochs, ["…"]), "python": platform.python_version()},
            "teacher_accuracy": dense, "rows": rows, "wall_s": time.time() - t_all,
            "command": "python benchmarks/layers.py " + " ".join(a.argv)}


def report(res: dict, out: Path) -> None:
    s = res["setup"]
    lines = [
        "# Layer dropping 6 → 3: which layers to keep (MiniLM-L6, SST-2)", "",
        f"Command: `{res['command']}` ({res['wall_s'] / 60:.1f} min, {s['threads']} threads).", "",
        f"Teacher: MiniLM-L6 fine-tuned on {s['train_rows']:,} SST-2 train rows for "
        f"{s['teacher_epochs']:g} epochs (LR 8e-5), dev accuracy {res['teacher_accuracy']:.4f}. "
        f"Each 3-layer student keeps the named layers of the teacher and is distilled from "
        f"the 6-layer teacher on the same rows for {s['epochs']:g} epochs (batch 32, LR 1e-4 → "
        "1e-5 linear, pure KD at T = 2, no pruning); full SST-2 dev set (872 rows).", "",
        "| layers kept | choice | dev accuracy | vs teacher | wall |",
        "|---|---|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(f"| {' '.join(map(str, r['keep']))} | {r['choice']} | {r['accuracy']:.4f} "
                     f"| {r['accuracy'] - res['teacher_accuracy']:+.4f} | "
                     f"{r['wall_s'] / 60:.1f} min |")
    best = max(res["rows"], key=lambda r: r["accuracy"])
    lines += ["", f"Best: {best['choice']} ({' '.join(map(str, best['keep']))}). One run per "
              "choice: differences under about 1 point (9 rows of 872) are within run-to-run "
              "noise of fine-tuning on this machine."]
    (out / "layers.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data" / "glue"))
    p.add_argument("--train-rows", type=int, default=8000)
    p.add_argument("--teacher-epochs", type=float, default=2.0)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="/tmp/obert-layers")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    a.argv = sys.argv[1:]
    run_and_report(Path(a.out), "layers", None if a.report_only else (lambda: run(a)), report)


if __name__ == "__main__":
    main()
