"""What each of compile()'s fusions buys, end to end: BERT-base (random weights), encoder
linears pruned to 90% in 4-blocks, INT8, seq 128, each fusion switched off on its own.

    python benchmarks/fusions.py                      # -> results/fusions.{md,json}
    python benchmarks/fusions.py --batches 1 --rounds 3 --out /tmp/fusions   # a quick look

Every variant is the same pruned model compiled with one option off (``fuse_residual``,
``fuse_ffn``, ``fuse_qkv``; and the INT8 kernel's one-row walk), profiled
(``obert.runtime.profile``) in interleaved rounds, the order rotated each round, so the
machine's swings hit all variants alike. A fusion's gain is the median over rounds of that
round's ratio (variant off / all on), with its range; every variant's logits are checked equal
to the all-on model's first (the fusions change no number).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import HERE, log, save_report, write_atomic  # noqa: E402
from runtime import prune_linears  # noqa: E402

import obert.runtime as rt  # noqa: E402
from obert.runtime.bench import example_inputs, main_output  # noqa: E402
from obert.runtime.profile import PARTS, profile  # noqa: E402

RESULTS = HERE / "results"
SEQ = 128
OFF = {  # variant -> compile() options (and the tile walk) that switch one fusion off
    "all fusions": {},
    "no residual fusion": {"fuse_residual": False},
    "no feed-forward fusion": {"fuse_ffn": False},
    "no q/k/v fusion": {"fuse_qkv": False},
    "one-row INT8 walk": {"walk": "rows"},
}


def bench(batch: int, a: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    from transformers import BertConfig, BertForSequenceClassification

    model = prune_linears(BertForSequenceClassification(BertConfig()).eval(), 0.9, 4)
    inputs = example_inputs(model, batch, SEQ)
    kern = rt.kernels()
    built = {}
    for name, opts in OFF.items():
        opts = {k: v for k, v in opts.items() if k != "walk"}
        built[name] = rt.compile(model, "int8", **opts)
    walks = {name: OFF[name].get("walk", "pairs") for name in OFF}
    with torch.inference_mode():
        ref = main_output(built["all fusions"](**inputs))
        for name, m in built.items():
            kern.set_i8_tile(walks[name])
            if not torch.equal(main_output(m(**inputs)), ref):
                raise SystemExit(f"{name}: logits differ from the fused model's")
    rounds: dict[str, list[dict]] = {n: [] for n in OFF}
    names = list(OFF)
    try:
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                kern.set_i8_tile(walks[name])
                rounds[name].append(profile(built[name], inputs, a.calls, warmup=1))
    finally:
        kern.set_i8_tile("pairs")
    out = {"batch": batch, "variants": {}}
    base = rounds["all fusions"]
    for name, rs in rounds.items():
        med = {k: statistics.median(p[k] for p in rs) for k in rs[0]}
        ratio = [p["total_ms"] / b["total_ms"] for p, b in zip(rs, base, strict=True)]
        out["variants"][name] = {"median": med, "x": {"median": statistics.median(ratio),
                                                      "min": min(ratio), "max": max(ratio)}}
        log(f"b{batch} {name}: {med['total_ms']:.1f} ms, off/on "
            f"{statistics.median(ratio):.3f} [{min(ratio):.3f}-{max(ratio):.3f}]")
    return out


def write_md(res: dict, path: Path) -> None:
    lines = ["# What each fusion of compile() buys", "",
             f"`python benchmarks/fusions.py`: BERT-base (random, seed 0), encoder linears pruned "
             f"to 90% 4-blocks, INT8, seq {SEQ}; {res['threads']} threads, kernels "
             f"`{res['isa']}`, torch {res['torch']}; {res['rounds']} interleaved rounds of "
             f"{res['calls']} profiled forwards per variant (the round's median kept); load "
             f"average {res['load_start']:.2f} at the start, {res['load_end']:.2f} at the end. "
             "Logits of every variant equal the all-fusions model's. \"off / on\" is the median "
             "over rounds of that round's total-time ratio, [min–max]: above 1, the fusion pays.",
             ""]
    for b in res["batches"]:
        lines += [f"## Batch {b['batch']}", "",
                  "| variant | total ms | off / on | " + " | ".join(PARTS) + " | rest |",
                  "|---|---|---|" + "---|" * (len(PARTS) + 1)]
        for name, v in b["variants"].items():
            m, x = v["median"], v["x"]
            lines.append(f"| {name} | {m['total_ms']:.2f} | {x['median']:.3f} "
                         f"[{x['min']:.3f}–{x['max']:.3f}] | "
                         + " | ".join(f"{m[p + '_ms']:.2f}" for p in (*PARTS, "rest")) + " |")
        lines.append("")
    write_atomic(path, "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=5, help="profiled forwards per round")
    ap.add_argument("--out", default=str(RESULTS / "fusions"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0, load = time.time(), os.getloadavg()[0]
    res = {"threads": a.threads, "isa": rt.isa(), "torch": torch.__version__,
           "rounds": a.rounds, "calls": a.calls, "load_start": load,
           "batches": [bench(b, a) for b in a.batches]}
    res["load_end"], res["minutes"] = os.getloadavg()[0], (time.time() - t0) / 60
    save_report(Path(a.out), res, write_md)


if __name__ == "__main__":
    main()
