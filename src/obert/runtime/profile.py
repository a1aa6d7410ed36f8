"""Where a forward pass spends its time: linears, attention, LayerNorm, embeddings, the rest.

Forward hooks time each module of a kind; a module's own time excludes the hooked modules it
calls (attention's time is its matmuls, softmax and reshapes, not its projections), so the
parts add up to at most the total. ``rest`` is what no hook covers: residual adds, GELU where
it is not fused into a kernel, the pooler's tanh, and Python between modules.
``quantize`` is the part of the linears' time that obert's kernels spend laying out (and, in
INT8, quantizing) their input activations, timed inside the kernels (``prep_timer``); it is
taken out of ``linears``, so the parts still add up. Attention's own INT8 quantization of
q, k and v stays in ``attention``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

PARTS = ("linears", "quantize", "attention", "layernorm", "embeddings")
HOOKED = ("linears", "attention", "layernorm", "embeddings")  # timed by module hooks


def kind_of(name: str, module: nn.Module) -> str | None:
    """The part a module's own time belongs to (None: not timed on its own)."""
    from .modules import DenseInt8Linear, Int8FeedForward, SparseLinear

    cls = type(module).__name__
    # torch's dynamic-INT8 Linear (the dense-int8 engine) is no nn.Linear subclass
    if isinstance(module, (SparseLinear, DenseInt8Linear, Int8FeedForward, nn.Linear)) \
            or cls == "Linear":
        return "linears"
    if cls.endswith("SelfAttention"):  # BERT, RoBERTa, ELECTRA; DistilBERT's MultiHead...
        return "attention"
    if isinstance(module, nn.LayerNorm):
        return "layernorm"
    if name.endswith("embeddings") and name.count(".") <= 1:
        return "embeddings"
    return None


class Profiler:
    """Exclusive time per part over one forward, by forward (pre-)hooks on a stack."""

    def __init__(self, model: nn.Module) -> None:
        self.spent = dict.fromkeys(HOOKED, 0.0)
        self._stack: list[list] = []  # [kind, start, time of hooked children]
        self._handles = []
        for name, mod in model.named_modules():
            kind = kind_of(name, mod)
            if kind is not None:
                self._handles.append(mod.register_forward_pre_hook(self._enter(kind)))
                self._handles.append(mod.register_forward_hook(self._leave))

    def _enter(self, kind: str) -> Callable:
        def pre(module, args) -> None:
            self._stack.append([kind, time.perf_counter(), 0.0])
        return pre

    def _leave(self, module, args, out) -> None:
        kind, start, children = self._stack.pop()
        elapsed = time.perf_counter() - start
        self.spent[kind] += elapsed - children
        if self._stack:
            self._stack[-1][2] += elapsed

    def reset(self) -> None:
        self.spent = dict.fromkeys(HOOKED, 0.0)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def profile(model: nn.Module, inputs: dict, calls: int = 20, warmup: int = 3) -> dict:
    """Median milliseconds per part over ``calls`` forwards (after ``warmup``), and the median
    total; the hooks add a few microseconds per module, so the total is a little above an
    unhooked run's."""
    from ._ext import kernels

    prof = Profiler(model)
    kern = kernels()
    rows = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(**inputs)
            for _ in range(calls):
                prof.reset()
                kern.prep_timer(True)
                t0 = time.perf_counter()
                model(**inputs)
                total = time.perf_counter() - t0
                quantize = kern.prep_timer(False) * 1e-9
                spent = {**prof.spent, "quantize": quantize}
                spent["linears"] = max(0.0, spent["linears"] - quantize)
                rows.append({"total": total, **spent})
    finally:
        prof.remove()
        kern.prep_timer(False)
    out = {f"{k}_ms": statistics.median(r[k] for r in rows) * 1e3 for k in ("total", *PARTS)}
    out["rest_ms"] = max(0.0, out["total_ms"] - sum(out[f"{k}_ms"] for k in PARTS))
    return out
