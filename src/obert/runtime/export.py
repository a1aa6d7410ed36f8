"""ONNX export of the model ``compile`` runs, checked with ONNX Runtime against ``compile``.

fp32: the model as it is; pruned weights are exact zeros in the float initializers.
INT8 (``int8=True``): the model's INT8 plan (``obert.compression.plan``, the one QAT simulates
and ``compile(int8)`` runs), written in standard ONNX operators:
- each INT8 Linear:  x̂ = round(x · 127/max|x|) · max|x|/127  per token (Abs, ReduceMax, Div,
  Round, Clip, Mul: the kernels' steps), Ŵᵀ = DequantizeLinear(W_qᵀ int8, s_w, axis=1) with
  the plan's per-row scales, y = x̂ Ŵᵀ + b; a pruned weight is an int8 zero;
- each INT8 self-attention: ``quant.int8_attention`` traced as it is (per-token q/k, v per
  head dimension over the attended keys, P = round(255 · exp(z − max z)) as 8 bits), so the
  file computes the attention the kernels compute, not fp32 softmax attention.
What is not exact: ONNX Runtime sums the products in float (the kernels in int32) and runs its
own LayerNorm, GELU and Exp, so values differ in the last bits, and a value within that of a
rounding boundary rounds the other way. The check measures what that does on real rows:
ONNX Runtime's logits against ``compile``'s (the model as obert runs it, never a twin of the
file), with the QAT simulation's gap and label agreement beside it; all go in the file's
metadata (``obert.check``). ONNX Runtime's default optimizations rewrite DequantizeLinear +
MatMul into its own 8-bit kernels, which round differently; the session option
``session.disable_quant_qdq = 1`` (``ORT_EXACT``) keeps obert's numbers, and the default
session's gap is reported beside it.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from obert.compression.plan import Int8Plan, int8_plan, prepare_qat
from obert.compression.quant import (
    fake_quant_tokens,
    quantize_rows,
    simulate_int8_attention,
    swap_module,
)
from obert.errors import ObertError

OPSET = 17
# Largest |ONNX Runtime − compile| logit difference accepted, relative to max(1, max |logit|).
# fp32: summation order only. INT8: a value within float rounding of a rounding boundary
# (an activation, q, k, v or a probability) can round the other way in ONNX Runtime.
TOLERANCE = {"fp32": 1e-4, "int8": 1e-2}
ORT_EXACT = {"session.disable_quant_qdq": "1"}  # session config that keeps obert's INT8 numbers


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ObertError("obert export needs the onnx and onnxruntime packages: "
                         "pip install 'obert[onnx]'") from None
    return onnx, onnxruntime


WEIGHT = "weight_t"  # the buffer name by which _to_qdq finds each INT8 Linear in the graph


class Int8ExportLinear(nn.Module):
    """The INT8 Linear as an exportable graph: per-token fake quantization in float ops and
    the dequantized weight (s_w·W_q)ᵀ, a buffer the exporter keeps under its own name
    (``_to_qdq`` turns it into an int8 initializer + DequantizeLinear)."""

    def __init__(self, linear: nn.Linear, scale: torch.Tensor) -> None:
        super().__init__()
        wq, sw = quantize_rows(linear.weight.detach().float(), scale)
        self.register_buffer(WEIGHT, (wq.float() * sw[:, None]).t().contiguous())
        self.register_buffer("bias", None if linear.bias is None else
                             linear.bias.detach().float().clone())
        self.wq, self.sw = wq, sw  # plain attributes: the rewrite reads them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = fake_quant_tokens(x) @ getattr(self, WEIGHT)
        return y if self.bias is None else y + self.bias


class _LogitsOnly(nn.Module):
    """Named inputs in (positional, for the exporter), the first output's logits out."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor):
        out = self.model(**dict(zip(self.names, inputs, strict=True)))
        if hasattr(out, "start_logits"):
            return out.start_logits, out.end_logits
        return out.logits


@dataclass
class ExportReport:
    path: str
    dtype: str
    max_abs_diff: float  # ONNX Runtime vs compile (with ORT_EXACT for INT8)
    default_session_diff: float  # the same with ONNX Runtime's default optimizations
    simulation_diff: float | None  # INT8: QAT's simulation (PyTorch) vs compile
    label_agreement: float  # fraction of rows where ONNX Runtime and compile pick one label
    tolerance: float
    max_logit: float
    rows: int
    int8_layers: int
    int8_attention: int  # self-attention modules computed in INT8
    zeros: int  # exact zeros in the weight initializers of the Linears
    size_mb: float
    reference: str = "compile"

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance * max(1.0, self.max_logit)


