"""`compile(model)`: swap each pruned nn.Linear for the fastest kernel for its sparsity.

The model's forward, outputs and tokenizer stay as they were; only Linear modules (and the GELU
that follows an intermediate projection, and the residual add before a block's LayerNorm, fused
into the kernel's output) are replaced.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import asdict, dataclass

import torch
from torch import nn

from obert.compression.plan import QKV, Int8Plan, int8_plan
from obert.sparsity import weight_stats

from .autotune import Autotuner
from .modules import (
    AddNorm,
    DenseInt8Linear,
    FusedPart,
    FusedProjections,
    Int8FeedForward,
    Int8SelfAttention,
    SparseLinear,
)

# Above these densities (fraction of multiply-adds kept) the dense path is faster on the
# machines we measured (benchmarks/results/runtime.md): fp32 vs MKL sgemm, int8 vs dense int8.
MAX_DENSITY = {"fp32": 0.35, "int8": 0.35}


@dataclass
class LayerChoice:
    """What compile() did with one Linear, and why."""

    name: str
    shape: tuple[int, int]
    sparsity: float  # fraction of exact zeros
    block4_density: float  # fraction of 4-blocks (along the input) holding a nonzero
    engine: str  # sparse-fp32 | sparse-int8 | dense-fp32 | dense-int8
    block: int  # 1 or 4 for sparse engines, 0 for dense
    gelu_fused: bool = False
    qkv_fused: bool = False
    ffn_fused: bool = False
    residual_fused: bool = False


def _is_exact_gelu(mod: nn.Module) -> bool:
    if isinstance(mod, nn.GELU):
        return mod.approximate == "none"
    act = getattr(mod, "act", None)  # transformers' GELUActivation
    return type(mod).__name__ == "GELUActivation" and act is nn.functional.gelu


def choose(name: str, linear: nn.Linear, dtype: str, max_density: float | None,
           tuner: Autotuner | None = None, scale: torch.Tensor | None = None) -> LayerChoice:
    """Sparse or dense for one Linear: by ``tuner`` (timed on this machine) when given and the
    layer has zeros at all, else by the density rule (at most ``max_density`` kept)."""
    d1, d4 = weight_stats(linear.weight)
    limit = MAX_DENSITY[dtype] if max_density is None else max_density
    if dtype == "int8":
        block, eff = 4, d4
    else:
        # 4-blocks need one index per 4 weights: worth it unless they carry many zeros
        block = 4 if d4 <= 1.3 * d1 else 1
        eff = d4 if block == 4 else d1
    if tuner is not None and eff < 1.0:
        sparse = tuner.decide(linear, dtype, block, eff, scale)
    else:
        sparse = eff <= limit
    engine = f"{'sparse' if sparse else 'dense'}-{dtype}"
    return LayerChoice(name, tuple(linear.weight.shape), 1.0 - d1, d4, engine,
                       block if sparse else 0)


def compile(  # noqa: A001  (the verb users expect, like torch.compile)
    model: nn.Module,
    dtype: str = "fp32",
    *,
    max_density: float | None = None,
    fuse_gelu: bool = True,
    fuse_qkv: bool = True,
    inplace: bool = False,
    weight_scales: dict[str, torch.Tensor] | None = None,
    autotune: bool = False,
    tune_tokens: int = 128,
    int8_attention: bool = True,
    fuse_ffn: bool = True,
    plan: Int8Plan | None = None,
    fuse_residual: bool = True,
) -> nn.Module:
    """Return `model` for CPU inference on obert's kernels.

    dtype "fp32" keeps fp32 math (sparse layers on blocked-CSR kernels, the rest untouched).
    "int8" runs what the model's INT8 plan says (``obert.compression.plan``: the one QAT
    simulates and the export writes; ``plan``, or made here from ``weight_scales`` and
    ``int8_attention``): the encoder's Linears in obert's INT8 scheme, sparse ones on the int8
    4-block kernels, dense ones on ``DenseInt8Linear``, with the plan's scales (QAT's trained
    ones while the weights still fit them: ``weight_scales``, name -> per-row s_w, or left
    None the local QAT folder's ``quantization.safetensors``); pooler and head stay fp32.
    ``model.obert_int8_plan`` is the plan and ``model.obert_trained_scales`` says whether
    trained scales were used. A Linear goes sparse when
    the fraction of multiply-adds it keeps is at most `max_density` (default MAX_DENSITY), or,
    with ``autotune``, when its sparse kernel beat the dense path in a timing on this machine
    at ``tune_tokens`` tokens (``obert.runtime.autotune``; cached per machine, torch, ISA and
    thread count, so only the first compile of a layer kind pays for it).
    The choices are in `model.obert_layers` (a list of LayerChoice). Past the linears: the
    exact GELU after an intermediate projection runs in the kernel's output (`fuse_gelu`), and
    attention's query/key/value, when all three go sparse, run as one kernel call (`fuse_qkv`).
    With dtype "int8", each self-attention of the plan also runs QKᵀ and P·V in INT8
    (``Int8SelfAttention``, ``obert.compression.quant.int8_attention``); its projections are one kernel call when they share an engine.
    The converted attention modules are named in `model.obert_attention`. A feed-forward
    block whose two Linears both go sparse INT8 (with the GELU fused) runs as one call that
    keeps the hidden activations in cache (``Int8FeedForward``, `fuse_ffn`). Each block's
    output step, LayerNorm(dense(h) + input), adds the input in the kernel's epilogue when
    its dense runs on obert's kernels (``AddNorm``, `fuse_residual`).
    """
    if dtype not in MAX_DENSITY:
        raise ValueError(f"dtype must be 'fp32' or 'int8', not {dtype!r}")
    if dtype == "int8" and plan is None:
        plan = int8_plan(model, weight_scales, attention=int8_attention)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    model.requires_grad_(False)
    int8 = set(plan.linears) if dtype == "int8" else set()
    scales = plan.scales if dtype == "int8" else {}
    model.obert_int8_plan = plan if dtype == "int8" else None
    model.obert_trained_scales = bool(plan.trained) if dtype == "int8" else False

    def layer_dtype(name: str) -> str:
        return "int8" if name in int8 else "fp32"

    tuner = Autotuner(tune_tokens) if autotune else None
    choices: list[LayerChoice] = []
    model.obert_attention = []
    if dtype == "int8" and plan.attention:
        choices += _int8_attention(model, plan.attention, max_density, scales, tuner, fuse_qkv)
        model.obert_attention = sorted({c.name.rpartition(".")[0] for c in choices})
    if fuse_qkv:
        choices += _fuse_qkv(model, layer_dtype, max_density, scales, tuner)
    parents = dict(model.named_modules())
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = parents[parent_name] if parent_name else model
        dt = layer_dtype(name)
        c = choose(name, mod, dt, max_density, tuner, scales.get(name))
        act = getattr(parent, "intermediate_act_fn", None)
        fuse = fuse_gelu and attr == "dense" and act is not None and _is_exact_gelu(act)
        how = "gelu" if fuse else "none"
        if c.engine.startswith("sparse"):
            new: nn.Module = SparseLinear.from_linear(mod, dt, c.block, how, scales.get(name))
        elif dt == "int8":
            new = DenseInt8Linear(mod, how, scales.get(name))
        else:
            new, fuse = mod, False
        if fuse:
            parent.intermediate_act_fn = nn.Identity()
            c.gelu_fused = True
        setattr(parent, attr, new)
        choices.append(c)
    if fuse_ffn and dtype == "int8":
        _fuse_ffn(model, choices)
    if fuse_residual:
        _fuse_residual(model, choices)
    model.obert_layers = choices
    if tuner is not None:
        tuner.save()
        model.obert_autotune = {"cache": str(tuner.path), "timed": tuner.timed}
    return model


def _fuse_qkv(model: nn.Module, layer_dtype, max_density: float | None,
              scales: dict[str, torch.Tensor], tuner: Autotuner | None = None
              ) -> list[LayerChoice]:
    """Replace query/key/value Linears that all go sparse (in one dtype) by parts of one fused
    kernel call."""
    choices = []
    for pname, parent in list(model.named_modules()):
        lins = [getattr(parent, a, None) for a in QKV]
        if not all(isinstance(lin, nn.Linear) for lin in lins):
            continue
        names = [f"{pname}.{a}" if pname else a for a in QKV]
        dts = {layer_dtype(n) for n in names}
        if len(dts) != 1:
            continue
        dtype = dts.pop()
        cs = [choose(n, lin, dtype, max_density, tuner, scales.get(n))
              for n, lin in zip(names, lins, strict=True)]
        if any(not c.engine.startswith("sparse") for c in cs) or len({c.block for c in cs}) != 1:
            continue
        if len({lin.in_features for lin in lins}) != 1:
            continue
        scale = _concat_scales(names, scales) if dtype == "int8" else None
        fused = FusedProjections(SparseLinear.from_linear(_concat(lins), dtype, cs[0].block,
                                                          scale=scale),
                                 [lin.out_features for lin in lins])
        parent.qkv_fused = fused
        for i, (a, c) in enumerate(zip(QKV, cs, strict=True)):
            setattr(parent, a, FusedPart(fused, i))
            c.qkv_fused = True
        choices += cs
    return choices


def _fuse_ffn(model: nn.Module, choices: list[LayerChoice]) -> None:
    """Each layer's intermediate (sparse INT8 + GELU) and output Linear (sparse INT8) as one
    Int8FeedForward in place of the intermediate module; the output Linear becomes identity."""
    by_name = {c.name: c for c in choices}
    for name, layer in list(model.named_modules()):
        inter, out = getattr(layer, "intermediate", None), getattr(layer, "output", None)
        fc1, fc2 = getattr(inter, "dense", None), getattr(out, "dense", None)
        if not (isinstance(fc1, SparseLinear) and isinstance(fc2, SparseLinear)):
            continue
        if fc1.dtype_name != "int8" or fc2.dtype_name != "int8" or fc1.act != "gelu":
            continue
        if fc2.in_features != fc1.out_features:
            continue
        layer.intermediate = Int8FeedForward(fc1, fc2)
        out.dense = nn.Identity()
        for part in ("intermediate.dense", "output.dense"):
            by_name[f"{name}.{part}" if name else part].ffn_fused = True


def _is_add_norm(mod: nn.Module) -> bool:
    """transformers' BERT-style block output, forward(hidden_states, input_tensor) =
    LayerNorm(dropout(dense(hidden_states)) + input_tensor)."""
    if not type(mod).__name__.endswith("Output") or not isinstance(
            getattr(mod, "LayerNorm", None), nn.LayerNorm) or not hasattr(mod, "dense"):
        return False
    try:
        params = list(inspect.signature(mod.forward).parameters)
    except (TypeError, ValueError):
        return False
    return params == ["hidden_states", "input_tensor"]


def _fuse_residual(model: nn.Module, choices: list[LayerChoice]) -> None:
    """Each block output step whose dense is on obert's kernels becomes ``AddNorm``: the
    residual added in the kernel's epilogue. After an ``Int8FeedForward`` (whose output Linear
    is an identity) the feed-forward call adds its own input, which is that residual."""
    by_name = {c.name: c for c in choices}
    for pname, parent in list(model.named_modules()):
        for attr, mod in list(parent.named_children()):
            if not _is_add_norm(mod):
                continue
            dense = mod.dense
            ffn = getattr(parent, "intermediate", None) if attr == "output" else None
            if isinstance(dense, (SparseLinear, DenseInt8Linear)):
                setattr(parent, attr, AddNorm(dense, mod.LayerNorm))
            elif isinstance(dense, nn.Identity) and isinstance(ffn, Int8FeedForward) \
                    and ffn.fc2.out_features == ffn.fc1.in_features:
                ffn.add_input = True
                setattr(parent, attr, AddNorm(None, mod.LayerNorm))
            else:
                continue
            full = f"{pname}.{attr}.dense" if pname else f"{attr}.dense"
            if full in by_name:
                by_name[full].residual_fused = True


def _concat(lins: list[nn.Linear]) -> nn.Linear:
    """One Linear whose output is the outputs of ``lins`` side by side."""
    weight = torch.cat([lin.weight.detach() for lin in lins])
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=any(lin.bias is not None for lin in lins))
    with torch.no_grad():
        new.weight.copy_(weight)
        if new.bias is not None:
            new.bias.copy_(torch.cat([lin.bias.detach() if lin.bias is not None
                                      else torch.zeros(lin.out_features) for lin in lins]))
    return new


def _concat_scales(names: list[str], scales: dict[str, torch.Tensor]) -> torch.Tensor:
    """The per-row INT8 scales of ``_concat`` of these Linears: the plan's, side by side (the
    plan holds a scale for every INT8 Linear)."""
    return torch.cat([scales[n] for n in names])


def _int8_attention(model: nn.Module, attention: tuple[str, ...], max_density: float | None,
                    scales: dict[str, torch.Tensor], tuner: Autotuner | None,
                    fuse: bool) -> list[LayerChoice]:
    """Replace each self-attention of the plan by an Int8SelfAttention; the projections
    become one kernel call when they share an engine (and ``fuse``)."""
    choices = []
    parents = dict(model.named_modules())
    for name in attention:
        mod = model.get_submodule(name)
        names = [f"{name}.{a}" if name else a for a in QKV]
        lins = [getattr(mod, a) for a in QKV]
        cs = [choose(n, lin, "int8", max_density, tuner, scales.get(n))
              for n, lin in zip(names, lins, strict=True)]
        heads, size = mod.num_attention_heads, mod.attention_head_size
        engines = {c.engine for c in cs}
        if fuse and len(engines) == 1:
            scale = _concat_scales(names, scales)
            both = _concat(lins)
            proj = (SparseLinear.from_linear(both, "int8", 4, scale=scale)
                    if engines == {"sparse-int8"} else DenseInt8Linear(both, scale=scale))
            new = Int8SelfAttention(heads, size, mod.scaling, qkv=proj)
            for c in cs:
                c.qkv_fused = True
        else:
            parts = [SparseLinear.from_linear(lin, "int8", 4, scale=scales.get(n))
                     if c.engine == "sparse-int8" else DenseInt8Linear(lin, scale=scales.get(n))
                     for n, lin, c in zip(names, lins, cs, strict=True)]
            new = Int8SelfAttention(heads, size, mod.scaling, query=parts[0], key=parts[1],
                                    value=parts[2])
        parent_name, _, attr = name.rpartition(".")
        setattr(parents[parent_name] if parent_name else model, attr, new)
        choices += cs
    return choices


def summary(model: nn.Module) -> dict:
    """Counts of engines and the choices, for reports (`obert bench`)."""
    layers = getattr(model, "obert_layers", [])
    counts: dict[str, int] = {}
    for c in layers:
        counts[c.engine] = counts.get(c.engine, 0) + 1
    return {"engines": counts, "layers": [asdict(c) for c in layers]}
