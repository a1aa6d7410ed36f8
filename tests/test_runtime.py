"""obert's sparse CPU runtime: kernels against dense references on every instruction set this
CPU has (the scalar fallback included), compile() on tiny and real models, and `obert bench`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import obert.runtime as rt
from obert.cli import main
from obert.errors import ObertError
from obert.runtime.pack import dequantized, pack_f32, pack_i8

ISAS = rt.available_isas()


@pytest.fixture(autouse=True)
def _auto_isa():
    yield
    rt.set_isa("auto")


def pruned(n: int, k: int, sparsity: float, bs: int, seed: int = 0) -> torch.Tensor:
    """A random [n, k] weight with the smallest `bs`-blocks (along k) set to zero."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    if sparsity <= 0:
        return w
    pad = (-k) % bs
    blocks = nn.functional.pad(w, (0, pad)).view(n, -1, bs)
    score = blocks.abs().sum(-1).flatten()
    drop = score.argsort()[: int(round(sparsity * score.numel()))]
    keep = torch.ones_like(score, dtype=torch.bool)
    keep[drop] = False
    return (blocks * keep.view(n, -1, 1)).view(n, -1)[:, :k].contiguous()


def int8_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """What the int8 kernel computes: per-token symmetric int8 x, per-row int8 W, exact sums."""
    amax = x.abs().amax(1, keepdim=True)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    xq = torch.round(x / scale).clamp(-127, 127) * scale
    y = xq.double() @ dequantized(w).double().t()
    return (y + (0 if b is None else b.double())).float()


SHAPES = [  # (tokens, outputs, inputs): odd sizes, single token, many tokens, tails of 16 and 4
    (1, 5, 7), (3, 1, 9), (17, 33, 50), (64, 16, 4), (130, 37, 301), (257, 48, 96),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bs", [1, 4])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99])
def test_fp32_kernel_matches_dense(isa: str, bs: int, sparsity: float) -> None:
    rt.set_isa(isa)
    k = rt.kernels()
    for i, (m, n, kk) in enumerate(SHAPES):
        w = pruned(n, kk, sparsity, bs, seed=i)
        g = torch.Generator().manual_seed(100 + i)
        x = torch.randn(m, kk, generator=g)
        b = torch.randn(n, generator=g)
        p = pack_f32(w, bs)
        for act in (0, 1):
            ref = x.double() @ w.double().t() + b.double()
            if act:
                ref = nn.functional.gelu(ref)
            y = k.spmm_f32(x, p.row_ptr, p.col, p.val, bs, n, b if i % 2 == 0 else b, act)
            assert y.shape == (m, n)
            torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)
        y = k.spmm_f32(x, p.row_ptr, p.col, p.val, bs, n, None, 0)
        torch.testing.assert_close(y.double(), x.double() @ w.double().t(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99])
def test_int8_kernel_matches_quantized_reference(isa: str, sparsity: float) -> None:
    rt.set_isa(isa)
    k = rt.kernels()
    for i, (m, n, kk) in enumerate(SHAPES):
        w = pruned(n, kk, sparsity, 4, seed=i)
        g = torch.Generator().manual_seed(100 + i)
        x = torch.randn(m, kk, generator=g)
        b = torch.randn(n, generator=g)
        q = pack_i8(w)
        ref = int8_reference(x, w, b)
        for act in (0, 1):
            y = k.spmm_i8(x, q.row_ptr, q.col, q.wq, q.sw, q.wsum, n, b, act)
            r = nn.functional.gelu(ref) if act else ref
            torch.testing.assert_close(y, r, rtol=1e-5, atol=1e-4)
        # and int8 is close to the fp32 product it approximates: each factor is rounded to
        # within half a step of 1/127 of its row's max, so |error| <= sum |x||w| / 127
        dense = x @ w.t() + b
        err = (k.spmm_i8(x, q.row_ptr, q.col, q.wq, q.sw, q.wsum, n, b, 0) - dense).abs()
        bound = (x.abs().amax(1, keepdim=True) * w.abs().amax(1)) * kk / 127
        assert bool((err <= bound + 1e-5).all())


def test_empty_rows_and_all_zero_weight_give_the_bias() -> None:
    w = pruned(40, 64, 0.5, 4)
    w[3] = 0
    w[17:33] = 0  # a whole row group of 16
    x = torch.randn(21, 64)
    b = torch.randn(40)
    for isa in ISAS:
        rt.set_isa(isa)
        p, q = pack_f32(w, 4), pack_i8(w)
        y = rt.kernels().spmm_f32(x, p.row_ptr, p.col, p.val, 4, 40, b, 0)
        y8 = rt.kernels().spmm_i8(x, q.row_ptr, q.col, q.wq, q.sw, q.wsum, 40, b, 0)
        for out in (y, y8):
            assert torch.equal(out[:, 3], b[3].expand(21))
            assert torch.equal(out[:, 17:33], b[17:33].expand(21, 16))
    z = torch.zeros(8, 12)
    p = pack_f32(z, 1)
    assert p.nnz_blocks == 0
    assert torch.equal(rt.kernels().spmm_f32(torch.randn(5, 12), p.row_ptr, p.col, p.val, 1, 8),
                       torch.zeros(5, 8))


