"""One INT8 model from QAT to ONNX: how far apart QAT's simulation, ``compile(int8)`` and the
exported file are, on a real QAT model and the whole SST-2 dev set.

The model: the bundled recipe ``gmp-glue-L6-block4-80-qat`` in miniature (MiniLM-L6 has its 6
layers already, so no layers are dropped): MiniLM fine-tuned on ``--train-rows`` SST-2 rows
(the teacher benchmarks/gradual.py caches), then the recipe's schedule scaled to
``--epochs`` epochs of GMP★ 4-block pruning to 80% and ``--qat-epochs`` of INT8 QAT, with
KD from the teacher, in one ``obert prune`` run. Then, on the 872 dev rows:
- the largest logit gap between each pair of QAT's simulation (PyTorch, fake quantization),
  ``compile(int8)`` (obert's kernels, the model as it runs) and ONNX Runtime on the
  ``export --int8`` file, and the fraction of rows where they pick the same label;
- the same for an export whose attention stays fp32 (what the export wrote before the INT8
  plan): the gap INT8 attention closes.

    python benchmarks/int8_export.py --data-dir ../shared/data/glue
    python benchmarks/int8_export.py --report-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _bench import HERE, OBERT, log, run_and_report, teacher, thread_env

RECIPE = "gmp-glue-L6-block4-80-qat"


def recipe(a, teacher_dir: Path) -> dict:
    """The bundled recipe, its epochs scaled to ``a.epochs`` (pruning) + ``a.qat_epochs``."""
    from obert.training.recipe import bundled_recipes

    r = yaml.safe_load(bundled_recipes()[RECIPE].read_text())
    f = a.epochs / r["epochs"]
    r["epochs"] = a.epochs
    p = r["pruning"]
    for k in ("start_epoch", "end_epoch", "update_frequency"):
        p[k] = p[k] * f
    r["lr"]["warmup_epochs"] = r["lr"]["warmup_epochs"] * f
    r["layers"] = {"keep": None}  # MiniLM-L6 already has the 6 layers
    r["max_seq_length"] = a.seq_len
    r["distillation"]["teacher"] = str(teacher_dir)
    r["quantization"]["epochs"] = a.qat_epochs
    return r


def train(a, teacher_dir: Path, work: Path) -> Path:
    out = work / "qat"
    if (out / "sparsity.json").is_file() and a.reuse:
        return out
    work.mkdir(parents=True, exist_ok=True)
    rpath = work / "recipe.yaml"
    rpath.write_text(yaml.safe_dump(recipe(a, teacher_dir), sort_keys=False))
    log(f"pruning + QAT ({a.epochs:g} + {a.qat_epochs:g} epochs on {a.train_rows} rows)")
    subprocess.run([*OBERT, "prune", "--recipe", str(rpath), "--model", str(teacher_dir),
                    "--task", "sst2", "--data-dir", a.data_dir, "--max-train-samples",
                    str(a.train_rows), "--output", str(out), "--overwrite", "--quiet"],
                   check=True, env=thread_env(a.threads))
    return out


def measure(model_dir: Path, data_dir: str, seq_len: int) -> dict:
    """Logits of QAT's simulation, compile(int8) and ONNX Runtime on every dev row."""
    import copy

    import numpy as np
    import torch

    from obert.compression.plan import int8_plan, prepare_qat
    from obert.data.source import DataArgs
    from obert.models import load_for_inference, load_tokenizer
    from obert.runtime.compile import compile as compile_model
    from obert.runtime.export import export_onnx
    from obert.workflows.export import check_rows

    model = load_for_inference(str(model_dir))
    tok = load_tokenizer(str(model_dir))
    data = DataArgs("sst2", data_dir)
    inputs = check_rows(tok, data, 10_000, seq_len)
    labels = np.array(data.load("dev")["label"])
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in inputs]

    def logits(m) -> np.ndarray:
        with torch.inference_mode():
            return m(**{n: inputs[n] for n in names}).logits.float().numpy()

    res, outs = {}, {}
    for attention in (True, False):
        plan = int8_plan(model, attention=attention)
        key = "int8_attention" if attention else "fp32_attention"
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            import onnxruntime as ort

            from obert.runtime.export import ORT_EXACT

            path = Path(tmp) / "q.onnx"
            rep = export_onnx(model, path, inputs, int8=True, plan=plan, tolerance=1.0)
            so = ort.SessionOptions()
            for k, v in ORT_EXACT.items():
                so.add_session_config_entry(k, v)
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            onnx_out = sess.run(["logits"], {n: inputs[n].numpy() for n in names})[0]
        qat = copy.deepcopy(model)
        prepare_qat(qat, plan)
        outs[key] = {"onnx": onnx_out, "qat": logits(qat.eval()),
                     "compile": logits(compile_model(model, "int8", plan=plan))}
        res[key] = {"export_report": {k: v for k, v in rep.__dict__.items() if k != "path"},
                    "trained_scales": len(plan.trained), "stale_scales": len(plan.stale),
                    "wall_s": time.time() - t0}
    ref = outs["int8_attention"]["compile"]  # the model as obert runs it
    pairs = {}
    for key, o in outs.items():
        for a, b in (("onnx", "compile"), ("qat", "compile"), ("onnx", "qat")):
            x = o[a]
            y = o[b] if not (key == "fp32_attention" and b == "compile") else ref
            d = np.abs(x - y)
            pairs[f"{key}: {a} vs {b}"] = {
                "max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
                "rows_over_1e-3": float((d.max(-1) > 1e-3).mean()),
                "label_agreement": float((x.argmax(-1) == y.argmax(-1)).mean())}
        res[key]["accuracy"] = {k: float((v.argmax(-1) == labels).mean()) for k, v in o.items()}
    res["pairs"] = pairs
    res["max_logit"] = float(np.abs(ref).max())
    res["rows"] = int(len(labels))
    return res


