"""`obert bench`: latency of dense fp32, dense INT8, obert sparse fp32 and sparse INT8, side by
side in one process, on the same inputs, with each engine's largest output difference.

A shared machine's load swings the time of a forward 2x or more between seconds, so no engine
is timed on its own: all run in interleaved rounds (each once per round, the order rotated),
and each speed-up is the median of the per-round ratios, with its p10-p90 spread."""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .compile import compile, summary
from .modules import quantize_dynamic_int8

ENGINES = ("dense-fp32", "dense-int8", "sparse-fp32", "sparse-int8")


# A busy machine, measured by the spread (p90 / p10) over rounds of the baseline's own time or
# of any per-round ratio. Measured on a 2-layer BERT-base-shaped 90% 4-block model (seq 128,
# 2 threads, 20 rounds): 1.06-1.19 on a quiet machine, 2.7-16 while another job ran. Past a
# quarter, the load changed during the run (benchmarks/runtime.py uses 1.25 for dense fp32).
BUSY_SPREAD = 1.25


@dataclass
class EngineResult:
    name: str
    median_ms: float  # median over rounds
    throughput: float  # sequences per second at the median
    max_abs_diff: float  # vs dense fp32 outputs on the same inputs
    min_ms: float
    p10_ms: float = 0.0  # the spread of this engine's time over rounds
    p90_ms: float = 0.0
    max_ms: float = 0.0
    # median over rounds of (baseline ms / this engine's ms) within each round, with p10-p90;
    # None where the baseline was not timed
    speedup_vs_dense_fp32: float | None = None
    speedup_vs_dense_fp32_p10: float | None = None
    speedup_vs_dense_fp32_p90: float | None = None
    speedup_vs_dense_int8: float | None = None
    speedup_vs_dense_int8_p10: float | None = None
    speedup_vs_dense_int8_p90: float | None = None
    rounds_ms: list[float] = field(default_factory=list)  # in round order
    metrics: dict | None = None  # the task metrics of this engine (``score``), when asked


def example_inputs(model: nn.Module, batch_size: int, seq_len: int, seed: int = 0,
                   choices: int | None = None) -> dict:
    """Random token ids (the vocabulary's ordinary range) with a full attention mask; with
    ``choices``, [batch, choices, tokens] for a multiple-choice model."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 30522))
    lo = min(1000, vocab // 2)
    shape = (batch_size, seq_len) if choices is None else (batch_size, choices, seq_len)
    inputs = {
        "input_ids": torch.randint(lo, vocab, shape, generator=g),
        "attention_mask": torch.ones(shape, dtype=torch.long),
    }
    if getattr(model.config, "type_vocab_size", 0):
        inputs["token_type_ids"] = torch.zeros(shape, dtype=torch.long)
    return inputs


def main_output(out) -> torch.Tensor:
    """The tensor to compare: logits, start/end logits side by side, or the hidden states."""
    if getattr(out, "logits", None) is not None:
        return out.logits
    if getattr(out, "start_logits", None) is not None:
        return torch.cat([out.start_logits, out.end_logits], -1)
    if getattr(out, "last_hidden_state", None) is not None:
        return out.last_hidden_state
    return out[0]


def interleaved_rounds(fns: dict[str, Callable[[], object]], rounds: int, warmup: int,
                       progress: Any = None) -> dict[str, list[float]]:
    """Milliseconds of one call of each engine per round, after ``warmup`` untimed rounds.
    Round r runs every engine once, the order rotated by r, so a change of load hits the
    engines of a round alike and no engine always runs first (or after the same one)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[n]()
            per_round[n].append((time.perf_counter() - t0) * 1e3)
            if progress is not None:
                progress.update(1)
    return per_round


