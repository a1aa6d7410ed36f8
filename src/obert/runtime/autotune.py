"""Choose dense or sparse per layer by timing both on this machine (``compile(autotune=True)``).

The fixed rule (sparse when at most ``MAX_DENSITY`` of the multiply-adds are kept) was measured
on one machine; where the crossover lies depends on the CPU, its cache, the thread count and the
layer's shape. The tuner times the sparse kernel against the dense path (PyTorch's fp32 Linear,
or ``DenseInt8Linear``) for each distinct (dtype, shape, 4-block or not, density to 1%, tokens),
in interleaved rounds, and keeps the faster. Results are cached in a JSON file per machine,
torch version, instruction set and thread count, so a second compile times nothing.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .modules import DenseInt8Linear, SparseLinear

Timer = Callable[[Callable[[], object], Callable[[], object]], tuple[float, float]]


def cache_dir() -> Path:
    return Path(os.environ.get("OBERT_CACHE", Path.home() / ".cache" / "obert"))


def machine_key(isa: str) -> str:
    """What a timing depends on besides the layer: CPU, torch, kernels' ISA, threads."""
    cpu = platform.processor() or platform.machine()
    model = ""
    try:  # the CPU's model name says more than "x86_64"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    raw = f"{model or cpu}|torch {torch.__version__}|{isa}|{torch.get_num_threads()} threads"
    return "".join(c if c.isalnum() or c in "-." else "_" for c in raw)[:180]


def interleaved_ms(a: Callable[[], object], b: Callable[[], object], rounds: int = 5,
                   calls: int = 3) -> tuple[float, float]:
    """Median ms of ``a`` and of ``b`` over alternating rounds (one warm-up call each)."""
    a(), b()
    ta, tb = [], []
    for _ in range(rounds):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            out.append((time.perf_counter() - t0) * 1e3 / calls)
    return statistics.median(ta), statistics.median(tb)


class Autotuner:
    """Times sparse against dense per layer kind; ``decide`` says whether to go sparse."""

    def __init__(self, tokens: int = 128, timer: Timer | None = None,
                 path: Path | None = None) -> None:
        from ._ext import isa

        self.tokens = tokens
        self.timer = timer if timer is not None else interleaved_ms
        self.path = path or cache_dir() / f"autotune-{machine_key(isa())}.json"
        self.table: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self.table = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                self.table = {}  # a broken cache is re-measured, never trusted
        self.timed = 0  # layer kinds measured by this tuner (0 when all came from the cache)

    def key(self, linear: nn.Linear, dtype: str, block: int, density: float) -> str:
        n, k = linear.weight.shape
        return f"{dtype}|{n}x{k}|b{block}|d{density:.2f}|m{self.tokens}"

    def decide(self, linear: nn.Linear, dtype: str, block: int, density: float,
               scale: torch.Tensor | None = None) -> bool:
        key = self.key(linear, dtype, block, density)
        if key not in self.table:
            sparse = SparseLinear.from_linear(linear, dtype, block, scale=scale)
            dense = DenseInt8Linear(linear, scale=scale) if dtype == "int8" else linear
            x = torch.randn(self.tokens, linear.in_features)
            with torch.inference_mode():
                s_ms, d_ms = self.timer(lambda: sparse(x), lambda: dense(x))
            self.table[key] = {"sparse_ms": s_ms, "dense_ms": d_ms}
            self.timed += 1
        r = self.table[key]
        return r["sparse_ms"] < r["dense_ms"]

    def save(self) -> None:
        """Write the table (to a temporary file, then rename: readers never see half)."""
        if not self.timed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.table, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)