def run(a) -> dict:
    t0 = time.time()
    teacher_dir = teacher(a.data_dir, a.train_rows, a.teacher_epochs, a.threads)
    model_dir = train(a, teacher_dir, Path(a.work))
    info = json.loads((model_dir / "sparsity.json").read_text())
    import torch

    torch.set_num_threads(a.threads)
    res = measure(model_dir, a.data_dir, a.seq_len)
    return {"setup": {"recipe": RECIPE, "train_rows": a.train_rows, "epochs": a.epochs,
                      "qat_epochs": a.qat_epochs, "seq_len": a.seq_len, "threads": a.threads,
                      "teacher_epochs": a.teacher_epochs,
                      "recipe_used": recipe(a, Path("<teacher>"))},
            "sparsity": info["global_sparsity"], **res, "wall_s": time.time() - t0,
            "train_wall_s": info["train"]["wall_s"],
            "command": "python benchmarks/int8_export.py " + " ".join(sys.argv[1:])}


def report(res: dict, out: Path) -> None:
    s = res["setup"]
    lines = [
        "# One INT8 model: QAT's simulation, compile(int8) and the ONNX file, side by side",
        "",
        f"Command: `{res['command']}` (pruning + QAT {res['train_wall_s'] / 60:.0f} min, "
        f"this run {res['wall_s'] / 60:.0f} min, {s['threads']} threads).",
        "",
        f"- Model: the bundled recipe `{s['recipe']}` in miniature: MiniLM-L6 fine-tuned on "
        f"{s['train_rows']} SST-2 rows ({s['teacher_epochs']:g} epochs), then {s['epochs']:g} "
        f"epochs of GMP★ 4-block pruning to 80% (the recipe's schedule scaled) and "
        f"{s['qat_epochs']:g} epoch(s) of INT8 QAT with KD, {s['seq_len']} tokens; measured "
        f"sparsity {res['sparsity']:.4f}.",
        f"- Rows: the whole SST-2 dev set ({res['rows']} rows); largest |logit| "
        f"{res['max_logit']:.2f}. ONNX Runtime with `session.disable_quant_qdq=1`.",
        "- *compile(int8)* is the model as obert runs it (its kernels); *QAT* is the PyTorch "
        "simulation training used; *ONNX* is `obert export --int8`'s file.",
        "",
        "| export attention | pair | largest logit gap | mean gap | rows off by > 1e-3 | "
        "same label |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, p in res["pairs"].items():
        att, pair = key.split(": ")
        lines.append(f"| {att.replace('_', ' ')} | {pair} | {p['max_abs_diff']:.2e} | "
                     f"{p['mean_abs_diff']:.1e} | {p['rows_over_1e-3']:.1%} | "
                     f"{p['label_agreement']:.2%} |")
    lines += ["", "| export attention | accuracy: ONNX | QAT | compile(int8) |",
              "|---|---:|---:|---:|"]
    for key in ("int8_attention", "fp32_attention"):
        acc = res[key]["accuracy"]
        lines.append(f"| {key.replace('_', ' ')} | {acc['onnx']:.4f} | {acc['qat']:.4f} | "
                     f"{acc['compile']:.4f} |")
    lines += ["", "*fp32 attention* rows compare that file (and a QAT simulation without INT8 "
              "attention) with the compile(int8) that runs INT8 attention: the gap the export "
              "had before it wrote INT8 attention.", ""]
    (out / "int8_export.md").write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data" / "glue"))
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--teacher-epochs", type=float, default=2)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--qat-epochs", type=float, default=1)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=str(HERE / ".cache" / "int8_export"))
    p.add_argument("--reuse", action="store_true", help="keep a finished QAT model in --work")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--out", default=str(HERE / "results"))
    a = p.parse_args()
    run_and_report(Path(a.out), "int8_export", None if a.report_only else (lambda: run(a)),
                   report)


if __name__ == "__main__":
    main()
