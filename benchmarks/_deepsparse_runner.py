"""Time one ONNX model with DeepSparse; run by the DeepSparse venv's python, never by obert's.

    benchmarks/.cache/deepsparse-venv/bin/python benchmarks/_deepsparse_runner.py \\
        --onnx model.onnx --batch-size 1 --seq-len 128 --threads 2 --warmup 3 --repeats 10

DeepSparse (Neural Magic, closed source, evaluation-only licence) is an optional reference
point: it lives in its own venv (see ``_deepsparse.py``) and is never a dependency of obert.
This script imports neither obert nor torch. It feeds int64 inputs named as in the ONNX graph
(input_ids random in [1000, 2000), attention_mask ones, anything else zeros), times ``repeats``
runs after ``warmup`` runs and prints one JSON line (also written to ``--out-json``). Any error
gives one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", required=True, type=Path)
    p.add_argument("--batch-size", required=True, type=int)
    p.add_argument("--seq-len", required=True, type=int)
    p.add_argument("--threads", required=True, type=int)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out-json", type=Path)
    return p.parse_args(argv)


def _input_names(onnx_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in weights]


def bench(a: argparse.Namespace) -> dict[str, Any]:
    import deepsparse
    import numpy as np

    if a.repeats < 1 or a.warmup < 0:
        raise ValueError("need --repeats >= 1 and --warmup >= 0")
    names = _input_names(a.onnx)
    shape = (a.batch_size, a.seq_len)
    # input_shapes fixes dynamic (or differently sized) axes; static exports are left as they are
    engine = deepsparse.compile_model(
        str(a.onnx), a.batch_size, num_cores=a.threads, input_shapes=[list(shape)] * len(names)
    )
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(1000, 2000, size=shape, dtype=np.int64),
        "attention_mask": np.ones(shape, dtype=np.int64),
    }
    inputs = [feeds.get(n, np.zeros(shape, dtype=np.int64)) for n in names]
    for _ in range(a.warmup):
        engine.run(inputs)
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        engine.run(inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "engine": "deepsparse", "version": deepsparse.__version__,
        "median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4),
        "batch_size": a.batch_size, "seq_len": a.seq_len, "threads": a.threads,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # no phoning home (offline anyway)
    try:
        line = json.dumps(bench(a))
        if a.out_json:
            a.out_json.write_text(line + "\n")
    except Exception as e:  # noqa: BLE001 - any failure is reported the same way
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        print(f"deepsparse runner: {msg}", file=sys.stderr)
        return 2
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
