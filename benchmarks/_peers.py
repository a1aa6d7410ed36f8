"""The engines a user would pick instead of obert's sparse CPU runtime: ONNX Runtime and OpenVINO,
fp32 and INT8, on the same HF model exported to ONNX with fixed shapes. Measures per-call latency
(median and min wall time of one forward on one batch) at a fixed thread count.

Every optional package is imported lazily; a missing one raises :class:`PeerUnavailable` (an
``ImportError``), which a benchmark catches and prints as ``skipped: <reason>``.
"""

from __future__ import annotations

import inspect
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

Feeds = dict[str, np.ndarray]
Runner = Callable[[Feeds], np.ndarray]
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class PeerUnavailable(ImportError):
    """A peer engine cannot run here (a package is missing or too old)."""


def _require(module: str, package: str | None = None) -> Any:
    """Import ``module`` or raise :class:`PeerUnavailable` naming the package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = package or module.split(".")[0]
        raise PeerUnavailable(f"{pkg} not installed ({e}); pip install -e '.[bench]'") from e


def _atomic_path(path: Path) -> Path:
    """A temp path next to ``path``; rename it onto ``path`` when done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def model_inputs(model: torch.nn.Module) -> tuple[str, ...]:
    """The standard BERT inputs that ``model.forward`` accepts (in ONNX input order)."""
    params = inspect.signature(model.forward).parameters
    return tuple(n for n in INPUT_NAMES if n in params)