def test_isas_agree_and_unknown_isa_is_refused() -> None:
    w = pruned(96, 200, 0.9, 4)
    x = torch.randn(77, 200)
    p, q = pack_f32(w, 4), pack_i8(w)
    outs = {}
    for isa in ISAS:
        rt.set_isa(isa)
        assert rt.isa() == isa
        outs[isa] = (rt.kernels().spmm_f32(x, p.row_ptr, p.col, p.val, 4, 96),
                     rt.kernels().spmm_i8(x, q.row_ptr, q.col, q.wq, q.sw, q.wsum, 96))
    for isa in ISAS:
        torch.testing.assert_close(outs[isa][0], outs["scalar"][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outs[isa][1], outs["scalar"][1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ObertError, match="not available"):
        rt.set_isa("avx9000")


@pytest.mark.slow  # starts processes: make test runs it, test-fast does not
def test_forced_scalar_fallback_in_a_fresh_process(tiny_model_dir: Path) -> None:
    """OBERT_ISA=scalar takes effect at load, and a compiled model runs on it."""
    code = (
        "import torch, obert.runtime as rt\n"
        "from transformers import AutoModelForSequenceClassification as A\n"
        f"m = A.from_pretrained({str(tiny_model_dir)!r}).eval()\n"
        "with torch.no_grad():\n"
        "    for l in m.bert.encoder.layer: l.intermediate.dense.weight[:, 1::2] = 0\n"
        "c = rt.compile(m, 'fp32', max_density=0.6)\n"
        "x = torch.randint(1000, 2000, (2, 9))\n"
        "d = (c(input_ids=x).logits - m(input_ids=x).logits).abs().max().item()\n"
        "print(rt.isa(), sum(l.engine == 'sparse-fp32' for l in c.obert_layers), d)\n"
    )
    env = dict(os.environ, OBERT_ISA="scalar")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "scalar" and int(out[1]) == 2 and float(out[2]) < 1e-4
    env["OBERT_ISA"] = "sse9"
    bad = subprocess.run([sys.executable, "-c", "import obert.runtime as r; r.kernels()"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "OBERT_ISA=sse9" in bad.stderr


def _tiny_pruned(tiny_model_dir: Path, sparsity: float, bs: int) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        for i, layer in enumerate(m.bert.encoder.layer):
            for lin in (layer.attention.self.query, layer.attention.self.key,
                        layer.attention.self.value, layer.attention.output.dense,
                        layer.intermediate.dense, layer.output.dense):
                lin.weight.copy_(pruned(*lin.weight.shape, sparsity, bs, seed=i))
    return m


@pytest.mark.parametrize("bs", [1, 4])
def test_compile_fp32_matches_pytorch(tiny_model_dir: Path, bs: int) -> None:
    m = _tiny_pruned(tiny_model_dir, 0.9, bs)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    c = rt.compile(m, "fp32")
    # the original is untouched and still a plain model
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not any(isinstance(x, rt.SparseLinear) for x in m.modules())
    engines = [layer.engine for layer in c.obert_layers]
    assert engines.count("sparse-fp32") == 12 and engines.count("dense-fp32") == 2  # pooler, head
    assert all(layer.block == bs for layer in c.obert_layers if layer.engine == "sparse-fp32")
    inter = c.bert.encoder.layer[0].intermediate
    assert isinstance(inter.intermediate_act_fn, nn.Identity) and inter.dense.act == "gelu"
    attn = c.bert.encoder.layer[0].attention.self
    assert attn.qkv_fused.linear.out_features == 3 * 32  # query, key, value in one call
    assert sum(layer.qkv_fused for layer in c.obert_layers) == 6
    unfused = rt.compile(m, "fp32", fuse_qkv=False, fuse_gelu=False)
    assert isinstance(unfused.bert.encoder.layer[0].attention.self.query, rt.SparseLinear)
    x = torch.randint(1000, 3000, (3, 23))
    mask = torch.ones_like(x)
    mask[1, 15:] = 0  # padding goes through the kernels like any token
    with torch.inference_mode():
        ref = m(input_ids=x, attention_mask=mask).logits
        for compiled in (c, unfused):
            out = compiled(input_ids=x, attention_mask=mask).logits
            assert (out - ref).abs().max().item() < 1e-4
    with torch.no_grad():  # outside inference mode too (version-counted tensors)
        assert (c(input_ids=x, attention_mask=mask).logits - ref).abs().max().item() < 1e-4


def test_compile_int8_and_density_threshold(tiny_model_dir: Path) -> None:
    m = _tiny_pruned(tiny_model_dir, 0.9, 4)
    c = rt.compile(m, "int8")
    engines = [layer.engine for layer in c.obert_layers]
    # the encoder's Linears run INT8 (what QAT simulates); pooler and head stay fp32
    assert engines.count("sparse-int8") == 12 and engines.count("dense-fp32") == 2
    x = torch.randint(1000, 3000, (4, 16))
    with torch.inference_mode():
        ref, out = m(input_ids=x).logits, c(input_ids=x).logits
    assert (out - ref).abs().max().item() < 0.05 * max(1.0, ref.abs().max().item())
    # a dense model stays dense (fp32: untouched modules; int8: DenseInt8Linear in obert's scheme)
    from transformers import AutoModelForSequenceClassification

    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    assert all(layer.engine == "dense-fp32" for layer in rt.compile(dense, "fp32").obert_layers)
    dense_int8 = [layer.engine for layer in rt.compile(dense, "int8").obert_layers]
    assert dense_int8.count("dense-int8") == 12 and dense_int8.count("dense-fp32") == 2
    forced = rt.compile(dense, "fp32", max_density=1.0)
    assert all(layer.engine == "sparse-fp32" for layer in forced.obert_layers)
    with torch.inference_mode():
        d = (forced(input_ids=x).logits - dense(input_ids=x).logits).abs().max().item()
    assert d < 1e-4
    with pytest.raises(ValueError, match="dtype"):
        rt.compile(dense, "int4")


def test_bench_cli_json_contract(tiny_model_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`obert bench --json` on a 90% 4-block model (so the sparse kernels run): every engine's
    output within its dtype's tolerance of dense fp32, its time as median within p10-p90 over
    the rounds asked, and each speed-up the median of the per-round ratios."""
    import statistics

    model_dir = tmp_path / "tiny90"
    _tiny_pruned(tiny_model_dir, 0.9, 4).save_pretrained(model_dir)
    capsys.readouterr()  # transformers' own bars while loading and saving it here
    assert main(["bench", "--model", str(model_dir), "--seq-len", "16", "--batch-size", "2",
                 "--threads", "1", "--warmup", "1", "--rounds", "5", "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "Loading weights" not in captured.err and "it/s]" not in captured.err  # --quiet
    names = [r["name"] for r in report["results"]]
    assert names == ["dense-fp32", "dense-int8", "sparse-fp32", "sparse-int8"]
    assert report["seq_len"] == 16 and report["batch_size"] == 2 and report["threads"] == 1
    assert report["rounds"] == report["repeats"] == 5 and report["baseline"] == "dense-fp32"
    assert report["layers"]["sparse-int8"]["sparse-int8"] == 12  # the kernels were timed
    assert report["busy"] == (report["busy_note"] is not None)
    assert ("obert: note: busy machine" in captured.err) == report["busy"]
    # relative to dense fp32's largest |logit| (~2.6e-3 on this random model, so INT8's noise
    # is large beside it): fp32 is float rounding (measured 1.4e-6); INT8 measured 0.37 for
    # torch's dynamic INT8 and 0.067 for obert's; a wrong or all-zero output would miss by ~1
    tol = {"dense-fp32": 0.0, "sparse-fp32": 1e-4, "dense-int8": 0.75, "sparse-int8": 0.25}
    scale = report["ref_max_abs"]
    assert scale > 0
    by = {r["name"]: r for r in report["results"]}
    base = by["dense-fp32"]["rounds_ms"]
    for r in report["results"]:
        assert r["max_abs_diff"] <= tol[r["name"]] * scale, r
        assert len(r["rounds_ms"]) == 5 and all(t > 0 for t in r["rounds_ms"])
        assert r["min_ms"] <= r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["max_ms"]
        assert r["median_ms"] == statistics.median(r["rounds_ms"])
        assert r["throughput"] == pytest.approx(2 * 1e3 / r["median_ms"])
        for ref in ("dense_fp32", "dense_int8"):
            x, lo, hi = (r[f"speedup_vs_{ref}{k}"] for k in ("", "_p10", "_p90"))
            assert 0 < lo <= x <= hi
        # the median of per-round ratios, not a ratio of medians
        ratios = [b / t for b, t in zip(base, r["rounds_ms"], strict=True)]
        assert r["speedup_vs_dense_fp32"] == pytest.approx(statistics.median(ratios))
    assert by["dense-fp32"]["speedup_vs_dense_fp32"] == 1.0  # itself, in every round
    assert by["dense-fp32"]["speedup_vs_dense_fp32_p90"] == 1.0
    assert main(["bench", "--model", str(tiny_model_dir), "--seq-len", "16", "--repeats", "2",
                 "--engines", "dense-fp32,sparse-fp32", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "sparse-fp32" in table and "dense-int8" not in table
    assert "2 interleaved rounds" in table and "[p10-p90]" in table and "threads" in table
    assert main(["bench", "--model", str(tiny_model_dir), "--seq-len", "16", "--repeats", "2",
                 "--engines", "sparse-fp32,sparse-int8", "--json", "--quiet"]) == 0
    alone = json.loads(capsys.readouterr().out)  # no dense engine: no speed-ups claimed
    assert alone["baseline"] is None
    assert all(r["speedup_vs_dense_fp32"] is None for r in alone["results"])
    assert main(["bench", "--model", str(tiny_model_dir), "--engines", "sparse-fp16"]) == 2
    assert main(["bench", "--model", str(tiny_model_dir), "--seq-len", "4096"]) == 2
    assert "exceeds" in capsys.readouterr().err


def test_bench_rounds_interleave_and_rotate() -> None:
    """Warm-up first, then each round runs every engine once, each engine first in turn."""
    from obert.runtime.bench import interleaved_rounds

    calls: list[str] = []
    per_round = interleaved_rounds({n: (lambda n=n: calls.append(n)) for n in "abc"},
                                   rounds=6, warmup=2)
    assert calls[:6] == list("abcabc")  # the warm-up rounds
    rounds = [calls[6 + 3 * i: 9 + 3 * i] for i in range(6)]
    assert all(sorted(r) == list("abc") for r in rounds)
    assert [r[0] for r in rounds] == list("abcabc")
    assert all(len(ms) == 6 and min(ms) >= 0 for ms in per_round.values())


def test_bench_ratios_hold_when_the_load_swings() -> None:
    """The machine slows 8x in some rounds, hitting both engines of a round alike: as per-round
    ratios the speed-up stays exactly 4x, and the note says the machine was busy. A steady
    machine gets no note; a ratio that swings gets one that names the engine."""
    from obert.runtime.bench import busy_note, quantile, round_ratios, spread

    load = [1, 8, 1, 1, 8, 1, 1, 8, 1, 1]
    swung = {"dense-fp32": [40.0 * x for x in load], "sparse-int8": [10.0 * x for x in load]}
    ratios = round_ratios(swung, "dense-fp32")
    assert spread(ratios["sparse-int8"]) == {"median": 4.0, "p10": 4.0, "p90": 4.0}
    note = busy_note(swung, ratios, "dense-fp32")
    assert note is not None and "dense-fp32's own time 8.00x" in note
    assert "sparse-int8" not in note  # its ratio did not move
    steady = {"dense-fp32": [40.0, 41.0, 40.5, 39.8, 40.2] * 2,
              "sparse-int8": [10.0, 10.1, 10.3, 9.9, 10.0] * 2}
    assert busy_note(steady, round_ratios(steady, "dense-fp32"), "dense-fp32") is None
    jumpy = {"dense-fp32": [40.0] * 10, "sparse-int8": [10.0, 20.0] * 5}
    note = busy_note(jumpy, round_ratios(jumpy, "dense-fp32"), "dense-fp32")
    assert note is not None and "sparse-int8's ratio to it 2.00x" in note
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0 and quantile([1.0, 2.0], 0.1) == pytest.approx(1.1)


def test_profile_splits_the_forward_into_parts(tiny_model_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Each engine's time splits into linears, attention, LayerNorm, embeddings and the rest:
    every part is timed (non-zero), exclusive (they add up to the total) and the linears of
    the compiled model are obert's modules."""
    from obert.runtime.profile import PARTS, Profiler, profile

    c = rt.compile(_tiny_pruned(tiny_model_dir, 0.9, 4), "int8")
    inputs = {"input_ids": torch.randint(1000, 3000, (2, 16))}
    p = profile(c, inputs, calls=3, warmup=1)
    assert all(p[f"{k}_ms"] > 0 for k in PARTS)
    assert sum(p[f"{k}_ms"] for k in (*PARTS, "rest")) == pytest.approx(p["total_ms"])
    prof = Profiler(c)
    kinds = {type(m).__name__ for m in c.modules() if m._forward_pre_hooks}
    prof.remove()
    assert {"SparseLinear", "Int8SelfAttention", "LayerNorm", "BertEmbeddings"} <= kinds
    assert not any(m._forward_pre_hooks for m in c.modules())  # the hooks are gone after
    assert main(["bench", "--model", str(tiny_model_dir), "--seq-len", "16", "--repeats", "2",
                 "--threads", "1", "--profile", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["profile"]) == {"dense-fp32", "dense-int8", "sparse-fp32", "sparse-int8"}
    assert report["profile"]["dense-int8"]["linears_ms"] > 0  # torch's dynamic Linear counts


@pytest.mark.slow
def test_compiled_minilm_matches_pytorch_on_sst2(minilm_sst2: Path, glue_dir: Path,
                                                  tmp_path: Path) -> None:
    """A real MiniLM on all 872 SST-2 dev rows. Pruned to 80% in 4-blocks: fp32 logits within
    1e-4, INT8 (linears and attention) labels agree on >= 99%. That one-shot model puts
    nearly every row in one class, so INT8 is also checked where agreeing means something: on
    the fine-tuned model itself (accuracy >= 0.75), every Linear forced onto the sparse INT8
    kernels, post-training INT8 (no QAT) keeps >= 98% of labels (measured 98.6-99.5%, the
    flips all on rows with near-zero margins) and the accuracy within one point."""
    from obert.data.glue import load_split
    from obert.data.tasks import get_task
    from obert.models import load_for_inference, load_tokenizer

    out = tmp_path / "block4-80"
    assert main(["oneshot", "--model", str(minilm_sst2), "--task", "sst2", "--data-dir",
                 str(glue_dir), "--method", "magnitude", "--mask", "block4", "--sparsity", "0.8",
                 "--output", str(out), "--quiet"]) == 0
    model = load_for_inference(str(out))
    dense = load_for_inference(str(minilm_sst2))
    tok = load_tokenizer(str(out))
    # every Linear on the kernels, whatever its density (global pruning leaves some layers
    # denser than compile's default threshold): this checks the kernels, not the policy
    fp32 = rt.compile(model, "fp32", max_density=1.0)
    int8 = rt.compile(model, "int8", max_density=1.0)
    dense8 = rt.compile(dense, "int8", max_density=1.0)
    for c in (int8, dense8):
        engines = [layer.engine for layer in c.obert_layers]  # 36 encoder Linears in INT8
        assert engines.count("sparse-int8") == 36 and engines.count("sparse-fp32") == 2
        assert len(c.obert_attention) == 6
    dev = load_split(get_task("sst2"), "dev", data_dir=str(glue_dir))
    sentences, labels = list(dev["sentence"]), torch.tensor(list(dev["label"]))
    diff, n = 0.0, 0
    agree = {"pruned": 0, "dense": 0}
    right = {"dense": 0, "dense8": 0}
    with torch.inference_mode():
        for i in range(0, len(sentences), 64):
            enc = tok(sentences[i:i + 64], padding=True, truncation=True, max_length=128,
                      return_tensors="pt")
            ref = model(**enc).logits
            diff = max(diff, (fp32(**enc).logits - ref).abs().max().item())
            agree["pruned"] += int((int8(**enc).logits.argmax(-1) == ref.argmax(-1)).sum())
            ref8, got8 = dense(**enc).logits.argmax(-1), dense8(**enc).logits.argmax(-1)
            agree["dense"] += int((got8 == ref8).sum())
            y = labels[i:i + 64]
            right["dense"] += int((ref8 == y).sum())
            right["dense8"] += int((got8 == y).sum())
            n += len(ref)
    assert n == 872
    assert diff < 1e-4
    assert agree["pruned"] / n >= 0.99
    assert right["dense"] / n >= 0.75  # a model that separates the classes
    assert agree["dense"] / n >= 0.98
    assert abs(right["dense8"] - right["dense"]) / n <= 0.01


def test_evaluate_scores_the_model_as_it_runs(tmp_path, tiny_finetuned_dir, glue_dir, capsys,
                                              monkeypatch):
    """evaluate --runtime fp32|int8 scores the compiled model: one JSON object, fp32 labels as
    PyTorch's, INT8 within 2 points; INT8 on a CPU with only scalar kernels is refused."""
    pruned = tmp_path / "pruned"
    assert main(["oneshot", "--model", str(tiny_finetuned_dir), "--task", "sst2", "--sparsity",
                 "0.8", "--method", "magnitude", "--output", str(pruned), "--quiet"]) == 0
    rows = {}
    for runtime in ("pytorch", "fp32", "int8"):
        capsys.readouterr()
        assert main(["evaluate", "--model", str(pruned), "--task", "sst2", "--data-dir",
                     str(glue_dir), "--runtime", runtime, "--json", "--quiet"]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1
        rows[runtime] = json.loads(out[0])
        assert rows[runtime]["runtime"] == runtime and rows[runtime]["n"] == 872
    assert rows["fp32"]["kernels"]["sparse"] > 0  # some linears really ran on the kernels
    assert rows["fp32"]["accuracy"] == rows["pytorch"]["accuracy"]
    assert abs(rows["int8"]["accuracy"] - rows["pytorch"]["accuracy"]) <= 0.02
    import obert.runtime as rt

    monkeypatch.setattr(rt, "available_isas", lambda: ["scalar"])
    assert main(["evaluate", "--model", str(pruned), "--task", "sst2", "--data-dir",
                 str(glue_dir), "--runtime", "int8", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "use --runtime fp32" in err


@pytest.mark.parametrize("isa", ISAS)
def test_fake_quant_linear_computes_what_the_int8_kernel_computes(isa: str) -> None:
    """QAT's FakeQuantLinear against the INT8 kernel, from the one scheme in
    compression/quant.py. The kernel sums x_q·W_q exactly in int32 and scales once; the fake
    quant sums the scaled values in fp32. So |y_kernel − y_fake| ≤ (K + 2)·ε₃₂·(|x̂| @ |Ŵ|ᵀ)
    + ε₃₂·|b| elementwise (x̂, Ŵ the fake-quantized operands), the bound checked here."""
    from obert.compression.quant import FakeQuantLinear, fake_quant_tokens, fake_quant_weight
    from obert.runtime.modules import SparseLinear

    rt.set_isa(isa)
    eps = torch.finfo(torch.float32).eps
    for i, (m, n, kk) in enumerate(SHAPES):
        lin = nn.Linear(kk, n)
        with torch.no_grad():
            lin.weight.copy_(pruned(n, kk, 0.5, 4, seed=i))
        x = torch.randn(m, kk, generator=torch.Generator().manual_seed(200 + i))
        y_kernel = SparseLinear.from_linear(lin, "int8")(x)
        fq = FakeQuantLinear.from_linear(lin)
        y_fake = fq(x)
        bound = ((kk + 2) * eps * (fake_quant_tokens(x).abs() @ fake_quant_weight(lin.weight).abs().t())
                 + eps * lin.bias.abs())
        assert ((y_kernel - y_fake).abs() <= bound + 1e-30).all(), (isa, m, n, kk)
        # straight-through: gradients reach the float weight; pruned weights stay exactly 0
        y_fake.sum().backward()
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
        assert (fake_quant_weight(lin.weight)[lin.weight == 0] == 0).all()
    rt.set_isa("auto")


def test_dense_int8_is_the_sparse_int8_kernel_at_full_density() -> None:
    """Layers that stay dense compute obert's scheme too: DenseInt8Linear (torch._int_mm) and
    the 4-block INT8 kernel forced onto a dense weight both sum x_q·W_q exactly in int32, so
    they differ only by the fp32 rounding of the scaling and of GELU (a few ulp of the
    pre-activation |y| + |b|; GELU's slope is below 1.13)."""
    from obert.runtime.modules import DenseInt8Linear, SparseLinear

    eps = torch.finfo(torch.float32).eps
    for i, (m, n, kk) in enumerate(SHAPES):
        lin = nn.Linear(kk, n)
        x = torch.randn(m, kk, generator=torch.Generator().manual_seed(300 + i))
        pre = DenseInt8Linear(lin)(x).detach()
        for act in ("none", "gelu"):
            a = DenseInt8Linear(lin, act)(x)
            b = SparseLinear.from_linear(lin, "int8", act=act)(x)
            tol = 8 * eps * (pre.abs() + lin.bias.abs()) + 1e-30
            assert ((a - b).abs() <= tol).all(), (m, n, kk, act)


def test_compile_int8_from_trained_scales(tiny_model_dir: Path) -> None:
    """QAT writes weights that are exactly s_w·W_q and the scales s_w: compiling with those
    scales packs exactly the trained W_q, and the logits equal the fake-quant model's within
    the kernels' rounding."""
    from obert.compression.plan import prepare_qat
    from obert.compression.quant import convert_qat, quantize_rows

    m = _tiny_pruned(tiny_model_dir, 0.8, 4)
    names = prepare_qat(m).linears
    x = torch.randint(1000, 3000, (3, 16))
    with torch.no_grad():
        fake = m(input_ids=x).logits
    trained_q = {n: quantize_rows(m.get_submodule(n).weight.detach())[0] for n in names}
    scales = convert_qat(m)
    assert set(scales) == set(names)
    for n in names:  # the saved weights are exactly the dequantized values, zeros kept
        w = m.get_submodule(n).weight.detach()
        assert type(m.get_submodule(n)) is nn.Linear
        assert torch.equal(w, trained_q[n].float() * scales[n][:, None])
        assert torch.equal(quantize_rows(w, scales[n])[0], trained_q[n])
    c = rt.compile(m, "int8", weight_scales=scales, fuse_qkv=False, fuse_ffn=False)
    for n in names:
        mod = c.get_submodule(n)
        assert torch.equal(mod.sw, scales[n])
    with torch.inference_mode():
        out = c(input_ids=x).logits
    assert (out - fake).abs().max().item() < 1e-3 * max(1.0, fake.abs().max().item())


# -- safe to share: threads, malformed packed inputs, the INT8 K guard --------------------------


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_four_threads_on_one_compiled_model_match_serial_calls(tiny_model_dir: Path,
                                                               dtype: str) -> None:
    """Four threads call one compiled model (fused query/key/value included) at once, each on
    its own inputs, many times: every output equals that input's serial output exactly."""
    from concurrent.futures import ThreadPoolExecutor

    c = rt.compile(_tiny_pruned(tiny_model_dir, 0.9, 4), dtype)
    attn = c.bert.encoder.layer[0].attention.self
    if dtype == "fp32":
        assert attn.qkv_fused is not None
    else:  # one projection call, then INT8 attention: nothing kept between calls
        assert isinstance(attn, rt.Int8SelfAttention) and attn.qkv is not None
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randint(1000, 3000, (1 + i, 9 + 5 * i), generator=g) for i in range(4)]
    with torch.inference_mode():
        serial = [c(input_ids=x).logits for x in inputs]

    def work(i: int) -> bool:
        with torch.inference_mode():
            return all(torch.equal(c(input_ids=inputs[i]).logits, serial[i]) for _ in range(25))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))


def _packed_args(k: int = 40, n: int = 20):
    w = pruned(n, k, 0.5, 4)
    p8, p32 = pack_i8(w), pack_f32(w, 4)
    x = torch.randn(3, k)
    return x, p8, p32, n


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case,expected", [
    ("short-row-ptr", "row_ptr must be int32 with ceil(N / 16) * 16 + 1"),
    ("decreasing-row-ptr", "row_ptr decreases"),
    ("row-ptr-not-from-0", "row_ptr must start at 0"),
    ("col-out-of-range", "outside the 40 inputs"),
    ("col-negative", "at column -4"),
    ("col-unaligned", "not a multiple of 4"),
    ("col-without-prefetch-pad", "col must be int32 with nnz + 16"),
    ("short-values", "values, not"),
    ("short-int8-weights", "wq int32 [nnz"),
])
def test_malformed_packed_inputs_are_refused(isa: str, case: str, expected: str) -> None:
    """Every index the kernels follow is checked at the entry: a clear error, never a crash or
    an out-of-range read (the process survives every case, on every instruction set)."""
    rt.set_isa(isa)
    k = rt.kernels()
    x, p8, p32, n = _packed_args()
    rp, col = p32.row_ptr.clone(), p32.col.clone()
    val, wq = p32.val.clone(), p8.wq.clone()
    nnz = int(rp[-1])
    if case == "short-row-ptr":
        rp = rp[:-16]
    elif case == "decreasing-row-ptr":
        rp[3] = rp[4] + 1
    elif case == "row-ptr-not-from-0":
        rp[0] = 1
    elif case == "col-out-of-range":
        col[nnz - 1] = 10_000
    elif case == "col-negative":
        col[0] = -4
    elif case == "col-unaligned":
        col[0] = 2
    elif case == "col-without-prefetch-pad":
        col = col[: nnz + 3]
    elif case == "short-values":
        val = val[:-1]
    elif case == "short-int8-weights":
        wq = wq[:-1]
    with pytest.raises(RuntimeError, match=expected.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("*", r"\*").replace("+", r"\+")):
        if case == "short-int8-weights":
            k.spmm_i8(x, p8.row_ptr, p8.col, wq, p8.sw, p8.wsum, n)
        else:
            k.spmm_f32(x, rp, col, val, 4, n)
            k.spmm_i8(x, rp, col, p8.wq, p8.sw, p8.wsum, n)  # the same checks for INT8
    # the good arrays still work after all that
    assert k.spmm_f32(x, p32.row_ptr, p32.col, p32.val, 4, n).shape == (3, n)


def test_int8_kernel_refuses_k_beyond_int32_sums() -> None:
    """K ≤ (2³¹ − 1) / (255 · 127) = 66,311: beyond, an int32 sum of products could overflow."""
    k = 66_312
    w = torch.zeros(1, k)
    w[0, :4] = 1.0
    p = pack_i8(w)
    with pytest.raises(RuntimeError, match="at most 66311 inputs"):
        rt.kernels().spmm_i8(torch.randn(1, k), p.row_ptr, p.col, p.wq, p.sw, p.wsum, 1)


def _python_runs_during(call: Callable[[], object]) -> tuple[bool, float]:
    """Whether this thread ran Python code while another thread was inside ``call()``, by
    order of events, not rates: the worker sets ``started`` just before the call and ``done``
    right after it; this thread waits for ``started``, does some Python work (which needs the
    GIL) and then looks at ``done``. A huge switch interval keeps CPython from forcing a GIL
    holder to let go, so a call that holds the GIL always finishes first. Also returns the
    call's seconds."""
    import threading
    import time

    started, done, secs = threading.Event(), threading.Event(), []

    def worker() -> None:
        started.set()
        t0 = time.perf_counter()
        call()
        secs.append(time.perf_counter() - t0)
        done.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    t = threading.Thread(target=worker)
    try:
        t.start()
        started.wait()
        n = 0
        for _ in range(1000):  # tens of microseconds of bytecode
            n += 1
        ran = not done.is_set()
    finally:
        t.join()
        sys.setswitchinterval(old)
    return ran, secs[0]


def test_kernels_release_the_gil() -> None:
    """A Python thread runs while another is inside a kernel call (order of events, no rates:
    ``_python_runs_during``). The call does ~17 GFLOP on one thread, hundreds of milliseconds,
    against the tens of microseconds the watching thread needs once scheduled. The same check
    on a C call that holds the GIL (builtin sum) says no, so the check can fail."""
    w = pruned(1024, 1024, 0.0, 4)  # every 4-block kept: the most work per call
    p = pack_f32(w, 4)
    x = torch.randn(8192, 1024)
    k = rt.kernels()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a core left for the watching thread, and a longer call
    try:
        ran, secs = _python_runs_during(lambda: k.spmm_f32(x, p.row_ptr, p.col, p.val, 4, 1024))
    finally:
        torch.set_num_threads(threads)
    assert ran, f"no Python ran during a {secs * 1e3:.0f} ms kernel call: it holds the GIL"
    held, secs = _python_runs_during(lambda: sum(range(10_000_000)))
    assert not held, f"Python ran during a {secs * 1e3:.0f} ms GIL-holding call"


def test_autotune_follows_the_timings_and_caches_them(tiny_model_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """compile(autotune=True) goes sparse exactly where the timer says sparse is faster, writes
    one cache entry per layer kind, and a second compile reads them without timing anything."""
    from obert.runtime import autotune

    monkeypatch.setenv("OBERT_CACHE", str(tmp_path))
    m = _tiny_pruned(tiny_model_dir, 0.6, 4)  # 40% of the blocks kept: dense by the fixed rule
    assert all(c.engine == "dense-int8" for c in rt.compile(m, "int8").obert_layers[:12])
    seen = []

    def fake(sparse_fn, dense_fn):  # "sparse 1 ms, dense 2 ms" for every layer kind
        seen.append(1)
        return (1.0, 2.0)

    monkeypatch.setattr(autotune, "interleaved_ms", fake)
    c = rt.compile(m, "int8", autotune=True)
    engines = [layer.engine for layer in c.obert_layers]
    assert engines.count("sparse-int8") == 12 and c.obert_autotune["timed"] == len(seen) > 0
    table = json.loads(Path(c.obert_autotune["cache"]).read_text())
    assert len(table) == len(seen) and all(r["sparse_ms"] < r["dense_ms"] for r in table.values())
    seen.clear()
    again = rt.compile(m, "int8", autotune=True)  # from the cache: nothing timed
    assert seen == [] and again.obert_autotune["timed"] == 0
    assert [x.engine for x in again.obert_layers] == engines
    x = torch.randint(1000, 3000, (2, 12))
    with torch.inference_mode():
        ref = m(input_ids=x).logits
        assert (again(input_ids=x).logits - ref).abs().max().item() < 0.05
    # a real timing on this machine: whatever it picks computes the same model
    monkeypatch.undo()
    monkeypatch.setenv("OBERT_CACHE", str(tmp_path / "real"))
    real = rt.compile(_tiny_pruned(tiny_model_dir, 0.9, 1), "fp32", autotune=True,
                      tune_tokens=16)
    assert real.obert_autotune["timed"] > 0
    with torch.inference_mode():
        m9 = _tiny_pruned(tiny_model_dir, 0.9, 1)
        assert (real(input_ids=x).logits - m9(input_ids=x).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_uneven_rows_split_by_nonzeros_give_the_dense_result(isa: str, threads: int) -> None:
    """Rows from empty to fully dense (as global pruning leaves them), split between threads by
    their nonzeros: fp32 equals the dense product, INT8 its quantized reference."""
    rt.set_isa(isa)
    g = torch.Generator().manual_seed(3)
    n, k = 70, 96
    w = torch.randn(n, k, generator=g)
    keep = torch.zeros(n, k // 4, dtype=torch.bool)
    for r in range(n):  # row r keeps a share r / n of its 4-blocks: 0% up to ~99%
        keep[r, torch.randperm(k // 4, generator=g)[: r * (k // 4) // n]] = True
    w = w * keep.repeat_interleave(4, 1)
    x = torch.randn(150, k, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        p32, p8 = pack_f32(w, 4), pack_i8(w)
        y32 = rt.kernels().spmm_f32(x, p32.row_ptr, p32.col, p32.val, 4, n)
        y8 = rt.kernels().spmm_i8(x, p8.row_ptr, p8.col, p8.wq, p8.sw, p8.wsum, n)
    finally:
        torch.set_num_threads(before)
    assert (y32 - x @ w.t()).abs().max().item() < 1e-4
    assert (y8 - int8_reference(x, w, None)).abs().max().item() < 1e-3


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 17, 63, 64, 65])
@pytest.mark.parametrize("n, k", [(1, 4), (17, 50), (37, 301), (48, 260)])
def test_int8_row_walks_give_identical_outputs(isa: str, m: int, n: int, k: int) -> None:
    """The AVX-512 kernel's two row walks (two rows side by side, the default, and one at a
    time) are the same int32 sums: outputs equal bit for bit, with bias and GELU, for rows of
    uneven length (empty to dense), N past a group of 16, K past a multiple of 4 and 256, and
    M around a token tile. The other ISAs ignore the switch."""
    rt.set_isa(isa)
    k8 = rt.kernels()
    g = torch.Generator().manual_seed(m * 1000 + n)
    kb = (k + 3) // 4
    keep = torch.zeros(n, kb, dtype=torch.bool)
    for r in range(n):  # row r keeps a share r / n of its 4-blocks
        keep[r, torch.randperm(kb, generator=g)[: r * kb // max(1, n - 1)]] = True
    w = torch.randn(n, k, generator=g) * keep.repeat_interleave(4, 1)[:, :k]
    p, b, x = pack_i8(w), torch.randn(n, generator=g), torch.randn(m, k, generator=g)
    out = {}
    try:
        for walk in ("rows", "pairs"):
            k8.set_i8_tile(walk)
            assert k8.i8_tile() == walk
            out[walk] = [k8.spmm_i8(x, p.row_ptr, p.col, p.wq, p.sw, p.wsum, n, b, act)
                         for act in (0, 1)]
    finally:
        k8.set_i8_tile("pairs")
    for a, c in zip(out["rows"], out["pairs"], strict=True):
        assert torch.equal(a, c)
    assert (out["pairs"][0] - int8_reference(x, w, b)).abs().max().item() < 1e-3
    with pytest.raises(RuntimeError, match="'pairs' or 'rows'"):
        k8.set_i8_tile("quads")


# -- INT8 attention --------------------------------------------------------------------------


def _heads(t: torch.Tensor, b: int, h: int) -> torch.Tensor:
    """[B * L, H * D] -> [B, H, L, D] (a view, as transformers' attention sees it)."""
    return t.view(b, -1, h, t.shape[1] // h).transpose(1, 2)


def _padding_mask(lengths: list[int], length: int, kind: str) -> torch.Tensor:
    keep = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    keep = keep[:, None, None, :].expand(len(lengths), 1, length, length)
    if kind == "bool":
        return keep
    return torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("b,h,length,d,lengths,kind", [
    (1, 12, 128, 64, None, None),           # BERT-base shapes, no mask
    (3, 4, 37, 32, [37, 20, 1], "bool"),    # odd length, padding (transformers' sdpa mask)
    (2, 2, 5, 24, [5, 3], "float"),         # D not a multiple of 16, eager's additive mask
    (1, 1, 1, 8, None, None),
])
def test_int8_attention_is_its_scheme_and_within_the_bound_of_fp32(isa, b, h, length, d,
                                                                    lengths, kind) -> None:
    """The kernel computes ``quant.int8_attention`` (the scheme QAT simulates) on every
    instruction set, to float rounding, and stays within ``int8_attention_bound`` of fp32
    attention; its typical error is a small fraction of the output."""
    from obert.compression.quant import int8_attention, int8_attention_bound

    rt.set_isa(isa)
    g = torch.Generator().manual_seed(length)
    qkv = torch.randn(b * length, 3 * h * d, generator=g) * 2  # q, k, v: slices of one tensor
    q, k, v = qkv.split(h * d, dim=1)
    mask = None if lengths is None else _padding_mask(lengths, length, kind)
    scale = d ** -0.5
    out = rt.kernels().attention_i8(q, k, v, b, h, mask, scale)
    qh, kh, vh = (_heads(t, b, h) for t in (q, k, v))
    ref = int8_attention(qh, kh, vh, mask, scale).transpose(1, 2).reshape(b * length, h * d)
    fp32 = nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    fp32 = fp32.transpose(1, 2).reshape(b * length, h * d)
    bound = int8_attention_bound(qh, kh, vh, mask, scale).transpose(1, 2).reshape(b * length,
                                                                                  h * d)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert ((out - fp32).abs() <= bound + 1e-5).all()
    assert (out - fp32).abs().mean() <= 0.02 * fp32.abs().mean()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_int8_attention_does_not_depend_on_padding(isa: str, kind: str) -> None:
    """A sequence's outputs are the same, exactly, alone or padded in a batch beside a longer
    one: padding keys never set a scale (v's scales come from the keys a query may attend)."""
    rt.set_isa(isa)
    k = rt.kernels()
    g = torch.Generator().manual_seed(3)
    h, d, n, length = 4, 16, 9, 23
    short = torch.randn(n, 3 * h * d, generator=g)
    longer = torch.randn(length, 3 * h * d, generator=g)
    pads = torch.randn(length - n, 3 * h * d, generator=g) * 50  # loud padding
    batch = torch.cat([short, pads, longer])
    alone = k.attention_i8(*short.split(h * d, dim=1), 1, h, None, d ** -0.5)
    mask = _padding_mask([n, length], length, kind)
    padded = k.attention_i8(*batch.split(h * d, dim=1), 2, h, mask, d ** -0.5)
    assert torch.equal(padded[:n], alone)


def test_int8_attention_edge_rows_and_bad_input() -> None:
    """A row whose keys are all masked out gives zeros (not NaN); malformed query/key/value or
    mask are refused with one clear error."""
    k = rt.kernels()
    q = torch.randn(2 * 6, 16)
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[1, :, 2] = False  # query 2 of sequence 1 sees nothing
    out = k.attention_i8(q, q, q, 2, 2, mask, 0.25)
    assert torch.equal(out[8], torch.zeros(16)) and out.isfinite().all() and out[7].abs().sum() > 0
    cases = [
        (lambda: k.attention_i8(q, q, q[:, :8], 2, 2), "one shape"),
        (lambda: k.attention_i8(q, q, q, 5, 2), "must split into 5 sequences"),
        (lambda: k.attention_i8(q.t(), q.t(), q.t(), 2, 2), "unit inner stride"),
        (lambda: k.attention_i8(q.double(), q.double(), q.double(), 2, 2), "float32"),
        (lambda: k.attention_i8(q, q, q, 2, 2, torch.ones(2, 6, 6, dtype=torch.bool)),
         r"\[batch or 1, heads or 1, 6, 6\]"),
        (lambda: k.attention_i8(q, q, q, 2, 2, torch.ones(2, 1, 6, 6, dtype=torch.int64)),
         "bool .* or float32"),
    ]
    for call, expected in cases:
        with pytest.raises(RuntimeError, match=expected):
            call()


def test_compiled_int8_attention_is_what_qat_simulates(tiny_model_dir: Path) -> None:
    """compile(int8) replaces every self-attention by Int8SelfAttention (int8_attention=False
    keeps transformers'); fused and separate projections give the same logits; and a model
    prepared for QAT (fake-quantized Linears, simulated INT8 attention) computes, in eval, the
    compiled model's logits to float rounding, padding included."""
    import copy

    from obert.compression.plan import prepare_qat
    from obert.compression.quant import QAT_ATTENTION, convert_qat

    m = _tiny_pruned(tiny_model_dir, 0.9, 4)
    c = rt.compile(m, "int8", max_density=1.0)
    layers = m.bert.encoder.layer
    assert c.obert_attention == [f"bert.encoder.layer.{i}.attention.self"
                                 for i in range(len(layers))]
    assert all(isinstance(layer.attention.self, rt.Int8SelfAttention)
               for layer in c.bert.encoder.layer)
    plain = rt.compile(m, "int8", int8_attention=False, max_density=1.0)
    assert plain.obert_attention == [] and not any(
        isinstance(mod, rt.Int8SelfAttention) for mod in plain.modules())
    separate = rt.compile(m, "int8", fuse_qkv=False, max_density=1.0)
    assert separate.bert.encoder.layer[0].attention.self.qkv is None
    x = torch.randint(1000, 3000, (3, 19))
    am = torch.ones_like(x)
    am[1, 11:] = 0
    am[2, 4:] = 0
    qat = copy.deepcopy(m)
    prepare_qat(qat)
    assert qat.config._attn_implementation == QAT_ATTENTION
    with torch.inference_mode():
        out = c(input_ids=x, attention_mask=am).logits
        assert torch.equal(separate(input_ids=x, attention_mask=am).logits, out)
        simulated = qat.eval()(input_ids=x, attention_mask=am).logits
        fp32 = m(input_ids=x, attention_mask=am).logits
    assert (simulated - out).abs().max() <= 1e-3 * out.abs().max()
    assert (fp32 - out).abs().max() > 10 * (simulated - out).abs().max()  # INT8 is visible
    convert_qat(qat)
    assert qat.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("isa", ISAS)
def test_fused_feed_forward_gives_the_unfused_logits(tiny_model_dir: Path, isa: str) -> None:
    """Int8FeedForward (hidden activations kept per token tile, in cache) gives exactly the
    logits of the two separate kernel calls, on every instruction set, for batches of one tile
    (the two-call path) to several tiles; the profile's quantize part is timed in the kernels."""
    from obert.runtime.profile import profile

    rt.set_isa(isa)
    m = _tiny_pruned(tiny_model_dir, 0.9, 4)
    fused = rt.compile(m, "int8", max_density=1.0)
    plain = rt.compile(m, "int8", max_density=1.0, fuse_ffn=False)
    layers = fused.bert.encoder.layer
    assert all(isinstance(layer.intermediate, rt.Int8FeedForward) for layer in layers)
    # the feed-forward call adds its input, so the block's output step is only its LayerNorm
    assert all(layer.intermediate.add_input for layer in layers)
    assert all(isinstance(layer.output, rt.AddNorm) and layer.output.dense is None
               for layer in layers)
    assert sum(c.ffn_fused for c in fused.obert_layers) == 2 * len(layers)
    assert not any(isinstance(mod, rt.Int8FeedForward) for mod in plain.modules())
    g = torch.Generator().manual_seed(1)
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for b, length in ((1, 7), (3, 50), (6, 61)):
                x = torch.randint(1000, 3000, (b, length), generator=g)
                am = torch.ones_like(x)
                am[0, length // 2:] = 0
                with torch.inference_mode():
                    assert torch.equal(fused(input_ids=x, attention_mask=am).logits,
                                       plain(input_ids=x, attention_mask=am).logits)
    finally:
        torch.set_num_threads(threads)
    p = profile(fused, {"input_ids": torch.randint(1000, 3000, (4, 64))}, calls=2, warmup=1)
    assert p["quantize_ms"] > 0 and p["linears_ms"] > 0


# -- the residual add in the kernels' epilogue -----------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 17, 65])
@pytest.mark.parametrize("n, k", [(17, 50), (48, 260)])
def test_residual_epilogue_is_the_add_after_the_kernel(isa: str, m: int, n: int, k: int) -> None:
    """y = act(x Wᵀ + b) + r in the epilogue equals the kernel's output plus r, bit for bit,
    fp32 and INT8, with and without GELU, for a residual whose rows are a stride apart (a
    slice of a wider tensor); a residual of the wrong shape is refused."""
    rt.set_isa(isa)
    kern = rt.kernels()
    g = torch.Generator().manual_seed(m + n)
    w = pruned(n, k, 0.7, 4, seed=m)
    b, x = torch.randn(n, generator=g), torch.randn(m, k, generator=g)
    r = torch.randn(m, n + 5, generator=g)[:, 2:n + 2]  # row stride n + 5
    p8, p32 = pack_i8(w), pack_f32(w, 4)
    for act in (0, 1):
        y8 = kern.spmm_i8(x, p8.row_ptr, p8.col, p8.wq, p8.sw, p8.wsum, n, b, act)
        f8 = kern.spmm_i8(x, p8.row_ptr, p8.col, p8.wq, p8.sw, p8.wsum, n, b, act, r)
        y32 = kern.spmm_f32(x, p32.row_ptr, p32.col, p32.val, 4, n, b, act)
        f32 = kern.spmm_f32(x, p32.row_ptr, p32.col, p32.val, 4, n, b, act, r)
        assert torch.equal(f8, y8 + r) and torch.equal(f32, y32 + r)
    with pytest.raises(RuntimeError, match="residual must be"):
        kern.spmm_i8(x, p8.row_ptr, p8.col, p8.wq, p8.sw, p8.wsum, n, b, 0, r[:, 1:])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [5, 200])  # one tile (the two-call path) and several tiles
def test_feed_forward_adds_its_input_exactly(isa: str, m: int) -> None:
    rt.set_isa(isa)
    g = torch.Generator().manual_seed(m)
    fc1 = rt.SparseLinear.from_weight(pruned(96, 32, 0.6, 4, seed=1), torch.randn(96, generator=g),
                                      "int8", act="gelu")
    fc2 = rt.SparseLinear.from_weight(pruned(32, 96, 0.6, 4, seed=2), torch.randn(32, generator=g),
                                      "int8")
    x = torch.randn(m, 32, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        plain = rt.Int8FeedForward(fc1, fc2)(x)
        added = rt.Int8FeedForward(fc1, fc2, add_input=True)(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(added, plain + x)
    with pytest.raises(ValueError, match="add_input"):
        rt.Int8FeedForward(fc1, rt.SparseLinear.from_weight(pruned(16, 96, 0.6, 4), None, "int8"),
                           add_input=True)


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_fused_residual_gives_the_unfused_logits(tiny_model_dir: Path, dtype: str) -> None:
    """compile's AddNorm (the residual in the epilogue) gives exactly the logits of the model
    with the add left to transformers; every block output of the tiny BERT is fused."""
    m = _tiny_pruned(tiny_model_dir, 0.9, 4)
    fused = rt.compile(m, dtype, max_density=1.0)
    plain = rt.compile(m, dtype, max_density=1.0, fuse_residual=False)
    layers = fused.bert.encoder.layer
    assert all(isinstance(layer.attention.output, rt.AddNorm) for layer in layers)
    assert all(isinstance(layer.output, rt.AddNorm) for layer in layers)
    assert sum(c.residual_fused for c in fused.obert_layers) == 2 * len(layers)
    assert not any(isinstance(mod, rt.AddNorm) for mod in plain.modules())
    g = torch.Generator().manual_seed(3)
    for b, length in ((1, 7), (4, 70)):
        x = torch.randint(1000, 3000, (b, length), generator=g)
        with torch.inference_mode():
            assert torch.equal(fused(input_ids=x).logits, plain(input_ids=x).logits)