def for_export(model: nn.Module, plan: Int8Plan | None = None) -> nn.Module:
    """A float32 copy of ``model`` as it will be exported, eval mode: with an INT8 ``plan``,
    its Linears as ``Int8ExportLinear`` (the plan's scales) and its attention INT8 when the
    plan's is; otherwise (and for the plan's fp32 attention) transformers' eager attention,
    the pattern ONNX tools fuse."""
    model = copy.deepcopy(model).float().eval()
    if plan is not None:
        for name in plan.linears:
            swap_module(model, name, Int8ExportLinear(model.get_submodule(name),
                                                      plan.scales[name]))
        if plan.attention:
            simulate_int8_attention(model, True)
            return model
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    return model


def _outputs(model: nn.Module, names: list[str], args: tuple) -> list[np.ndarray]:
    """The logits (start and end for QA) of ``model`` on the check rows."""
    with torch.inference_mode():
        out = _LogitsOnly(model, names).eval()(*args)
    return [o.float().numpy() for o in (out if isinstance(out, tuple) else (out,))]


def export_onnx(model: nn.Module, path: str | os.PathLike, inputs: dict[str, torch.Tensor],
                int8: bool = False, weight_scales: dict[str, torch.Tensor] | None = None,
                tolerance: float | None = None, opset: int = OPSET,
                plan: Int8Plan | None = None) -> ExportReport:
    """Export ``model`` (dynamic batch, sequence and, for multiple choice, choices axes) to
    ``path`` and check it on ``inputs`` (tokenized real rows) against ``compile(model)`` in
    the same precision. INT8 follows ``plan`` (made here from ``weight_scales`` when None:
    ``obert.compression.plan.int8_plan``). The file is written beside ``path`` and renamed
    into place only when the check passes; otherwise ObertError with the measured
    difference."""
    from obert.runtime.compile import compile as compile_model

    onnx, ort = _require_onnx()
    path = Path(path)
    dtype = "int8" if int8 else "fp32"
    tol = TOLERANCE[dtype] if tolerance is None else tolerance
    if int8 and plan is None:
        plan = int8_plan(model, weight_scales)
    plan = plan if int8 else None
    exported = for_export(model, plan)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in inputs]
    args = tuple(inputs[n] for n in names)
    cpu = copy.deepcopy(model).float().cpu().eval()
    refs = _outputs(compile_model(cpu, dtype, plan=plan), names, args)
    simulation = None
    if plan is not None:  # QAT's numbers: what training saw
        prepare_qat(cpu, plan)
        sim = _outputs(cpu, names, args)
        simulation = max(float(np.abs(a - b).max()) for a, b in zip(sim, refs, strict=True))
    outputs = ["start_logits", "end_logits"] if len(refs) == 2 else ["logits"]
    # multiple choice: inputs [batch, choices, tokens], one logit per choice
    axes = (["batch", "choices", "sequence"] if inputs["input_ids"].dim() == 3
            else ["batch", "sequence"])
    dynamic = {n: dict(enumerate(axes)) for n in names}
    dynamic.update({o: dict(enumerate(axes[:2])) for o in outputs})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes on HF's mask code; the check below is what tells
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _LogitsOnly(exported, names).eval(), args, str(tmp), input_names=names,
                output_names=outputs, dynamic_axes=dynamic, opset_version=opset,
                do_constant_folding=True, dynamo=False)
        graph = onnx.load(str(tmp))
        n_int8 = _to_qdq(onnx, graph, exported) if plan is not None else 0
        feeds = {n: inputs[n].numpy() for n in names}
        got = {i: _run_ort(ort, graph, outputs, feeds, cfg)
               for i, cfg in enumerate((ORT_EXACT, {}))}
        diffs = [max(float(np.abs(g - r).max()) for g, r in zip(got[i], refs, strict=True))
                 for i in (0, 1)]
        picked = 0 if int8 else 1
        # a row agrees when every output (QA: start and end) picks the same position
        agree = float(np.all([g.argmax(-1) == r.argmax(-1)
                              for g, r in zip(got[picked], refs, strict=True)], axis=0).mean())
        report = ExportReport(
            str(path), dtype, diffs[picked], diffs[1], simulation, agree, tol,
            max(float(np.abs(r).max()) for r in refs), int(len(inputs["input_ids"])),
            n_int8, len(plan.attention) if plan is not None else 0,
            _linear_zeros(onnx, graph), 0.0, f"compile({dtype})")
        if not report.ok:
            raise ObertError(
                f"the ONNX file does not match compile({dtype}): largest logit difference "
                f"{report.max_abs_diff:.3g} on {report.rows} rows, above the tolerance {tol:g} "
                f"x max(1, {report.max_logit:.3g}); nothing written (report this, with the "
                "model)")
        _set_metadata(onnx, graph, plan, report)
        onnx.save(graph, str(tmp))
        report.size_mb = tmp.stat().st_size / 2**20
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def _set_metadata(onnx, graph, plan: Int8Plan | None, report: ExportReport) -> None:
    """What the file computes and how well it matched, in the model's metadata."""
    check = {"reference": report.reference, "rows": report.rows,
             "max_abs_diff": report.max_abs_diff, "label_agreement": report.label_agreement,
             "max_logit": report.max_logit}
    props = {"obert.check": json.dumps(check)}
    if plan is not None:
        from obert.compression.quant import SCHEME

        check["simulation_diff"] = report.simulation_diff
        check["default_session_diff"] = report.default_session_diff
        props = {
            "obert.scheme": SCHEME,
            "obert.int8_plan": json.dumps(plan.describe()),
            "obert.attention": ("int8 as compile runs it (quant.int8_attention)"
                                if plan.attention else f"fp32: {plan.attention_note}"),
            "obert.inexact": ("float sums instead of int32 and ONNX Runtime's own LayerNorm, "
                              "GELU and Exp: last-bit differences, and a value that close to a "
                              "rounding boundary rounds the other way"),
            "obert.ort_session_config": "session.disable_quant_qdq=1 keeps obert's numbers",
            "obert.check": json.dumps(check)}
    onnx.helper.set_model_props(graph, props)


