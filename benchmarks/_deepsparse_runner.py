"""DeepSparse engines held compiled in a child that times them on command; run by the DeepSparse
venv's python, never by obert's.

    benchmarks/.cache/deepsparse-venv/bin/python benchmarks/_deepsparse_runner.py \\
        --model deepsparse-int8=model8.onnx --batch-size 1 --seq-len 128 --threads 2

compiles every ``--model NAME=ONNX`` on ``--threads`` cores, prints one JSON hello line, then
answers JSON commands on stdin, ``{"op": "time", "engine": NAME, "calls": N}`` with the N
per-call milliseconds, until ``{"op": "quit"}`` (protocol and parent side in ``_rounds.py``).
``benchmarks/runtime.py`` drives it in the same interleaved rounds as obert's own engines.

DeepSparse (Neural Magic, closed source, evaluation-only licence) is an optional reference
point: it lives in its own venv (see ``_deepsparse.py``) and is never a dependency of obert.
This script imports neither obert nor torch. It feeds int64 inputs named as in the ONNX graph
(input_ids random in [1000, 2000), attention_mask ones, anything else zeros). A model that fails
to compile is reported in the hello (the others stay usable); a failure to start at all gives
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rounds import Call, serve  # noqa: E402  (standard library only)


def _model(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not (sep and name and path):
        raise argparse.ArgumentTypeError(f"--model wants NAME=PATH, not {spec!r}")
    return name, Path(path)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, action="append", type=_model, metavar="NAME=ONNX")
    p.add_argument("--batch-size", required=True, type=int)
    p.add_argument("--seq-len", required=True, type=int)
    p.add_argument("--threads", required=True, type=int)
    return p.parse_args(argv)


def _input_names(onnx_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in weights]


def _builder(path: Path, a: argparse.Namespace) -> Call:
    """Compile ``path`` and return one forward on fixed inputs."""
    import deepsparse
    import numpy as np

    names = _input_names(path)
    shape = (a.batch_size, a.seq_len)
    # input_shapes fixes dynamic (or differently sized) axes; static exports are left as they are
    engine = deepsparse.compile_model(
        str(path), a.batch_size, num_cores=a.threads, input_shapes=[list(shape)] * len(names)
    )
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(1000, 2000, size=shape, dtype=np.int64),
        "attention_mask": np.ones(shape, dtype=np.int64),
    }
    inputs = [feeds.get(n, np.zeros(shape, dtype=np.int64)) for n in names]
    return lambda: engine.run(inputs)


def _info(a: argparse.Namespace) -> dict[str, Any]:
    import deepsparse

    if a.batch_size < 1 or a.seq_len < 1 or a.threads < 1:
        raise ValueError("need --batch-size, --seq-len and --threads >= 1")
    return {"engine": "deepsparse", "version": deepsparse.__version__,
            "batch_size": a.batch_size, "seq_len": a.seq_len, "threads": a.threads}


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # no phoning home (offline anyway)
    return serve({name: (lambda p=path: _builder(p, a)) for name, path in a.model},
                 info=lambda: _info(a))


if __name__ == "__main__":
    sys.exit(main())
