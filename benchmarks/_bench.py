"""What the benchmark scripts share: where results go, timestamped logs, obert as a child
process with a fixed thread count (two torch pools on two cores oversubscribe)."""

from __future__ import annotations

import json
import os
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
