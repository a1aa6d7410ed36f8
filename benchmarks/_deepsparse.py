"""DeepSparse 1.8.0 as an optional reference in the benchmarks, kept out of obert's venv.

DeepSparse (Neural Magic) is closed source under an evaluation-only licence, so it is never a
dependency of obert: it gets its own Python 3.11 venv under ``benchmarks/.cache`` (gitignored;
``setup_deepsparse``), and ``_deepsparse_runner.py`` holds models compiled there in a child
process that times them on command (``start_deepsparse``), so a benchmark can time DeepSparse in
the same interleaved rounds as its own engines (``_rounds.py``). ``setup_deepsparse`` returns
None with a printed reason instead of raising; ``start_deepsparse`` raises a one-line
``RemoteError``; ``deepsparse_int8_onnx`` quantizes for it, in obert's venv.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _rounds import RemoteEngine, RemoteError

HERE = Path(__file__).resolve().parent
VENV = HERE / ".cache" / "deepsparse-venv"
RUNNER = HERE / "_deepsparse_runner.py"
# DeepSparse 1.8.0 wheels need Python >=3.8,<3.12; override with OBERT_DEEPSPARSE_BASE_PYTHON
BASE_PYTHON = os.environ.get(
    "OBERT_DEEPSPARSE_BASE_PYTHON", "/root/.pyenv/versions/3.11.7/bin/python"
)
PACKAGES = ["deepsparse==1.8.0", "numpy<2", "onnx<1.15"]
NO_TORCH = "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"


def _say(msg: str) -> None:
    print(f"[deepsparse] {msg}", file=sys.stderr, flush=True)


def _env() -> dict[str, str]:
    return {**os.environ, "NM_DISABLE_ANALYTICS": "1"}


@functools.cache
def deepsparse_python() -> Path | None:
    """The DeepSparse venv's python if ``import deepsparse`` works there (checked once)."""
    py = VENV / "bin" / "python"
    if not py.exists():
        return None
    cmd = [str(py), "-c", "import deepsparse"]
    try:
        r = subprocess.run(cmd, env=_env(), capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    return py if r.returncode == 0 else None


def setup_deepsparse(quiet: bool = True) -> Path | None:
    """Create the DeepSparse venv if it is missing or broken; its python, or None."""
    if (py := deepsparse_python()) is not None:
        return py
    base = shutil.which(BASE_PYTHON) or shutil.which("python3.11")
    if base is None:
        _say(f"no Python 3.11 to build the venv with ({BASE_PYTHON} not found)")
        return None
    py = VENV / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    steps = [
        [base, "-m", "venv", "--clear", str(VENV)],
        [*pip, *(["-q"] if quiet else []), *PACKAGES],
        [str(py), "-c", NO_TORCH],  # torch must never land in this venv (nothing needs it)
    ]
    for cmd in steps:
        if not quiet:
            _say(" ".join(cmd))
        try:
            r = subprocess.run(cmd, capture_output=quiet, text=True, timeout=1800)
        except (OSError, subprocess.SubprocessError) as e:
            r = subprocess.CompletedProcess(cmd, 1, "", str(e))
        if r.returncode != 0:
            tail = (r.stderr or "").strip().splitlines()[-1:] or ["see output above"]
            _say(f"setup failed at `{' '.join(cmd[:4])} ...`: {tail[0]}")
            shutil.rmtree(VENV, ignore_errors=True)
            deepsparse_python.cache_clear()
            return None
    deepsparse_python.cache_clear()
    if (py := deepsparse_python()) is None:
        _say("venv built but `import deepsparse` fails there")
    return py


def start_deepsparse(
    models: dict[str, Path], batch_size: int, seq_len: int, threads: int,
    start_timeout: float = 1800, timeout: float = 600,
) -> RemoteEngine:
    """A runner holding ``models`` (name -> ONNX) compiled on ``threads`` cores, ready to time
    them on command (close it when done). Raises :class:`RemoteError` with one line when there
    is no venv or the runner fails to start; a model that fails to compile is in ``.failed``."""
    py = deepsparse_python()
    if py is None:
        raise RemoteError(f"no working DeepSparse venv at {VENV} (see setup_deepsparse)")
    cmd = [str(py), str(RUNNER), *(x for n, p in models.items() for x in ("--model", f"{n}={p}")),
           "--batch-size", str(batch_size), "--seq-len", str(seq_len), "--threads", str(threads)]
    env = {**_env(), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return RemoteEngine(cmd, env=env, start_timeout=start_timeout, timeout=timeout)


def deepsparse_int8_onnx(
    fp32_onnx: Path, out_path: Path, calib_feeds: list[dict[str, np.ndarray]]
) -> Path:
    """Static INT8 ONNX of ``fp32_onnx`` laid out the way DeepSparse runs it in INT8; ``out_path``.

    Runs in obert's venv and raises ImportError when onnxruntime is missing (unlike the rest of
    this module). ``onnxruntime.quantization.quantize_static`` makes a QDQ model (MatMul inputs
    only, uint8 activations calibrated by min-max on ``calib_feeds``, symmetric per-tensor int8
    weights, so pruned weights stay exactly zero); each quantized MatMul is then rewritten as
    SparseML's exporter does (MatMulInteger, int32 bias Add, Cast, rescale Mul; weights uint8 with
    zero point 128). DeepSparse 1.8.0 runs that form with its sparse INT8 kernels, whereas it gets
    no speed-up from ORT's plain QDQ graph. Written to a temp file, then renamed.
    """
    try:
        import onnx
        from onnxruntime import quantization as q
    except ImportError as e:
        raise ImportError(
            f"deepsparse_int8_onnx needs onnx and onnxruntime ({e}); pip install -e '.[bench]'"
        ) from e
    if not calib_feeds:
        raise ValueError("deepsparse_int8_onnx needs at least one calibration batch")
    graph = onnx.load(str(fp32_onnx), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in weights]

    class _Feeds(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{n: f[n] for n in names} for f in calib_feeds])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        q.quantize_static(
            str(fp32_onnx),
            str(tmp),
            _Feeds(),
            quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            per_channel=False,
            op_types_to_quantize=["MatMul"],
            calibrate_method=q.CalibrationMethod.MinMax,
            extra_options={
                "WeightSymmetric": True,
                "ActivationSymmetric": False,
                # keep MatMul -> bias Add adjacent so the bias folds into the int32 accumulator
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
            },
        )
        model = onnx.load(str(tmp))
        if _qdq_matmuls_to_integer(model) == 0:
            raise RuntimeError(f"no MatMul of {fp32_onnx} was quantized")
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _qdq_matmuls_to_integer(model: Any) -> int:
    """Rewrite ``DequantizeLinear``-fed MatMuls of ``model`` in place, as SparseML's
    ``ONNXToDeepsparse`` does: ``MatMulInteger(x_u8, w_u8)`` [``+ int32 bias``] ``-> Cast ->
    Mul(sx * sw)``, int8 weights shifted to uint8 (zero point + 128). Returns how many."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    def add_init(a: np.ndarray, name: str) -> str:
        g.initializer.append(numpy_helper.from_array(a, name))
        return name

    replaced: dict[int, list[Any]] = {}  # id(MatMul) -> its new nodes
    dropped: set[int] = set()  # bias Adds folded into the int32 accumulator
    for k, mm in enumerate(g.node):
        dqs = [producer.get(i) for i in mm.input]
        if mm.op_type != "MatMul" or not all(
            d is not None and d.op_type == "DequantizeLinear" and len(d.input) == 3
            and d.input[1] in inits and d.input[2] in inits
            for d in dqs
        ):  # fmt: skip
            continue
        da, db = dqs
        if da.input[0] in inits:
            continue  # constant left operand: not a layer DeepSparse knows
        base = f"{mm.name or mm.output[0]}.{k}"
        scale = (arr(da.input[1]).astype(np.float64) * arr(db.input[1])).astype(np.float32)
        b, b_zp = db.input[0], db.input[2]
        if b in inits and arr(b).dtype == np.int8:  # weight: int8 -> uint8, zero point + 128
            b = add_init((arr(b).astype(np.int16) + 128).astype(np.uint8), f"{base}.weight_u8")
            b_zp = add_init((arr(b_zp).astype(np.int16) + 128).astype(np.uint8), f"{base}.w_zp")
        acc = f"{base}.int32"
        nodes = [helper.make_node("MatMulInteger", [da.input[0], b, da.input[2], b_zp], [acc])]
        out = mm.output[0]
        users = consumers.get(out, [])
        bias = next((i for i in users[0].input if i in inits), None) if len(users) == 1 else None
        if (
            db.input[0] in inits and out not in graph_outputs and bias is not None
            and users[0].op_type == "Add" and arr(bias).ndim == 1
        ):  # fmt: skip
            qb = np.round(arr(bias).astype(np.float64) / scale.astype(np.float64))
            qb = np.clip(qb, -(2**31), 2**31 - 1).astype(np.int32)
            qb_name = add_init(qb, f"{base}.bias_i32")
            nodes.append(helper.make_node("Add", [acc, qb_name], [acc + "_b"]))
            acc += "_b"
            dropped.add(id(users[0]))
            out = users[0].output[0]
        nodes.append(helper.make_node("Cast", [acc], [acc + "_f"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [acc + "_f", add_init(scale, f"{base}.scale")], [out]))
        replaced[id(mm)] = nodes
    kept = [x for n in g.node if id(n) not in dropped for x in replaced.get(id(n), [n])]
    while True:  # drop the now-dead DequantizeLinear nodes (and anything else left unused)
        used = {i for n in kept for i in n.input} | graph_outputs
        live = [n for n in kept if any(o in used for o in n.output)]
        if len(live) == len(kept):
            break
        kept = live
    used |= {i.name for i in g.input}
    produced = {o for n in kept for o in n.output}
    for field, keep in (
        (g.node, kept),
        (g.initializer, [t for t in g.initializer if t.name in used]),
        (g.value_info, [v for v in g.value_info if v.name in produced]),
    ):
        new = list(keep)
        del field[:]
        field.extend(new)
    return len(replaced)
