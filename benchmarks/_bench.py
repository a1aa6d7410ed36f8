"""What the benchmark scripts share: where results go, timestamped logs, obert as a child
process with a fixed thread count (two torch pools on two cores oversubscribe)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OBERT = [sys.executable, "-m", "obert"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def thread_env(threads: int) -> dict:
    """The environment for a child process that uses ``threads`` OpenMP/MKL threads."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
