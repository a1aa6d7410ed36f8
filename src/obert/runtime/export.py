"""ONNX export that keeps the zeros and the INT8 scheme, and checks itself with ONNX Runtime.

fp32: the model as it is; pruned weights are exact zeros in the float initializers.
INT8 (``int8=True``): each encoder Linear of ``obert.compression.quant.int8_linears`` becomes
  x̂ = round(x · 127/max|x|) · max|x|/127           per token, in float ops (Abs, ReduceMax,
                                                      Div, Round, Clip, Mul: what the kernels do)
  Ŵᵀ = DequantizeLinear(W_qᵀ int8, s_w, axis=1)      the weight an int8 initializer with its
                                                      per-row scales (the trained ones, if given)
  y = x̂ Ŵᵀ + b
so a pruned weight is an int8 zero, and ONNX Runtime computes the numbers obert's INT8
kernels compute, up to float summation order.

The check runs the file with ONNX Runtime on the caller's inputs and compares the logits with
the PyTorch model the file was made from (the fake-quantized one for INT8). ONNX Runtime's
default optimizations rewrite DequantizeLinear + MatMul into its own 8-bit MatMulNBits, which
rounds differently; the session option ``session.disable_quant_qdq = 1`` keeps obert's numbers
(``ORT_EXACT``). The check uses it; the default session's difference is reported beside it.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from obert.compression.quant import fake_quant_tokens, int8_linears, quantize_rows
from obert.errors import ObertError
from obert.io import weight_scales_of

OPSET = 17
# Largest |ONNX − PyTorch| logit difference accepted, relative to max(1, max |logit|).
# fp32: summation order only. INT8: an activation whose x·127/max|x| lands within rounding
# of a half can round the other way in ONNX Runtime, moving one product by s_x·s_w.
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


class Int8ExportLinear(nn.Module):
    """The INT8 Linear as an exportable graph: per-token fake quantization in float ops and
    the dequantized weight s_w·W_q (rewritten to an int8 initializer + DequantizeLinear)."""

    def __init__(self, linear: nn.Linear, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        wq, sw = quantize_rows(linear.weight.detach().float(), scale)
        self.register_buffer("weight", wq.float() * sw[:, None])
        self.register_buffer("bias", None if linear.bias is None else
                             linear.bias.detach().float().clone())
        self.wq, self.sw = wq, sw  # plain attributes: the rewrite reads them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(fake_quant_tokens(x), self.weight, self.bias)


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
    max_abs_diff: float  # with ORT_EXACT for INT8
    default_session_diff: float  # with ONNX Runtime's default optimizations
    tolerance: float
    max_logit: float
    rows: int
    int8_layers: int
    zeros: int  # exact zeros in the weight initializers of the Linears
    size_mb: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance * max(1.0, self.max_logit)


def for_export(model: nn.Module, int8: bool,
               weight_scales: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` as it will be exported (INT8 Linears swapped in, from the trained
    scales of a QAT folder unless ``weight_scales`` are given), eval mode."""
    model = copy.deepcopy(model).float().eval()
    if int8:
        weight_scales = weight_scales if weight_scales is not None else weight_scales_of(model)
        for name, lin in int8_linears(model).items():
            parent, _, attr = name.rpartition(".")
            scale = (weight_scales or {}).get(name)
            setattr(model.get_submodule(parent) if parent else model, attr,
                    Int8ExportLinear(lin, scale))
    if hasattr(model, "set_attn_implementation"):  # the eager pattern is what ONNX tools fuse
        model.set_attn_implementation("eager")
    return model


