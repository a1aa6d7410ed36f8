"""What the benchmark scripts share: where results go, timestamped logs, obert as a child
process with a fixed thread count (two torch pools on two cores oversubscribe)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
OBERT = [sys.executable, "-m", "obert"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def thread_env(threads: int) -> dict:
    """The environment for a child process that uses ``threads`` OpenMP/MKL threads."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_and_report(out: Path, name: str, run: Callable[[], dict] | None,
                   report: Callable[[dict, Path], None]) -> None:
    """Write run()'s results to out/NAME.json (run None: keep the stored ones), render
    out/NAME.md from that file with report(), and print it."""
    out.mkdir(parents=True, exist_ok=True)
    if run is not None:
        (out / f"{name}.json").write_text(json.dumps(run(), indent=2) + "\n")
    report(json.loads((out / f"{name}.json").read_text()), out)
    print((out / f"{name}.md").read_text())


def write_atomic(path: Path, text: str) -> None:
    """path's new text, written beside it and renamed over it: a killed run never leaves a
    half-written results file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_report(out: Path, res: dict, write_md: Callable[[dict, Path], None]) -> None:
    """res to out.json, write_md(res, out.md), each written whole; print the Markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out.with_suffix(".json"), json.dumps(res, indent=1))
    write_md(res, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())


def teacher(data_dir: str, train_rows: int, epochs: float, threads: int,
            quiet: bool = True) -> Path:
    """MiniLM-L6 fine-tuned densely on ``train_rows`` SST-2 rows (LR 8e-5), cached per rows and
    epochs: the teacher and starting point the SST-2 benchmarks share. The fine-tuning wall
    time is kept in ``finetune_wall_s.txt``."""
    cache = HERE / ".cache" / f"gradual-teacher-sst2-{train_rows}-{epochs:g}"
    if not (cache / "model.safetensors").is_file():
        from obert.demo import default_model

        log(f"fine-tuning the dense teacher ({train_rows} rows, {epochs:g} epochs)")
        cache.parent.mkdir(parents=True, exist_ok=True)  # finetune wants the parent to exist
        t0 = time.time()
        subprocess.run([*OBERT, "finetune", "--model", default_model(), "--task", "sst2",
                        "--data-dir", data_dir, "--max-train-samples", str(train_rows),
                        "--epochs", str(epochs), "--lr", "8e-5", "--output", str(cache),
                        "--overwrite", *(["--quiet"] if quiet else [])], check=True,
                       env=thread_env(threads))
        (cache / "finetune_wall_s.txt").write_text(f"{time.time() - t0:.1f}\n")
    return cache


def run_jobs(jobs: list[dict], work: Path, parallel: int, threads: int, reuse: bool) -> dict:
    """Run ``jobs`` (name, recipe, cmd, after) ``parallel`` at a time, dependencies first;
    returns wall seconds by name. A job whose output already holds sparsity.json is reused
    with ``reuse``."""
    import yaml

    pending, active, done, walls = list(jobs), [], set(), {}
    while pending or active:
        while len(active) < parallel:  # ready re-read after each reuse: it may free others
            ready = [j for j in pending if j["after"] is None or j["after"] in done]
            if not ready:
                break
            j = ready[0]
            pending.remove(j)
            if reuse and (work / j["name"] / "sparsity.json").is_file():
                log(f"reuse {j['name']}")
                done.add(j["name"])
                continue
            (work / f"{j['name']}.yaml").write_text(yaml.safe_dump(j["recipe"], sort_keys=False))
            log(f"start {j['name']}")
            fh = (work / f"{j['name']}.log").open("w")
            p = subprocess.Popen(j["cmd"], env=thread_env(threads), stdout=fh,
                                 stderr=subprocess.STDOUT)
            p.t0, p.job = time.time(), j  # type: ignore[attr-defined]
            active.append(p)
        if not active:
            continue
        while all(p.poll() is None for p in active):
            time.sleep(5)
        p = next(q for q in active if q.poll() is not None)
        active.remove(p)
        if p.returncode != 0:
            raise SystemExit(f"{p.job['name']} failed (rc {p.returncode}); see "
                             f"{work / (p.job['name'] + '.log')}")
        walls[p.job["name"]] = time.time() - p.t0
        done.add(p.job["name"])
        log(f"done {p.job['name']} in {walls[p.job['name']] / 60:.1f} min")
    return walls
