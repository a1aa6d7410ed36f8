"""obert export: ONNX files that keep the zeros (and INT8 as int8 weights with their scales),
checked by ONNX Runtime against PyTorch on real SST-2 rows; refusals leave nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from obert.cli import main
from obert.compression.plan import int8_linears
from obert.compression.quant import quantize_rows

onnx = pytest.importorskip("onnx")  # installed by `make test` (extra "onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def block4_model(tmp_path_factory, tiny_finetuned_dir, glue_dir):
    out = tmp_path_factory.mktemp("export") / "block4"
    assert main(["oneshot", "--model", str(tiny_finetuned_dir), "--task", "sst2", "--data-dir",
                 str(glue_dir), "--method", "magnitude", "--mask", "block4", "--sparsity", "0.7",
                 "--output", str(out), "--quiet"]) == 0
    return out


def _linear_zeros(model) -> int:
    return sum(int((m.weight == 0).sum()) for m in model.modules()
               if isinstance(m, torch.nn.Linear))


def _run(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["export", *args, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_fp32_export_keeps_every_zero_and_matches_on_sst2(block4_model, glue_dir, tmp_path,
                                                          capsys):
    path = tmp_path / "m.onnx"
    r = _run(capsys, "--model", str(block4_model), "--output", str(path), "--task", "sst2",
             "--data-dir", str(glue_dir))
    model = AutoModelForSequenceClassification.from_pretrained(block4_model)
    assert r["zeros"] == _linear_zeros(model) > 0
    assert r["rows"] == 32 and r["max_abs_diff"] <= 1e-4 * max(1, r["max_logit"])
    # dynamic axes: another batch and length run too, and agree
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = torch.randint(1000, 3000, (3, 11))
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "token_type_ids": torch.zeros_like(ids)}
    got = sess.run(["logits"], {k: v.numpy() for k, v in feeds.items()})[0]
    with torch.no_grad():
        ref = model.eval()(**feeds).logits.numpy()
    assert np.abs(got - ref).max() < 1e-4


def test_int8_export_is_int8_weights_with_scales(block4_model, glue_dir, tmp_path, capsys):
    path = tmp_path / "q.onnx"
    r = _run(capsys, "--model", str(block4_model), "--output", str(path), "--int8", "--task",
             "sst2", "--data-dir", str(glue_dir))
    assert r["int8_layers"] == 12 and r["max_abs_diff"] <= 1e-2 * max(1, r["max_logit"])
    g = onnx.load(str(path)).graph
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    dq = [n for n in g.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 12
    model = AutoModelForSequenceClassification.from_pretrained(block4_model)
    want = {}
    for lin in int8_linears(model).values():
        wq, sw = quantize_rows(lin.weight.detach())
        want[wq.numpy().T.tobytes()] = sw.numpy()
    for node in dq:
        q, s = inits[node.input[0]], inits[node.input[1]]
        assert q.dtype == np.int8 and want[q.tobytes()].tobytes() == s.tobytes()
    # every pruned weight is an int8 zero (INT8 rounding may add a few more)
    zeros_int8 = sum(int((inits[n.input[0]] == 0).sum()) for n in dq)
    zeros_model = sum(int((lin.weight == 0).sum()) for lin in int8_linears(model).values())
    assert zeros_int8 >= zeros_model


def test_export_refusals_leave_nothing(block4_model, tmp_path, capsys, monkeypatch):
    import obert.runtime.export as ex

    folder = tmp_path / "a-folder"
    folder.mkdir()
    cases = [["--output", str(folder)], ["--output", str(tmp_path / "no" / "m.onnx")]]
    existing = tmp_path / "old.onnx"
    existing.write_text("x")
    cases.append(["--output", str(existing)])
    for extra in cases:
        capsys.readouterr()
        assert main(["export", "--model", str(block4_model), *extra, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err, extra
    # a check above the tolerance: one line, no file, no temporary file
    run_ort = ex._run_ort
    monkeypatch.setattr(ex, "_run_ort", lambda *a: [o + 1.0 for o in run_ort(*a)])
    out = tmp_path / "bad.onnx"
    assert main(["export", "--model", str(block4_model), "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "does not match" in err[-1] and sum("error" in line for line in err) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder", "old.onnx"]