def export_onnx(model: nn.Module, path: str | os.PathLike, inputs: dict[str, torch.Tensor],
                int8: bool = False, weight_scales: dict[str, torch.Tensor] | None = None,
                tolerance: float | None = None, opset: int = OPSET) -> ExportReport:
    """Export ``model`` (dynamic batch, sequence and, for multiple choice, choices axes) to
    ``path`` and check it on
    ``inputs`` (tokenized real rows). The file is written beside ``path`` and renamed into
    place only when the check passes; otherwise ObertError with the measured difference."""
    onnx, ort = _require_onnx()
    path = Path(path)
    dtype = "int8" if int8 else "fp32"
    tol = TOLERANCE[dtype] if tolerance is None else tolerance
    exported = for_export(model, int8, weight_scales)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in inputs]
    wrapper = _LogitsOnly(exported, names).eval()
    args = tuple(inputs[n] for n in names)
    with torch.no_grad():
        ref = wrapper(*args)
    refs = [r.float().numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
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
                wrapper, args, str(tmp), input_names=names, output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=opset, do_constant_folding=True, dynamo=False)
        graph = onnx.load(str(tmp))
        n_int8 = _to_qdq(onnx, graph, exported) if int8 else 0
        if int8:
            onnx.helper.set_model_props(graph, {
                "obert.scheme": "int8 per-row weights, per-token dynamic activations",
                "obert.ort_session_config": "session.disable_quant_qdq=1 keeps obert's numbers"})
        onnx.save(graph, str(tmp))
        feeds = {n: inputs[n].numpy() for n in names}
        diffs = [_max_diff(ort, tmp, outputs, feeds, refs, cfg) for cfg in (ORT_EXACT, {})]
        diff = diffs[0] if int8 else diffs[1]
        report = ExportReport(
            str(path), dtype, diff, diffs[1], tol, max(float(np.abs(r).max()) for r in refs),
            int(len(inputs["input_ids"])), n_int8, _linear_zeros(onnx, graph),
            tmp.stat().st_size / 2**20)
        if not report.ok:
            raise ObertError(
                f"the ONNX file does not match the model: largest logit difference "
                f"{diff:.3g} on {report.rows} rows, above the tolerance {tol:g} x "
                f"max(1, {report.max_logit:.3g}); nothing written (report this, with the model)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def _max_diff(ort, path: Path, outputs: list[str], feeds: dict, refs: list[np.ndarray],
              config: dict[str, str]) -> float:
    so = ort.SessionOptions()
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = sess.run(outputs, feeds)
    return max(float(np.abs(g - r).max()) for g, r in zip(got, refs, strict=True))


def _to_qdq(onnx, graph, model: nn.Module) -> int:
    """Replace each INT8 Linear's float weight initializer (folded to Ŵᵀ by the exporter) by
    W_qᵀ as int8 and a DequantizeLinear with its per-row scales. Every INT8 Linear must be
    found: a miss is an error, never a silently float layer."""
    from onnx import helper, numpy_helper

    layers = [m for m in model.modules() if isinstance(m, Int8ExportLinear)]
    by_bytes = {}
    for i, m in enumerate(layers):
        wt = np.ascontiguousarray(m.weight.numpy().T)
        by_bytes[(wt.shape, wt.tobytes())] = i
    inits = {init.name: init for init in graph.graph.initializer}
    done, new_nodes = set(), []
    for node in graph.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            arr = numpy_helper.to_array(inits[node.input[1]])
            i = by_bytes.get((arr.shape, np.ascontiguousarray(arr).tobytes()))
            if i is not None and i not in done:
                m, base = layers[i], node.input[1]
                q = numpy_helper.from_array(m.wq.numpy().T.copy(), base + "_int8")
                s = numpy_helper.from_array(m.sw.numpy().astype(np.float32), base + "_scale")
                z = numpy_helper.from_array(np.zeros(m.sw.shape[0], np.int8), base + "_zero")
                graph.graph.initializer.extend([q, s, z])
                new_nodes.append(helper.make_node(
                    "DequantizeLinear", [q.name, s.name, z.name], [base + "_dq"], axis=1,
                    name=base + "_DequantizeLinear"))
                node.input[1] = base + "_dq"
                graph.graph.initializer.remove(inits[base])
                done.add(i)
        new_nodes.append(node)
    if len(done) != len(layers):
        raise ObertError(f"ONNX export: {len(layers) - len(done)} of {len(layers)} INT8 Linears "
                         "were not found in the exported graph; report this with the model")
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