def _run_ort(ort, graph, outputs: list[str], feeds: dict, config: dict[str, str]
             ) -> list[np.ndarray]:
    so = ort.SessionOptions()
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    sess = ort.InferenceSession(graph.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(outputs, feeds)


def _to_qdq(onnx, graph, model: nn.Module) -> int:
    """Replace each INT8 Linear's float weight (the ``weight_t`` buffer, found by its module's
    name: two identical weights are two layers even when the exporter shares one initializer)
    by W_qᵀ as int8 and a DequantizeLinear with its per-row scales. Every INT8 Linear must be
    found: a miss is an error, never a silently float layer."""
    from onnx import helper, numpy_helper

    layers = {f"model.{n}.{WEIGHT}": m for n, m in model.named_modules()
              if isinstance(m, Int8ExportLinear)}
    done, new_nodes = set(), []
    for node in graph.graph.node:
        if node.op_type == "MatMul" and node.input[1] in layers:
            base = node.input[1]
            m = layers[base]
            q = numpy_helper.from_array(m.wq.numpy().T.copy(), base + "_int8")
            s = numpy_helper.from_array(m.sw.numpy().astype(np.float32), base + "_scale")
            z = numpy_helper.from_array(np.zeros(m.sw.shape[0], np.int8), base + "_zero")
            graph.graph.initializer.extend([q, s, z])
            new_nodes.append(helper.make_node(
                "DequantizeLinear", [q.name, s.name, z.name], [base + "_dq"], axis=1,
                name=base + "_DequantizeLinear"))
            node.input[1] = base + "_dq"
            done.add(base)
        new_nodes.append(node)
    if len(done) != len(layers):
        missing = sorted(set(layers) - done)[0].removeprefix("model.")
        raise ObertError(f"ONNX export: {len(layers) - len(done)} of {len(layers)} INT8 "
                         f"Linears (first: {missing}) were not found in the exported graph; "
                         "report this with the model")
    # the float weights are now unused: drop them, and the exporter's Identity aliases of them
    used = {i for n in new_nodes for i in n.input if not (n.op_type == "Identity"
                                                          and n.output[0] in layers)}
    new_nodes = [n for n in new_nodes if not (n.op_type == "Identity" and n.output[0] in layers)]
    for init in [i for i in graph.graph.initializer if i.name in layers and i.name not in used]:
        graph.graph.initializer.remove(init)
    del graph.graph.node[:]
    graph.graph.node.extend(new_nodes)
    return len(done)


def _linear_zeros(onnx, graph) -> int:
    """Exact zeros in the weights the graph multiplies by (MatMul/Gemm right operands, int8
    ones through their DequantizeLinear)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.graph.initializer}
    dq = {n.output[0]: n.input[0] for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    zeros = 0
    for node in graph.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            name = dq.get(node.input[1], node.input[1])
            if name in inits:
                zeros += int((numpy_helper.to_array(inits[name]) == 0).sum())
    return zeros
