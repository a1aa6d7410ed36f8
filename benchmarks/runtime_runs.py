"""benchmarks/runtime.py run several times, each in a fresh process, and its goals across runs.

One run's ratios are medians over interleaved rounds, but a shared machine also drifts between
runs (another job starts, the second core comes and goes). A goal holds when the median over
runs of each run's median meets it, and the worst run is reported beside it.

    python benchmarks/runtime_runs.py --runs 3 -- --rounds 7   # args after -- go to runtime.py
    python benchmarks/runtime_runs.py --summarize results/runtime_runs/run*.json

Each run writes results/runtime_runs/run<i>.{md,json}; the last run also becomes
results/runtime.{md,json} (the full report the docs link); the summary goes to
results/runtime_runs.{md,json}. With ``--out PATH`` the runs go to PATH/ and the summary to
PATH.{md,json}, and results/ is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import HERE, save_report, write_atomic  # noqa: E402

RESULTS = HERE / "results"
DEFAULT_OUT = RESULTS / "runtime_runs"


def run_all(n: int, args: list[str], out_dir: Path) -> list[Path]:
    """``n`` runs of runtime.py into ``out_dir``/run<i>.{md,json}; with the default
    ``out_dir``, the last run also becomes results/runtime.{md,json}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(1, n + 1):
        out = out_dir / f"run{i}"
        print(f"[runtime_runs] run {i}/{n}: runtime.py {' '.join(args)}", file=sys.stderr,
              flush=True)
        subprocess.run([sys.executable, str(HERE / "runtime.py"), *args, "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        paths.append(out.with_suffix(".json"))
    if out_dir.resolve() != DEFAULT_OUT.resolve():
        return paths
    for suffix in (".json", ".md"):  # the last run is the full report the docs link
        write_atomic((RESULTS / "runtime").with_suffix(suffix),
                     paths[-1].with_suffix(suffix).read_text())
    return paths


def summarize(paths: list[Path]) -> dict:
    """Per goal (and batch): each run's figure, the median of them and the worst."""
    runs = [json.loads(p.read_text()) for p in paths]
    table: dict[tuple[str, int], dict] = {}
    for i, r in enumerate(runs):
        for g in r["goals"]:
            row = table.setdefault((g["goal"], g["batch"]),
                                   {"goal": g["goal"], "batch": g["batch"], "need": g["need"],
                                    "runs": [None] * len(runs), "measured": [None] * len(runs)})
            row["runs"][i], row["measured"][i] = g["value"], g["measured"]
    rows = []
    for row in table.values():
        vals = [v for v in row["runs"] if v is not None]
        row["median"], row["worst"] = statistics.median(vals), min(vals)
        row["met"] = row["median"] >= row["need"] and len(vals) == len(runs)
        rows.append(row)
    return {"runs": [{"file": str(p.relative_to(HERE)) if p.is_relative_to(HERE) else str(p),
                      "load_start": r["load_start"], "load_end": r["load_end"],
                      "busy": r.get("busy"), "minutes": r["minutes"],
                      "threads": r["threads"], "isa": r["isa"]} for p, r in zip(paths, runs, strict=True)],
            "goals": rows}


def write_md(summary: dict, path: Path) -> None:
    runs = summary["runs"]
    lines = ["# Sparse CPU runtime: the goals over separate runs", "",
             f"`python benchmarks/runtime_runs.py`: `benchmarks/runtime.py` run {len(runs)} times,"
             " each in a fresh process, one after the other, on "
             f"{runs[0]['threads']} threads (kernels `{runs[0]['isa']}`). Within a run every "
             "figure is a median over interleaved rounds (DeepSparse included, in its own "
             "process, in the same rounds); here each run's figure, their median and the worst "
             "run.", "", "| run | load at start → end | busy | minutes | report |",
             "|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        link = Path(os.path.relpath(HERE / Path(r["file"]).with_suffix(".md"), path.parent))
        lines.append(f"| {i} | {r['load_start']:.2f} → {r['load_end']:.2f} | "
                     f"{'yes' if r['busy'] else 'no'} | {r['minutes']:.1f} | [{link}]({link}) |")
    lines += ["", "| goal | batch | " + " | ".join(f"run {i}" for i in range(1, len(runs) + 1))
              + " | median of runs | worst run | met |",
              "|---|---|" + "---|" * len(runs) + "---|---|---|"]
    for g in summary["goals"]:
        cells = " | ".join(m or "—" for m in g["measured"])
        lines.append(f"| {g['goal']} | {g['batch']} | {cells} | {g['median']:.2f} | "
                     f"{g['worst']:.2f} | {'yes' if g['met'] else 'no'} |")
    lines.append("")
    write_atomic(path, "\n".join(lines))


def main() -> None:
    argv = sys.argv[1:]
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--summarize", nargs="+", type=Path,
                    help="summarize these runs' JSON files instead of running")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="the summary's path without suffix; the runs go in the folder of that "
                         "name")
    a = ap.parse_args(argv)
    t0 = time.time()
    paths = a.summarize or run_all(a.runs, rest, a.out)
    summary = summarize(paths)
    summary["minutes"] = (time.time() - t0) / 60
    save_report(a.out, summary, write_md)


if __name__ == "__main__":
    main()
