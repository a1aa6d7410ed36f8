"""The INT8 4-block sparse kernel alone: its row walks ("rows", one output row at a time, and
"pairs", two side by side) on BERT-base's linear shapes at 90% 4-block sparsity, timed in
interleaved rounds in one process (``set_i8_tile`` switches between calls).

Each round times ``--calls`` calls of each walk (the order rotated by the round) and keeps
their median; a walk's time is the median over rounds with the [min-max] spread, and the
speed-up is the median of the per-round ratios rows / pairs. Both walks must give the same
output bit for bit (int32 sums are exact); the script stops if they do not. Results go to
benchmarks/results/kernels.{md,json}. (Not named kernels.py: that would shadow Hugging Face's
`kernels` package, which transformers imports.)

    python benchmarks/int8_kernels.py                # 2 and 1 threads, M = 128 and 1024
    python benchmarks/int8_kernels.py --rounds 15 --threads 1
    python benchmarks/int8_kernels.py --e2e          # also BERT-base 90% INT8 forwards, profiled

``--e2e`` times whole forwards of a random BERT-base whose encoder linears keep the 10%
largest 4-blocks, compiled to INT8 (``obert.runtime.compile``), the two walks in interleaved
rounds of ``obert.runtime.profile.profile`` (median ms per part over a few forwards).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from obert.runtime._ext import kernels
from obert.runtime.pack import Packed, pack_i8

RESULTS = Path(__file__).parent / "results"
SHAPES = [(768, 768), (768, 2304), (768, 3072), (3072, 768)]  # (K inputs, N outputs)
WALKS = ("rows", "pairs")


def block_sparse(n: int, k: int, density: float, g: torch.Generator) -> torch.Tensor:
    """A [n, k] weight whose 4-blocks along the input are kept with probability ``density``."""
    keep = torch.rand(n, (k + 3) // 4, generator=g) < density
    return torch.randn(n, k, generator=g) * keep.repeat_interleave(4, 1)[:, :k]


def time_walks(x: torch.Tensor, p: Packed, rounds: int, calls: int) -> dict[str, list[float]]:
    """Per-round median ms of each walk, interleaved; checks they agree exactly first."""
    k = kernels()

    def call() -> torch.Tensor:
        return k.spmm_i8(x, p.row_ptr, p.col, p.wq, p.sw, p.wsum, p.out_features)

    outs = {}
    for walk in WALKS:
        k.set_i8_tile(walk)
        outs[walk] = call()
    if not torch.equal(outs["rows"], outs["pairs"]):
        raise SystemExit(f"walks disagree on {tuple(x.shape)} x {p.out_features}")
    ms: dict[str, list[float]] = {w: [] for w in WALKS}
    for r in range(rounds):
        for walk in WALKS[r % 2:] + WALKS[:r % 2]:
            k.set_i8_tile(walk)
            call()  # warm the caches for this walk
            t = []
            for _ in range(calls):
                t0 = time.perf_counter()
                call()
                t.append((time.perf_counter() - t0) * 1e3)
            ms[walk].append(statistics.median(t))
    return ms


def run(a: argparse.Namespace) -> dict:
    g = torch.Generator().manual_seed(0)
    rows = []
    default = kernels().i8_tile()
    try:
        for threads in a.threads:
            torch.set_num_threads(threads)
            for k_in, n_out in SHAPES:
                p = pack_i8(block_sparse(n_out, k_in, 1.0 - a.sparsity, g))
                for m in a.tokens:
                    x = torch.randn(m, k_in, generator=g)
                    calls = max(3, a.calls * 128 // m)
                    ms = time_walks(x, p, a.rounds, calls)
                    ratio = [r / q for r, q in zip(ms["rows"], ms["pairs"], strict=True)]
                    row = {"threads": threads, "K": k_in, "N": n_out, "M": m,
                           "nnz_blocks": p.nnz_blocks, "calls": calls,
                           **{f"{w}_ms": statistics.median(ms[w]) for w in WALKS},
                           **{f"{w}_min_ms": min(ms[w]) for w in WALKS},
                           **{f"{w}_max_ms": max(ms[w]) for w in WALKS},
                           "speedup": statistics.median(ratio),
                           "speedup_min": min(ratio), "speedup_max": max(ratio),
                           "rounds_ms": ms}
                    rows.append(row)
                    print(f"{threads} thr  K {k_in:4d} -> N {n_out:4d}  M {m:4d}: rows "
                          f"{row['rows_ms']:.3f} ms, pairs {row['pairs_ms']:.3f} ms, "
                          f"x{row['speedup']:.2f} [{row['speedup_min']:.2f}-"
                          f"{row['speedup_max']:.2f}]", flush=True)
    finally:
        kernels().set_i8_tile(default)
    return {"setup": {"sparsity": a.sparsity, "rounds": a.rounds, "isa": kernels().isa(),
                      "torch": torch.__version__, "python": platform.python_version(),
                      "cpu": platform.processor() or platform.machine()},
            "rows": rows}


def end_to_end(a: argparse.Namespace) -> list[dict]:
    """Profiled BERT-base 90% 4-block INT8 forwards with each walk, interleaved."""
    from runtime import prune_linears  # benchmarks/runtime.py
    from transformers import BertConfig, BertForSequenceClassification

    from obert.runtime import compile as obert_compile
    from obert.runtime.bench import example_inputs
    from obert.runtime.profile import profile

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig()).eval()
    model = obert_compile(prune_linears(base, a.sparsity, 4), "int8")
    k = kernels()
    out = []
    for threads in a.threads:
        torch.set_num_threads(threads)
        for batch in a.e2e_batches:
            inputs = example_inputs(model, batch, 128)
            runs: dict[str, list[dict]] = {w: [] for w in WALKS}
            for r in range(a.e2e_rounds):
                for walk in WALKS[r % 2:] + WALKS[:r % 2]:
                    k.set_i8_tile(walk)
                    runs[walk].append(profile(model, inputs, calls=3, warmup=1))
            k.set_i8_tile("pairs")
            row: dict = {"threads": threads, "batch": batch, "seq_len": 128}
            for part in ("total_ms", "linears_ms"):
                ratio = [r[part] / p[part] for r, p in
                         zip(runs["rows"], runs["pairs"], strict=True)]
                for w in WALKS:
                    row[f"{w}_{part}"] = statistics.median(x[part] for x in runs[w])
                row[f"{part[:-3]}_speedup"] = statistics.median(ratio)
                row[f"{part[:-3]}_speedup_min"] = min(ratio)
                row[f"{part[:-3]}_speedup_max"] = max(ratio)
            out.append(row)
            print(f"e2e {threads} thr batch {batch}: total rows {row['rows_total_ms']:.1f} ms, "
                  f"pairs {row['pairs_total_ms']:.1f} ms, x{row['total_speedup']:.3f} "
                  f"[{row['total_speedup_min']:.2f}-{row['total_speedup_max']:.2f}]; linears "
                  f"x{row['linears_speedup']:.3f} [{row['linears_speedup_min']:.2f}-"
                  f"{row['linears_speedup_max']:.2f}]", flush=True)
    return out


def report(res: dict) -> str:
    s = res["setup"]
    lines = [
        "# INT8 4-block kernel: one row at a time vs two rows side by side",
        "",
        f"`python benchmarks/int8_kernels.py`: BERT-base linear shapes, {s['sparsity']:.0%} 4-block "
        f"sparsity (uniform random blocks), ISA {s['isa']}, torch {s['torch']}, "
        f"{s['rounds']} interleaved rounds. Times: median ms over rounds [min-max]; speed-up: "
        "median of the per-round ratios rows / pairs [min-max]. Outputs identical bit for bit.",
        "",
        "| threads | K -> N | M | rows ms | pairs ms | speed-up |",
        "|---:|---|---:|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['threads']} | {r['K']} -> {r['N']} | {r['M']} | {r['rows_ms']:.3f} "
            f"[{r['rows_min_ms']:.3f}-{r['rows_max_ms']:.3f}] | {r['pairs_ms']:.3f} "
            f"[{r['pairs_min_ms']:.3f}-{r['pairs_max_ms']:.3f}] | x{r['speedup']:.2f} "
            f"[{r['speedup_min']:.2f}-{r['speedup_max']:.2f}] |")
    if res.get("e2e"):
        lines += [
            "",
            "## End to end: BERT-base, 90% 4-block, INT8 (`--e2e`)",
            "",
            "Random BERT-base, encoder linears pruned to their 10% largest 4-blocks, compiled "
            "to INT8; seq 128. Each round profiles a few forwards per walk "
            "(`obert.runtime.profile`); medians over rounds, speed-up = median per-round "
            "ratio rows / pairs [min-max].",
            "",
            "| threads | batch | total rows ms | total pairs ms | total speed-up | "
            "linears rows ms | linears pairs ms | linears speed-up |",
            "|---:|---:|---:|---:|---|---:|---:|---|",
        ]
        for r in res["e2e"]:
            lines.append(
                f"| {r['threads']} | {r['batch']} | {r['rows_total_ms']:.1f} | "
                f"{r['pairs_total_ms']:.1f} | x{r['total_speedup']:.3f} "
                f"[{r['total_speedup_min']:.2f}-{r['total_speedup_max']:.2f}] | "
                f"{r['rows_linears_ms']:.1f} | {r['pairs_linears_ms']:.1f} | "
                f"x{r['linears_speedup']:.3f} [{r['linears_speedup_min']:.2f}-"
                f"{r['linears_speedup_max']:.2f}] |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 1024], help="M")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=20, help="calls per walk per round at M = 128")
    ap.add_argument("--e2e", action="store_true", help="also profile BERT-base forwards")
    ap.add_argument("--e2e-batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--e2e-rounds", type=int, default=7)
    ap.add_argument("--out", default=str(RESULTS / "kernels"))
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    res = run(a)
    if a.e2e:
        res["e2e"] = end_to_end(a)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(report(res))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
