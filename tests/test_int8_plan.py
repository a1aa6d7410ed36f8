"""One INT8 plan read by QAT, compile and the ONNX export: the same Linears, the same attention
and the same scales in all three; trained scales only while the weights still fit them; QAT
exact under bf16 autocast; the INT8 ONNX file checked against compile(int8), identical and
fully pruned Linears included."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

import obert.runtime as rt
from obert.compression.plan import int8_plan, prepare_qat
from obert.compression.quant import (
    QAT_ATTENTION,
    FakeQuantLinear,
    convert_qat,
    on_grid,
    quantize_rows,
)
from obert.io import save_weight_scales


def _model(tiny_model_dir, seed: int = 0) -> nn.Module:
    """The tiny BERT with half of each encoder weight pruned and a head whose logits are
    not tiny (so relative gaps mean something)."""
    m = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in int8_plan(m, {}).linears:
            w = m.get_submodule(lin).weight
            w.mul_(torch.rand(w.shape, generator=g) > 0.5)
        m.classifier.weight.mul_(50)
    return m


def _rows() -> dict:
    x = torch.randint(1000, 3000, (4, 19), generator=torch.Generator().manual_seed(1))
    am = torch.ones_like(x)
    am[1, 11:] = 0
    am[2, 4:] = 0
    return {"input_ids": x, "attention_mask": am, "token_type_ids": torch.zeros_like(x)}


def test_one_plan_for_qat_and_compile(tiny_model_dir):
    m = _model(tiny_model_dir)
    plan = int8_plan(m)
    assert len(plan.linears) == 12 and plan.trained == () and plan.attention_note is None
    assert plan.attention == ("bert.encoder.layer.0.attention.self",
                              "bert.encoder.layer.1.attention.self")
    for name in plan.linears:  # no trained scales: the weights' own
        assert torch.equal(plan.scales[name], quantize_rows(m.get_submodule(name).weight)[1])
    json.dumps(plan.describe())
    qat = copy.deepcopy(m)
    assert prepare_qat(qat).linears == plan.linears
    assert all(isinstance(qat.get_submodule(n), FakeQuantLinear) for n in plan.linears)
    assert qat.config._attn_implementation == QAT_ATTENTION
    c = rt.compile(m, "int8", max_density=1.0, plan=plan)
    assert c.obert_int8_plan is plan and c.obert_attention == list(plan.attention)
    off = int8_plan(m, attention=False)
    assert off.attention == () and "off" in off.attention_note
    assert rt.compile(m, "int8", plan=off).obert_attention == []


def test_an_attention_the_runtime_cannot_run_is_fp32_everywhere(tiny_model_dir):
    """One self-attention that is not a BERT encoder's (here: flagged as a decoder) makes the
    plan keep every attention fp32, and QAT then does not simulate one the runtime would not
    run: QAT and compile(int8) still agree."""
    m = _model(tiny_model_dir)
    m.bert.encoder.layer[1].attention.self.is_decoder = True
    plan = int8_plan(m)
    assert plan.attention == () and "layer.1.attention.self" in plan.attention_note
    qat = copy.deepcopy(m)
    prepare_qat(qat)
    assert qat.config._attn_implementation != QAT_ATTENTION
    c = rt.compile(m, "int8", max_density=1.0)
    assert c.obert_attention == [] and not any(isinstance(x, rt.Int8SelfAttention)
                                               for x in c.modules())
    rows = _rows()
    with torch.inference_mode():
        out = c(**rows).logits
        sim = qat(**rows).logits
    assert (sim - out).abs().max() <= 1e-4 * out.abs().max()


def test_trained_scales_are_used_only_while_the_weights_fit_them(tiny_model_dir, tmp_path,
                                                                  capsys):
    m = _model(tiny_model_dir)
    prepare_qat(m)
    scales = convert_qat(m)  # the weights are now exactly s_w·W_q
    lines: list[str] = []
    plan = int8_plan(m, scales, log=lines.append)
    assert plan.trained == plan.linears and plan.stale == () and lines == []
    assert all(torch.equal(plan.scales[n], scales[n]) for n in plan.linears)
    # the weights move after QAT (further training, an edit): those scales are stale
    name = "bert.encoder.layer.0.intermediate.dense"
    w = m.get_submodule(name).weight
    with torch.no_grad():
        w[0, w[0].ne(0).nonzero()[0, 0]] += 0.3 * scales[name][0]
    assert not on_grid(w, scales[name])
    plan = int8_plan(m, scales, log=lines.append)
    assert plan.stale == (name,) and len(plan.trained) == 11
    assert len(lines) == 1 and name in lines[0] and "changed since QAT" in lines[0]
    assert torch.equal(plan.scales[name], quantize_rows(w)[1])
    # scales too small for the weights would clamp them: stale too
    small = {n: s / 2 for n, s in scales.items()}
    assert int8_plan(m, small, log=lines.append).trained == ()
    # from a folder, as compile finds them: the changed layer packs fresh scales, and says so
    m.save_pretrained(tmp_path)
    save_weight_scales(tmp_path, scales)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    capsys.readouterr()
    c = rt.compile(loaded, "int8", fuse_qkv=False, fuse_ffn=False)
    assert "changed since QAT" in capsys.readouterr().err
    assert c.obert_trained_scales and c.obert_int8_plan.stale == (name,)
    assert torch.equal(c.get_submodule(name).sw, quantize_rows(w)[1])
    other = "bert.encoder.layer.1.intermediate.dense"
    assert torch.equal(c.get_submodule(other).sw, scales[other])


def test_fake_quant_linear_is_fp32_under_bf16_autocast():
    """Under autocast, s_w·W_q and s_x·x_q would be rounded to bf16 (8 bits of mantissa):
    FakeQuantLinear stays float32 and gives the INT8 kernel's output to float rounding."""
    from obert.runtime.modules import DenseInt8Linear

    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(256, 256)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(256, 256, generator=g) * 0.05)
    x = torch.randn(16, 256, generator=g)
    with torch.inference_mode():
        ref = DenseInt8Linear(lin)(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = FakeQuantLinear.from_linear(lin)(x)
            plain = lin(x)
        fp32 = nn.functional.linear(x, lin.weight, lin.bias)
    assert y.dtype == torch.float32
    scale = ref.abs().max()
    assert (y - ref).abs().max() <= 1e-5 * scale
    # what autocast alone does to a Linear is far larger than that (the 0.011 gap)
    assert (plain.float() - fp32).abs().max() > 100 * (y - ref).abs().max()


def test_qat_under_bf16_autocast_computes_compile_int8(tiny_model_dir):
    """The encoder QAT trains under bf16 autocast computes compile(int8)'s hidden states to
    fp32 rounding (INT8 Linears and attention in fp32, padding included). The fp32 pooler and
    head run in autocast's precision there, as any mixed-precision training does."""
    m = _model(tiny_model_dir)
    c = rt.compile(m, "int8", max_density=1.0)
    qat = copy.deepcopy(m)
    prepare_qat(qat)
    rows = _rows()
    with torch.inference_mode():
        ref = c.bert(**rows).last_hidden_state
        fp32 = m.bert(**rows).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sim = qat.bert(**rows).last_hidden_state
    assert sim.dtype == torch.float32
    gap = (sim - ref).abs().max()
    assert gap <= 1e-5 * ref.abs().max()
    assert (fp32 - ref).abs().max() > 100 * gap  # INT8 is visible: the test can tell


onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_int8_onnx_computes_compile_int8_with_identical_and_pruned_linears(tiny_model_dir,
                                                                           tmp_path):
    """A fully pruned query and key (two identical weights, one initializer for the exporter)
    export as two INT8 layers; the file runs INT8 attention and matches compile(int8), not a
    twin of itself; what it computes and how well it matched is in its metadata."""
    import numpy as np
    import onnxruntime as ort

    from obert.runtime.export import ORT_EXACT, export_onnx

    m = _model(tiny_model_dir)
    sa = m.bert.encoder.layer[0].attention.self
    with torch.no_grad():
        sa.query.weight.zero_()
        sa.key.weight.zero_()
    rows = _rows()
    path = tmp_path / "q.onnx"
    r = export_onnx(m, path, rows, int8=True)
    assert r.int8_layers == 12 and r.int8_attention == 2 and r.reference == "compile(int8)"
    assert r.max_abs_diff <= 1e-3 * r.max_logit and r.label_agreement == 1.0
    assert r.simulation_diff <= 1e-3 * r.max_logit
    g = onnx.load(str(path))
    assert sum(n.op_type == "DequantizeLinear" for n in g.graph.node) == 12
    inits = {i.name for i in g.graph.initializer}
    assert not any(i.endswith("weight_t") for i in inits)  # no float copy of a weight left
    props = {p.key: p.value for p in g.metadata_props}
    assert json.loads(props["obert.int8_plan"])["attention"] == 2
    assert json.loads(props["obert.check"])["reference"] == "compile(int8)"
    # the INT8 attention is in the graph: fp32 attention would be visibly further off
    so = ort.SessionOptions()
    for k, v in ORT_EXACT.items():
        so.add_session_config_entry(k, v)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {k: v.numpy() for k, v in rows.items()})[0]
    c = rt.compile(m, "int8", max_density=1.0)
    plain = rt.compile(m, "int8", max_density=1.0, int8_attention=False)
    with torch.inference_mode():
        ref = c(**rows).logits.numpy()
        fp32_att = plain(**rows).logits.numpy()
    assert np.abs(got - ref).max() * 10 < np.abs(fp32_att - ref).max()