def make_feeds(
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    seed: int = 0,
    pad: int = 0,
    names: Sequence[str] = INPUT_NAMES,
) -> Feeds:
    """Random int64 inputs; the last ``pad`` positions of each row are masked out."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, size=(batch_size, seq_len), dtype=np.int64)
    mask = np.ones((batch_size, seq_len), dtype=np.int64)
    if pad:
        mask[:, seq_len - pad :] = 0
        ids[:, seq_len - pad :] = 0
    feeds = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros((batch_size, seq_len), dtype=np.int64),
    }
    return {n: feeds[n] for n in names}


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in, ``.logits`` out: what the ONNX graph exposes."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).logits


def _set_attn(model: torch.nn.Module, impl: str) -> None:
    """Switch an HF model's attention implementation in place."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    batch_size: int,
    seq_len: int,
    opset: int = 17,
    attn: str | None = "eager",
) -> Path:
    """Export ``model`` to ONNX with fixed shapes [batch_size, seq_len] and output "logits".

    Uses the legacy TorchScript exporter (``dynamo=False``). It traces transformers 5's sdpa
    attention too, but ORT's transformer optimizer only fuses the eager attention pattern into
    its Attention op, so attention is switched to ``attn`` for the export and then restored
    (None keeps the model's). The example mask has padding so the masked path is traced. The
    config's head count and hidden size go into the ONNX metadata for :func:`ort_optimize`.
    """
    onnx = _require("onnx")
    path = Path(path)
    names = model_inputs(model)
    config = getattr(model, "config", None)
    vocab = int(getattr(config, "vocab_size", 1000))
    feeds = make_feeds(batch_size, seq_len, vocab, pad=min(seq_len // 4, seq_len - 1), names=names)
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    wrapper = _LogitsOnly(model, names).eval()
    was_training = model.training
    old_attn = getattr(config, "_attn_implementation", None)
    tmp = _atomic_path(path)
    try:
        if attn is not None and old_attn is not None and attn != old_attn:
            _set_attn(model, attn)
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                args,
                str(tmp),
                input_names=list(names),
                output_names=["logits"],
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        meta = {
            "num_heads": getattr(config, "num_attention_heads", None),
            "hidden_size": getattr(config, "hidden_size", None),
        }
        if all(isinstance(v, int) for v in meta.values()):
            graph = onnx.load(str(tmp))
            onnx.helper.set_model_props(graph, {k: str(v) for k, v in meta.items()})
            onnx.save(graph, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
        if old_attn is not None and getattr(config, "_attn_implementation", None) != old_attn:
            _set_attn(model, old_attn)
    return path


def ort_optimize(
    onnx_path: str | Path, out_path: str | Path, num_heads: int = 0, hidden_size: int = 0
) -> Path:
    """Fuse a BERT graph with ORT's transformer optimizer (Attention, SkipLayerNormalization,
    BiasGelu); ORT's docs say to do this before quantizing a transformer. Attention fuses only
    with the head count and hidden size known: given here or read from :func:`export_onnx`'s
    metadata (HF reshapes heads with -1, which ORT cannot infer them from)."""
    optimizer = _require("onnxruntime.transformers.optimizer", "onnxruntime")
    onnx = _require("onnx")
    if not (num_heads and hidden_size):
        graph = onnx.load(str(onnx_path), load_external_data=False)
        props = {p.key: p.value for p in graph.metadata_props}
        num_heads = int(props.get("num_heads", 0))
        hidden_size = int(props.get("hidden_size", 0))
    out = Path(out_path)
    tmp = _atomic_path(out)
    try:
        # opt_level 0: ORT's own graph rewrites (level 1) hide the attention pattern
        fused = optimizer.optimize_model(
            str(onnx_path),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=0,
        )
        fused.save_model_to_file(str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def ort_int8(
    onnx_path: str | Path, out_path: str | Path, per_channel: bool = False, optimize: bool = True
) -> Path:
    """Dynamic INT8 with ``onnxruntime.quantization.quantize_dynamic``: QInt8 weights, uint8
    activations quantized at run time. ``optimize`` first fuses the graph with
    :func:`ort_optimize` (attention becomes QAttention), as ORT's docs advise for transformers.
    Per-tensor weights are the default: on 2 AVX-512 VNNI cores (BERT-base, seq 128) they ran as
    fast as or slightly faster than per-channel, and the fused graph ~5% faster than the raw one.
    """
    quant = _require("onnxruntime.quantization", "onnxruntime")
    onnx = _require("onnx")
    out = Path(out_path)
    tmp = _atomic_path(out)
    fused = out.with_name(f".{out.stem}.{os.getpid()}.fused.onnx")
    try:
        src = ort_optimize(onnx_path, fused) if optimize else Path(onnx_path)
        quant.quantize_dynamic(
            str(src),
            str(tmp),
            weight_type=quant.QuantType.QInt8,
            per_channel=per_channel,
            # the fused graph's com.microsoft ops defeat ONNX shape inference
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT} if optimize else None,
        )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        fused.unlink(missing_ok=True)
    return out


def ort_session(onnx_path: str | Path, threads: int) -> Runner:
    """A CPU InferenceSession (``threads`` intra-op, 1 inter-op, all graph optimizations) as a
    function feeds -> logits. Feeds the graph does not take are dropped."""
    ort = _require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(feeds: Feeds) -> np.ndarray:
        return sess.run(["logits"], {n: feeds[n] for n in names})[0]

    return run


def openvino_ir(onnx_path: str | Path, out_dir: str | Path) -> Path:
    """The fp32 OpenVINO IR of an ONNX model (weights kept fp32), for reference."""
    ov = _require("openvino")
    return _save_ir(ov, ov.Core().read_model(str(onnx_path)), Path(out_dir) / "model_fp32.xml")


def openvino_int8(
    onnx_path: str | Path, out_dir: str | Path, calib_batches: Sequence[Feeds]
) -> Path:
    """Post-training INT8 with ``nncf.quantize`` (transformer model type, performance preset,
    calibrated on ``calib_batches``), saved as OpenVINO IR; returns the .xml path."""
    ov = _require("openvino")
    nncf = _require("nncf")
    if not calib_batches:
        raise ValueError("openvino_int8 needs at least one calibration batch")
    model = ov.Core().read_model(str(onnx_path))
    names = [p.get_any_name() for p in model.inputs]
    data = nncf.Dataset([{n: b[n] for n in names} for b in calib_batches])
    qmodel = nncf.quantize(
        model,
        data,
        preset=nncf.QuantizationPreset.PERFORMANCE,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calib_batches),
    )
    return _save_ir(ov, qmodel, Path(out_dir) / "model_int8.xml")


def _save_ir(ov: Any, model: Any, xml: Path) -> Path:
    """Save ``model`` as ``xml``/``.bin`` via temp names, then rename both."""
    tmp = _atomic_path(xml)
    try:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    return xml


def openvino_session(model_path: str | Path, threads: int, exact_fp32: bool = False) -> Runner:
    """Compile an OpenVINO IR (or ONNX) file on "CPU" with ``threads`` inference threads and the
    LATENCY hint, as a function feeds -> logits. ``exact_fp32`` pins the inference precision to
    f32 (the CPU plugin otherwise may run non-quantized ops in bf16 where the CPU supports it)."""
    ov = _require("openvino")
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if exact_fp32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(str(model_path), "CPU", config)
    request = compiled.create_infer_request()
    names = [p.get_any_name() for p in compiled.inputs]
    out = compiled.output("logits")

    def run(feeds: Feeds) -> np.ndarray:
        return request.infer({n: feeds[n] for n in names})[out].copy()

    return run


def torch_runner(model: torch.nn.Module) -> Runner:
    """The HF model itself as a function feeds -> logits (no grad; call in eval mode)."""
    names = model_inputs(model)

    def run(feeds: Feeds) -> np.ndarray:
        with torch.inference_mode():
            return model(**{n: torch.from_numpy(feeds[n]) for n in names}).logits.numpy()

    return run


def time_callable(fn: Runner, feeds: Feeds, warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """Wall time of ``fn(feeds)`` over ``repeats`` calls after ``warmup``: median_ms, min_ms."""
    for _ in range(warmup):
        fn(feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times)}