def quantile(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs, linear between the sorted values (numpy's default)."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def spread(xs: list[float]) -> dict[str, float]:
    """Median, p10 and p90 of xs."""
    return {"median": statistics.median(xs), "p10": quantile(xs, 0.1), "p90": quantile(xs, 0.9)}


def round_ratios(per_round: dict[str, list[float]], baseline: str) -> dict[str, list[float]]:
    """Each engine's speed-up over ``baseline`` in each round: baseline ms / engine ms of the
    same round."""
    base = per_round[baseline]
    return {n: [b / t for b, t in zip(base, ms, strict=True)] for n, ms in per_round.items()}


def busy_note(per_round: dict[str, list[float]], ratios: dict[str, list[float]],
              baseline: str | None, limit: float = BUSY_SPREAD) -> str | None:
    """A line when the machine was busy during the rounds: the baseline's own time, or any
    engine's per-round ratio to it, spread more than ``limit`` (p90 / p10); else None."""
    ref = baseline or next(iter(per_round))
    wide = []
    own = quantile(per_round[ref], 0.9) / quantile(per_round[ref], 0.1)
    if own > limit:
        wide.append(f"{ref}'s own time {own:.2f}x")
    for n, r in ratios.items():
        x = quantile(r, 0.9) / quantile(r, 0.1)
        if n != ref and x > limit:
            wide.append(f"{n}'s ratio to it {x:.2f}x")
    if not wide:
        return None
    return (f"busy machine: spread over rounds (p90/p10) of {', '.join(wide)}, over "
            f"{limit:g}x; the medians of per-round ratios are the figures to read, single "
            "timings are not - rerun with more rounds or on a quieter machine to narrow them")


def build_engines(model: nn.Module, names=ENGINES, autotune: bool = False,
                  tokens: int = 128) -> dict[str, nn.Module]:
    """The engines to time (sparse INT8 from a QAT folder's trained scales: ``compile``);
    ``autotune``: each layer dense or sparse by a timing at ``tokens`` tokens."""
    model = model.eval()
    builders = {
        "dense-fp32": lambda: model,
        "dense-int8": lambda: quantize_dynamic_int8(copy.deepcopy(model)),
        "sparse-fp32": lambda: compile(model, "fp32", autotune=autotune, tune_tokens=tokens),
        "sparse-int8": lambda: compile(model, "int8", autotune=autotune, tune_tokens=tokens),
    }
    return {n: builders[n]() for n in names}


def run_bench(model: nn.Module, seq_len: int = 128, batch_size: int = 1, threads: int | None = None,
              warmup: int = 5, repeats: int = 20, engines=ENGINES, quiet: bool = False,
              score: Callable[[nn.Module], dict] | None = None, profile: bool = False,
              autotune: bool = False, choices: int | None = None) -> dict:
    """Time the engines on the same inputs in ``repeats`` interleaved rounds (each engine once
    per round, order rotated) after ``warmup`` untimed rounds. Each engine: median and p10-p90
    of its time over rounds; each speed-up: the median (and p10-p90) of the per-round ratios
    baseline ms / engine ms, so a load that comes and goes hits both sides of a ratio alike.
    ``busy_note``: set when the spreads say the machine was busy. ``score(engine)``: the task
    metrics of each engine (``obert bench --task``), so accuracy and latency come from the
    same modules. ``profile``: where each engine's time goes (``obert.runtime.profile``),
    timed after the rounds. ``autotune``: the sparse engines choose dense or sparse per layer
    by timing both at this batch × sequence length. ``choices``: a multiple-choice model's
    inputs are [batch, choices, tokens] (each row is ``choices`` sequences; throughput counts
    rows)."""
    from tqdm.auto import tqdm

    if threads is not None:
        torch.set_num_threads(threads)
    built = build_engines(model, engines, autotune, batch_size * (choices or 1) * seq_len)
    inputs = example_inputs(model, batch_size, seq_len, choices=choices)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with torch.inference_mode():
        ref = main_output(model(**inputs)).float()
        diffs = {n: (main_output(e(**inputs)).float() - ref).abs().max().item()
                 for n, e in built.items()}
        bar = tqdm(total=len(built) * repeats, desc="bench", unit="run", disable=quiet)
        per_round = interleaved_rounds({n: (lambda e=e: e(**inputs)) for n, e in built.items()},
                                       repeats, warmup, bar)
        bar.close()
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ratios = {b: round_ratios(per_round, b) for b in ("dense-fp32", "dense-int8") if b in built}
    results: list[EngineResult] = []
    for name, ms in per_round.items():
        t = spread(ms)
        r = EngineResult(name, t["median"], batch_size * 1e3 / t["median"], diffs[name], min(ms),
                         t["p10"], t["p90"], max(ms), rounds_ms=ms)
        for b, key in (("dense-fp32", "speedup_vs_dense_fp32"),
                       ("dense-int8", "speedup_vs_dense_int8")):
            if b in ratios:
                x = spread(ratios[b][name])
                setattr(r, key, x["median"])
                setattr(r, key + "_p10", x["p10"])
                setattr(r, key + "_p90", x["p90"])
        results.append(r)
    baseline = next((b for b in ("dense-fp32", "dense-int8") if b in built), None)
    note = busy_note(per_round, ratios.get(baseline, {}), baseline)
    profiles = {}
    if profile:
        from .profile import profile as where

        profiles = {n: where(e, inputs, repeats) for n, e in built.items()}
    if score is not None:
        for r in results:
            r.metrics = score(built[r.name])
    from ._ext import isa

    layers = {n: summary(e)["engines"] for n, e in built.items() if n.startswith("sparse")}
    return {
        "results": [asdict(r) for r in results],
        "seq_len": seq_len, "batch_size": batch_size, "choices": choices,
        "threads": torch.get_num_threads(),
        "warmup": warmup, "repeats": repeats, "rounds": repeats, "order": "rotated per round",
        # the speed-ups' reference; dense fp32's largest |output|, the scale of max_abs_diff
        "baseline": baseline, "ref_max_abs": ref.abs().max().item(),
        "busy": note is not None, "busy_note": note, "busy_spread_limit": BUSY_SPREAD,
        "load_avg": [load_start, load_end],
        "isa": isa(), "torch": torch.__version__,
        "layers": layers, "linear_sparsity": linear_sparsity(model),
        **({"profile": profiles} if profiles else {}), "autotune": autotune,
    }


def linear_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all nn.Linear weights."""
    from obert.sparsity import sparsity_report

    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return sparsity_report(linears)["global_sparsity"]


def _x(r: dict, key: str) -> str:
    """``median x [p10-p90]`` of a speed-up, blank where it was not measured."""
    if r.get(key) is None:
        return ""
    return f"{r[key]:.2f}x [{r[key + '_p10']:.2f}-{r[key + '_p90']:.2f}]"


def format_table(report: dict) -> str:
    per = f" x {report['choices']} choices" if report.get("choices") else ""
    rounds = report.get("rounds", report["repeats"])
    load = report.get("load_avg") or [None, None]
    head = (f"seq {report['seq_len']}, batch {report['batch_size']}{per}, "
            f"{report['threads']} threads, "
            f"kernels {report['isa']}, linear sparsity {report['linear_sparsity']:.1%}, "
            f"{rounds} interleaved round{'s' * (rounds != 1)} (each engine once, order "
            f"rotated) after {report['warmup']} warm-up round{'s' * (report['warmup'] != 1)}"
            + (f", load average {load[0]:.2f} -> {load[1]:.2f}" if None not in load else "")
            + "\nms: median [p10-p90] over rounds; vs fp32 / vs int8: median [p10-p90] over "
            "rounds of that round's dense time / the engine's")
    metric = next((k for r in report["results"] if r.get("metrics")
                   for k in r["metrics"] if k not in ("n", "windows")), None)
    rows = [f"{'engine':12s} {'median ms':>10s} {'[p10-p90]':>17s} {'seq/s':>8s} "
            f"{'vs fp32':>19s} {'vs int8':>19s} {'max |diff|':>11s}"
            + (f" {metric:>10s}" if metric else "")]
    for r in report["results"]:
        m = f" {r['metrics'][metric]:10.4f}" if metric and r.get("metrics") else ""
        ms = f"[{r.get('p10_ms', r['median_ms']):.2f}-{r.get('p90_ms', r['median_ms']):.2f}]"
        rows.append(f"{r['name']:12s} {r['median_ms']:10.2f} {ms:>17s} {r['throughput']:8.1f} "
                    f"{_x(r, 'speedup_vs_dense_fp32'):>19s} {_x(r, 'speedup_vs_dense_int8'):>19s} "
                    f"{r['max_abs_diff']:11.2e}{m}")
    if report.get("busy_note"):
        rows += ["", f"note: {report['busy_note']}"]
    if report.get("profile"):
        from .profile import PARTS

        cols = [*PARTS, "rest"]
        rows += ["", "where the time goes (ms, median; share of the hooked total)",
                 f"{'engine':12s} {'total':>8s} " + " ".join(f"{c:>16s}" for c in cols)]
        for name, p in report["profile"].items():
            t = p["total_ms"]
            rows.append(f"{name:12s} {t:8.2f} " + " ".join(
                f"{p[c + '_ms']:8.2f} ({p[c + '_ms'] / t:4.0%})" for c in cols))
    return "\n".join([head, *rows])
