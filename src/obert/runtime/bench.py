"""`obert bench`: latency of dense fp32, dense INT8, obert sparse fp32 and sparse INT8, side by
side in one process, on the same inputs, with each engine's largest output difference."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .compile import compile, summary
from .modules import quantize_dynamic_int8

ENGINES = ("dense-fp32", "dense-int8", "sparse-fp32", "sparse-int8")


@dataclass
class EngineResult:
    name: str
    median_ms: float
    throughput: float  # sequences per second at the median
    max_abs_diff: float  # vs dense fp32 outputs on the same inputs
    min_ms: float
    speedup_vs_dense_fp32: float = 1.0
    speedup_vs_dense_int8: float | None = None
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


def time_call(fn: Callable[[], object], warmup: int, repeats: int, progress=None) -> list[float]:
    """Milliseconds of each of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if progress is not None:
            progress.update(1)
    return times


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
    """Time each engine on the same inputs; speed-ups are ratios measured in this one run.
    ``score(engine)``: the task metrics of each engine (``obert bench --task``), so accuracy
    and latency come from the same modules. ``profile``: where each engine's time goes
    (``obert.runtime.profile``), timed after the plain runs. ``autotune``: the sparse engines
    choose dense or sparse per layer by timing both at this batch × sequence length.
    ``choices``: a multiple-choice model's inputs are [batch, choices, tokens] (each row is
    ``choices`` sequences; throughput counts rows)."""
    from tqdm.auto import tqdm

    if threads is not None:
        torch.set_num_threads(threads)
    built = build_engines(model, engines, autotune, batch_size * (choices or 1) * seq_len)
    inputs = example_inputs(model, batch_size, seq_len, choices=choices)
    results: list[EngineResult] = []
    with torch.inference_mode():
        ref = main_output(model(**inputs)).float()
        bar = tqdm(total=len(built) * repeats, desc="bench", unit="run", disable=quiet)
        for name, eng in built.items():
            bar.set_postfix_str(name)
            diff = (main_output(eng(**inputs)).float() - ref).abs().max().item()
            ms = time_call(lambda eng=eng: eng(**inputs), warmup, repeats, bar)
            med = statistics.median(ms)
            results.append(EngineResult(name, med, batch_size * 1e3 / med, diff, min(ms)))
        bar.close()
    by = {r.name: r for r in results}
    profiles = {}
    if profile:
        from .profile import profile as where

        profiles = {n: where(e, inputs, repeats) for n, e in built.items()}
    if score is not None:
        for r in results:
            r.metrics = score(built[r.name])
    for r in results:
        if "dense-fp32" in by:
            r.speedup_vs_dense_fp32 = by["dense-fp32"].median_ms / r.median_ms
        if "dense-int8" in by:
            r.speedup_vs_dense_int8 = by["dense-int8"].median_ms / r.median_ms
    from ._ext import isa

    layers = {n: summary(e)["engines"] for n, e in built.items() if n.startswith("sparse")}
    return {
        "results": [asdict(r) for r in results],
        "seq_len": seq_len, "batch_size": batch_size, "choices": choices,
        "threads": torch.get_num_threads(),
        "warmup": warmup, "repeats": repeats, "isa": isa(), "torch": torch.__version__,
        "layers": layers, "linear_sparsity": linear_sparsity(model),
        **({"profile": profiles} if profiles else {}), "autotune": autotune,
    }


def linear_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all nn.Linear weights."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros / max(1, total)


def format_table(report: dict) -> str:
    per = f" x {report['choices']} choices" if report.get("choices") else ""
    head = (f"seq {report['seq_len']}, batch {report['batch_size']}{per}, "
            f"{report['threads']} threads, "
            f"kernels {report['isa']}, linear sparsity {report['linear_sparsity']:.1%}, "
            f"median of {report['repeats']} runs after {report['warmup']} warm-up")
    metric = next((k for r in report["results"] if r.get("metrics")
                   for k in r["metrics"] if k not in ("n", "windows")), None)
    rows = [f"{'engine':12s} {'median ms':>10s} {'seq/s':>8s} {'vs fp32':>8s} {'vs int8':>8s} "
            f"{'max |diff|':>11s}" + (f" {metric:>10s}" if metric else "")]
    for r in report["results"]:
        v8 = r["speedup_vs_dense_int8"]
        m = f" {r['metrics'][metric]:10.4f}" if metric and r.get("metrics") else ""
        rows.append(f"{r['name']:12s} {r['median_ms']:10.2f} {r['throughput']:8.1f} "
                    f"{r['speedup_vs_dense_fp32']:7.2f}x {'' if v8 is None else f'{v8:7.2f}x':>8s} "
                    f"{r['max_abs_diff']:11.2e}{m}")
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
